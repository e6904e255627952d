"""Empirical privacy audit, part 2: membership inference and the empirical epsilon lower bound.

    attack_scores(model, tok, texts, reference=...)   one score per document, higher = "was trained on"
        the loss attack (Yeom et al. 2018): minus the model's mean per-token loss;
        the reference-model attack: the reference model's loss minus the target's, so documents that are simply
        easy (low loss under any model) stop looking like members; the reference is a model that never saw the
        private data (the pretrained public model, or one trained on held-out data)
    roc_metrics(member_scores, nonmember_scores)      ROC AUC and TPR at 0.1% and 1% FPR (scikit-learn's curve),
                                                      with stratified bootstrap confidence intervals
    epsilon_lower_bound(member_scores, nonmember_scores, delta)
        the standard auditing bound (Jagielski et al. 2020; Nasr et al. 2021): a threshold attack on an
        (epsilon, delta)-DP model has TPR <= e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR) + delta, so Clopper-
        Pearson bounds on TPR and FPR give epsilon >= log((TPR_low - delta) / FPR_high) (and the mirrored form) at
        the stated confidence. The threshold is chosen on one part of the scores and the bound computed on the
        rest, so choosing it does not inflate the bound.
    check_lower_bound(bound, accounted_epsilon)       PrivacyBugError when a lower bound exceeds the accounted
                                                      epsilon: the model leaks more than its guarantee allows

Members and non-members come from `distildp.audit.provenance.training_set` (private train versus the held-out splits).
A caveat of this bound for models trained on whole datasets: it audits membership of *documents drawn from the
same distribution*, not worst-case neighbouring datasets, so it is a loose lower bound (far below the accounted
epsilon); the canaries of `distildp.audit.exposure` are the stronger test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import special
from sklearn.metrics import roc_auc_score, roc_curve

from distildp.audit.exposure import sequence_losses
from distildp.audit.provenance import AuditError

FPR_TARGETS = (0.001, 0.01)


class PrivacyBugError(AssertionError):
    """An empirical lower bound on epsilon exceeds the accounted epsilon: the privacy guarantee does not hold."""


# ---------------------------------------------------------------------------------------------- attacks
def attack_scores(
    model,
    tokenizer,
    texts: Sequence[str],
    prefixes: Sequence[str] | None = None,
    reference=None,
    reference_tokenizer=None,
    reference_prefixes: Sequence[str] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Membership scores of `texts` (higher = more likely a training document): the loss attack, or with a
    `reference` model the reference attack. The reference may use its own tokenizer (default: the target's)."""
    target = sequence_losses(model, tokenizer, texts, prefixes, batch_size)
    if reference is None:
        return loss_attack(target)
    ref = sequence_losses(reference, reference_tokenizer or tokenizer, texts, reference_prefixes, batch_size)
    return reference_attack(target, ref)


def loss_attack(target_losses: np.ndarray) -> np.ndarray:
    """Scores of the loss attack: a lower loss means a likelier member."""
    return -_finite("target_losses", target_losses)


def reference_attack(target_losses: np.ndarray, reference_losses: np.ndarray) -> np.ndarray:
    """Scores of the reference attack: how much lower the target's loss is than the reference model's."""
    target, ref = _finite("target_losses", target_losses), _finite("reference_losses", reference_losses)
    if target.shape != ref.shape:
        raise AuditError(
            f"{target.shape[0]} target losses and {ref.shape[0]} reference losses: score the same "
            f"documents with both models"
        )
    return ref - target


# ---------------------------------------------------------------------------------------------- ROC metrics
@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class RocMetrics:
    """ROC AUC and TPR at fixed FPRs, each with a bootstrap percentile interval at `confidence`.
    `min_fpr` = 1 / n_nonmembers: a target FPR below it means "no false positive at all"."""

    auc: Interval
    tpr_at_fpr: dict[float, Interval]
    n_members: int
    n_nonmembers: int
    confidence: float
    n_bootstrap: int

    @property
    def min_fpr(self) -> float:
        return 1.0 / self.n_nonmembers

    def as_dict(self) -> dict:
        row = {
            "auc": self.auc.estimate,
            "auc_low": self.auc.low,
            "auc_high": self.auc.high,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
            "min_fpr": self.min_fpr,
            "confidence": self.confidence,
        }
        for fpr, tpr in self.tpr_at_fpr.items():
            row.update(
                {f"tpr_at_{fpr:g}": tpr.estimate, f"tpr_at_{fpr:g}_low": tpr.low, f"tpr_at_{fpr:g}_high": tpr.high}
            )
        return row


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The highest TPR of a threshold whose FPR is at most `fpr`, on scikit-learn's ROC curve."""
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(tprs[fprs <= fpr].max())  # roc_curve starts at (0, 0), so the set is never empty


