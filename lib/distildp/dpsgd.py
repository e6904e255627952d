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

The privacy unit is one example (one sequence), so a loss function returns one number per sequence:
`loss_fn(model, batch) -> (B,)`, the mean over that sequence's scored tokens. A token-weighted batch
mean would scale each example's gradient by its share of the batch's tokens, which depends on the other
examples in the batch.
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distildp import distributed, privacy
from distildp.models import encode_plain

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]

# What a manifest says about where the DP randomness came from.
RANDOMNESS = {
    "secret": "secret: Poisson batches and noise drawn from OS entropy",
    "reproducible": "reproducible: noise derived from the published seed, not a releasable model",
}
GRAD_SAMPLE_MODES = ("hooks", "ghost", "bookkeeping")
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
class PrivacyConfig:
    """DP-SGD settings. target_epsilon = math.inf (and no noise_multiplier) means non-private."""

    target_epsilon: float = math.inf
    delta: float | str | None = None  # None: below 1/N; 'paper': 1/N (see distildp.privacy.resolve_delta)
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    noise_multiplier: float | None = None  # None: calibrated so the run spends target_epsilon
    # 'hooks' (handles tied embeddings), 'ghost' (unties them) or 'bookkeeping' (one backward pass, keeps
    # them tied; distildp.bookkeeping)
    grad_sample_mode: str = "hooks"
    conv1d_sampler: bool = True  # use distildp.conv1d_grad_sampler for GPT-2's Conv1D layers
    allow_delta_one_over_n: bool = False  # the paper's delta = 1/N (weaker than the default)
    # The (epsilon, delta) guarantee assumes the Poisson batches and the noise are secret. True: both are drawn
    # from OS entropy, never from the training seed. False: derived from the seed, for teaching and benchmarks on
    # synthetic data (anyone with the seed can regenerate the noise: not a releasable model).
    secret_randomness: bool = True

    @property
    def private(self) -> bool:
        return math.isfinite(self.target_epsilon) or self.noise_multiplier is not None


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
    randomness: str = ""  # how the Poisson batches and the noise were drawn (RANDOMNESS), for DP runs
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
    length = max((len(ex["input_ids"]) for ex in examples), default=0)
    rows = len(examples)
    input_ids = torch.full((rows, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(rows, length, dtype=torch.long)
    loss_mask = torch.zeros(rows, length)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        if n < 2:
            raise ValueError(f"example {row} has {n} input_ids; a sequence needs [eos] + at least one token.")
        input_ids[row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
        attention_mask[row, :n] = 1
        if "loss_mask" in ex:
            if len(ex["loss_mask"]) != n:
                raise ValueError(
                    f"example {row}: loss_mask has {len(ex['loss_mask'])} entries, input_ids {n}; make them equal."
                )
            loss_mask[row, 1:n] = torch.as_tensor(ex["loss_mask"][1:], dtype=torch.float)
        else:
            loss_mask[row, 1:n] = 1.0
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
    """Per-sequence mean next-token NLL over scored tokens, shape (B,)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    ).logits
    targets = batch["input_ids"][:, 1:]
    # flattened to (tokens, vocab): cross_entropy over a transposed (B, V, T) view is several times slower on CPU
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    mask = batch["loss_mask"][:, 1:].to(nll.dtype)
    return (nll * mask).sum(1) / mask.sum(1).clamp_min(1.0)


# ---------------------------------------------------------------------------------- privacy helpers
def _epsilon_spent(
    opacus_accountant, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str
) -> tuple[float, list[str]]:
    """Epsilon over the steps taken, from the run's own Opacus accountant and from distildp.privacy
    (which the noise was calibrated with); the larger is reported, so the record never understates it."""
    if noise_multiplier == 0:
        return math.inf, ["noise_multiplier = 0: no privacy"]
    ours = float(opacus_accountant.get_epsilon(delta=delta))
    theirs = privacy.epsilon_spent([privacy.DPSGDMechanism(noise_multiplier, sample_rate, steps)], delta, accountant)
    return max(ours, theirs), [f"epsilon ({accountant}): opacus accountant {ours:.6g}, distildp.privacy {theirs:.6g}"]


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
            "distildp.distributed.init(world_size) first."
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


def _split(batch: list[int], size: int) -> list[list[int]]:
    return [batch[i : i + size] for i in range(0, len(batch), size)] or [[]]


def _to_device(batch: Mapping[str, Any], device: torch.device) -> Batch:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def poisson_schedule(n: int, train_cfg: TrainConfig) -> tuple[float, int]:
    """(sample rate q = batch_size / N, optimizer steps = epochs / q, capped by max_steps): what the accountant sees."""
    sample_rate = train_cfg.batch_size / n
    steps = max(1, round(train_cfg.epochs / sample_rate))
    if train_cfg.max_steps is not None:
        steps = min(steps, train_cfg.max_steps)
    return sample_rate, steps


@dataclass
class _Loop:
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

    data_parallel: this is one of the processes of a data-parallel DP-SGD run (`distildp.distributed.init`), each
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
        optimizer = torch.optim.AdamW(trainable, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
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

    loop = _Loop(
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
            _train_private(loop, p)
        else:
            _train_plain(loop)
    finally:
        bar.close()  # also when training raises: a bar left open keeps writing to its stream
    model.eval()
    report.wall_time_s = time.perf_counter() - start
    return report


def _train_plain(loop: _Loop) -> None:
    """Shuffled (or length-grouped) batches, gradients accumulated over physical batches; no noise, no clipping."""
    grouping = loop.lengths if loop.train_cfg.group_by_length else None
    n = len(loop.examples)
    for indices in _shuffled_batches(n, loop.train_cfg.batch_size, loop.steps, loop.sampler_rng, grouping):
        loop.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        indices = sorted(indices, key=loop.lengths.__getitem__)  # pads less; same sum
        for chunk in _split(indices, loop.physical):
            batch = loop.collate_fn([loop.examples[i] for i in chunk])
            per_seq = loop.loss_fn(loop.model, _to_device(batch, loop.device))
            (per_seq.sum() / len(indices)).backward()
            loss_sum += per_seq.detach().sum().item()
        loop.optimizer.step()
        if loop.finish_step(loss_sum, len(indices)):
            break


class _PerSequenceLoss:
    """Identity 'criterion' for Opacus ghost clipping: our loss_fn already returns (B,) losses."""

    reduction = "mean"

    def __call__(self, per_sequence: torch.Tensor) -> torch.Tensor:
        return per_sequence


def _train_private(loop: _Loop, p: PrivacyConfig) -> None:
    """DP-SGD on Opacus: Poisson batches, per-example clipping (hooks, ghost or book-keeping), noise once per
    logical batch, and the accountant stepped at the true sample rate."""
    from opacus import PrivacyEngine
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from distildp.conv1d_grad_sampler import conv1d_sampler

    model, report, train_cfg, steps = loop.model, loop.report, loop.train_cfg, loop.steps
    n, q = len(loop.examples), report.sample_rate
    delta = privacy.resolve_delta(p.delta, n, allow_one_over_n=p.allow_delta_one_over_n)
    sigma = p.noise_multiplier
    if sigma is None:
        sigma = privacy.calibrate_noise(p.target_epsilon, delta, q, steps, p.accountant)
    ghost = p.grad_sample_mode == "ghost"
    bookkeeping = p.grad_sample_mode == "bookkeeping"

    # Poisson sampling with q = batch_size / N exactly, for all the steps in one pass. Empty index
    # lists reach the loop as None (GPT-2 cannot run a forward pass on zero rows). Data-parallel, each process
    # samples its own disjoint share of the examples at the same q: the union is a Poisson batch of all of them.
    # (Opacus' DistributedUniformWithReplacementSampler skips empty batches: the processes would fall out of
    # step with each other, and the accountant would count steps that were never taken.)
    share = range(loop.rank, n, loop.world_size)
    poisson = UniformWithReplacementSampler(
        num_samples=len(share), sample_rate=q, generator=loop.sampler_rng, steps=steps
    )
    loader = DataLoader(
        [loop.examples[i] for i in share],
        batch_sampler=_ShortestFirst(poisson, [loop.lengths[i] for i in share]),
        collate_fn=lambda exs: loop.collate_fn(exs) if exs else None,
    )
    noise_rng = torch.Generator(device=loop.device).manual_seed(
        secret_seed() if p.secret_randomness else train_cfg.seed + 1
    )
    with conv1d_sampler(p.conv1d_sampler), warnings.catch_warnings():
        # Seeded noise is for reproducible research; Opacus' secure_mode is the production switch.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs are token ids
        engine = PrivacyEngine(accountant=p.accountant)
        criterion = None
        # Opacus' wrapper broadcasts rank 0's weights, and makes make_private choose its distributed optimizers:
        # they all-reduce the clipped sums and add noise on rank 0 only. The loss still calls `model` itself,
        # whose layers carry the hooks.
        module = DPDDP(model) if loop.data_parallel else model
        if bookkeeping:
            hooks, dp_optimizer = _bookkeeping_private(
                engine, model, loop.optimizer, sigma, p.max_grad_norm, noise_rng, loop.data_parallel
            )
        else:
            made = engine.make_private(
                module=module,
                optimizer=loop.optimizer,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=p.max_grad_norm,
                poisson_sampling=False,  # our loader already samples
                grad_sample_mode=p.grad_sample_mode,
                criterion=_PerSequenceLoss(),
                wrap_model=False,
                noise_generator=noise_rng,
            )
            hooks, dp_optimizer = made[0], made[1]
            criterion = made[2] if ghost else None
        # make_private infers q as 1/len(loader) (= 1/steps here); point the averaging and the
        # accountant at the true q = batch_size / N instead. Opacus' distributed optimizers divide the
        # all-reduced sum by the world size once more, so they take the expected batch size per process.
        dp_optimizer.expected_batch_size = (
            train_cfg.batch_size / loop.world_size if loop.data_parallel else train_cfg.batch_size
        )
        account = engine.accountant.get_optimizer_hook_fn(sample_rate=q)
        stepped = []

        def on_noisy_step(opt) -> None:  # runs once per logical batch, after noise is added
            account(opt)
            stepped.append(True)

        dp_optimizer.attach_step_hook(on_noisy_step)
        try:
            loss_sum, count = 0.0, 0
            with BatchMemoryManager(
                data_loader=loader, max_physical_batch_size=loop.physical, optimizer=dp_optimizer
            ) as physical_loader:
                for batch in physical_loader:
                    if batch is None:
                        _empty_gradients(dp_optimizer, ghost or bookkeeping)
                    else:
                        per_seq = loop.loss_fn(model, _to_device(batch, loop.device))
                        if bookkeeping:
                            hooks.backward(per_seq)  # p.grad = this physical batch's clipped sum
                        else:
                            (criterion(per_seq) if ghost else per_seq.mean()).backward()
                        loss_sum += per_seq.detach().sum().item()
                        count += per_seq.shape[0]
                    dp_optimizer.step()  # clips; at a logical batch's end also adds noise and steps
                    dp_optimizer.zero_grad(set_to_none=True)
                    if stepped:
                        stepped.clear()
                        if loop.data_parallel:  # the reported loss is the global batch's
                            loss_sum, count = distributed.sum_over_ranks([loss_sum, count])
                        loop.finish_step(loss_sum, int(count))
                        loss_sum, count = 0.0, 0
        finally:
            hooks.cleanup()  # the model leaves with no Opacus hooks or attributes
    if any(entry[1] != q for entry in engine.accountant.history):  # a guard on the override above
        raise RuntimeError(f"the accountant saw sample rates {engine.accountant.history}, not q = {q}")
    report.noise_multiplier, report.delta, report.accountant = float(sigma), delta, p.accountant
    report.max_grad_norm, report.grad_sample_mode = p.max_grad_norm, p.grad_sample_mode
    report.epsilon_spent, notes = _epsilon_spent(engine.accountant, sigma, q, report.steps, delta, p.accountant)
    sampler_note = "conv1d grad sampler: " + ("on" if p.conv1d_sampler else "off (functorch)")
    report.randomness = RANDOMNESS["secret" if p.secret_randomness else "reproducible"]
    report.notes += notes + [
        f"Poisson sampling, q = {train_cfg.batch_size}/{n}",
        "bookkeeping clipping" if bookkeeping else sampler_note,
    ]
    if loop.data_parallel:
        report.world_size, report.backend = loop.world_size, distributed.backend()
        report.notes.append(
            f"data-parallel over {loop.world_size} processes ({report.backend}): each Poisson-samples its own "
            f"1/{loop.world_size} of the examples at rate q; clipped gradients summed over them, noise added once"
        )


def _bookkeeping_private(engine, model, optimizer, sigma, max_grad_norm, noise_rng, data_parallel):
    """Book-keeping clipping's hooks and Opacus' optimizer for summed clipped gradients (ghost mode's):
    it accumulates each physical batch's `p.grad` over a logical batch, adds noise once and scales by the
    expected batch size; its distributed form also all-reduces the sums and adds the noise on rank 0 only.
    Sampling and accounting stay with the caller, as for make_private."""
    from opacus.optimizers import DistributedDPOptimizerFastGradientClipping, DPOptimizerFastGradientClipping

    from distildp.bookkeeping import BookkeepingClipper

    engine.validate(module=model, optimizer=None, data_loader=None)  # no layers that mix examples
    clipper = BookkeepingClipper(model, max_grad_norm)
    optimizer_class = DistributedDPOptimizerFastGradientClipping if data_parallel else DPOptimizerFastGradientClipping
    dp_optimizer = optimizer_class(
        optimizer,
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        expected_batch_size=1,  # set by the caller
        loss_reduction="mean",
        generator=noise_rng,
    )
    return clipper, dp_optimizer


class _ShortestFirst:
    """Each Poisson batch with its indices sorted by example length, so that the physical batches it is cut
    into (BatchMemoryManager) hold similar lengths and pad less. A logical batch's noisy gradient is the sum
    of its clipped per-example gradients: the order, and so this sort, changes neither it nor the privacy."""

    def __init__(self, poisson_sampler, lengths: list[int]):
        self.poisson_sampler, self.lengths = poisson_sampler, lengths

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.poisson_sampler:
            yield sorted(indices, key=self.lengths.__getitem__)

    def __len__(self) -> int:
        return len(self.poisson_sampler)


def _empty_gradients(dp_optimizer, ghost: bool) -> None:
    """An empty Poisson batch still takes a step: zero clipped gradients plus noise, so the
    accountant's count stays right. Opacus' optimizer handles zero-row per-sample gradients."""
    for param in dp_optimizer.params:
        if ghost:
            param.grad = torch.zeros_like(param)
        else:
            param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype, device=param.device)


# ----------------------------------------------------------------------------------------- pretraining
def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    cfg: TrainConfig | None = None,
    progress: bool = True,
) -> dict:
    """Non-private causal-LM pretraining on plain `texts` (long documents are split into context-sized windows).

    The same loop as private training (train_causal_lm with epsilon = inf). Returns metrics.
    """
    cfg = cfg or TrainConfig(epochs=1, batch_size=32, lr=1e-3, weight_decay=0.01, schedule="warmup_linear")
    examples = encode_plain(tokenizer, texts, model.config.n_positions, overflow="split")
    if not examples:
        raise ValueError("pretrain got no texts; pass a non-empty list of documents.")
    pad = tokenizer.pad_token_id
    report = train_causal_lm(model, examples, cfg, collate_fn=lambda batch: collate_lm(batch, pad), progress=progress)
    steps_per_epoch = max(1, math.ceil(len(examples) / cfg.batch_size))
    last = report.losses[-steps_per_epoch:]
    return {
        "train_loss": sum(last) / len(last),
        "first_loss": report.losses[0],
        "steps": report.steps,
        "examples": len(examples),
        "seconds": report.wall_time_s,
    }
