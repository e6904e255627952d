"""Training a causal language model with DP-SGD, or without privacy at epsilon = inf: `train_causal_lm`.

Both runs are set up the same way here (checks, seeds, optimizer, learning-rate schedule, report: a
`distildp.lm.training.TrainingLoop`) and differ only in their loop. With a privacy budget it is DP-SGD's on Opacus
(`distildp.dp.private_training`): batches are Poisson-sampled (each example joins each step independently with
probability q = batch_size / N, the accountant's assumption), every example's gradient is clipped to
`max_grad_norm`, Gaussian noise is added once per logical batch, and large logical batches are split into physical
ones (each Poisson batch sorted by length first, so the physical batches pad little; the sum of clipped gradients
does not depend on the order). With epsilon = inf it is the plain loop below, on shuffled batches with no Opacus at
all. Data-parallel (`data_parallel=True`, N processes under torchrun) each process samples its own share of the
examples at the same q, and Opacus' distributed optimizers sum the clipped gradients over the processes and add the
noise once: the privacy of one process.

DP-SGD's settings are `distildp.dp.config`'s; the optimisation settings, the report, batches and the per-sequence
loss are `distildp.lm.training`'s. Training kept at its best held-out check, and public pretraining, are
`distildp.dp.public_training`'s.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from distildp.core import distributed
from distildp.dp.config import PrivacyConfig
from distildp.dp.private_training import train_private
from distildp.lm.training import (
    OPTIMIZERS,
    SCHEDULES,
    Batch,
    LossFn,
    TrainConfig,
    TrainingLoop,
    TrainReport,
    collate_lm,
    length_chunks,
    lm_loss_per_sequence,
    poisson_schedule,
    secret_seed,
    to_device,
)


def train_causal_lm(
    model: nn.Module,
    examples: Sequence[Mapping[str, Any]],
    train_cfg: TrainConfig,
    privacy_cfg: PrivacyConfig | None = None,
    loss_fn: LossFn = lm_loss_per_sequence,
    collate_fn: Callable[[list], Batch] | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    pad_id: int | None = None,
    data_parallel: bool = False,
) -> TrainReport:
    """Train `model` in place on `examples` (dicts with `input_ids`, optional `loss_mask`).

    `collate_fn(list_of_examples) -> batch dict` defaults to `collate_lm` with `pad_id` (default: the
    model config's pad or eos id); extra keys flow to `loss_fn(model, batch) -> (B,)`.
    `on_step(step, loss)` is called after every optimizer step; in non-private training a True return stops it
    (e.g. once a held-out perplexity has converged). Returns a TrainReport.

    data_parallel: this is one of the processes of a data-parallel DP-SGD run (`distildp.core.distributed.init`),
    each called with the same arguments; together they spend the privacy of one process (see the module docstring).
    """
    p = privacy_cfg or PrivacyConfig()
    n = len(examples)
    _check_train_config(train_cfg, n)
    p.check(n)
    rank, world = _data_parallel_group(data_parallel, p, n)
    lengths = _lengths_within_context(model, examples)
    sample_rate, steps = poisson_schedule(n, train_cfg)
    sampler_rng = _seed_randomness(train_cfg.seed, rank, p)
    untied = p.private and p.grad_sample_mode == "ghost" and untie_embeddings(model)
    optimizer = _optimizer(model, train_cfg, private=p.private)
    scheduler = _schedule(optimizer, train_cfg, steps)
    report = _new_report(n, sample_rate, train_cfg, p, untied)
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="DP-SGD" if p.private else "train", disable=not progress)
    loop = TrainingLoop(
        model,
        examples,
        lengths,
        collate_fn if collate_fn is not None else _padding_collate(model, pad_id),
        loss_fn,
        optimizer,
        train_cfg,
        report,
        steps,
        physical=train_cfg.physical_batch_size or train_cfg.batch_size,
        sampler_rng=sampler_rng,
        device=next(model.parameters()).device,
        finish_step=_step_finisher(scheduler, report, bar, on_step),
        data_parallel=data_parallel,
        rank=rank,
        world_size=world,
    )
    _run(loop, p, bar)
    model.eval()
    report.wall_time_s = time.perf_counter() - start
    return report


def _run(loop: TrainingLoop, p: PrivacyConfig, bar) -> None:
    """DP-SGD's loop, or the plain one; the progress bar is closed even when training raises (a bar left open
    keeps writing to its stream)."""
    try:
        if p.private:
            train_private(loop, p)
        else:
            _train_plain(loop)
    finally:
        bar.close()


# ------------------------------------------------------------------------------------- setting up a run
def _check_train_config(train_cfg: TrainConfig, n: int) -> None:
    if n == 0:
        raise ValueError("no training examples: pass a non-empty list of dicts with 'input_ids'.")
    if train_cfg.batch_size < 1 or train_cfg.batch_size > n:
        raise ValueError(
            f"batch_size={train_cfg.batch_size} with {n} examples gives sample rate "
            f"{train_cfg.batch_size / n:.3g}; need 1 <= batch_size <= N (use more data or a smaller "
            f"batch)."
        )
    if train_cfg.physical_batch_size is not None and train_cfg.physical_batch_size < 1:
        raise ValueError(f"physical_batch_size={train_cfg.physical_batch_size}; use >= 1 or None.")
    if not train_cfg.epochs > 0 or (train_cfg.max_steps is not None and train_cfg.max_steps < 1):
        raise ValueError(
            f"epochs={train_cfg.epochs}, max_steps={train_cfg.max_steps}: need epochs > 0 and max_steps >= 1."
        )
    if train_cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={train_cfg.optimizer!r}; choose one of {OPTIMIZERS}.")
    if train_cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule={train_cfg.schedule!r}; choose one of {SCHEDULES}.")
    if not train_cfg.lr > 0 or train_cfg.warmup_steps < 0:
        raise ValueError(f"lr={train_cfg.lr}, warmup_steps={train_cfg.warmup_steps}: need lr > 0, warmup_steps >= 0.")


def _data_parallel_group(data_parallel: bool, privacy_cfg: PrivacyConfig, n: int) -> tuple[int, int]:
    """(rank, world size) of this process in a data-parallel run; (0, 1) otherwise."""
    if not data_parallel:
        return 0, 1
    if not privacy_cfg.private:
        raise ValueError(
            "data_parallel=True is for DP-SGD; non-private training runs in one process: leave data_parallel out."
        )
    if not distributed.is_initialized():
        raise ValueError(
            "data_parallel=True needs the process group of the run: launch the processes with torchrun and call "
            "distildp.core.distributed.init(world_size) first."
        )
    world = distributed.world_size()
    if n < world:
        raise ValueError(f"{n} examples cannot be shared by {world} processes; use at most {n} processes.")
    return distributed.rank(), world


def untie_embeddings(model: nn.Module) -> bool:
    """Give the output layer its own copy of the input embedding (ghost clipping refuses tied weights).

    Returns True when the weights were tied (and are now separate, starting equal).
    """
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None or get_out() is None:
        return False
    inp, out = get_in(), get_out()
    if out.weight is not inp.weight:
        return False
    out.weight = nn.Parameter(inp.weight.detach().clone())
    if getattr(model, "config", None) is not None:
        model.config.tie_word_embeddings = False  # so save/load keeps them apart
    return True


def _padding_collate(model: nn.Module, pad_id: int | None) -> Callable[[list], Batch]:
    """`collate_lm` padding with `pad_id`, or else the model config's pad or eos id (or 0)."""
    config = getattr(model, "config", None)
    pad = pad_id if pad_id is not None else getattr(config, "pad_token_id", None)
    pad = pad if pad is not None else getattr(config, "eos_token_id", None) or 0
    return lambda exs: collate_lm(exs, pad)


