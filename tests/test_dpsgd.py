"""DP-SGD on Opacus: per-sample gradients, clipping, sampling, accounting, and bad input.

Every check compares against an independent reference: a loop of single-example backward passes,
a hand-written clipped SGD step, a re-drawn Poisson mask, or dp_accounting's RDP accountant.
"""

import math
import pydoc_data.topics

import pytest
import torch
from opacus.grad_sample import GradSampleHooks
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from distildp.dp.config import PrivacyConfig
from distildp.dp.conv1d_grad_sampler import compute_conv1d_grad_sample, conv1d_sampler
from distildp.dp.dpsgd import train_causal_lm
from distildp.dp.public_training import pretrain
from distildp.lm.evaluate import perplexity
from distildp.lm.models import build_model, train_tokenizer
from distildp.lm.training import TrainConfig, collate_lm, length_chunks, lm_loss_per_sequence

from helpers import (
    make_examples,
    one_step,
    params,
    poisson_batch,
    reference_step,
    seeded_privacy,
    single_example_grads,
    tiny_model,
)


# ----------------------------------------------------------------------------------- collate, loss
def test_collate_lm_pads_right_and_marks_targets():
    batch = collate_lm([{"input_ids": [0, 5, 6, 0]}, {"input_ids": [0, 7, 0], "loss_mask": [0, 0, 1]}], pad_id=99)
    assert batch["input_ids"].tolist() == [[0, 5, 6, 0], [0, 7, 0, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 1, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3]] * 2
    assert batch["position_ids"].is_contiguous() and batch["position_ids"].stride() == (4, 1)


def test_collate_lm_empty_batch_keeps_keys():
    batch = collate_lm([], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "position_ids", "loss_mask"}
    assert all(t.shape[0] == 0 for t in batch.values())


def test_collate_lm_rejects_bad_examples():
    with pytest.raises(ValueError, match="loss_mask"):
        collate_lm([{"input_ids": [0, 1, 0], "loss_mask": [0, 1]}], pad_id=0)
    with pytest.raises(ValueError, match="input_ids"):
        collate_lm([{"input_ids": [0]}], pad_id=0)


