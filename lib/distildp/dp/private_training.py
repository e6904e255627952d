"""DP-SGD's loop on Opacus: Poisson batches at q = batch_size / N (each sorted by length before it is cut into
physical batches), per-example clipping by Opacus' hooks, ghost clipping or book-keeping (`distildp.dp.bookkeeping`),
noise once per logical batch, and the accountant stepped at the true q; data-parallel, each process samples its
own share and Opacus' distributed optimizers add the noise once. `train_causal_lm` calls `train_private`.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from distildp.core import distributed
from distildp.dp import epsilon_cache, privacy
from distildp.lm.training import RANDOMNESS, PrivacyConfig, TrainingLoop, secret_seed, to_device


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


class _PerSequenceLoss:
    """Identity 'criterion' for Opacus ghost clipping: our loss_fn already returns (B,) losses."""

    reduction = "mean"

    def __call__(self, per_sequence: torch.Tensor) -> torch.Tensor:
        return per_sequence


def train_private(loop: TrainingLoop, p: PrivacyConfig) -> None:
    """DP-SGD on Opacus: Poisson batches, per-example clipping (hooks, ghost or book-keeping), noise once per
    logical batch, and the accountant stepped at the true sample rate."""
    from opacus import PrivacyEngine
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from distildp.dp.conv1d_grad_sampler import conv1d_sampler

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
                        per_seq = loop.loss_fn(model, to_device(batch, loop.device))
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
    """Book-keeping clipping's hooks and Opacus' optimizer for summed clipped gradients (ghost mode's, in place:
    `summing_in_place_optimizer`): it accumulates each physical batch's `p.grad` over a logical batch, adds noise
    once and scales by the expected batch size; its distributed form also all-reduces the sums and adds the noise on
    rank 0 only. Sampling and accounting stay with the caller, as for make_private."""
    from opacus.optimizers import DistributedDPOptimizerFastGradientClipping

    from distildp.dp.bookkeeping import BookkeepingClipper

    engine.validate(module=model, optimizer=None, data_loader=None)  # no layers that mix examples
    clipper = BookkeepingClipper(model, max_grad_norm)
    optimizer_class = DistributedDPOptimizerFastGradientClipping if data_parallel else summing_in_place_optimizer()
    dp_optimizer = optimizer_class(
        optimizer,
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        expected_batch_size=1,  # set by the caller
        loss_reduction="mean",
        generator=noise_rng,
    )
    return clipper, dp_optimizer


def summing_in_place_optimizer():
    """Opacus' optimizer for summed clipped gradients (DPOptimizerFastGradientClipping), its arithmetic done in
    place: a logical batch's first clipped sum is kept rather than copied, and the noise (the same draws from the
    same generator: torch.normal is empty().normal_()) is added into it, which then becomes `p.grad`. The values
    are Opacus'; each step makes two fewer passes over the parameters (the copy, and the zeros Opacus builds
    beside the noise). The noise is drawn into one buffer, as large as the largest parameter and kept for the
    whole run, rather than into a new tensor per parameter and step: on CPU the allocator maps a large new tensor
    afresh each time, and faulting its pages in costs a large model a noticeable share of a step. It keeps
    `p.grad` itself as the sum: the loop replaces `p.grad` after every pass (`zero_grad(set_to_none=True)`, then
    the clipper's new tensor), never zeroing it in place."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    class SummingInPlace(DPOptimizerFastGradientClipping):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._noise_buffers: dict[tuple, torch.Tensor] = {}  # per (device, dtype), made on the first step

        def accumulate(self) -> None:
            for p in self.params:
                if p.summed_grad is None:
                    p.summed_grad = p.grad
                else:
                    p.summed_grad.add_(p.grad)

        def add_noise(self) -> None:
            if self.secure_mode:  # Opacus' secure noise sums several draws: keep its own code
                super().add_noise()
                return
            std = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm
            for p in self.params:
                if std > 0:
                    # A contiguous tensor of the parameter's size gets the same draws as torch.normal's own.
                    noise = self._noise_buffer(p.summed_grad)[: p.numel()].view_as(p.summed_grad)
                    p.summed_grad.add_(noise.normal_(0, std, generator=self.generator))
                p.grad = p.summed_grad.view_as(p)

        def _noise_buffer(self, like: torch.Tensor) -> torch.Tensor:
            key = (like.device, like.dtype)
            if key not in self._noise_buffers:
                largest = max([p.numel() for p in self.params if (p.device, p.dtype) == key] + [like.numel()])
                self._noise_buffers[key] = torch.empty(largest, device=like.device, dtype=like.dtype)
            return self._noise_buffers[key]

    return SummingInPlace


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
