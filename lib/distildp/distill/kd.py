"""Knowledge distillation (stage 3): the KD loss, teacher soft labels and the batches that feed them.

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

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from distildp.lm.fused_loss import (
    Rows,
    TeacherRows,
    at_least_float32,
    sequence_losses,
    student_logits,
    teacher_rows,
    token_losses,
)
from distildp.lm.models import encode_plain

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


def _width_error(student_width: int, teacher_width: int) -> ValueError:
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
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            f"must both be (batch, length, vocab) with equal shapes; a vocabulary mismatch means the two "
            f"models use different tokenizers (check with distildp.distill.kd.check_compatible)."
        )
    if targets.shape != student_logits.shape[:2] or loss_mask.shape != targets.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} and loss_mask {tuple(loss_mask.shape)} must be (batch, length) "
            f"= {tuple(student_logits.shape[:2])}, matching the logits: pass the student's input_ids and loss_mask."
        )

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
        s_hidden, t_hidden = _as_list(student_hidden), _as_list(teacher_hidden)
        if not s_hidden or len(s_hidden) != len(t_hidden):
            raise ValueError(
                f"alpha={alpha} > 0 needs paired hidden states, got {len(s_hidden)} student and "
                f"{len(t_hidden)} teacher tensors: pass equally long lists (see layer_map), or set alpha=0."
            )
        mse_tok = torch.zeros_like(ce_tok)
        for s_h, t_h in zip(s_hidden, t_hidden):
            if projection is not None:
                s_h = projection(s_h)
            if s_h.shape[-1] != t_h.shape[-1]:
                raise _width_error(s_h.shape[-1], t_h.shape[-1])
            diff = at_least_float32(s_h[:, :-1]) - at_least_float32(t_h[:, :-1]).detach()
            mse_tok = mse_tok + diff.pow(2).mean(dim=-1)
        mse = per_sequence(mse_tok / len(s_hidden))

    total = (1.0 - lam) * ce + lam * temperature**2 * kl + alpha * mse
    return KDLossParts(total=total, ce=ce, kl=kl, mse=mse)


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


# ----------------------------------------------------------------------------------------------
# Batches and teacher soft labels
# ----------------------------------------------------------------------------------------------


def collate_kd(examples: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded student batch (`distildp.lm.training.collate_lm`) plus the code-prefixed teacher batch.

    Each example has `input_ids` = [eos] + text + [eos] (student), optional `prefix_ids` = tok(prefix)
    (no eos; empty or missing = no prefix) and optional `loss_mask`. The teacher row is
    [eos] + prefix + text + [eos]; `teacher_offset` is len(prefix_ids) per example. Examples that carry the
    teacher's cached outputs (`distildp.distill.teacher_cache`) bring those too; cached probabilities replace the
    teacher
    batch (the teacher does not run), cached states do not (hidden-state alignment still runs it).
    """
    from distildp.lm.training import collate_lm

    batch = collate_lm(examples, pad_id)
    if examples and "teacher_states" in examples[0]:  # cached by attach_teacher_states: (T_i, width) per example
        # each example's states are as long as its input_ids, so they pad to the batch's length
        batch["teacher_states"] = pad_sequence([ex["teacher_states"] for ex in examples], batch_first=True)
    if examples and "teacher_probs" in examples[0]:  # cached by attach_teacher_probs: one row per scored position
        batch["teacher_probs"] = torch.cat([ex["teacher_probs"] for ex in examples])
        batch["teacher_neg_entropy"] = torch.cat([ex["teacher_neg_entropy"] for ex in examples])
        return batch
    prefixes = [list(ex.get("prefix_ids", [])) for ex in examples]
    teacher_rows = [
        {"input_ids": list(ex["input_ids"][:1]) + prefix + list(ex["input_ids"][1:])}
        for ex, prefix in zip(examples, prefixes)
    ]
    teacher = collate_lm(teacher_rows, pad_id)
    batch["teacher_input_ids"] = teacher["input_ids"]
    batch["teacher_attention_mask"] = teacher["attention_mask"]
    batch["teacher_position_ids"] = teacher["position_ids"]
    batch["teacher_offset"] = torch.tensor([len(p) for p in prefixes], dtype=torch.long)
    return batch


