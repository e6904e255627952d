"""distildp.dp.privacy and distildp.dp.calibration against independent references: dp_accounting (PLD and RDP),
Opacus' own accountants stepped by hand, and the closed-form epsilon of the Gaussian mechanism."""

import json
import math
import subprocess
import sys

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from distildp.dp.calibration import BudgetPart, calibrate_composed, calibrate_noise
from distildp.dp.histogram import exact_histogram
from distildp.dp.privacy import (
    PRV_EPS_ERROR,
    DPSGDMechanism,
    GaussianMechanism,
    epsilon_spent,
    poisson_sample_rate,
    privacy_record,
    resolve_delta,
)

DELTA = 1e-5


# ---------------------------------------------------------------------------- references
def gaussian_epsilon_exact(sigma: float, delta: float) -> float:
    """Closed form for one Gaussian release, sensitivity 1 (Balle & Wang 2018, Theorem 8)."""

    def delta_at(eps):
        return norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma)

    return brentq(lambda e: delta_at(e) - delta, 0.0, 200.0)


def _event(sigma, q):
    gauss = dp_accounting.GaussianDpEvent(sigma)
    return gauss if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gauss)


def pld_epsilon(history, delta, interval=1e-3):
    """dp_accounting's PLD (pessimistic discretisation: an upper bound, tight to ~interval * steps)."""
    acc = PLDAccountant(value_discretization_interval=interval)
    for sigma, q, steps in history:
        acc.compose(_event(sigma, q), steps)
    return acc.get_epsilon(delta)


def rdp_epsilon(history, delta):
    acc = RdpAccountant()
    for sigma, q, steps in history:
        acc.compose(_event(sigma, q), steps)
    return acc.get_epsilon(delta)


# ---------------------------------------------------------------------------- epsilon_spent
@pytest.mark.parametrize("sigma", [0.7, 2.0, 10.0])
def test_gaussian_mechanism_prv_matches_closed_form_and_pld(sigma):
    # Opacus' PRV at sample_rate 1 is the plain Gaussian: its upper bound sits just above the truth
    exact = gaussian_epsilon_exact(sigma, DELTA)
    prv = epsilon_spent([GaussianMechanism(sigma)], DELTA, "prv")
    assert exact <= prv == pytest.approx(exact, rel=0.01)
    assert pld_epsilon([(sigma, 1.0, 1)], DELTA, 1e-4) == pytest.approx(exact, abs=1e-3)
    rdp = epsilon_spent([GaussianMechanism(sigma)], DELTA, "rdp")
    assert rdp >= exact
    assert rdp == pytest.approx(rdp_epsilon([(sigma, 1.0, 1)], DELTA), rel=0.01)


def test_gaussian_count_is_self_composition():
    composed = epsilon_spent([GaussianMechanism(3.0, count=4)], DELTA)
    # 4 Gaussians of std 3 = one Gaussian of std 3/2 (sensitivities add in quadrature)
    assert composed == pytest.approx(epsilon_spent([GaussianMechanism(1.5)], DELTA), abs=2 * PRV_EPS_ERROR)
    assert composed >= gaussian_epsilon_exact(1.5, DELTA)


def test_prv_equals_opacus_prv_accountant_stepped_by_hand():
    runs = [(1.1, 0.05, 20), (0.9, 0.1, 10)]
    opacus = PRVAccountant()
    for sigma, q, steps in runs:
        for _ in range(steps):
            opacus.step(noise_multiplier=sigma, sample_rate=q)
    mechanisms = [DPSGDMechanism(*run) for run in runs]
    for eps_error in (0.01, 0.005):
        ours = epsilon_spent(mechanisms, DELTA, "prv", eps_error=eps_error)
        assert ours == pytest.approx(opacus.get_epsilon(DELTA, eps_error=eps_error), rel=1e-9)
    # automatic error: 0.01 at epsilon >= 2, the finer bound below
    assert epsilon_spent(mechanisms, DELTA) == epsilon_spent(mechanisms, DELTA, eps_error=0.01)
    small = [GaussianMechanism(6.0)]
    coarse = epsilon_spent(small, DELTA, eps_error=0.01)
    assert coarse < 2
    assert epsilon_spent(small, DELTA) == min(coarse, epsilon_spent(small, DELTA, eps_error=0.0025 * coarse))
    assert epsilon_spent(small, DELTA) < coarse


