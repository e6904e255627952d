"""Checks for the autograded exercises: a student's function against the library's, with targeted feedback.

The exercise notebooks (01, 02, 04, 05, 07) ask for seven pieces of DistilDP by hand. Each otter test cell calls
one `check_*` function here with the student's function; `hidden=False` is the quick public check the student
runs in the notebook, `hidden=True` the grading check (several seeds and the edge cases: padding, t != 1,
lambda = 0 and 1, empty batches, codes that never occur). A check returns None when the answer is right and
raises `ExerciseError` (an AssertionError, which otter reports) naming the mistake when it recognises it: the
checks compute the usual wrong answers too (batch-level clipping, KL without t^2, top-k without renormalising,
...) and say which one the student's output matches.

`python -m distildp.exercises build OUT` makes the student notebooks and the autograders with `otter assign`;
`python -m distildp.exercises grade SUBMISSIONS --autograders DIR --csv FILE` grades a folder of notebooks with
`otter run` (no Docker) into one CSV row per submitted notebook, one column per question (`make grade`).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import pandas as pd

# Opacus divides by (norm + 1e-6) when clipping, and so do notebook 02 and the references here.
CLIP_EPSILON = 1e-6


class ExerciseError(AssertionError):
    """A student's answer is wrong; the message says how (otter shows it as the test's feedback)."""


def _fail(message: str) -> None:
    raise ExerciseError(message)


def _call(fn: Callable, name: str, *args, **kwargs) -> Any:
    """Call the student's function; None (the `...` left in place) and exceptions become clear feedback."""
    if not callable(fn):
        _fail(f"{name} is {fn!r}, not a function: define it in the exercise cell and run that cell first.")
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError:
        _fail(f"{name} is not written yet: replace the `...` in its body with your code.")
    except Exception as err:  # the student's bug, reported with the inputs that caused it
        _fail(f"{name} raised {type(err).__name__}: {err}")
    if result is None or result is Ellipsis:
        _fail(f"{name} returned {result!r}: replace the `...` in its body with your code and `return` the result.")
    return result


