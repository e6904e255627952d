"""distildp.lm.fused_loss: the fused losses equal the reference ones (distill.kd_loss, a plain cross-entropy), values
and gradients, on random inputs with padding; the packed path (output layer applied to the scored rows) equals the
model's own logits; the teacher's cached probabilities give the live teacher's loss to float16's rounding."""

import pytest
import torch
import torch.nn.functional as F

from distildp.distill.kd import KDConfig, kd_loss
from distildp.distill.kd_batches import collate_kd, make_kd_loss_fn
from distildp.distill.teacher_cache import attach_teacher_probs, teacher_probs_bytes
from distildp.lm.fused_loss import (
    every_position,
    output_logits,
    scored_positions,
    sequence_losses,
    student_logits,
    teacher_rows,
    token_losses,
)
from distildp.lm.training import collate_lm, lm_loss_per_sequence

from helpers import VOCAB, make_examples, tiny_model


def padded_batch(batch: int = 4, length: int = 9, vocab: int = 11, seed: int = 0):
    """input_ids and a loss mask with unequal lengths (right padding) and one unscored inner position."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, length), generator=g)
    loss_mask = torch.zeros(batch, length, dtype=torch.float64)
    for b, n in enumerate([length, length - 3, 2, length - 1][:batch]):
        loss_mask[b, 1:n] = 1.0
    loss_mask[0, 4] = 0.0  # an example's own mask may skip a token (as evaluation streams skip prefixes)
    return input_ids, loss_mask


def fused_from_logits(s_logits, t_logits, input_ids, loss_mask, lam, t, weighting, packed):
    """The fused loss on (B, T, V) logits, rows taken as the packed or the every-position path takes them."""
    batch, length, vocab = s_logits.shape
    rows = scored_positions(input_ids, loss_mask) if packed else every_position(input_ids, loss_mask)
    student = s_logits.reshape(-1, vocab)[rows.position]
    teacher = teacher_rows(t_logits.reshape(-1, vocab)[rows.position], t) if lam > 0 else None
    ce, kl = token_losses(student, rows.target, teacher, t)
    return sequence_losses(ce, kl, rows.example, rows.weight, batch, lam, t, weighting)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("weighting", ["token_mean", "paper_sum"])
@pytest.mark.parametrize("t", [1.0, 2.0])
@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_fused_kd_loss_equals_kd_loss_with_padding_values_and_gradients(lam, t, weighting, packed):
    input_ids, loss_mask = padded_batch()
    g = torch.Generator().manual_seed(1)
    s_logits = (torch.randn(*input_ids.shape, 11, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t_logits = torch.randn(*input_ids.shape, 11, generator=g, dtype=torch.float64) * 2
    reference = kd_loss(s_logits, t_logits, input_ids, loss_mask, lam=lam, temperature=t, weighting=weighting).total
    fused = fused_from_logits(s_logits, t_logits, input_ids, loss_mask, lam, t, weighting, packed)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    weights = torch.rand(input_ids.shape[0], generator=g, dtype=torch.float64)  # any upstream gradient
    (want,) = torch.autograd.grad((reference * weights).sum(), s_logits)
    (got,) = torch.autograd.grad((fused * weights).sum(), s_logits)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_token_losses_pass_gradcheck(t):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (5,), generator=g)
    teacher = teacher_rows(torch.randn(5, 7, generator=g, dtype=torch.float64), t)
    assert torch.autograd.gradcheck(lambda x: token_losses(x, targets, teacher, t), (logits,))
    assert torch.autograd.gradcheck(lambda x: token_losses(x, targets)[0], (logits,))
    assert torch.autograd.gradcheck(lambda x: token_losses(x, targets, teacher, t)[1], (logits,))  # KL alone


def test_output_layer_gradients_are_autograds():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(output_logits, (hidden, weight))
    torch.testing.assert_close(output_logits(hidden, weight), hidden @ weight.T)


def test_a_kl_without_a_teacher_is_refused():
    ce = torch.ones(3)
    with pytest.raises(ValueError, match="no teacher"):
        sequence_losses(ce, None, torch.tensor([0, 0, 1]), torch.ones(3), 2, lam=0.4)


# ------------------------------------------------------------------------------------------------ on a model
def reference_lm_loss(model, batch):
    """The per-sequence mean cross-entropy from the model's own logits, written plainly."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    mask = batch["loss_mask"][:, 1:]
    return (nll * mask).sum(1) / mask.sum(1).clamp_min(1)


