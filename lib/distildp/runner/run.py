"""Run a benchmark grid: every point executes the benchmark notebook with papermill, in its own process.

    python -m distildp.runner --grid quick --jobs 2          # benchmarks/grids/quick.yaml
    python -m distildp.runner --grid smoke --dry-run         # check the grid, list its points: todo/done/busy
    python -m distildp.runner --grid full --shard 3/8        # one task of a cluster job array
    python -m distildp.runner --grid full --tables-only      # rebuild tables from the finished points
    python -m distildp.runner --grid paper --executor slurm  # one Slurm job per point (distildp.runner.executors)

The whole grid is checked before any kernel starts (lib/distildp/runner/grids.py): every error names the grid file and
the key.

Layout under --results (default results/):
    runs/<grid>/<point_id>/  point.json (what was asked), <notebook>.ipynb (executed), run.log, row.json,
                             timing.json (the point's wall time, kernel start included), point.lock
    tables/, figures/        for the quick grid (the committed results)
    <grid>/tables/, <grid>/figures/   for every other grid, so a smoke run never overwrites them
A point is finished when its row.json exists (the notebook writes it last, atomically) and its point.json
asks for the same parameters; any other point directory is cleared and run again from scratch, unless a
live process owns it: point.lock is held (flock) by the runner that queued the point and then by the point's
process. Another runner on the same results skips such a point with a message (it does not wait: a point may
run for hours); rerun once the owner is done. Points are processes of their own (a Ctrl-C reaches the runner,
which stops them) that die with their runner even when it is killed with SIGKILL, taking their kernels along.
Shared stages (pretrained models, DP teachers, synthetic sets) come from the artifact store (--store).

Executors: `process` (the default) runs the points in this runner's child processes, as above. `slurm` submits
one job per unfinished point, as one job array, with the grid's `slurm:` settings (partition, time, mem, GPUs,
CPUs; flags override them) and waits for it (--no-wait: submit and exit; --collect builds the tables later);
`local` submits the same jobs as processes of this machine through submitit. A job runs `--run-point`: it
claims the point's lock, skips the point when it is finished or owned by a live process, clears it and runs
it as the runner's own processes do. Submitit's pickles and logs go to <results>/<grid>/submitit/.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distildp.runner import executors
from distildp.runner.grids import ROOT, Grid, GridError, Point, load_grid, shard

EXECUTORS = ("process", "slurm", "local")  # see the docstring
POINT_FILE, ROW_FILE, LOG_FILE, TIMING_FILE = "point.json", "row.json", "run.log", "timing.json"
LOCK_FILE = "point.lock"  # flock-ed while a live runner or point process owns the point (never deleted)
ABANDONED = signal.SIGHUP  # what a point process gets when its runner dies (nbclient handles SIGTERM itself)


def _request(point: Point, grid: Grid, store: str) -> dict:
    from distildp.core.artifacts import jsonable
    from distildp.pipeline.settings import make_settings

    # the settings the point resolves to: a default changed in the code makes its old row stale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # load_grid has reported the library's notes once
        settings = make_settings(point.params["profile"], point.params["overrides"]).as_config()
    return {
        "point_id": point.point_id,
        "kind": point.kind,
        "knob": point.knob,
        "value": point.value,
        "variant": point.variant,
        "grid": grid.name,
        "notebook": str(grid.notebook),
        "store": store,
        "params": point.params,
        "same_as": point.same_as,
        "settings": jsonable(settings),
    }


def is_finished(point_dir: Path, request: dict) -> bool:
    """row.json present and point.json asking for the same notebook and parameters."""
    if not (point_dir / ROW_FILE).exists() or not (point_dir / POINT_FILE).exists():
        return False
    try:
        old = json.loads((point_dir / POINT_FILE).read_text())
    except json.JSONDecodeError:
        return False
    keys = ("params", "notebook", "knob", "value", "kind", "same_as", "settings")
    return all(json.dumps(old.get(k), sort_keys=True) == json.dumps(request.get(k), sort_keys=True) for k in keys)


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    point_id: str
    ok: bool
    seconds: float
    log: Path
    error: str = ""


class Runner:
    """Executes points in child processes (one each, `jobs` at a time) and can stop them all on Ctrl-C.

    `threads`: each point's threads (default: this process's cores shared among the jobs)."""

    def __init__(self, jobs: int, threads: int | None = None):
        self.jobs = jobs
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.threads = threads or max(1, cpus // jobs)
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False  # set by stop_all: no new point starts after it

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = str(self.threads)  # jobs x threads <= cores: kernels do not fight over them
        env.update(
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            OPENBLAS_NUM_THREADS=threads,
            TOKENIZERS_PARALLELISM="false",
            MPLBACKEND="Agg",
            PYTHONUNBUFFERED="1",
        )
        return env

    def run(self, point_dir: Path, lock_fd: int) -> Outcome:
        """Run one point in a child process that inherits the point's lock (`lock_fd`, closed here at the end)."""
        started = time.time()
        log = point_dir / LOG_FILE
        try:
            with open(log, "w") as log_file:
                command = [
                    sys.executable,
                    "-m",
                    "distildp.runner",
                    "--execute-point",
                    str(point_dir),
                    "--runner-pid",
                    str(os.getpid()),
                    "--lock-fd",
                    str(lock_fd),
                ]
                # its own session: a Ctrl-C in the terminal reaches the runner, which stops the points (stop_all).
                # The child asks to die with this runner (see _die_with_runner); Popen is called in the thread that
                # waits for it, which matters since Linux's parent-death signal follows the forking thread.
                with self._lock:  # started and registered at once, so stop_all sees every child
                    if self._stopping:
                        return Outcome(point_dir.name, False, 0.0, log, "not started: the grid was stopped")
                    child = subprocess.Popen(
                        command,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        env=self.env(),
                        cwd=ROOT,
                        start_new_session=True,
                        pass_fds=(lock_fd,),
                    )
                    self._children.add(child)
                code = child.wait()
                with self._lock:
                    self._children.discard(child)
            seconds = time.time() - started
            (point_dir / TIMING_FILE).write_text(
                json.dumps({"seconds": round(seconds, 2), "exit_status": code, "started": started})
            )
        finally:
            os.close(lock_fd)  # after timing.json: another runner may take the point from here on
        return point_outcome(point_dir)

    def stop_all(self) -> None:
        with self._lock:
            self._stopping = True
            for child in self._children:
                try:
                    os.killpg(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def point_outcome(point_dir: Path, job_error: str = "") -> Outcome:
    """How a point's last run ended, from its files: row.json, timing.json (written when its process exits)
    and run.log. `job_error`: why the cluster job that was to run it failed, if it did."""
    log = point_dir / LOG_FILE
    timing = json.loads((point_dir / TIMING_FILE).read_text()) if (point_dir / TIMING_FILE).exists() else None
    seconds = timing["seconds"] if timing else 0.0
    if timing is None:
        if (point_dir / ROW_FILE).exists():  # a twin's row, copied
            return Outcome(point_dir.name, True, seconds, log)
        if is_busy(point_dir):
            reason = f"still owned by process {_owner(point_dir)} (another runner or job); its owner reports it"
        else:
            reason = f"it did not run: {job_error}" if job_error else "it did not run"
        return Outcome(point_dir.name, False, seconds, log, reason)
    code = timing["exit_status"]
    if code == 0 and (point_dir / ROW_FILE).exists():
        return Outcome(point_dir.name, True, seconds, log)
    reason = f"exit status {code}" if code else "the notebook finished without writing row.json"
    tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-15:]) if log.exists() else ""
    return Outcome(point_dir.name, False, seconds, log, f"{reason}; last lines of {log}:\n{tail}")


