"""python -m distildp.runner --executor slurm | local: grid points as submitit jobs (distildp.runner.jobs, executors).

There is no Slurm here: a Slurm submission goes through submitit's own mocked sbatch (submitit.slurm.test_slurm),
and each array task then runs the command the sbatch script gives srun. The local executor runs its jobs for real.
The points run the tests' stand-in notebook (helpers.make_notebook) or small ones of their own.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest
import yaml

from distildp.reporting import results as results_module
from distildp.runner import executors, grid_file, grids, jobs, points, processes

from helpers import PARAMETERS, ROOT, cli, executions, make_notebook


def tiny_grid(directory: Path, notebook: Path, **changes) -> Path:
    """Two methods at one epsilon and a lam ablation at the grid's own setting (a twin of the distildp point):
    two points that run and one that copies a row."""
    grid = {
        "profile": "smoke",
        "notebook": str(notebook),
        "axes": {"method": ["distildp", "dpsgd"], "epsilon": [2.0], "seed": [0]},
        "ablations": {"lam": {"values": [0.4], "method": "distildp", "epsilon": 2.0, "seeds": [0]}},
    }
    grid.update(changes)
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


JOB_POINTS = ["distildp__eps2__seed0", "dpsgd__eps2__seed0"]  # the order of the grid, and sorted


def tables(results: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((results / "tiny" / "tables").glob("*.csv"))}


@pytest.fixture(scope="module")
def plain_tables(tmp_path_factory):
    """The tiny grid's CSV tables from the runner's own processes, what every executor must reproduce."""
    directory = tmp_path_factory.mktemp("plain")
    assert cli(tiny_grid(directory, make_notebook(directory)), directory / "results", "--jobs", "2") == 0
    found = tables(directory / "results")
    assert {"ppl_vs_eps.csv", "ablation_lam.csv"} <= set(found)
    return found


# ---------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "slurm, key, message",
    [
        ({"tim": 60}, "slurm.tim", r"unknown key; did you mean 'time'\? the keys of slurm are"),
        ({"time": "2:00:00"}, "slurm.time", r"must be int .*got str '2:00:00'; write whole minutes, e.g. 120"),
        ({"time": 0}, "slurm.time", "must be >= 1"),
        (
            {"mem": 32},
            "slurm.mem",
            r"must be str \(memory per job in sbatch's syntax with its unit.*a bare number is MB\), got int 32",
        ),
        ({"mem": "32 GB"}, "slurm.mem", "got str '32 GB'"),
        ({"mem": "32000"}, "slurm.mem", "must be a size with its unit, such as '32G'"),
        ({"gpus_per_node": True}, "slurm.gpus_per_node", "must be int"),
        ({"cpus_per_task": 2.5}, "slurm.cpus_per_task", "must be int"),
        ({"partition": 7}, "slurm.partition", "must be str"),
        ({"partition": ""}, "slurm.partition", "must be non-empty text"),
        ({"setup": "module load cuda"}, "slurm.setup", r"must be list\[str\] \(shell lines each job runs first"),
        ({"setup": ["module load cuda", 3]}, "slurm.setup[1]", "must be str"),
        ({"additional_parameters": {"time": 5}}, "slurm.additional_parameters.time", "set it as slurm.time"),
        (["partition", "gpu"], "slurm", r"must be dict or None \(the cluster jobs' settings"),
    ],
)
def test_bad_slurm_settings_are_refused_before_anything_runs(tmp_path, capsys, slurm, key, message):
    grid = tiny_grid(tmp_path, make_notebook(tmp_path), slurm=slurm)
    with pytest.raises(grid_file.GridError, match=f"{re.escape(str(grid))}: {re.escape(key)}: .*{message}"):
        grids.load_grid(str(grid))
    for executor in (["process"], ["local"], ["slurm", "--time", "5"]):  # checked whatever runs the grid
        assert cli(grid, tmp_path / "results", "--executor", *executor) == 2
        assert f"{grid}: {key}: " in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and executions(tmp_path) == []


def test_bad_flags_and_a_missing_time_limit_are_refused(tmp_path, capsys):
    grid = tiny_grid(tmp_path, make_notebook(tmp_path))
    results = tmp_path / "results"
    assert cli(grid, results, "--executor", "slurm", "--time", "60", "--mem", "32") == 2
    assert "error: --mem: must be a size with its unit, such as '32G'" in capsys.readouterr().err
    assert cli(grid, results, "--executor", "slurm", "--time", "60") == 2  # no Slurm here: said before any change
    assert 'error: submitting the slurm jobs failed: Could not detect "srun"' in capsys.readouterr().err
    assert cli(grid, results, "--executor", "slurm", "--dry-run") == 2
    assert "error: slurm.time: not set; " in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a cluster flag without a cluster executor would be silently ignored
        cli(grid, results, "--partition", "gpu")
    assert "--partition: for cluster jobs; add --executor slurm or local" in capsys.readouterr().err
    assert not results.exists()


def test_a_grid_may_leave_slurm_out_or_empty(tmp_path):
    notebook = make_notebook(tmp_path)
    assert grids.load_grid(str(tiny_grid(tmp_path, notebook))).slurm == {}
    settings = {"partition": "gpu", "time": 90, "mem": "16G", "setup": ["module load cuda"]}
    assert grids.load_grid(str(tiny_grid(tmp_path, notebook, slurm=settings))).slurm == settings
    assert grids.load_grid(str(tiny_grid(tmp_path, notebook, slurm=None))).slurm == {}


# ---------------------------------------------------------------------------------------------- slurm
SLURM = {"partition": "gpu", "time": 90, "mem": "32G", "gpus_per_node": 1, "cpus_per_task": 4}


def test_dry_run_prints_the_sbatch_script_and_the_jobs_without_submitting(tmp_path, capsys):
    grid = tiny_grid(tmp_path, make_notebook(tmp_path), slurm=dict(SLURM, setup=["module load cuda"]))
    results = tmp_path / "results"
    assert cli(grid, results, "--executor", "slurm", "--dry-run", "--jobs", "1") == 0
    out = capsys.readouterr().out
    sbatch = [line for line in out.splitlines() if line.startswith("#SBATCH")]
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --array=0-1%1",  # two points run, one at a time; the twin copies a row, no job
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --mem=32G",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --job-name=distildp-tiny",
    ]:
        assert line in sbatch
    folder = results / "tiny" / "submitit"
    assert "\nmodule load cuda\n" in out
    assert re.search(rf"\nsrun .* -u -m submitit.core._submit {re.escape(str(folder))}\n", out)
    commands = [line.split(": ", 1)[1] for line in out.splitlines() if re.match(r"  \d: ", line)]
    assert [shlex.split(c)[1:] for c in commands] == [
        ["-m", "distildp.runner", "--run-point", str(results / "runs" / "tiny" / point), "--threads", "4"]
        for point in JOB_POINTS
    ]
    assert not results.exists()  # nothing written, nothing submitted

    # flags over the grid's settings; without --jobs the whole array runs at once
    assert cli(grid, results, "--executor", "slurm", "--dry-run", "--partition", "debug", "--time", "30") == 0
    sbatch = [line for line in capsys.readouterr().out.splitlines() if line.startswith("#SBATCH")]
    assert {"#SBATCH --partition=debug", "#SBATCH --time=30", "#SBATCH --array=0-1%2"} <= set(sbatch)


def test_one_point_is_submitted_as_one_job_not_an_array_of_one(tmp_path, capsys):
    from submitit.slurm.test_slurm import mocked_slurm

    axes = {"method": ["dpsgd"], "epsilon": [2.0], "seed": [0]}
    grid = tiny_grid(tmp_path, make_notebook(tmp_path), axes=axes, ablations={}, slurm=SLURM)
    results = tmp_path / "results"
    assert cli(grid, results, "--executor", "slurm", "--dry-run") == 0
    dry_run = capsys.readouterr().out
    with mocked_slurm():
        assert cli(grid, results, "--executor", "slurm", "--no-wait") == 0
    script = (results / "tiny" / "submitit" / "12_submission.sh").read_text()
    assert script in dry_run and "--array" not in script
    assert "job 12  dpsgd__eps2__seed0" in capsys.readouterr().out


def slurm_tasks(folder: Path, array_id: str, n: int) -> None:
    """Run the array's tasks one by one as Slurm would: the command the sbatch script gives srun, with the
    environment a Slurm array task has."""
    script = (folder / f"{array_id}_submission.sh").read_text()
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    command = srun[srun.index("-m") - 2 :]  # python -u -m submitit.core._submit <folder>
    for task in range(n):
        env = dict(
            os.environ,
            SUBMITIT_EXECUTOR="slurm",
            SLURM_JOB_ID=str(1000 + task),
            SLURM_ARRAY_JOB_ID=array_id,
            SLURM_ARRAY_TASK_ID=str(task),
        )
        subprocess.run(command, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def test_a_slurm_array_runs_every_point_once_and_collect_builds_the_same_tables(tmp_path, capsys, plain_tables):
    from submitit.slurm.test_slurm import mocked_slurm

    grid = tiny_grid(tmp_path, make_notebook(tmp_path), slurm=dict(SLURM, cpus_per_task=1))
    results = tmp_path / "results"
    folder = results / "tiny" / "submitit"
    assert cli(grid, results, "--executor", "slurm", "--dry-run") == 0
    dry_run = capsys.readouterr().out
    with mocked_slurm():  # sbatch answers "Running job 12" and starts nothing
        assert cli(grid, results, "--executor", "slurm", "--no-wait") == 0
    out = capsys.readouterr().out
    assert "2 to submit as slurm jobs, 1 reusing a main point's row" in out
    assert [line.split() for line in out.splitlines() if line.startswith("job ")] == [
        ["job", f"12_{i}", point] for i, point in enumerate(JOB_POINTS)
    ]
    assert (folder / "12_submission.sh").read_text() in dry_run  # the dry run showed the very script submitted
    assert executions(tmp_path) == []

    slurm_tasks(folder, "12", 2)
    assert executions(tmp_path) == JOB_POINTS
    for point in JOB_POINTS:  # each job ran its point as the runner does: one thread per core it was given
        point_dir = results / "runs" / "tiny" / point
        assert json.loads((point_dir / "row.json").read_text())["threads"] == "1"
        assert json.loads((point_dir / "timing.json").read_text())["exit_status"] == 0
    assert cli(grid, results, "--collect") == 0
    assert "3 of 3 points finished" in capsys.readouterr().out
    assert tables(results) == plain_tables

    # a rerun submits nothing: every point is finished
    with mocked_slurm():
        assert cli(grid, results, "--executor", "slurm", "--no-wait") == 0
    assert "2 already finished, 0 to submit" in capsys.readouterr().out
    assert not (folder / "13_submission.sh").exists()


# ---------------------------------------------------------------------------------------------- local
def test_local_jobs_run_the_grid_and_make_the_plain_runners_tables(tmp_path, capsys, plain_tables):
    grid = tiny_grid(tmp_path, make_notebook(tmp_path))
    results = tmp_path / "results"
    assert cli(grid, results, "--executor", "local", "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert sorted(line.split()[1] for line in out.splitlines() if line.startswith("ok ")) == JOB_POINTS
    assert executions(tmp_path) == JOB_POINTS
    assert tables(results) == plain_tables
    for point in JOB_POINTS:  # as the runner's processes run it: the log, the executed notebook, its threads
        point_dir = results / "runs" / "tiny" / point
        assert {"point.json", "row.json", "run.log", "timing.json", "standin.ipynb"} <= {
            p.name for p in point_dir.iterdir()
        }
        assert json.loads((point_dir / "row.json").read_text())["threads"] == str(processes.Runner(2).threads)
    assert len(list((results / "tiny" / "submitit").glob("*_log.out"))) == 2  # submitit's logs, one per job


def test_a_failing_local_job_is_reported_with_its_points_log(tmp_path, capsys):
    axes = {"method": ["dpsgd"], "epsilon": [2.0], "seed": [13]}  # the stand-in raises at seed 13
    grid = tiny_grid(tmp_path, make_notebook(tmp_path), axes=axes, ablations={})
    assert cli(grid, tmp_path / "results", "--executor", "local") == 1
    err = capsys.readouterr().err
    log = tmp_path / "results" / "runs" / "tiny" / "dpsgd__eps2__seed13" / "run.log"
    assert "FAILED dpsgd__eps2__seed13" in err and f"exit status 1; last lines of {log}" in err
    assert "stand-in failure for seed 13" in err


# Both points build the same artifact. Whoever holds the store's lock waits, inside its build, until the other
# point is seen waiting for that lock (filelock logs each wait), so both want the artifact at the same time.
SHARED = """
import json, logging, os, time
from distildp.core.artifacts import ArtifactStore

