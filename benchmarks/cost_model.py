"""GPU-hours of the paper grid, stage by stage, from measured step times: results/benchmarks/cost_model.csv.

    python benchmarks/cost_model.py                       # the paper grid, step times measured on one H200
    python benchmarks/cost_model.py --train-size yelp=650000 --grid paper

A stage's cost is (examples it processes) x (seconds per example), where seconds per example come from the step
benchmarks (`bench_dpsgd.py` on a GPU: results/benchmarks/dpsgd_h200_<model>.csv, fp32, 128-token examples):

- a DP-SGD model (teacher, DP-SGD student, DPKD student): epochs x N examples at the measured DP step's rate;
- a non-private reference: epochs x N at the non-private rate;
- the teacher's forward passes (synthetic sampling, the teacher states a student distils from): a third of the
  non-private training step per example (forward ~ 1/3 of forward + backward), for every token of every sample
  when sampling. Sampling is memory-bound at small batches, so this is a lower bound for it;
- a distilled student: epochs x synthetic size at the student's non-private rate; DistilDP's also needs one
  teacher forward pass per synthetic sample (its states are cached, as `distill.attach_teacher_states` does; the
  teacher's output layer on them each step is not counted: for GPT-2 Large it is ~8% of a forward pass).

Which stages a grid builds follows the pipeline: per (dataset, epsilon, seed) one DP teacher for DistilDP and
synthetic-only (they share it and its synthetic set), one for DPKD, a DPKD student, a DP-SGD student and two
distilled students; per (dataset, seed) the non-private teacher and student. Hub models come pretrained (free).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import yaml

from distildp.pipeline.settings import make_settings

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "results" / "benchmarks"
# Private training sets of the paper (its Yelp release; its Big Patent and DBpedia preprocessing): N per dataset.
PAPER_TRAIN_SIZES = {"yelp": 1_900_000, "big_patent": 150_000, "dbpedia_14": 195_000}
DP_MODES = ("bookkeeping", "hooks+conv1d", "ghost")


@dataclass(frozen=True)
class StepRates:
    """Seconds per example of one model, from a step benchmark's CSV."""

    source: str
    nonprivate: float
    dp: float
    dp_mode: str

    @property
    def forward(self) -> float:
        return self.nonprivate / 3


