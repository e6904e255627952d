"""The regime map as a table: where DistilDP wins as one axis at a time moves from the embedded default.

Its cells are the main grid's epsilons, then each value of each ablated axis (the runner's `regime` grid). Each
row holds both gates and DistilDP's student minus the best baseline's. The map's figure is
`distildp.reporting.report.plot_regime`, its sentences `distildp.reporting.story.regime_story`.
"""

from __future__ import annotations

import math

import pandas as pd

from distildp.core.methods import METHODS, REFERENCES
from distildp.reporting.results import BASELINES, GATE_1_RATIO, eps_label, normalise, value_key


def regime_table(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The regime map: one row per cell (the main grid's epsilons, then each ablation value), with both gates and
    DistilDP's student minus the best baseline's (negative: DistilDP wins). A cell takes what it lacks from the
    main grid at its epsilon and seed: an axis that cannot change a baseline (lam, synthetic_factor) does not rerun
    it, and references come from the main grid unless the axis reruns them (pretraining, teacher size)."""
    df = normalise(df)
    main = df[df["kind"] == "main"]
    refs = df[df["kind"] == "reference"]
    records = []
    for axis, value, cell in _cells(df, main):
        methods = cell[cell["method"].isin(METHODS)]
        if methods.empty:
            continue
        epsilon, seeds = methods["epsilon"].iloc[0], set(methods["seed"])
        fallback = main[(main["epsilon"] == epsilon) & main["seed"].isin(seeds)]
        have = set(methods["method"])
        cell_main = pd.concat([methods, fallback[~fallback["method"].isin(have)]])
        cell_refs = cell[cell["method"].isin(REFERENCES)]
        cell_refs = pd.concat([cell_refs, refs[~refs["method"].isin(set(cell_refs["method"]))]])
        record = {"axis": axis, "value": value, "ε": eps_label(epsilon)[2:]}
        records.append({**record, **_cell_columns(cell_main, cell_refs, digits), "seeds": len(seeds)})
    return pd.DataFrame(records)


def _cells(df: pd.DataFrame, main: pd.DataFrame) -> list[tuple[str, object, pd.DataFrame]]:
    """(axis, value, rows) of every cell: the main grid's epsilons, then each ablated knob's values in grid order."""
    cells = [("epsilon", eps_label(e)[2:], main[main["epsilon"] == e]) for e in sorted(main["epsilon"].unique())]
    ablations = df[df["kind"] == "ablation"]
    for knob in dict.fromkeys(ablations["knob"]):
        rows = ablations[ablations["knob"] == knob]
        for _, group in rows.groupby(value_key(rows), sort=False):
            cells.append((knob, group["value"].iloc[0], group))
    return cells


def _mean_ppl(frame: pd.DataFrame, method: str, metric: str = "student_ppl") -> float:
    return frame.loc[frame["method"] == method, metric].mean()


def _cell_columns(cell_main: pd.DataFrame, cell_refs: pd.DataFrame, digits: int) -> dict:
    """One cell's gates and DistilDP's margin over the best baseline, from its method and reference rows."""
    ratio = _mean_ppl(cell_refs, "pretrained_teacher", "teacher_ppl") / _mean_ppl(cell_refs, "pretrained_student")
    teacher, dpsgd, ours = (
        _mean_ppl(cell_main, "distildp", "teacher_marginal_ppl"),
        _mean_ppl(cell_main, "dpsgd"),
        _mean_ppl(cell_main, "distildp"),
    )
    baselines = {m: _mean_ppl(cell_main, m) for m in BASELINES if m in set(cell_main["method"])}
    best = min(baselines, key=baselines.get) if baselines else ""
    return {
        "gate 1 (teacher/student)": round(ratio, 3),
        "gate 1": "" if math.isnan(ratio) else "PASS" if ratio <= GATE_1_RATIO else "FAIL",
        "DP teacher": round(teacher, digits),
        "dpsgd": round(dpsgd, digits),
        "gate 2": "" if math.isnan(teacher) or math.isnan(dpsgd) else "PASS" if teacher < dpsgd else "FAIL",
        "distildp": round(ours, digits),
        "best baseline": best,
        "Δ distildp - best": round(ours - baselines[best], digits) if best else math.nan,
    }
