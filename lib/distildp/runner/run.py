"""A grid's run: its unfinished points in this runner's processes, `jobs` at a time (run_grid), or gathered once
cluster jobs ran them (collect), then the tables and figures of every finished point (write_tables).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from distildp.runner.grids import Grid, Point
from distildp.runner.points import ROW_FILE, copy_twin, is_finished, prepare_points, request, say_prepared
from distildp.runner.processes import Outcome, Runner


def run_grid(
    grid: Grid, points: list[Point], runs_dir: Path, jobs: int, store: str, progress: bool = True
) -> list[Outcome]:
    """Run the unfinished points; return their outcomes (finished ones are skipped)."""
    from tqdm.auto import tqdm

    todo, twins, busy = prepare_points(grid, points, runs_dir, store)
    runner = Runner(jobs)
    action = f"to run with {jobs} job(s) x {runner.threads} thread(s)"
    say_prepared(grid, points, todo, twins, busy, action, "another runner")
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
    for point_dir, asked in twins:
        copy_twin(point_dir, asked, runs_dir / asked["same_as"])
    return outcomes


def collect(grid: Grid, points: list[Point], runs_dir: Path, store: str) -> list[str]:
    """After jobs ran without a waiting runner: copy the twins' rows; return the points not finished yet."""
    unfinished = []
    for point in points:
        point_dir = runs_dir / point.point_id
        asked = request(point, grid, store)
        if point.same_as:
            copy_twin(point_dir, asked, runs_dir / point.same_as)
            if not (point_dir / ROW_FILE).exists():
                unfinished.append(point.point_id)
        elif not is_finished(point_dir, asked):
            unfinished.append(point.point_id)
    return unfinished


def write_tables(grid: Grid, runs_dir: Path, tables_dir: Path, figures_dir: Path) -> list[Path]:
    """Every table and figure of the grid's finished points (the privacy audit's, for an audit grid)."""
    from distildp.reporting.report import write_report
    from distildp.reporting.results import load_rows

    rows = load_rows(runs_dir, only=[p.point_id for p in grid.points])
    if rows.empty:
        print("no finished points yet: no tables written")
        return []
    if grid.report == "audit":
        from distildp.audit.audit_report import write_audit_report

        written = write_audit_report(rows, tables_dir, figures_dir)
    else:
        written = write_report(rows, tables_dir, figures_dir, regime_map=grid.regime_map)
    print(f"{len(rows)} rows -> " + ", ".join(str(p) for p in written))
    return written
