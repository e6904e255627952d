"""Book-keeping DP clipping (distildp.dp.bookkeeping): per-example norms, clipped sums, and the DP-SGD step.

References are independent of the code under test: a loop of single-example backward passes (each
example alone, unpadded) and Opacus' hooks mode. Per-layer checks run in float64 so they can be tight.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from distildp.dp import clipping
from distildp.dp.bookkeeping import BookkeepingClipper
from distildp.dp.dpsgd import train_causal_lm
from distildp.lm.training import TrainConfig, collate_lm

from helpers import (
    VOCAB,
    make_examples,
    one_step,
    params,
    poisson_batch,
    reference_step,
    seeded_privacy,
    single_example_grads,
    tiny_model,
)


class ToyLM(nn.Module):
    """Position-wise (no attention) LM with every layer type GPT-2 has: token and position embeddings,
    LayerNorm, Conv1D, Linear, and an output layer tied to the token embedding (or not)."""

    def __init__(self, tied: bool = True, width: int = 6, padding_idx: int | None = None):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, width, padding_idx=padding_idx)
        self.wpe = nn.Embedding(32, width)
        self.ln = nn.LayerNorm(width)
        self.conv = Conv1D(10, width)
        self.linear = nn.Linear(10, width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        if tied:
            self.head.weight = self.wte.weight

    def forward(self, input_ids, position_ids, **_):
        h = self.wte(input_ids) + self.wpe(position_ids)
        h = torch.tanh(self.linear(torch.tanh(self.conv(self.ln(h)))))
        return self.head(h)


def loss64(model, batch):
    """Per-sequence mean NLL over scored tokens, in the model's dtype (float64 here)."""
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**kwargs)
    logits = getattr(logits, "logits", logits)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    mask = batch["loss_mask"][:, 1:].to(nll.dtype)
    return (nll * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def per_example_reference(model, examples):
    """Each example's gradient over the trainable parameters, computed on that example alone."""
    grads = []
    for ex in examples:
        model.zero_grad(set_to_none=True)
        loss64(model, collate_lm([ex], pad_id=0)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    model.zero_grad(set_to_none=True)
    return grads


def masked_examples(n: int, seed: int) -> list[dict]:
    """Unequal lengths (so batches are padded), and every other example scores only some of its tokens."""
    examples = make_examples(n, seed=seed, max_len=9)
    for ex in examples[::2]:
        ex["loss_mask"] = [0] + [i % 3 != 1 for i in range(1, len(ex["input_ids"]))]
    return examples


def norms_of(grads):
    return torch.stack([torch.sqrt(sum((g**2).sum() for g in per.values())) for per in grads])


TRAINABLE = {  # layer type under test -> parameter names left trainable in ToyLM
    "linear": ["linear."],
    "conv1d": ["conv."],
    "layernorm": ["ln."],
    "position_embedding": ["wpe."],
    "embedding": ["wte."],  # untied model, head frozen
    "embedding_padding_idx": ["wte."],
    "tied_embedding_and_head": ["wte."],  # the one weight of wte and head
    "all": [""],
}


def toy(layer: str) -> ToyLM:
    torch.manual_seed(0)
    model = (
        ToyLM(
            tied=layer in ("tied_embedding_and_head", "all"),
            padding_idx=0 if layer == "embedding_padding_idx" else None,
        )
        .double()
        .train()
    )
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(prefix) for prefix in TRAINABLE[layer]))
    return model


def check_against_loop(model, examples, norm_method):
    """Bookkeeping norms and clipped sum against the single-example loop, with some examples clipped."""
    reference = per_example_reference(model, examples)
    expected_norms = norms_of(reference)
    clip = float(expected_norms.median())
    clipper = BookkeepingClipper(model, clip, norm_method=norm_method)
    try:
        clipper.backward(loss64(model, collate_lm(examples, pad_id=0)))  # padded, unequal lengths
    finally:
        clipper.cleanup()
    torch.testing.assert_close(clipper.last_norms, expected_norms, rtol=1e-10, atol=1e-12)
    factors = (clip / (expected_norms + 1e-6)).clamp(max=1.0)
    assert 0 < int((factors < 1).sum()) < len(examples)  # some clipped, some not
    for name, p in model.named_parameters():
        if p.requires_grad:
            expected = sum(c * grads[name] for c, grads in zip(factors, reference))
            torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-12, msg=name)
        else:
            assert p.grad is None, name  # frozen parameters are skipped
    assert all(p.requires_grad == (p.grad is not None) for p in model.parameters())  # unfrozen again


# ------------------------------------------------------------------------------- per-example norms
@pytest.mark.parametrize("norm_method", ["auto", "ghost", "materialise"])
@pytest.mark.parametrize("layer", list(TRAINABLE))
def test_per_example_norms_and_clipped_sum_equal_single_example_loop(layer, norm_method):
    check_against_loop(toy(layer), masked_examples(6, seed=1), norm_method)


