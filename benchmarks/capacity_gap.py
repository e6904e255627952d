"""Does DistilDP need a teacher much larger than its student? The quick profile with each teacher preset.

    python benchmarks/capacity_gap.py --epsilons 2 8 --seeds 0 [--device cuda] [--out results/capacity_gap]

DistilDP's premise is a teacher with far more capacity than the student (GPT-2 Large vs DistilGPT2, ~9x
parameters). The embedded default's tiny teacher has only 1.4x the student's parameters; `small-teacher` has
~6x. This runs the teacher-dependent methods with both teachers (dpsgd does not use one) through the same
`Pipeline.run` the notebooks call, without papermill, so it also runs where Jupyter is not installed (a GPU box).
Writes rows.csv and table.md under --out.
"""
from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

import pandas as pd

from distildp.artifacts import ArtifactStore
from distildp.pipeline import Pipeline, make_settings
from distildp.results import to_markdown

TEACHERS = ("tiny-teacher", "small-teacher")
TEACHER_METHODS = ("distildp", "dpkd", "synthetic_only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 8.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--profile", default="quick", help="smoke for a seconds-long check of this script")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--store", default=None, help="artifact store (default: .artifacts/)")
    parser.add_argument("--overrides", default="{}", help="extra Settings overrides as a Python dict literal")
    parser.add_argument("--out", default="results/capacity_gap")
    args = parser.parse_args()
    extra = ast.literal_eval(args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = ArtifactStore(args.store) if args.store else None
    rows = []

    def record(teacher: str, row: dict) -> None:
        rows.append({"teacher_model": teacher, **row})
        pd.DataFrame(rows).to_csv(out / "rows.csv", index=False)  # after every row: a killed run keeps its rows
        print(f"{teacher:14s} {row['method']:20s} eps={row['epsilon']:<5} seed={row['seed']} "
              f"student {row['student_ppl']:8.2f}  teacher {row['teacher_ppl']:8.2f}  ({row['run_time_s']} s)",
              flush=True)

    started = time.time()
    for teacher in TEACHERS:
        pipe = Pipeline(make_settings(args.profile, {"teacher_model": teacher, "device": args.device, **extra}), store,
                        progress=False)
        record(teacher, pipe.run("pretrained_teacher", 0.0, 0))
        for seed in args.seeds:
            record(teacher, pipe.run("nonprivate_teacher", float("inf"), seed))
            for epsilon in args.epsilons:
                methods = TEACHER_METHODS + (("dpsgd",) if teacher == TEACHERS[0] else ())
                for method in methods:
                    record(teacher, pipe.run(method, epsilon, seed))
    frame = pd.DataFrame(rows)
    frame["ppl"] = frame["student_ppl"].where(frame["student_ppl"].notna(), frame["teacher_ppl"])
    frame["column"] = frame["teacher_model"] + " ε=" + frame["epsilon"].map(lambda e: f"{e:g}")
    table = frame.pivot_table(index="method", columns="column", values="ppl", aggfunc="mean", sort=False)
    markdown = to_markdown(table.round(2).astype(str).replace("nan", ""))
    (out / "table.md").write_text(markdown + "\n")
    print(markdown)
    print(f"{time.time() - started:.0f} s on {pipe.device}")


if __name__ == "__main__":
    main()
