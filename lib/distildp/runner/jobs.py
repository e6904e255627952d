"""A grid's points as cluster jobs: one job per unfinished point, submitted through distildp.runner.executors.

The runner prepares the points as for its own processes (points.prepare_points), lets go of them and submits one
job per point; each job runs `python -m distildp.runner --run-point <point dir>` (run_prepared_point), which
claims the point's lock, skips the point when it is finished or owned by a live process, clears it and runs it as
the runner's own processes do. Submitit's pickles and logs go to <results>/<grid>/submitit/.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from distildp.runner import executors
from distildp.runner.grids import ROOT, Grid, Point
from distildp.runner.points import POINT_FILE, claim, clear, is_finished, owner, prepare_points, say_prepared
from distildp.runner.processes import Outcome, Runner, point_outcome


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


def job_settings(grid: Grid, flags: dict, kind: str) -> dict:
    """The grid's `slurm:` settings with the flags' values (those not None) over them, checked;
    SlurmSettingError names the flag, or the grid's key, at fault."""
    flags = {key: value for key, value in flags.items() if value is not None}
    try:
        executors.check_slurm_settings(flags)
    except executors.SlurmSettingError as err:
        raise executors.SlurmSettingError(f"--{err.key.replace('_', '-')}", err.message) from err
    settings = {**grid.slurm, **flags}
    if kind == "slurm":
        try:
            executors.slurm_parameters(settings, "", None)  # what submitting needs besides the types: a time limit
        except executors.SlurmSettingError as err:
            raise executors.SlurmSettingError(f"slurm.{err.key}", err.message) from err
    return settings


def run_prepared_point(point_dir: Path, threads: int | None = None) -> Outcome | None:
    """A job's point (`--run-point`): the point a runner prepared (its point.json), run as the runner's own
    processes run it. None when there is nothing to do: it is finished, or a live process owns it (a runner, or
    a job submitted twice)."""
    lock_fd = claim(point_dir)
    if lock_fd is None:
        print(f"skipped {point_dir.name}: process {owner(point_dir)} owns it", flush=True)
        return None
    try:
        asked = json.loads((point_dir / POINT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        os.close(lock_fd)
        raise RuntimeError(
            f"{point_dir / POINT_FILE} is missing or unreadable: a runner writes it before it submits"
        ) from err
    if is_finished(point_dir, asked):
        os.close(lock_fd)
        print(f"skipped {point_dir.name}: finished already", flush=True)
        return None
    clear(point_dir)  # what a killed or requeued run of this job left
    (point_dir / POINT_FILE).write_text(json.dumps(asked, indent=2))
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
