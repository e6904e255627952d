"""Run a benchmark grid: every point executes the benchmark notebook with papermill, in its own process.

    python -m distildp.runner --grid quick --jobs 2          # benchmarks/grids/quick.yaml
    python -m distildp.runner --grid smoke --dry-run         # check the grid, list its points: todo/done/busy
    python -m distildp.runner --grid full --shard 3/8        # one task of a cluster job array
    python -m distildp.runner --grid full --tables-only      # rebuild tables from the finished points
    python -m distildp.runner --grid paper --executor slurm  # one Slurm job per point (distildp.runner.jobs)

The whole grid is checked before any kernel starts (distildp.runner.grids): every error names the grid file and
the key. Runs go to <results>/runs/<grid>/<point_id>/ (distildp.runner.points); the tables and figures to
<results>/tables/ and figures/ for the quick grid (the committed results), <results>/<grid>/tables/ and figures/
for every other grid, so a smoke run never overwrites them. A finished point is skipped, an unfinished one run
again from scratch, and one that a live process owns (another runner, a job) is left alone with a message.
Shared stages (pretrained models, DP teachers, synthetic sets) come from the artifact store (--store).

Executors: `process` (the default) runs the points in this runner's child processes, which die with it
(distildp.runner.processes). `slurm` submits one job per unfinished point, as one job array, with the grid's
`slurm:` settings (partition, time, mem, GPUs, CPUs; flags override them) and waits for it (--no-wait: submit and
exit; --collect builds the tables later); `local` submits the same jobs as processes of this machine through
submitit (distildp.runner.jobs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from distildp.runner import executors
from distildp.runner.grid_file import GridError
from distildp.runner.grids import ROOT, Grid, Point, load_grid, shard
from distildp.runner.jobs import (
    job_settings,
    jobs_folder,
    print_jobs,
    run_prepared_point,
    submit_grid,
    wait_for_jobs,
)
from distildp.runner.points import copy_twin, is_busy, is_finished, request
from distildp.runner.processes import Outcome, die_with_runner, execute_point
from distildp.runner.run import collect, run_grid, write_tables

EXECUTORS = ("process", "slurm", "local")  # see the docstring


def parser() -> argparse.ArgumentParser:
    """The runner's flags; the cluster jobs' ones come from executors.FLAG_SETTINGS."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grid", default="quick", help="grid name in benchmarks/grids/ or a .yaml path")
    p.add_argument(
        "--jobs",
        type=int,
        help="points run at once, each in its own process (default 1); with --executor slurm, the job array's "
        "parallelism (default: all at once); local jobs all start at once and share the cores as N processes would",
    )
    p.add_argument("--shard", help="i/n: run only the points whose index %% n == i (cluster job arrays)")
    p.add_argument("--results", default=str(ROOT / "results"), help="results directory (default results/)")
    p.add_argument("--store", default="", help="artifact store directory (default: $DISTILDP_STORE or .artifacts/)")
    p.add_argument("--dry-run", action="store_true", help="check the grid and list its points; run nothing")
    p.add_argument("--tables-only", action="store_true", help="only rebuild tables/figures from finished points")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="process",
        help="process: this runner's child processes (default); slurm: one Slurm job per point, as a job array; "
        "local: the same jobs as processes of this machine, through submitit",
    )
    p.add_argument("--collect", action="store_true", help="build the tables from the finished points (after --no-wait)")
    cluster = p.add_argument_group(
        "cluster jobs (--executor slurm or local); flags override the grid's `slurm:` settings"
    )
    for key in executors.FLAG_SETTINGS:
        metavar = "MINUTES" if key == "time" else key.upper()
        kind, what = executors.flag_type(key), executors.SLURM_SETTINGS[key]
        cluster.add_argument(f"--{key.replace('_', '-')}", dest=f"slurm_{key}", type=kind, metavar=metavar, help=what)
    cluster.add_argument("--no-wait", action="store_true", help="submit and exit (then --collect builds the tables)")
    p.add_argument(
        "--run-point", help="run one point a runner prepared (what each cluster job runs): results/runs/<grid>/<id>"
    )
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # internal: --run-point's point's threads
    p.add_argument("--execute-point", help=argparse.SUPPRESS)  # internal: the child process of one point
    p.add_argument("--runner-pid", type=int, help=argparse.SUPPRESS)  # internal: ...which dies with this pid
    p.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # internal: ...and holds this lock
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs {args.jobs}: must be at least 1")
    flags = [f"--{key.replace('_', '-')}" for key, value in slurm_flags(args).items() if value is not None]
    if args.executor == "process" and (flags or args.no_wait):
        p.error(f"{' '.join(flags + ['--no-wait'] * args.no_wait)}: for cluster jobs; add --executor slurm or local")
    return args