class Waiting(logging.Handler):
    def emit(self, record):
        if "not acquired" in record.getMessage():
            open(os.path.join(HERE, f"waiting-{seed}"), "w").close()

lock_log = logging.getLogger("filelock")
lock_log.setLevel(logging.DEBUG)
lock_log.propagate = False
lock_log.addHandler(Waiting())

def build(directory):
    with open(os.path.join(HERE, "builds.txt"), "a") as f:
        f.write(f"seed {seed}\\n")
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(HERE, f"waiting-{1 - seed}")) and time.time() < deadline:
        time.sleep(0.1)
    with open(os.path.join(directory, "weights.txt"), "w") as f:
        f.write("one model for both points")

artifact = ArtifactStore(store).build("shared", {"for": "both points"}, build)
with open(row_path, "w") as f:
    json.dump({"method": method, "epsilon": epsilon, "seed": seed, "student_ppl": 1.0, "artifact": artifact.key}, f)
"""


def notebook_with(directory: Path, code: str, name: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"HERE = {str(directory)!r}\n" + code)]
    nbformat.write(nb, directory / name)
    return directory / name


def two_seeds(directory: Path, notebook: Path) -> Path:
    return tiny_grid(directory, notebook, axes={"method": ["dpsgd"], "epsilon": [2.0], "seed": [0, 1]}, ablations={})


def test_two_local_jobs_that_need_the_same_artifact_build_it_once(tmp_path):
    grid = two_seeds(tmp_path, notebook_with(tmp_path, SHARED, "shared.ipynb"))
    results, store = tmp_path / "results", tmp_path / "store"
    assert cli(grid, results, "--executor", "local", "--jobs", "2", "--store", str(store)) == 0
    builds = (tmp_path / "builds.txt").read_text().splitlines()
    assert len(builds) == 1  # one job built it, the other waited for the lock and then read it
    waited = {f"waiting-{seed}" for seed in (0, 1)} - {f"waiting-{builds[0].split()[1]}"}
    assert {p.name for p in tmp_path.glob("waiting-*")} == waited
    runs = results / "runs" / "tiny"
    keys = {json.loads((runs / f"dpsgd__eps2__seed{s}" / "row.json").read_text())["artifact"] for s in (0, 1)}
    assert len(keys) == 1 and [p.name for p in (store / "shared").iterdir() if not p.name.startswith(".")] == list(keys)


# Seed 0 finishes at once; seed 1's kernel reports its pid and beats until `release` exists (at most a minute).
HELD = """
import json, os, time
if seed == 1:
    with open(os.path.join(HERE, "kernel.pid"), "w") as f:
        f.write(str(os.getpid()))
    deadline = time.time() + 600  # held until the test releases it (it always does, in a finally)
    while not os.path.exists(os.path.join(HERE, "release")) and time.time() < deadline:
        with open(os.path.join(HERE, "beats"), "a") as f:
            f.write("beat\\n")
        time.sleep(0.2)
