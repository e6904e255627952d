"""The regime map as a table: where DistilDP wins as one axis at a time moves from the embedded default.

Its cells are the main grid's epsilons, then each value of each ablated axis (the runner's `regime` grid), DP-OPD's
teacher among them. Each row holds both gates, DP-OPD's student and DistilDP's student minus the best baseline's
(DP-OPD counts as a baseline where its epsilon covers every use of the private data; a cell whose DP-OPD does not is
marked in its value). The map's figure is
`distildp.reporting.report.plot_regime`, its sentences `distildp.reporting.story.regime_story`.
"""

from __future__ import annotations

import math

import pandas as pd

from distildp.core.methods import COVERS_ALL, METHODS, REFERENCES, method_of
from distildp.reporting.results import BASELINES, GATE_1_RATIO, eps_label, normalise, value_key


def regime_table(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The regime map: one row per cell (the main grid's epsilons, then each ablation value), with both gates and
    DistilDP's student minus the best baseline's (negative: DistilDP wins). A cell takes what it lacks from the
    main grid at its epsilon and seed: an axis that cannot change a baseline (lam, synthetic_factor) does not rerun
    it, and references come from the main grid unless the axis reruns them (pretraining, teacher size)."""
    df = normalise(df)
    df = df.assign(_method=df["method"].map(method_of))  # the method a label names (DP-OPD's carries its teacher)
    main = df[df["kind"] == "main"]
    refs = df[df["kind"] == "reference"]
    records = []
    for axis, value, cell in _cells(df, main):
        methods = cell[cell["_method"].isin(METHODS)]
        if methods.empty:
            continue
        epsilon, seeds = methods["epsilon"].iloc[0], set(methods["seed"])
        fallback = main[(main["epsilon"] == epsilon) & main["seed"].isin(seeds)]
        have = set(methods["_method"])
        cell_main = pd.concat([methods, fallback[~fallback["_method"].isin(have)]])
        cell_refs = cell[cell["method"].isin(REFERENCES)]
        cell_refs = pd.concat([cell_refs, refs[~refs["method"].isin(set(cell_refs["method"]))]])
        record = {"axis": axis, "value": _marked(value, methods), "ε": eps_label(epsilon)[2:]}
        records.append({**record, **_cell_columns(cell_main, cell_refs, digits), "seeds": len(seeds)})
    table = pd.DataFrame(records)
    return table.drop(columns="dpopd") if "dpopd" in table and table["dpopd"].isna().all() else table  # not run


def _marked(value, methods: pd.DataFrame):
    """A cell's value, marked with what its epsilon covers when the cell's own rows do not cover every use of the
    private data (DP-OPD's non-private teacher): such a cell is never shown as epsilon-DP."""
    covers = {c for c in methods["epsilon_covers"] if c and c != COVERS_ALL}
    return f"{value} [epsilon covers {', '.join(sorted(covers))}]" if covers else value


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
    return frame.loc[frame["_method"] == method, metric].mean()


def _cell_columns(cell_main: pd.DataFrame, cell_refs: pd.DataFrame, digits: int) -> dict:
    """One cell's gates and DistilDP's margin over the best baseline, from its method and reference rows."""
    ratio = _mean_ppl(cell_refs, "pretrained_teacher", "teacher_ppl") / _mean_ppl(cell_refs, "pretrained_student")
    teacher, dpsgd, ours = (
        _mean_ppl(cell_main, "distildp", "teacher_marginal_ppl"),
        _mean_ppl(cell_main, "dpsgd"),
        _mean_ppl(cell_main, "distildp"),
    )
    baselines = {m: _mean_ppl(cell_main, m) for m in BASELINES if m in set(cell_main["_method"])}
    on_policy = cell_main[cell_main["_method"] == "dpopd"]
    if not on_policy.empty and (on_policy["epsilon_covers"].isin(["", COVERS_ALL])).all():
        baselines[on_policy["method"].iloc[0]] = on_policy["student_ppl"].mean()  # by its label: with its teacher
    best = min(baselines, key=baselines.get) if baselines else ""
    return {
        "gate 1 (teacher/student)": round(ratio, 3),
        "gate 1": "" if math.isnan(ratio) else "PASS" if ratio <= GATE_1_RATIO else "FAIL",
        "DP teacher": round(teacher, digits),
        "dpsgd": round(dpsgd, digits),
        "gate 2": "" if math.isnan(teacher) or math.isnan(dpsgd) else "PASS" if teacher < dpsgd else "FAIL",
        "dpopd": round(on_policy["student_ppl"].mean(), digits) if not on_policy.empty else math.nan,
        "distildp": round(ours, digits),
        "best baseline": best,
        "Δ distildp - best": round(ours - baselines[best], digits) if best else math.nan,
    }