class TeacherOutputs(NamedTuple):
    """Teacher outputs aligned with the student's positions: logits (B, T_s, V), hidden states or None."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None


def _check_context(teacher_context: str) -> None:
    if teacher_context not in TEACHER_CONTEXTS:
        raise ValueError(
            f"teacher_context={teacher_context!r} is unknown: use 'code_prefix' (the teacher sees its control "
            f"codes) or 'none' (the teacher sees exactly the student's input)."
        )


def teacher_at_student_positions(
    teacher: nn.Module, batch: Mapping[str, torch.Tensor], teacher_context: str, output_hidden_states: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """The teacher body's last hidden states (B, T_s, width) at the student's positions, and all its layers'
    hidden states there when asked. Logits are the output layer applied to the last states; gathering before
    that layer moves width-sized rows instead of vocabulary-sized ones."""
    _check_context(teacher_context)
    if teacher_context == "none":
        out = teacher.base_model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            output_hidden_states=output_hidden_states,
        )
        return out.last_hidden_state, (out.hidden_states if output_hidden_states else None)

    if "teacher_input_ids" not in batch:
        raise ValueError(
            "teacher_context='code_prefix' needs the teacher batch (teacher_input_ids, ...): build batches "
            "with distildp.distill.kd.collate_kd, or use teacher_context='none'."
        )
    out = teacher.base_model(
        input_ids=batch["teacher_input_ids"],
        attention_mask=batch["teacher_attention_mask"],
        position_ids=batch["teacher_position_ids"],
        output_hidden_states=output_hidden_states,
    )
    batch_size, student_len = batch["input_ids"].shape
    teacher_len = out.last_hidden_state.shape[1]
    # Student position i sits at teacher position i + offset (offsets differ per example). Positions past
    # the end are student padding, never scored: clamp them to stay inside the tensor.
    index = torch.arange(student_len, device=out.last_hidden_state.device).unsqueeze(0)
    index = (index + batch["teacher_offset"].view(-1, 1)).clamp(max=teacher_len - 1)

    def at_student_positions(x: torch.Tensor) -> torch.Tensor:
        return x.gather(1, index.unsqueeze(-1).expand(batch_size, student_len, x.shape[-1]))

    hidden = tuple(at_student_positions(h) for h in out.hidden_states) if output_hidden_states else None
    return at_student_positions(out.last_hidden_state), hidden


@torch.no_grad()
def teacher_outputs_for_student(
    teacher: nn.Module,
    batch: Mapping[str, torch.Tensor],
    teacher_context: str = "code_prefix",
    output_hidden_states: bool = False,
) -> TeacherOutputs:
    """Run the teacher without gradients and return its outputs at the student's positions.

    A batch with cached `teacher_states` (attach_teacher_states) only goes through the output layer.
    """
    _check_context(teacher_context)
    if "teacher_states" in batch and not output_hidden_states:
        last = batch["teacher_states"]
        hidden = None
    else:
        last, hidden = teacher_at_student_positions(teacher, batch, teacher_context, output_hidden_states)
    return TeacherOutputs(teacher.get_output_embeddings()(last), hidden)


def teacher_logits_for_student(
    teacher: nn.Module, batch: Mapping[str, torch.Tensor], teacher_context: str = "code_prefix"
) -> torch.Tensor:
    """Teacher logits (B, T_s, V) aligned with the student's positions (no gradients)."""
    return teacher_outputs_for_student(teacher, batch, teacher_context).logits


# ----------------------------------------------------------------------------------------------
# The loss_fn for distildp.dp.dpsgd.train_causal_lm
# ----------------------------------------------------------------------------------------------


def kd_examples(tok, texts: list[str], prefixes: list[str], context: int) -> list[dict]:
    """Student examples [eos]+text+[eos] with `prefix_ids`, short enough that the teacher's
    [eos]+prefix+text+[eos] still fits its context (the student sees the same text tokens as the teacher)."""
    prefix_ids = tok(prefixes, add_special_tokens=False)["input_ids"]
    examples = encode_plain(tok, texts, context - max(len(ids) for ids in prefix_ids))
    return [{**ex, "prefix_ids": ids} for ex, ids in zip(examples, prefix_ids)]