def roc_metrics(
    member_scores,
    nonmember_scores,
    fprs: Sequence[float] = FPR_TARGETS,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> RocMetrics:
    """ROC AUC and TPR at each of `fprs` for scores of members (label 1) against non-members (label 0), with
    percentile intervals from `n_bootstrap` resamples of each group apart (so each keeps its size)."""
    members, nonmembers = _finite("member_scores", member_scores), _finite("nonmember_scores", nonmember_scores)
    _check_confidence(confidence)
    for fpr in fprs:
        if not 0 < fpr < 1:
            raise AuditError(f"target FPR {fpr} must lie in (0, 1), e.g. 0.001 for 0.1%")
    if n_bootstrap < 0:
        raise AuditError(f"n_bootstrap={n_bootstrap} must be >= 0 (0: no intervals)")
    labels = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]

    def point(m: np.ndarray, n: np.ndarray) -> list[float]:
        scores = np.r_[m, n]
        return [float(roc_auc_score(labels, scores))] + [tpr_at_fpr(labels, scores, f) for f in fprs]

    estimate = point(members, nonmembers)
    rng = np.random.default_rng(seed)
    draws = np.array(
        [point(rng.choice(members, members.size), rng.choice(nonmembers, nonmembers.size)) for _ in range(n_bootstrap)]
    ).reshape(n_bootstrap, len(estimate))
    tail = (1 - confidence) / 2 * 100
    low, high = (
        np.percentile(draws, [tail, 100 - tail], axis=0) if n_bootstrap else (np.full(len(estimate), np.nan),) * 2
    )
    intervals = [Interval(e, float(lo), float(hi)) for e, lo, hi in zip(estimate, low, high)]
    return RocMetrics(
        intervals[0], dict(zip(fprs, intervals[1:])), members.size, nonmembers.size, confidence, n_bootstrap
    )


