"""Results rows -> tables (CSV, Markdown) and figures: student perplexity versus epsilon, and ablations.

A *row* is the dict `Pipeline.run` returns (one method, epsilon, seed), saved by the benchmark notebook as
`row.json`. The runner (benchmarks/run.py) keeps a `point.json` beside it with what the grid asked for:
`point_id`, `kind` ('main', 'reference' or 'ablation'), for ablations `knob` and `value`, and `variant`
(the values of the grid's other axes, e.g. 'dataset-yelp'; '' when it has none: one table per variant).
Tables show mean ± sample std (ddof=1) over seeds; epsilon = inf (non-private) is written ∞.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from distildp.methods import METHODS, REFERENCES

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
    df["variant"] = df["variant"].astype(object).where(df["variant"].notna(), "")  # CSV reads '' as NaN
    missing_kind = df["kind"].isna()
    df.loc[missing_kind, "kind"] = np.where(df.loc[missing_kind, "method"].isin(REFERENCES), "reference", "main")
    extras = [c for c in df.columns if c not in COLUMNS + EXTRA_COLUMNS]
    return df[COLUMNS + EXTRA_COLUMNS + extras].reset_index(drop=True)


def as_float(values: pd.Series) -> pd.Series:
    """Numbers as floats; JSON rows (artifacts.jsonable) write inf and nan as strings, anything else unreadable
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


def _seeds_label(counts: Iterable[int]) -> str:
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
        cells["seeds"] = _seeds_label(counts)
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


