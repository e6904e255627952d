"""The empirical privacy audit of a pipeline method: every model it built at one budget, audited against the
private data it saw.

    audit_method(pipe, method, epsilon, seed)   one row per artifact of the method that saw private data
                                                (teacher, synthetic text, student): canary exposure per repeat
                                                count beside the public model's (what tokenization alone gives),
                                                verbatim secrets in synthetic text, the loss and reference
                                                membership attacks (ROC AUC, TPR at low FPR, intervals) and the
                                                empirical epsilon lower bound beside the method's accounted epsilon
    audit_model(target, reference, found, ...)  one model's row: the same, against its training set

The primitives are `distildp.audit.exposure` (exposure), `distildp.audit.mia` (attacks, bound) and
`distildp.audit.provenance` (training sets from manifests). A lower bound above the accounted epsilon raises
`mia.PrivacyBugError`. The rows as tables and figures: `distildp.audit.audit_report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import roc_curve
from tqdm.auto import tqdm

from distildp.audit import mia
from distildp.audit.exposure import (
    DEFAULT_SPACE,
    AuditError,
    SecretSpace,
    canary_exposures,
    secrets_in_texts,
    sequence_losses,
)
from distildp.audit.provenance import DERIVED_STAGES, PRIVATE_STAGES, synthetic_texts, training_set
from distildp.core.methods import COVERS_ALL, METHODS, epsilon_covers
from distildp.pipeline import Pipeline
from distildp.pipeline.public_models import pretrained

ATTACKS = ("loss", "reference")
ROC_POINTS = 200  # points kept of each ROC curve, for the figures


@dataclass(frozen=True)
class AuditConfig:
    """How hard the audit looks. `n_candidates` random candidates per canary fit the tail its exposure is read
    from (Carlini et al. use thousands); `confidence` is that of every interval and of the epsilon bound."""

    n_candidates: int = 2000
    confidence: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0
    batch_size: int = 64
    space: SecretSpace = DEFAULT_SPACE


def accounted_epsilon(pipe: Pipeline, method: str, epsilon: float) -> float:
    """The epsilon every model of `method` is covered by, end to end: the composed total of its releases, and inf
    without DP or when the epsilon does not cover every use of the private data (DP-OPD's non-private teacher: each
    student update reads the private data through it)."""
    if method not in METHODS:
        raise AuditError(f"method={method!r}: the audit covers the methods {METHODS} (each at a budget epsilon)")
    return _spent(pipe, method, epsilon) if _covers(pipe, method) == COVERS_ALL else math.inf


def _spent(pipe: Pipeline, method: str, epsilon: float) -> float:
    """The epsilon `method`'s releases spend together, as its row reports it (inf without DP)."""
    return math.inf if math.isinf(epsilon) else pipe.plan(method, epsilon).epsilon


def _covers(pipe: Pipeline, method: str) -> str:
    return epsilon_covers(method, pipe.settings.opd_teacher)


def audit_method(
    pipe: Pipeline,
    method: str,
    epsilon: float,
    seed: int = 0,
    config: AuditConfig = AuditConfig(),
    progress: bool = True,
) -> list[dict]:
    """Build (or reuse) every artifact of `method` at `epsilon` and audit each model that saw private data; one
    row per artifact, in the order of the data flow (DP-OPD's pretrained teacher, public data only, has none).
    Raises mia.PrivacyBugError when a model's epsilon lower bound exceeds the accounted epsilon, and AuditError
    when the private data holds no canaries (set dataset_options canaries).

    Each row records the epsilon the method reports (`epsilon_spent`), what it covers (`epsilon_covers`) and the
    end-to-end bound the audit holds the models to (`epsilon_accounted`): they differ only for DP-OPD with a
    non-private teacher, whose student's epsilon covers its own updates and whose models are held to inf."""
    accounted = accounted_epsilon(pipe, method, epsilon)
    arts = pipe.artifacts(method, epsilon, seed)
    common = {
        "method": method,
        "epsilon": epsilon,
        "epsilon_spent": _spent(pipe, method, epsilon),
        "epsilon_covers": _covers(pipe, method),
        "epsilon_accounted": accounted,
        "delta": pipe.delta,
        "seed": seed,
    }
    if method == "dpopd":
        common["opd_teacher"] = pipe.settings.opd_teacher
    audited = {name: art for name, art in arts.items() if art.stage in PRIVATE_STAGES + DERIVED_STAGES}
    rows = []
    for name, art in tqdm(audited.items(), desc=f"audit {method} eps={epsilon:g}", disable=not progress):
        found = training_set(art.path)
        row = {
            **common,
            "model": name,
            "stage": art.stage,
            "artifact": f"{art.stage}/{art.key}",
            "test_ppl": art.metrics.get("test_ppl", math.nan),
            "trained_on": found.trained_on,
        }
        if name == "synthetic":
            row.update(_audit_synthetic(found, synthetic_texts(art.path)))
        else:
            role = "teacher" if art.stage == "private_teacher" else "student"
            model, tok = pipe.load_model(art.path)
            public, public_tok = pipe.load_model(pretrained(pipe, role, seed).path)
            row.update(
                audit_model(
                    ScoredModel(model, tok),
                    ScoredModel(public, public_tok),
                    found,
                    role=role,
                    accounted=accounted,
                    delta=pipe.delta,
                    config=config,
                    what=f"{method}'s {name} at epsilon {epsilon:g}",
                )
            )
        rows.append(row)
    return rows


