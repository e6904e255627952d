"""The control-code histogram a synthetic set is sampled by: how many samples each code gets.

Three releases, each returning (counts summing to `total`, the privacy record of the release):
`dp_histogram` (the Gaussian mechanism on the private counts, then post-processing: free), `exact_histogram`
(the paper's option: NOT private, the counts leak) and `uniform_histogram` (no data: free). The Gaussian
mechanism's epsilon is composed with the teacher's DP-SGD in `privacy.epsilon_spent`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from distildp.dp.privacy import GaussianMechanism, check_noise_multiplier

Key = Hashable


def _check_total(total: int) -> int:
    if isinstance(total, bool) or not isinstance(total, numbers.Integral) or total < 0:
        raise ValueError(f"total={total!r} must be a non-negative integer (the synthetic set size).")
    return int(total)


def _check_counts(counts: Mapping[Key, float], keys: Iterable[Key] | None) -> dict[Key, float]:
    if not isinstance(counts, Mapping):
        raise ValueError("counts must be a dict {key: count}.")
    if keys is None:
        keys = list(counts)
    else:
        keys = list(keys)
        unknown = set(counts) - set(keys)
        if unknown:
            raise ValueError(f"counts has keys {sorted(map(str, unknown))} outside `keys`; list every possible key.")
    if not keys:
        raise ValueError("no keys: the histogram needs at least one key (e.g. one control code).")
    out = {}
    for k in keys:
        c = counts.get(k, 0)
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or c < 0 or not math.isfinite(c):
            raise ValueError(f"count for {k!r} is {c!r}; counts must be non-negative numbers.")
        out[k] = float(c)
    return out


def scale_to_total(weights: Mapping[Key, float], total: int) -> dict[Key, int]:
    """Non-negative integers proportional to `weights`, summing exactly to `total` (largest remainder)."""
    total = _check_total(total)
    keys = list(weights)
    w = np.array([max(float(weights[k]), 0.0) for k in keys])
    if w.sum() <= 0:
        raise ValueError("all weights are zero; nothing to scale (use uniform_histogram).")
    exact = w / w.sum() * total
    floors = np.floor(exact).astype(np.int64)
    remainder = total - int(floors.sum())
    # stable sort: ties go to the earlier key, so the result is deterministic
    order = np.argsort(-(exact - floors), kind="stable")
    floors[order[:remainder]] += 1
    return {k: int(c) for k, c in zip(keys, floors)}


def uniform_histogram(keys: Iterable[Key], total: int) -> tuple[dict[Key, int], dict[str, Any]]:
    """`total` split as evenly as possible over `keys`; uses no data, so it is free."""
    keys = list(keys)
    if not keys:
        raise ValueError("no keys: the histogram needs at least one key (e.g. one control code).")
    counts = scale_to_total({k: 1.0 for k in keys}, total)
    return counts, {
        "private": True,
        "release": "uniform histogram",
        "mechanism": None,
        "notes": ["uses no private data: free"],
    }


def exact_histogram(
    counts: Mapping[Key, int], total: int, keys: Iterable[Key] | None = None
) -> tuple[dict[Key, int], dict[str, Any]]:
    """The paper's option: exact counts scaled to `total`. NOT private (the counts leak)."""
    exact = _check_counts(counts, keys)
    if sum(exact.values()) <= 0:
        raise ValueError("all counts are zero: the private data set is empty.")
    return scale_to_total(exact, total), {
        "private": False,
        "release": "exact histogram",
        "mechanism": None,
        "leak": "exact control-code counts (the paper's option): not differentially private",
    }


def gaussian_noisy_counts(
    counts: Mapping[Key, int],
    noise_multiplier: float,
    seed: int | np.random.Generator,
    keys: Iterable[Key] | None = None,
) -> dict[Key, float]:
    """The Gaussian mechanism: each count plus N(0, noise_multiplier^2) (L2 sensitivity 1)."""
    exact = _check_counts(counts, keys)
    sigma = check_noise_multiplier(noise_multiplier)
    if sigma == 0:
        raise ValueError("noise_multiplier=0 releases exact counts; use exact_histogram (not private) instead.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma, size=len(exact))
    return {k: c + float(z) for (k, c), z in zip(exact.items(), noise)}


def dp_histogram(
    counts: Mapping[Key, int],
    total: int,
    noise_multiplier: float,
    seed: int | np.random.Generator,
    keys: Iterable[Key] | None = None,
) -> tuple[dict[Key, int], dict[str, Any]]:
    """DP counts scaled to `total`: Gaussian mechanism, then post-processing (free).

    `keys` must be the PUBLIC set of possible keys (every category x stars), zeros included: keys taken
    from the data would themselves leak which codes occur. Without `keys`, counts' keys are used.
    Post-processing: clip at 0, scale to `total`, round by largest remainder; if no noisy count is
    positive, uniform.
    """
    total = _check_total(total)
    noisy = gaussian_noisy_counts(counts, noise_multiplier, seed, keys)
    record = {
        "private": True,
        "release": "DP histogram",
        "mechanism": GaussianMechanism(noise_multiplier).describe(),
        "notes": [],
    }
    if all(c <= 0 for c in noisy.values()):
        record["notes"].append("every noisy count <= 0: fell back to uniform (post-processing)")
        return uniform_histogram(list(noisy), total)[0], record
    return scale_to_total(noisy, total), record