def gates_table(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The two premises DistilDP needs, each measured on the same test text the same way for both models:

    gate 1: the pretrained teacher's perplexity <= GATE_1_RATIO x the pretrained student's (plain text);
    gate 2, at each epsilon: DistilDP's DP teacher, as the synthetic text is drawn from it (codes from the DP
    histogram, scored like a student), below the DP-SGD student.
    Then, per epsilon, the verdict: DistilDP's student against the best baseline, a win counted only when the
    gap exceeds twice the larger seed std.
    """
    df = normalise(df)
    records = []
    refs = df[df["kind"] == "reference"]
    teacher = refs.loc[refs["method"] == "pretrained_teacher", "teacher_ppl"].dropna()
    student = refs.loc[refs["method"] == "pretrained_student", "student_ppl"].dropna()
    if not teacher.empty and not student.empty:
        ratio = teacher.mean() / student.mean()
        records.append(
            {
                "check": f"gate 1: pretrained teacher <= {GATE_1_RATIO} x pretrained student",
                "ε": "",
                "DistilDP side": f"teacher {mean_std(teacher, digits)}",
                "other side": f"student {mean_std(student, digits)}",
                "margin": f"ratio {ratio:.3f}",
                "result": "PASS" if ratio <= GATE_1_RATIO else "FAIL",
            }
        )
    main = df[df["kind"] == "main"]
    for epsilon in sorted(main["epsilon"].unique()):
        at = main[main["epsilon"] == epsilon]
        dp_teacher = at.loc[at["method"] == "distildp", "teacher_marginal_ppl"].dropna()
        dpsgd = at.loc[at["method"] == "dpsgd", "student_ppl"].dropna()
        if not dp_teacher.empty and not dpsgd.empty:
            records.append(
                {
                    "check": "gate 2: DP teacher (as sampled) < DP-SGD student",
                    "ε": eps_label(epsilon)[2:],
                    "DistilDP side": f"teacher {mean_std(dp_teacher, digits)}",
                    "other side": f"dpsgd {mean_std(dpsgd, digits)}",
                    "margin": f"{dp_teacher.mean() - dpsgd.mean():+.{digits}f}",
                    "result": "PASS" if dp_teacher.mean() < dpsgd.mean() else "FAIL",
                }
            )
        ours = at.loc[at["method"] == "distildp", "student_ppl"].dropna()
        others = {m: at.loc[at["method"] == m, "student_ppl"].dropna() for m in BASELINES}
        others = {m: v for m, v in others.items() if not v.empty}
        if ours.empty or not others:
            continue
        best = min(others, key=lambda m: others[m].mean())
        gap = others[best].mean() - ours.mean()
        stds = [v.std(ddof=1) for v in (ours, *others.values()) if len(v) > 1]
        noise = 2 * max(stds) if stds else math.nan
        result = (
            ("WIN" if gap > noise else "LOSS" if -gap > noise else "TIE")
            if stds
            else ("ahead (1 seed)" if gap > 0 else "behind (1 seed)")
        )
        records.append(
            {
                "check": "DistilDP student vs the best baseline",
                "ε": eps_label(epsilon)[2:],
                "DistilDP side": f"distildp {mean_std(ours, digits)}",
                "other side": f"{best} {mean_std(others[best], digits)}",
                "margin": (f"{-gap:+.{digits}f} (2 x max std {noise:.{digits}f})" if stds else f"{-gap:+.{digits}f}"),
                "result": result,
            }
        )
    return pd.DataFrame(records, columns=["check", "ε", "DistilDP side", "other side", "margin", "result"])


def regime_table(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The regime map: one row per cell (the main grid's epsilons, then each ablation value), with both gates and
    DistilDP's student minus the best baseline's (negative: DistilDP wins). A cell takes what it lacks from the
    main grid at its epsilon and seed: an axis that cannot change a baseline (lam, synthetic_factor) does not rerun
    it, and references come from the main grid unless the axis reruns them (pretraining, teacher size)."""
    df = normalise(df)
    main = df[df["kind"] == "main"]
    refs = df[df["kind"] == "reference"]
    cells = [("epsilon", eps_label(e)[2:], main[main["epsilon"] == e]) for e in sorted(main["epsilon"].unique())]
    ablations = df[df["kind"] == "ablation"]
    for knob in dict.fromkeys(ablations["knob"]):
        rows = ablations[ablations["knob"] == knob]
        for _, group in rows.groupby(_value_key(rows), sort=False):
            cells.append((knob, group["value"].iloc[0], group))
    records = []
    for axis, value, cell in cells:
        methods = cell[cell["method"].isin(METHODS)]
        if methods.empty:
            continue
        epsilon, seeds = methods["epsilon"].iloc[0], set(methods["seed"])
        fallback = main[(main["epsilon"] == epsilon) & main["seed"].isin(seeds)]
        have = set(methods["method"])
        cell_main = pd.concat([methods, fallback[~fallback["method"].isin(have)]])
        cell_refs = cell[cell["method"].isin(REFERENCES)]
        cell_refs = pd.concat([cell_refs, refs[~refs["method"].isin(set(cell_refs["method"]))]])

        def ppl(frame: pd.DataFrame, method: str, metric: str = "student_ppl") -> float:
            return frame.loc[frame["method"] == method, metric].mean()

        ratio = ppl(cell_refs, "pretrained_teacher", "teacher_ppl") / ppl(cell_refs, "pretrained_student")
        teacher, dpsgd, ours = (
            ppl(cell_main, "distildp", "teacher_marginal_ppl"),
            ppl(cell_main, "dpsgd"),
            ppl(cell_main, "distildp"),
        )
        baselines = {m: ppl(cell_main, m) for m in BASELINES if m in set(cell_main["method"])}
        best = min(baselines, key=baselines.get) if baselines else ""
        records.append(
            {
                "axis": axis,
                "value": value,
                "ε": eps_label(epsilon)[2:],
                "gate 1 (teacher/student)": round(ratio, 3),
                "gate 1": "" if math.isnan(ratio) else "PASS" if ratio <= GATE_1_RATIO else "FAIL",
                "DP teacher": round(teacher, digits),
                "dpsgd": round(dpsgd, digits),
                "gate 2": "" if math.isnan(teacher) or math.isnan(dpsgd) else "PASS" if teacher < dpsgd else "FAIL",
                "distildp": round(ours, digits),
                "best baseline": best,
                "Δ distildp - best": round(ours - baselines[best], digits) if best else math.nan,
                "seeds": len(seeds),
            }
        )
    return pd.DataFrame(records)