def test_the_packed_lm_loss_equals_the_models_own_logits_and_a_hook_forces_the_module_path():
    model = tiny_model(seed=4).double()
    batch = collate_lm(make_examples(6, seed=5), pad_id=0)
    batch["loss_mask"] = batch["loss_mask"].double()
    reference = reference_lm_loss(model, batch)
    (want,) = torch.autograd.grad(reference.sum(), model.transformer.wte.weight)
    packed = lm_loss_per_sequence(model, batch)
    assert student_logits(model, batch)[0].shape[0] == int(batch["loss_mask"][:, 1:].sum())  # scored rows only
    (got,) = torch.autograd.grad(packed.sum(), model.transformer.wte.weight)
    torch.testing.assert_close(packed, reference)
    torch.testing.assert_close(got, want)
    seen = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:  # a clipping hook on the output layer must see it called, with the whole (B, T, V) output
        hooked = lm_loss_per_sequence(model, batch)
    finally:
        handle.remove()
    assert seen == [(*batch["input_ids"].shape, VOCAB)]
    torch.testing.assert_close(hooked, reference)


def kd_examples_with_prefixes(n: int = 7):
    return [{**ex, "prefix_ids": [3, 4][: i % 3]} for i, ex in enumerate(make_examples(n, seed=6, max_len=10))]


def test_cached_teacher_probabilities_give_the_live_teachers_loss_to_float16s_rounding():
    teacher, student = tiny_model(seed=7, n_embd=48).eval(), tiny_model(seed=8)
    data = kd_examples_with_prefixes()
    cached = attach_teacher_probs(teacher, data, pad_id=0, kd=KDConfig(temperature=2.0), batch_size=3)
    assert [ex["teacher_probs"].shape for ex in cached] == [(len(ex["input_ids"]) - 1, VOCAB) for ex in data]
    assert cached[0]["teacher_probs"].dtype == torch.float16 and "teacher_probs" not in data[0]
    assert teacher_probs_bytes(teacher, data) == sum(len(ex["input_ids"]) - 1 for ex in data) * (VOCAB * 2 + 4)
    order = [5, 0, 3, 6]  # a batch the cache was not computed in
    loss_fn = make_kd_loss_fn(teacher, KDConfig(lam=0.4, temperature=2.0, weighting="paper_sum"))
    live_batch = collate_kd([data[i] for i in order], pad_id=0)
    cached_batch = collate_kd([cached[i] for i in order], pad_id=0)
    assert "teacher_input_ids" not in cached_batch  # the teacher does not run
    live, from_cache = loss_fn(student, live_batch), loss_fn(student, cached_batch)
    torch.testing.assert_close(from_cache, live, rtol=2e-3, atol=0)
    (want,) = torch.autograd.grad(live.sum(), student.transformer.wte.weight)
    (got,) = torch.autograd.grad(from_cache.sum(), student.transformer.wte.weight)
    # each probability rounded by at most 2^-11 of itself: the gradient moves by about as much, relative to its size
    assert torch.linalg.norm(got - want) <= 2e-3 * torch.linalg.norm(want)


def test_cached_probabilities_are_refused_where_a_hook_needs_every_position():
    teacher, student = tiny_model(seed=9).eval(), tiny_model(seed=10)
    cached = attach_teacher_probs(teacher, kd_examples_with_prefixes(), pad_id=0)
    handle = student.lm_head.register_forward_hook(lambda *args: None)
    try:
        with pytest.raises(ValueError, match="cache the teacher's states for DP-SGD"):
            make_kd_loss_fn(teacher, KDConfig(lam=0.4))(student, collate_kd(cached, pad_id=0))
    finally:
        handle.remove()


def test_examples_with_their_own_loss_mask_cannot_cache_probabilities():
    examples = [{"input_ids": [0, 5, 6, 0], "loss_mask": [0, 0, 1, 1]}]
    with pytest.raises(ValueError, match="attach_teacher_states"):
        attach_teacher_probs(tiny_model(), examples, pad_id=0)


def test_a_target_whose_probability_underflows_still_gets_its_loss_and_gradient():
    logits = torch.tensor([[0.0, -200.0, -1.0], [5.0, 0.0, 1.0]], requires_grad=True)  # exp(-200) is 0 in float32
    targets = torch.tensor([1, 0])
    teacher = teacher_rows(torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]))
    ce, kl = token_losses(logits, targets, teacher)
    reference = F.cross_entropy(logits.double(), targets, reduction="none")
    torch.testing.assert_close(ce.double(), reference, rtol=1e-6, atol=1e-5)
    assert torch.isfinite(kl).all() and kl[0] > 60  # the teacher puts a third of its mass where the student has none
    (ce.sum() + kl.sum()).backward()
    assert torch.isfinite(logits.grad).all()
