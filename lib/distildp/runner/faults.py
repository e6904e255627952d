"""Fault injection for the experiment runner (distildp.runner): SIGKILL the runner at random moments, resume, and
compare with a clean run.

    python -m distildp.runner.faults [--grid smoke] [--kills 5] [--seed 0] [--jobs 2] [--out DIR]

1. reference: the grid once, uninterrupted, into a fresh results directory and store; its wall time is T.
2. faulted: the same grid into a second fresh results directory and store. N times, the runner alone gets
   SIGKILL, at moments drawn (seeded) uniformly over T; its points and their kernels must die by themselves
   (distildp.runner.processes gives them a parent-death signal), and every process of the run must be gone within
   --grace seconds (checked by pid; a survivor is a failure, then killed). Then the runner starts again and
   resumes: finished points are skipped, finished artifacts reused, killed builds cleaned or resumed. The last
   start runs to the end.
3. every row.json and point.json, every table CSV and every artifact's files are compared field by field
   with the reference, ignoring only IGNORED (clock readings, and a synthetic set's file that records them).
   Both runs work at the same paths (the reference is moved aside when done), so no path differs.

Exit status 0 when no field differs, no process outlived its runner and both runs finished; 1 otherwise
(the directories are then kept for inspection); 2 when the reference run itself failed.

A bit-identical comparison is possible because the smoke profile sets `dp_randomness: reproducible`: the DP
noise is derived from the seed like every other random draw. With secret noise (the library's default for
other profiles and custom settings) two runs differ by design and this comparison means nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
from tqdm.auto import tqdm

from distildp.reporting.results import grid_dirs
from distildp.runner.grids import ROOT, grid_path

TAG = "DISTILDP_FAULTS_RUN"  # set in each runner's environment, inherited by its points and kernels
# Fields that legitimately differ between two runs of the same grid, and only those:
IGNORED = {
    "wall_time_s",  # row.json: the sum of the artifacts' build times (clock), and reused artifacts keep theirs
    "run_time_s",  # row.json: the notebook's own clock time
    "progress.json",  # a synthetic set's bookkeeping: clock times, and whether the build continued a killed one's
    #                   chunks (it says so after a kill, by design); the chunks themselves are compared
}
# No path differs: both runs use the same directories (see Run). Not compared at all: timing.json, run.log, the
# executed notebooks, the .md tables and figures (clock times and pids; their numbers are the CSVs'), and the
# manifests' created / wall_time_s / built_on entries (the files they describe are compared).


def tagged(tag: str) -> list[psutil.Process]:
    """The live processes carrying this run's tag: the runner, its points, their kernels and anything they start,
    including orphans the init process has adopted (so no parent-child walk would find them)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(TAG) == tag:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # gone, or another user's
    return found


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE  # is_running: pid not reused
    except psutil.NoSuchProcess:
        return False


