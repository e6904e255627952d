"""Results rows -> tables: student perplexity versus epsilon, the gates and the verdict, ablations.

A *row* is the dict `Pipeline.run` returns (one method, epsilon, seed), saved by the benchmark notebook as
`row.json`. The runner (distildp.runner.points) keeps a `point.json` beside it with what the grid asked for:
`point_id`, `kind` ('main', 'reference' or 'ablation'), for ablations `knob` and `value`, and `variant`
(the values of the grid's other axes, e.g. 'dataset-yelp'; '' when it has none: one table per variant).
Tables show mean ± sample std (ddof=1) over seeds; epsilon = inf (non-private) is written ∞.
The regime map's table is `distildp.reporting.regime`'s; the figures and the files a grid writes are
`distildp.reporting.report`'s; the same tables told in sentences, `distildp.reporting.story`'s. Reading results loads
no torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from distildp.core.methods import METHODS, REFERENCES, method_label

# The core columns (method, budget, perplexities, privacy spent) first, then the extras the pipeline and runner add.
COLUMNS = [
    "dataset",
    "method",
    "epsilon",
    "delta",
    "seed",
    "student_ppl",
    "teacher_ppl",
    "floor",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "synthetic_size",
    "wall_time_s",
]
EXTRA_COLUMNS = [
    "epsilon_spent",
    "teacher_floor",
    "teacher_marginal_ppl",
    "val_ppl",
    "teacher_val_ppl",
    "private",
    "epsilon_covers",
    "opd_teacher",
    "dp_randomness",
    "mechanisms",
    "histogram",
    "run_time_s",
    "kind",
    "knob",
    "value",
    "variant",
    "point_id",
]
NUMERIC = [
    "epsilon",
    "epsilon_spent",
    "delta",
    "seed",
    "student_ppl",
    "teacher_ppl",
    "teacher_marginal_ppl",
    "val_ppl",
    "teacher_val_ppl",
    "floor",
    "teacher_floor",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "synthetic_size",
    "wall_time_s",
    "run_time_s",
]
# Gate 1 of the embedded default: the public teacher must be clearly better than the public student.
GATE_1_RATIO = 0.8
PUBLISHED_GRID = "quick"  # the grid whose tables are committed (results/tables)
BASELINES = ("dpsgd", "dpkd", "synthetic_only")
ROW_FILE, POINT_FILE = "row.json", "point.json"


# ---------------------------------------------------------------------------------------------- loading
def grid_dirs(results_dir: str | Path, grid: str) -> tuple[Path, Path, Path]:
    """(runs, tables, figures) of a grid under the runner's --results folder. The quick grid's tables and figures
    are the committed ones (results/tables, results/figures); every other grid's go to results/<grid>/, so a
    smoke run never overwrites them."""
    results_dir = Path(results_dir)
    published = results_dir if grid == PUBLISHED_GRID else results_dir / grid
    return results_dir / "runs" / grid, published / "tables", published / "figures"


def load_rows(runs_dir: str | Path, only: Iterable[str] | None = None) -> pd.DataFrame:
    """Every finished run under `runs_dir` (`<point_id>/row.json`, merged with its `point.json`).

    `only`: keep just these point ids (the points of the current grid). Unfinished points are skipped.
    """
    runs_dir = Path(runs_dir)
    wanted = set(only) if only is not None else None
    records = []
    for row_path in sorted(runs_dir.glob(f"*/{ROW_FILE}")):
        point_id = row_path.parent.name
        if wanted is not None and point_id not in wanted:
            continue
        record = json.loads(row_path.read_text())
        point_path = row_path.parent / POINT_FILE
        point = json.loads(point_path.read_text()) if point_path.exists() else {}
        record.update({k: point.get(k) for k in ("kind", "knob", "value", "variant")})
        record["point_id"] = point_id
        records.append(record)
    return normalise(pd.DataFrame(records))


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Column order of COLUMNS, numbers as floats ('inf'/'nan' strings from JSON included), `kind` filled."""
    df = df.copy()
    for column in COLUMNS + EXTRA_COLUMNS:
        if column not in df:
            df[column] = np.nan if column in NUMERIC else None
    for column in NUMERIC:
        df[column] = as_float(df[column])
    for column in ("variant", "opd_teacher", "epsilon_covers"):  # CSV reads '' as NaN
        df[column] = df[column].astype(object).where(df[column].notna(), "")
    # a method as every table prints it: DP-OPD with its teacher, and a row whose epsilon does not cover every use of
    # the private data marked, so that no table can show it as epsilon-DP
    df["method"] = [method_label(*row) for row in zip(df["method"], df["opd_teacher"], df["epsilon_covers"])]
    missing_kind = df["kind"].isna()
    df.loc[missing_kind, "kind"] = np.where(df.loc[missing_kind, "method"].isin(REFERENCES), "reference", "main")
    extras = [c for c in df.columns if c not in COLUMNS + EXTRA_COLUMNS]
    return df[COLUMNS + EXTRA_COLUMNS + extras].reset_index(drop=True)