def _audit_synthetic(found, texts: list[str]) -> dict:
    """Verbatim secrets in the synthetic text: a secret that appears there has leaked outright."""
    hits = secrets_in_texts(found.canaries, texts)
    canaries = [
        {
            "secret": c["secret"],
            "repeats": c.get("repeats", len(c["rows"])),
            "texts_with_secret": h["texts_with_secret"],
        }
        for c, h in zip(found.canaries, hits)
    ]
    return {
        "n_texts": len(texts),
        "secrets_reproduced": sum(h["texts_with_secret"] > 0 for h in hits),
        "n_canaries": len(hits),
        "canaries": canaries,
    }


class ScoredModel(NamedTuple):
    """A language model and its tokenizer: what the audit scores documents and secrets with."""

    model: Any
    tok: Any


def audit_model(
    target: ScoredModel,
    reference: ScoredModel,
    found,
    *,
    role: str,
    accounted: float,
    delta: float,
    config: AuditConfig,
    what: str,
) -> dict:
    """`target`'s audit against the training set `found` (provenance.training_set), with `reference` (the public
    model it started from) as the baseline: each canary's exposure beside the reference's, and the membership
    attacks with the epsilon lower bound they give. Raises mia.PrivacyBugError when that bound exceeds
    `accounted`; `what` names the model in that message."""
    with_codes = role == "teacher"  # a teacher was trained behind each row's control codes
    canaries = _canary_rows(target, reference, found, with_codes, config)
    out = {"max_exposure": config.space.max_exposure, "n_canaries": len(canaries), "canaries": canaries, "roc": {}}
    groups = _membership_groups(found, with_codes)
    # each model scores each document once; both attacks are read from the same losses
    target_losses = _losses(target, groups, config.batch_size)
    public_losses = _losses(reference, groups, config.batch_size)
    for attack in ATTACKS:
        scores = [
            mia.loss_attack(t) if attack == "loss" else mia.reference_attack(t, p)
            for t, p in zip(target_losses, public_losses)
        ]
        audit = mia.membership_audit(
            *scores,
            accounted_epsilon=accounted,
            delta=delta,
            confidence=config.confidence,
            n_bootstrap=config.n_bootstrap,
            seed=config.seed,
            what=f"{what} ({attack} attack)",
        )
        out.update({f"{attack}_{k}": v for k, v in audit.items() if k not in ("epsilon_accounted", "delta")})
        out["roc"][attack] = roc_points(*scores)
    out["epsilon_lower_bound"] = max(out[f"{a}_epsilon_lower_bound"] for a in ATTACKS)
    return out


def _canary_rows(
    target: ScoredModel, reference: ScoredModel, found, with_codes: bool, config: AuditConfig
) -> list[dict]:
    """Each canary's exposure under `target` beside the one under `reference` (what tokenization alone gives)."""
    options = {
        "method": "extrapolated",
        "n_samples": config.n_candidates,
        "seed": config.seed,
        "batch_size": config.batch_size,
    }
    exposures = canary_exposures(target.model, target.tok, found, config.space, with_codes=with_codes, **options)
    baseline = canary_exposures(reference.model, reference.tok, found, config.space, with_codes=with_codes, **options)
    return [
        {
            "secret": c["secret"],
            "repeats": c.get("repeats", len(c["rows"])),
            "exposure": e.exposure,
            "public_exposure": b.exposure,
            "rank": e.rank,
        }
        for c, e, b in zip(found.canaries, exposures, baseline)
    ]


def _membership_groups(found, with_codes: bool) -> tuple[tuple[list[str], list[str] | None], ...]:
    """(members, their prefixes) and (non-members, theirs); prefixes only for a teacher (None for a student)."""
    # Rows holding a canary are left out of the members: their unusual sentence (whose format a model may learn
    # from the many such rows, which DP allows) would make them look like members, or unlike them, for that alone.
    with_canary = {r for c in found.canaries for r in c["rows"]}
    kept = [i for i in range(len(found.members)) if i not in with_canary]
    members = [found.members[i] for i in kept]
    member_prefixes = [found.member_prefixes[i] for i in kept] if with_codes else None
    nonmember_prefixes = found.nonmember_prefixes if with_codes else None
    return (members, member_prefixes), (found.nonmembers, nonmember_prefixes)


def _losses(scored: ScoredModel, groups, batch_size: int) -> list:
    """Each group's per-document losses under one model."""
    return [sequence_losses(scored.model, scored.tok, texts, prefixes, batch_size) for texts, prefixes in groups]


def roc_points(member_scores, nonmember_scores, n: int = ROC_POINTS) -> dict:
    """The ROC curve (scikit-learn's) thinned to about `n` points on a log-spaced FPR grid, for plotting."""
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    fpr, tpr, _ = roc_curve(labels, np.r_[member_scores, nonmember_scores])
    grid = np.unique(np.r_[0.0, np.geomspace(1e-4, 1, n)])
    return {"fpr": grid.tolist(), "tpr": np.interp(grid, fpr, tpr).tolist()}