def test_rdp_equals_opacus_rdp_accountant_within_orders():
    runs = [(1.1, 0.05, 40), (0.9, 0.1, 25)]
    opacus = RDPAccountant()
    for sigma, q, steps in runs:
        for _ in range(steps):
            opacus.step(noise_multiplier=sigma, sample_rate=q)
    ours = epsilon_spent([DPSGDMechanism(*run) for run in runs], DELTA, "rdp")
    # we search more orders than Opacus' default: never worse, and close here
    assert ours <= opacus.get_epsilon(DELTA) + 1e-12
    assert ours == pytest.approx(opacus.get_epsilon(DELTA), rel=0.01)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_composition_of_two_runs_is_the_accountants_own_and_below_the_sum(accountant):
    teacher, student = DPSGDMechanism(1.0, 0.05, 60), DPSGDMechanism(1.3, 0.1, 30)
    composed = epsilon_spent([teacher, student], DELTA, accountant)
    reference = (pld_epsilon if accountant == "prv" else rdp_epsilon)([teacher.history, student.history], DELTA)
    assert composed == pytest.approx(reference, rel=0.01)
    separate = epsilon_spent([teacher], DELTA, accountant) + epsilon_spent([student], DELTA, accountant)
    assert composed < separate
    assert composed > max(epsilon_spent([teacher], DELTA, accountant), epsilon_spent([student], DELTA, accountant))
    # order does not matter; two equal runs are one run of twice the steps
    assert epsilon_spent([student, teacher], DELTA, accountant) == composed
    assert epsilon_spent([student, student], DELTA, accountant) == pytest.approx(
        epsilon_spent([DPSGDMechanism(1.3, 0.1, 60)], DELTA, accountant), rel=1e-12
    )


def test_epsilon_spent_edge_cases():
    assert epsilon_spent([], DELTA) == 0.0
    assert epsilon_spent([DPSGDMechanism(0.0, 0.1, 10)], DELTA) == math.inf
    with pytest.raises(ValueError, match="unknown accountant 'gdp'"):
        epsilon_spent([GaussianMechanism(1.0)], DELTA, "gdp")
    with pytest.raises(ValueError, match="not a mechanism"):
        epsilon_spent([(1.0, 0.1, 10)], DELTA)
    with pytest.raises(ValueError, match="delta"):
        epsilon_spent([GaussianMechanism(1.0)], 0.0)


def test_huge_prv_grid_falls_back_to_rdp_upper_bound():
    # A PRV grid beyond PRV_MAX_GRID points would take gigabytes; the RDP epsilon (also an upper bound) is
    # reported instead. An eps_error this fine asks for such a grid at once, so the case is cheap.
    mechanism = DPSGDMechanism(0.7, 0.2, 20)
    with pytest.warns(UserWarning, match="RDP"):
        eps = epsilon_spent([mechanism], DELTA, "prv", eps_error=1e-5)
    assert eps == epsilon_spent([mechanism], DELTA, "rdp")
    assert eps > epsilon_spent([mechanism], DELTA, "prv")  # where the grid fits, PRV is the tighter bound


# ---------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("target, q, steps", [(2.0, 0.05, 50), (8.0, 0.1, 30), (1.0, 1.0, 1)])
def test_calibrate_noise_hits_target_and_agrees_with_dp_accounting(accountant, target, q, steps):
    sigma = calibrate_noise(target, DELTA, q, steps, accountant)
    spent = epsilon_spent([DPSGDMechanism(sigma, q, steps)], DELTA, accountant)
    assert target - min(0.01, 0.01 * target) <= spent <= target
    reference = pld_epsilon if accountant == "prv" else rdp_epsilon
    assert reference([(sigma, q, steps)], DELTA) == pytest.approx(spent, rel=0.01)
    # and the noise is not wastefully large: 3% less noise overspends by the reference
    assert reference([(0.97 * sigma, q, steps)], DELTA) > target


