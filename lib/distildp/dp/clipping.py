"""DP-SGD's three ways of clipping each example's gradient, behind one interface (`ClippingMode`):

- 'hooks' (`OpacusHooks`): Opacus' hooks build every example's gradient (GPT-2's Conv1D layers through
  `distildp.dp.conv1d_grad_sampler`), and its optimizer clips and sums them; tied embeddings are handled;
- 'ghost' (`GhostClipping`): Opacus' ghost clipping computes each example's gradient norm without the gradient,
  then a second backward pass of the losses weighted by their clip factors gives the clipped sum; it refuses tied
  weights (`train_causal_lm` unties them);
- 'bookkeeping' (`Bookkeeping`): `distildp.dp.bookkeeping`'s clipped sum from one backward pass, tied weights kept.

The DP-SGD loop (`distildp.dp.private_training`) asks a mode once for the optimizer that sums the clipped gradients
and adds the noise (`make_private`), then for every physical batch runs `backward` on its per-sequence losses (or
`empty_gradients` for an empty Poisson batch), and `cleanup` at the end. Opacus is imported when a mode is used.
"""

from __future__ import annotations

import torch


class ClippingMode:
    """One way of clipping per-example gradients (the subclasses below); `hooks` is what it attached to the model."""

    name = ""

    def __init__(self) -> None:
        self.hooks = None

    def make_private(
        self, engine, *, model, module, optimizer, loader, noise_multiplier, max_grad_norm, generator, data_parallel
    ):
        """Attach the clipping to `model` (Opacus' `module`: the model, or its data-parallel wrapper) and return the
        DP optimizer around `optimizer`: it sums the clipped gradients of a logical batch, adds the noise
        (`noise_multiplier` * `max_grad_norm`, drawn from `generator`) and steps. `engine` is the run's
        `opacus.PrivacyEngine`; sampling and accounting stay with the caller."""
        raise NotImplementedError

    def backward(self, per_sequence: torch.Tensor) -> None:
        """The backward pass of one physical batch's per-sequence losses, leaving its clipped gradients."""
        raise NotImplementedError

    def empty_gradients(self, dp_optimizer) -> None:
        """An empty Poisson batch still takes a step: zero clipped gradients plus noise, so the accountant's count
        stays right."""
        for param in dp_optimizer.params:
            param.grad = torch.zeros_like(param)

    def cleanup(self) -> None:
        self.hooks.cleanup()  # the model leaves with no hooks or Opacus attributes

    def note(self, conv1d_sampler: bool) -> str:
        """What the privacy record says about how gradients were clipped."""
        return "conv1d grad sampler: " + ("on" if conv1d_sampler else "off (functorch)")


class _PerSequenceLoss:
    """Identity 'criterion' for Opacus ghost clipping: our loss_fn already returns (B,) losses."""

    reduction = "mean"

    def __call__(self, per_sequence: torch.Tensor) -> torch.Tensor:
        return per_sequence


class _OpacusMode(ClippingMode):
    """The hooks and ghost modes: Opacus' make_private, the model wrapped as it is."""

    def make_private(
        self, engine, *, model, module, optimizer, loader, noise_multiplier, max_grad_norm, generator, data_parallel
    ):
        made = engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=False,  # our loader already samples
            grad_sample_mode=self.name,
            criterion=_PerSequenceLoss(),
            wrap_model=False,
            noise_generator=generator,
        )
        self.keep(made)  # Opacus returns the hooks and the optimizer, then for ghost clipping the criterion
        return made[1]

    def keep(self, made: tuple) -> None:
        self.hooks = made[0]


class OpacusHooks(_OpacusMode):
    name = "hooks"

    def backward(self, per_sequence: torch.Tensor) -> None:
        per_sequence.mean().backward()

    def empty_gradients(self, dp_optimizer) -> None:
        # Opacus' optimizer handles zero-row per-sample gradients
        for param in dp_optimizer.params:
            param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype, device=param.device)


class GhostClipping(_OpacusMode):
    name = "ghost"

    def keep(self, made: tuple) -> None:
        self.hooks, self.criterion = made[0], made[2]

    def backward(self, per_sequence: torch.Tensor) -> None:
        self.criterion(per_sequence).backward()


class Bookkeeping(ClippingMode):
    name = "bookkeeping"

    def make_private(
        self, engine, *, model, module, optimizer, loader, noise_multiplier, max_grad_norm, generator, data_parallel
    ):
        """Book-keeping clipping's hooks, and Opacus' optimizer for summed clipped gradients (ghost mode's, in place:
        `summing_in_place_optimizer`): it accumulates each physical batch's `p.grad` over a logical batch, adds noise
        once and scales by the expected batch size; its distributed form also all-reduces the sums and adds the
        noise on rank 0 only."""
        from opacus.optimizers import DistributedDPOptimizerFastGradientClipping

        from distildp.dp.bookkeeping import BookkeepingClipper

        engine.validate(module=model, optimizer=None, data_loader=None)  # no layers that mix examples
        self.hooks = BookkeepingClipper(model, max_grad_norm)
        optimizer_class = DistributedDPOptimizerFastGradientClipping if data_parallel else summing_in_place_optimizer()
        return optimizer_class(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=1,  # set by the caller
            loss_reduction="mean",
            generator=generator,
        )

    def backward(self, per_sequence: torch.Tensor) -> None:
        self.hooks.backward(per_sequence)  # p.grad = this physical batch's clipped sum

    def note(self, conv1d_sampler: bool) -> str:
        return "bookkeeping clipping"


CLIPPING_MODES = {mode.name: mode for mode in (OpacusHooks, GhostClipping, Bookkeeping)}


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
