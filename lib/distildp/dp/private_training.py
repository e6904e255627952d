"""DP-SGD's loop on Opacus: Poisson batches at q = batch_size / N (each sorted by length before it is cut into
physical batches), every example's gradient clipped (`distildp.dp.clipping`: Opacus' hooks, ghost clipping or
book-keeping), noise added once per logical batch, and the accountant stepped at the true q; data-parallel, each
process samples its own share and Opacus' distributed optimizers add the noise once. `train_causal_lm` sets the run
up (`distildp.lm.training.TrainingLoop`) and calls `train_private`, which records the privacy spent in its report.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from distildp.core import distributed
from distildp.dp import epsilon_cache, privacy
from distildp.dp.calibration import calibrate_noise
from distildp.dp.clipping import CLIPPING_MODES, ClippingMode
from distildp.dp.config import PrivacyConfig
from distildp.lm.training import TrainingLoop, secret_seed, to_device


def train_private(loop: TrainingLoop, p: PrivacyConfig) -> None:
    """DP-SGD on Opacus: Poisson batches, per-example clipping, noise once per logical batch, and the accountant
    stepped at the true sample rate; the privacy spent goes into `loop.report`."""
    from opacus import PrivacyEngine
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

    from distildp.dp.conv1d_grad_sampler import conv1d_sampler

    n, q = len(loop.examples), loop.report.sample_rate
    delta = privacy.resolve_delta(p.delta, n, allow_one_over_n=p.allow_delta_one_over_n)
    sigma = p.noise_multiplier
    if sigma is None:
        sigma = calibrate_noise(p.target_epsilon, delta, q, loop.steps, p.accountant)
    loader = _poisson_batches(loop, q)
    noise_rng = torch.Generator(device=loop.device).manual_seed(
        secret_seed() if p.secret_randomness else loop.train_cfg.seed + 1
    )
    clipping = CLIPPING_MODES[p.grad_sample_mode]()
    with conv1d_sampler(p.conv1d_sampler), warnings.catch_warnings():
        # Seeded noise is for reproducible research; Opacus' secure_mode is the production switch.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs are token ids
        engine = PrivacyEngine(accountant=p.accountant)
        # Opacus' wrapper broadcasts rank 0's weights, and makes make_private choose its distributed optimizers:
        # they all-reduce the clipped sums and add noise on rank 0 only. The loss still calls `model` itself,
        # whose layers carry the hooks.
        module = DPDDP(loop.model) if loop.data_parallel else loop.model
        dp_optimizer = clipping.make_private(
            engine,
            model=loop.model,
            module=module,
            optimizer=loop.optimizer,
            loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=p.max_grad_norm,
            generator=noise_rng,
            data_parallel=loop.data_parallel,
        )
        # make_private infers q as 1/len(loader) (= 1/steps here); point the averaging and the
        # accountant at the true q = batch_size / N instead. Opacus' distributed optimizers divide the
        # all-reduced sum by the world size once more, so they take the expected batch size per process.
        batch_size = loop.train_cfg.batch_size
        dp_optimizer.expected_batch_size = batch_size / loop.world_size if loop.data_parallel else batch_size
        stepped = _account_noisy_steps(engine, dp_optimizer, q)
        try:
            _take_steps(loop, clipping, loader, dp_optimizer, stepped)
        finally:
            clipping.cleanup()
    if any(entry[1] != q for entry in engine.accountant.history):  # a guard on the override above
        raise RuntimeError(f"the accountant saw sample rates {engine.accountant.history}, not q = {q}")
    _record_privacy(loop, p, clipping, engine.accountant, sigma, delta)


def _poisson_batches(loop: TrainingLoop, q: float) -> DataLoader:
    """Poisson sampling with q = batch_size / N exactly, for all the steps in one pass. Empty index lists reach the
    loop as None (GPT-2 cannot run a forward pass on zero rows). Data-parallel, each process samples its own
    disjoint share of the examples at the same q: the union is a Poisson batch of all of them. (Opacus'
    DistributedUniformWithReplacementSampler skips empty batches: the processes would fall out of step with each
    other, and the accountant would count steps that were never taken.)"""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    share = range(loop.rank, len(loop.examples), loop.world_size)
    poisson = UniformWithReplacementSampler(
        num_samples=len(share), sample_rate=q, generator=loop.sampler_rng, steps=loop.steps
    )
    return DataLoader(
        [loop.examples[i] for i in share],
        batch_sampler=_ShortestFirst(poisson, [loop.lengths[i] for i in share]),
        collate_fn=lambda exs: loop.collate_fn(exs) if exs else None,
    )


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


def _account_noisy_steps(engine, dp_optimizer, q: float) -> list[bool]:
    """Step the accountant at rate q after each noisy step (once per logical batch, after the noise is added);
    the list returned gets an entry each time, for the loop to see that a logical batch ended."""
    account = engine.accountant.get_optimizer_hook_fn(sample_rate=q)
    stepped = []

    def on_noisy_step(opt) -> None:
        account(opt)
        stepped.append(True)

    dp_optimizer.attach_step_hook(on_noisy_step)
    return stepped


def _take_steps(loop: TrainingLoop, clipping: ClippingMode, loader: DataLoader, dp_optimizer, stepped: list) -> None:
    """Every logical batch cut into physical ones (BatchMemoryManager): each one's clipped gradients summed by the
    optimizer, which at the logical batch's end adds the noise and steps; then the loop's step bookkeeping."""
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    loss_sum, count = 0.0, 0
    with BatchMemoryManager(
        data_loader=loader, max_physical_batch_size=loop.physical, optimizer=dp_optimizer
    ) as physical_loader:
        for batch in physical_loader:
            if batch is None:
                clipping.empty_gradients(dp_optimizer)
            else:
                per_seq = loop.loss_fn(loop.model, to_device(batch, loop.device))
                clipping.backward(per_seq)
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


def _record_privacy(loop: TrainingLoop, p: PrivacyConfig, clipping: ClippingMode, accountant, sigma, delta) -> None:
    """The report's privacy fields and notes: what the run spent, and how."""
    report, n, q = loop.report, len(loop.examples), loop.report.sample_rate
    report.noise_multiplier, report.delta, report.accountant = float(sigma), delta, p.accountant
    report.max_grad_norm, report.grad_sample_mode = p.max_grad_norm, p.grad_sample_mode
    report.epsilon_spent, notes = _epsilon_spent(accountant, sigma, q, report.steps, delta, p.accountant)
    report.randomness = p.randomness
    report.notes += notes + [
        f"Poisson sampling, q = {loop.train_cfg.batch_size}/{n}",
        clipping.note(p.conv1d_sampler),
    ]
    if loop.data_parallel:
        report.world_size, report.backend = loop.world_size, distributed.backend()
        report.notes.append(
            f"data-parallel over {loop.world_size} processes ({report.backend}): each Poisson-samples its own "
            f"1/{loop.world_size} of the examples at rate q; clipped gradients summed over them, noise added once"
        )


def _epsilon_spent(
    opacus_accountant, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str
) -> tuple[float, list[str]]:
    """Epsilon over the steps taken, from the run's own Opacus accountant and from distildp.dp.privacy
    (which the noise was calibrated with); the larger is reported, so the record never understates it."""
    if noise_multiplier == 0:
        return math.inf, ["noise_multiplier = 0: no privacy"]
    history = tuple(tuple(step) for step in opacus_accountant.history)
    ours = epsilon_cache.cached(
        f"opacus.{opacus_accountant.mechanism()}", (history, delta), lambda: opacus_accountant.get_epsilon(delta=delta)
    )
    theirs = privacy.epsilon_spent([privacy.DPSGDMechanism(noise_multiplier, sample_rate, steps)], delta, accountant)
    note = f"epsilon ({accountant}): opacus accountant {ours:.6g}, distildp.dp.privacy {theirs:.6g}"
    return max(ours, theirs), [note]
