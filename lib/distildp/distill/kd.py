"""Knowledge distillation (stage 3): the KD loss and hidden-state alignment (`distill.kd_batches` feeds them).

The student minimises, per sequence,

    (1 - lam) * CE(hard labels) + lam * t^2 * KL(p_teacher^t || p_student^t) + alpha * MSE(hidden states)

where p^t = softmax(logits / t). Every term is averaged over the sequence's scored tokens (the same
positions for all three), so padding never rescales one example's loss. The hard-label CE is taken at
temperature 1. The t^2 factor keeps the KL gradient's size roughly independent of t (Hinton et al. 2015).

Position conventions (shared with training.collate_lm): `loss_mask[b, j] = 1` marks token j as a scored target; it is
predicted by the logits (and hidden state) at position j - 1. That standard causal shift is the only one.

Teachers model `[eos] + prefix + text + [eos]`, students `[eos] + text + [eos]`, so student position i
is teacher position i + len(prefix): `teacher_outputs_for_student` gathers the teacher at that offset.

Hidden-state layers are indices into Hugging Face's `hidden_states` tuple: 0 is the embedding output,
k (1..L) the output of block k (for GPT-2 the last one has the final layer norm applied). The default
`layer_map` aligns student block k of L_s with teacher block ceil(k * L_t / L_s): evenly spaced, never
the embeddings, and the final hidden states of the two models are always paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distildp.lm.fused_loss import (
    at_least_float32,
)

TEACHER_CONTEXTS = ("code_prefix", "none")
# How the soft-label term is weighed against the hard-label CE (see kd_loss).
KD_WEIGHTINGS = ("token_mean", "paper_sum")


@dataclass(frozen=True)
class KDConfig:
    """The KD loss's settings, as `make_kd_loss_fn` takes them (`make_kd_loss_fn(teacher, **asdict(kd))`) and as
    artifact keys record them (`asdict(kd)`)."""

    lam: float = 0.4  # weight of the soft labels; 1 - lam on the hard labels
    temperature: float = 1.0
    alpha: float = 0.0  # weight of hidden-state alignment
    teacher_context: str = "code_prefix"  # what the teacher reads before the text: its control codes, or 'none'
    weighting: str = "token_mean"  # how the soft-label term is weighed against the hard-label CE (see kd_loss)

    def __post_init__(self) -> None:
        validate_kd_weights(self.lam, self.temperature, self.alpha)
        check_teacher_context(self.teacher_context)
        if self.weighting not in KD_WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r}; choose one of {KD_WEIGHTINGS}.")


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


@dataclass
class KDLossParts:
    """Per-sequence (B,) tensors: the weighted total and its unweighted parts."""

    total: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    mse: torch.Tensor


def validate_kd_weights(lam: float, temperature: float, alpha: float) -> None:
    """Raise a clear ValueError for weights outside their ranges."""
    if not (0.0 <= lam <= 1.0):
        raise ValueError(f"lam={lam} must lie in [0, 1] (0 = plain cross-entropy, 1 = pure distillation).")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature} must be a finite number > 0 (1.0 = no softening).")
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha={alpha} must be a finite number >= 0 (0 disables the hidden-state term).")


def check_teacher_context(teacher_context: str) -> None:
    if teacher_context not in TEACHER_CONTEXTS:
        raise ValueError(
            f"teacher_context={teacher_context!r} is unknown: use 'code_prefix' (the teacher sees its control "
            f"codes) or 'none' (the teacher sees exactly the student's input)."
        )


def width_error(student_width: int, teacher_width: int) -> ValueError:
    return ValueError(
        f"hidden-state alignment (alpha > 0) needs equal widths, but the student's hidden size is "
        f"{student_width} and the teacher's is {teacher_width}. Pass `projection=HiddenProjection("
        f"{student_width}, {teacher_width})` to kd_loss, or train a `StudentWithProjection` "
        f"(make_kd_loss_fn(..., hidden_projection=True) tells you so), or set alpha=0."
    )


def _as_list(hidden: torch.Tensor | Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    if hidden is None:
        return []
    if isinstance(hidden, torch.Tensor):
        return [hidden]
    return list(hidden)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    lam: float = 0.4,
    temperature: float = 1.0,
    student_hidden: torch.Tensor | Sequence[torch.Tensor] | None = None,
    teacher_hidden: torch.Tensor | Sequence[torch.Tensor] | None = None,
    alpha: float = 0.0,
    projection: nn.Module | None = None,
    weighting: str = "token_mean",
) -> KDLossParts:
    """Per-sequence KD loss.

    student_logits, teacher_logits: (B, T, V), aligned position by position (teacher already gathered).
    targets: (B, T) the student's input_ids; loss_mask: (B, T) marks scored targets (the module docstring).
    student_hidden / teacher_hidden: a (B, T, D) tensor or equally long lists of them, paired in order.
    projection: maps student width to teacher width (e.g. HiddenProjection) before the MSE.
    MSE is the mean over the hidden dimension and over the paired layers, then over scored tokens.
    weighting: 'token_mean' averages every term over the sequence's scored tokens; 'paper_sum' is the paper's
    code, whose KL (KLDivLoss 'batchmean' on (B, T, V)) is summed over positions while its CE is a token mean,
    so the soft term weighs ~T times more per token (padding stays masked here; the paper's code scores it).
    """
    validate_kd_weights(lam, temperature, alpha)
    if weighting not in KD_WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}; choose one of {KD_WEIGHTINGS}.")
    _check_shapes(student_logits, teacher_logits, targets, loss_mask)

    # Logits at position i predict token i + 1; the mask of token i + 1 says whether it counts.
    weights = loss_mask[:, 1:].to(student_logits.dtype)
    n_scored = weights.sum(dim=1).clamp(min=1.0)  # a sequence with nothing scored contributes 0

    def per_sequence(per_token: torch.Tensor) -> torch.Tensor:
        return (per_token * weights).sum(dim=1) / n_scored

    s_logits = at_least_float32(student_logits[:, :-1])
    t_logits = at_least_float32(teacher_logits[:, :-1]).detach()

    log_p_s = F.log_softmax(s_logits / temperature, dim=-1)
    if temperature == 1.0:  # the CE's log-softmax is the KL's: computed once (B x T x V is the big tensor)
        ce_tok = -log_p_s.gather(-1, targets[:, 1:].unsqueeze(-1)).squeeze(-1)
    else:
        ce_tok = F.cross_entropy(
            s_logits.reshape(-1, s_logits.shape[-1]), targets[:, 1:].reshape(-1), reduction="none"
        ).view(targets[:, 1:].shape)
    # KL(p_t || p_s) = sum p_t log p_t - sum p_t log p_s; the first sum needs no gradient, so it stays out of the graph
    with torch.no_grad():
        log_p_t = F.log_softmax(t_logits / temperature, dim=-1)
        p_t = log_p_t.exp()
        neg_entropy_t = (p_t * log_p_t).sum(dim=-1)
    kl_tok = neg_entropy_t - (p_t * log_p_s).sum(dim=-1)
    ce = per_sequence(ce_tok)
    kl = per_sequence(kl_tok) if weighting == "token_mean" else (kl_tok * weights).sum(dim=1)

    mse = torch.zeros_like(ce)
    if alpha > 0:
        mse = per_sequence(_alignment_mse(student_hidden, teacher_hidden, projection, alpha, torch.zeros_like(ce_tok)))

    total = (1.0 - lam) * ce + lam * temperature**2 * kl + alpha * mse
    return KDLossParts(total=total, ce=ce, kl=kl, mse=mse)


def _check_shapes(student_logits, teacher_logits, targets, loss_mask) -> None:
    """kd_loss's inputs: equal (batch, length, vocab) logits, and (batch, length) targets and mask."""
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            f"must both be (batch, length, vocab) with equal shapes; a vocabulary mismatch means the two "
            f"models use different tokenizers (check with distildp.distill.kd_batches.check_compatible)."
        )
    if targets.shape != student_logits.shape[:2] or loss_mask.shape != targets.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} and loss_mask {tuple(loss_mask.shape)} must be (batch, length) "
            f"= {tuple(student_logits.shape[:2])}, matching the logits: pass the student's input_ids and loss_mask."
        )


