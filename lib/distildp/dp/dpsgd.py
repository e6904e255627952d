"""Private (DP-SGD, on Opacus) and non-private training of causal language models.

One loop serves both. With a privacy budget the model, optimizer and data go through
`opacus.PrivacyEngine`: batches are Poisson-sampled (each example joins each step independently with
probability q = batch_size / N, the accountant's assumption), every example's gradient is clipped to
`max_grad_norm`, Gaussian noise is added once per logical batch, and large logical batches are split
into physical ones by `BatchMemoryManager` (each Poisson batch sorted by length first, so the physical
batches pad little; the sum of clipped gradients does not depend on the order). With epsilon = inf the same
loop runs on shuffled batches with no Opacus at all. Data-parallel (`data_parallel=True`, N processes under
torchrun) each process samples its own share of the examples at the same q, and Opacus' distributed optimizers
sum the clipped gradients over the processes and add the noise once: the privacy of one process.

The DP-SGD loop itself is `distildp.dp.private_training`'s; the settings, the report, batches and the per-sequence
loss are `distildp.lm.training`'s.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distildp.core import distributed
from distildp.dp import privacy
from distildp.dp.private_training import train_private
from distildp.lm.evaluate import BestOnHeldOut
from distildp.lm.models import encode_with_prefix
from distildp.lm.training import (
    GRAD_SAMPLE_MODES,
    OPTIMIZERS,
    SCHEDULES,
    Batch,
    LossFn,
    PrivacyConfig,
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


# ------------------------------------------------------------------------------------- the training
def _validate(n: int, train_cfg: TrainConfig, privacy_cfg: PrivacyConfig) -> None:
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
    p = privacy_cfg
    if not p.target_epsilon > 0:
        raise ValueError(f"target_epsilon={p.target_epsilon}; epsilon must be > 0 (math.inf = non-private).")
    if p.private:
        privacy.resolve_delta(p.delta, n, allow_one_over_n=p.allow_delta_one_over_n)  # raises clear errors
    if p.accountant not in privacy.ACCOUNTANTS:
        raise ValueError(f"accountant={p.accountant!r}; choose one of {privacy.ACCOUNTANTS}.")
    if p.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode={p.grad_sample_mode!r}; choose one of {GRAD_SAMPLE_MODES}.")
    if not p.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={p.max_grad_norm}; the clipping norm must be > 0.")
    if p.noise_multiplier is not None and not p.noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier={p.noise_multiplier}; must be >= 0, or None to calibrate.")


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


def _schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int):
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    if cfg.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    return get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, steps)


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

    data_parallel: this is one of the processes of a data-parallel DP-SGD run (`distildp.core.distributed.init`), each
    called with the same arguments. Every process Poisson-samples its own share of the examples at the same rate
    q, so their union is a Poisson batch of all examples at rate q; the clipped per-example gradients are summed
    over the processes and noise is added once, so the privacy is that of one process.
    """
    privacy_cfg = privacy_cfg or PrivacyConfig()
    n = len(examples)
    _validate(n, train_cfg, privacy_cfg)
    rank, world = _data_parallel_group(data_parallel, privacy_cfg, n)
    if collate_fn is None:
        config = getattr(model, "config", None)
        pad = pad_id if pad_id is not None else getattr(config, "pad_token_id", None)
        pad = pad if pad is not None else getattr(config, "eos_token_id", None) or 0
        collate_fn = lambda exs: collate_lm(exs, pad)  # noqa: E731
    context = getattr(getattr(model, "config", None), "n_positions", None)
    lengths = [len(ex["input_ids"]) for ex in examples]  # for the context check and length-sorted batches
    longest = max(lengths)
    if context is not None and longest > context:
        raise ValueError(
            f"an example has {longest} tokens but the model's context is {context}; "
            f"split or truncate documents to at most {context} tokens."
        )
    sample_rate, steps = poisson_schedule(n, train_cfg)
    physical = train_cfg.physical_batch_size or train_cfg.batch_size

    p = privacy_cfg
    torch.manual_seed(distributed.rank_seed(train_cfg.seed, rank))  # dropout
    secret = p.private and p.secret_randomness
    sampler_rng = torch.Generator().manual_seed(
        secret_seed() if secret else distributed.rank_seed(train_cfg.seed, rank)
    )
    untied = p.private and p.grad_sample_mode == "ghost" and untie_embeddings(model)
    device = next(model.parameters()).device
    trainable = [param for param in model.parameters() if param.requires_grad]
    if train_cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    else:
        # non-private steps take the fused AdamW (one kernel for every parameter); DP-SGD keeps the default, which
        # Opacus' optimizers are tested against
        fused = not p.private
        optimizer = torch.optim.AdamW(trainable, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=fused)
    scheduler = _schedule(optimizer, train_cfg, steps)
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
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="DP-SGD" if p.private else "train", disable=not progress)

    def finish_step(loss_sum: float, count: int) -> bool:
        scheduler.step()
        report.steps += 1
        loss = loss_sum / count if count else math.nan
        report.losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        return bool(on_step(report.steps, loss)) if on_step is not None else False

    loop = TrainingLoop(
        model,
        examples,
        lengths,
        collate_fn,
        loss_fn,
        optimizer,
        train_cfg,
        report,
        steps,
        physical,
        sampler_rng,
        device,
        finish_step,
        data_parallel,
        rank,
        world,
    )
    try:
        if p.private:
            train_private(loop, p)
        else:
            _train_plain(loop)
    finally:
        bar.close()  # also when training raises: a bar left open keeps writing to its stream
    model.eval()
    report.wall_time_s = time.perf_counter() - start
    return report


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


# ----------------------------------------------------------------------------------------- model selection
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