def test_per_sequence_loss_is_unchanged_by_padding():
    model = tiny_model().eval()
    examples = make_examples(4, seed=1)
    batched = lm_loss_per_sequence(model, collate_lm(examples, pad_id=0))
    alone = torch.cat([lm_loss_per_sequence(model, collate_lm([ex], pad_id=0)) for ex in examples])
    torch.testing.assert_close(batched, alone, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- per-sample gradients
@pytest.mark.parametrize("use_conv1d_sampler", [True, False])
def test_opacus_per_sample_grads_equal_single_example_loop(use_conv1d_sampler):
    model = tiny_model().train()
    examples = make_examples(5, seed=2)  # unequal lengths: the batch is padded
    expected = [single_example_grads(model, ex) for ex in examples]
    model.zero_grad(set_to_none=True)
    with conv1d_sampler(use_conv1d_sampler):
        assert (Conv1D in GradSampleHooks.GRAD_SAMPLERS) == use_conv1d_sampler
        hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean")
        lm_loss_per_sequence(model, collate_lm(examples, pad_id=0)).mean().backward()
        got = {name: p.grad_sample.detach().clone() for name, p in model.named_parameters()}
        hooks.cleanup()
    for name, per_sample in got.items():
        reference = torch.stack([grads[name] for grads in expected])
        torch.testing.assert_close(per_sample, reference, atol=1e-6, rtol=1e-5, msg=name)


def test_conv1d_sampler_registration_is_restored():
    before = GradSampleHooks.GRAD_SAMPLERS.get(Conv1D)
    with conv1d_sampler(True):
        assert GradSampleHooks.GRAD_SAMPLERS[Conv1D] is compute_conv1d_grad_sample
        assert Conv1D in GradSampleHooksFastGradientClipping.NORM_SAMPLERS
    assert GradSampleHooks.GRAD_SAMPLERS.get(Conv1D) is before


def test_conv1d_grad_sample_equals_autograd():
    layer = Conv1D(nf=3, nx=4)
    x = torch.randn(2, 5, 4)
    grads = compute_conv1d_grad_sample(layer, [x], torch.ones(2, 5, 3))
    for i in range(2):
        layer.zero_grad()
        layer(x[i : i + 1]).sum().backward()
        torch.testing.assert_close(grads[layer.weight][i], layer.weight.grad)
        torch.testing.assert_close(grads[layer.bias][i], layer.bias.grad)


# ------------------------------------------------------------------------------ the DP-SGD update
def test_noise_free_unclipped_dp_step_is_plain_sgd_on_the_poisson_batch():
    examples, batch_size, seed = make_examples(24, seed=4), 6, 3
    batch = poisson_batch(len(examples), batch_size / len(examples), seed)
    assert 0 < len(batch) != batch_size  # a Poisson batch, not a fixed-size one
    reference = tiny_model()
    expected = reference_step(reference, examples, batch, batch_size, clip=math.inf)
    model = tiny_model()
    report = one_step(model, examples, batch_size, seeded_privacy(noise_multiplier=0.0, max_grad_norm=1e6), seed=seed)
    assert report.steps == 1 and report.epsilon_spent == math.inf
    for name, value in params(model).items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_clipped_noise_free_step_matches_hand_clipping(mode):
    examples, batch_size, seed, clip = make_examples(24, seed=5), 6, 3, 0.05
    batch = poisson_batch(len(examples), batch_size / len(examples), seed)
    expected = reference_step(tiny_model(untie=True), examples, batch, batch_size, clip=clip)
    model = tiny_model(untie=True)
    one_step(
        model,
        examples,
        batch_size,
        seeded_privacy(noise_multiplier=0.0, max_grad_norm=clip, grad_sample_mode=mode),
        seed=seed,
    )
    for name, value in params(model).items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_physical_batches_give_the_same_dp_update(mode):
    examples = make_examples(24, seed=6)
    privacy = seeded_privacy(noise_multiplier=0.0, max_grad_norm=0.05, grad_sample_mode=mode)
    whole, split = tiny_model(), tiny_model()
    one_step(whole, examples, 12, privacy)
    one_step(split, examples, 12, privacy, physical=2)  # BatchMemoryManager: virtual steps
    for name, value in params(split).items():
        torch.testing.assert_close(value, params(whole)[name], atol=1e-6, rtol=1e-5, msg=name)


def recorded_batches(examples, cfg, privacy_cfg=None) -> list[list[int]]:
    """The example lengths in each physical batch of one training run (lengths identify rows here)."""
    seen = []

    def recording_loss(model, batch):
        seen.append(batch["attention_mask"].sum(1).tolist())
        return lm_loss_per_sequence(model, batch)

    train_causal_lm(tiny_model(), examples, cfg, privacy_cfg, loss_fn=recording_loss, progress=False)
    return seen


@pytest.mark.parametrize("private", [True, False])
def test_physical_batches_are_cut_from_a_length_sorted_batch(private):
    examples = make_examples(60, seed=8, max_len=20)
    cfg = TrainConfig(epochs=1, batch_size=30, physical_batch_size=8, max_steps=1, lr=1e-3)
    chunks = recorded_batches(examples, cfg, seeded_privacy(noise_multiplier=1.0) if private else None)
    assert len(chunks) >= 3
    for shorter, longer in zip(chunks, chunks[1:]):
        assert max(shorter) <= min(longer)  # each physical batch pads only to lengths like its own


def test_group_by_length_visits_every_example_once_per_epoch_and_pads_less():
    examples = make_examples(128, seed=10, max_len=30)
    lengths = [len(ex["input_ids"]) for ex in examples]
    base = dict(epochs=1, batch_size=8, lr=1e-3)
    grouped = recorded_batches(examples, TrainConfig(**base, group_by_length=True))
    shuffled = recorded_batches(examples, TrainConfig(**base))
    assert sorted(n for batch in grouped for n in batch) == sorted(lengths)  # a permutation: all, once
    padded = {
        name: sum(max(b) * len(b) for b in batches) for name, batches in (("grouped", grouped), ("shuffled", shuffled))
    }
    assert padded["grouped"] < 0.8 * padded["shuffled"]
    # 16 batches in 4 mega-batches of 4: taken in random order, not each mega-batch longest first
    longest = [max(batch) for batch in grouped]
    assert any(longest[k : k + 4] != sorted(longest[k : k + 4], reverse=True) for k in range(0, 16, 4))
    # DP-SGD ignores it: its batches stay Poisson samples
    private = seeded_privacy(noise_multiplier=1.0)
    assert recorded_batches(examples, TrainConfig(**base, group_by_length=True), private) == recorded_batches(
        examples, TrainConfig(**base), private
    )


def test_non_private_gradient_accumulation_is_exact():
    examples, cfg = make_examples(16, seed=7), dict(epochs=1, batch_size=8, lr=0.5, optimizer="sgd", max_steps=2)
    whole, split = tiny_model(), tiny_model()
    report = train_causal_lm(whole, examples, TrainConfig(**cfg), progress=False)
    train_causal_lm(split, examples, TrainConfig(**cfg, physical_batch_size=3), progress=False)
    assert report.privacy_record()["private"] is False and report.epsilon_spent == math.inf
    assert report.steps == 2
    for name, value in params(split).items():
        torch.testing.assert_close(value, params(whole)[name], atol=1e-6, rtol=1e-5, msg=name)


def test_length_chunks_give_a_few_long_examples_a_pass_of_their_own():
    lengths = [12] * 30 + [128, 120]
    batch = list(range(32))[::-1]
    chunks = length_chunks(batch, lengths, 32)
    assert sorted(sum(chunks, [])) == list(range(32))  # every example once
    assert [sorted(chunk) for chunk in chunks] == [list(range(30)), [30, 31]]
    assert length_chunks(list(range(30)), lengths, 32) == [list(range(30))]  # equal lengths: nothing to gain
    assert all(len(chunk) <= 8 for chunk in length_chunks(batch, lengths, 8))  # the memory cap holds
    assert length_chunks([], lengths, 8) == [[]]


def test_a_batch_cut_by_length_takes_the_one_pass_step():
    examples = make_examples(12, seed=11, max_len=6) + make_examples(2, seed=12, min_len=28, max_len=30)
    assert len(length_chunks(list(range(14)), [len(ex["input_ids"]) for ex in examples], 14)) > 1
    cfg = TrainConfig(epochs=1, batch_size=14, lr=0.5, optimizer="sgd", max_steps=1)
    model, reference = tiny_model(seed=13), tiny_model(seed=13)
    train_causal_lm(model, examples, cfg, progress=False)
    reference.train()
    lm_loss_per_sequence(reference, collate_lm(examples, pad_id=0)).mean().backward()  # one padded pass
    for (name, value), (_, before) in zip(params(model).items(), reference.named_parameters()):
        expected = before.detach() - 0.5 * before.grad if before.grad is not None else before.detach()
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5, msg=name)