@pytest.mark.slow
@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibrated_sigma_matches_dp_accounting_calibration_at_paper_scale(accountant):
    """sigma for epsilon 2, q = 0.01, 1000 steps vs dp_accounting's own calibration (~40 s for PLD)."""
    target, q, steps = 2.0, 0.01, 1000

    def make_accountant():
        return PLDAccountant(value_discretization_interval=1e-4) if accountant == "prv" else RdpAccountant()

    reference = dp_accounting.calibrate_dp_mechanism(
        make_accountant,
        lambda s: dp_accounting.SelfComposedDpEvent(_event(s, q), steps),
        target,
        DELTA,
        dp_accounting.ExplicitBracketInterval(0.3, 5.0),
        tol=1e-4,
    )
    assert calibrate_noise(target, DELTA, q, steps, accountant) == pytest.approx(reference, rel=0.01)


def test_calibrate_noise_composes_with_others():
    histogram = GaussianMechanism(8.0)
    sigma = calibrate_noise(3.0, DELTA, 0.05, 50, others=[histogram])
    spent = epsilon_spent([histogram, DPSGDMechanism(sigma, 0.05, 50)], DELTA)
    assert 2.99 <= spent <= 3.0
    assert sigma > calibrate_noise(3.0, DELTA, 0.05, 50)  # the histogram's cost needs more noise


def test_calibrate_noise_non_private_and_errors():
    assert calibrate_noise(math.inf, DELTA, 0.1, 10) == 0.0
    with pytest.raises(ValueError, match="unreachable.*more data.*fewer steps.*larger epsilon"):
        calibrate_noise(1e-4, DELTA, 1.0, 1)
    with pytest.raises(ValueError, match="epsilon=0"):
        calibrate_noise(0, DELTA, 0.1, 10)
    with pytest.raises(ValueError, match="epsilon=-1"):
        calibrate_noise(-1, DELTA, 0.1, 10)
    with pytest.raises(ValueError, match="sample_rate"):
        calibrate_noise(1.0, DELTA, 0.0, 10)
    with pytest.raises(ValueError, match="steps"):
        calibrate_noise(1.0, DELTA, 0.1, 0)
    with pytest.raises(ValueError, match="unknown accountant"):
        calibrate_noise(1.0, DELTA, 0.1, 10, accountant="moments")


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibrate_composed_hits_the_target_in_one_accountant(accountant):
    parts = [BudgetPart("teacher", 0.5, 0.1, 20), BudgetPart("student", 0.5, 0.05, 15)]
    result = calibrate_composed(4.0, DELTA, parts, accountant)
    mechs = list(result.mechanisms.values())
    assert result.epsilon == epsilon_spent(mechs, DELTA, accountant)
    assert 3.99 <= result.epsilon <= 4.0
    reference = pld_epsilon if accountant == "prv" else rdp_epsilon
    assert reference([m.history for m in mechs], DELTA) == pytest.approx(4.0, rel=0.01)
    # noise ratios are those of the parts calibrated alone to their shares
    alone = {
        p.name: calibrate_noise(2.0, DELTA, p.sample_rate, p.steps, accountant, epsilon_tolerance=0.01) for p in parts
    }
    sigmas = result.noise_multipliers()
    assert sigmas["teacher"] / sigmas["student"] == pytest.approx(alone["teacher"] / alone["student"], rel=1e-9)
    # composing in one accountant beats the plain split: every part gets less noise
    split = calibrate_composed(4.0, DELTA, parts, accountant, scheme="split")
    assert all(sigmas[name] < s for name, s in split.noise_multipliers().items())


def test_split_scheme_is_the_papers_and_reports_the_honest_total():
    parts = [BudgetPart("teacher", 0.95, 0.1, 30), BudgetPart.gaussian("histogram", 0.05)]
    result = calibrate_composed(4.0, DELTA, parts, "prv", scheme="split")
    assert result.part_deltas == pytest.approx({"teacher": 0.95 * DELTA, "histogram": 0.05 * DELTA})
    for part in parts:
        alone = result.part_epsilons[part.name]
        assert part.share * 4.0 - 0.01 <= alone <= part.share * 4.0
    assert result.epsilon == epsilon_spent(list(result.mechanisms.values()), DELTA)
    assert result.epsilon < 4.0
    # the histogram's noise is its share of the budget: check with the closed form of the Gaussian
    hist = result.mechanisms["histogram"]
    assert isinstance(hist, GaussianMechanism)
    exact = gaussian_epsilon_exact(hist.noise_multiplier, 0.05 * DELTA)
    assert exact <= 0.2
    assert exact == pytest.approx(0.2, rel=0.02)


