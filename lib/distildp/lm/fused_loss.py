"""The training losses over the vocabulary, fused: one softmax per side and a gradient written out in closed form.

`distildp.distill.kd.kd_loss` is the readable definition of the KD loss; this module computes the same per-sequence
losses with fewer passes over the (tokens x vocabulary) tensors that dominate a small model's step on a CPU:

- `scored_positions`: only the positions the loss scores (where loss_mask[:, 1:] is set), packed as rows; or
  `every_position`, the model's own (B, T, V) logits as rows, where clipping hooks need that tensor;
- `output_logits`: the output layer applied to those rows here, its weight gradient taken as (h^T g)^T, which a CPU's
  matmul runs about twice as fast as autograd's g^T h for a narrow model (`student_logits` chooses);
- `token_losses`: the student's softmax taken once, serving the hard-label CE and the KL and kept for the backward
  pass; the gradient with respect to the logits is (w_ce + w_kl) * softmax - w_ce * onehot(target) - w_kl * p_teacher
  (at temperature 1), one pass, where autograd would go back through every op of the forward;
- `teacher_rows`: the teacher as probabilities already (its softmax taken once, or cached for a whole synthetic set by
  `distildp.distill.teacher_cache`) with its negative entropy, so the KL needs one dot product per row;
- `sequence_losses`: the per-row terms weighed into per-sequence (B,) losses as kd_loss weighs them.

Tests compare the losses and their gradients with `kd_loss` and a plain cross-entropy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class TeacherRows(NamedTuple):
    """The teacher at the scored positions: probabilities (N, V) at the KD temperature and their sum p log p (N,)."""

    probs: torch.Tensor
    neg_entropy: torch.Tensor


def teacher_rows(logits: torch.Tensor, temperature: float = 1.0) -> TeacherRows:
    """TeacherRows of teacher logits (N, V) (no gradient)."""
    with torch.no_grad():
        logits = at_least_float32(logits)
        log_p = F.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
        probs = log_p.exp()
        return TeacherRows(probs, torch.linalg.vecdot(probs, log_p))


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are scored in float32 (as kd_loss does); float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _TokenLosses(torch.autograd.Function):
    """Per-token CE (temperature 1) and KL(p_teacher || p_student at temperature t) from student logits (N, V).

    One softmax per temperature, kept for the backward pass (which then needs no exponential); the log-normaliser
    lse of each row is read off it at the target: lse = logit - log(softmax) there (`_log_normaliser`)."""

    @staticmethod
    def forward(ctx, logits, targets, probs, neg_entropy, temperature):
        ctx.set_materialize_grads(False)  # an output nobody used brings None, not a tensor of zeros
        logits = at_least_float32(logits)
        at_target = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        soft = torch.softmax(logits, dim=-1)
        lse = _log_normaliser(logits, soft, targets, at_target)
        ce = lse - at_target
        kl = soft_tau = mass = None
        if probs is not None:
            probs = probs.to(logits.dtype)
            mass = probs.sum(1)  # 1 up to the rounding of stored probabilities: kept exact, value and gradient
            if temperature == 1.0:
                soft_tau, lse_tau = soft, lse
            else:
                scaled = logits / temperature
                soft_tau = torch.softmax(scaled, dim=-1)
                lse_tau = _log_normaliser(scaled, soft_tau, targets, at_target / temperature)
            # KL = sum p log p - sum p (logit / t - lse_t)
            kl = neg_entropy - torch.linalg.vecdot(probs, logits) / temperature + lse_tau * mass
        ctx.temperature = temperature
        ctx.save_for_backward(soft, targets, probs, soft_tau if temperature != 1.0 else None, mass)
        return ce, kl

    @staticmethod
    def backward(ctx, grad_ce, grad_kl):
        soft, targets, probs, soft_tau, mass = ctx.saved_tensors
        if grad_ce is None:
            grad_ce = torch.zeros_like(soft[:, 0])
        if probs is None or grad_kl is None:  # d CE / d logits = softmax - onehot(target)
            grad = soft * grad_ce.unsqueeze(1)
        elif ctx.temperature == 1.0:  # d KL / d logits = mass * softmax - p_teacher: one softmax serves both terms
            grad = soft * (grad_ce + grad_kl * mass).unsqueeze(1)
            grad.addcmul_(probs, grad_kl.unsqueeze(1), value=-1.0)
        else:  # d KL / d logits = (mass * softmax(logits / t) - p_teacher) / t
            scale = (grad_kl / ctx.temperature).unsqueeze(1)
            grad = soft * grad_ce.unsqueeze(1)
            grad.addcmul_(soft_tau, scale * mass.unsqueeze(1)).addcmul_(probs, scale, value=-1.0)
        grad.scatter_add_(1, targets.unsqueeze(1), -grad_ce.unsqueeze(1))
        return grad, None, None, None, None


def _log_normaliser(logits: torch.Tensor, soft: torch.Tensor, targets: torch.Tensor, at_target: torch.Tensor):
    """log sum exp of each row of `logits`, given their softmax: logit - log(softmax) at the target. Where the
    target's probability is too small for its logarithm to keep float32's precision, at the row's largest entry
    instead (its probability is at least 1/V)."""
    picked = soft.gather(1, targets.unsqueeze(1)).squeeze(1)
    lse = at_target - picked.log()
    tiny = (picked < 1e-30).nonzero().squeeze(1)
    if len(tiny):
        rows_soft, rows = soft.index_select(0, tiny), logits.index_select(0, tiny)
        lse[tiny] = rows.amax(1) - rows_soft.amax(1).log()
    return lse


def token_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher: TeacherRows | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row CE and (with a teacher) KL of student logits (N, V) against targets (N,): one softmax per
    temperature, the gradient with respect to the logits in closed form."""
    probs, neg_entropy = teacher if teacher is not None else (None, None)
    return _TokenLosses.apply(logits, targets, probs, neg_entropy, temperature)