def test_on_step_returning_true_stops_non_private_training():
    seen = []
    report = train_causal_lm(
        tiny_model(),
        make_examples(16, seed=3),
        TrainConfig(epochs=4, batch_size=4),
        progress=False,
        on_step=lambda step, loss: seen.append(step) or step == 3,
    )
    assert report.steps == 3 and seen == [1, 2, 3] and len(report.losses) == 3


def test_ghost_unties_embeddings_and_hooks_keeps_them_tied():
    examples, privacy = make_examples(8, seed=8), dict(noise_multiplier=1.0, accountant="rdp")
    tied = tiny_model()
    report = one_step(tied, examples, 4, seeded_privacy(**privacy))
    assert tied.lm_head.weight is tied.transformer.wte.weight and not report.tied_embeddings_untied
    ghost = tiny_model()
    report = one_step(ghost, examples, 4, seeded_privacy(**privacy, grad_sample_mode="ghost"))
    assert ghost.lm_head.weight is not ghost.transformer.wte.weight
    assert report.tied_embeddings_untied and report.privacy_record()["tied_embeddings_untied"]
    assert not ghost.config.tie_word_embeddings
    # Opacus hooks and attributes are gone: the model trains normally afterwards.
    assert not any(hasattr(p, "grad_sample") for p in tied.parameters())
    lm_loss_per_sequence(tied, collate_lm(examples, 0)).mean().backward()


# ------------------------------------------------------------------------------------ sampling
def tiny_fast_model() -> GPT2LMHeadModel:
    return tiny_model(n_embd=8, n_layer=1)


