"""The audit's rows as tables and figures: one row per audited model (`audit_method`'s, or the audit grid's
points'), the summary table, exposure and ROC curves, epsilon lower bounds against the accounted epsilon, and the
files the audit grid writes.

    audit_rows(df) / audit_table(rows)          the grid's rows, one per model, and the summary table
    plot_exposure, plot_roc, plot_epsilon_bounds  the figures (notebook 08 draws them)
    write_audit_report(df, tables, figures)     results/<grid>/tables/audit.{csv,md}, figures/audit_*.png

The audit itself is `distildp.audit.method_audit`'s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from distildp.audit.method_audit import ATTACKS
from distildp.audit.provenance import AuditError
from distildp.core.manifests import write_json_atomic
from distildp.core.methods import method_label
from distildp.reporting.report import save_figure
from distildp.reporting.results import as_float, to_markdown

MODEL_ORDER = ("teacher", "synthetic", "student")
ROWS_FILE = "audit_rows.json"  # every audited model's row, curves and canaries included


def audit_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per audited model from the grid's point rows (each point's row holds its models in 'audits')."""
    if "audits" not in df:
        raise AuditError("these rows hold no 'audits': they were not written by notebooks/08_privacy_audit")
    rows = []
    for _, point in df.iterrows():
        if not isinstance(point["audits"], list):
            continue
        # an ablation point of the grid (another recipe) is told apart by its knob and value
        variant = (
            (
                f"{point['knob']}={point['value']:g}"
                if isinstance(point.get("value"), (int, float))
                else f"{point['knob']}={point['value']}"
            )
            if point.get("kind") == "ablation"
            else ""
        )
        rows += [{"variant": model_row.get("variant", variant), **model_row} for model_row in point["audits"]]
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows)
    text = {"method", "variant", "label", "opd_teacher", "epsilon_covers", "model", "stage", "artifact", "trained_on"}
    for column in text & set(out.columns):
        out[column] = out[column].fillna("")  # rows from before a column existed (DP-OPD's) leave it empty
    for column in set(out.columns) - text - {"canaries", "roc"}:
        out[column] = as_float(out[column])
    return out.assign(label=[_label(row) for _, row in out.iterrows()])


def _label(row) -> str:
    """The method as tables print it (DP-OPD with its teacher; a row whose epsilon does not cover every use of the
    private data marked so), then the grid's variant unless it only names DP-OPD's teacher again."""
    label = method_label(row["method"], row.get("opd_teacher", ""), row.get("epsilon_covers", ""))
    variant = row["variant"]
    return f"{label} [{variant}]" if variant and not variant.startswith("opd_teacher=") else label


def read_audit_rows(tables_dir: str | Path) -> pd.DataFrame:
    """The rows `write_audit_report` wrote into `tables_dir` (the audit grid's results), curves included."""
    path = Path(tables_dir) / ROWS_FILE
    if not path.exists():
        raise AuditError(f"no {path}: run the audit grid first (python -m distildp.runner --grid audit)")
    return audit_rows(pd.DataFrame([{"audits": json.loads(path.read_text())}]))


def repeat_counts(rows: pd.DataFrame) -> list[int]:
    return sorted({int(c["repeats"]) for canaries in rows["canaries"] for c in canaries})


def _mean_over(canaries: list[dict], repeats: int, key: str) -> float:
    values = [c[key] for c in canaries if int(c["repeats"]) == repeats]
    return float(np.mean(values)) if values else math.nan


