"""What a release spends: the checks of epsilon, delta and sampling rates, the mechanisms (DP-SGD runs and Gaussian
releases), the accountants, and the privacy records manifests keep. The noise that spends a given budget is
`distildp.dp.calibration`'s; the DP histogram release is `distildp.dp.histogram`.

No training code lives here. Everything privacy-relevant that the suite reports goes through
`epsilon_spent`, which composes a list of mechanisms in ONE accountant:

- 'prv' (default, as the paper): Opacus' PRV accountant (Gopi et al. 2021), its UPPER bound
  (estimate + eps_error), so we never report less epsilon than was spent. A plain Gaussian mechanism
  is the subsampled Gaussian with sample_rate 1: Opacus' PRV formulas reduce exactly to the Gaussian
  privacy loss N(1/(2 sigma^2), 1/sigma^2) at q = 1 (tests check this against dp_accounting's PLD and
  the closed form of Balle & Wang 2018), so one Opacus history holds DP-SGD runs and histograms alike.
- 'rdp': Opacus' RDP accountant over the same history, with orders extended up to 1024 so that
  very noisy Gaussians (small budget shares) are not overcharged.

Adjacency is add/remove-one-record throughout (what Opacus' Poisson sampling analysis assumes).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from distildp.dp import epsilon_cache

ACCOUNTANTS = ("prv", "rdp")
# The PRV upper bound is about eps_error above the true epsilon. Opacus' default eps_error is 0.01
# (absolute). Where that exceeds 0.5% of epsilon (epsilon < 2) we recompute with eps_error = 0.25% of
# epsilon (not below 0.001), so small epsilons are tight too.
PRV_EPS_ERROR = 0.01
PRV_RELATIVE_ERROR = 0.0025
PRV_MIN_EPS_ERROR = 0.001
# A PRV grid beyond this many points would take gigabytes (it happens only for tiny noise, i.e. huge
# epsilon); there we report the RDP epsilon instead, which is also a valid upper bound.
PRV_MAX_GRID = 4_000_000


# ------------------------------------------------------------------------------------- validation
def check_epsilon(epsilon: float, allow_inf: bool = True, name: str = "epsilon") -> float:
    """Epsilon must be > 0; math.inf (non-private) only where allowed."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or math.isnan(epsilon):
        raise ValueError(f"{name}={epsilon!r} is not a number; give a positive float (e.g. 8.0).")
    if epsilon <= 0:
        raise ValueError(f"{name}={epsilon} must be > 0; use e.g. 1, 4 or 8 (math.inf for non-private).")
    if math.isinf(epsilon) and not allow_inf:
        raise ValueError(f"{name}=inf (non-private) makes no sense here; give a finite epsilon.")
    return float(epsilon)


def check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta!r} must lie strictly between 0 and 1; use e.g. resolve_delta(None, N).")
    return float(delta)


def check_sample_rate(sample_rate: float) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) or not 0.0 < sample_rate <= 1.0:
        raise ValueError(
            f"sample_rate={sample_rate!r} must lie in (0, 1]: it is batch_size / dataset_size (1 = full batch)."
        )
    return float(sample_rate)


def check_steps(steps: int, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"{name}={steps!r} must be an integer >= 1 (the number of noisy releases).")
    return int(steps)


def check_noise_multiplier(noise_multiplier: float) -> float:
    """Noise multiplier >= 0; 0 means no noise (non-private, epsilon = inf)."""
    if (
        isinstance(noise_multiplier, bool)
        or not isinstance(noise_multiplier, numbers.Real)
        or not 0.0 <= noise_multiplier < math.inf
    ):
        raise ValueError(
            f"noise_multiplier={noise_multiplier!r} must be a finite number >= 0 (0 = no noise, non-private)."
        )
    return float(noise_multiplier)


def poisson_sample_rate(batch_size: int, dataset_size: int) -> float:
    """The Poisson sampling rate of DP-SGD, batch_size / dataset_size, with clear errors."""
    check_steps(batch_size, "batch_size")
    check_steps(dataset_size, "dataset_size")
    if dataset_size < batch_size:
        raise ValueError(
            f"the dataset ({dataset_size} examples) is smaller than the batch ({batch_size}); "
            "use a smaller batch_size or more data."
        )
    return batch_size / dataset_size