def plot_regime(table: pd.DataFrame, path: str | Path | None = None):
    """One panel per axis: DistilDP's student minus the best baseline's (below 0: DistilDP wins), with the
    cells where a gate fails hatched."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    axes_names = list(dict.fromkeys(table["axis"]))
    fig, axes = plt.subplots(1, len(axes_names), figsize=(3.2 * len(axes_names), 3.6), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], axes_names):
        part = table[table["axis"] == name]
        delta = part["Δ distildp - best"].to_numpy(float)
        failed = ((part["gate 1"] == "FAIL") | (part["gate 2"] == "FAIL")).to_numpy()
        colors = ["tab:green" if d < 0 else "tab:red" for d in delta]
        bars = ax.bar([str(v) for v in part["value"]], delta, color=colors)
        for bar, fail in zip(bars, failed):
            if fail:
                bar.set_hatch("//")
        ax.axhline(0, color="black", linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("DistilDP − best baseline (PPL)\nbelow 0: DistilDP wins")
    fig.suptitle("Where DistilDP wins (green) or loses (red); hatched: a gate fails", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def ablation_table(df: pd.DataFrame, knob: str, digits: int = 2) -> pd.DataFrame:
    """One row per value of `knob`: student (and teacher) perplexity 'mean ± std' over seeds."""
    df = normalise(df)
    rows = df[(df["kind"] == "ablation") & (df["knob"] == knob)]
    if rows.empty:
        raise ValueError(f"no ablation rows for knob {knob!r}; knobs present: {ablation_knobs(df)}")
    # what a learning rate is chosen by: the validation split of the stage it trains (never the test split)
    selection = "teacher_val_ppl" if str(rows["knob"].iloc[0]).startswith("teacher_train") else "val_ppl"
    records = []
    for (method, epsilon, _), group in rows.groupby(["method", "epsilon", _value_key(rows)], sort=False):
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


def _value_key(rows: pd.DataFrame) -> pd.Series:
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


# ---------------------------------------------------------------------------------------------- the story
def seed_noise(df: pd.DataFrame, epsilon: float) -> float:
    """Twice the largest seed std (ddof=1) among DistilDP and the baselines at `epsilon`: the margin a win or a
    loss must exceed in the verdict. NaN when no method there has two seeds."""
    main = normalise(df)
    main = main[(main["kind"] == "main") & (main["epsilon"] == epsilon) & main["method"].isin(("distildp", *BASELINES))]
    stds = [v.std(ddof=1) for _, v in main.groupby("method")["student_ppl"] if len(v.dropna()) > 1]
    return 2 * max(stds) if stds else math.nan


def story(df: pd.DataFrame, digits: int = 2) -> list[str]:
    """The results of a rows table (main and reference rows, as ppl_vs_eps.csv), in sentences computed from it.

    Gate 1 (with each seed's ratio when the pretrained models have several seeds); then per epsilon: gate 2, the
    verdict (DistilDP's student against the best baseline, by how much, against twice the largest seed std: WIN,
    TIE or LOSS by the same rule as `gates_table`), on how many seeds DistilDP is ahead, and every method best
    first; last, DistilDP against the non-private student and the floor. The labels are gates_table's.
    """
    df = normalise(df)
    f = f".{digits}f"
    sentences: list[str] = []
    refs = df[df["kind"] == "reference"]
    teacher = refs[refs["method"] == "pretrained_teacher"].dropna(subset=["teacher_ppl"])
    student = refs[refs["method"] == "pretrained_student"].dropna(subset=["student_ppl"])
    if not teacher.empty and not student.empty:
        ratio = teacher["teacher_ppl"].mean() / student["student_ppl"].mean()
        status = "PASS" if ratio <= GATE_1_RATIO else "FAIL"
        text = (
            f"Gate 1 {status}: the pretrained teacher's test perplexity "
            f"({mean_std(teacher['teacher_ppl'], digits)}) is {ratio:.3f} x the pretrained student's "
            f"({mean_std(student['student_ppl'], digits)}); DistilDP "
            f"needs at most {GATE_1_RATIO}."
        )
        per_seed = (
            teacher.groupby("seed")["teacher_ppl"].mean() / student.groupby("seed")["student_ppl"].mean()
        ).dropna()
        if len(per_seed) > 1:
            passed = int((per_seed <= GATE_1_RATIO).sum())
            text += (
                f" Seed by seed (each its own public pretraining): {', '.join(f'{r:.3f}' for r in per_seed)}, "
                f"passing on {passed} of {len(per_seed)}."
            )
        sentences.append(text)
    main = df[df["kind"] == "main"]
    for epsilon in sorted(main["epsilon"].unique()):
        at = main[main["epsilon"] == epsilon]
        eps = eps_label(epsilon)[2:]
        ppl = {m: at.loc[at["method"] == m, "student_ppl"].dropna() for m in dict.fromkeys(at["method"])}
        ppl = {m: v for m, v in ppl.items() if not v.empty}
        dp_teacher = at.loc[at["method"] == "distildp", "teacher_marginal_ppl"].dropna()
        if not dp_teacher.empty and "dpsgd" in ppl:
            head_start = ppl["dpsgd"].mean() - dp_teacher.mean()
            sentences.append(
                f"ε = {eps}, gate 2 {'PASS' if head_start > 0 else 'FAIL'}: DistilDP's DP teacher, scored as its "
                f"synthetic text is sampled, is at {mean_std(dp_teacher, digits)}, {_relative(-head_start, f)} "
                f"the DP-SGD student ({mean_std(ppl['dpsgd'], digits)})."
            )
        others = {m: ppl[m] for m in BASELINES if m in ppl}
        if "distildp" in ppl and others:
            ours = ppl["distildp"]
            best = min(others, key=lambda m: others[m].mean())
            gap = others[best].mean() - ours.mean()  # above 0: DistilDP's student is better
            noise = seed_noise(at, epsilon)
            side = _relative(-gap, f)
            compared = (
                f"DistilDP's student ({mean_std(ours, digits)}) is {side} the best baseline, {best} "
                f"({mean_std(others[best], digits)})"
            )
            if math.isnan(noise):
                sentences.append(f"ε = {eps}, one seed: {compared}; with one seed there is no seed std, so no verdict.")
            elif abs(gap) > noise:
                word = "WIN for DistilDP" if gap > 0 else "LOSS for DistilDP"
                sentences.append(
                    f"ε = {eps}, {word}: {compared}, {abs(gap) / noise:.1f} times twice the largest "
                    f"seed std ({noise:{f}}), over {ours.size} seeds."
                )
            else:
                sentences.append(
                    f"ε = {eps}, TIE: {compared}, within twice the largest seed std ({noise:{f}}), "
                    f"over {ours.size} seeds."
                )
            by_seed = (
                at[at["method"].isin(["distildp", best])]
                .pivot_table(index="seed", columns="method", values="student_ppl", aggfunc="mean")
                .dropna()
            )
            if len(by_seed) > 1:
                margins = by_seed[best] - by_seed["distildp"]
                sentences.append(
                    f"ε = {eps}, seed by seed: DistilDP's student is below {best}'s on "
                    f"{int((margins > 0).sum())} of {len(margins)} seeds (by "
                    f"{', '.join(f'{m:{f}}' for m in margins)})."
                )
        if len(ppl) > 1:
            ranked = sorted(ppl, key=lambda m: ppl[m].mean())
            sentences.append(
                f"ε = {eps}, every method, best first: " + ", ".join(f"{m} {ppl[m].mean():{f}}" for m in ranked) + "."
            )
    nonprivate = refs.loc[refs["method"] == "nonprivate_student", "student_ppl"].dropna()
    ours_by_eps = main[main["method"] == "distildp"].groupby("epsilon")["student_ppl"].mean()
    ours_by_eps = ours_by_eps[np.isfinite(ours_by_eps.index)]
    if not nonprivate.empty and not ours_by_eps.empty:
        floor = df["floor"].dropna()
        sentences.append(
            f"For scale: the student fine-tuned on the private data without privacy reaches {nonprivate.mean():{f}}; "
            + "; ".join(
                f"DistilDP's at ε = {eps_label(e)[2:]} is {_relative(p - nonprivate.mean(), f)} it"
                for e, p in ours_by_eps.items()
            )
            + (f"; no model can go below the exact floor, {floor.mean():{f}}." if not floor.empty else ".")
        )
    return sentences


def _relative(difference: float, f: str) -> str:
    """'4.75 above' / '14.10 below' for a difference of perplexities (above: worse)."""
    return f"{abs(difference):{f}} {'above' if difference > 0 else 'below'}"


def regime_story(table: pd.DataFrame, noise: float | None = None, digits: int = 2) -> list[str]:
    """The regime map (`regime_table`, or its regime.csv) in sentences: how many cells DistilDP wins, its widest
    win and loss, each loss with its gates and the DP teacher's head start against the gap distillation leaves, and
    where a gate fails. `noise` (e.g. `seed_noise` of the quick grid): cells with |Δ| <= noise are called ties; the
    map has one seed per cell, so it has no std of its own."""
    f = f".{digits}f"
    if table.empty:
        return []
    delta_col = "Δ distildp - best"
    table = table.assign(_delta=pd.to_numeric(table[delta_col], errors="coerce")).dropna(subset=["_delta"])
    name = lambda cell: f"{cell['axis']} = {cell['value']}"  # noqa: E731
    band = noise if noise is not None and not math.isnan(noise) else 0.0
    wins, losses = table[table["_delta"] < -band], table[table["_delta"] > band]
    ties = table[table["_delta"].abs() <= band] if band else table.iloc[0:0]
    seeds = _seeds_label(table["seeds"]) if "seeds" in table else ""
    sentences = [
        f"The regime map has {len(table)} cells"
        + (" (one seed each)" if seeds == "1" else f" ({seeds} seeds each)" if seeds else "")
        + f", each moving one axis from the embedded default: DistilDP's student is below the best "
        f"baseline in {len(wins)}, above it in {len(losses)}"
        + (f", and within ±{band:{f}} (a tie) in {len(ties)}" if band else "")
        + "."
    ]
    widest_win = table.loc[table["_delta"].idxmin()]
    if widest_win["_delta"] < 0:
        sentences.append(
            f"Widest win: {name(widest_win)} (Δ {widest_win['_delta']:+{f}} against {widest_win['best baseline']})."
        )
    for _, cell in losses.sort_values("_delta", ascending=False).iterrows():
        failed = [g for g in ("gate 1", "gate 2") if cell.get(g) == "FAIL"]
        teacher_vs_dpsgd = cell["DP teacher"] - cell["dpsgd"]  # below 0: the teacher's head start
        gap = cell["distildp"] - cell["DP teacher"]  # what distillation leaves between teacher and student
        sentences.append(
            f"Behind at {name(cell)}: Δ {cell['_delta']:+{f}} against {cell['best baseline']}, "
            + (f"{' and '.join(failed)} failing" if failed else "both gates passing")
            + f": the DP teacher is {_relative(teacher_vs_dpsgd, f)} the DP-SGD student, DistilDP's student "
            f"{_relative(gap, f)} the teacher, so {_relative(teacher_vs_dpsgd + gap, f)} DP-SGD"
            + ("." if cell["best baseline"] == "dpsgd" else f"; {cell['best baseline']} is lower still.")
        )
    if not ties.empty:
        sentences.append(
            "Within the tie band: " + ", ".join(f"{name(c)} (Δ {c['_delta']:+{f}})" for _, c in ties.iterrows()) + "."
        )
    failing = table[(table.get("gate 1") == "FAIL") | (table.get("gate 2") == "FAIL")]
    ahead_anyway = failing[failing["_delta"] < -band]
    if not ahead_anyway.empty:
        sentences.append(
            "A gate fails but DistilDP is still ahead at: "
            + ", ".join(f"{name(c)} (Δ {c['_delta']:+{f}})" for _, c in ahead_anyway.iterrows())
            + ": the gates are premises, not a prediction."
        )
    return sentences


# ---------------------------------------------------------------------------------------------- figures
def _x_positions(epsilons: Iterable[float]) -> tuple[dict[float, float], list[float], list[str]]:
    """Log-scale x positions; ∞ sits one decade right of the largest finite epsilon."""
    finite = sorted(e for e in set(epsilons) if math.isfinite(e) and e > 0)
    right = (finite[-1] * 10) if finite else 10.0
    positions = {e: e for e in finite}
    if any(math.isinf(e) for e in epsilons):
        positions[math.inf] = right
    ticks = sorted(positions.values())
    labels = ["∞" if t == right and math.inf in positions else f"{t:g}" for t in ticks]
    return positions, ticks, labels


def plot_ppl_vs_eps(df: pd.DataFrame, path: str | Path | None = None, ax=None):
    """Student perplexity vs epsilon per method (error bars: std over seeds), the floor and references."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = normalise(df)
    main = df[df["kind"] == "main"]
    refs = df[(df["kind"] == "reference") & df["method"].str.endswith("student")]
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    fig = ax.figure
    positions, ticks, labels = _x_positions(main["epsilon"])
    for method in [m for m in METHODS if m in set(main["method"])] + sorted(set(main["method"]) - set(METHODS)):
        stats = main[main["method"] == method].groupby("epsilon")["student_ppl"].agg(["mean", "std"]).reset_index()
        stats = stats[stats["epsilon"].isin(positions)]
        ax.errorbar(
            np.array([positions[e] for e in stats["epsilon"]], dtype=float),
            stats["mean"].to_numpy(float),
            yerr=stats["std"].fillna(0).to_numpy(float),
            marker="o",
            capsize=3,
            label=method,
        )
    for i, (method, group) in enumerate(refs.groupby("method")):
        ax.axhline(group["student_ppl"].mean(), linestyle="--", color=f"C{5 + i}", label=method)
    floor = df["floor"].dropna()
    if not floor.empty:
        ax.axhline(floor.mean(), color="black", linewidth=1.5, label="floor (exact)")
    if ticks:
        ax.set_xscale("log")
        ax.set_xticks(ticks, labels)
        ax.minorticks_off()
    values = pd.concat([main["student_ppl"], refs["student_ppl"], floor]).dropna()
    if not values.empty and values.min() > 0 and values.max() / values.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel("ε (total privacy budget; ∞ = non-private)")
    ax.set_ylabel("student test perplexity")
    ax.set_title(
        "Student perplexity vs ε"
        + (f" ({', '.join(sorted(set(df['dataset'].dropna())))})" if df["dataset"].notna().any() else "")
    )
    return _finish(fig, ax, path)


def _finish(fig, ax, path: str | Path | None):
    """Legend and grid; saved (and closed) when a path is given."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def plot_ablation(df: pd.DataFrame, knob: str, path: str | Path | None = None, ax=None):
    """Student perplexity vs the knob's value (error bars: std over seeds), one line per method and epsilon."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = normalise(df)
    rows = df[(df["kind"] == "ablation") & (df["knob"] == knob)]
    if rows.empty:
        raise ValueError(f"no ablation rows for knob {knob!r}; knobs present: {ablation_knobs(df)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    fig = ax.figure
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rows["value"])
    for (method, epsilon), group in rows.groupby(["method", "epsilon"]):
        stats = group.groupby(_value_key(group)).agg(
            value=("value", "first"), mean=("student_ppl", "mean"), std=("student_ppl", "std")
        )
        stats = stats.sort_values("value") if numeric else stats
        x = stats["value"] if numeric else [str(v) for v in stats["value"]]
        ax.errorbar(
            x,
            stats["mean"],
            yerr=stats["std"].fillna(0),
            marker="o",
            capsize=3,
            label=f"{method}, {eps_label(epsilon)}",
        )
    floor = rows["floor"].dropna()
    if not floor.empty:
        ax.axhline(floor.mean(), color="black", linewidth=1.5, label="floor (exact)")
    ax.set_xlabel(knob)
    ax.set_ylabel("student test perplexity")
    ax.set_title(f"Ablation: {knob}")
    return _finish(fig, ax, path)


# ---------------------------------------------------------------------------------------------- report
def write_report(
    df: pd.DataFrame, tables_dir: str | Path, figures_dir: str | Path, regime_map: bool = False
) -> list[Path]:
    """Write every table and figure for these rows; return the paths written.

    tables/ppl_vs_eps.csv (main and reference rows), ppl_vs_eps.md (the mean ± std table),
    figures/ppl_vs_eps.png; per ablation knob: tables/ablation_<knob>.csv/.md, figures/ablation_<knob>.png.
    With several variants (e.g. a `dataset` axis) the Markdown has a section per variant and each figure
    name gets `_<variant>`.
    """
    df = normalise(df)
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def sections(rows: pd.DataFrame, name: str, note: str, table_fn, plot_fn, as_markdown: bool = False) -> None:
        rows.to_csv(tables_dir / f"{name}.csv", index=False)
        variants = sorted(rows["variant"].unique())
        text = note
        for variant in variants:
            part = rows[rows["variant"] == variant]
            body = table_fn(part) if as_markdown else to_markdown(table_fn(part))
            text += (f"### {variant}\n\n" if len(variants) > 1 else "") + body + "\n"
            figure = figures_dir / (f"{name}_{variant}.png" if len(variants) > 1 else f"{name}.png")
            plot_fn(part, figure)
            written.append(figure)
        (tables_dir / f"{name}.md").write_text(text)
        written.extend([tables_dir / f"{name}.csv", tables_dir / f"{name}.md"])

    main = df[df["kind"].isin(["main", "reference"])]
    if not main.empty:

        def table_with_gates(part: pd.DataFrame) -> str:
            gates = gates_table(part)
            failed = gates[gates["result"] == "FAIL"]["check"].tolist()
            warning = (
                f"**Gate failed** ({'; '.join(failed)}): the method's premise does not hold here; read the "
                f"results with that in mind.\n\n"
                if failed
                else ""
            )
            gates_md = to_markdown(gates, index=False) + "\n" if len(gates) else ""
            reproducible = (part["dp_randomness"] == "reproducible").any()
            note = (
                "\nDP noise reproducible from the public seed (`dp_randomness: reproducible`, a benchmark on a "
                "synthetic corpus): not a releasable model.\n"
                if reproducible
                else ""
            )
            return warning + gates_md + to_markdown(ppl_table(part)) + note

        sections(
            main,
            "ppl_vs_eps",
            "The gates (DistilDP's premises, see the README) and the verdict, then the "
            "student test perplexity, mean ± std over seeds (lower is better).\n\n",
            table_with_gates,
            plot_ppl_vs_eps,
            as_markdown=True,
        )
    if regime_map:
        df.to_csv(tables_dir / "rows.csv", index=False)  # every cell's rows: what the map is computed from
        table = regime_table(df)
        table.to_csv(tables_dir / "regime.csv", index=False)
        (tables_dir / "regime.md").write_text(
            "The regime map: each cell moves one axis from the embedded default. Δ = DistilDP's student minus the "
            "best baseline's test perplexity (below 0: DistilDP wins); gate 1: pretrained teacher / student "
            f"(pass at <= {GATE_1_RATIO}); gate 2: DistilDP's DP teacher (as sampled) below the DP-SGD student.\n\n"
            + to_markdown(table, index=False)
        )
        plot_regime(table, figures_dir / "regime.png")
        written += [
            tables_dir / "rows.csv",
            tables_dir / "regime.csv",
            tables_dir / "regime.md",
            figures_dir / "regime.png",
        ]
        return written  # its cells are the ablations: no separate ablation tables
    for knob in ablation_knobs(df):
        rows = df[(df["kind"] == "ablation") & (df["knob"] == knob)]
        sections(
            rows,
            f"ablation_{knob}",
            f"Ablation of `{knob}` (other settings at their defaults).\n\n",
            lambda part, k=knob: ablation_table(part, k),
            lambda part, path, k=knob: plot_ablation(part, k, path),
        )
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m distildp.results [TABLES_DIR]`: print the gates, the verdict and the perplexity table."""
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
