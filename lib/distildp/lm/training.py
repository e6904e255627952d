"""What a training run is, shared by the plain loop and DP-SGD's (`distildp.dp.dpsgd`, `distildp.dp.private_training`):
its optimisation settings (`TrainConfig`; DP-SGD's own are `distildp.dp.config`'s), what it reports (`TrainReport`,
with the privacy record every artifact keeps), the Poisson schedule the accountant sees, batches and the
per-sequence loss, and `TrainingLoop`, what `train_causal_lm` sets up once for either loop.

The privacy unit is one example (one sequence), so a loss function returns one number per sequence:
`loss_fn(model, batch) -> (B,)`, the mean over that sequence's scored tokens. A token-weighted batch
mean would scale each example's gradient by its share of the batch's tokens, which depends on the other
examples in the batch.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from distildp.lm.fused_loss import sequence_losses, student_logits, token_losses

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]

SCHEDULES = ("constant", "warmup_linear")
OPTIMIZERS = ("adamw", "sgd")


def secret_seed() -> int:
    """A seed from the OS's entropy pool: no published seed determines it."""
    return secrets.randbits(63)


# ------------------------------------------------------------------------------------------ configs
@dataclass
class TrainConfig:
    """Optimisation settings. `batch_size` is the logical (expected, for Poisson) batch size."""

    epochs: float = 1.0
    batch_size: int = 32
    physical_batch_size: int | None = None  # memory cap per forward/backward; None = batch_size
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # 'constant' (after warm-up) or 'warmup_linear' (decay to 0)
    seed: int = 0
    max_steps: int | None = None  # cap on optimizer steps (privacy is accounted for the steps taken)
    optimizer: str = "adamw"  # 'adamw', or 'sgd' (plain DP-SGD, as in the teaching notebooks)
    # Non-private training only: batches of similar lengths (transformers' Trainer group_by_length), so less
    # padding is computed. DP-SGD ignores it: its batches are Poisson samples (and sorted within, exactly).
    group_by_length: bool = False


