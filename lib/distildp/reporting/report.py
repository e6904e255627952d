"""A grid's report on disk: its figures (perplexity versus epsilon, ablations, the regime map) and every table
and figure written beside them (`write_report`, which lib/distildp/runner/run.py calls once a grid has run).

The tables themselves are computed in `distildp.reporting.results`; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from distildp.core.methods import METHODS
from distildp.reporting.regime import regime_table
from distildp.reporting.results import (
    GATE_1_RATIO,
    ablation_knobs,
    ablation_rows,
    ablation_table,
    eps_label,
    gates_table,
    normalise,
    ppl_table,
    to_markdown,
    value_key,
)


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


REFERENCE_LABELS = {
    "pretrained_student": "pretrained student (public data only)",
    "nonprivate_student": "non-private student (ε = ∞)",
}


def plot_ppl_vs_eps(df: pd.DataFrame, path: str | Path | None = None, ax=None):
    """Student perplexity vs epsilon per method (error bars: std over seeds) on a log axis with ε = ∞ at the right,
    the reference students as lines (dashed: public data only; dotted, with a star at ∞: non-private) and the floor."""
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
    # the non-private student is the curve's end at ε = ∞: that column is drawn even when no method runs there
    positions, ticks, labels = _x_positions(
        list(main["epsilon"]) + list(refs.loc[refs["epsilon"] == math.inf, "epsilon"])
    )
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
        values, color = group["student_ppl"].dropna(), f"C{5 + i}"
        if values.empty:
            continue
        at_infinity = bool((group["epsilon"] == math.inf).all())
        label = REFERENCE_LABELS.get(method, method)
        ax.axhline(values.mean(), linestyle=":" if at_infinity else "--", color=color, label=label)
        if at_infinity and math.inf in positions:
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            ax.errorbar([positions[math.inf]], [values.mean()], yerr=[std], marker="*", markersize=10, color=color)
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
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path | None):
    """Laid out, and written at the suite's resolution (then closed) when a path is given; the figure either way."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def plot_ablation(df: pd.DataFrame, knob: str, path: str | Path | None = None, ax=None):
    """Student perplexity vs the knob's value (error bars: std over seeds), one line per method and epsilon."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = ablation_rows(df, knob)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    fig = ax.figure
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rows["value"])
    for (method, epsilon), group in rows.groupby(["method", "epsilon"]):
        stats = group.groupby(value_key(group)).agg(
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
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- report
def write_report(
    df: pd.DataFrame, tables_dir: str | Path, figures_dir: str | Path, regime_map: bool = False
) -> list[Path]:
    """Write every table and figure for these rows; return the paths written.

    tables/ppl_vs_eps.csv (main and reference rows), ppl_vs_eps.md (the mean ± std table),
    figures/ppl_vs_eps.png; per ablation knob: tables/ablation_<knob>.csv/.md, figures/ablation_<knob>.png.
    With several variants (e.g. a `dataset` axis) the Markdown has a section per variant and each figure
    name gets `_<variant>`. With `regime_map` the ablations are the regime map's cells: tables/rows.csv,
    regime.csv/.md and figures/regime.png instead of the ablation tables.
    """
    df = normalise(df)
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    main = df[df["kind"].isin(["main", "reference"])]
    if not main.empty:
        note = (
            "The gates (DistilDP's premises, see the README) and the verdict, then the "
            "student test perplexity, mean ± std over seeds (lower is better).\n\n"
        )
        written += _write_sections(
            main, "ppl_vs_eps", note, _gates_and_ppl_markdown, plot_ppl_vs_eps, tables_dir, figures_dir
        )
    if regime_map:
        return written + _write_regime_map(df, tables_dir, figures_dir)  # its cells are the ablations
    for knob in ablation_knobs(df):
        written += _write_sections(
            df[(df["kind"] == "ablation") & (df["knob"] == knob)],
            f"ablation_{knob}",
            f"Ablation of `{knob}` (other settings at their defaults).\n\n",
            lambda part, k=knob: to_markdown(ablation_table(part, k)),
            lambda part, path, k=knob: plot_ablation(part, k, path),
            tables_dir,
            figures_dir,
        )
    return written


def _write_sections(
    rows: pd.DataFrame, name: str, note: str, markdown_fn, plot_fn, tables_dir: Path, figures_dir: Path
) -> list[Path]:
    """tables/<name>.csv (the rows), tables/<name>.md (`note`, then a section per variant: `markdown_fn(part)`) and
    a figure per variant (`plot_fn(part, path)`); the paths written, figures first."""
    rows.to_csv(tables_dir / f"{name}.csv", index=False)
    variants = sorted(rows["variant"].unique())
    text, written = note, []
    for variant in variants:
        part = rows[rows["variant"] == variant]
        text += (f"### {variant}\n\n" if len(variants) > 1 else "") + markdown_fn(part) + "\n"
        figure = figures_dir / (f"{name}_{variant}.png" if len(variants) > 1 else f"{name}.png")
        plot_fn(part, figure)
        written.append(figure)
    (tables_dir / f"{name}.md").write_text(text)
    return written + [tables_dir / f"{name}.csv", tables_dir / f"{name}.md"]


def _gates_and_ppl_markdown(part: pd.DataFrame) -> str:
    """The Markdown of ppl_vs_eps.md for one variant: a warning when a gate fails, the gates and the verdict, the
    perplexity table, and a note when the DP noise was reproducible (not a releasable model)."""
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


def _write_regime_map(df: pd.DataFrame, tables_dir: Path, figures_dir: Path) -> list[Path]:
    """tables/rows.csv (every cell's rows: what the map is computed from), regime.csv, regime.md and
    figures/regime.png."""
    df.to_csv(tables_dir / "rows.csv", index=False)
    table = regime_table(df)
    table.to_csv(tables_dir / "regime.csv", index=False)
    (tables_dir / "regime.md").write_text(
        "The regime map: each cell moves one axis from the embedded default. Δ = DistilDP's student minus the "
        "best baseline's test perplexity (below 0: DistilDP wins); gate 1: pretrained teacher / student "
        f"(pass at <= {GATE_1_RATIO}); gate 2: DistilDP's DP teacher (as sampled) below the DP-SGD student.\n\n"
        + to_markdown(table, index=False)
    )
    plot_regime(table, figures_dir / "regime.png")
    return [tables_dir / "rows.csv", tables_dir / "regime.csv", tables_dir / "regime.md", figures_dir / "regime.png"]