def test_batches_are_poisson_and_empty_batches_still_step():
    n, batch_size, steps = 40, 4, 300
    sizes = []

    def recording_loss(model, batch):
        sizes.append(batch["input_ids"].shape[0])
        return lm_loss_per_sequence(model, batch)

    # One physical batch per step (by default Poisson batches above batch_size are split for memory).
    cfg = TrainConfig(epochs=100, batch_size=batch_size, physical_batch_size=n, max_steps=steps, lr=1e-3)
    report = train_causal_lm(
        tiny_fast_model(),
        make_examples(n, seed=9, max_len=3),
        cfg,
        seeded_privacy(noise_multiplier=1.0, accountant="rdp"),
        loss_fn=recording_loss,
        progress=False,
    )
    assert report.steps == steps
    empty = steps - len(sizes)
    all_sizes = torch.tensor(sizes + [0] * empty, dtype=torch.float)
    q = batch_size / n
    assert len(set(sizes)) > 3  # sizes vary
    assert abs(all_sizes.mean() - q * n) < 4 * math.sqrt(n * q * (1 - q) / steps)
    assert 0.5 < all_sizes.var() / (n * q * (1 - q)) < 1.6  # binomial variance
    assert empty >= 1  # P(empty) = 0.9**40 = 1.5%; the seed gives a few, and they counted as steps


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_poisson_batches_do_not_crash(mode):
    calls = []

    def counting_loss(model, batch):
        calls.append(batch["input_ids"].shape[0])
        return lm_loss_per_sequence(model, batch)

    model = tiny_fast_model()
    before = params(model)
    cfg = TrainConfig(epochs=100, batch_size=1, physical_batch_size=20, max_steps=12, lr=1e-3)  # q = 1/20
    report = train_causal_lm(
        model,
        make_examples(20, seed=10, max_len=3),
        cfg,
        seeded_privacy(noise_multiplier=1.0, accountant="rdp", grad_sample_mode=mode),
        loss_fn=counting_loss,
        progress=False,
    )
    assert report.steps == 12 and len(calls) < 12
    assert sum(math.isnan(loss) for loss in report.losses) == 12 - len(calls)  # NaN marks an empty step
    assert any(not torch.equal(before[k], v) for k, v in params(model).items())


# ---------------------------------------------------------------------------------- accounting
def dp_accounting_rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Independent reference: Google's dp_accounting RDP accountant."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


def test_reported_epsilon_matches_an_independent_accountant_over_steps_taken():
    examples = make_examples(20, seed=11, max_len=3)
    cfg = TrainConfig(epochs=10, batch_size=5, max_steps=7, lr=1e-3)  # stop early: 7 of 40 steps
    report = train_causal_lm(
        tiny_fast_model(),
        examples,
        cfg,
        seeded_privacy(noise_multiplier=1.2, delta=1e-3, accountant="rdp"),
        progress=False,
    )
    assert (report.steps, report.sample_rate, report.delta) == (7, 0.25, 1e-3)
    reference = dp_accounting_rdp_epsilon(1.2, 0.25, 7, 1e-3)
    assert report.epsilon_spent == pytest.approx(reference, rel=1e-2)
    assert report.epsilon_spent >= reference * (1 - 1e-3)  # never below what was spent
    record = report.privacy_record()
    assert record["epsilon"] == report.epsilon_spent and record["private"] is True
    assert record["noise_multiplier"] == 1.2 and record["steps"] == 7


def test_calibrated_noise_spends_at_most_the_target():
    examples = make_examples(20, seed=12, max_len=3)
    cfg = TrainConfig(epochs=2, batch_size=5, lr=1e-3)  # q = 0.25, 8 steps
    report = train_causal_lm(
        tiny_fast_model(),
        examples,
        cfg,
        seeded_privacy(target_epsilon=4.0, delta=1e-3, accountant="rdp"),
        progress=False,
    )
    assert report.steps == 8
    reference = dp_accounting_rdp_epsilon(report.noise_multiplier, 0.25, 8, 1e-3)
    assert report.epsilon_spent <= 4.0 and 4.0 * 0.97 <= reference <= 4.0 * 1.001


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "train, privacy, match",
    [
        (dict(), dict(target_epsilon=0.0), "epsilon"),
        (dict(), dict(target_epsilon=-1.0), "epsilon"),
        (dict(), dict(target_epsilon=1.0, delta=1.5), "delta"),
        (dict(), dict(target_epsilon=1.0, delta=0.0), "delta"),
        (dict(batch_size=50), dict(target_epsilon=1.0), "batch_size"),  # sample rate > 1
        (dict(), dict(target_epsilon=1.0, accountant="gdp"), "accountant"),
        (dict(), dict(target_epsilon=1.0, grad_sample_mode="ew"), "grad_sample_mode"),
        (dict(), dict(target_epsilon=1.0, max_grad_norm=0.0), "max_grad_norm"),
        (dict(schedule="cosine"), dict(), "schedule"),
    ],
)
def test_bad_input_raises_clear_errors(train, privacy, match):
    cfg = TrainConfig(**{"batch_size": 4, **train})
    with pytest.raises(ValueError, match=match):
        train_causal_lm(tiny_fast_model(), make_examples(10), cfg, seeded_privacy(**privacy), progress=False)


