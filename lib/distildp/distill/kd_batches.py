"""The KD loss as training takes it: batches that carry both views of a text (`collate_kd`), the teacher read at the
student's positions (`teacher_outputs_for_student`), the `loss_fn` for train_causal_lm (`make_kd_loss_fn`) and the
tokenizer check. The loss itself and the position conventions: `distildp.distill.kd`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from distildp.distill.kd import (
    KDConfig,
    check_teacher_context,
    default_layer_map,
    kd_loss,
    validate_layer_map,
    width_error,
)
from distildp.lm.fused_loss import Rows, TeacherRows, sequence_losses, student_logits, teacher_rows, token_losses
from distildp.lm.models import encode_plain

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


def teacher_at_student_positions(
    teacher: nn.Module, batch: Mapping[str, torch.Tensor], teacher_context: str, output_hidden_states: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """The teacher body's last hidden states (B, T_s, width) at the student's positions, and all its layers'
    hidden states there when asked. Logits are the output layer applied to the last states; gathering before
    that layer moves width-sized rows instead of vocabulary-sized ones."""
    check_teacher_context(teacher_context)
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
            "with distildp.distill.kd_batches.collate_kd, or use teacher_context='none'."
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
    check_teacher_context(teacher_context)
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
    kd: KDConfig | None = None,
    layer_map: Mapping[int, int] | None = None,
    hidden_projection: bool = False,
) -> Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]:
    """A `loss_fn(model, batch) -> (B,)` for train_causal_lm with the KD loss `kd` (default KDConfig()); batches
    come from `collate_kd`.

    `model` is the student, or a StudentWithProjection (possibly inside Opacus) whose hidden states come
    back in the teacher's width. `hidden_projection=True` states that you train such a wrapper: a width
    mismatch is then reported as a missing wrapper instead of a missing projection. `layer_map` pairs student
    and teacher layers for hidden-state alignment (default_layer_map when None).
    """
    kd = kd or KDConfig()
    teacher.eval()  # soft labels without dropout; the teacher is never trained here
    if kd.alpha > 0:
        return _aligned_kd_loss_fn(teacher, kd, layer_map, hidden_projection)
    lam, temperature, teacher_context, weighting = kd.lam, kd.temperature, kd.teacher_context, kd.weighting

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


def _aligned_kd_loss_fn(teacher, kd: KDConfig, layer_map, hidden_projection):
    """make_kd_loss_fn with hidden-state alignment: kd_loss on the whole (B, T, V) logits and the paired layers."""
    weighted_kd_loss = functools.partial(
        kd_loss, lam=kd.lam, temperature=kd.temperature, alpha=kd.alpha, weighting=kd.weighting
    )
    teacher_context = kd.teacher_context

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
            raise width_error(s_width, t_width)
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