def _tensor(value: Any, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except Exception:
        _fail(f"{name} must return a tensor (or a list of numbers), got {type(value).__name__}.")


def _seeds(hidden: bool) -> list[int]:
    return [0, 1, 2, 3, 4] if hidden else [0]


# ------------------------------------------------------------------------ 1. one DP-SGD step (notebook 02)
def reference_per_example_gradients(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """(B, P): row i is the gradient of example i's own cross-entropy, parameters flattened in order."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x, y in zip(inputs, targets):
        loss = F.cross_entropy(model(x[None]), y[None])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows).detach()


def _batch_gradient(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, reduction: str
) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(inputs), targets, reduction=reduction)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).detach()


def check_per_example_gradients(per_example_gradients: Callable, hidden: bool = False) -> None:
    """per_example_gradients(model, inputs, targets) -> (B, P), one row per example (its own loss only)."""
    for seed in _seeds(hidden):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
        batch = 1 if hidden and seed == 4 else 6  # a batch of one: the per-example and batch gradients agree
        inputs, targets = torch.randn(batch, 5), torch.randint(0, 3, (batch,))
        expected = reference_per_example_gradients(model, inputs, targets)
        got = _tensor(
            _call(per_example_gradients, "per_example_gradients", model, inputs, targets), "per_example_gradients"
        )
        if got.shape != expected.shape:
            _fail(
                f"per_example_gradients returned shape {tuple(got.shape)}; expected {tuple(expected.shape)}: one "
                f"row per example, each row every parameter's gradient flattened in model.parameters() order."
            )
        if torch.allclose(got, expected.double(), atol=1e-5, rtol=1e-4):
            continue
        mean_grad = _batch_gradient(model, inputs, targets, "mean").double()
        sum_grad = _batch_gradient(model, inputs, targets, "sum").double()
        if any(torch.allclose(got, grad.expand_as(got), atol=1e-5) for grad in (mean_grad, sum_grad)):
            _fail(
                "every row is the batch's gradient (one backward pass over the whole batch's loss), not each "
                "example's: run one backward pass per example, on that example's loss alone."
            )
        if torch.allclose(got, expected.double() / batch, atol=1e-6):
            _fail(
                "your rows are each example's gradient divided by the batch size: an example's gradient is of "
                "its own loss alone (the division by the expected batch size comes after clipping and noise)."
            )
        _fail(
            f"per_example_gradients differs from the reference (seed {seed}, largest difference "
            f"{(got - expected.double()).abs().max().item():.3g}): row i must be the gradient of "
            f"F.cross_entropy(model(inputs[i:i+1]), targets[i:i+1])."
        )


def reference_poisson_batch(n_examples: int, sample_rate: float, generator: torch.Generator) -> list[int]:
    """Every example joins independently with probability q: the mask Opacus draws, torch.rand(N) < q."""
    return (torch.rand(n_examples, generator=generator) < sample_rate).nonzero().flatten().tolist()


def check_poisson_batch(poisson_batch: Callable, hidden: bool = False) -> None:
    """poisson_batch(n_examples, sample_rate, generator) -> the drawn indices (a list of ints)."""
    cases = [(24, 0.25)] + ([(50, 0.1), (10, 0.5), (8, 1e-4), (5, 1.0)] if hidden else [])
    for n, q in cases:
        drawn = {}
        for seed in range(20 if hidden else 8):
            got = _call(poisson_batch, "poisson_batch", n, q, torch.Generator().manual_seed(seed))
            try:
                drawn[seed] = sorted(int(i) for i in (got.tolist() if torch.is_tensor(got) else got))
            except Exception:
                _fail(f"poisson_batch must return the drawn indices (a list of ints), got {type(got).__name__}.")
        wrong = {
            seed: batch
            for seed, batch in drawn.items()
            if batch != reference_poisson_batch(n, q, torch.Generator().manual_seed(seed))
        }
        if not wrong:
            continue  # empty batches included: at a tiny q they are the right draw (the step still adds noise)
        seed, got = next(iter(wrong.items()))
        if any(i < 0 or i >= n for i in got) or len(set(got)) != len(got):
            _fail(f"poisson_batch({n}, {q}) returned {got}: indices must be distinct, in 0..{n - 1}.")
        sizes = {len(batch) for batch in drawn.values()}
        if len(sizes) == 1 and 0 < q < 1:
            _fail(
                f"your batches always have {sizes.pop()} examples: that is a fixed-size batch, not a Poisson one. "
                f"Include each example independently with probability q, so that the size varies."
            )
        expected = reference_poisson_batch(n, q, torch.Generator().manual_seed(seed))
        _fail(
            f"poisson_batch({n}, {q}) with seed {seed} drew {got}, the reference {expected}: draw the mask "
            f"as torch.rand(n_examples, generator=generator) < sample_rate, as Opacus does, so that the seed "
            f"reproduces the batch."
        )


def reference_noisy_step(
    per_example_grads: torch.Tensor,
    clip: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(sum of each row clipped to norm clip + N(0, (sigma clip)^2) per coordinate) / expected batch size."""
    norms = per_example_grads.norm(dim=1)
    factors = (clip / (norms + CLIP_EPSILON)).clamp(max=1.0)
    total = (per_example_grads * factors[:, None]).sum(0)
    noise = torch.normal(0.0, noise_multiplier * clip, size=total.shape, generator=generator, dtype=total.dtype)
    return (total + noise) / expected_batch_size


def check_noisy_step(noisy_step: Callable, hidden: bool = False) -> None:
    """noisy_step(per_example_grads (B, P), clip, noise_multiplier, expected_batch_size, generator) -> (P,)."""
    for seed in _seeds(hidden):
        g = torch.Generator().manual_seed(seed)
        batch = 0 if hidden and seed == 4 else 5  # an empty Poisson batch: the step is noise alone
        scales = torch.tensor([0.1, 0.5, 3.0, 8.0, 0.2])[:batch, None]
        grads = torch.randn(batch, 40, generator=g, dtype=torch.float64) * scales
        clip, expected_size = 1.0, 8.0  # 5 drawn where 8 were expected: dividing by either shows
        want = reference_noisy_step(grads, clip, 0.0, expected_size, torch.Generator())
        got = _tensor(
            _call(
                noisy_step, "noisy_step", grads.clone(), clip, 0.0, expected_size, torch.Generator().manual_seed(seed)
            ),
            "noisy_step",
        )
        if got.shape != want.shape:
            _fail(
                f"noisy_step returned shape {tuple(got.shape)}; expected {tuple(want.shape)} (one number per "
                f"parameter coordinate){' even for an empty batch' if batch == 0 else ''}."
            )
        if torch.allclose(got, want, atol=1e-6):
            continue
        total = grads.sum(0)
        norms = grads.norm(dim=1)
        mean = grads.mean(0)
        clipped_total = total * min(1.0, clip / (total.norm().item() + CLIP_EPSILON)) / expected_size
        clipped_mean = mean * min(1.0, clip / (mean.norm().item() + CLIP_EPSILON))
        if torch.allclose(got, clipped_total, atol=1e-6) or torch.allclose(got, clipped_mean, atol=1e-6):
            _fail(
                "you clipped the batch gradient, not each example's: clip every row to norm C first, then sum. "
                "Only per-example clipping bounds what one example can change."
            )
        if torch.allclose(got, total / expected_size, atol=1e-6):
            _fail("the gradients were not clipped: scale each example's gradient by min(1, C / ||g_i||).")
        if torch.allclose(got, (grads * (clip / (norms + CLIP_EPSILON))[:, None]).sum(0) / expected_size, atol=1e-6):
            _fail(
                "you scaled every gradient to norm C, small ones too: the factor is min(1, C / ||g_i||), so "
                "gradients already shorter than C stay as they are."
            )
        if batch and torch.allclose(got, want * expected_size / batch, atol=1e-6):
            _fail(
                f"you divided by the number of examples drawn ({batch}), not by the expected batch size qN "
                f"({expected_size:g}): the actual size depends on the data and is not part of the mechanism."
            )
        _fail(
            f"with noise_multiplier = 0 noisy_step differs from the reference (seed {seed}, largest difference "
            f"{(got - want).abs().max().item():.3g}): clip each row, sum, add noise, divide by expected_batch_size."
        )
    _check_noise(noisy_step, hidden)


def _check_noise(noisy_step: Callable, hidden: bool) -> None:
    grads = torch.randn(9, 20_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 0.01
    for sigma, clip, expected_size in [(1.5, 0.5, 8.0)] + ([(0.7, 2.0, 3.0)] if hidden else []):
        clean = reference_noisy_step(grads, clip, 0.0, expected_size, torch.Generator())
        got = _tensor(
            _call(
                noisy_step, "noisy_step", grads.clone(), clip, sigma, expected_size, torch.Generator().manual_seed(3)
            ),
            "noisy_step",
        )
        again = _tensor(
            _call(
                noisy_step, "noisy_step", grads.clone(), clip, sigma, expected_size, torch.Generator().manual_seed(3)
            ),
            "noisy_step",
        )
        if not torch.equal(got, again):
            _fail(
                "two calls with generators seeded alike gave different noise: draw the noise from `generator` "
                "(torch.normal(..., generator=generator)), so that a seed reproduces the step."
            )
        noise = (got - clean) * expected_size  # what was added to the sum of clipped gradients
        std, mean = noise.std().item(), noise.mean().item()
        want = sigma * clip
        if abs(mean) > 0.05 * want:
            _fail(f"the added noise has mean {mean:.3g}; it must be centred (N(0, (σC)²)).")
        if abs(std / want - 1) < 0.03:
            continue
        if abs(std / sigma - 1) < 0.03:
            _fail(f"the noise std is σ = {sigma:g}, not σ·C = {want:g}: the noise must scale with the clipping norm C.")
        if abs(std / (want * math.sqrt(len(grads))) - 1) < 0.05:
            _fail(
                "the noise std grows with the batch: add the noise once, to the sum of clipped gradients, not to "
                "every example."
            )
        if abs(std / (want / expected_size) - 1) < 0.03:
            _fail(
                "the noise is too small by the expected batch size: add N(0, (σC)²) to the SUM of clipped "
                "gradients, then divide the noisy sum by qN."
            )
        if std < 1e-12:
            _fail("no noise was added: draw N(0, (σC)²) for every coordinate and add it to the sum.")
        _fail(
            f"the added noise has std {std:.4g} per coordinate; it must be σ·C = {want:.4g} (before dividing "
            f"by the expected batch size)."
        )


# ------------------------------------------------------------------------ 2. the accountant (notebooks 02, 03)
def check_sigma_for_epsilon(sigma_for_epsilon: Callable, hidden: bool = False) -> None:
    """sigma_for_epsilon(epsilon, delta, sample_rate, steps, accountant) -> the smallest sigma spending <= epsilon."""
    from distildp import privacy

    cases = [(2.0, 1e-4, 0.25, 12, "rdp")]
    if hidden:
        cases += [(0.5, 1e-5, 0.01, 200, "rdp"), (8.0, 1e-4, 0.1, 50, "rdp")]  # PRV works alike, 5x slower
        inf = _call(sigma_for_epsilon, "sigma_for_epsilon", math.inf, 1e-4, 0.25, 12, "rdp")
        if inf != 0:
            _fail(f"sigma_for_epsilon(inf, ...) returned {inf!r}: an infinite budget needs no noise, return 0.0.")
    for epsilon, delta, q, steps, accountant in cases:
        sigma = float(_call(sigma_for_epsilon, "sigma_for_epsilon", epsilon, delta, q, steps, accountant))
        best = privacy.calibrate_noise(epsilon, delta, q, steps, accountant)
        if not sigma > 0:
            _fail(f"sigma_for_epsilon({epsilon}, ...) returned {sigma}: a finite budget needs noise (sigma > 0).")
        spent = privacy.epsilon_spent([privacy.DPSGDMechanism(sigma, q, steps)], delta, accountant)
        if spent > epsilon * (1 + 1e-9):
            _fail(
                f"sigma = {sigma:.4g} spends epsilon = {spent:.4g} > the target {epsilon} (q = {q}, T = {steps}, "
                f"delta = {delta:g}, {accountant}): search for a sigma whose epsilon_spent is at most the target, "
                f"and return the upper end of your bracket, never the lower."
            )
        if sigma > best * 1.02:
            _fail(
                f"sigma = {sigma:.4g} is safe but wasteful: sigma = {best:.4g} already spends at most {epsilon} "
                f"(q = {q}, T = {steps}, {accountant}). Narrow the search until sigma is within 1%."
            )


def check_composed_epsilon(composed_epsilon: Callable, hidden: bool = False) -> None:
    """composed_epsilon(teacher_sigma, sample_rate, steps, histogram_sigma, delta, accountant) -> one epsilon."""
    from distildp import privacy

    cases = [(1.88, 0.25, 12, 24.0, 1e-4, "rdp")]
    if hidden:
        cases += [
            (1.2, 0.1, 30, 10.0, 1e-5, "rdp"),
            (1.88, 0.25, 12, 24.0, 1e-4, "prv"),
            (0.9, 0.05, 100, 3.0, 1e-5, "rdp"),
        ]
    for sigma_t, q, steps, sigma_h, delta, accountant in cases:
        teacher, histogram = privacy.DPSGDMechanism(sigma_t, q, steps), privacy.GaussianMechanism(sigma_h)
        got = float(_call(composed_epsilon, "composed_epsilon", sigma_t, q, steps, sigma_h, delta, accountant))
        want = privacy.epsilon_spent([teacher, histogram], delta, accountant)
        if math.isclose(got, want, rel_tol=1e-3):
            continue
        alone_t = privacy.epsilon_spent([teacher], delta, accountant)
        alone_h = privacy.epsilon_spent([histogram], delta, accountant)
        if math.isclose(got, alone_t + alone_h, rel_tol=1e-3):
            _fail(
                f"you added the two epsilons ({alone_t:.3f} + {alone_h:.3f}): basic composition is valid but "
                f"loose. Compose both mechanisms in ONE accountant: epsilon_spent([teacher, histogram], ...) "
                f"gives {want:.3f}."
            )
        if math.isclose(got, alone_t, rel_tol=1e-3):
            _fail(
                "you counted the teacher alone: the histogram reads the private data too, so it is part of the "
                "composition."
            )
        _fail(
            f"composed_epsilon = {got:.4g}, expected {want:.4g} (teacher sigma {sigma_t}, q {q}, T {steps}, "
            f"histogram sigma {sigma_h}, delta {delta:g}, {accountant})."
        )


def check_default_delta(default_delta: Callable, hidden: bool = False) -> None:
    """default_delta(n) -> the largest power of ten strictly below 1/n."""
    from distildp import privacy

    ns = [4000] + ([1, 9, 10, 999, 1000, 50_000, 100_000, 123_456] if hidden else [])
    for n in ns:
        got = float(_call(default_delta, "default_delta", n))
        want = privacy.resolve_delta(None, n)
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        if math.isclose(got, 1 / n, rel_tol=1e-9):
            _fail(
                f"default_delta({n}) = 1/N = {got:.3g}: delta = 1/N allows a mechanism that publishes one whole "
                f"record at random and still meets the definition. delta must be strictly below 1/N."
            )
        if got < want:
            _fail(f"default_delta({n}) = {got:.3g} is below 1/N but not the largest power of ten that is ({want:.0e}).")
        _fail(
            f"default_delta({n}) = {got:.3g} is not below 1/N = {1 / n:.3g}: for N = 10^k, 10^-k equals 1/N; "
            f"strictly below means 10^-(k+1)."
        )


# ------------------------------------------------------------------------ 3. the DP histogram (notebook 04)
def check_dp_histogram(dp_histogram_by_hand: Callable, hidden: bool = False) -> None:
    """dp_histogram_by_hand(counts, keys, total, noise_multiplier, seed) -> {key: samples}, as privacy.dp_histogram."""
    from distildp import privacy

    keys = [(c, f"{s}.0") for c in ("Restaurants", "Hotels", "Beauty") for s in range(1, 6)]
    cases = [({k: 40 + 10 * i for i, k in enumerate(keys)}, 300, 2.0, 0)]
    if hidden:
        sparse = {keys[0]: 120, keys[3]: 7, keys[9]: 60}  # codes that never occur are absent: zeros all the same
        cases += [(sparse, 500, 5.0, s) for s in (1, 2, 3)] + [(sparse, 0, 5.0, 4), (sparse, 101, 0.5, 5)]
        nothing = {}  # no record has any code: with noise below zero everywhere, the release falls back to uniform
        seed = next(
            s
            for s in range(10_000)
            if all(v <= 0 for v in privacy.gaussian_noisy_counts(nothing, 1.0, s, keys[:3]).values())
        )
        cases.append((nothing, 30, 1.0, seed))
    for counts, total, sigma, seed in cases:
        ks = keys[:3] if not counts else keys
        want, _ = privacy.dp_histogram(counts, total, sigma, seed=seed, keys=ks)
        got = _call(dp_histogram_by_hand, "dp_histogram_by_hand", dict(counts), list(ks), total, sigma, seed)
        if not isinstance(got, Mapping):
            _fail(f"dp_histogram_by_hand must return a dict {{code: samples}}, got {type(got).__name__}.")
        got = {k: int(v) for k, v in got.items()}
        if got == want:
            continue
        missing = [k for k in ks if k not in got]
        if missing:
            _fail(
                f"{len(missing)} code(s) are missing from your histogram, e.g. {missing[0]}: release a count for "
                f"EVERY public code, zeros included (the codes that occur in the data would themselves leak)."
            )
        if any(v < 0 for v in got.values()):
            _fail("some of your counts are negative: clip the noisy counts at 0 before scaling (post-processing).")
        if sum(got.values()) != total:
            _fail(
                f"your counts sum to {sum(got.values())}, not to total = {total}: scale to the total and round by "
                f"largest remainder (privacy.scale_to_total) so that exactly `total` samples are drawn."
            )
        exact = privacy.scale_to_total({k: counts.get(k, 0) for k in ks}, total) if any(counts.values()) else None
        if got == exact:
            _fail(
                "your counts are the exact histogram: add N(0, sigma²) noise to every count (the Gaussian "
                "mechanism, sensitivity 1) before clipping and scaling."
            )
        if not any(counts.values()):
            _fail(
                "when every noisy count is <= 0 there is nothing to scale: fall back to the uniform histogram "
                "(privacy.uniform_histogram), still post-processing."
            )
        _fail(
            f"your histogram differs from privacy.dp_histogram (seed {seed}, sigma {sigma}, total {total}): draw "
            f"the noise as np.random.default_rng(seed).normal(0, sigma, size=len(keys)), in the order of `keys`."
        )
    if hidden:
        try:
            _call(dp_histogram_by_hand, "dp_histogram_by_hand", {}, [], 10, 1.0, 0)
        except ExerciseError as err:
            if "raised ValueError" in str(err):
                return
        _fail(
            "dp_histogram_by_hand with no codes at all (keys = []) must raise ValueError: there is nothing to "
            "release, and a silent empty histogram would hide the mistake."
        )


# ------------------------------------------------------------------------ 4. top-k / top-p sampling (notebook 04)
def reference_sampling_distribution(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    """(B, V) probabilities over the whole vocabulary, from the library's `next_token_distribution`."""
    from distildp.sampling import GenerationConfig, next_token_distribution

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
    for seed in _seeds(hidden):
        logits = 2 * torch.randn(4, 30, generator=torch.Generator().manual_seed(seed))
        for top_k, top_p, temperature in settings:
            want = reference_sampling_distribution(logits, top_k, top_p, temperature).double()
            got = _tensor(
                _call(sampling_distribution, "sampling_distribution", logits.clone(), top_k, top_p, temperature),
                "sampling_distribution",
            )
            where = f"(top_k={top_k}, top_p={top_p}, temperature={temperature}, seed {seed})"
            if got.shape != want.shape:
                _fail(
                    f"sampling_distribution returned shape {tuple(got.shape)}; expected {tuple(want.shape)}: "
                    f"a probability for every token of the vocabulary (0 for the tokens cut) {where}."
                )
            if torch.allclose(got, want, atol=1e-5):
                continue
            sums = got.sum(-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                kept = got > 0
                if torch.allclose(got[kept], F.softmax(logits.double() / temperature, -1)[kept], atol=1e-5):
                    _fail(
                        f"your probabilities sum to {sums.min().item():.3f}-{sums.max().item():.3f}, not 1: "
                        f"after cutting to the top k / top p, renormalise over the tokens kept {where}."
                    )
                _fail(f"your probabilities sum to {sums.min().item():.3f}-{sums.max().item():.3f}, not 1 {where}.")
            if top_p < 1 and torch.allclose(
                got, _top_p_before_temperature(logits, top_k, top_p, temperature), atol=1e-5
            ):
                _fail(
                    f"you chose the top-p set before applying the temperature: transformers' warpers divide by the "
                    f"temperature first, then cut top-k, then top-p {where}."
                )
            if (got > 0).sum(-1).min() == 0:
                _fail(f"a row kept no token at all: always keep the most likely token {where}.")
            n_got, n_want = (got > 0).sum(-1), (want > 0).sum(-1)
            if top_p < 1 and torch.all(n_got == n_want - 1) | torch.all(n_got == n_want + 1):
                _fail(
                    f"your top-p set is one token off: keep the most likely tokens until their mass reaches "
                    f"top_p, INCLUDING the token that crosses it (drop a token only when the mass of it and all "
                    f"less likely ones is <= 1 - top_p) {where}."
                )
            _fail(
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


def _kd_variant(
    student,
    teacher,
    targets,
    mask,
    lam,
    t,
    *,
    t_squared=True,
    ce_at_t=False,
    batch_mean=False,
    ignore_mask=False,
    no_shift=False,
    reverse_kl=False,
    one_minus_lam=True,
) -> torch.Tensor:
    """The loss with one usual mistake switched on (all off: the library's formula)."""
    if no_shift:
        s, te, y, w = student, teacher, targets, mask
    else:
        s, te, y, w = student[:, :-1], teacher[:, :-1], targets[:, 1:], mask[:, 1:]
    if ignore_mask:
        w = torch.ones_like(w)
    s, te = s.double(), te.double()
    log_s_t, log_t_t = F.log_softmax(s / t, -1), F.log_softmax(te / t, -1)
    ce = -(F.log_softmax(s / t if ce_at_t else s, -1)).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    kl = ((log_s_t.exp() * (log_s_t - log_t_t)) if reverse_kl else (log_t_t.exp() * (log_t_t - log_s_t))).sum(-1)
    per_token = (1 - lam if one_minus_lam else 1.0) * ce + lam * (t**2 if t_squared else 1.0) * kl
    w = w.double()
    if batch_mean:
        return ((per_token * w).sum() / w.sum().clamp(min=1)).expand(len(s))
    return (per_token * w).sum(1) / w.sum(1).clamp(min=1)


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


def check_kd_loss(distillation_loss: Callable, hidden: bool = False) -> None:
    """distillation_loss(student_logits, teacher_logits, targets, loss_mask, lam, temperature) -> (B,) losses."""
    from distildp.distill import kd_loss

    hidden_settings = [(0.0, 1.0), (1.0, 1.0), (1.0, 3.0), (0.0, 2.5), (0.7, 0.5), (0.4, 1.0)]
    settings = [(0.4, 2.0)] + (hidden_settings if hidden else [])
    for seed in _seeds(hidden):
        student, teacher, targets, mask = _kd_inputs(seed)
        if hidden and seed == 4:
            mask[2] = 0.0  # a sequence with nothing scored contributes 0
        for lam, t in settings:
            want = kd_loss(student, teacher, targets, mask, lam=lam, temperature=t).total.double()
            got = _tensor(
                _call(
                    distillation_loss,
                    "distillation_loss",
                    student.clone(),
                    teacher.clone(),
                    targets.clone(),
                    mask.clone(),
                    lam,
                    t,
                ),
                "distillation_loss",
            )
            where = f"(lam={lam}, t={t}, seed {seed})"
            if got.shape != want.shape:
                _fail(
                    f"distillation_loss returned shape {tuple(got.shape)}; expected {tuple(want.shape)}: one loss "
                    f"per sequence {where}."
                )
            if torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                continue
            if not torch.isfinite(got).all():
                _fail(
                    f"your loss has NaN or inf {where}: a sequence with nothing scored must give 0 (divide by the "
                    f"number of scored tokens clamped to at least 1), and use log_softmax, not log(softmax)."
                )
            for mistake, message in KD_MISTAKES.items():
                # t_squared and one_minus_lam are parts of the right formula (on by default): the mistake drops them
                variant = _kd_variant(
                    student, teacher, targets, mask, lam, t, **{mistake: mistake not in ("t_squared", "one_minus_lam")}
                )
                if torch.allclose(got, variant, atol=1e-4, rtol=1e-4):
                    _fail(f"{message} {where}")
            _fail(
                f"distillation_loss differs from distildp.distill.kd_loss {where}: got {got.numpy().round(4)}, "
                f"expected {want.numpy().round(4)}. Per sequence: mean over its scored tokens of "
                f"(1 − λ)·CE + λ·t²·KL(p_T^t || p_S^t)."
            )


# ------------------------------------------------------------------------ 6. the exact floor (notebook 01)
def small_floor_problem(seed: int, n_docs: int = 40):
    """A small source configuration, texts drawn from it, and a tokenizer trained on them (< 1 s)."""
    from distildp.models import train_tokenizer
    from distildp.source import ReviewSource

    source = ReviewSource.tiny(seed, max_tokens=6)
    records = source.sample(n_docs, seed + 100)
    texts, codes = [r.text for r in records], [r.codes for r in records]
    tokenizer = train_tokenizer(texts * 3, vocab_size=300)
    return source, tokenizer, texts, codes


def check_floor(floor_by_hand: Callable, hidden: bool = False) -> None:
    """floor_by_hand(source, tokenizer, texts, codes=None, categories=None) -> the exact floor (a float)."""
    from distildp.evaluate import floor

    for seed in _seeds(hidden)[:3]:
        source, tokenizer, texts, codes = small_floor_problem(seed)
        categories = source.categories[:1] if hidden and seed == 2 else None
        for given in [codes, None] if hidden else [None]:
            want = floor(source, tokenizer, texts, given, categories).ppl
            got = float(_call(floor_by_hand, "floor_by_hand", source, tokenizer, texts, given, categories))
            who = "codes given (teacher)" if given is not None else "codes summed out (student)"
            if math.isclose(got, want, rel_tol=1e-6):
                continue
            n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
            nats = floor(source, tokenizer, texts, given, categories).nll_sum
            if math.isclose(got, math.exp(nats / n_tokens), rel_tol=1e-6):
                _fail(
                    f"you divided by the text tokens only: each document also scores its closing "
                    f"<|endoftext|>, so count len(tokens) + 1 per document ({who})."
                )
            if math.isclose(got, math.exp(nats / len(texts)), rel_tol=1e-6):
                _fail(f"you divided the nats by the number of documents: perplexity is per scored TOKEN ({who}).")
            if given is None and categories and math.isclose(got, floor(source, tokenizer, texts).ppl, rel_tol=1e-6):
                _fail(
                    "you summed the codes over every category: pass `categories` on to log_prob_marginal, the "
                    "private corpus has only its own categories."
                )
            _fail(
                f"floor_by_hand = {got:.6g}, the exact floor is {want:.6g} ({who}, seed {seed}): "
                f"exp(sum of -log p(text) / scored tokens)."
            )


# ------------------------------------------------------------------------ 7. reading the results (notebook 07)
def committed_results_table() -> Path:
    """results/tables/ppl_vs_eps.csv of this checkout (the quick grid's committed table)."""
    path = Path(__file__).resolve().parents[2] / "results" / "tables" / "ppl_vs_eps.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: exercise 7 reads the committed results of the quick grid; "
            f"install distildp from its repository (`make setup`, an editable install)."
        )
    return path


def reference_verdict(table, epsilon: float) -> dict[str, Any]:
    """{best_baseline, margin, result} at `epsilon`, read off `distildp.results.gates_table`'s verdict row."""
    from distildp import results

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


def _shifted_tables(table) -> list:
    """The committed table and two changed copies, DistilDP's students moved at each epsilon so that its margin is
    1.5 largest seed stds (a TIE by the two-std rule, a WIN by a one-std rule) and then 3 stds behind (a LOSS)."""
    from distildp import results

    variants = [table]
    main = results.normalise(table)
    main = main[main["kind"] == "main"]
    for target in (-1.5, 3.0):  # the margin to land on, in units of the largest seed std
        changed = table.copy()
        for epsilon, part in main.groupby("epsilon"):
            means = part.groupby("method")["student_ppl"].mean()
            noise = (
                part[part["method"].isin(["distildp", *results.BASELINES])]
                .groupby("method")["student_ppl"]
                .std(ddof=1)
                .max()
            )
            noise = noise if noise > 0 else 1.0  # one seed (std NaN) or equal seeds: any positive unit will do
            best = min(means[m] for m in results.BASELINES if m in means)
            rows = (changed["method"] == "distildp") & (changed["kind"] == "main") & (changed["epsilon"] == epsilon)
            changed.loc[rows, "student_ppl"] += best + target * noise - means["distildp"]
        variants.append(changed)
    return variants


def check_verdict(verdict: Callable, hidden: bool = False) -> None:
    """verdict(table, epsilon) -> {"best_baseline": str, "margin": float, "result": "WIN" | "TIE" | "LOSS"}."""
    from distildp import results

    table = results.read_csv(committed_results_table())
    for number, case in enumerate(_shifted_tables(table) if hidden else [table]):
        for epsilon in sorted(case.loc[case["kind"] == "main", "epsilon"].unique()):
            want = reference_verdict(case, epsilon)
            got = _call(verdict, "verdict", case.copy(), float(epsilon))
            if not isinstance(got, Mapping) or set(want) - set(got):
                _fail(f"verdict must return a dict with keys {sorted(want)}, got {got!r}.")
            which = "the committed table" if number == 0 else "a changed table (DistilDP's students moved up)"
            if got["best_baseline"] != want["best_baseline"]:
                _fail(
                    f"best_baseline = {got['best_baseline']!r} at epsilon {epsilon:g} in {which}; the baseline "
                    f"with the lowest MEAN student perplexity over seeds is {want['best_baseline']!r} (DistilDP "
                    f"itself and the reference rows are not baselines)."
                )
            if not math.isclose(float(got["margin"]), want["margin"], abs_tol=1e-6):
                if math.isclose(float(got["margin"]), -want["margin"], abs_tol=1e-6):
                    _fail(
                        "your margin has the wrong sign: DistilDP's mean minus the best baseline's (below 0: "
                        "DistilDP is better)."
                    )
                _fail(
                    f"margin = {float(got['margin']):.4f} at epsilon {epsilon:g} in {which}; expected "
                    f"{want['margin']:.4f}: distildp's mean student_ppl minus the best baseline's (rows with kind "
                    f"'main' only)."
                )
            if str(got["result"]).upper() != want["result"]:
                _fail(
                    f"result = {got['result']!r} at epsilon {epsilon:g} in {which}; expected {want['result']!r}: "
                    f"a WIN or a LOSS counts only when |margin| exceeds twice the largest seed std (sample std, "
                    f"ddof=1) among DistilDP and the baselines; otherwise it is a TIE."
                )


CHECKS: dict[str, Callable] = {
    "per_example_gradients": check_per_example_gradients,
    "poisson_batch": check_poisson_batch,
    "noisy_step": check_noisy_step,
    "sigma_for_epsilon": check_sigma_for_epsilon,
    "composed_epsilon": check_composed_epsilon,
    "default_delta": check_default_delta,
    "dp_histogram_by_hand": check_dp_histogram,
    "sampling_distribution": check_sampling_distribution,
    "distillation_loss": check_kd_loss,
    "floor_by_hand": check_floor,
    "verdict": check_verdict,
}


# ------------------------------------------------------------------------ the exercise blocks of a notebook
EXERCISE_NOTEBOOKS = ("01_data_and_models", "02_dp_sgd", "04_synthetic_text", "05_distillation", "07_results")


@dataclass
class Question:
    """One otter question of a source notebook: its solution code and its test cells."""

    name: str
    points: float
    manual: bool
    solution: str  # the code cells between BEGIN QUESTION and BEGIN TESTS, joined
    public_tests: list[str]
    hidden_tests: list[str]

    def student_solution(self) -> str:
        """The solution as otter assign hands it to students: each marked region replaced by `...`."""
        return strip_solution(self.solution)


def _raw_marker(cell) -> str:
    if cell.cell_type != "raw" or not cell.source.strip():
        return ""
    return cell.source.strip().splitlines()[0].strip().upper()


def questions(notebook: str | Path) -> list[Question]:
    """The questions of a source notebook, in order (otter's raw-cell format: BEGIN/END QUESTION, TESTS)."""
    import nbformat
    import yaml

    nb = nbformat.read(str(notebook), as_version=4)
    found, current, in_tests = [], None, False
    for cell in nb.cells:
        marker = _raw_marker(cell)
        if marker == "# BEGIN QUESTION":
            config = yaml.safe_load("\n".join(cell.source.strip().splitlines()[1:])) or {}
            current = Question(config["name"], config.get("points", 1), bool(config.get("manual")), "", [], [])
        elif marker == "# END QUESTION":
            found.append(current)
            current, in_tests = None, False
        elif marker in ("# BEGIN TESTS", "# END TESTS"):
            in_tests = marker == "# BEGIN TESTS"
        elif current is not None and cell.cell_type == "code":
            if in_tests:
                hidden = cell.source.lstrip().upper().startswith("# HIDDEN")
                (current.hidden_tests if hidden else current.public_tests).append(cell.source)
            else:
                current.solution += cell.source + "\n\n"
    if current is not None:
        raise ValueError(f"{notebook}: question {current.name!r} has no '# END QUESTION' raw cell; add one.")
    return found


def strip_solution(source: str) -> str:
    """Replace every `# BEGIN SOLUTION` ... `# END SOLUTION` region with `...` at its indentation (as otter)."""
    out, skipping = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == "# BEGIN SOLUTION":
            skipping = True
            out.append(line[: len(line) - len(line.lstrip())] + "...")
        elif stripped == "# END SOLUTION":
            skipping = False
        elif not skipping:
            out.append(line)
    if skipping:
        raise ValueError("a '# BEGIN SOLUTION' has no '# END SOLUTION'; close the region.")
    return "\n".join(out)


def run_question(question: Question, solution: str, hidden: bool = True) -> dict[str, str | None]:
    """Execute `solution` and then each test cell in one namespace: {test source: None if it passed, else the error}."""
    namespace: dict[str, Any] = {"__name__": "__exercise__"}
    exec(compile(solution, f"<{question.name} solution>", "exec"), namespace)
    outcome = {}
    for test in question.public_tests + (question.hidden_tests if hidden else []):
        try:
            exec(compile(test, f"<{question.name} test>", "exec"), namespace)
            outcome[test] = None
        except AssertionError as err:
            outcome[test] = str(err)
    return outcome


# ------------------------------------------------------------------------ building and grading (otter)
IGNORE_TAG = "otter_ignore"  # otter drops cells with this tag when it executes a submission to grade it


def grading_copy(notebook: str | Path) -> Any:
    """The source notebook with every code cell outside a question tagged `otter_ignore`.

    Grading then runs the exercise cells alone (each imports what it needs), not the pipeline around them: a
    submission is graded in seconds, without models, while the student's own notebook still runs top to bottom.
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    inside = False
    for cell in nb.cells:
        marker = _raw_marker(cell)
        if marker in ("# BEGIN QUESTION", "# END QUESTION"):
            inside = marker == "# BEGIN QUESTION"
        elif cell.cell_type == "code" and not inside:
            tags = cell.metadata.setdefault("tags", [])
            if IGNORE_TAG not in tags:
                tags.append(IGNORE_TAG)
    return nb


def _otter(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otter", *args], cwd=cwd, capture_output=True, text=True)


def build(out: str | Path, notebooks_dir: str | Path, names: tuple[str, ...] = EXERCISE_NOTEBOOKS) -> Path:
    """`otter assign` each exercise notebook: out/student/*.ipynb, out/autograder/*-autograder.zip, out/solutions/."""
    import nbformat

    out, notebooks_dir = Path(out), Path(notebooks_dir)
    for part in ("student", "autograder", "solutions", "assign"):
        shutil.rmtree(out / part, ignore_errors=True)
        (out / part).mkdir(parents=True)
    for name in names:
        source = notebooks_dir / f"{name}.ipynb"
        if not source.exists():
            raise FileNotFoundError(f"{source} is missing: the exercise notebooks are {list(names)}.")
        work = out / "assign" / name
        work.mkdir()
        nbformat.write(grading_copy(source), work / source.name)
        done = _otter("assign", source.name, "dist", cwd=work)
        zips = sorted((work / "dist" / "autograder").glob("*-autograder_*.zip"))
        if done.returncode != 0 or not zips:
            raise RuntimeError(f"otter assign failed on {source}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        shutil.copy(work / "dist" / "student" / source.name, out / "student" / source.name)
        shutil.copy(work / "dist" / "autograder" / source.name, out / "solutions" / source.name)
        shutil.copy(zips[-1], out / "autograder" / f"{name}-autograder.zip")
        print(f"{name}: student notebook, solutions and autograder built (otter assign ran the solution's tests)")
    return out


def _assignment_of(zip_path: Path) -> str:
    with zipfile.ZipFile(zip_path) as archive:
        return json.loads(archive.read("otter_config.json"))["assignment_name"]


def _autograder_for(submission: Path, autograders: dict[str, Path]) -> Path | None:
    """The autograder of the submission's assignment: its otter metadata, else its file name (e.g. 02_dp_sgd*.ipynb)."""
    try:
        name = json.loads(submission.read_text()).get("metadata", {}).get("otter", {}).get("assignment_name")
    except (OSError, ValueError):
        name = None
    if name in autograders:
        return autograders[name]
    for zip_path in autograders.values():
        if submission.stem.startswith(zip_path.name.removesuffix("-autograder.zip")):
            return zip_path
    return None


def scores_from_results(results: Mapping[str, Any]) -> dict[str, float]:
    """{question: score} from otter run's results.json (the per-question entries; 'Public Tests' is a summary)."""
    return {test["name"]: float(test["score"]) for test in results.get("tests", []) if "score" in test}


def grade(submissions: str | Path, autograders_dir: str | Path, csv: str | Path) -> pd.DataFrame:
    """Grade every notebook under `submissions` with `otter run` (no Docker) into `csv`, one row per notebook.

    Columns: submission (its path under `submissions`), assignment, one column per question (points), total,
    possible, error (why a notebook could not be graded; it then scores nothing).
    """
    import pandas as pd

    submissions, autograders_dir = Path(submissions), Path(autograders_dir)
    if not submissions.is_dir():
        raise FileNotFoundError(f"SUBMISSIONS={submissions} is not a folder: pass the folder of submitted notebooks.")
    autograders = {_assignment_of(z): z for z in sorted(autograders_dir.glob("*-autograder.zip"))}
    if not autograders:
        raise FileNotFoundError(f"no autograders in {autograders_dir}: run `make exercises` first.")
    notebooks = sorted(p for p in submissions.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not notebooks:
        raise FileNotFoundError(f"no .ipynb files under {submissions}.")
    rows = []
    for notebook in notebooks:
        row: dict[str, Any] = {"submission": str(notebook.relative_to(submissions)), "assignment": "", "error": ""}
        zip_path = _autograder_for(notebook, autograders)
        if zip_path is None:
            row["error"] = f"no autograder matches (assignments: {sorted(autograders)})"
            rows.append(row)
            continue
        row["assignment"] = _assignment_of(zip_path)
        possible = _possible_points(zip_path)
        with tempfile.TemporaryDirectory() as out:
            done = _otter("run", "--no-logo", "-a", str(zip_path.resolve()), "-o", out, str(notebook.resolve()))
            results_file = Path(out) / "results.json"
            scores = scores_from_results(json.loads(results_file.read_text())) if results_file.exists() else {}
        if not scores:
            row["error"] = f"otter run gave no scores: {(done.stderr or done.stdout).strip()[-300:]}"
        row.update({q: scores.get(q, 0.0) for q in possible})
        row["total"], row["possible"] = sum(scores.get(q, 0.0) for q in possible), sum(possible.values())
        print(
            f"{row['submission']}: {row['assignment']} {row['total']:g} / {row['possible']:g}"
            + (f" ({row['error']})" if row["error"] else "")
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    questions_ = sorted(c for c in frame.columns if c.startswith("q"))
    frame = frame[["submission", "assignment", *questions_, "total", "possible", "error"]]
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    return frame


def _possible_points(zip_path: Path) -> dict[str, float]:
    """{question: points} of the autograded questions in an autograder zip (its tests/*.py, OK format)."""
    points = {}
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            if name.startswith("tests/") and name.endswith(".py"):
                namespace: dict[str, Any] = {}
                exec(archive.read(name).decode(), namespace)  # otter's own test file: `test = {...}`
                points[namespace["test"]["name"]] = float(namespace["test"]["points"])
    return points


def main(argv: list[str] | None = None) -> int:
    """`build OUT` makes the student notebooks and autograders; `grade SUBMISSIONS --csv FILE` grades a folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distildp.exercises", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="otter assign every exercise notebook")
    build_cmd.add_argument("out", help="e.g. build/exercises")
    build_cmd.add_argument("--notebooks", default="notebooks")
    grade_cmd = commands.add_parser("grade", help="otter run every notebook of a folder into a CSV")
    grade_cmd.add_argument("submissions")
    grade_cmd.add_argument("--autograders", default="build/exercises/autograder")
    grade_cmd.add_argument("--csv", required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.out, args.notebooks)
    else:
        frame = grade(args.submissions, args.autograders, args.csv)
        print(f"wrote {args.csv}: {len(frame)} notebooks, {int((frame['error'] != '').sum())} not graded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
