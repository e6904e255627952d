"""The model exercises' checks: the sampling distribution (top-k, top-p, temperature; notebook 04), the
distillation loss (notebook 05), the exact perplexity floor (notebook 01) and the results' verdict (notebook 07).
Each compares the student's function with the library's and names the usual mistakes (see
`distildp.teaching.exercises`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distildp.teaching.exercises import call_answer, fail, seeds_for, tensor_answer


# ------------------------------------------------------------------------ 4. top-k / top-p sampling (notebook 04)
def reference_sampling_distribution(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    """(B, V) probabilities over the whole vocabulary, from the library's `next_token_distribution`."""
    from distildp.lm.sampling import GenerationConfig, next_token_distribution

    cfg = GenerationConfig(top_k=top_k, top_p=top_p, temperature=temperature, no_repeat_ngram_size=0)
    batch = logits.shape[0]
    candidates, probs = next_token_distribution(
        logits, torch.zeros(batch, 0, dtype=torch.long), torch.zeros(batch, dtype=torch.long), cfg
    )
    return torch.zeros_like(logits, dtype=torch.float32).scatter(1, candidates, probs)


def transformers_sampling_distribution(
    logits: torch.Tensor, top_k: int, top_p: float, temperature: float
) -> torch.Tensor:
    """The same distribution from transformers' own warpers (temperature, then top-k, then top-p)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = logits.float()
    ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return scores.softmax(-1)


def check_sampling_distribution(sampling_distribution: Callable, hidden: bool = False) -> None:
    """sampling_distribution(logits (B, V), top_k, top_p, temperature) -> (B, V) probabilities."""
    settings = [(5, 0.9, 1.0)]
    if hidden:
        settings += [
            (5, 1.0, 1.0),
            (0, 0.8, 1.0),
            (10, 0.7, 2.0),
            (3, 0.95, 0.5),
            (1, 0.9, 1.0),
            (0, 1.0, 1.5),
            (8, 1e-3, 1.0),
        ]
    for seed in seeds_for(hidden):
        logits = 2 * torch.randn(4, 30, generator=torch.Generator().manual_seed(seed))
        for top_k, top_p, temperature in settings:
            want = reference_sampling_distribution(logits, top_k, top_p, temperature).double()
            where = f"(top_k={top_k}, top_p={top_p}, temperature={temperature}, seed {seed})"
            holds = f": a probability for every token of the vocabulary (0 for the tokens cut) {where}"
            args = (logits.clone(), top_k, top_p, temperature)
            got = tensor_answer(sampling_distribution, "sampling_distribution", args, want, holds)
            if torch.allclose(got, want, atol=1e-5):
                continue
            sums = got.sum(-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                kept = got > 0
                if torch.allclose(got[kept], F.softmax(logits.double() / temperature, -1)[kept], atol=1e-5):
                    fail(
                        f"your probabilities sum to {sums.min().item():.3f}-{sums.max().item():.3f}, not 1: "
                        f"after cutting to the top k / top p, renormalise over the tokens kept {where}."
                    )
                fail(f"your probabilities sum to {sums.min().item():.3f}-{sums.max().item():.3f}, not 1 {where}.")
            if top_p < 1 and torch.allclose(
                got, _top_p_before_temperature(logits, top_k, top_p, temperature), atol=1e-5
            ):
                fail(
                    f"you chose the top-p set before applying the temperature: transformers' warpers divide by the "
                    f"temperature first, then cut top-k, then top-p {where}."
                )
            if (got > 0).sum(-1).min() == 0:
                fail(f"a row kept no token at all: always keep the most likely token {where}.")
            n_got, n_want = (got > 0).sum(-1), (want > 0).sum(-1)
            if top_p < 1 and torch.all(n_got == n_want - 1) | torch.all(n_got == n_want + 1):
                fail(
                    f"your top-p set is one token off: keep the most likely tokens until their mass reaches "
                    f"top_p, INCLUDING the token that crosses it (drop a token only when the mass of it and all "
                    f"less likely ones is <= 1 - top_p) {where}."
                )
            fail(
                f"sampling_distribution differs from transformers' warpers {where}: largest difference "
                f"{(got - want).abs().max().item():.3g}. Order: logits / temperature, keep the top_k largest "
                f"(0 = all), softmax, keep the top-p set, renormalise."
            )


def _top_p_before_temperature(logits, top_k, top_p, temperature) -> torch.Tensor:
    """A common mistake: the top-p set taken from the untempered distribution."""
    cut = reference_sampling_distribution(logits, top_k, top_p, 1.0) > 0
    tempered = F.softmax(logits.double() / temperature, -1) * cut
    return tempered / tempered.sum(-1, keepdim=True)


# ------------------------------------------------------------------------ 5. the distillation loss (notebook 05)
def _kd_inputs(seed: int, temperature_scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab = 3, 7, 11
    student = torch.randn(batch, length, vocab, generator=g)
    teacher = temperature_scale * torch.randn(batch, length, vocab, generator=g)
    targets = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.zeros(batch, length)
    for b, n in enumerate([7, 4, 2]):  # right-padded: sequences of 7, 4 and 2 real tokens
        mask[b, 1:n] = 1.0
    return student, teacher, targets, mask


KD_MISTAKES = {
    "t_squared": (
        "your KL term is not multiplied by t²: with softened distributions the KL's gradient shrinks "
        "like 1/t², and λ·t²·KL keeps the soft term's weight comparable across temperatures."
    ),
    "ce_at_t": "your hard-label CE uses the softened student (logits / t): the CE is at temperature 1.",
    "batch_mean": (
        "you averaged over all scored tokens of the batch: average each sequence over its OWN scored "
        "tokens (one loss per sequence), so its weight does not depend on the other sequences' lengths."
    ),
    "ignore_mask": "padding positions count in your loss: weight every token by loss_mask, so padding never counts.",
    "no_shift": (
        "your logits and targets are not shifted: the logits at position j-1 predict token j (compare "
        "student_logits[:, :-1] with targets[:, 1:] and loss_mask[:, 1:])."
    ),
    "reverse_kl": "your KL is reversed: it is KL(p_T || p_S), the teacher's distribution first.",
    "one_minus_lam": "your CE is not weighted by (1 − λ): λ trades hard labels for soft ones.",
}


def kd_variant(student, teacher, targets, mask, lam, t, mistake: str | None = None) -> torch.Tensor:
    """The loss by the library's formula, or with one usual mistake made: `mistake` is a key of KD_MISTAKES
    ('t_squared' and 'one_minus_lam' leave out the factor they name)."""
    if mistake is not None and mistake not in KD_MISTAKES:
        raise ValueError(f"unknown mistake {mistake!r}; use one of {sorted(KD_MISTAKES)} or None")
    if mistake == "no_shift":
        s, te, y, w = student, teacher, targets, mask
    else:
        s, te, y, w = student[:, :-1], teacher[:, :-1], targets[:, 1:], mask[:, 1:]
    if mistake == "ignore_mask":
        w = torch.ones_like(w)
    s, te = s.double(), te.double()
    log_s_t, log_t_t = F.log_softmax(s / t, -1), F.log_softmax(te / t, -1)
    ce = -(F.log_softmax(s / t if mistake == "ce_at_t" else s, -1)).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if mistake == "reverse_kl":
        kl = (log_s_t.exp() * (log_s_t - log_t_t)).sum(-1)
    else:
        kl = (log_t_t.exp() * (log_t_t - log_s_t)).sum(-1)
    ce_weight = 1.0 if mistake == "one_minus_lam" else 1 - lam
    kl_weight = lam * (1.0 if mistake == "t_squared" else t**2)
    per_token = ce_weight * ce + kl_weight * kl
    w = w.double()
    if mistake == "batch_mean":
        return ((per_token * w).sum() / w.sum().clamp(min=1)).expand(len(s))
    return (per_token * w).sum(1) / w.sum(1).clamp(min=1)


def check_kd_loss(distillation_loss: Callable, hidden: bool = False) -> None:
    """distillation_loss(student_logits, teacher_logits, targets, loss_mask, lam, temperature) -> (B,) losses."""
    from distildp.distill.kd import kd_loss

    hidden_settings = [(0.0, 1.0), (1.0, 1.0), (1.0, 3.0), (0.0, 2.5), (0.7, 0.5), (0.4, 1.0)]
    settings = [(0.4, 2.0)] + (hidden_settings if hidden else [])
    for seed in seeds_for(hidden):
        student, teacher, targets, mask = _kd_inputs(seed)
        if hidden and seed == 4:
            mask[2] = 0.0  # a sequence with nothing scored contributes 0
        for lam, t in settings:
            want = kd_loss(student, teacher, targets, mask, lam=lam, temperature=t).total.double()
            where = f"(lam={lam}, t={t}, seed {seed})"
            args = (student.clone(), teacher.clone(), targets.clone(), mask.clone(), lam, t)
            got = tensor_answer(distillation_loss, "distillation_loss", args, want, f": one loss per sequence {where}")
            if torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                continue
            if not torch.isfinite(got).all():
                fail(
                    f"your loss has NaN or inf {where}: a sequence with nothing scored must give 0 (divide by the "
                    f"number of scored tokens clamped to at least 1), and use log_softmax, not log(softmax)."
                )
            for mistake, message in KD_MISTAKES.items():
                variant = kd_variant(student, teacher, targets, mask, lam, t, mistake)
                if torch.allclose(got, variant, atol=1e-4, rtol=1e-4):
                    fail(f"{message} {where}")
            fail(
                f"distillation_loss differs from distildp.distill.kd.kd_loss {where}: got {got.numpy().round(4)}, "
                f"expected {want.numpy().round(4)}. Per sequence: mean over its scored tokens of "
                f"(1 − λ)·CE + λ·t²·KL(p_T^t || p_S^t)."
            )


# ------------------------------------------------------------------------ 6. the exact floor (notebook 01)
def small_floor_problem(seed: int, n_docs: int = 40):
    """A small source configuration, texts drawn from it, and a tokenizer trained on them (< 1 s)."""
    from distildp.data.source import ReviewSource
    from distildp.lm.models import train_tokenizer

    source = ReviewSource.tiny(seed, max_tokens=6)
    records = source.sample(n_docs, seed + 100)
    texts, codes = [r.text for r in records], [r.codes for r in records]
    tokenizer = train_tokenizer(texts * 3, vocab_size=300)
    return source, tokenizer, texts, codes


def check_floor(floor_by_hand: Callable, hidden: bool = False) -> None:
    """floor_by_hand(source, tokenizer, texts, codes=None, categories=None) -> the exact floor (a float)."""
    from distildp.lm.evaluate import floor

    for seed in seeds_for(hidden)[:3]:
        source, tokenizer, texts, codes = small_floor_problem(seed)
        categories = source.categories[:1] if hidden and seed == 2 else None
        for given in [codes, None] if hidden else [None]:
            want = floor(source, tokenizer, texts, given, categories).ppl
            got = float(call_answer(floor_by_hand, "floor_by_hand", source, tokenizer, texts, given, categories))
            who = "codes given (teacher)" if given is not None else "codes summed out (student)"
            if math.isclose(got, want, rel_tol=1e-6):
                continue
            n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
            nats = floor(source, tokenizer, texts, given, categories).nll_sum
            if math.isclose(got, math.exp(nats / n_tokens), rel_tol=1e-6):
                fail(
                    f"you divided by the text tokens only: each document also scores its closing "
                    f"<|endoftext|>, so count len(tokens) + 1 per document ({who})."
                )
            if math.isclose(got, math.exp(nats / len(texts)), rel_tol=1e-6):
                fail(f"you divided the nats by the number of documents: perplexity is per scored TOKEN ({who}).")
            if given is None and categories and math.isclose(got, floor(source, tokenizer, texts).ppl, rel_tol=1e-6):
                fail(
                    "you summed the codes over every category: pass `categories` on to log_prob_marginal, the "
                    "private corpus has only its own categories."
                )
            fail(
                f"floor_by_hand = {got:.6g}, the exact floor is {want:.6g} ({who}, seed {seed}): "
                f"exp(sum of -log p(text) / scored tokens)."
            )


# ------------------------------------------------------------------------ 7. reading the results (notebook 07)
def committed_results_table() -> Path:
    """results/tables/ppl_vs_eps.csv of this checkout (the quick grid's committed table)."""
    path = Path(__file__).resolve().parents[3] / "results" / "tables" / "ppl_vs_eps.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: exercise 7 reads the committed results of the quick grid; "
            f"install distildp from its repository (`make setup`, an editable install)."
        )
    return path