def command_of(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.NoSuchProcess:
        return []


def describe(process: psutil.Process) -> str:
    return f"{process.pid} {' '.join(command_of(process))[:120]}"


def point_of(process: psutil.Process) -> str:
    """The point a process runs ('' for a kernel or anything else): `python -m distildp.runner --execute-point
    <point dir>`."""
    command = command_of(process)
    return Path(command[command.index("--execute-point") + 1]).name if "--execute-point" in command else ""


class Run:
    """A results directory and store at out/run/ while it runs, set aside to out/<name>/ once done: both runs see
    the same paths, so no path (point.json's store, a model's _name_or_path hashed into the synthetic set's
    fingerprint) differs between them and nothing needs ignoring for it. `start` launches the runner (tagged)."""

    def __init__(self, name: str, out: Path, grid: str, jobs: int):
        self.name, self.out, self.grid, self.jobs = name, out, grid, jobs
        self.results, self.store = out / "run" / "results", out / "run" / "store"
        self.runner: subprocess.Popen | None = None
        self.tag, self.starts = "", 0

    def set_aside(self) -> None:
        (self.out / "run").rename(self.out / self.name)
        self.results, self.store = self.out / self.name / "results", self.out / self.name / "store"

    def start(self) -> None:
        self.starts += 1
        self.tag = f"{uuid.uuid4().hex}-{self.name}-{self.starts}"
        command = [
            sys.executable,
            "-m",
            "distildp.runner",
            "--grid",
            self.grid,
            "--jobs",
            str(self.jobs),
            "--results",
            str(self.results),
            "--store",
            str(self.store),
            "--no-progress",
        ]
        with open(self.out / f"{self.name}-runner-{self.starts}.log", "w") as log:
            self.runner = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ, **{TAG: self.tag})
            )

    def finish(self) -> int:
        return self.runner.wait()

    def kill_after(self, seconds: float, grace: float) -> dict | None:
        """SIGKILL the runner `seconds` after its start (None if it finished first); wait for its processes."""
        deadline = time.monotonic() + seconds
        while self.runner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            children = psutil.Process(self.runner.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        points = [point for point in map(point_of, children) if point]  # the points running now
        self.runner.kill()  # Popen.kill does nothing if the runner has exited already
        if self.runner.wait() != -9:
            return None
        watched = children + tagged(self.tag)  # + any process the snapshot missed, found by its tag
        end, survivors = time.monotonic() + grace, watched
        while time.monotonic() < end:
            survivors = [p for p in watched if alive(p)] + [p for p in tagged(self.tag) if p not in watched]
            if not survivors:
                break
            time.sleep(0.2)
        report = [describe(p) for p in survivors]
        self.kill_all()  # ours: clear them so the resumed run starts from a clean slate, as after a reboot
        return {"points running": ", ".join(points) or "-", "survivors": report}

    def kill_all(self) -> list[str]:
        """Kill every live process of the current start (by pid, found by its tag); return what was left."""
        if self.runner is not None and self.runner.poll() is None:
            self.runner.kill()
            self.runner.wait()
        left = tagged(self.tag) if self.tag else []
        described = [describe(p) for p in left]  # before they go
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        return described


def fields(run: Run) -> dict[tuple[str, str, str], str]:
    """Every compared field of a finished run: (file, row, field) -> its value as text."""
    values = {}
    runs_dir, tables_dir, _ = grid_dirs(run.results, grid_path(run.grid).stem)  # the runner's own names
    for path in sorted(runs_dir.glob("*/*.json")):
        if path.name in ("row.json", "point.json"):
            for key, value in json.loads(path.read_text()).items():
                values[path.name, path.parent.name, key] = json.dumps(value, sort_keys=True)
    for path in sorted(tables_dir.glob("*.csv")):  # as text: the CSV writes every float at full precision
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        for _, row in table.iterrows():
            for column in table.columns:
                values[path.name, row["point_id"], column] = row[column]
    for manifest in sorted(run.store.glob("[!.]*/[!.]*/manifest.json")):  # every artifact, resumed builds included
        for file in json.loads(manifest.read_text())["files"]:
            values["store", f"{manifest.parent.parent.name}/{manifest.parent.name}", file] = digest(
                manifest.parent / file
            )
    return values


def digest(path: Path) -> str:
    """A store file's sha256; a synthetic chunk's of its table alone (its metadata records the chunk's wall time)."""
    data = pd.read_parquet(path).to_csv().encode() if path.suffix == ".parquet" else path.read_bytes()
    return hashlib.sha256(data).hexdigest()


def compare(reference: Run, faulted: Run) -> tuple[int, int, int, pd.DataFrame]:
    """(rows, artifacts, fields compared, the differing fields); a field present in only one run differs too."""
    ref, got = fields(reference), fields(faulted)
    keys = sorted(k for k in ref.keys() | got.keys() if Path(k[2]).name not in IGNORED)
    differ = [(*k, ref.get(k, "(missing)"), got.get(k, "(missing)")) for k in keys if ref.get(k) != got.get(k)]
    rows, artifacts = len({k[:2] for k in keys if k[0] != "store"}), len({k[1] for k in keys if k[0] == "store"})
    return rows, artifacts, len(keys), pd.DataFrame(differ, columns=["file", "row", "field", "reference", "faulted"])


def leftovers(store: Path) -> list[str]:
    """Killed builds' remains the store should have cleaned up by the end (.tmp-*, .resume-*, set-aside ones)."""
    return sorted(
        str(p.relative_to(store))
        for p in [*store.glob("*/.tmp-*"), *store.glob("*/.resume-*"), *store.glob(".corrupt/*")]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="smoke", help="grid name or .yaml path (default smoke)")
    parser.add_argument("--kills", type=int, default=5, help="how many times the runner is killed (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--jobs", type=int, default=2, help="the runner's --jobs (default 2: points side by side)")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds a killed run's processes have to die")
    parser.add_argument(
        "--out",
        help="an empty or new directory to keep everything in (default: a temporary one, removed when all is well)",
    )
    args = parser.parse_args(argv)
    args.keep = bool(args.out)  # a directory of the user's is kept; a temporary one removed when all is well
    args.out = Path(args.out or tempfile.mkdtemp(prefix="distildp-faults-")).resolve()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out}: not empty; both runs need fresh directories")
    return args