def resolve_delta(delta: float | str | None, n: int, allow_one_over_n: bool = False) -> float:
    """The delta to use for a dataset of n records.

    None -> the largest power of ten strictly below 1/n (10**-d where d = number of digits of n; e.g.
    n = 10,000 -> 1e-5, n = 9,999 -> 1e-4), the common convention (CIFAR-10's 50k -> 1e-5).
    'paper' (or None with allow_one_over_n=True) -> exactly 1/n, as the paper. A float must lie in (0, 1)
    and below 1/n; delta = 1/n needs the named option because delta >= 1/n allows a mechanism that
    publishes one whole record at random and still meets the definition.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n={n!r} must be the number of private records (an integer >= 1).")
    n = int(n)
    if delta == "paper" or (delta is None and allow_one_over_n):
        return check_delta(1.0 / n)
    if delta is None:
        return 10.0 ** -len(str(n))
    if isinstance(delta, str):
        raise ValueError(f"delta={delta!r}: use a float, None (default below 1/N) or 'paper' (1/N).")
    delta = check_delta(delta)
    one_over_n = 1.0 / n
    if delta > one_over_n * (1 + 1e-12) or (delta >= one_over_n * (1 - 1e-12) and not allow_one_over_n):
        raise ValueError(
            f"delta={delta:.3g} >= 1/N = {one_over_n:.3g} (N={n}): such a delta allows releasing a whole record "
            f"at random. Use delta=None (-> {10.0 ** -len(str(n)):.0e}) or a smaller value; delta='paper' (or "
            f"allow_one_over_n=True) reproduces the paper's delta = 1/N exactly."
        )
    return delta


# ------------------------------------------------------------------------------------- mechanisms
@dataclass(frozen=True)
class DPSGDMechanism:
    """`steps` releases of the Poisson-subsampled Gaussian (noise std = noise_multiplier * clip norm)."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        object.__setattr__(self, "steps", check_steps(self.steps))

    @property
    def history(self) -> tuple[float, float, int]:
        """(noise_multiplier, sample_rate, steps): one entry of an Opacus accountant's history."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def describe(self) -> dict[str, Any]:
        return {
            "mechanism": "poisson_subsampled_gaussian",
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "adjacency": "add/remove",
        }


@dataclass(frozen=True)
class GaussianMechanism:
    """`count` releases of a query with L2 sensitivity 1 plus N(0, noise_multiplier^2) noise.

    E.g. the histogram of control codes: adding or removing one record changes one count by 1.
    """

    noise_multiplier: float
    count: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "count", check_steps(self.count, "count"))

    @property
    def history(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, 1.0, self.count)  # the subsampled Gaussian at sample_rate 1

    def describe(self) -> dict[str, Any]:
        return {
            "mechanism": "gaussian",
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": 1.0,
            "count": self.count,
            "adjacency": "add/remove",
        }


Mechanism = DPSGDMechanism | GaussianMechanism


# ------------------------------------------------------------------------------------- accounting
def check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS} ('prv' is the default).")
    return accountant


def _history(mechanisms: Iterable[Mechanism]) -> tuple[tuple[float, float, int], ...]:
    """Merge mechanisms with equal (noise, sample_rate) (composition order does not matter)."""
    steps: dict[tuple[float, float], int] = {}
    for m in mechanisms:
        if not isinstance(m, (DPSGDMechanism, GaussianMechanism)):
            raise ValueError(f"{m!r} is not a mechanism; use DPSGDMechanism(...) or GaussianMechanism(...).")
        sigma, q, t = m.history
        steps[(sigma, q)] = steps.get((sigma, q), 0) + t
    return tuple(sorted((sigma, q, t) for (sigma, q), t in steps.items()))


def rdp_orders() -> list[float]:
    """The RDP orders: Opacus' defaults plus large ones, since a Gaussian with noise sigma is best converted near
    order sigma * sqrt(2 ln(1/delta)), i.e. in the hundreds for a histogram holding 5% of the budget."""
    from opacus.accountants import RDPAccountant  # Opacus is imported when an accountant is needed

    return list(RDPAccountant.DEFAULT_ALPHAS) + [11, 80, 96, 128, 192, 256, 384, 512, 768, 1024]


def _rdp_epsilon(history, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": fine, still an upper bound
        return float(acc.get_epsilon(delta=delta, alphas=rdp_orders()))


def _prv_epsilon(history, delta: float, eps_error: float) -> float:
    """Opacus' PRVAccountant.get_epsilon, step by step with the same domain rule and defaults, so the
    grid size is known before it is allocated (and the RDP domain bound is computed only once)."""
    from opacus.accountants.analysis.prv import (
        Domain,
        PoissonSubsampledGaussianPRV,
        TruncatedPrivacyRandomVariable,
        compose_heterogeneous,
        compute_safe_domain_size,
        discretize,
    )

    delta_error = delta / 1000  # Opacus' default
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    counts = [t for _, _, t in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half_width = compute_safe_domain_size(prvs, counts, eps_error=eps_error, delta_error=delta_error)
    mesh = eps_error / math.sqrt(sum(counts) * math.log(12 / delta_error) / 2)
    if 2 * half_width / mesh > PRV_MAX_GRID:
        warnings.warn(
            "PRV grid too large (noise far too small for any useful epsilon); "
            "reporting the RDP epsilon, also an upper bound.",
            stacklevel=4,
        )
        return _rdp_epsilon(history, delta)
    domain = Domain.create_aligned(-half_width, half_width, mesh)
    # log(1 - q) = -inf at q = 1 is expected in Opacus' formulas (np.where handles it)
    with np.errstate(divide="ignore"):
        dprvs = [discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain) for p in prvs]
        composed = compose_heterogeneous(dprvs, counts)
        _, _, eps_upper = composed.compute_epsilon(delta, delta_error, eps_error)
    return float(eps_upper)  # the upper bound: never report less than was spent


@lru_cache(maxsize=4096)
def _epsilon(history, delta: float, accountant: str, eps_error: float | None) -> float:
    if not history:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in history):
        return math.inf
    inputs = (history, delta, accountant, eps_error)
    return epsilon_cache.cached("distildp.dp.privacy", inputs, lambda: _accountant_epsilon(*inputs))


def _accountant_epsilon(history, delta: float, accountant: str, eps_error: float | None) -> float:
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    if eps_error is not None:
        return _prv_epsilon(history, delta, eps_error)
    coarse = _prv_epsilon(history, delta, PRV_EPS_ERROR)
    if coarse >= 2.0:
        return coarse
    fine_error = max(PRV_MIN_EPS_ERROR, PRV_RELATIVE_ERROR * coarse)
    return min(coarse, _prv_epsilon(history, delta, fine_error))  # both are upper bounds


def epsilon_spent(
    mechanisms: Sequence[Mechanism], delta: float, accountant: str = "prv", eps_error: float | None = None
) -> float:
    """Epsilon (an upper bound) of the composition of `mechanisms` at `delta`, in one accountant.

    No mechanisms -> 0.0; any mechanism without noise -> math.inf. eps_error (PRV only): None picks
    0.01, or max(0.001, 0.25% of epsilon) when epsilon < 2; a number is passed to the PRV accountant as is.
    """
    check_accountant(accountant)
    delta = check_delta(delta)
    if eps_error is not None and not eps_error > 0:
        raise ValueError(f"eps_error={eps_error!r} must be > 0 (or None for the automatic choice).")
    return _epsilon(_history(mechanisms), delta, accountant, None if eps_error is None else float(eps_error))


# ------------------------------------------------------------------------------------- records
def privacy_record(
    mechanisms: Sequence[Mechanism],
    delta: float,
    accountant: str = "prv",
    *,
    target_epsilon: float | None = None,
    max_grad_norm: float | None = None,
    leaks: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The manifest's `privacy` record for everything a method released about the private data.

    `mechanisms`: every DP release (list the model's own DP-SGD run first: its noise, sample rate and
    steps fill the top-level fields; all appear under 'mechanisms'). `leaks`: non-private releases
    (e.g. exact_histogram's record['leak']); any leak makes the method non-private: epsilon = inf, and
    'epsilon_private_parts' keeps what the DP parts alone spent. No mechanisms and no leaks -> epsilon 0.
    """
    mechanisms = list(mechanisms)
    spent = epsilon_spent(mechanisms, delta, accountant)
    main = next((m for m in mechanisms if isinstance(m, DPSGDMechanism)), None)
    leaks = [str(x) for x in leaks]
    record: dict[str, Any] = {
        "epsilon": math.inf if leaks else spent,
        "target_epsilon": target_epsilon,
        "delta": delta,
        "accountant": accountant,
        "noise_multiplier": main.noise_multiplier if main else None,
        "sample_rate": main.sample_rate if main else None,
        "steps": main.steps if main else None,
        "max_grad_norm": max_grad_norm,
        "private": math.isfinite(spent) and not leaks,
        "mechanisms": [m.describe() for m in mechanisms],
        "leaks": leaks,
        "notes": list(notes),
    }
    if accountant == "prv":
        record["notes"].append("PRV upper bound (eps_error 0.01, or 0.25% of epsilon below 2), add/remove adjacency")
    if leaks:
        record["epsilon_private_parts"] = spent
    return record


def public_data_record() -> dict:
    """The privacy record of a model trained on public data only."""
    return {"epsilon": 0.0, "private": True, "notes": ["trained on public data only: no private data used"]}


def nonprivate_record() -> dict:
    """The privacy record of a model trained on private data without DP (or on what such a model wrote)."""
    return {"epsilon": math.inf, "private": False, "notes": []}
