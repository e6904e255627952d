"""Noise calibration: the noise that spends a privacy budget, found with the accountant (`distildp.dp.privacy`).

`calibrate_noise` gives one DP-SGD run the smallest noise multiplier that spends at most its epsilon (composed with
releases made before it, if any). `calibrate_composed` shares one budget among several releases of a method (its
`BudgetPart`s: DP-SGD runs and Gaussian histograms): either as one composition in the accountant (the default), or
split into shares of epsilon and delta that add up (the paper's). Both search with `_smallest_passing`: epsilon falls
as the noise grows, so the answer is the smallest noise whose epsilon is at most the target.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from distildp.dp.privacy import (
    DPSGDMechanism,
    GaussianMechanism,
    Mechanism,
    check_accountant,
    check_delta,
    check_epsilon,
    check_sample_rate,
    check_steps,
    epsilon_spent,
)

MIN_NOISE_MULTIPLIER = 0.05  # calibration search range
MAX_NOISE_MULTIPLIER = 1e4
SCHEMES = ("composed", "split")

Point = tuple[float, float]  # (x, eps_of(x)) for a noise multiplier or scale x


# ------------------------------------------------------------------------------------- the search
def _smallest_passing(
    eps_of: Callable[[float], float],
    target: float,
    tolerance: float,
    low: float,
    high: float,
    start: float = 1.0,
    factor: float = 2.0,
) -> float | None:
    """Smallest x in [low, high] with eps_of(x) <= target, for eps_of decreasing in x.

    Brackets by dividing/multiplying `start` by `factor`, then narrows the bracket by interpolating log(eps)
    linearly in log(x) (nearly linear for Gaussian noise), which takes a handful of accountant calls
    instead of a dozen bisections. Returns an evaluated x with target - tolerance <= eps_of(x) <= target
    (or x == low, or a bracket of relative width 1e-6); None when even `high` exceeds the target.
    """

    def eps(x: float) -> float:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # RDP fallback far from the target is expected here
                return eps_of(x)
        except (RuntimeError, ValueError, FloatingPointError, OverflowError):
            return math.inf  # the accountant cannot resolve so little noise: treat as too little

    x = min(max(start, low), high)
    first = (x, eps(x))
    if first[1] <= target:
        good, bad = _divide_until_failing(eps, first, target, tolerance, low, factor)
    else:
        good, bad = _multiply_until_passing(eps, first, target, high, factor)
    if good is None:
        return None
    if bad is None:
        return good[0]
    return _narrow(eps, good, bad, target, tolerance)


def _divide_until_failing(
    eps: Callable[[float], float], good: Point, target: float, tolerance: float, low: float, factor: float
) -> tuple[Point, Point | None]:
    """From a passing point, divide x by `factor` until it fails: (the last that passed, the one that failed), or
    (a passing point within `tolerance` of the target or at `low`, None): nothing left to narrow."""
    while True:
        if target - good[1] <= tolerance or good[0] <= low:
            return good, None
        x = max(good[0] / factor, low)
        point = (x, eps(x))
        if point[1] > target:
            return good, point
        good = point


def _multiply_until_passing(
    eps: Callable[[float], float], bad: Point, target: float, high: float, factor: float
) -> tuple[Point | None, Point]:
    """From a failing point, multiply x by `factor` until it passes: (the one that passed, the last that failed),
    or (None, the point at `high`) when even that fails."""
    while True:
        if bad[0] >= high:
            return None, bad
        x = min(factor * bad[0], high)
        point = (x, eps(x))
        if point[1] <= target:
            return point, bad
        bad = point


def _narrow(eps: Callable[[float], float], good: Point, bad: Point, target: float, tolerance: float) -> float:
    """Shrink the bracket [bad, good] until the passing end is within `tolerance` of the target: each probe
    interpolates log(eps) linearly in log(x) towards the middle of the tolerance band."""
    (good, good_eps), (bad, bad_eps) = good, bad
    aim = target - tolerance / 2
    while target - good_eps > tolerance and good / bad > 1 + 1e-6:
        fraction = 0.5
        if math.isfinite(bad_eps) and good_eps > 0:
            fraction = (math.log(bad_eps) - math.log(aim)) / (math.log(bad_eps) - math.log(good_eps))
            fraction = min(max(fraction, 0.1), 0.9)  # always shrink the bracket by 10% or more
        x = math.exp(math.log(bad) + fraction * (math.log(good) - math.log(bad)))
        x_eps = eps(x)
        if x_eps <= target:
            good, good_eps = x, x_eps
        else:
            bad, bad_eps = x, x_eps
    return good


def _tolerance(target: float, epsilon_tolerance: float) -> float:
    # absolute, but at most 1% of the target so small budget shares are met tightly too
    if (
        isinstance(epsilon_tolerance, bool)
        or not isinstance(epsilon_tolerance, numbers.Real)
        or not epsilon_tolerance > 0
    ):
        raise ValueError(f"epsilon_tolerance={epsilon_tolerance!r} must be > 0 (e.g. 0.01).")
    return min(epsilon_tolerance, 0.01 * target)


# ------------------------------------------------------------------------------------- one DP-SGD run
def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    others: Sequence[Mechanism] = (),
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier whose DP-SGD run, composed with `others`, spends <= target_epsilon.

    The reported epsilon is never above the target and (bracketed search) within
    min(epsilon_tolerance, 1% of target) below it. target_epsilon = inf returns 0.0 (no noise).
    Search range: [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER].
    """
    target = check_epsilon(target_epsilon)
    delta, q, steps = check_delta(delta), check_sample_rate(sample_rate), check_steps(steps)
    check_accountant(accountant)
    others = tuple(others)
    if math.isinf(target):
        return 0.0

    def eps_of(sigma: float) -> float:
        return epsilon_spent([*others, DPSGDMechanism(sigma, q, steps)], delta, accountant)

    sigma = _smallest_passing(
        eps_of, target, _tolerance(target, epsilon_tolerance), MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER
    )
    if sigma is None:
        spent_by_others = epsilon_spent(others, delta, accountant)
        raise ValueError(
            f"epsilon {target} at delta {delta:.3g} is unreachable with noise multipliers up to "
            f"{MAX_NOISE_MULTIPLIER:g} (sample_rate {q:.4g}, {steps} steps, {accountant}; the other mechanisms "
            f"alone spend {spent_by_others:.4g}). Use more data (smaller sample_rate), fewer steps, "
            f"or a larger epsilon."
        )
    return sigma