def kill_and_resume(faulted: Run, moments: list[float], grace: float) -> tuple[list[dict], list[str], int]:
    """Start the faulted run and SIGKILL its runner at each moment (on its own clock, restarts excluded; each
    start runs until the next moment), then let the last start run to the end. The kills, the survivors and
    the last start's exit status."""
    kills, survivors = [], []
    for k, (before, moment) in enumerate(tqdm(list(zip([0.0] + moments, moments)), desc="kills", disable=None), 1):
        faulted.start()
        kill = faulted.kill_after(moment - before, grace)
        if kill is None:
            survivors += faulted.kill_all()
            tqdm.write(f"kill {k}: the runner finished before {moment - before:.1f} s; no more kills")
            break
        survivors += kill["survivors"]
        kills.append({"kill": k, "at s": round(moment, 1), "after restart s": round(moment - before, 1), **kill})
        tqdm.write(
            f"kill {k} at {moment - before:.1f} s after start {faulted.starts}: points running: "
            f"{kill['points running']}; {len(kill['survivors'])} survivor(s)"
        )
    faulted.start()
    final = faulted.finish()  # the last start runs to the end
    return kills, survivors + faulted.kill_all(), final


def report(reference: Run, faulted: Run, kills: list[dict], survivors: list[str], final: int, planned: int) -> bool:
    """Print the kills, the differing fields and the survivors; whether the faulted run matched the reference."""
    rows, artifacts, compared, differ = compare(reference, faulted)
    table = pd.DataFrame(kills, columns=["kill", "at s", "after restart s", "points running", "survivors"])
    table["survivors"] = table["survivors"].map(len)
    print(f"\n{table.to_string(index=False)}\n")
    if len(differ):
        print(differ.head(40).to_string(index=False) + "\n")
    for survivor in survivors:
        print(f"survivor: {survivor}")
    print(
        f"kills: {len(kills)} of {planned} ({sum(k['points running'] != '-' for k in kills)} while a point was "
        f"running); starts: {faulted.starts}; final run exit status {final}"
    )
    print(
        f"compared: {rows} rows (row.json, point.json, table CSVs) and {artifacts} artifacts' files, {compared} "
        f"fields (ignored: {', '.join(sorted(IGNORED))})"
    )
    print(f"store leftovers (killed builds not cleaned up): {len(leftovers(faulted.store))}")
    print(f"differing fields: {len(differ)}")
    print(f"surviving processes: {len(survivors)}")
    return final == 0 and rows > 0 and len(differ) == 0 and not survivors  # rows > 0: nothing compared is no pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out
    reference, faulted = Run("reference", out, args.grid, args.jobs), Run("faulted", out, args.grid, args.jobs)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    try:
        started = time.monotonic()
        reference.start()
        if reference.finish() != 0:
            print(f"the reference run failed: see {out}/reference-runner-1.log", file=sys.stderr)
            return 2
        wall = time.monotonic() - started
        survivors = reference.kill_all()  # a finished runner leaves no process either
        reference.set_aside()
        print(f"reference: {wall:.0f} s uninterrupted", flush=True)
        # Kill moments on the faulted run's own clock: N uniform draws over T, sorted. A killed point restarts from
        # scratch, so the faulted run takes longer than T and every moment falls inside it, spread over the whole
        # grid (pretraining, DP training, generation, tables).
        moments = sorted(rng.uniform(0, wall) for _ in range(args.kills))
        kills, killed_survivors, final = kill_and_resume(faulted, moments, args.grace)
        survivors += killed_survivors
    finally:
        for run in (reference, faulted):
            run.kill_all()
    faulted.set_aside()
    ok = report(reference, faulted, kills, survivors, final, args.kills)
    if ok and not args.keep:
        shutil.rmtree(out)
    else:
        print(f"runs kept in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