def reference_verdict(table, epsilon: float) -> dict[str, Any]:
    """{best_baseline, margin, result} at `epsilon`, read off `distildp.reporting.results.gates_table`'s verdict row."""
    from distildp.reporting import results

    main = results.normalise(table)
    main = main[(main["kind"] == "main") & (main["epsilon"] == epsilon)]
    means = main.groupby("method")["student_ppl"].mean()
    baselines = {m: means[m] for m in results.BASELINES if m in means}
    if "distildp" not in means or not baselines:
        raise ValueError(f"the table has no distildp row or no baseline at epsilon = {epsilon}")
    best = min(baselines, key=baselines.get)
    rows = results.gates_table(table)
    verdict = rows[
        (rows["check"] == "DistilDP student vs the best baseline") & (rows["ε"] == results.eps_label(epsilon)[2:])
    ]
    return {
        "best_baseline": best,
        "margin": float(means["distildp"] - baselines[best]),
        "result": verdict["result"].iloc[0],
    }


def shifted_tables(table) -> list:
    """The committed table and two changed copies, DistilDP's students moved at each epsilon so that its margin is
    1.5 largest seed stds (a TIE by the two-std rule, a WIN by a one-std rule) and then 3 stds behind (a LOSS)."""
    from distildp.reporting import results

    variants = [table]
    main = results.normalise(table)
    main = main[main["kind"] == "main"]
    for target in (-1.5, 3.0):  # the margin to land on, in units of the largest seed std
        changed = table.copy()
        for epsilon, part in main.groupby("epsilon"):
            means = part.groupby("method")["student_ppl"].mean()
            noise = results.seed_noise(part, epsilon) / 2  # the largest seed std
            noise = noise if noise > 0 else 1.0  # one seed (std NaN) or equal seeds: any positive unit will do
            best = min(means[m] for m in results.BASELINES if m in means)
            rows = (changed["method"] == "distildp") & (changed["kind"] == "main") & (changed["epsilon"] == epsilon)
            changed.loc[rows, "student_ppl"] += best + target * noise - means["distildp"]
        variants.append(changed)
    return variants