# ---------------------------------------------------------------------------------------------- epsilon bound
def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a binomial proportion: the beta quantiles
    B(alpha/2; k, n - k + 1) and B(1 - alpha/2; k + 1, n - k), with 0 and 1 at the ends."""
    if not (isinstance(trials, (int, np.integer)) and trials >= 1):
        raise AuditError(f"trials={trials!r} must be a positive integer")
    if not (isinstance(successes, (int, np.integer)) and 0 <= successes <= trials):
        raise AuditError(f"successes={successes!r} must be an integer in 0..{trials}")
    _check_confidence(confidence)
    alpha = 1 - confidence
    low = 0.0 if successes == 0 else float(special.betaincinv(successes, trials - successes + 1, alpha / 2))
    high = 1.0 if successes == trials else float(special.betaincinv(successes + 1, trials - successes, 1 - alpha / 2))
    return low, high


@dataclass(frozen=True)
class EpsilonLowerBound:
    """An empirical lower bound on epsilon from one threshold attack, at `confidence` (each rate's Clopper-Pearson
    interval is two-sided at that level, as in Jagielski et al. 2020). 0 when the attack shows nothing."""

    epsilon: float
    threshold: float
    true_positives: int
    n_members: int
    false_positives: int
    n_nonmembers: int
    tpr_low: float
    fpr_high: float
    delta: float
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def epsilon_from_counts(
    true_positives: int,
    n_members: int,
    false_positives: int,
    n_nonmembers: int,
    delta: float,
    confidence: float = 0.95,
    threshold: float = math.nan,
) -> EpsilonLowerBound:
    """The bound for an attack that flagged `true_positives` of `n_members` members and `false_positives` of
    `n_nonmembers` non-members: max of log((TPR_low - delta) / FPR_high) and log((TNR_low - delta) / FNR_high)."""
    if not 0 <= delta < 1:
        raise AuditError(f"delta={delta} must lie in [0, 1)")
    tpr_low, tpr_high = clopper_pearson(true_positives, n_members, confidence)
    fpr_low, fpr_high = clopper_pearson(false_positives, n_nonmembers, confidence)
    candidates = [0.0]
    if tpr_low - delta > 0 and fpr_high > 0:
        candidates.append(math.log((tpr_low - delta) / fpr_high))
    if (1 - fpr_high) - delta > 0 and 1 - tpr_low > 0:  # the mirrored test: "non-member" as the flag
        candidates.append(math.log((1 - fpr_high - delta) / (1 - tpr_low)))
    return EpsilonLowerBound(
        max(candidates),
        threshold,
        int(true_positives),
        int(n_members),
        int(false_positives),
        int(n_nonmembers),
        tpr_low,
        fpr_high,
        delta,
        confidence,
    )


def epsilon_lower_bound(
    member_scores,
    nonmember_scores,
    delta: float,
    confidence: float = 0.95,
    selection_fraction: float = 0.5,
    max_thresholds: int = 200,
    seed: int = 0,
) -> EpsilonLowerBound:
    """The epsilon lower bound of the threshold attack "score >= t means member". The threshold t is the one
    with the best bound on a random `selection_fraction` of each group (up to `max_thresholds` quantiles of the
    scores tried); the bound is then computed on the remaining scores, which played no part in choosing t."""
    members, nonmembers = _finite("member_scores", member_scores), _finite("nonmember_scores", nonmember_scores)
    if not 0 < selection_fraction < 1:
        raise AuditError(f"selection_fraction={selection_fraction} must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    m_select, m_eval = _split(members, selection_fraction, rng, "member")
    n_select, n_eval = _split(nonmembers, selection_fraction, rng, "non-member")
    grid = np.unique(np.quantile(np.r_[m_select, n_select], np.linspace(0, 1, max_thresholds)))
    candidates = np.unique(np.r_[grid, (grid[1:] + grid[:-1]) / 2])  # midpoints too: thresholds inside gaps
    bounds = np.array(
        [
            epsilon_from_counts(
                int((m_select >= t).sum()), m_select.size, int((n_select >= t).sum()), n_select.size, delta, confidence
            ).epsilon
            for t in candidates
        ]
    )
    tied = candidates[bounds == bounds.max()]
    best = tied[(tied.size - 1) // 2]  # the middle of the best thresholds: the farthest from both groups' edges
    return epsilon_from_counts(
        int((m_eval >= best).sum()),
        m_eval.size,
        int((n_eval >= best).sum()),
        n_eval.size,
        delta,
        confidence,
        threshold=float(best),
    )


def check_lower_bound(bound: EpsilonLowerBound | float, accounted_epsilon: float, what: str = "the model") -> None:
    """Raise PrivacyBugError when the empirical lower bound exceeds the accounted epsilon: the total the method
    spent (Pipeline.plan(method, epsilon).epsilon, the results row's epsilon_spent), which bounds every model of
    the method; not one artifact's privacy record (a distilled student's says inf: it is post-processing)."""
    lower = bound.epsilon if isinstance(bound, EpsilonLowerBound) else float(bound)
    if not accounted_epsilon >= 0:
        raise AuditError(f"accounted_epsilon={accounted_epsilon} must be >= 0 (math.inf for a non-private model)")
    if lower > accounted_epsilon:
        chance = (
            f"; at confidence {bound.confidence} a correct guarantee gives this with probability at most "
            f"{1 - bound.confidence:.2g}, so rerun the audit with a fresh seed before ruling it a fluke"
            if isinstance(bound, EpsilonLowerBound)
            else ""
        )
        raise PrivacyBugError(
            f"PRIVACY BUG: the empirical lower bound epsilon >= {lower:.4g} for {what} exceeds its "
            f"accounted epsilon {accounted_epsilon:.4g}: it leaks more than its guarantee allows. "
            f"Check the noise calibration, the sampling and the accountant before releasing "
            f"anything{chance}"
        )


def membership_audit(
    member_scores,
    nonmember_scores,
    accounted_epsilon: float,
    delta: float,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
    what: str = "the model",
) -> dict:
    """ROC metrics and the epsilon lower bound side by side with the accounted epsilon, as one row; raises
    PrivacyBugError when the bound exceeds the accounted epsilon."""
    roc = roc_metrics(member_scores, nonmember_scores, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed)
    bound = epsilon_lower_bound(member_scores, nonmember_scores, delta, confidence, seed=seed)
    check_lower_bound(bound, accounted_epsilon, what)
    return {
        **roc.as_dict(),
        "epsilon_lower_bound": bound.epsilon,
        "epsilon_accounted": accounted_epsilon,
        "delta": delta,
        "threshold": bound.threshold,
    }


def _split(scores: np.ndarray, fraction: float, rng: np.random.Generator, what: str) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(scores.size)
    cut = int(round(fraction * scores.size))
    if not 1 <= cut < scores.size:
        raise AuditError(
            f"{scores.size} {what} score(s) cannot be split into a selection and an evaluation part; "
            f"pass at least 2 (hundreds for a useful bound)"
        )
    return scores[order[:cut]], scores[order[cut:]]


def _finite(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise AuditError(f"{name} is empty; pass one score per document")
    if not np.isfinite(array).all():
        raise AuditError(
            f"{name} holds {int((~np.isfinite(array)).sum())} non-finite value(s) (nan or inf); "
            f"score every document with a finite loss"
        )
    return array


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise AuditError(f"confidence={confidence} must lie in (0, 1), e.g. 0.95")