def read_rates(path: Path) -> StepRates:
    """Per-example seconds of the non-private step and of the fastest DP mode measured in `path`."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: measure it on a GPU with benchmarks/bench_dpsgd_sweep.py --device cuda "
            f"(docs/gpu.md), or pass --teacher-bench / --student-bench"
        )
    with path.open() as f:
        rows = {row["config"]: row for row in csv.DictReader(f)}
    if "non-private" not in rows:
        raise ValueError(f"{path} has no 'non-private' row to take the non-private rate from")

    def per_example(row: dict) -> float:
        return float(row["s_per_step"]) / int(row["batch"])

    measured = [mode for mode in DP_MODES if mode in rows]
    if not measured:
        raise ValueError(f"{path} has none of the DP modes {DP_MODES}")
    fastest = min(measured, key=lambda mode: per_example(rows[mode]))
    return StepRates(path.name, per_example(rows["non-private"]), per_example(rows[fastest]), fastest)


def stage_costs(grid: dict, train_sizes: dict[str, int], teacher: StepRates, student: StepRates) -> list[dict]:
    """One row per stage kind of `grid`: how many it builds, examples each processes, GPU-hours in all."""
    axes = grid["axes"]
    datasets = axes.get("dataset") or [make_settings(grid["profile"]).dataset]
    epsilons = [e for e in axes["epsilon"] if e != float("inf")]
    seeds = axes.get("seed", [0])
    methods = set(axes["method"])
    references = set(grid.get("references", []))
    rows = []
    for dataset in datasets:
        s = make_settings(grid["profile"], {**grid.get("overrides", {}), "dataset": dataset})
        if dataset not in train_sizes:
            raise ValueError(f"no training size for {dataset!r}: pass --train-size {dataset}=N")
        n = train_sizes[dataset]
        per_budget = len(epsilons) * len(seeds)
        synthetic_tokens = s.synthetic_size * s.generation.max_length
        uses_synthetic = methods & {"distildp", "synthetic_only"}
        stages = [
            (
                "DP teacher (DistilDP, synthetic-only)",
                per_budget if uses_synthetic else 0,
                s.teacher_train.epochs * n,
                teacher.dp,
                f"{teacher.dp_mode} step, {teacher.source}",
            ),
            (
                "synthetic text (sampling)",
                per_budget if uses_synthetic else 0,
                synthetic_tokens,
                teacher.forward / s.generation.max_length,
                "a teacher forward pass per sampled token (lower bound)",
            ),
            (
                "teacher states for distillation",
                per_budget if "distildp" in methods else 0,
                s.synthetic_size,
                teacher.forward,
                "one teacher forward pass per synthetic sample",
            ),
            (
                "distilled students",
                per_budget * len(uses_synthetic),
                s.distill_train.epochs * s.synthetic_size,
                student.nonprivate,
                f"non-private step, {student.source}",
            ),
            (
                "DP teacher (DPKD)",
                per_budget if "dpkd" in methods else 0,
                s.teacher_train.epochs * n,
                teacher.dp,
                f"{teacher.dp_mode} step, {teacher.source}",
            ),
            (
                "DPKD student (DP-SGD + teacher forward)",
                per_budget if "dpkd" in methods else 0,
                s.dpkd_train.epochs * n,
                student.dp + teacher.forward,
                "student DP step + teacher forward",
            ),
            (
                "DP-SGD student",
                per_budget if "dpsgd" in methods else 0,
                s.student_train.epochs * n,
                student.dp,
                f"{student.dp_mode} step, {student.source}",
            ),
            (
                "non-private teacher",
                len(seeds) if "nonprivate_teacher" in references else 0,
                s.teacher_train.epochs * n,
                teacher.nonprivate,
                f"non-private step, {teacher.source}",
            ),
            (
                "non-private student",
                len(seeds) if "nonprivate_student" in references else 0,
                s.student_train.epochs * n,
                student.nonprivate,
                f"non-private step, {student.source}",
            ),
        ]
        for stage, count, examples, seconds_each, basis in stages:
            if count:
                hours = count * examples * seconds_each / 3600
                rows.append(
                    {
                        "dataset": dataset,
                        "n_train": n,
                        "stage": stage,
                        "count": count,
                        "examples_each": round(examples),
                        "gpu_hours": round(hours, 2),
                        "basis": basis,
                    }
                )
    return rows


def parse_sizes(items: list[str]) -> dict[str, int]:
    sizes = dict(PAPER_TRAIN_SIZES)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise ValueError(f"--train-size {item!r}: write dataset=N, e.g. --train-size yelp=650000")
        sizes[name] = int(value)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="paper", help="grid name in benchmarks/grids/ or a .yaml path")
    parser.add_argument("--train-size", action="append", default=[], help="dataset=N (default: the paper's sizes)")
    parser.add_argument("--teacher-bench", default=str(BENCH / "dpsgd_h200_gpt2-large.csv"))
    parser.add_argument("--student-bench", default=str(BENCH / "dpsgd_h200_distilgpt2.csv"))
    parser.add_argument("--out", default=str(BENCH / "cost_model.csv"))
    args = parser.parse_args(argv)
    grid_path = Path(args.grid) if args.grid.endswith(".yaml") else ROOT / "benchmarks" / "grids" / f"{args.grid}.yaml"
    grid = yaml.safe_load(grid_path.read_text())
    rows = stage_costs(
        grid, parse_sizes(args.train_size), read_rates(Path(args.teacher_bench)), read_rates(Path(args.student_bench))
    )
    out = Path(args.out)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    width = max(len(row["stage"]) for row in rows)
    for row in rows:
        print(f"{row['dataset']:<11} {row['stage']:<{width}} x{row['count']:<3} {row['gpu_hours']:>9.1f} GPU-h")
    total = sum(row["gpu_hours"] for row in rows)
    print(f"{'all':<11} {'':<{width}}      {total:>9.1f} GPU-h ({total / 24:.1f} GPU-days) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