with open(os.path.join(HERE, "executions.txt"), "a") as f:
    f.write(os.path.basename(os.path.dirname(row_path)) + "\\n")
with open(row_path, "w") as f:
    json.dump({"method": method, "epsilon": epsilon, "seed": seed, "student_ppl": 10.0 + seed}, f)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout  # two busy cores: kernels can take a while to start
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_cancelled_local_job_is_resumed_by_resubmitting_the_grid(tmp_path, capsys):
    grid_path = two_seeds(tmp_path, notebook_with(tmp_path, HELD, "held.ipynb"))
    grid = grids.load_grid(str(grid_path))
    results = tmp_path / "results"
    runs = results / "runs" / "tiny"
    submitted, _ = jobs.submit_grid(grid, grid.points, runs, "", "local", {}, 2, jobs.jobs_folder(results, grid))
    (first_dir, first), (held_dir, held) = submitted
    try:
        wait_for(lambda: (tmp_path / "beats").exists() and (first_dir / "row.json").exists(), "both points to run")
        kernel = int((tmp_path / "kernel.pid").read_text())
        first.wait()
        held.cancel()  # submitit's cancel: what scancel is to a Slurm array task
        wait_for(
            lambda: held.done() and not alive(kernel) and not points.is_busy(held_dir), "the job and kernel to end"
        )
    finally:
        (tmp_path / "release").write_text("")  # whatever happened, the kernel stops within a second
    assert not (held_dir / "row.json").exists()
    assert not processes.point_outcome(held_dir).ok
    beats = (tmp_path / "beats").read_text()
    time.sleep(1.0)
    assert (tmp_path / "beats").read_text() == beats  # nothing of the cancelled job runs on

    # resubmitting runs the cancelled point again, from scratch, and skips the finished one
    (tmp_path / "executions.txt").unlink()
    capsys.readouterr()
    assert cli(grid_path, results, "--executor", "local") == 0
    assert "1 already finished, 1 to submit as local jobs" in capsys.readouterr().out
    assert executions(tmp_path) == ["dpsgd__eps2__seed1"]
    rows = results_module.load_rows(runs)
    assert sorted(rows["seed"]) == [0, 1] and sorted(rows["student_ppl"]) == [10.0, 11.0]