def test_calibrate_composed_errors():
    ok = [BudgetPart("a", 0.5, 0.1, 10), BudgetPart("b", 0.5, 0.1, 10)]
    with pytest.raises(ValueError, match="sum to 1"):
        calibrate_composed(4.0, DELTA, [BudgetPart("a", 0.5, 0.1, 10), BudgetPart("b", 0.4, 0.1, 10)])
    with pytest.raises(ValueError, match="repeat"):
        calibrate_composed(4.0, DELTA, [BudgetPart("a", 0.5, 0.1, 10), BudgetPart("a", 0.5, 0.1, 10)])
    with pytest.raises(ValueError, match="unknown scheme"):
        calibrate_composed(4.0, DELTA, ok, scheme="halves")
    with pytest.raises(ValueError, match="non-empty"):
        calibrate_composed(4.0, DELTA, [])
    with pytest.raises(ValueError, match="share"):
        BudgetPart("a", 0.0, 0.1, 10)
    with pytest.raises(ValueError, match="sample_rate 1"):
        BudgetPart("h", 0.1, 0.5, 1, kind="gaussian")
    with pytest.raises(ValueError, match="part 'b'.*unreachable"):
        calibrate_composed(
            1.0, DELTA, [BudgetPart("a", 0.9999, 0.1, 10), BudgetPart.gaussian("b", 0.0001)], "rdp", scheme="split"
        )
    free = calibrate_composed(math.inf, DELTA, ok)
    assert free.epsilon == math.inf and free.noise_multipliers() == {"a": 0.0, "b": 0.0}


# ---------------------------------------------------------------------------- delta and validation
def test_resolve_delta_defaults_and_paper_option():
    assert resolve_delta(None, 10_000) == 1e-5
    assert resolve_delta(None, 9_999) == 1e-4
    assert resolve_delta(None, 50_000) == 1e-5
    for n in (1, 7, 10, 123, 10**6):
        assert resolve_delta(None, n) < 1 / n
    assert resolve_delta("paper", 500) == 1 / 500
    assert resolve_delta(None, 500, allow_one_over_n=True) == 1 / 500
    assert resolve_delta(1 / 500, 500, allow_one_over_n=True) == 1 / 500
    assert resolve_delta(1e-6, 500) == 1e-6


@pytest.mark.parametrize(
    "delta, n, message",
    [
        (0.0, 100, "between 0 and 1"),
        (1.0, 100, "between 0 and 1"),
        (-0.1, 100, "between 0 and 1"),
        (1 / 100, 100, "whole record.*'paper'"),
        (0.05, 100, "whole record"),
        ("half", 100, "'paper'"),
        (None, 0, "number of private records"),
        (None, 2.5, "number of private records"),
    ],
)
def test_resolve_delta_errors(delta, n, message):
    with pytest.raises(ValueError, match=message):
        resolve_delta(delta, n)


def test_delta_above_one_over_n_is_refused_even_with_the_paper_option():
    with pytest.raises(ValueError, match="whole record"):
        resolve_delta(0.02, 100, allow_one_over_n=True)


def test_mechanism_validation():
    # (noise_multiplier, sample_rate, steps)
    for bad in [
        (-1.0, 0.1, 1),
        (math.inf, 0.1, 1),
        (1.0, 0.0, 1),
        (1.0, 1.5, 1),
        (1.0, 0.1, 0),
        (1.0, 0.1, 2.5),
        (1.0, 0.1, True),
    ]:
        with pytest.raises(ValueError):
            DPSGDMechanism(*bad)
    with pytest.raises(ValueError, match="count"):
        GaussianMechanism(1.0, count=0)
    assert DPSGDMechanism(1, 1, 3).history == (1.0, 1.0, 3)  # ints accepted, full batch allowed
    with pytest.raises(AttributeError):
        DPSGDMechanism(1.0, 0.1, 3).steps = 4  # frozen


def test_poisson_sample_rate():
    assert poisson_sample_rate(16, 1000) == 0.016
    with pytest.raises(ValueError, match="smaller than the batch.*more data"):
        poisson_sample_rate(64, 10)
    with pytest.raises(ValueError, match="batch_size"):
        poisson_sample_rate(0, 10)


