"""The privacy exercises' checks: one DP-SGD step by hand (per-example gradients, a Poisson batch, the noisy
clipped step; notebook 02), the accountant (the noise for a budget, a composed epsilon, the default delta; notebook
02) and the DP histogram of control codes (notebook 04). Each compares the student's function with the library's
and names the usual mistakes (see `distildp.teaching.exercises`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from distildp.dp import histogram
from distildp.teaching.exercises import ExerciseError, answer_tensor, call_answer, fail, seeds_for, tensor_answer

# Opacus divides by (norm + 1e-6) when clipping, and so do notebook 02 and the references here.
CLIP_EPSILON = 1e-6


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
    for seed in seeds_for(hidden):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
        batch = 1 if hidden and seed == 4 else 6  # a batch of one: the per-example and batch gradients agree
        inputs, targets = torch.randn(batch, 5), torch.randint(0, 3, (batch,))
        expected = reference_per_example_gradients(model, inputs, targets)
        rows = ": one row per example, each row every parameter's gradient flattened in model.parameters() order"
        got = tensor_answer(per_example_gradients, "per_example_gradients", (model, inputs, targets), expected, rows)
        if torch.allclose(got, expected.double(), atol=1e-5, rtol=1e-4):
            continue
        mean_grad = _batch_gradient(model, inputs, targets, "mean").double()
        sum_grad = _batch_gradient(model, inputs, targets, "sum").double()
        if any(torch.allclose(got, grad.expand_as(got), atol=1e-5) for grad in (mean_grad, sum_grad)):
            fail(
                "every row is the batch's gradient (one backward pass over the whole batch's loss), not each "
                "example's: run one backward pass per example, on that example's loss alone."
            )
        if torch.allclose(got, expected.double() / batch, atol=1e-6):
            fail(
                "your rows are each example's gradient divided by the batch size: an example's gradient is of "
                "its own loss alone (the division by the expected batch size comes after clipping and noise)."
            )
        fail(
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
            got = call_answer(poisson_batch, "poisson_batch", n, q, torch.Generator().manual_seed(seed))
            try:
                drawn[seed] = sorted(int(i) for i in (got.tolist() if torch.is_tensor(got) else got))
            except Exception:
                fail(f"poisson_batch must return the drawn indices (a list of ints), got {type(got).__name__}.")
        wrong = {
            seed: batch
            for seed, batch in drawn.items()
            if batch != reference_poisson_batch(n, q, torch.Generator().manual_seed(seed))
        }
        if not wrong:
            continue  # empty batches included: at a tiny q they are the right draw (the step still adds noise)
        seed, got = next(iter(wrong.items()))
        if any(i < 0 or i >= n for i in got) or len(set(got)) != len(got):
            fail(f"poisson_batch({n}, {q}) returned {got}: indices must be distinct, in 0..{n - 1}.")
        sizes = {len(batch) for batch in drawn.values()}
        if len(sizes) == 1 and 0 < q < 1:
            fail(
                f"your batches always have {sizes.pop()} examples: that is a fixed-size batch, not a Poisson one. "
                f"Include each example independently with probability q, so that the size varies."
            )
        expected = reference_poisson_batch(n, q, torch.Generator().manual_seed(seed))
        fail(
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
    for seed in seeds_for(hidden):
        g = torch.Generator().manual_seed(seed)
        batch = 0 if hidden and seed == 4 else 5  # an empty Poisson batch: the step is noise alone
        scales = torch.tensor([0.1, 0.5, 3.0, 8.0, 0.2])[:batch, None]
        grads = torch.randn(batch, 40, generator=g, dtype=torch.float64) * scales
        clip, expected_size = 1.0, 8.0  # 5 drawn where 8 were expected: dividing by either shows
        want = reference_noisy_step(grads, clip, 0.0, expected_size, torch.Generator())
        args = (grads.clone(), clip, 0.0, expected_size, torch.Generator().manual_seed(seed))
        holds = " (one number per parameter coordinate)" + (" even for an empty batch" if batch == 0 else "")
        got = tensor_answer(noisy_step, "noisy_step", args, want, holds)
        if torch.allclose(got, want, atol=1e-6):
            continue
        total = grads.sum(0)
        norms = grads.norm(dim=1)
        mean = grads.mean(0)
        clipped_total = total * min(1.0, clip / (total.norm().item() + CLIP_EPSILON)) / expected_size
        clipped_mean = mean * min(1.0, clip / (mean.norm().item() + CLIP_EPSILON))
        if torch.allclose(got, clipped_total, atol=1e-6) or torch.allclose(got, clipped_mean, atol=1e-6):
            fail(
                "you clipped the batch gradient, not each example's: clip every row to norm C first, then sum. "
                "Only per-example clipping bounds what one example can change."
            )
        if torch.allclose(got, total / expected_size, atol=1e-6):
            fail("the gradients were not clipped: scale each example's gradient by min(1, C / ||g_i||).")
        if torch.allclose(got, (grads * (clip / (norms + CLIP_EPSILON))[:, None]).sum(0) / expected_size, atol=1e-6):
            fail(
                "you scaled every gradient to norm C, small ones too: the factor is min(1, C / ||g_i||), so "
                "gradients already shorter than C stay as they are."
            )
        if batch and torch.allclose(got, want * expected_size / batch, atol=1e-6):
            fail(
                f"you divided by the number of examples drawn ({batch}), not by the expected batch size qN "
                f"({expected_size:g}): the actual size depends on the data and is not part of the mechanism."
            )
        fail(
            f"with noise_multiplier = 0 noisy_step differs from the reference (seed {seed}, largest difference "
            f"{(got - want).abs().max().item():.3g}): clip each row, sum, add noise, divide by expected_batch_size."
        )
    _check_noise(noisy_step, hidden)


def _check_noise(noisy_step: Callable, hidden: bool) -> None:
    grads = torch.randn(9, 20_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 0.01
    for sigma, clip, expected_size in [(1.5, 0.5, 8.0)] + ([(0.7, 2.0, 3.0)] if hidden else []):
        clean = reference_noisy_step(grads, clip, 0.0, expected_size, torch.Generator())
        got = answer_tensor(
            call_answer(
                noisy_step, "noisy_step", grads.clone(), clip, sigma, expected_size, torch.Generator().manual_seed(3)
            ),
            "noisy_step",
        )
        again = answer_tensor(
            call_answer(
                noisy_step, "noisy_step", grads.clone(), clip, sigma, expected_size, torch.Generator().manual_seed(3)
            ),
            "noisy_step",
        )
        if not torch.equal(got, again):
            fail(
                "two calls with generators seeded alike gave different noise: draw the noise from `generator` "
                "(torch.normal(..., generator=generator)), so that a seed reproduces the step."
            )
        noise = (got - clean) * expected_size  # what was added to the sum of clipped gradients
        std, mean = noise.std().item(), noise.mean().item()
        want = sigma * clip
        if abs(mean) > 0.05 * want:
            fail(f"the added noise has mean {mean:.3g}; it must be centred (N(0, (σC)²)).")
        if abs(std / want - 1) < 0.03:
            continue
        if abs(std / sigma - 1) < 0.03:
            fail(f"the noise std is σ = {sigma:g}, not σ·C = {want:g}: the noise must scale with the clipping norm C.")
        if abs(std / (want * math.sqrt(len(grads))) - 1) < 0.05:
            fail(
                "the noise std grows with the batch: add the noise once, to the sum of clipped gradients, not to "
                "every example."
            )
        if abs(std / (want / expected_size) - 1) < 0.03:
            fail(
                "the noise is too small by the expected batch size: add N(0, (σC)²) to the SUM of clipped "
                "gradients, then divide the noisy sum by qN."
            )
        if std < 1e-12:
            fail("no noise was added: draw N(0, (σC)²) for every coordinate and add it to the sum.")
        fail(
            f"the added noise has std {std:.4g} per coordinate; it must be σ·C = {want:.4g} (before dividing "
            f"by the expected batch size)."
        )


# ------------------------------------------------------------------------ 2. the accountant (notebooks 02, 03)
def check_sigma_for_epsilon(sigma_for_epsilon: Callable, hidden: bool = False) -> None:
    """sigma_for_epsilon(epsilon, delta, sample_rate, steps, accountant) -> the smallest sigma spending <= epsilon."""
    from distildp.dp import calibration, privacy

    cases = [(2.0, 1e-4, 0.25, 12, "rdp")]
    if hidden:
        cases += [(0.5, 1e-5, 0.01, 200, "rdp"), (8.0, 1e-4, 0.1, 50, "rdp")]  # PRV is checked alike, more slowly
        inf = call_answer(sigma_for_epsilon, "sigma_for_epsilon", math.inf, 1e-4, 0.25, 12, "rdp")
        if inf != 0:
            fail(f"sigma_for_epsilon(inf, ...) returned {inf!r}: an infinite budget needs no noise, return 0.0.")
    for epsilon, delta, q, steps, accountant in cases:
        sigma = float(call_answer(sigma_for_epsilon, "sigma_for_epsilon", epsilon, delta, q, steps, accountant))
        best = calibration.calibrate_noise(epsilon, delta, q, steps, accountant)
        if not sigma > 0:
            fail(f"sigma_for_epsilon({epsilon}, ...) returned {sigma}: a finite budget needs noise (sigma > 0).")
        spent = privacy.epsilon_spent([privacy.DPSGDMechanism(sigma, q, steps)], delta, accountant)
        if spent > epsilon * (1 + 1e-9):
            fail(
                f"sigma = {sigma:.4g} spends epsilon = {spent:.4g} > the target {epsilon} (q = {q}, T = {steps}, "
                f"delta = {delta:g}, {accountant}): search for a sigma whose epsilon_spent is at most the target, "
                f"and return the upper end of your bracket, never the lower."
            )
        if sigma > best * 1.02:
            fail(
                f"sigma = {sigma:.4g} is safe but wasteful: sigma = {best:.4g} already spends at most {epsilon} "
                f"(q = {q}, T = {steps}, {accountant}). Narrow the search until sigma is within 1%."
            )


def check_composed_epsilon(composed_epsilon: Callable, hidden: bool = False) -> None:
    """composed_epsilon(teacher_sigma, sample_rate, steps, histogram_sigma, delta, accountant) -> one epsilon."""
    from distildp.dp import privacy

    cases = [(1.88, 0.25, 12, 24.0, 1e-4, "rdp")]
    if hidden:
        cases += [
            (1.2, 0.1, 30, 10.0, 1e-5, "rdp"),
            (1.88, 0.25, 12, 24.0, 1e-4, "prv"),
            (0.9, 0.05, 100, 3.0, 1e-5, "rdp"),
        ]
    for sigma_t, q, steps, sigma_h, delta, accountant in cases:
        teacher, histogram = privacy.DPSGDMechanism(sigma_t, q, steps), privacy.GaussianMechanism(sigma_h)
        got = float(call_answer(composed_epsilon, "composed_epsilon", sigma_t, q, steps, sigma_h, delta, accountant))
        want = privacy.epsilon_spent([teacher, histogram], delta, accountant)
        if math.isclose(got, want, rel_tol=1e-3):
            continue
        alone_t = privacy.epsilon_spent([teacher], delta, accountant)
        alone_h = privacy.epsilon_spent([histogram], delta, accountant)
        if math.isclose(got, alone_t + alone_h, rel_tol=1e-3):
            fail(
                f"you added the two epsilons ({alone_t:.3f} + {alone_h:.3f}): basic composition is valid but "
                f"loose. Compose both mechanisms in ONE accountant: epsilon_spent([teacher, histogram], ...) "
                f"gives {want:.3f}."
            )
        if math.isclose(got, alone_t, rel_tol=1e-3):
            fail(
                "you counted the teacher alone: the histogram reads the private data too, so it is part of the "
                "composition."
            )
        fail(
            f"composed_epsilon = {got:.4g}, expected {want:.4g} (teacher sigma {sigma_t}, q {q}, T {steps}, "
            f"histogram sigma {sigma_h}, delta {delta:g}, {accountant})."
        )


def check_default_delta(default_delta: Callable, hidden: bool = False) -> None:
    """default_delta(n) -> the largest power of ten strictly below 1/n."""
    from distildp.dp import privacy

    ns = [4000] + ([1, 9, 10, 999, 1000, 50_000, 100_000, 123_456] if hidden else [])
    for n in ns:
        got = float(call_answer(default_delta, "default_delta", n))
        want = privacy.resolve_delta(None, n)
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        if math.isclose(got, 1 / n, rel_tol=1e-9):
            fail(
                f"default_delta({n}) = 1/N = {got:.3g}: delta = 1/N allows a mechanism that publishes one whole "
                f"record at random and still meets the definition. delta must be strictly below 1/N."
            )
        if got < want:
            fail(f"default_delta({n}) = {got:.3g} is below 1/N but not the largest power of ten that is ({want:.0e}).")
        fail(
            f"default_delta({n}) = {got:.3g} is not below 1/N = {1 / n:.3g}: for N = 10^k, 10^-k equals 1/N; "
            f"strictly below means 10^-(k+1)."
        )


# ------------------------------------------------------------------------ 3. the DP histogram (notebook 04)
def check_dp_histogram(dp_histogram_by_hand: Callable, hidden: bool = False) -> None:
    """dp_histogram_by_hand(counts, keys, total, noise_multiplier, seed) -> {key: samples}, as
    histogram.dp_histogram."""
    for counts, keys, total, sigma, seed in _histogram_cases(hidden):
        want, _ = histogram.dp_histogram(counts, total, sigma, seed=seed, keys=keys)
        got = call_answer(dp_histogram_by_hand, "dp_histogram_by_hand", dict(counts), list(keys), total, sigma, seed)
        if not isinstance(got, Mapping):
            fail(f"dp_histogram_by_hand must return a dict {{code: samples}}, got {type(got).__name__}.")
        got = {k: int(v) for k, v in got.items()}
        if got != want:
            _explain_histogram(got, counts, keys, total, sigma, seed)
    if hidden:
        _check_no_codes_raise(dp_histogram_by_hand)


def _histogram_cases(hidden: bool) -> list[tuple[dict, list, int, float, int]]:
    """(counts, keys, total, sigma, seed) to check: one dense case; hidden, sparse counts over several seeds, a
    total of 0, a small sigma, and no code at all with noise that falls back to uniform."""
    keys = [(c, f"{s}.0") for c in ("Restaurants", "Hotels", "Beauty") for s in range(1, 6)]
    cases = [({k: 40 + 10 * i for i, k in enumerate(keys)}, 300, 2.0, 0)]
    if hidden:
        sparse = {keys[0]: 120, keys[3]: 7, keys[9]: 60}  # codes that never occur are absent: zeros all the same
        cases += [(sparse, 500, 5.0, s) for s in (1, 2, 3)] + [(sparse, 0, 5.0, 4), (sparse, 101, 0.5, 5)]
        nothing = {}  # no record has any code: with noise below zero everywhere, the release falls back to uniform
        seed = next(
            s
            for s in range(10_000)
            if all(v <= 0 for v in histogram.gaussian_noisy_counts(nothing, 1.0, s, keys[:3]).values())
        )
        cases.append((nothing, 30, 1.0, seed))
    return [(counts, keys[:3] if not counts else keys, total, sigma, seed) for counts, total, sigma, seed in cases]


def _explain_histogram(got: dict, counts: dict, keys: list, total: int, sigma: float, seed: int) -> None:
    """Fail with the mistake a wrong histogram shows: missing codes, negative counts, the wrong sum, no noise, no
    uniform fallback, else the noise drawn differently."""
    missing = [k for k in keys if k not in got]
    if missing:
        fail(
            f"{len(missing)} code(s) are missing from your histogram, e.g. {missing[0]}: release a count for "
            f"EVERY public code, zeros included (the codes that occur in the data would themselves leak)."
        )
    if any(v < 0 for v in got.values()):
        fail("some of your counts are negative: clip the noisy counts at 0 before scaling (post-processing).")
    if sum(got.values()) != total:
        fail(
            f"your counts sum to {sum(got.values())}, not to total = {total}: scale to the total and round by "
            f"largest remainder (histogram.scale_to_total) so that exactly `total` samples are drawn."
        )
    exact = histogram.scale_to_total({k: counts.get(k, 0) for k in keys}, total) if any(counts.values()) else None
    if got == exact:
        fail(
            "your counts are the exact histogram: add N(0, sigma²) noise to every count (the Gaussian "
            "mechanism, sensitivity 1) before clipping and scaling."
        )
    if not any(counts.values()):
        fail(
            "when every noisy count is <= 0 there is nothing to scale: fall back to the uniform histogram "
            "(histogram.uniform_histogram), still post-processing."
        )
    fail(
        f"your histogram differs from histogram.dp_histogram (seed {seed}, sigma {sigma}, total {total}): draw "
        f"the noise as np.random.default_rng(seed).normal(0, sigma, size=len(keys)), in the order of `keys`."
    )


def _check_no_codes_raise(dp_histogram_by_hand: Callable) -> None:
    """With no codes at all (keys = []) the answer must raise ValueError."""
    try:
        call_answer(dp_histogram_by_hand, "dp_histogram_by_hand", {}, [], 10, 1.0, 0)
    except ExerciseError as err:
        if "raised ValueError" in str(err):
            return
    fail(
        "dp_histogram_by_hand with no codes at all (keys = []) must raise ValueError: there is nothing to "
        "release, and a silent empty histogram would hide the mistake."
    )
