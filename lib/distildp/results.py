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

# The same tuples as distildp.pipeline (a test checks): copied so that reading results does not import
# torch and transformers (07_results and the runner's report start in a second, not half a minute).
METHODS = ("distildp", "synthetic_only", "dpsgd", "dpkd")
REFERENCES = ("pretrained_teacher", "pretrained_student", "nonprivate_teacher", "nonprivate_student")

# The DESIGN.md columns first, then the extras the pipeline and the runner add.
COLUMNS = ["dataset", "method", "epsilon", "delta", "seed", "student_ppl", "teacher_ppl", "floor", "accountant",
           "noise_multiplier", "sample_rate", "steps", "synthetic_size", "wall_time_s"]
EXTRA_COLUMNS = ["epsilon_spent", "teacher_floor", "private", "mechanisms", "histogram", "run_time_s",
                 "kind", "knob", "value", "variant", "point_id"]
NUMERIC = ["epsilon", "epsilon_spent", "delta", "seed", "student_ppl", "teacher_ppl", "floor", "teacher_floor",
           "noise_multiplier", "sample_rate", "steps", "synthetic_size", "wall_time_s", "run_time_s"]
ROW_FILE, POINT_FILE = "row.json", "point.json"


# ---------------------------------------------------------------------------------------------- loading
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
        df[column] = pd.to_numeric(df[column].replace({"inf": math.inf, "-inf": -math.inf, "nan": math.nan}),
                                   errors="coerce").astype(float)
    df["variant"] = df["variant"].astype(object).where(df["variant"].notna(), "")  # CSV reads '' as NaN
    missing_kind = df["kind"].isna()
    df.loc[missing_kind, "kind"] = np.where(df.loc[missing_kind, "method"].isin(REFERENCES), "reference", "main")
    extras = [c for c in df.columns if c not in COLUMNS + EXTRA_COLUMNS]
    return df[COLUMNS + EXTRA_COLUMNS + extras].reset_index(drop=True)


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
    for method in [r for r in REFERENCES if r in set(refs["method"])]:
        teacher = method.endswith("teacher")
        add(f"{method} (teacher, codes given)" if teacher else method, refs[refs["method"] == method],
            "teacher_ppl" if teacher else "student_ppl")
    for column, label in (("floor", "floor (exact)"), ("teacher_floor", "teacher floor (exact, codes given)")):
        if label.startswith("teacher") and not any(m.endswith("teacher") for m in refs["method"]):
            continue
        values = df[column].dropna()
        if not values.empty:
            rows[label] = {**{col: f"{values.mean():.{digits}f}" for col in columns}, "seeds": ""}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns + ["seeds"])
    table.index.name = "method"
    return table


def ablation_table(df: pd.DataFrame, knob: str, digits: int = 2) -> pd.DataFrame:
    """One row per value of `knob`: student (and teacher) perplexity 'mean ± std' over seeds."""
    df = normalise(df)
    rows = df[(df["kind"] == "ablation") & (df["knob"] == knob)]
    if rows.empty:
        raise ValueError(f"no ablation rows for knob {knob!r}; knobs present: {ablation_knobs(df)}")
    records = []
    for (method, epsilon, value), group in rows.groupby(["method", "epsilon", _value_key(rows)], sort=False):
        records.append({knob: group["value"].iloc[0], "method": method, "epsilon": eps_label(epsilon)[2:],
                        "student_ppl": mean_std(group["student_ppl"], digits),
                        "teacher_ppl": mean_std(group["teacher_ppl"], digits), "seeds": group["seed"].nunique(),
                        "_order": _sortable(group["value"].iloc[0])})
    table = pd.DataFrame(records).sort_values(["method", "epsilon", "_order"]).drop(columns="_order")
    return table.reset_index(drop=True)


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
        stats = (main[main["method"] == method].groupby("epsilon")["student_ppl"]
                 .agg(["mean", "std"]).reset_index())
        stats = stats[stats["epsilon"].isin(positions)]
        ax.errorbar(np.array([positions[e] for e in stats["epsilon"]], dtype=float), stats["mean"].to_numpy(float),
                    yerr=stats["std"].fillna(0).to_numpy(float),
                    marker="o", capsize=3, label=method)
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
    ax.set_title("Student perplexity vs ε" + (f" ({', '.join(sorted(set(df['dataset'].dropna())))})"
                                               if df["dataset"].notna().any() else ""))
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
        stats = group.groupby(_value_key(group)).agg(value=("value", "first"), mean=("student_ppl", "mean"),
                                                   std=("student_ppl", "std"))
        stats = stats.sort_values("value") if numeric else stats
        x = stats["value"] if numeric else [str(v) for v in stats["value"]]
        ax.errorbar(x, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                    label=f"{method}, {eps_label(epsilon)}")
    floor = rows["floor"].dropna()
    if not floor.empty:
        ax.axhline(floor.mean(), color="black", linewidth=1.5, label="floor (exact)")
    ax.set_xlabel(knob)
    ax.set_ylabel("student test perplexity")
    ax.set_title(f"Ablation: {knob}")
    return _finish(fig, ax, path)


# ---------------------------------------------------------------------------------------------- report
def write_report(df: pd.DataFrame, tables_dir: str | Path, figures_dir: str | Path) -> list[Path]:
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

    def sections(rows: pd.DataFrame, name: str, note: str, table_fn, plot_fn) -> None:
        rows.to_csv(tables_dir / f"{name}.csv", index=False)
        variants = sorted(rows["variant"].unique())
        text = note
        for variant in variants:
            part = rows[rows["variant"] == variant]
            text += (f"### {variant}\n\n" if len(variants) > 1 else "") + to_markdown(table_fn(part)) + "\n"
            figure = figures_dir / (f"{name}_{variant}.png" if len(variants) > 1 else f"{name}.png")
            plot_fn(part, figure)
            written.append(figure)
        (tables_dir / f"{name}.md").write_text(text)
        written.extend([tables_dir / f"{name}.csv", tables_dir / f"{name}.md"])

    main = df[df["kind"].isin(["main", "reference"])]
    if not main.empty:
        sections(main, "ppl_vs_eps", "Student test perplexity, mean ± std over seeds (lower is better).\n\n",
                 ppl_table, plot_ppl_vs_eps)
    for knob in ablation_knobs(df):
        rows = df[(df["kind"] == "ablation") & (df["knob"] == knob)]
        sections(rows, f"ablation_{knob}", f"Ablation of `{knob}` (other settings at their defaults).\n\n",
                 lambda part, k=knob: ablation_table(part, k), lambda part, path, k=knob: plot_ablation(part, k, path))
    return written