def audit_table(rows: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """One line per (method, epsilon, model): mean exposure of the canaries repeated r times (the public model's
    in brackets), verbatim secrets in synthetic text, both attacks' AUC with its interval and TPR at 1% FPR, and
    the best attack's epsilon lower bound beside the accounted epsilon."""
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    rows = rows.assign(_m=rows["model"].map(order)).sort_values(["label", "epsilon", "_m"])
    lines = []
    for _, row in rows.iterrows():
        line = {
            "method": row["label"],
            "ε target": _eps(row["epsilon"]),
            "model": row["model"],
        }
        for r in repeat_counts(rows):
            if row["model"] == "synthetic":
                hits = [c for c in row["canaries"] if int(c["repeats"]) == r]
                line[f"exposure ×{r}"] = f"{sum(c['texts_with_secret'] > 0 for c in hits)}/{len(hits)} verbatim"
            else:
                line[f"exposure ×{r}"] = (
                    f"{_mean_over(row['canaries'], r, 'exposure'):.1f} "
                    f"({_mean_over(row['canaries'], r, 'public_exposure'):.1f})"
                )
        for attack in ATTACKS:
            auc = row.get(f"{attack}_auc")
            line[f"{attack} AUC"] = (
                "" if _missing(auc) else f"{auc:.3f} [{row[f'{attack}_auc_low']:.3f}, {row[f'{attack}_auc_high']:.3f}]"
            )
        tpr = row.get("reference_tpr_at_0.01")
        line["reference TPR @1% FPR"] = "" if _missing(tpr) else f"{tpr:.3f}"
        bound = row.get("epsilon_lower_bound")
        line["ε lower bound"] = "" if _missing(bound) else f"{bound:.{digits}f}"
        line["ε accounted"] = _eps(row["epsilon_accounted"], digits)
        lines.append(line)
    return pd.DataFrame(lines)


def _eps(value: float, digits: int = 2) -> str:
    return "∞" if math.isinf(value) else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def plot_exposure(rows: pd.DataFrame, path: str | Path | None = None):
    """Exposure against repeats, one panel per model kind, a line per epsilon; the public model's as grey."""
    import matplotlib.pyplot as plt

    models = [m for m in MODEL_ORDER if m != "synthetic" and m in set(rows["model"])]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), sharey=True, squeeze=False)
    repeats = repeat_counts(rows)
    for ax, model in zip(axes[0], models):
        part = rows[rows["model"] == model]
        for (label, epsilon), group in part.groupby(["label", "epsilon"]):
            canaries = [c for cs in group["canaries"] for c in cs]
            ax.plot(
                repeats,
                [_mean_over(canaries, r, "exposure") for r in repeats],
                marker="o",
                label=f"{label}, ε = {_eps(epsilon)}",
            )
        public = [c for cs in part["canaries"] for c in cs]
        ax.plot(
            repeats,
            [_mean_over(public, r, "public_exposure") for r in repeats],
            color="grey",
            ls=":",
            label="public model (never saw them)",
        )
        ax.axhline(rows["max_exposure"].dropna().iloc[0], color="black", lw=0.8, ls="--", label="maximum")
        ax.set(
            xscale="log",
            xticks=repeats,
            xticklabels=[str(r) for r in repeats],
            xlabel="times each canary is in train",
            title=model,
            ylabel="exposure (bits)",
        )
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_roc(rows: pd.DataFrame, attack: str = "reference", path: str | Path | None = None):
    """ROC curves of one attack, log-log, one panel per model kind, a curve per (method, epsilon)."""
    import matplotlib.pyplot as plt

    models = [m for m in MODEL_ORDER if m != "synthetic" and m in set(rows["model"])]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for _, row in rows[rows["model"] == model].sort_values(["label", "epsilon"]).iterrows():
            curve = row["roc"][attack]
            ax.plot(
                curve["fpr"],
                curve["tpr"],
                label=f"{row['label']}, ε = {_eps(row['epsilon'])} (AUC {row[f'{attack}_auc']:.2f})",
            )
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", ls=":", label="chance")
        ax.set(
            xscale="log",
            yscale="log",
            xlim=(1e-3, 1),
            ylim=(1e-3, 1.05),
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=f"{model}: {attack} attack",
        )
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_epsilon_bounds(rows: pd.DataFrame, path: str | Path | None = None):
    """Empirical lower bound against accounted epsilon, with the diagonal no bound may cross; non-private models
    (accounted inf) at the right edge."""
    import matplotlib.pyplot as plt

    models = rows[rows["model"] != "synthetic"]
    finite = models["epsilon_accounted"][np.isfinite(models["epsilon_accounted"])]
    edge = max(float(finite.max()) if len(finite) else 1.0, float(models["epsilon_lower_bound"].max())) * 1.5
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, edge], [0, edge], color="black", lw=0.8, label="lower bound = accounted ε (a bug above)")
    for (label, model), group in models.groupby(["label", "model"]):
        x = np.where(np.isfinite(group["epsilon_accounted"]), group["epsilon_accounted"], edge)
        ax.scatter(x, group["epsilon_lower_bound"], label=f"{label} {model}")
    ax.axvline(edge, color="grey", ls=":")
    ax.text(edge, 0, " ∞ (no DP)", rotation=90, va="bottom", fontsize=8)
    ax.set(
        xlim=(0, edge * 1.05),
        ylim=(0, edge * 1.05),
        xlabel="accounted ε",
        ylabel="empirical ε lower bound (95%)",
        title="Membership inference: ε lower bounds",
    )
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_audit_report(df: pd.DataFrame, tables_dir: str | Path, figures_dir: str | Path) -> list[Path]:
    """tables/audit.csv (one row per model, per-canary exposures as JSON), tables/audit.md, figures/audit_exposure,
    audit_roc (reference attack), audit_epsilon (lower bound against accounted epsilon)."""
    rows = audit_rows(df)
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    if rows.empty:
        return []
    write_json_atomic(tables_dir / ROWS_FILE, rows.to_dict("records"))  # with the curves: what notebook 08 plots
    flat = rows.drop(columns=["roc"]).assign(canaries=rows["canaries"].map(json.dumps))
    flat.to_csv(tables_dir / "audit.csv", index=False)
    table = audit_table(rows)
    (tables_dir / "audit.md").write_text(
        "The privacy audit: each model of each method at its budget. Exposure ×r: mean exposure in bits of the "
        f"canaries inserted r times (maximum {rows['max_exposure'].dropna().iloc[0]:.1f}; in brackets the public "
        "model's, which never saw them: what tokenization alone gives); for synthetic text, how many of those secrets "
        "it reproduces verbatim. AUC of the loss and reference membership attacks with 95% bootstrap intervals; the "
        "ε lower bound (Clopper-Pearson, 95%) of the better attack beside the accounted ε.\n\n"
        + to_markdown(table, index=False)
        + "\n"
    )
    written = [tables_dir / ROWS_FILE, tables_dir / "audit.csv", tables_dir / "audit.md"]
    for name, plot in (
        ("audit_exposure", plot_exposure),
        ("audit_roc", plot_roc),
        ("audit_epsilon", plot_epsilon_bounds),
    ):
        plot(rows, path=figures_dir / f"{name}.png")
        written.append(figures_dir / f"{name}.png")
    return written
