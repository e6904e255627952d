"""A grid point's directory: what was asked of it (point.json), whether it is finished, which live process owns it
(its lock), and making it ready to run: claimed, cleared and described, or given its twin's row.

    runs/<grid>/<point_id>/  point.json (what was asked), <notebook>.ipynb (executed), run.log, row.json,
                             timing.json (the point's wall time, kernel start included), point.lock

A point is finished when its row.json exists (the notebook writes it last, atomically) and its point.json asks for
the same parameters; any other point directory is cleared and run again from scratch, unless a live process owns
it. A point is owned by one live process at a time: a runner from when it claims the point (before clearing it)
until it starts the point's process, which inherits the lock and holds it until it exits (however it exits: the
kernel drops a dead process's flock). A second runner skips an owned point, so it never clears or reruns one that
is still running; it does not wait, since a point may run for hours.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import warnings
from pathlib import Path

from distildp.runner.grids import Grid, Point

POINT_FILE, ROW_FILE, LOG_FILE, TIMING_FILE = "point.json", "row.json", "run.log", "timing.json"
LOCK_FILE = "point.lock"  # flock-ed while a live runner or point process owns the point (never deleted)


def request(point: Point, grid: Grid, store: str) -> dict:
    """What a point asks for (its point.json): the notebook, its parameters and the Settings they resolve to."""
    from distildp.core.manifests import jsonable
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


def is_finished(point_dir: Path, asked: dict) -> bool:
    """row.json present and point.json asking for the same notebook and parameters as `asked`."""
    if not (point_dir / ROW_FILE).exists() or not (point_dir / POINT_FILE).exists():
        return False
    try:
        old = json.loads((point_dir / POINT_FILE).read_text())
    except json.JSONDecodeError:
        return False
    keys = ("params", "notebook", "knob", "value", "kind", "same_as", "settings")
    return all(json.dumps(old.get(k), sort_keys=True) == json.dumps(asked.get(k), sort_keys=True) for k in keys)


# ---------------------------------------------------------------------------------------------- locks
def claim(point_dir: Path) -> int | None:
    """An open descriptor holding the point's lock, or None when a live process holds it."""
    fd = os.open(point_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    write_owner(fd)
    return fd


def write_owner(fd: int) -> None:
    """The owner's pid in the lock file: for the message of a runner that finds the point taken."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def owner(point_dir: Path) -> str:
    """The pid of the process that last took the point's lock ('?' if unknown)."""
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


# ---------------------------------------------------------------------------------------------- getting ready
def clear(point_dir: Path) -> None:
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
        asked = request(point, grid, store)
        if point.same_as:
            twins.append((point_dir, asked))
            continue
        if is_finished(point_dir, asked):
            continue
        point_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = claim(point_dir)
        if lock_fd is None:  # another runner has it queued or its point process is running
            busy.append(f"{point.point_id} (process {owner(point_dir)})")
            continue
        if is_finished(point_dir, asked):  # finished while we looked
            os.close(lock_fd)
            continue
        clear(point_dir)  # interrupted or asked with other parameters: start it again from scratch
        (point_dir / POINT_FILE).write_text(json.dumps(asked, indent=2))
        todo.append((point_dir, lock_fd))
    return todo, twins, busy


def say_prepared(grid: Grid, points: list[Point], todo: list, twins: list, busy: list, action: str, by: str) -> None:
    """What prepare_points found: how many points are finished, to `action`, reused from a twin, or owned `by`."""
    print(
        f"grid {grid.name}: {len(points)} points, {len(points) - len(todo) - len(twins) - len(busy)} already "
        f"finished, {len(todo)} {action}" + (f", {len(twins)} reusing a main point's row" if twins else ""),
        flush=True,
    )
    for entry in busy:
        print(f"skipped {entry}: a live process owns this point ({by}); rerun when it is done", flush=True)


def copy_twin(point_dir: Path, asked: dict, source_dir: Path) -> None:
    """An ablation value equal to the grid's own setting: its row is the main point's (no kernel run).
    Rewritten on every run, so it follows its main point; absent while that point is unfinished."""
    from distildp.core.manifests import write_json_atomic

    if point_dir.exists():
        shutil.rmtree(point_dir)
    if not (source_dir / ROW_FILE).exists():
        return
    point_dir.mkdir(parents=True)
    (point_dir / POINT_FILE).write_text(json.dumps(asked, indent=2))
    write_json_atomic(point_dir / ROW_FILE, json.loads((source_dir / ROW_FILE).read_text()))
