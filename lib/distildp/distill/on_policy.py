"""DP-OPD's loss (on-policy DP distillation, Khadem et al. 2026): the student continues each private document's
prompt itself, and at every token of its own continuation its next-token distribution is pulled toward a frozen
teacher's by a generalised KD divergence.

    document -> prompt [eos] + its first `prompt_tokens` tokens -> the student samples a continuation (no gradient)
             -> student and teacher read prompt + continuation -> divergence at the continuation's tokens, averaged
                per document: one loss per example

Given to `distildp.dp.dpsgd.train_causal_lm` as its loss_fn (with `collate_prompts`), it trains under DP-SGD like
any private stage: an example's loss depends on its own document, the current student and the frozen teacher only,
so per-example clipping bounds each document's influence and the noise covers it. The continuations are drawn with
torch's global generator, seeded from the training seed: they need not be secret, since the guarantee holds for
every value they take. What the student's epsilon does NOT cover is the teacher: a teacher fine-tuned on the same
private data without DP makes every update depend on every record (the pipeline's teacher variants say which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from distildp.distill.kd import check_teacher_context
from distildp.distill.kd_batches import collate_kd, teacher_at_student_positions
from distildp.lm.fused_loss import student_logits
from distildp.lm.sampling import GenerationConfig, sample_batch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


@dataclass(frozen=True)
class OnPolicyConfig:
    """How DP-OPD builds each example's loss.

    divergence: 'forward_kl' KL(teacher || student), the default: it is the teacher-weighted cross-entropy of the
      student (less the teacher's entropy), the quantity test perplexity measures, and it covers all of the
      teacher's mass; 'reverse_kl' KL(student || teacher) is mode-seeking; 'jsd' is the generalised Jensen-Shannon
      divergence of GKD (Agarwal et al. 2024) with weight `beta` on the teacher: beta KL(T || M) + (1 - beta)
      KL(S || M), M = beta T + (1 - beta) S.
    The teacher's view of the text is not a setting of the loss but of the teacher (`make_on_policy_loss_fn`'s
    teacher_context): 'code_prefix' for a teacher fine-tuned on code-prefixed text, 'none' for a pretrained one.
    """

    prompt_tokens: int = 8  # document tokens after [eos] that prompt the student
    continuation_tokens: int = 40  # tokens sampled past the batch's longest prompt, at most
    divergence: str = "forward_kl"
    beta: float = 0.5  # jsd's weight on the teacher

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.continuation_tokens < 1:
            raise ValueError(
                f"prompt_tokens and continuation_tokens must be >= 1, got {self.prompt_tokens} and "
                f"{self.continuation_tokens}: the student needs a prompt to continue and a continuation to score."
            )
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {self.divergence!r}; choose from {list(DIVERGENCES)}")
        if not 0 < self.beta < 1:
            raise ValueError(f"beta must lie strictly between 0 and 1 (jsd's weight on the teacher), got {self.beta}")


def token_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, divergence: str = "forward_kl", beta: float = 0.5
) -> torch.Tensor:
    """The divergence between the teacher's and the student's next-token distributions, row by row: (R, V) logits
    -> (R,) nats, in float32. See OnPolicyConfig for the three kinds."""
    log_s = student_logits.float().log_softmax(-1)
    log_t = teacher_logits.float().log_softmax(-1)
    if divergence == "forward_kl":
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if divergence == "reverse_kl":
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    if divergence != "jsd":
        raise ValueError(f"unknown divergence {divergence!r}; choose from {list(DIVERGENCES)}")
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1 - beta))
    return beta * (log_t.exp() * (log_t - log_m)).sum(-1) + (1 - beta) * (log_s.exp() * (log_s - log_m)).sum(-1)


def prompt_examples(tok, texts: Sequence[str], prefixes: Sequence[str], prompt_tokens: int) -> list[dict]:
    """Each document as DP-OPD's example: `input_ids` = [eos] + its first `prompt_tokens` tokens (all of a shorter
    one but its last, so there is text left to write) and `prefix_ids` = its control codes, for the teacher."""
    eos = tok.eos_token_id
    text_ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    prefix_ids = tok(list(prefixes), add_special_tokens=False)["input_ids"]
    return [
        {"input_ids": [eos] + ids[: max(min(prompt_tokens, len(ids) - 1), 0)], "prefix_ids": prefix}
        for ids, prefix in zip(text_ids, prefix_ids)
    ]


def collate_prompts(examples: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """A batch of prompts as lists: the loss samples their continuations before anything is padded."""
    return {"prompts": [list(ex["input_ids"]) for ex in examples], "prefix_ids": [ex["prefix_ids"] for ex in examples]}


@torch.no_grad()
def sample_continuations(model: nn.Module, prompts: list[list[int]], max_new: int, eos_id: int) -> list[list[int]]:
    """The student's own continuation of each prompt, drawn from its full distribution (temperature 1, no top-k,
    top-p or n-gram ban: on-policy), until it ends or the row reaches the longest prompt's length + `max_new` tokens
    (a shorter prompt gets as many more); [eos] closes one that ended by itself."""
    longest = max(len(p) for p in prompts)
    cfg = GenerationConfig(top_k=0, top_p=1.0, no_repeat_ngram_size=0, max_length=longest + max_new)
    continuations = sample_batch(model, prompts, cfg, eos_id)
    # sample_batch cuts a continuation at its [eos]: one shorter than its row's budget ended there
    return [c + [eos_id] if len(c) < cfg.max_length - len(p) else c for p, c in zip(prompts, continuations)]


def continued_batch(batch: Mapping[str, list], continuations: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """prompt + continuation per example, collated for student and teacher (`collate_kd`), with only the
    continuation's tokens scored."""
    examples = [
        {"input_ids": prompt + cont, "loss_mask": [0] * len(prompt) + [1] * len(cont), "prefix_ids": prefix}
        for prompt, cont, prefix in zip(batch["prompts"], continuations, batch["prefix_ids"])
    ]
    return collate_kd(examples, pad_id)