# ------------------------------------------------------------------------------------- a method's releases
@dataclass(frozen=True)
class BudgetPart:
    """One mechanism of a composed method whose noise we choose, and its share of the budget.

    A DP-SGD run has its sample_rate and steps; a Gaussian release (the histogram) is
    `BudgetPart.gaussian(name, share)`: sample_rate 1, `steps` = number of releases.
    """

    name: str
    share: float
    sample_rate: float = 1.0
    steps: int = 1
    kind: str = "dpsgd"  # 'dpsgd' or 'gaussian'

    def __post_init__(self) -> None:
        if isinstance(self.share, bool) or not isinstance(self.share, numbers.Real) or not 0.0 < self.share <= 1.0:
            raise ValueError(f"part {self.name!r}: share={self.share!r} must lie in (0, 1] (a fraction of epsilon).")
        check_sample_rate(self.sample_rate)
        check_steps(self.steps)
        if self.kind not in ("dpsgd", "gaussian"):
            raise ValueError(f"part {self.name!r}: kind={self.kind!r}; use 'dpsgd' or 'gaussian'.")
        if self.kind == "gaussian" and self.sample_rate != 1.0:
            raise ValueError(f"part {self.name!r}: a Gaussian release has sample_rate 1; use kind='dpsgd'.")

    @classmethod
    def gaussian(cls, name: str, share: float, count: int = 1) -> BudgetPart:
        return cls(name, share, 1.0, count, "gaussian")

    def mechanism(self, noise_multiplier: float) -> Mechanism:
        if self.kind == "gaussian":
            return GaussianMechanism(noise_multiplier, self.steps)
        return DPSGDMechanism(noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class ComposedCalibration:
    """Noise chosen for each part of a composed method, and what the composition spends."""

    target_epsilon: float
    delta: float
    accountant: str
    scheme: str
    mechanisms: dict[str, Mechanism]
    epsilon: float  # the whole composition at `delta`, in `accountant` (upper bound)
    part_epsilons: dict[str, float] = field(default_factory=dict)  # each part alone, at part_deltas
    part_deltas: dict[str, float] = field(default_factory=dict)

    def noise_multipliers(self) -> dict[str, float]:
        return {name: m.noise_multiplier for name, m in self.mechanisms.items()}


def calibrate_composed(
    target_epsilon: float,
    delta: float,
    parts: Sequence[BudgetPart],
    accountant: str = "prv",
    scheme: str = "composed",
    epsilon_tolerance: float = 0.01,
) -> ComposedCalibration:
    """Noise multipliers for several mechanisms that together spend `target_epsilon` at `delta`.

    scheme='composed' (default): part i's noise is s * base_i, where base_i alone would spend
      share_i * target at delta; one factor s is then bisected so that the composition, in the one
      accountant, spends the target (<= target, within tolerance). Shares fix the noise RATIOS; since
      composition is sublinear, s < 1 usually, i.e. every part gets less noise than a plain split gives.
    scheme='split' (the paper's): each part alone is calibrated to share_i * target at share_i * delta
      (by basic composition the sum is (target, delta)); the composed epsilon reported is the honest
      one-accountant composition at delta, which is then below the target.
    """
    target = check_epsilon(target_epsilon)
    delta = check_delta(delta)
    check_accountant(accountant)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use 'composed' (default) or 'split' (the paper's).")
    parts = _checked_parts(parts)
    tol = _tolerance(target, epsilon_tolerance)
    if math.isinf(target):
        mechs = {p.name: p.mechanism(0.0) for p in parts}
        infinite, deltas = {p.name: math.inf for p in parts}, {p.name: delta for p in parts}
        return ComposedCalibration(target, delta, accountant, scheme, mechs, math.inf, infinite, deltas)
    if scheme == "split":
        deltas = {p.name: p.share * delta for p in parts}
        noise = {p.name: _calibrate_part(p, p.share * target, deltas[p.name], accountant, tol) for p in parts}
        mechs = {p.name: p.mechanism(noise[p.name]) for p in parts}
    else:
        deltas = {p.name: delta for p in parts}
        mechs = _scaled_together(parts, target, delta, accountant, tol)
    composed = epsilon_spent(list(mechs.values()), delta, accountant)
    alone = {n: epsilon_spent([m], deltas[n], accountant) for n, m in mechs.items()}
    return ComposedCalibration(target, delta, accountant, scheme, mechs, composed, alone, deltas)


def _checked_parts(parts: Sequence[BudgetPart]) -> list[BudgetPart]:
    """The parts as a list: BudgetParts with names of their own, whose shares sum to 1."""
    parts = list(parts)
    if not parts or not all(isinstance(p, BudgetPart) for p in parts):
        raise ValueError("parts must be a non-empty list of BudgetPart(name, share, sample_rate, steps).")
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"part names {names} repeat; give each part its own name.")
    total_share = sum(p.share for p in parts)
    if abs(total_share - 1.0) > 1e-9:
        raise ValueError(f"shares {[p.share for p in parts]} sum to {total_share:.6g}; they must sum to 1.")
    return parts


def _calibrate_part(part: BudgetPart, epsilon: float, delta: float, accountant: str, tolerance: float) -> float:
    """The noise with which `part` alone spends (epsilon, delta); an error names the part."""
    try:
        return calibrate_noise(epsilon, delta, part.sample_rate, part.steps, accountant, epsilon_tolerance=tolerance)
    except ValueError as err:
        raise ValueError(f"part {part.name!r} (share {part.share}): {err}") from None


def _scaled_together(
    parts: list[BudgetPart], target: float, delta: float, accountant: str, tolerance: float
) -> dict[str, Mechanism]:
    """The 'composed' scheme: each part's noise alone at its share of the target, times one common factor s, the
    smallest whose composition spends at most the target."""
    base = {p.name: _calibrate_part(p, p.share * target, delta, accountant, tolerance) for p in parts}

    def eps_of(scale: float) -> float:
        return epsilon_spent([p.mechanism(scale * base[p.name]) for p in parts], delta, accountant)

    low = MIN_NOISE_MULTIPLIER / min(base.values())
    high = MAX_NOISE_MULTIPLIER / max(base.values())
    # s starts at 1 (the bases) and ends near it: small bracket steps avoid costly tiny-noise probes
    scale = _smallest_passing(eps_of, target, tolerance, low, high, start=1.0, factor=1.25)
    if scale is None:
        raise ValueError(
            f"epsilon {target} is unreachable for the composition within noise multipliers "
            f"up to {MAX_NOISE_MULTIPLIER:g}; use more data, fewer steps or a larger epsilon."
        )
    return {p.name: p.mechanism(scale * base[p.name]) for p in parts}
