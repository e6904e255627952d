"""The frozen teacher's outputs over a whole synthetic set, computed once before the student trains on it.

A student distils from a teacher that never changes, so the teacher's soft labels are the same every epoch. Two
caches, each attached to the examples (collate_kd batches them):

- `attach_teacher_probs`: the teacher's probabilities at every scored position, in float16 (vocabulary-sized rows,
  2 bytes an entry), and their negative entropy in float32: a step then needs neither the teacher's body nor its
  output layer nor its softmax. Float16 rounds a probability by at most 2^-11 of itself (the KL's gradient,
  softmax - p_teacher, moves by as much); below 6e-8 it keeps absolute steps of 6e-8.
- `attach_teacher_states`: its last hidden states (width floats a token): a step runs only its output layer.

Which one fits in memory is the caller's choice (`synthetic_training.train_on_synthetic`, `teacher_cache_gib`).
Hidden-state alignment needs the teacher's intermediate layers every step: it runs the teacher live.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from distildp.distill.kd import KDConfig
from distildp.distill.kd_batches import collate_kd, teacher_at_student_positions
from distildp.lm.fused_loss import teacher_rows


def teacher_states_bytes(teacher: nn.Module, examples: Sequence[Mapping[str, Any]]) -> int:
    """What attach_teacher_states would hold in memory: one float per student token and teacher width."""
    element = next(teacher.parameters()).element_size()
    return sum(len(ex["input_ids"]) for ex in examples) * teacher.config.hidden_size * element


def teacher_probs_bytes(teacher: nn.Module, examples: Sequence[Mapping[str, Any]]) -> int:
    """What attach_teacher_probs would hold in memory: a float16 per scored position and vocabulary entry."""
    return sum(len(ex["input_ids"]) - 1 for ex in examples) * (teacher.config.vocab_size * 2 + 4)


def _teacher_batches(teacher, examples, pad_id, teacher_context, batch_size, progress, desc):
    """(example indices, the teacher's last states at their student positions (B, T, width)) in batches of
    similar lengths, without gradients."""
    teacher.eval()
    device = next(teacher.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            chunk = order[start : start + batch_size]
            batch = collate_kd([examples[i] for i in chunk], pad_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            hidden, _ = teacher_at_student_positions(teacher, batch, teacher_context)
            yield chunk, hidden


def attach_teacher_states(
    teacher: nn.Module,
    examples: Sequence[Mapping[str, Any]],
    pad_id: int,
    teacher_context: str = "code_prefix",
    batch_size: int = 64,
    progress: bool = False,
) -> list[dict]:
    """The examples with the teacher's last hidden states at the student's positions (`teacher_states`, (T_i,
    width)): each step then runs only the teacher's output layer. Equal to the live teacher up to float rounding
    (batches pad differently)."""
    states: list[torch.Tensor | None] = [None] * len(examples)
    batches = _teacher_batches(teacher, examples, pad_id, teacher_context, batch_size, progress, "teacher states")
    for chunk, hidden in batches:
        for row, i in enumerate(chunk):
            states[i] = hidden[row, : len(examples[i]["input_ids"])].cpu()
    return [{**ex, "teacher_states": state} for ex, state in zip(examples, states)]


def attach_teacher_probs(
    teacher: nn.Module,
    examples: Sequence[Mapping[str, Any]],
    pad_id: int,
    kd: KDConfig | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[dict]:
    """The examples with the teacher's probabilities at the KD loss's temperature t (`kd`, default KDConfig()) at
    every scored position (`teacher_probs`, (T_i - 1, V) float16: position j predicts token j + 1) and their sum
    p log p (`teacher_neg_entropy`, float32); the teacher reads the context `kd.teacher_context` names.

    For examples whose every token after the first is a target (no `loss_mask` of their own), as synthetic text is;
    collate_kd then packs the rows of a batch in the order `fused_loss.scored_positions` takes them."""
    if any("loss_mask" in ex for ex in examples):
        raise ValueError(
            "attach_teacher_probs caches every position after the first; these examples carry their own loss_mask: "
            "cache the teacher's states instead (attach_teacher_states)."
        )
    kd = kd or KDConfig()
    lengths = [len(ex["input_ids"]) - 1 for ex in examples]
    vocab = teacher.config.vocab_size
    probs = torch.empty(sum(lengths), vocab, dtype=torch.float16)  # one allocation for the whole set
    neg_entropy = torch.empty(sum(lengths))
    starts = torch.tensor([0] + lengths).cumsum(0).tolist()
    head = teacher.get_output_embeddings()
    batches = _teacher_batches(
        teacher, examples, pad_id, kd.teacher_context, batch_size, progress, "teacher soft labels"
    )
    with torch.no_grad():
        for chunk, hidden in batches:
            length = hidden.shape[1]
            positions = torch.cat([row * length + torch.arange(lengths[i]) for row, i in enumerate(chunk)])
            destinations = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in chunk])
            rows = teacher_rows(head(hidden.reshape(-1, hidden.shape[-1])[positions.to(hidden.device)]), kd.temperature)
            probs.index_copy_(0, destinations, rows.probs.to("cpu", torch.float16))
            neg_entropy.index_copy_(0, destinations, rows.neg_entropy.cpu())
    cached = []
    for i, ex in enumerate(examples):
        rows = slice(starts[i], starts[i + 1])
        cached.append({**ex, "teacher_probs": probs[rows], "teacher_neg_entropy": neg_entropy[rows]})
    return cached
