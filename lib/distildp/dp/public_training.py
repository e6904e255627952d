"""Training that spends no privacy, kept at its best held-out check: `pretrain` (the public models, on public text)
and `train_kept_at_best`, which distillation's students also use on synthetic text (post-processing of a DP
teacher). Both run `train_causal_lm` without a privacy budget, scored on held-out text as they go
(`distildp.lm.evaluate.BestOnHeldOut`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distildp.dp.dpsgd import train_causal_lm
from distildp.lm.evaluate import BestOnHeldOut
from distildp.lm.models import encode_with_prefix
from distildp.lm.training import TrainConfig, TrainReport


def train_kept_at_best(
    model: nn.Module,
    examples: Sequence[Mapping[str, Any]],
    cfg: TrainConfig,
    selector: BestOnHeldOut,
    progress: bool = True,
    **train_kwargs,
) -> TrainReport:
    """Non-private training with `selector` scoring held-out text as it goes (and stopping training once that
    flattens, if its tolerance says so); the model ends at the weights of its best check."""
    report = train_causal_lm(model, examples, cfg, progress=progress, on_step=selector, **train_kwargs)
    selector.finish(report.steps)
    model.load_state_dict(selector.best_state)
    model.eval()  # as training leaves it (the selector's last check switched it back to training mode)
    return report


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    validation: list[str],
    cfg: TrainConfig,
    prefixes: list[str] | None = None,
    validation_prefixes: list[str] | None = None,
    tolerance: float | None = None,
    progress: bool = True,
) -> tuple[TrainReport, BestOnHeldOut]:
    """Causal-LM pretraining on public `texts`, kept at its best perplexity on public `validation` text.

    A text's prefix (its header, if any) is scored like the text: in public data it is text, not a control code.
    Long documents are split into context-sized windows. Validation is scored every half epoch; with a
    `tolerance`, training stops once a check improves by less than that (BestOnHeldOut). Returns the report and
    the selector (its curve and best step).
    """
    examples = encode_with_prefix(tokenizer, prefixes, texts, model.config.n_positions, overflow="split")
    if not examples:
        raise ValueError("pretrain got no texts; pass a non-empty list of documents.")
    half_epoch = max(1, len(examples) // (2 * cfg.batch_size))
    selector = BestOnHeldOut(
        model, tokenizer, validation, half_epoch, tolerance=tolerance, prefixes=validation_prefixes
    )
    return train_kept_at_best(model, examples, cfg, selector, progress=progress), selector
