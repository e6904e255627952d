"""Running points in child processes of this runner: one process per point, each dying with its runner.

The runner starts `python -m distildp.runner --execute-point <point dir>` for a point (Runner.run), in a session
of its own so that a Ctrl-C reaches the runner alone, which then stops every point (Runner.stop_all). The child
holds the point's lock, which it inherits, while it lives, and dies with its runner even when the runner is killed
with SIGKILL, taking its kernel along (die_with_runner): papermill starts the kernel in a session of its own, so
no process-group kill reaches it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from distildp.runner.grids import ROOT
from distildp.runner.points import LOG_FILE, POINT_FILE, ROW_FILE, TIMING_FILE, is_busy, owner, write_owner

ABANDONED = signal.SIGHUP  # what a point process gets when its runner dies (nbclient handles SIGTERM itself)


@dataclass
class Outcome:
    """How a point's run ended: ok, its wall time, its log and, when it failed, why."""

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
                child = self._start(point_dir, log_file, lock_fd)
                if child is None:
                    return Outcome(point_dir.name, False, 0.0, log, "not started: the grid was stopped")
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

    def _start(self, point_dir: Path, log_file, lock_fd: int) -> subprocess.Popen | None:
        """The point's process, started and registered at once so that stop_all sees every child (None: stopped).

        Its own session: a Ctrl-C in the terminal reaches the runner, which stops the points (stop_all). The child
        asks to die with this runner (die_with_runner); Popen is called in the thread that waits for it, which
        matters since Linux's parent-death signal follows the forking thread."""
        command = [sys.executable, "-m", "distildp.runner", "--execute-point", str(point_dir)]
        command += ["--runner-pid", str(os.getpid()), "--lock-fd", str(lock_fd)]
        with self._lock:
            if self._stopping:
                return None
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
        return child

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
            reason = f"still owned by process {owner(point_dir)} (another runner or job); its owner reports it"
        else:
            reason = f"it did not run: {job_error}" if job_error else "it did not run"
        return Outcome(point_dir.name, False, seconds, log, reason)
    code = timing["exit_status"]
    if code == 0 and (point_dir / ROW_FILE).exists():
        return Outcome(point_dir.name, True, seconds, log)
    reason = f"exit status {code}" if code else "the notebook finished without writing row.json"
    tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-15:]) if log.exists() else ""
    return Outcome(point_dir.name, False, seconds, log, f"{reason}; last lines of {log}:\n{tail}")


# ---------------------------------------------------------------------------------------------- the child
def execute_point(point_dir: Path, runner_pid: int | None = None, lock_fd: int | None = None) -> None:
    """Child process: run the notebook of one point (reads point.json), streaming cell output to the log.

    It holds the point's lock (the inherited `lock_fd`) while it lives, and dies with its runner, taking its
    kernel with it."""
    import logging

    # jsonschema (under papermill's nbformat) imports rfc3987_syntax, where installed, for URI formats that notebooks
    # never use; building its grammar is slow, and every point would pay it. Without it jsonschema skips those formats.
    sys.modules.setdefault("rfc3987_syntax", None)
    from distildp.teaching.notebooks import execute

    if runner_pid is not None:
        die_with_runner(runner_pid)
    if lock_fd is not None:
        write_owner(lock_fd)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asked = json.loads((point_dir / POINT_FILE).read_text())
    params = dict(asked["params"], store=asked["store"], row_path=str((point_dir / ROW_FILE).resolve()))
    notebook = Path(asked["notebook"])
    print(f"point {asked['point_id']}: {notebook.name} with {params}", flush=True)
    execute(notebook, point_dir / notebook.name, params, log_output=True)


def die_with_runner(runner_pid: int) -> None:
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
