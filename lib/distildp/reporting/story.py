"""The results told in sentences computed from the tables: the gates, the verdict at each epsilon, seed by seed,
the margin across epsilons, against the non-private student and the floor (`story`), and the regime map's wins,
losses and ties (`regime_story`). Notebook 07 prints them; every number in a sentence is read off the rows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from distildp.reporting.results import BASELINES, GATE_1_RATIO, eps_label, mean_std, normalise, seed_noise, seeds_label


def story(df: pd.DataFrame, digits: int = 2) -> list[str]:
    """The results of a rows table (main and reference rows, as ppl_vs_eps.csv), in sentences computed from it.

    Gate 1 (with each seed's ratio when the pretrained models have several seeds); then per epsilon: gate 2, the
    verdict (DistilDP's student against the best baseline, by how much, against twice the largest seed std: WIN,
    TIE or LOSS by the same rule as `gates_table`), on how many seeds DistilDP is ahead, and every method best
    first; then how DistilDP's margin moves across the budgets and where the ordering flips, if it does; last,
    DistilDP against the non-private student and the floor. The labels are gates_table's.
    """
    df = normalise(df)
    refs = df[df["kind"] == "reference"]
    main = df[df["kind"] == "main"]
    sentences = [_gate_1(refs, digits)]
    for epsilon in sorted(main["epsilon"].unique()):
        sentences += _at_epsilon(main[main["epsilon"] == epsilon], epsilon, digits)
    sentences += [_across_budgets(main, f".{digits}f"), _for_scale(df, refs, main, digits)]
    return [s for s in sentences if s]  # a part with nothing to tell gives ''


def _gate_1(refs: pd.DataFrame, digits: int) -> str:
    """Gate 1 in a sentence, each seed's ratio too when there are several ('' without both pretrained models)."""
    teacher = refs[refs["method"] == "pretrained_teacher"].dropna(subset=["teacher_ppl"])
    student = refs[refs["method"] == "pretrained_student"].dropna(subset=["student_ppl"])
    if teacher.empty or student.empty:
        return ""
    ratio = teacher["teacher_ppl"].mean() / student["student_ppl"].mean()
    status = "PASS" if ratio <= GATE_1_RATIO else "FAIL"
    text = (
        f"Gate 1 {status}: the pretrained teacher's test perplexity "
        f"({mean_std(teacher['teacher_ppl'], digits)}) is {ratio:.3f} x the pretrained student's "
        f"({mean_std(student['student_ppl'], digits)}); DistilDP "
        f"needs at most {GATE_1_RATIO}."
    )
    per_seed = (teacher.groupby("seed")["teacher_ppl"].mean() / student.groupby("seed")["student_ppl"].mean()).dropna()
    if len(per_seed) > 1:
        passed = int((per_seed <= GATE_1_RATIO).sum())
        text += (
            f" Seed by seed (each its own public pretraining): {', '.join(f'{r:.3f}' for r in per_seed)}, "
            f"passing on {passed} of {len(per_seed)}."
        )
    return text


def _at_epsilon(at: pd.DataFrame, epsilon: float, digits: int) -> list[str]:
    """The sentences of one budget (`at`: its main rows): gate 2, the verdict, seed by seed, every method ranked."""
    f = f".{digits}f"
    eps = eps_label(epsilon)[2:]
    ppl = {m: at.loc[at["method"] == m, "student_ppl"].dropna() for m in dict.fromkeys(at["method"])}
    ppl = {m: v for m, v in ppl.items() if not v.empty}
    sentences = []
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
        best = min(others, key=lambda m: others[m].mean())
        sentences += _verdict(at, epsilon, ppl["distildp"], best, others[best], digits)
    if len(ppl) > 1:
        ranked = sorted(ppl, key=lambda m: ppl[m].mean())
        sentences.append(
            f"ε = {eps}, every method, best first: " + ", ".join(f"{m} {ppl[m].mean():{f}}" for m in ranked) + "."
        )
    return sentences


def _verdict(at: pd.DataFrame, epsilon: float, ours: pd.Series, best: str, theirs: pd.Series, digits: int) -> list[str]:
    """DistilDP's student against the best baseline (`theirs`, its perplexities) at one budget: WIN, TIE or LOSS
    against twice the largest seed std (no verdict with one seed), then seed by seed when there are several."""
    f = f".{digits}f"
    eps = eps_label(epsilon)[2:]
    gap = theirs.mean() - ours.mean()  # above 0: DistilDP's student is better
    noise = seed_noise(at, epsilon)
    side = _relative(-gap, f)
    compared = (
        f"DistilDP's student ({mean_std(ours, digits)}) is {side} the best baseline, {best} "
        f"({mean_std(theirs, digits)})"
    )
    if math.isnan(noise):
        sentences = [f"ε = {eps}, one seed: {compared}; with one seed there is no seed std, so no verdict."]
    elif abs(gap) > noise:
        word = "WIN for DistilDP" if gap > 0 else "LOSS for DistilDP"
        sentences = [
            f"ε = {eps}, {word}: {compared}, {abs(gap) / noise:.1f} times twice the largest "
            f"seed std ({noise:{f}}), over {ours.size} seeds."
        ]
    else:
        sentences = [
            f"ε = {eps}, TIE: {compared}, within twice the largest seed std ({noise:{f}}), over {ours.size} seeds."
        ]
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
    return sentences


def _for_scale(df: pd.DataFrame, refs: pd.DataFrame, main: pd.DataFrame, digits: int) -> str:
    """DistilDP's student at each finite budget against the non-private student, and the floor below them all
    ('' without both)."""
    f = f".{digits}f"
    nonprivate = refs.loc[refs["method"] == "nonprivate_student", "student_ppl"].dropna()
    ours_by_eps = main[main["method"] == "distildp"].groupby("epsilon")["student_ppl"].mean()
    ours_by_eps = ours_by_eps[np.isfinite(ours_by_eps.index)]
    if nonprivate.empty or ours_by_eps.empty:
        return ""
    floor = df["floor"].dropna()
    return (
        f"For scale: the student fine-tuned on the private data without privacy reaches {nonprivate.mean():{f}}; "
        + "; ".join(
            f"DistilDP's at ε = {eps_label(e)[2:]} is {_relative(p - nonprivate.mean(), f)} it"
            for e, p in ours_by_eps.items()
        )
        + (f"; no model can go below the exact floor, {floor.mean():{f}}." if not floor.empty else ".")
    )


def _across_budgets(main: pd.DataFrame, f: str) -> str:
    """DistilDP's student minus the best baseline's at every epsilon, in one sentence: how the margin moves as epsilon
    grows, and where the ordering flips, if it does ('' with fewer than two budgets)."""
    means = main.groupby(["epsilon", "method"])["student_ppl"].mean().unstack()
    if "distildp" not in means or not set(BASELINES) & set(means):
        return ""
    baselines = means[[m for m in BASELINES if m in means]].dropna(how="all")
    margins = (means["distildp"] - baselines.min(axis=1)).dropna()
    if len(margins) < 2:
        return ""
    best = baselines.idxmin(axis=1)
    steps = "; ".join(f"ε = {eps_label(e)[2:]}: {m:+{f}} ({best[e]})" for e, m in margins.items())
    first, last = margins.iloc[0], margins.iloc[-1]
    if (margins < 0).all() or (margins > 0).all():
        side, size = "ahead" if first < 0 else "behind", margins.abs()
        if size.is_monotonic_increasing or size.is_monotonic_decreasing:
            moves = "widens" if abs(last) > abs(first) else "narrows"
            trend = f"the gap {moves} steadily from {first:+{f}} to {last:+{f}} as ε grows"
        else:
            widest = size.idxmax()
            trend = f"the gap is widest at ε = {eps_label(widest)[2:]} ({margins[widest]:+{f}})"
        verdict = f"DistilDP is {side} at every budget, and {trend}"
    else:
        flips = [
            f"between ε = {eps_label(a)[2:]} and {eps_label(b)[2:]}"
            for (a, x), (b, y) in zip(margins.items(), list(margins.items())[1:])
            if (x < 0) != (y < 0)
        ]
        verdict = "the ordering flips " + ", ".join(flips)
    return f"Across budgets, DistilDP's student minus the strongest baseline's: {steps}; {verdict}."


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
    seeds = seeds_label(table["seeds"]) if "seeds" in table else ""
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