def _alignment_mse(student_hidden, teacher_hidden, projection, alpha: float, mse_tok: torch.Tensor) -> torch.Tensor:
    """The hidden-state MSE per token (B, T - 1), averaged over the paired layers; `mse_tok` is its zero start."""
    s_hidden, t_hidden = _as_list(student_hidden), _as_list(teacher_hidden)
    if not s_hidden or len(s_hidden) != len(t_hidden):
        raise ValueError(
            f"alpha={alpha} > 0 needs paired hidden states, got {len(s_hidden)} student and "
            f"{len(t_hidden)} teacher tensors: pass equally long lists (see layer_map), or set alpha=0."
        )
    for s_h, t_h in zip(s_hidden, t_hidden):
        if projection is not None:
            s_h = projection(s_h)
        if s_h.shape[-1] != t_h.shape[-1]:
            raise width_error(s_h.shape[-1], t_h.shape[-1])
        diff = at_least_float32(s_h[:, :-1]) - at_least_float32(t_h[:, :-1]).detach()
        mse_tok = mse_tok + diff.pow(2).mean(dim=-1)
    return mse_tok / len(s_hidden)


# ----------------------------------------------------------------------------------------------
# Hidden-state alignment
# ----------------------------------------------------------------------------------------------


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student block k (1..L_s) -> teacher block ceil(k * L_t / L_s): evenly spaced, last to last."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got student {student_layers}, teacher {teacher_layers}.")
    return {k: -(-k * teacher_layers // student_layers) for k in range(1, student_layers + 1)}


def validate_layer_map(layer_map: Mapping[int, int], student_layers: int, teacher_layers: int) -> None:
    """Indices are into `hidden_states` (0 = embeddings, 1..L = blocks)."""
    if not layer_map:
        raise ValueError("layer_map is empty: map at least one student layer to a teacher layer, or set alpha=0.")
    for s, t in layer_map.items():
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise ValueError(
                f"layer_map entry {s} -> {t} is out of range: student indices run 0..{student_layers} and "
                f"teacher indices 0..{teacher_layers} (0 = embeddings, k = output of block k)."
            )


class HiddenProjection(nn.Module):
    """A learned linear map from the student's hidden width to the teacher's, shared by all layers."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.linear = nn.Linear(student_width, teacher_width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)


class StudentWithProjection(nn.Module):
    """The student plus its HiddenProjection as one module, so one optimizer (and Opacus) sees both.

    `forward` passes everything through to the student; when hidden states are requested they come back
    already projected to the teacher's width. Save `.student` (e.g. `.student.save_pretrained(dir)`).
    """

    def __init__(self, student: nn.Module, teacher_width: int):
        super().__init__()
        self.student = student
        self.projection = HiddenProjection(student.config.hidden_size, teacher_width)

    @property
    def config(self):
        return self.student.config

    # Pass-throughs so distildp.dp.dpsgd.untie_embeddings (ghost clipping) works on the wrapper.
    def get_input_embeddings(self) -> nn.Module:
        return self.student.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.student.get_output_embeddings()

    def forward(self, *args: Any, **kwargs: Any):
        out = self.student(*args, **kwargs)
        if kwargs.get("output_hidden_states") and out.hidden_states is not None:
            states = out.hidden_states
            length = states[0].shape[1]
            # One projection call over all layers (concatenated along time) keeps the batch dimension
            # first and uses the layer once, which Opacus's per-sample hooks handle most simply.
            projected = self.projection(torch.cat(states, dim=1))
            out.hidden_states = tuple(projected.split(length, dim=1))
        return out