def as_float(values: pd.Series) -> pd.Series:
    """Numbers as floats; JSON rows (manifests.jsonable) write inf and nan as strings, anything else unreadable
    becomes nan."""
    return pd.to_numeric(values.replace({"inf": math.inf, "-inf": -math.inf, "nan": math.nan}), errors="coerce").astype(
        float
    )


def read_csv(path: str | Path) -> pd.DataFrame:
    """A rows CSV written by `write_report` (∞ and NaN survive the round trip)."""
    return normalise(pd.read_csv(path))


# ---------------------------------------------------------------------------------------------- tables
def eps_label(epsilon: float) -> str:
    if math.isinf(epsilon):
        return "ε=∞"
    return f"ε={epsilon:g}"


def mean_std(values: pd.Series, digits: int = 2) -> str:
    """'mean ± std' (sample std over seeds); just the mean for one seed; '' when there is nothing."""
    values = values.dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def seeds_label(counts: Iterable[int]) -> str:
    counts = sorted(set(int(c) for c in counts if c))
    if not counts:
        return ""
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def ppl_table(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Method x epsilon table of student perplexity, 'mean ± std' over seeds, with a `seeds` column.

    Reference rows sit in their own epsilon column (pretrained: ε=0, no private data; non-private: ε=∞);
    teacher references show the teacher's perplexity (control codes given). The exact floors, when the
    corpus has one, are rows of their own.
    """
    df = normalise(df)
    main = df[df["kind"] == "main"]
    refs = df[df["kind"] == "reference"]
    epsilons = sorted(set(main["epsilon"]) | set(refs["epsilon"]))
    columns = [eps_label(e) for e in epsilons]
    rows: dict[str, dict[str, str]] = {}

    def add(label: str, frame: pd.DataFrame, metric: str) -> None:
        cells = {col: "" for col in columns}
        counts = []
        for epsilon, group in frame.groupby("epsilon"):
            cells[eps_label(epsilon)] = mean_std(group[metric], digits)
            counts.append(group["seed"].nunique())
        cells["seeds"] = seeds_label(counts)
        rows[label] = cells

    ordered = [m for m in METHODS if m in set(main["method"])] + sorted(set(main["method"]) - set(METHODS))
    for method in ordered:
        add(method, main[main["method"] == method], "student_ppl")
    distildp = main[main["method"] == "distildp"]
    if distildp["teacher_marginal_ppl"].notna().any():
        add("distildp's DP teacher (codes from the DP histogram)", distildp, "teacher_marginal_ppl")
    labels = {
        "pretrained_teacher": "pretrained_teacher (plain text)",
        "nonprivate_teacher": "nonprivate_teacher (codes given)",
    }
    for method in [r for r in REFERENCES if r in set(refs["method"])]:
        add(
            labels.get(method, method),
            refs[refs["method"] == method],
            "teacher_ppl" if method.endswith("teacher") else "student_ppl",
        )
    for column, label in (("floor", "floor (exact)"), ("teacher_floor", "teacher floor (exact, codes given)")):
        if label.startswith("teacher") and not any(m.endswith("teacher") for m in refs["method"]):
            continue
        values = df[column].dropna()
        if not values.empty:
            rows[label] = {**{col: f"{values.mean():.{digits}f}" for col in columns}, "seeds": ""}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns + ["seeds"])
    table.index.name = "method"
    return table


def seed_noise(df: pd.DataFrame, epsilon: float) -> float:
    """Twice the largest seed std (ddof=1) among DistilDP and the baselines at `epsilon`: the margin a win or a
    loss must exceed in the verdict. NaN when no method there has two seeds."""
    main = normalise(df)
    main = main[(main["kind"] == "main") & (main["epsilon"] == epsilon) & main["method"].isin(("distildp", *BASELINES))]
    stds = [v.std(ddof=1) for _, v in main.groupby("method")["student_ppl"] if len(v.dropna()) > 1]
    return 2 * max(stds) if stds else math.nan


GATES_COLUMNS = ["check", "ε", "DistilDP side", "other side", "margin", "result"]


def gates_table(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The two premises DistilDP needs, each measured on the same test text the same way for both models:

    gate 1: the pretrained teacher's perplexity <= GATE_1_RATIO x the pretrained student's (plain text);
    gate 2, at each epsilon: DistilDP's DP teacher, as the synthetic text is drawn from it (codes from the DP
    histogram, scored like a student), below the DP-SGD student.
    Then, per epsilon, the verdict: DistilDP's student against the best baseline, a win counted only when the
    gap exceeds twice the larger seed std.
    """
    df = normalise(df)
    records = [_gate_1_row(df[df["kind"] == "reference"], digits)]
    main = df[df["kind"] == "main"]
    for epsilon in sorted(main["epsilon"].unique()):
        at = main[main["epsilon"] == epsilon]
        records += [_gate_2_row(at, epsilon, digits), _verdict_row(at, epsilon, digits)]
    return pd.DataFrame([r for r in records if r is not None], columns=GATES_COLUMNS)


def _gate_1_row(refs: pd.DataFrame, digits: int) -> dict | None:
    """Gate 1 from the reference rows; None without both pretrained models."""
    teacher = refs.loc[refs["method"] == "pretrained_teacher", "teacher_ppl"].dropna()
    student = refs.loc[refs["method"] == "pretrained_student", "student_ppl"].dropna()
    if teacher.empty or student.empty:
        return None
    ratio = teacher.mean() / student.mean()
    return {
        "check": f"gate 1: pretrained teacher <= {GATE_1_RATIO} x pretrained student",
        "ε": "",
        "DistilDP side": f"teacher {mean_std(teacher, digits)}",
        "other side": f"student {mean_std(student, digits)}",
        "margin": f"ratio {ratio:.3f}",
        "result": "PASS" if ratio <= GATE_1_RATIO else "FAIL",
    }


def _gate_2_row(at: pd.DataFrame, epsilon: float, digits: int) -> dict | None:
    """Gate 2 from the main rows at `epsilon`; None without DistilDP's DP teacher and the DP-SGD student."""
    dp_teacher = at.loc[at["method"] == "distildp", "teacher_marginal_ppl"].dropna()
    dpsgd = at.loc[at["method"] == "dpsgd", "student_ppl"].dropna()
    if dp_teacher.empty or dpsgd.empty:
        return None
    return {
        "check": "gate 2: DP teacher (as sampled) < DP-SGD student",
        "ε": eps_label(epsilon)[2:],
        "DistilDP side": f"teacher {mean_std(dp_teacher, digits)}",
        "other side": f"dpsgd {mean_std(dpsgd, digits)}",
        "margin": f"{dp_teacher.mean() - dpsgd.mean():+.{digits}f}",
        "result": "PASS" if dp_teacher.mean() < dpsgd.mean() else "FAIL",
    }


def _verdict_row(at: pd.DataFrame, epsilon: float, digits: int) -> dict | None:
    """DistilDP's student against the best baseline at `epsilon`: WIN or LOSS beyond twice the largest seed std,
    else TIE (ahead or behind with one seed); None without DistilDP's student or any baseline."""
    ours = at.loc[at["method"] == "distildp", "student_ppl"].dropna()
    others = {m: at.loc[at["method"] == m, "student_ppl"].dropna() for m in BASELINES}
    others = {m: v for m, v in others.items() if not v.empty}
    if ours.empty or not others:
        return None
    best = min(others, key=lambda m: others[m].mean())
    gap = others[best].mean() - ours.mean()
    noise = seed_noise(at, epsilon)
    seeds = not math.isnan(noise)
    result = (
        ("WIN" if gap > noise else "LOSS" if -gap > noise else "TIE")
        if seeds
        else ("ahead (1 seed)" if gap > 0 else "behind (1 seed)")
    )
    return {
        "check": "DistilDP student vs the best baseline",
        "ε": eps_label(epsilon)[2:],
        "DistilDP side": f"distildp {mean_std(ours, digits)}",
        "other side": f"{best} {mean_std(others[best], digits)}",
        "margin": (f"{-gap:+.{digits}f} (2 x max std {noise:.{digits}f})" if seeds else f"{-gap:+.{digits}f}"),
        "result": result,
    }


def ablation_rows(df: pd.DataFrame, knob: str) -> pd.DataFrame:
    """The ablation rows of `knob`, normalised; a ValueError naming the knobs present when there are none."""
    df = normalise(df)
    rows = df[(df["kind"] == "ablation") & (df["knob"] == knob)]
    if rows.empty:
        raise ValueError(f"no ablation rows for knob {knob!r}; knobs present: {ablation_knobs(df)}")
    return rows


def ablation_table(df: pd.DataFrame, knob: str, digits: int = 2) -> pd.DataFrame:
    """One row per value of `knob`: student (and teacher) perplexity 'mean ± std' over seeds."""
    rows = ablation_rows(df, knob)
    # what a learning rate is chosen by: the validation split of the stage it trains (never the test split)
    selection = "teacher_val_ppl" if str(rows["knob"].iloc[0]).startswith("teacher_train") else "val_ppl"
    records = []
    for (method, epsilon, _), group in rows.groupby(["method", "epsilon", value_key(rows)], sort=False):
        records.append(
            {
                knob: group["value"].iloc[0],
                "method": method,
                "epsilon": eps_label(epsilon)[2:],
                "student_ppl": mean_std(group["student_ppl"], digits),
                "teacher_ppl": mean_std(group["teacher_ppl"], digits),
                "val_ppl": mean_std(group["val_ppl"], digits),
                "teacher_val_ppl": mean_std(group["teacher_val_ppl"], digits),
                "seeds": group["seed"].nunique(),
                "_order": _sortable(group["value"].iloc[0]),
                "_selection": group[selection].mean(),
            }
        )
    table = pd.DataFrame(records).sort_values(["method", "epsilon", "_order"])
    best = table.groupby(["method", "epsilon"])["_selection"].transform("min")
    table[f"best {selection}"] = np.where(table["_selection"] == best, "✓", "")
    return table.drop(columns=["_order", "_selection"]).reset_index(drop=True)


def ablation_knobs(df: pd.DataFrame) -> list[str]:
    df = normalise(df)
    return sorted(df.loc[df["kind"] == "ablation", "knob"].dropna().unique())


def value_key(rows: pd.DataFrame) -> pd.Series:
    return rows["value"].map(repr).rename("value_key")  # numbers or strings (or None): group by their text


def _sortable(value) -> tuple:
    return (0, float(value), "") if isinstance(value, (int, float)) and value is not None else (1, 0.0, str(value))


def to_markdown(table: pd.DataFrame, index: bool = True) -> str:
    """A GitHub Markdown table (pandas' own to_markdown needs the `tabulate` package)."""
    frame = table.reset_index() if index and table.index.name else table
    header = [str(c) for c in frame.columns]
    body = [["" if _blank(v) else str(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)]) + "\n"


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def main(argv: list[str] | None = None) -> int:
    """`python -m distildp.reporting.results [TABLES_DIR]`: print the gates, the verdict and the perplexity table."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("tables", nargs="?", default="results/tables", help="a tables directory written by the runner")
    path = Path(parser.parse_args(argv).tables) / "ppl_vs_eps.md"
    if not path.exists():
        print(f"no {path}: run the grid first (make run)")
        return 1
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