def execute_point(point_dir: Path, runner_pid: int | None = None, lock_fd: int | None = None) -> None:
    """Child process: run the notebook of one point (reads point.json), streaming cell output to the log.

    It holds the point's lock (the inherited `lock_fd`) while it lives, and dies with its runner, taking its
    kernel with it: papermill starts the kernel in a session of its own, so no process-group kill reaches it."""
    import logging

    # jsonschema (under papermill's nbformat) imports rfc3987_syntax, where installed, for URI formats that notebooks
    # never use; building its grammar took ~2 s of every point's start. Without it jsonschema skips those formats.
    sys.modules.setdefault("rfc3987_syntax", None)
    from distildp.teaching.notebooks import execute

    if runner_pid is not None:
        _die_with_runner(runner_pid)
    if lock_fd is not None:
        _write_owner(lock_fd)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    request = json.loads((point_dir / POINT_FILE).read_text())
    params = dict(request["params"], store=request["store"], row_path=str((point_dir / ROW_FILE).resolve()))
    notebook = Path(request["notebook"])
    print(f"point {request['point_id']}: {notebook.name} with {params}", flush=True)
    execute(notebook, point_dir / notebook.name, params, log_output=True)


def _die_with_runner(runner_pid: int) -> None:
    """Receive ABANDONED when the runner dies, even by SIGKILL, and then kill the kernel and exit.

    Linux: the kernel sends it (prctl PR_SET_PDEATHSIG). Elsewhere: a thread polls for the parent to change.
    Set here rather than in a Popen preexec_fn, which is unsafe in the runner's threads; the runner may have
    died before this call, hence the parent check after it."""
    signal.signal(ABANDONED, _abandon)
    if sys.platform.startswith("linux") and _set_parent_death_signal(ABANDONED):
        if os.getppid() != runner_pid:
            _abandon(ABANDONED, None)
        return

    def watch() -> None:
        while os.getppid() == runner_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), ABANDONED)  # handled in the main thread, like the Linux signal

    threading.Thread(target=watch, name="runner-watch", daemon=True).start()