def _lengths_within_context(model: nn.Module, examples: Sequence[Mapping[str, Any]]) -> list[int]:
    """Tokens per example (for length-sorted batches), each checked against the model's context."""
    context = getattr(getattr(model, "config", None), "n_positions", None)
    lengths = [len(ex["input_ids"]) for ex in examples]
    longest = max(lengths)
    if context is not None and longest > context:
        raise ValueError(
            f"an example has {longest} tokens but the model's context is {context}; "
            f"split or truncate documents to at most {context} tokens."
        )
    return lengths


def _seed_randomness(seed: int, rank: int, p: PrivacyConfig) -> torch.Generator:
    """Seed dropout from the training seed, and return the generator of the batches: OS entropy for DP-SGD with
    secret randomness (no published seed determines its Poisson batches), the training seed otherwise."""
    torch.manual_seed(distributed.rank_seed(seed, rank))  # dropout
    secret = p.private and p.secret_randomness
    return torch.Generator().manual_seed(secret_seed() if secret else distributed.rank_seed(seed, rank))


def _optimizer(model: nn.Module, cfg: TrainConfig, private: bool) -> torch.optim.Optimizer:
    trainable = [param for param in model.parameters() if param.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # non-private steps take the fused AdamW (one kernel for every parameter); DP-SGD keeps the default, which
    # Opacus' optimizers are tested against
    return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=not private)