def test_too_small_dataset_and_too_long_examples_raise():
    with pytest.raises(ValueError, match="no training examples"):
        train_causal_lm(tiny_fast_model(), [], TrainConfig(batch_size=1), progress=False)
    with pytest.raises(ValueError, match="context"):
        train_causal_lm(tiny_fast_model(), [{"input_ids": list(range(40))}], TrainConfig(batch_size=1), progress=False)
    with pytest.raises(ValueError, match="1/N"):  # delta >= 1/N needs the named option
        train_causal_lm(
            tiny_fast_model(),
            make_examples(10),
            TrainConfig(batch_size=2),
            seeded_privacy(noise_multiplier=1.0, delta=0.2),
            progress=False,
        )


def test_dp_randomness_is_secret_by_default_and_reproducible_on_request():
    examples, cfg = make_examples(20, seed=4), TrainConfig(epochs=1, batch_size=5, lr=0.1, max_steps=3, seed=7)

    def run(**privacy):
        model = tiny_model()
        report = train_causal_lm(model, examples, cfg, PrivacyConfig(noise_multiplier=1.0, **privacy), progress=False)
        return params(model), report

    secret_a, report = run()
    secret_b, _ = run()
    assert report.privacy_record()["randomness"].startswith("secret")
    assert any(not torch.equal(secret_a[k], secret_b[k]) for k in secret_a)  # same seed, other noise
    same_a, report = run(secret_randomness=False)
    same_b, _ = run(secret_randomness=False)
    assert report.privacy_record()["randomness"].startswith("reproducible")
    assert all(torch.equal(same_a[k], same_b[k]) for k in same_a)


# ------------------------------------------------------------------------------------------- pretraining
def _pretrain_tiny(tolerance=None, epochs=3):
    documents = list(pydoc_data.topics.topics.values())[:24]
    tok = train_tokenizer(documents, vocab_size=512)
    texts, validation = [t[:300] for t in documents[:18]], [t[:300] for t in documents[18:]]
    model = build_model("tiny-student", tok, seed=0, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=3e-3, seed=0)
    report, selector = pretrain(model, tok, texts, validation, cfg, tolerance=tolerance, progress=False)
    return model, tok, validation, report, selector


def test_pretrain_lowers_loss_keeps_the_best_validation_check_and_is_seeded():
    model, tok, validation, report, selector = _pretrain_tiny()
    assert report.losses[-1] < report.losses[0] - 0.5
    assert report.steps > 3 * math.ceil(18 / 8)  # long texts were split into 32-token windows: more than 18 examples
    assert not model.training
    checks = [ppl for _, ppl in selector.curve]
    assert len(checks) >= 6 and selector.best_ppl == min(checks)  # checked every half epoch, and at the end
    left_at = perplexity(model, tok, validation, per_document=True, progress=False).ppl
    assert left_at == pytest.approx(selector.best_ppl, rel=1e-6)  # the model is the best check's
    again, *_ = _pretrain_tiny()
    assert torch.equal(model.transformer.wte.weight, again.transformer.wte.weight)


def test_pretrain_stops_once_validation_flattens():
    _, _, _, full, _ = _pretrain_tiny(epochs=6)
    _, _, _, stopped, selector = _pretrain_tiny(tolerance=0.9, epochs=6)  # no check improves by 90%: stop at the 2nd
    assert selector.converged and len(selector.curve) == 2
    assert stopped.steps < full.steps


def test_every_clipping_mode_a_privacy_config_names_has_its_object():
    from distildp.dp.clipping import CLIPPING_MODES
    from distildp.dp.config import GRAD_SAMPLE_MODES

    assert tuple(CLIPPING_MODES) == GRAD_SAMPLE_MODES
    assert all(CLIPPING_MODES[name].name == name for name in GRAD_SAMPLE_MODES)