def _set_parent_death_signal(signum: int) -> bool:
    try:
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        return ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _abandon(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    """The runner is gone: kill every descendant (the kernel leads its own process group: kill that group, so
    whatever the notebook started goes too), then exit without cleanup."""
    try:
        import psutil  # a dependency of ipykernel, so present wherever a kernel runs
    except ImportError:  # ipykernel's parent poller still stops the kernel within a second of this exit
        os._exit(128 + signum)
    own_group = os.getpgid(0)
    for process in psutil.Process().children(recursive=True):
        try:
            group = os.getpgid(process.pid)
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
            os.kill(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # gone already
    os._exit(128 + signum)


# ---------------------------------------------------------------------------------------------- point locks
# A point is owned by one live process at a time: a runner from when it claims the point (before clearing it)
# until it starts the point's process, which inherits the lock and holds it until it exits (however it exits:
# the kernel drops a dead process's flock). A second runner skips an owned point, so it never clears or reruns
# one that is still running; it does not wait, since a point may run for hours.
def _claim(point_dir: Path) -> int | None:
    """An open descriptor holding the point's lock, or None when a live process holds it."""
    fd = os.open(point_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    _write_owner(fd)
    return fd


def _write_owner(fd: int) -> None:
    """The owner's pid in the lock file: for the message of a runner that finds the point taken."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _owner(point_dir: Path) -> str:
    try:
        return (point_dir / LOCK_FILE).read_text().strip() or "?"
    except OSError:
        return "?"


def is_busy(point_dir: Path) -> bool:
    """Whether a live process owns the point (its lock is held)."""
    if not (point_dir / LOCK_FILE).exists():
        return False
    fd = os.open(point_dir / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock


def _clear(point_dir: Path) -> None:
    """Empty a point directory for a fresh run, keeping its lock file (deleting a held lock file would let the
    next runner lock a new file of the same name)."""
    for path in point_dir.iterdir():
        if path.name != LOCK_FILE:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def prepare_points(
    grid: Grid, points: list[Point], runs_dir: Path, store: str
) -> tuple[list[tuple[Path, int]], list[tuple[Path, dict]], list[str]]:
    """Claim, clear and describe (point.json) every unfinished point: (point dir, its lock's descriptor) each;
    then the twins (an ablation reusing a main point's row: point dir, request) and the points a live process owns."""
    todo, twins, busy = [], [], []
    for point in points:
        point_dir = runs_dir / point.point_id
        request = _request(point, grid, store)
        if point.same_as:
            twins.append((point_dir, request))
            continue
        if is_finished(point_dir, request):
            continue
        point_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _claim(point_dir)
        if lock_fd is None:  # another runner has it queued or its point process is running
            busy.append(f"{point.point_id} (process {_owner(point_dir)})")
            continue
        if is_finished(point_dir, request):  # finished while we looked
            os.close(lock_fd)
            continue
        _clear(point_dir)  # interrupted or asked with other parameters: start it again from scratch
        (point_dir / POINT_FILE).write_text(json.dumps(request, indent=2))
        todo.append((point_dir, lock_fd))
    return todo, twins, busy


def say_prepared(grid: Grid, points: list[Point], todo: list, twins: list, busy: list, action: str, owner: str) -> None:
    """What prepare_points found: how many points are finished, to `action`, reused from a twin, or owned by `owner`."""
    print(
        f"grid {grid.name}: {len(points)} points, {len(points) - len(todo) - len(twins) - len(busy)} already "
        f"finished, {len(todo)} {action}" + (f", {len(twins)} reusing a main point's row" if twins else ""),
        flush=True,
    )
    for entry in busy:
        print(f"skipped {entry}: a live process owns this point ({owner}); rerun when it is done", flush=True)


def run_grid(
    grid: Grid, points: list[Point], runs_dir: Path, jobs: int, store: str, progress: bool = True
) -> list[Outcome]:
    """Run the unfinished points; return their outcomes (finished ones are skipped)."""
    from tqdm.auto import tqdm

    todo, twins, busy = prepare_points(grid, points, runs_dir, store)
    say_prepared(
        grid,
        points,
        todo,
        twins,
        busy,
        f"to run with {jobs} job(s) x {Runner(jobs).threads} thread(s)",
        "another runner",
    )
    runner = Runner(jobs)
    outcomes = []
    bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="point", disable=not progress or not todo)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(runner.run, d, fd) for d, fd in todo]
            try:
                for future in as_completed(futures):
                    outcome = future.result()
                    outcomes.append(outcome)
                    status = "ok" if outcome.ok else "FAILED"
                    bar.write(f"{status:6} {outcome.point_id}  {outcome.seconds:.1f} s")
                    bar.update()
            except KeyboardInterrupt:  # inside the pool: leaving it waits for every queued point otherwise
                for future in futures:
                    future.cancel()
                runner.stop_all()
                raise
    finally:
        bar.close()
    for point_dir, request in twins:
        _copy_twin(point_dir, request, runs_dir / request["same_as"])
    return outcomes


def _copy_twin(point_dir: Path, request: dict, source_dir: Path) -> None:
    """An ablation value equal to the grid's own setting: its row is the main point's (no kernel run).
    Rewritten on every run, so it follows its main point; absent while that point is unfinished."""
    from distildp.core.artifacts import write_json_atomic

    if point_dir.exists():
        shutil.rmtree(point_dir)
    if not (source_dir / ROW_FILE).exists():
        return
    point_dir.mkdir(parents=True)
    (point_dir / POINT_FILE).write_text(json.dumps(request, indent=2))
    write_json_atomic(point_dir / ROW_FILE, json.loads((source_dir / ROW_FILE).read_text()))


def collect(grid: Grid, points: list[Point], runs_dir: Path, store: str) -> list[str]:
    """After jobs ran without a waiting runner: copy the twins' rows; return the points not finished yet."""
    unfinished = []
    for point in points:
        point_dir = runs_dir / point.point_id
        request = _request(point, grid, store)
        if point.same_as:
            _copy_twin(point_dir, request, runs_dir / point.same_as)
            if not (point_dir / ROW_FILE).exists():
                unfinished.append(point.point_id)
        elif not is_finished(point_dir, request):
            unfinished.append(point.point_id)
    return unfinished


# ---------------------------------------------------------------------------------------------- cluster jobs
# The runner prepares the points as for its own processes (prepare_points), lets go of them and submits one
# job per point (distildp.runner.executors); each job runs `--run-point`, which takes the point as a runner does.
def jobs_folder(results: Path, grid: Grid) -> Path:
    """Where submitit keeps a grid's job pickles and logs."""
    return results / grid.name / "submitit"


def point_command(point_dir: Path, threads: int | None) -> list[str]:
    """What a cluster job runs for one prepared point."""
    command = [sys.executable, "-m", "distildp.runner", "--run-point", str(point_dir)]
    return command + (["--threads", str(threads)] if threads else [])


def job_threads(kind: str, settings: dict, jobs: int | None) -> int | None:
    """A point's threads in a job: a Slurm job's cores (None: as many as it is given); local jobs share this
    machine's cores as the runner's own processes do."""
    return settings.get("cpus_per_task") if kind == "slurm" else Runner(jobs or 1).threads


def run_prepared_point(point_dir: Path, threads: int | None = None) -> Outcome | None:
    """A job's point (`--run-point`): the point a runner prepared (its point.json), run as the runner's own
    processes run it. None when there is nothing to do: it is finished, or a live process owns it (a runner, or
    a job submitted twice)."""
    lock_fd = _claim(point_dir)
    if lock_fd is None:
        print(f"skipped {point_dir.name}: process {_owner(point_dir)} owns it", flush=True)
        return None
    try:
        request = json.loads((point_dir / POINT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        os.close(lock_fd)
        raise RuntimeError(
            f"{point_dir / POINT_FILE} is missing or unreadable: a runner writes it before it submits"
        ) from err
    if is_finished(point_dir, request):
        os.close(lock_fd)
        print(f"skipped {point_dir.name}: finished already", flush=True)
        return None
    _clear(point_dir)  # what a killed or requeued run of this job left
    (point_dir / POINT_FILE).write_text(json.dumps(request, indent=2))
    return Runner(1, threads).run(point_dir, lock_fd)


def submit_grid(
    grid: Grid,
    points: list[Point],
    runs_dir: Path,
    store: str,
    kind: str,
    settings: dict,
    jobs: int | None,
    folder: Path,
) -> tuple[list[tuple[Path, Any]], list[tuple[Path, dict]]]:
    """Submit one job per unfinished point; return (point dir, submitit job) each, and the twins to copy once
    their main points are done. `jobs`: the array's parallelism (Slurm; None: all at once), or the share of
    this machine's cores each local job's point gets."""
    executor = executors.make_executor(kind, folder, settings, f"distildp-{grid.name}", jobs)  # no Slurm: stop here
    todo, twins, busy = prepare_points(grid, points, runs_dir, store)
    for _, lock_fd in todo:
        os.close(lock_fd)  # each job claims its point again when it starts
    say_prepared(grid, points, todo, twins, busy, f"to submit as {kind} jobs", "a runner or a job")
    if not todo:
        return [], twins
    threads = job_threads(kind, settings, jobs)
    submitted = executors.submit(executor, [point_command(point_dir, threads) for point_dir, _ in todo], ROOT)
    for (point_dir, _), job in zip(todo, submitted):
        print(f"job {job.job_id}  {point_dir.name}", flush=True)
    print(f"submitted {len(submitted)} {kind} job(s); their logs are in {folder}", flush=True)
    return [(point_dir, job) for (point_dir, _), job in zip(todo, submitted)], twins


def wait_for_jobs(submitted: list[tuple[Path, Any]], kind: str) -> list[Outcome]:
    """Each job's outcome as it finishes (read from its point's files, with the job's error if it never ran it)."""
    point_dirs = {job.job_id: point_dir for point_dir, job in submitted}
    outcomes = []
    for job in executors.as_completed([job for _, job in submitted], kind):
        error = job.exception()
        outcome = point_outcome(point_dirs[job.job_id], str(error) if error else "")
        outcomes.append(outcome)
        status = "ok" if outcome.ok else "FAILED"
        print(f"{status:6} {outcome.point_id}  {outcome.seconds:.1f} s  (job {job.job_id})", flush=True)
    return outcomes


def write_tables(grid: Grid, runs_dir: Path, tables_dir: Path, figures_dir: Path) -> list[Path]:
    from distildp.reporting.report import write_report
    from distildp.reporting.results import load_rows

    rows = load_rows(runs_dir, only=[p.point_id for p in grid.points])
    if rows.empty:
        print("no finished points yet: no tables written")
        return []
    if grid.report == "audit":
        from distildp.audit.method_audit import write_audit_report

        written = write_audit_report(rows, tables_dir, figures_dir)
    else:
        written = write_report(rows, tables_dir, figures_dir, regime_map=grid.regime_map)
    print(f"{len(rows)} rows -> " + ", ".join(str(p) for p in written))
    return written


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", default="quick", help="grid name in benchmarks/grids/ or a .yaml path")
    parser.add_argument(
        "--jobs",
        type=int,
        help="points run at once, each in its own process (default 1); with --executor slurm, the job array's "
        "parallelism (default: all at once); local jobs all start at once and share the cores as N processes would",
    )
    parser.add_argument("--shard", help="i/n: run only the points whose index %% n == i (cluster job arrays)")
    parser.add_argument("--results", default=str(ROOT / "results"), help="results directory (default results/)")
    parser.add_argument(
        "--store", default="", help="artifact store directory (default: $DISTILDP_STORE or .artifacts/)"
    )
    parser.add_argument("--dry-run", action="store_true", help="check the grid and list its points; run nothing")
    parser.add_argument("--tables-only", action="store_true", help="only rebuild tables/figures from finished points")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="process",
        help="process: this runner's child processes (default); slurm: one Slurm job per point, as a job array; "
        "local: the same jobs as processes of this machine, through submitit",
    )
    parser.add_argument(
        "--collect", action="store_true", help="build the tables from the finished points (after --no-wait)"
    )
    cluster = parser.add_argument_group(
        "cluster jobs (--executor slurm or local); flags override the grid's `slurm:` settings"
    )
    for key in executors.FLAG_SETTINGS:
        kind, what = executors.SLURM_SETTINGS[key]
        metavar = "MINUTES" if key == "time" else key.upper()
        cluster.add_argument(f"--{key.replace('_', '-')}", dest=f"slurm_{key}", type=kind, metavar=metavar, help=what)
    cluster.add_argument("--no-wait", action="store_true", help="submit and exit (then --collect builds the tables)")
    parser.add_argument(
        "--run-point", help="run one point a runner prepared (what each cluster job runs): results/runs/<grid>/<id>"
    )
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # internal: --run-point's point's threads
    parser.add_argument("--execute-point", help=argparse.SUPPRESS)  # internal: the child process of one point
    parser.add_argument("--runner-pid", type=int, help=argparse.SUPPRESS)  # internal: ...which dies with this pid
    parser.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # internal: ...and holds this lock
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")
    flags = [
        f"--{key.replace('_', '-')}" for key in executors.FLAG_SETTINGS if getattr(args, f"slurm_{key}") is not None
    ]
    if args.executor == "process" and (flags or args.no_wait):
        parser.error(
            f"{' '.join(flags + ['--no-wait'] * args.no_wait)}: for cluster jobs; add --executor slurm or local"
        )
    return args


def job_settings(grid: Grid, args: argparse.Namespace) -> dict:
    """The grid's `slurm:` settings with the flags' values over them, checked (SlurmSettingError names the flag)."""
    flags = {key: getattr(args, f"slurm_{key}") for key in executors.FLAG_SETTINGS}
    flags = {key: value for key, value in flags.items() if value is not None}
    try:
        executors.check_slurm_settings(flags)
    except executors.SlurmSettingError as err:
        raise executors.SlurmSettingError(f"--{err.key.replace('_', '-')}", err.message) from err
    settings = {**grid.slurm, **flags}
    if args.executor == "slurm":
        try:
            executors.slurm_parameters(settings, "", None)  # what submitting needs besides the types: a time limit
        except executors.SlurmSettingError as err:
            raise executors.SlurmSettingError(f"slurm.{err.key}", err.message) from err
    return settings


def print_jobs(kind: str, settings: dict, grid: Grid, point_dirs: list[Path], jobs: int | None, folder: Path) -> None:
    """--dry-run: the jobs that would be submitted, and for Slurm the sbatch script, as submitit builds it."""
    if not point_dirs:
        print(f"no {kind} job to submit: every point is finished or owned by a live process")
        return
    if kind == "slurm":
        script = executors.sbatch_script(folder, settings, f"distildp-{grid.name}", len(point_dirs), jobs)
        print(f"\nthe sbatch script submitit would submit for {len(point_dirs)} point(s) (not submitted):\n")
        print(script)
    threads = job_threads(kind, settings, jobs)
    print(f"{len(point_dirs)} {kind} job(s), each running one point (job logs in {folder}):")
    for index, point_dir in enumerate(point_dirs):
        print(f"  {index}: {shlex.join(point_command(point_dir, threads))}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.execute_point:
        execute_point(Path(args.execute_point), args.runner_pid, args.lock_fd)
        return 0
    if args.run_point:
        _die_with_runner(os.getppid())  # the job's own process: nothing of the point outlives the job
        outcome = run_prepared_point(Path(args.run_point).resolve(), args.threads)
        if outcome is not None:
            error = f": {outcome.error}" if outcome.error else ""
            print(f"{'ok' if outcome.ok else 'FAILED'} {outcome.point_id}  {outcome.seconds:.1f} s{error}")
        return 0 if outcome is None or outcome.ok else 1
    started = time.time()
    try:
        grid = load_grid(args.grid)
        points = shard(grid.points, args.shard)
        settings = job_settings(grid, args) if args.executor != "process" else {}
    except (GridError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in grid.notes:
        print(f"note: {note}", file=sys.stderr)
    results = Path(args.results).resolve()
    store = str(Path(args.store).resolve()) if args.store else ""
    from distildp.reporting.results import grid_dirs

    runs_dir, tables_dir, figures_dir = grid_dirs(results, grid.name)
    folder = jobs_folder(results, grid)
    if args.dry_run:
        to_submit = []
        for point in points:
            done = is_finished(runs_dir / point.point_id, _request(point, grid, store))
            status = "done" if done else "busy" if is_busy(runs_dir / point.point_id) else "todo"
            print(f"{status}  {point.point_id}")
            if status == "todo" and not point.same_as:
                to_submit.append(point)
        print(f"{len(points)} points ({grid.path}); runs in {runs_dir}, tables in {tables_dir}")
        if args.executor != "process":
            print_jobs(args.executor, settings, grid, [runs_dir / p.point_id for p in to_submit], args.jobs, folder)
        return 0
    outcomes = []
    if args.collect:
        unfinished = collect(grid, points, runs_dir, store)
        print(
            f"{len(points) - len(unfinished)} of {len(points)} points finished"
            + (f"; not yet: {', '.join(unfinished)}" if unfinished else "")
        )
    elif args.tables_only:
        pass
    elif args.executor == "process":
        outcomes = run_grid(grid, points, runs_dir, args.jobs or 1, store, not args.no_progress)
    else:
        try:
            submitted, twins = submit_grid(grid, points, runs_dir, store, args.executor, settings, args.jobs, folder)
        except (RuntimeError, OSError) as err:  # no Slurm here, sbatch refused the script, ...: submitit says which
            hint = " (--dry-run shows the sbatch script without Slurm)" if args.executor == "slurm" else ""
            print(f"error: submitting the {args.executor} jobs failed: {err}{hint}", file=sys.stderr)
            return 2
        if args.no_wait:
            print(f"not waiting: once the jobs are done, `--collect` builds the tables ({tables_dir})")
            return 0
        try:
            outcomes = wait_for_jobs(submitted, args.executor)
        except KeyboardInterrupt:
            print(
                "\nstopped waiting; Slurm jobs go on (scancel stops them), `--collect` builds the tables",
                file=sys.stderr,
            )
            return 130
        for point_dir, request in twins:
            _copy_twin(point_dir, request, runs_dir / request["same_as"])
    write_tables(grid, runs_dir, tables_dir, figures_dir)
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"\nFAILED {outcome.point_id} ({outcome.seconds:.1f} s): {outcome.error}", file=sys.stderr)
    print(f"total wall time {time.time() - started:.1f} s; {len(outcomes) - len(failed)} ran, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