def _schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int):
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    if cfg.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    return get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, steps)


def _new_report(n: int, sample_rate: float, train_cfg: TrainConfig, p: PrivacyConfig, untied: bool) -> TrainReport:
    """The report of a run yet to take its first step; DP-SGD's loop fills in the privacy it spends."""
    report = TrainReport(
        steps=0,
        sample_rate=sample_rate,
        noise_multiplier=0.0,
        epsilon_spent=math.inf,
        delta=None,
        accountant=None,
        max_grad_norm=None,
        grad_sample_mode=None,
        tied_embeddings_untied=untied,
        target_epsilon=p.target_epsilon,
        batch_size=train_cfg.batch_size,
        epochs=train_cfg.epochs,
        n_examples=n,
    )
    if untied:
        report.notes.append("lm_head untied from the input embedding for ghost clipping")
    return report


def _step_finisher(scheduler, report: TrainReport, bar, on_step) -> Callable[[float, int], bool]:
    """What follows each optimizer step: the learning-rate schedule, the report's count and mean loss, the progress
    bar, and `on_step` (whose True stops non-private training)."""

    def finish_step(loss_sum: float, count: int) -> bool:
        scheduler.step()
        report.steps += 1
        loss = loss_sum / count if count else math.nan
        report.losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        return bool(on_step(report.steps, loss)) if on_step is not None else False

    return finish_step


# ------------------------------------------------------------------------------------- the plain loop
def _train_plain(loop: TrainingLoop) -> None:
    """Shuffled (or length-grouped) batches, gradients accumulated over physical batches; no noise, no clipping."""
    grouping = loop.lengths if loop.train_cfg.group_by_length else None
    n = len(loop.examples)
    for indices in _shuffled_batches(n, loop.train_cfg.batch_size, loop.steps, loop.sampler_rng, grouping):
        loop.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for chunk in length_chunks(indices, loop.lengths, loop.physical):  # pads less; the same sum
            batch = loop.collate_fn([loop.examples[i] for i in chunk])
            per_seq = loop.loss_fn(loop.model, to_device(batch, loop.device))
            (per_seq.sum() / len(indices)).backward()
            loss_sum += per_seq.detach().sum().item()
        loop.optimizer.step()
        if loop.finish_step(loss_sum, len(indices)):
            break


def _shuffled_batches(
    n: int, batch_size: int, steps: int, generator: torch.Generator, lengths: list[int] | None = None
) -> Iterator[list[int]]:
    """Non-private sampling: a fresh permutation per epoch, cut into batches (the last may be short).

    With `lengths`, each epoch's batches hold similar lengths (transformers' get_length_grouped_indices: a
    permutation sorted by length within mega-batches of 50 batches) and are then taken in random order:
    sorted mega-batches alone would run every quarter-epoch from long documents to short ones."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    taken = 0
    while True:
        if lengths is None:
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = get_length_grouped_indices(lengths, batch_size, generator=generator)
        batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
        if lengths is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        for batch in batches:
            if taken == steps:
                return
            taken += 1
            yield batch