CLOCKS = ["wall_time_s", "run_time_s"]  # the only columns two runs of a grid may differ in (distildp.runner.faults)


@pytest.mark.slow
@pytest.mark.notebook
def test_smoke_grid_through_local_jobs_makes_the_plain_runners_tables(tmp_path):
    """The committed smoke grid through notebooks/06_baselines.ipynb, as local submitit jobs and with the runner's
    own processes, each from an empty store: the same tables but for clock times (the smoke profile's DP noise
    is seeded)."""
    found = {}
    for executor in ("process", "local"):
        results = tmp_path / executor
        store = str(tmp_path / f"store-{executor}")
        assert cli("smoke", results, "--jobs", "2", "--executor", executor, "--store", store) == 0
        found[executor] = {p.name: pd.read_csv(p) for p in sorted((results / "smoke" / "tables").glob("*.csv"))}
    assert set(found["local"]) == set(found["process"]) >= {"ppl_vs_eps.csv", "ablation_lam.csv"}
    for name, table in found["local"].items():
        pd.testing.assert_frame_equal(table.drop(columns=CLOCKS), found["process"][name].drop(columns=CLOCKS))


def test_a_local_job_can_be_cancelled_when_the_runner_ignores_sigint(tmp_path):
    """A runner started with SIGINT ignored (`make run &` in a script) still starts local jobs that submitit's
    cancel, a SIGINT, stops; the runner itself goes on ignoring SIGINT."""
    executor = executors.make_executor("local", tmp_path / "submitit", {}, "sigint", None)
    started = tmp_path / "started"
    waiting = f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(120)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        (job,) = executors.submit(executor, [[sys.executable, "-c", waiting]], tmp_path)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        wait_for(started.exists, "the job to start", timeout=60.0)
        job.cancel()
        wait_for(job.done, "the cancelled job to end", timeout=30.0)
    finally:
        signal.signal(signal.SIGINT, previous)  # a job left running ends by itself within two minutes