def slurm_flags(args: argparse.Namespace) -> dict:
    """The cluster jobs' settings given as flags (None: not given), in executors.FLAG_SETTINGS' order."""
    return {key: getattr(args, f"slurm_{key}") for key in executors.FLAG_SETTINGS}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.execute_point:
        execute_point(Path(args.execute_point), args.runner_pid, args.lock_fd)
        return 0
    if args.run_point:
        return run_point(Path(args.run_point).resolve(), args.threads)
    started = time.time()
    try:
        grid = load_grid(args.grid)
        points = shard(grid.points, args.shard)
        settings = job_settings(grid, slurm_flags(args), args.executor) if args.executor != "process" else {}
    except (GridError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in grid.notes:
        print(f"note: {note}", file=sys.stderr)
    from distildp.reporting.results import grid_dirs

    results = Path(args.results).resolve()
    store = str(Path(args.store).resolve()) if args.store else ""
    runs_dir, tables_dir, figures_dir = grid_dirs(results, grid.name)
    folder = jobs_folder(results, grid)
    if args.dry_run:
        to_submit = list_points(grid, points, runs_dir, store)
        print(f"{len(points)} points ({grid.path}); runs in {runs_dir}, tables in {tables_dir}")
        if args.executor != "process":
            print_jobs(args.executor, settings, grid, to_submit, args.jobs, folder)
        return 0
    outcomes = []
    if args.collect:
        unfinished = collect(grid, points, runs_dir, store)
        print(
            f"{len(points) - len(unfinished)} of {len(points)} points finished"
            + (f"; not yet: {', '.join(unfinished)}" if unfinished else "")
        )
    elif args.executor == "process" and not args.tables_only:
        outcomes = run_grid(grid, points, runs_dir, args.jobs or 1, store, not args.no_progress)
    elif not args.tables_only:
        outcomes, status = run_jobs(args, grid, points, settings, store, (runs_dir, tables_dir, folder))
        if status is not None:
            return status
    write_tables(grid, runs_dir, tables_dir, figures_dir)
    return report(outcomes, started)


def run_point(point_dir: Path, threads: int | None) -> int:
    """What a cluster job runs (`--run-point`): its point, in this process, which nothing of the point outlives."""
    die_with_runner(os.getppid())  # the job's own process: nothing of the point outlives the job
    outcome = run_prepared_point(point_dir, threads)
    if outcome is not None:
        error = f": {outcome.error}" if outcome.error else ""
        print(f"{'ok' if outcome.ok else 'FAILED'} {outcome.point_id}  {outcome.seconds:.1f} s{error}")
    return 0 if outcome is None or outcome.ok else 1


def list_points(grid: Grid, points: list[Point], runs_dir: Path, store: str) -> list[Path]:
    """--dry-run: print each point's status (done; busy: a live process owns it; todo); return the directories
    of the points a cluster job would run (todo, twins aside)."""
    to_submit = []
    for point in points:
        done = is_finished(runs_dir / point.point_id, request(point, grid, store))
        status = "done" if done else "busy" if is_busy(runs_dir / point.point_id) else "todo"
        print(f"{status}  {point.point_id}")
        if status == "todo" and not point.same_as:
            to_submit.append(runs_dir / point.point_id)
    return to_submit


def run_jobs(
    args: argparse.Namespace, grid: Grid, points: list[Point], settings: dict, store: str, dirs: tuple[Path, ...]
) -> tuple[list[Outcome], int | None]:
    """Submit the points as cluster jobs and wait for them: their outcomes, and an exit status when the runner
    stops here: submitting failed (2), it does not wait (0) or it stopped waiting (130). `dirs`: the grid's runs
    and tables, and the jobs' folder."""
    runs_dir, tables_dir, folder = dirs
    try:
        submitted, twins = submit_grid(grid, points, runs_dir, store, args.executor, settings, args.jobs, folder)
    except (RuntimeError, OSError) as err:  # no Slurm here, sbatch refused the script, ...: submitit says which
        hint = " (--dry-run shows the sbatch script without Slurm)" if args.executor == "slurm" else ""
        print(f"error: submitting the {args.executor} jobs failed: {err}{hint}", file=sys.stderr)
        return [], 2
    if args.no_wait:
        print(f"not waiting: once the jobs are done, `--collect` builds the tables ({tables_dir})")
        return [], 0
    try:
        outcomes = wait_for_jobs(submitted, args.executor)
    except KeyboardInterrupt:
        print(
            "\nstopped waiting; Slurm jobs go on (scancel stops them), `--collect` builds the tables", file=sys.stderr
        )
        return [], 130
    for point_dir, asked in twins:
        copy_twin(point_dir, asked, runs_dir / asked["same_as"])
    return outcomes, None


def report(outcomes: list[Outcome], started: float) -> int:
    """The failed points with their errors, and the totals; the exit status (1 when a point failed)."""
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"\nFAILED {outcome.point_id} ({outcome.seconds:.1f} s): {outcome.error}", file=sys.stderr)
    print(f"total wall time {time.time() - started:.1f} s; {len(outcomes) - len(failed)} ran, {len(failed)} failed")
    return 1 if failed else 0