# ---------------------------------------------------------------------------- records
def test_privacy_record():
    COUNTS = {("Restaurants", "5.0"): 40, ("Restaurants", "1.0"): 7}
    run, hist = DPSGDMechanism(1.0, 0.05, 50), GaussianMechanism(10.0)
    record = privacy_record([run, hist], DELTA, target_epsilon=3.0, max_grad_norm=1.0)
    for key in (
        "epsilon",
        "target_epsilon",
        "delta",
        "accountant",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "max_grad_norm",
        "private",
        "notes",
    ):
        assert key in record
    assert record["epsilon"] == epsilon_spent([run, hist], DELTA)
    assert (record["noise_multiplier"], record["sample_rate"], record["steps"]) == (1.0, 0.05, 50)
    assert record["private"] is True and len(record["mechanisms"]) == 2
    json.dumps(record)

    leaky = privacy_record([run], DELTA, leaks=[exact_histogram(COUNTS, 10)[1]["leak"]])
    assert leaky["private"] is False and leaky["epsilon"] == math.inf
    assert leaky["epsilon_private_parts"] == epsilon_spent([run], DELTA)

    public = privacy_record([DPSGDMechanism(0.0, 0.05, 50)], DELTA, target_epsilon=math.inf)
    assert public["private"] is False and public["epsilon"] == math.inf


def test_epsilons_are_cached_on_disk_per_inputs_and_opacus_version(tmp_path, monkeypatch):
    from distildp.dp import epsilon_cache

    calls = []

    def compute():
        calls.append(1)
        return 1.25

    try:
        epsilon_cache.use_directory(None)
        assert epsilon_cache.cached("k", ((1.0, 0.1, 3),), compute) == 1.25 and len(calls) == 1  # no directory
        epsilon_cache.use_directory(tmp_path / "acc")
        for _ in range(2):
            assert epsilon_cache.cached("k", ((1.0, 0.1, 3),), compute) == 1.25
        assert len(calls) == 2 and len(list((tmp_path / "acc").glob("*.json"))) == 1  # computed once more, then read
        epsilon_cache.cached("k", ((1.0, 0.1, 4),), compute)  # other inputs: computed
        monkeypatch.setattr(epsilon_cache, "version", lambda name: "0.0-other")
        epsilon_cache.cached("k", ((1.0, 0.1, 3),), compute)  # another Opacus: computed again
        assert len(calls) == 4
        assert epsilon_cache.cached("k", ((1.0, 0.1, 5),), lambda: math.inf) == math.inf
        assert epsilon_cache.cached("k", ((1.0, 0.1, 5),), compute) == math.inf  # read back from the file
        blocked = tmp_path / "file"
        blocked.write_text("")
        epsilon_cache.use_directory(blocked / "acc")  # cannot be created: computed, not cached, no error
        assert epsilon_cache.cached("k", ((2.0, 0.1, 3),), compute) == 1.25
        epsilon_cache.use_directory(None)
        with epsilon_cache.directory(tmp_path / "block"):  # for the length of a block, as Pipeline's stages run
            epsilon_cache.cached("k", ((3.0, 0.1, 3),), compute)
        assert len(list((tmp_path / "block").glob("*.json"))) == 1
        epsilon_cache.cached("k", ((4.0, 0.1, 3),), compute)  # the block's directory is not kept after it
        assert len(list((tmp_path / "block").glob("*.json"))) == 1
    finally:
        epsilon_cache.use_directory(None)


def test_an_epsilon_is_stored_as_computed_and_another_process_reads_it(tmp_path):
    from distildp.dp import epsilon_cache

    mechanisms = "[DPSGDMechanism(1.3, 0.05, 41)]"  # a history no other test computes in this process
    code = (
        "from distildp.dp import epsilon_cache; from distildp.dp.privacy import DPSGDMechanism, epsilon_spent; "
        f"epsilon_cache.use_directory({str(tmp_path)!r}); print(repr(epsilon_spent({mechanisms}, 1e-5)))"
    )
    try:
        epsilon_cache.use_directory(tmp_path)
        computed = epsilon_spent(eval(mechanisms), 1e-5)  # computed here, and stored
    finally:
        epsilon_cache.use_directory(None)
    (path,) = tmp_path.glob("*.json")
    stored = json.loads(path.read_text())
    assert stored["epsilon"] == computed and stored["kind"] == "distildp.dp.privacy"
    path.write_text(json.dumps({**stored, "epsilon": 123.0}))  # a value no accountant gives: only a read returns it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == 123.0  # another process reads the store's value instead of computing