def make_kd_loss_fn(
    teacher: nn.Module,
    lam: float = 0.4,
    temperature: float = 1.0,
    alpha: float = 0.0,
    layer_map: Mapping[int, int] | None = None,
    teacher_context: str = "code_prefix",
    hidden_projection: bool = False,
    weighting: str = "token_mean",
) -> Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]:
    """A `loss_fn(model, batch) -> (B,)` for train_causal_lm; batches come from `collate_kd`.

    `model` is the student, or a StudentWithProjection (possibly inside Opacus) whose hidden states come
    back in the teacher's width. `hidden_projection=True` states that you train such a wrapper: a width
    mismatch is then reported as a missing wrapper instead of a missing projection.
    """
    validate_kd_weights(lam, temperature, alpha)
    _check_context(teacher_context)
    if weighting not in KD_WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}; choose one of {KD_WEIGHTINGS}.")
    teacher.eval()  # soft labels without dropout; the teacher is never trained here
    if alpha > 0:
        weights = (lam, temperature, alpha, weighting)
        return _aligned_kd_loss_fn(teacher, weights, layer_map, teacher_context, hidden_projection)

    def teacher_at(batch: Mapping[str, torch.Tensor], rows: Rows) -> TeacherRows | None:
        if lam == 0.0:
            return None  # hard labels only
        if "teacher_probs" in batch:  # cached for the whole set (teacher_cache.attach_teacher_probs)
            if batch["teacher_probs"].shape[0] != rows.target.shape[0]:
                raise ValueError(
                    f"the batch carries cached teacher probabilities for {batch['teacher_probs'].shape[0]} positions "
                    f"but its loss scores {rows.target.shape[0]}: cached probabilities serve a model whose output "
                    "layer no clipping hook watches; cache the teacher's states for DP-SGD (attach_teacher_states)."
                )
            return TeacherRows(batch["teacher_probs"].float(), batch["teacher_neg_entropy"])
        with torch.no_grad():
            if "teacher_states" in batch:
                last = batch["teacher_states"]
            else:
                last, _ = teacher_at_student_positions(teacher, batch, teacher_context)
            picked = last.reshape(-1, last.shape[-1]).index_select(0, rows.position)
            return teacher_rows(teacher.get_output_embeddings()(picked), temperature)

    def loss_fn(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits, rows, _ = student_logits(model, batch)
        ce, kl = token_losses(logits, rows.target, teacher_at(batch, rows), temperature)
        size = batch["input_ids"].shape[0]
        return sequence_losses(ce, kl, rows.example, rows.weight, size, lam, temperature, weighting)

    return loss_fn


def _aligned_kd_loss_fn(teacher, weights, layer_map, teacher_context, hidden_projection):
    """make_kd_loss_fn with hidden-state alignment: kd_loss on the whole (B, T, V) logits and the paired layers."""
    lam, temperature, alpha, weighting = weights
    weighted_kd_loss = functools.partial(kd_loss, lam=lam, temperature=temperature, alpha=alpha, weighting=weighting)

    def loss_fn(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            output_hidden_states=True,
        )
        teach = teacher_outputs_for_student(teacher, batch, teacher_context, output_hidden_states=True)
        n_student, n_teacher = len(out.hidden_states) - 1, len(teach.hidden_states) - 1
        pairs = dict(layer_map) if layer_map is not None else default_layer_map(n_student, n_teacher)
        validate_layer_map(pairs, n_student, n_teacher)
        student_hidden = [out.hidden_states[s] for s in pairs]
        teacher_hidden = [teach.hidden_states[t] for t in pairs.values()]
        s_width, t_width = student_hidden[0].shape[-1], teacher_hidden[0].shape[-1]
        if s_width != t_width:
            if hidden_projection:
                raise ValueError(
                    f"hidden_projection=True but the model's hidden states have width {s_width}, not the "
                    f"teacher's {t_width}: train StudentWithProjection(student, teacher_width={t_width})."
                )
            raise _width_error(s_width, t_width)
        parts = weighted_kd_loss(
            out.logits,
            teach.logits,
            batch["input_ids"],
            batch["loss_mask"],
            student_hidden=student_hidden,
            teacher_hidden=teacher_hidden,
        )
        return parts.total

    return loss_fn


# ----------------------------------------------------------------------------------------------
# Tokenizer compatibility
# ----------------------------------------------------------------------------------------------


def check_compatible(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """Raise a ValueError unless teacher and student share vocabulary and special tokens.

    Distillation compares distributions token id by token id, so the two must tokenize identically.
    """
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab != s_vocab:
        differ = sorted(set(t_vocab.items()) ^ set(s_vocab.items()), key=lambda kv: kv[1])[:5]
        raise ValueError(
            f"teacher and student tokenizers differ: vocab sizes {len(t_vocab)} vs {len(s_vocab)}, "
            f"e.g. entries {differ} are not shared. Distillation needs one tokenizer: build both models "
            f"from the same tokenizer (distildp.lm.models.build_model(preset, tokenizer))."
        )
    for name in ("eos_token", "bos_token", "pad_token", "unk_token"):
        t_tok, s_tok = getattr(teacher_tokenizer, name, None), getattr(student_tokenizer, name, None)
        if t_tok != s_tok:
            raise ValueError(
                f"teacher and student tokenizers share a vocabulary but their {name} differs "
                f"({t_tok!r} vs {s_tok!r}): set the same special tokens on both."
            )
