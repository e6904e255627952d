"""Stage 3: a student trained on the synthetic text, with hard labels or the KD loss, kept at its best step on a
held-out share of that text.

Everything here reads only the synthetic text and the DP teacher: it is post-processing of DP releases and spends
no privacy. Model selection is on synthetic text too, never on the private data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distildp.distill.kd import KDConfig, StudentWithProjection
from distildp.distill.kd_batches import collate_kd, kd_examples, make_kd_loss_fn
from distildp.distill.teacher_cache import (
    attach_teacher_probs,
    attach_teacher_states,
    teacher_probs_bytes,
    teacher_states_bytes,
)
from distildp.dp.public_training import train_kept_at_best
from distildp.lm.evaluate import BestOnHeldOut
from distildp.lm.models import encode_plain
from distildp.lm.training import TrainConfig, TrainReport


@dataclass(frozen=True)
class SyntheticTrainingConfig:
    """How a student trains on synthetic text (`Settings.synthetic_training()` builds it from a profile)."""

    train: TrainConfig  # the student's training run (its seed is the one train_on_synthetic is given)
    kd: KDConfig  # the KD loss, when there is a teacher
    val_fraction: float = 0.05  # synthetic documents held out for model selection
    tolerance: float = 0.0  # see BestOnHeldOut
    teacher_cache_gib: float = 4.0  # the teacher's outputs are cached for the whole set when they fit (teacher_cache)


@dataclass
class SyntheticTraining:
    """What training on synthetic text did: the report, the held-out selection and how the teacher was read."""

    report: TrainReport
    selector: BestOnHeldOut  # its curve, best step and best held-out perplexity
    n_val: int  # synthetic documents held out for selection
    teacher_states: str | None  # None without a teacher; else whether its outputs were cached or computed live


def train_on_synthetic(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    prefixes: list[str],
    config: SyntheticTrainingConfig,
    seed: int,
    teacher: nn.Module | None = None,
    progress: bool = True,
) -> SyntheticTraining:
    """Train `student` on synthetic `texts` (each generated after its control-code prefix) and leave it at its
    best perplexity on a held-out share of them (`config.val_fraction`, checked once per epoch).

    Without a `teacher`: cross-entropy on the hard labels. With one: the KD loss `config.kd` names
    (the teacher reads each text after its prefix; the student, which never sees codes, reads the text alone).
    Hidden-state alignment across different widths trains a projection beside the student and drops it after.
    The teacher's outputs are computed once and cached when they fit in `settings.teacher_cache_gib` and no hidden
    states are needed (`_cache_teacher`); otherwise every step runs the teacher.
    """
    s, kd = config, config.kd
    order = np.random.default_rng(seed).permutation(len(texts))
    n_val = max(1, int(len(texts) * s.val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_texts = [texts[i] for i in train_idx]
    context = student.config.n_positions
    model, collate, kwargs, teacher_states = student, None, {}, None
    if teacher is None:
        examples = encode_plain(tokenizer, train_texts, context)
    else:
        examples = kd_examples(tokenizer, train_texts, [prefixes[i] for i in train_idx], context)
        collate = lambda batch: collate_kd(batch, tokenizer.pad_token_id)  # noqa: E731
        project = kd.alpha > 0 and teacher.config.hidden_size != student.config.hidden_size
        if project:
            model = StudentWithProjection(student, teacher.config.hidden_size).to(next(student.parameters()).device)
        kwargs = {"loss_fn": make_kd_loss_fn(teacher, kd, hidden_projection=project)}
        examples, teacher_states = _cache_teacher(teacher, examples, tokenizer.pad_token_id, s, progress)
    selector = BestOnHeldOut(
        model,
        tokenizer,
        [texts[i] for i in val_idx],
        every=max(1, round(len(examples) / s.train.batch_size)),
        tolerance=s.tolerance,
    )
    cfg = replace(s.train, seed=seed)
    report = train_kept_at_best(model, examples, cfg, selector, progress=progress, collate_fn=collate, **kwargs)
    return SyntheticTraining(report, selector, n_val, teacher_states)


def _cache_teacher(teacher, examples, pad_id, config: SyntheticTrainingConfig, progress) -> tuple[list[dict], str]:
    """The examples with the teacher's outputs cached, and how (distildp.distill.teacher_cache): its probabilities
    (float16) if they fit in `teacher_cache_gib`, else its last hidden states if those fit, else nothing (the teacher
    runs every step). Hidden-state alignment (alpha > 0) needs every layer of the teacher: it always runs live."""
    kd, budget, batch = config.kd, config.teacher_cache_gib * 2**30, config.train.batch_size
    if kd.alpha > 0:
        return examples, "live every step"
    if kd.lam > 0 and teacher_probs_bytes(teacher, examples) <= budget:
        cached = attach_teacher_probs(teacher, examples, pad_id, kd, batch, progress)
        return cached, "probabilities cached once, float16 (teacher_cache.attach_teacher_probs)"
    if teacher_states_bytes(teacher, examples) <= budget:
        cached = attach_teacher_states(teacher, examples, pad_id, kd.teacher_context, batch, progress)
        return cached, "last hidden states cached once (teacher_cache.attach_teacher_states)"
    return examples, "live every step"