def check_verdict(verdict: Callable, hidden: bool = False) -> None:
    """verdict(table, epsilon) -> {"best_baseline": str, "margin": float, "result": "WIN" | "TIE" | "LOSS"}."""
    from distildp.reporting import results

    table = results.read_csv(committed_results_table())
    for number, case in enumerate(shifted_tables(table) if hidden else [table]):
        for epsilon in sorted(case.loc[case["kind"] == "main", "epsilon"].unique()):
            want = reference_verdict(case, epsilon)
            got = call_answer(verdict, "verdict", case.copy(), float(epsilon))
            if not isinstance(got, Mapping) or set(want) - set(got):
                fail(f"verdict must return a dict with keys {sorted(want)}, got {got!r}.")
            which = "the committed table" if number == 0 else "a changed table (DistilDP's students moved up)"
            if got["best_baseline"] != want["best_baseline"]:
                fail(
                    f"best_baseline = {got['best_baseline']!r} at epsilon {epsilon:g} in {which}; the baseline "
                    f"with the lowest MEAN student perplexity over seeds is {want['best_baseline']!r} (DistilDP "
                    f"itself and the reference rows are not baselines)."
                )
            if not math.isclose(float(got["margin"]), want["margin"], abs_tol=1e-6):
                if math.isclose(float(got["margin"]), -want["margin"], abs_tol=1e-6):
                    fail(
                        "your margin has the wrong sign: DistilDP's mean minus the best baseline's (below 0: "
                        "DistilDP is better)."
                    )
                fail(
                    f"margin = {float(got['margin']):.4f} at epsilon {epsilon:g} in {which}; expected "
                    f"{want['margin']:.4f}: distildp's mean student_ppl minus the best baseline's (rows with kind "
                    f"'main' only)."
                )
            if str(got["result"]).upper() != want["result"]:
                fail(
                    f"result = {got['result']!r} at epsilon {epsilon:g} in {which}; expected {want['result']!r}: "
                    f"a WIN or a LOSS counts only when |margin| exceeds twice the largest seed std (sample std, "
                    f"ddof=1) among DistilDP and the baselines; otherwise it is a TIE."
                )