class _OutputLayer(torch.autograd.Function):
    """logits = hidden @ weight^T (a bias-free output layer) whose weight gradient is taken as (hidden^T grad)^T:
    the same numbers as autograd's grad^T hidden, in a layout a CPU's matmul runs about twice as fast when the
    hidden width is small."""

    @staticmethod
    def forward(ctx, hidden, weight):
        ctx.save_for_backward(hidden, weight)
        return hidden @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        hidden, weight = ctx.saved_tensors
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = (hidden.t() @ grad).t().contiguous() if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight


def output_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) of hidden states (N, D) through a bias-free output layer `weight` (V, D)."""
    return _OutputLayer.apply(hidden, weight)


def sequence_losses(
    ce: torch.Tensor,
    kl: torch.Tensor | None,
    example: torch.Tensor,
    weight: torch.Tensor,
    batch_size: int,
    lam: float = 0.0,
    temperature: float = 1.0,
    weighting: str = "token_mean",
) -> torch.Tensor:
    """Per-row CE and KL -> per-sequence (B,) losses as kd_loss weighs them: each term the mean over the sequence's
    scored tokens ('paper_sum': the KL summed over them), then (1 - lam) * CE + lam * t^2 * KL.

    example: the sequence of each row; weight: each row's loss-mask value (0 for a row that is not scored)."""
    n_scored = torch.zeros(batch_size, dtype=weight.dtype, device=weight.device).index_add_(0, example, weight)
    n_scored = n_scored.clamp(min=1.0)  # a sequence with nothing scored contributes 0

    def summed(per_row: torch.Tensor) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=per_row.dtype, device=per_row.device).index_add(
            0, example, per_row * weight.to(per_row.dtype)
        )

    total = summed(ce) / n_scored
    if lam == 0.0:
        return total
    if kl is None:
        raise ValueError(f"lam={lam} weighs a KL term, but no teacher was given: pass its rows, or lam=0.")
    kl_seq = summed(kl) / n_scored if weighting == "token_mean" else summed(kl)
    return (1.0 - lam) * total + lam * temperature**2 * kl_seq


# ------------------------------------------------------------------------------------------------ rows of a batch
class Rows(NamedTuple):
    """The positions a batch's loss scores, one row each: where in the flattened (B, T) positions, the target
    token, the sequence it belongs to and its loss-mask weight."""

    position: torch.Tensor
    target: torch.Tensor
    example: torch.Tensor
    weight: torch.Tensor


def every_position(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> Rows:
    """Every position of (B, T) as a row, the unscored ones (padding, each sequence's last) weighing 0: the rows of
    a model's own (B, T, V) logits taken as a view, for training whose clipping hooks need that tensor."""
    batch, length = input_ids.shape
    pad = input_ids.new_zeros(batch, 1)
    target = torch.cat([input_ids[:, 1:], pad], 1).reshape(-1)
    weight = torch.cat([loss_mask[:, 1:], loss_mask.new_zeros(batch, 1)], 1).reshape(-1)
    example = torch.arange(batch, device=input_ids.device).repeat_interleave(length)
    return Rows(torch.arange(batch * length, device=input_ids.device), target, example, weight)


def scored_positions(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> Rows:
    """The scored positions only (position j where loss_mask[:, j + 1] is set), example by example: rows packed
    without padding."""
    length = input_ids.shape[1]
    scored = (loss_mask[:, 1:] > 0).reshape(-1).nonzero().squeeze(1)  # into the flattened (B, T - 1)
    example = torch.div(scored, length - 1, rounding_mode="floor")
    position = example * length + scored % (length - 1)
    return Rows(position, input_ids[:, 1:].reshape(-1)[scored], example, loss_mask[:, 1:].reshape(-1)[scored])


# ------------------------------------------------------------------------------------------------ a model's rows
def _packable(model: torch.nn.Module) -> bool:
    """Whether the output layer can be applied here rather than by the model: a GPT-2 LM (its logits are a bias-free
    linear map of the last hidden states) whose output layer no clipping hook watches (DP-SGD's hooks need the
    layer called as a module, with the whole (B, T, V) output)."""
    from transformers import GPT2LMHeadModel

    if not isinstance(model, GPT2LMHeadModel):
        return False
    head = model.get_output_embeddings()
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (model, head))
    return head.bias is None and not hooked


def student_logits(model: torch.nn.Module, batch: dict):
    """(logits of the scored rows, the Rows, the model's output) for a collated batch (training.collate_lm).

    A GPT-2 LM that no hook watches runs its body only, and the output layer is applied here to the scored positions
    alone (`scored_positions`, `output_logits`: no padding, no last position); otherwise the model's own (B, T, V)
    logits are viewed as rows (`every_position`), so hooks on the output layer see the whole tensor and its
    gradient."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if _packable(model):
        out = model.base_model(**inputs)
        rows = scored_positions(batch["input_ids"], batch["loss_mask"])
        hidden = out.last_hidden_state
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows.position)
        return output_logits(picked, model.get_output_embeddings().weight), rows, out
    out = model(**inputs)
    rows = every_position(batch["input_ids"], batch["loss_mask"])
    return out.logits.reshape(-1, out.logits.shape[-1]), rows, out