def continuation_losses(
    model: nn.Module,
    teacher: nn.Module,
    scored: Mapping[str, torch.Tensor],
    cfg: OnPolicyConfig,
    teacher_context: str = "code_prefix",
) -> torch.Tensor:
    """(B,): each example's divergence from `teacher` to `model`, averaged over its scored (continuation) tokens;
    `scored` is a `continued_batch` on the models' device. Gradients flow into `model` only."""
    logits, rows, _ = student_logits(model, scored)
    with torch.no_grad():
        last, _ = teacher_at_student_positions(teacher, scored, teacher_context)
        picked = last.reshape(-1, last.shape[-1]).index_select(0, rows.position)
        teacher_logits = teacher.get_output_embeddings()(picked)
    per_token = token_divergence(logits, teacher_logits, cfg.divergence, cfg.beta) * rows.weight
    size = scored["input_ids"].shape[0]
    summed = per_token.new_zeros(size).index_add(0, rows.example, per_token)
    return summed / rows.weight.new_zeros(size).index_add(0, rows.example, rows.weight)


def make_on_policy_loss_fn(
    teacher: nn.Module, cfg: OnPolicyConfig, eos_id: int, pad_id: int, teacher_context: str = "code_prefix"
) -> Callable[[nn.Module, Mapping[str, Any]], torch.Tensor]:
    """A `loss_fn(student, batch) -> (B,)` for train_causal_lm over `collate_prompts` batches: the student samples
    each prompt's continuation, then `continuation_losses` scores it against `teacher` (frozen, evaluation mode),
    which reads the text behind the document's control codes ('code_prefix') or without them ('none')."""
    check_teacher_context(teacher_context)
    teacher.eval()

    def loss_fn(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        continuations = sample_continuations(model, batch["prompts"], cfg.continuation_tokens, eos_id)
        device = next(model.parameters()).device
        scored = {k: v.to(device) for k, v in continued_batch(batch, continuations, pad_id).items()}
        return continuation_losses(model, teacher, scored, cfg, teacher_context)

    return loss_fn