@pytest.mark.parametrize("norm_method", ["auto", "ghost", "materialise"])
def test_tied_weight_norm_includes_the_cross_term(norm_method):
    """The tied weight's per-example gradient is embedding grad + head grad; its norm is that of the sum,
    which differs from the norm of the two taken apart (so dropping the cross term is caught)."""
    examples = masked_examples(6, seed=2)
    model = toy("tied_embedding_and_head")
    untied = ToyLM(tied=False).double()
    untied.load_state_dict(model.state_dict())  # same values, the head its own copy
    for name, p in untied.named_parameters():
        p.requires_grad_(name.startswith(("wte.", "head.")))
    apart = norms_of(per_example_reference(untied, examples))
    together = norms_of(per_example_reference(model, examples))
    assert ((apart - together).abs() > 1e-3 * together).all()
    check_against_loop(model, examples, norm_method)


@pytest.mark.parametrize("norm_method", ["auto", "ghost", "materialise"])
def test_gpt2_per_example_norms_equal_single_example_loop(norm_method):
    model = tiny_model(n_embd=16).double().train()  # tied wte / lm_head, wpe, LayerNorms, Conv1D
    assert model.lm_head.weight is model.transformer.wte.weight
    check_against_loop(model, masked_examples(5, seed=3), norm_method)


def test_unsupported_trainable_layer_raises_naming_it_and_frozen_one_is_skipped():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

    model = ToyLM()
    model.extra = nn.Sequential(Scale())
    with pytest.raises(ValueError, match=r"Scale \(module 'extra.0'.*gain"):
        BookkeepingClipper(model, 1.0)
    model.extra[0].gain.requires_grad_(False)
    BookkeepingClipper(model, 1.0).cleanup()
    model.wpe = nn.Embedding(32, 6, max_norm=1.0)
    with pytest.raises(ValueError, match="wpe"):
        BookkeepingClipper(model, 1.0)


def test_cleanup_leaves_a_plain_model():
    model = tiny_model()
    clipper = BookkeepingClipper(model, 1.0)
    clipper.backward(loss64(model, collate_lm(make_examples(3), pad_id=0)))
    clipper.cleanup()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_an_earlier_backward_outside_the_clipper_is_ignored():
    examples = make_examples(4, seed=4)
    fresh, reused = tiny_model().double(), tiny_model().double()
    for model in (fresh, reused):
        clipper = BookkeepingClipper(model, 0.5)
        if model is reused:  # e.g. a loss computed for logging, with gradients, on other examples
            loss64(model, collate_lm(make_examples(4, seed=5), pad_id=0)).sum().backward()
        clipper.backward(loss64(model, collate_lm(examples, pad_id=0)))
        clipper.cleanup()
    for (name, p), q in zip(fresh.named_parameters(), reused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)