@dataclass
class TrainReport:
    """What a training run did, including the privacy it spent."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    epsilon_spent: float
    delta: float | None
    accountant: str | None
    max_grad_norm: float | None
    grad_sample_mode: str | None
    tied_embeddings_untied: bool
    target_epsilon: float
    batch_size: int
    epochs: float
    n_examples: int
    randomness: str = ""  # how the Poisson batches and the noise were drawn, for DP runs
    world_size: int = 1  # processes that trained together (data-parallel DP-SGD)
    backend: str | None = None  # their process group's backend (gloo, nccl); None for one process
    losses: list[float] = field(default_factory=list)  # mean training loss per step (not private)
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon_spent)

    def privacy_record(self) -> dict[str, Any]:
        """The manifest's `privacy` record: epsilon, delta, accountant, sigma, sampling rate and steps."""
        return {
            "epsilon": self.epsilon_spent,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "max_grad_norm": self.max_grad_norm,
            "private": self.private,
            "grad_sample_mode": self.grad_sample_mode,
            "randomness": self.randomness,
            "tied_embeddings_untied": self.tied_embeddings_untied,
            "world_size": self.world_size,
            "backend": self.backend,
            "notes": list(self.notes),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------- batches, loss
def collate_lm(examples: Sequence[Mapping[str, Any]], pad_id: int) -> Batch:
    """Right-padded batch: input_ids, attention_mask, position_ids, loss_mask (all (B, T)).

    loss_mask[b, t] = 1 where input_ids[b, t] is a scored target; the first token never is. An
    example's own `loss_mask` (aligned with its input_ids) is honoured. An empty list gives (0, 0)
    tensors, so an empty Poisson batch still has the right keys.
    """
    lengths = torch.tensor([len(ex["input_ids"]) for ex in examples], dtype=torch.long)
    for row in (lengths < 2).nonzero().flatten().tolist()[:1]:
        raise ValueError(
            f"example {row} has {int(lengths[row])} input_ids; a sequence needs [eos] + at least one token."
        )
    rows, length = len(examples), int(lengths.max()) if len(examples) else 0
    ids = [torch.as_tensor(ex["input_ids"], dtype=torch.long) for ex in examples]
    input_ids = (
        pad_sequence(ids, batch_first=True, padding_value=pad_id) if rows else torch.zeros(0, 0, dtype=torch.long)
    )
    positions = torch.arange(length)
    attention_mask = (positions < lengths.unsqueeze(1)).long()
    loss_mask = (attention_mask * (positions > 0)).float()  # every token after the first
    for row, ex in enumerate(examples):
        if "loss_mask" in ex:
            n = len(ex["input_ids"])
            if len(ex["loss_mask"]) != n:
                raise ValueError(
                    f"example {row}: loss_mask has {len(ex['loss_mask'])} entries, input_ids {n}; make them equal."
                )
            loss_mask[row, 1:n] = torch.as_tensor(ex["loss_mask"][1:], dtype=torch.float)
    # Explicit positions: Opacus hooks need a (B, T) tensor (not a broadcast (1, T)), and ghost
    # clipping needs it contiguous, hence .repeat rather than .expand. Right padding: rows start at 0.
    position_ids = torch.arange(length).repeat(rows, 1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "loss_mask": loss_mask,
    }


def lm_loss_per_sequence(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-sequence mean next-token NLL over scored tokens, shape (B,) (`distildp.lm.fused_loss`: one softmax, the
    gradient in closed form, and for a model no clipping hook watches, the output layer on scored positions only)."""
    logits, rows, _ = student_logits(model, batch)
    ce, _ = token_losses(logits, rows.target)
    return sequence_losses(ce, None, rows.example, rows.weight, batch["input_ids"].shape[0])


def poisson_schedule(n: int, train_cfg: TrainConfig) -> tuple[float, int]:
    """(sample rate q = batch_size / N, optimizer steps = epochs / q, capped by max_steps): what the accountant sees."""
    sample_rate = train_cfg.batch_size / n
    steps = max(1, round(train_cfg.epochs / sample_rate))
    if train_cfg.max_steps is not None:
        steps = min(steps, train_cfg.max_steps)
    return sample_rate, steps


def split_batch(batch: list[int], size: int) -> list[list[int]]:
    """A logical batch's indices cut into physical batches of at most `size` (an empty batch stays one, empty)."""
    return [batch[i : i + size] for i in range(0, len(batch), size)] or [[]]


# What one more forward and backward pass costs beyond its tokens, in padded positions: a pass's fixed overhead
# on the tiny models is the time of some 100-150 positions of its work (docs/performance.md).
PASS_COST = 128


def length_chunks(batch: list[int], lengths: Sequence[int], size: int, pass_cost: int = PASS_COST) -> list[list[int]]:
    """A logical batch's indices cut into physical batches of at most `size`, each of similar lengths, so that
    padding is small: the cut that minimises the positions computed (each pass padded to its longest example) plus
    `pass_cost` per pass. A few long examples among short ones then get a pass of their own rather than padding
    every other example to their length. The gradient summed over the passes is the batch's, however it is cut."""
    order = sorted(batch, key=lengths.__getitem__)
    if not order:
        return [[]]
    # best[j]: the cheapest cut of the j shortest; a pass holds order[i:j] and costs its size times its longest
    best, cut = [0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(max(0, j - size), j):
            cost = best[i] + pass_cost + (j - i) * lengths[order[j - 1]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], len(order)
    while j:
        chunks.append(order[cut[j] : j])
        j = cut[j]
    return chunks[::-1]


def to_device(batch: Mapping[str, Any], device: torch.device) -> Batch:
    """A collated batch's tensors on `device`."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@dataclass
class TrainingLoop:
    """What train_causal_lm sets up once for either loop (plain or DP-SGD): data, optimizer, step bookkeeping."""

    model: nn.Module
    examples: Sequence[Mapping[str, Any]]
    lengths: list[int]  # tokens per example: batches are sorted by them, so physical batches pad little
    collate_fn: Callable[[list], Batch]
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    train_cfg: TrainConfig
    report: TrainReport
    steps: int  # optimizer steps to take
    physical: int  # examples per forward and backward pass
    sampler_rng: torch.Generator
    device: torch.device
    finish_step: Callable[[float, int], bool]  # after each optimizer step: True stops (non-private) training
    data_parallel: bool = False  # one of the processes of a data-parallel DP-SGD run
    rank: int = 0
    world_size: int = 1
