"""The control-code histogram releases: the Gaussian mechanism's noise, post-processing, exact rounding."""

import math

import numpy as np
import pytest

from distildp.dp.histogram import (
    dp_histogram,
    exact_histogram,
    gaussian_noisy_counts,
    scale_to_total,
    uniform_histogram,
)
from distildp.dp.privacy import GaussianMechanism

COUNTS = {("Restaurants", "5.0"): 40, ("Restaurants", "1.0"): 7, ("Shopping", "3.0"): 0}


def test_gaussian_noise_has_the_noise_multiplier_as_std():
    sigma, draws = 3.0, 4000
    rng = np.random.default_rng(0)
    samples = np.array([list(gaussian_noisy_counts(COUNTS, sigma, rng).values()) for _ in range(draws)])
    assert samples.mean(0) == pytest.approx([40, 7, 0], abs=4 * sigma / math.sqrt(draws))
    assert samples.std(0) == pytest.approx([sigma] * 3, rel=0.05)


def test_dp_histogram_is_the_mechanism_then_post_processing():
    counts, record = dp_histogram(COUNTS, 1000, 2.0, seed=3)
    assert counts == scale_to_total(gaussian_noisy_counts(COUNTS, 2.0, 3), 1000)
    assert list(counts) == list(COUNTS)
    assert sum(counts.values()) == 1000 and all(isinstance(c, int) and c >= 0 for c in counts.values())
    assert record["private"] is True
    assert record["mechanism"] == GaussianMechanism(2.0).describe()


def test_dp_histogram_public_keys_include_unseen_codes():
    keys = list(COUNTS) + [("Shopping", "5.0")]
    counts, _ = dp_histogram({k: v for k, v in COUNTS.items() if v}, 300, 1.0, seed=0, keys=keys)
    assert list(counts) == keys and sum(counts.values()) == 300
    with pytest.raises(ValueError, match="outside `keys`"):
        dp_histogram(COUNTS, 10, 1.0, seed=0, keys=keys[:1])


def test_dp_histogram_falls_back_to_uniform_when_nothing_is_positive():
    zeros = {"a": 0, "b": 0, "c": 0}
    seed = next(s for s in range(200) if all(v <= 0 for v in gaussian_noisy_counts(zeros, 1.0, s).values()))
    counts, record = dp_histogram(zeros, 10, 1.0, seed=seed)
    assert counts == uniform_histogram(zeros, 10)[0] == {"a": 4, "b": 3, "c": 3}
    assert record["private"] is True and "uniform" in record["notes"][0]


def test_largest_remainder_rounding_is_exact():
    rng = np.random.default_rng(1)
    for _ in range(200):
        weights = dict(enumerate(rng.exponential(size=rng.integers(1, 12))))
        total = int(rng.integers(0, 500))
        counts = scale_to_total(weights, total)
        exact = np.array(list(weights.values())) / sum(weights.values()) * total
        assert sum(counts.values()) == total
        assert np.all(np.abs(np.array(list(counts.values())) - exact) < 1)


def test_exact_and_uniform_histograms():
    counts, record = exact_histogram(COUNTS, 94)
    assert counts == {("Restaurants", "5.0"): 80, ("Restaurants", "1.0"): 14, ("Shopping", "3.0"): 0}
    assert record["private"] is False and "not differentially private" in record["leak"]
    counts, record = uniform_histogram(["x", "y"], 5)
    assert counts == {"x": 3, "y": 2} and record["private"] is True and record["mechanism"] is None


def test_histogram_errors():
    with pytest.raises(ValueError, match="exact_histogram"):
        dp_histogram(COUNTS, 10, 0.0, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        dp_histogram({"a": -1}, 10, 1.0, seed=0)
    with pytest.raises(ValueError, match="total"):
        dp_histogram(COUNTS, -5, 1.0, seed=0)
    with pytest.raises(ValueError, match="at least one key"):
        dp_histogram({}, 10, 1.0, seed=0)
    with pytest.raises(ValueError, match="empty"):
        exact_histogram({"a": 0}, 10)
