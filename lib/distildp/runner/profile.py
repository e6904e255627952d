"""Where a grid's time goes, stage by stage: results/benchmarks/grid_profile.csv.

    python -m distildp.runner.profile --grid quick          # after `make run` (a fresh store: its work is the grid's)

Every artifact's manifest records how long it took to build (`wall_time_s`); summed per stage (pretraining, DP
teacher, synthetic text, ...) they say where the compute went. The runner records each point's wall time
(`timing.json`) and the notebook its own `run_time_s`: the difference is starting a kernel and importing torch,
transformers and Opacus, paid once per point. The last rows compare the compute with the grid's wall clock on the
cores it ran with (how busy the cores were).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

from distildp.core.artifacts import default_root

ROOT = Path(__file__).resolve().parents[3]
# stage directory in the store -> what it is
STAGES = {
    "tokenizer": "tokenizer",
    "pretrained": "public pretraining (teacher and student)",
    "plan": "noise calibration (accountant)",
    "private_teacher": "DP teachers (and the non-private one)",
    "private_student": "DP-SGD and DPKD students (and the non-private one)",
    "synthetic": "synthetic text (histogram, sampling, the teacher's marginal perplexity)",
    "distilled_student": "students trained on synthetic text (DistilDP, synthetic-only)",
}


def profile(runs_dir: Path, store: Path, jobs: int) -> list[dict]:
    seconds = defaultdict(float)
    counts = defaultdict(int)
    for manifest in store.glob("*/*/manifest.json"):
        record = json.loads(manifest.read_text())
        seconds[manifest.parent.parent.name] += float(record.get("wall_time_s") or 0.0)
        counts[manifest.parent.parent.name] += 1
    points, overhead, first, last = 0, 0.0, float("inf"), 0.0
    for timing in runs_dir.glob("*/timing.json"):
        point = json.loads(timing.read_text())
        row_path = timing.parent / "row.json"
        run_time = json.loads(row_path.read_text()).get("run_time_s", 0.0) if row_path.exists() else 0.0
        points += 1
        overhead += point["seconds"] - float(run_time)
        first, last = min(first, point["started"]), max(last, point["started"] + point["seconds"])
    rows = [
        {"stage": STAGES.get(stage, stage), "artifacts": counts[stage], "seconds": round(seconds[stage], 1)}
        for stage in STAGES
        if counts[stage]
    ]
    rows.append(
        {
            "stage": "kernel start, imports and evaluation outside the stages",
            "artifacts": points,
            "seconds": round(overhead, 1),
        }
    )
    compute = sum(r["seconds"] for r in rows)
    for r in rows:
        r["share"] = round(r["seconds"] / compute, 3) if compute else 0.0
    wall = last - first if points else 0.0
    rows.append(
        {"stage": "all of the above (core-seconds)", "artifacts": "", "seconds": round(compute, 1), "share": 1.0}
    )
    rows.append(
        {
            "stage": f"grid wall clock ({jobs} jobs)",
            "artifacts": points,
            "seconds": round(wall, 1),
            "share": round(compute / (jobs * wall), 3) if wall else "",
        }
    )  # share: how busy the cores were
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="quick")
    parser.add_argument("--store", help="the grid's artifact store (default: $DISTILDP_STORE, else .artifacts/)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", help="default: results/benchmarks/grid_profile.csv (quick), _<grid>.csv (others)")
    args = parser.parse_args(argv)
    name = "grid_profile.csv" if args.grid == "quick" else f"grid_profile_{args.grid}.csv"
    args.out = args.out or str(ROOT / "results" / "benchmarks" / name)
    store = Path(args.store) if args.store else default_root()
    rows = profile(ROOT / "results" / "runs" / args.grid, store, args.jobs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stage", "artifacts", "seconds", "share"])
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(f"{r['stage']:80s} {r['artifacts']!s:>5} {r['seconds']:>9} s  {r['share']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