# ------------------------------------------------------------------------------ the DP-SGD update
def clip_between_norms(examples, batch) -> float:
    """A clipping norm that clips some examples of `batch` and not others."""
    norms = sorted(float(norms_of([single_example_grads(tiny_model(), examples[i])])) for i in batch)
    assert len(norms) >= 3
    return (norms[len(norms) // 2 - 1] + norms[len(norms) // 2]) / 2


def test_clipped_noise_free_step_matches_hand_clipping_and_hooks():
    examples, batch_size, seed = make_examples(24, seed=5), 6, 3
    batch = poisson_batch(len(examples), batch_size / len(examples), seed)
    clip = clip_between_norms(examples, batch)
    expected = reference_step(tiny_model(), examples, batch, batch_size, clip=clip)
    updated = {}
    for mode in ("bookkeeping", "hooks"):
        model = tiny_model()  # tied
        one_step(
            model,
            examples,
            batch_size,
            seeded_privacy(noise_multiplier=0.0, max_grad_norm=clip, grad_sample_mode=mode),
            seed=seed,
        )
        assert model.lm_head.weight is model.transformer.wte.weight
        updated[mode] = params(model)
    for name, value in updated["bookkeeping"].items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(value, updated["hooks"][name], atol=1e-6, rtol=1e-5, msg=name)


def test_physical_batches_give_the_same_bookkeeping_update():
    examples = make_examples(24, seed=6)
    privacy = seeded_privacy(noise_multiplier=0.0, max_grad_norm=0.05, grad_sample_mode="bookkeeping")
    whole, split = tiny_model(), tiny_model()
    one_step(whole, examples, 12, privacy)
    one_step(split, examples, 12, privacy, physical=2)  # BatchMemoryManager: virtual steps
    moved = False
    for name, value in params(split).items():
        torch.testing.assert_close(value, params(whole)[name], atol=1e-6, rtol=1e-5, msg=name)
        moved |= not torch.equal(value, params(tiny_model())[name])
    assert moved


def test_noisy_steps_equal_hooks_with_the_same_noise_and_accounting():
    examples = make_examples(24, seed=7)
    cfg = TrainConfig(epochs=1, batch_size=6, physical_batch_size=4, lr=0.5, optimizer="sgd", seed=4, max_steps=3)
    runs = {}
    for mode in ("bookkeeping", "hooks"):
        model = tiny_model()
        report = train_causal_lm(
            model,
            examples,
            cfg,
            seeded_privacy(target_epsilon=8.0, delta=1e-3, max_grad_norm=0.1, grad_sample_mode=mode),
            progress=False,
        )
        runs[mode] = (params(model), report)
    (got, report), (want, hooks_report) = runs["bookkeeping"], runs["hooks"]
    for name, value in got.items():
        torch.testing.assert_close(value, want[name], atol=1e-6, rtol=1e-5, msg=name)
    fields = ("noise_multiplier", "sample_rate", "steps", "epsilon_spent", "delta", "accountant", "max_grad_norm")
    assert [getattr(report, f) for f in fields] == [getattr(hooks_report, f) for f in fields]
    assert report.steps == 3 and math.isfinite(report.epsilon_spent) and report.epsilon_spent <= 8.0
    assert report.grad_sample_mode == "bookkeeping" and not report.tied_embeddings_untied


def test_empty_poisson_batches_still_step():
    calls = []

    def counting_loss(model, batch):
        calls.append(batch["input_ids"].shape[0])
        return loss64(model, batch)

    model = tiny_model(n_embd=8, n_layer=1)
    before = params(model)
    cfg = TrainConfig(epochs=100, batch_size=1, physical_batch_size=20, max_steps=12, lr=1e-3)  # q = 1/20
    report = train_causal_lm(
        model,
        make_examples(20, seed=10, max_len=3),
        cfg,
        seeded_privacy(noise_multiplier=1.0, accountant="rdp", grad_sample_mode="bookkeeping"),
        loss_fn=counting_loss,
        progress=False,
    )
    assert report.steps == 12 and len(calls) < 12
    assert sum(math.isnan(loss) for loss in report.losses) == 12 - len(calls)  # NaN marks an empty step
    assert any(not torch.equal(before[k], v) for k, v in params(model).items())
    assert all(not m._forward_hooks for m in model.modules()) and all(p.requires_grad for p in model.parameters())


def test_distillation_with_hidden_projection_equals_hooks():
    """The KD loss: a frozen teacher's forward inside loss_fn, and a projection Linear on hidden states."""
    from distildp.distill.kd import KDConfig, StudentWithProjection
    from distildp.distill.kd_batches import collate_kd, make_kd_loss_fn

    examples, updated = make_examples(16, seed=11), {}
    for mode in ("bookkeeping", "hooks"):
        model = StudentWithProjection(tiny_model(n_embd=16, n_layer=1), teacher_width=32)
        loss_fn = make_kd_loss_fn(
            tiny_model(seed=1, n_embd=32), KDConfig(lam=0.5, temperature=2.0, alpha=1.0), hidden_projection=True
        )
        train_causal_lm(
            model,
            examples,
            TrainConfig(batch_size=6, max_steps=2, lr=0.5, optimizer="sgd"),
            seeded_privacy(noise_multiplier=0.0, max_grad_norm=0.3, grad_sample_mode=mode),
            loss_fn=loss_fn,
            collate_fn=lambda exs: collate_kd(exs, pad_id=0),
            progress=False,
        )
        updated[mode] = params(model)
    for name, value in updated["bookkeeping"].items():
        torch.testing.assert_close(value, updated["hooks"][name], atol=1e-6, rtol=1e-5, msg=name)


def test_summing_in_place_gives_opacus_own_noisy_updates_bit_for_bit():
    """Book-keeping's optimizer adds Opacus' noise in place: over noisy Adam steps of two passes each, fed the same
    clipped sums and the same noise seed, the weights are exactly those Opacus' own optimizer gives."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    models, optimizers = [], []
    for optimizer_class in (clipping.summing_in_place_optimizer(), DPOptimizerFastGradientClipping):
        model = tiny_model()
        optimizer = optimizer_class(
            torch.optim.Adam(model.parameters(), lr=1e-2),
            noise_multiplier=0.7,
            max_grad_norm=0.1,
            expected_batch_size=6,
            generator=torch.Generator().manual_seed(11),
        )
        models.append(model)
        optimizers.append(optimizer)
    sums = torch.Generator().manual_seed(12)
    for _ in range(3):  # logical batches
        for last_pass in (False, True):
            clipped = [torch.randn(p.shape, generator=sums) for p in models[0].parameters()]
            for model, optimizer in zip(models, optimizers):
                for p, grad in zip(model.parameters(), clipped):
                    p.grad = grad.clone()  # a pass's clipped sum, as the clipper leaves it: a fresh tensor
                optimizer.signal_skip_step(do_skip=not last_pass)  # as BatchMemoryManager does between passes
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    in_place, opacus_own = (params(model) for model in models)
    assert all(torch.equal(value, opacus_own[name]) for name, value in in_place.items())
    assert any(not torch.equal(value, params(tiny_model())[name]) for name, value in in_place.items())
