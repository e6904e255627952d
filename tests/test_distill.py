"""Tests of distildp.distill.kd: the KD loss against hand computations, teacher alignment, projection, errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from distildp.distill.kd import HiddenProjection, KDConfig, StudentWithProjection, default_layer_map, kd_loss
from distildp.distill.kd_batches import (
    check_compatible,
    collate_kd,
    make_kd_loss_fn,
    teacher_logits_for_student,
    teacher_outputs_for_student,
)
from distildp.distill.teacher_cache import attach_teacher_states, teacher_states_bytes

VOCAB = 40
EOS = 0


def tiny_gpt2(n_embd: int = 16, n_layer: int = 2, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=EOS,
        eos_token_id=EOS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def examples(seed: int = 0) -> list[dict]:
    """Student sequences [eos] + text + [eos] of different lengths, with prefixes of different lengths."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for text_len, prefix_len in [(5, 3), (2, 1), (8, 4), (3, 0)]:
        text = torch.randint(1, VOCAB, (text_len,), generator=g).tolist()
        prefix = torch.randint(1, VOCAB, (prefix_len,), generator=g).tolist()
        out.append({"input_ids": [EOS] + text + [EOS], "prefix_ids": prefix})
    return out


def reference_lm_loss_per_sequence(model, batch) -> torch.Tensor:
    """Masked per-sequence mean CE, written out one sequence at a time (an independent reference)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    ).logits
    rows = []
    for b in range(logits.shape[0]):
        mask = batch["loss_mask"][b, 1:]
        ce = F.cross_entropy(logits[b, :-1], batch["input_ids"][b, 1:], reduction="none")
        rows.append((ce * mask).sum() / mask.sum())
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------------
# The loss itself
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["token_mean", "paper_sum"])
@pytest.mark.parametrize("t", [1.0, 2.0])  # t = 1 shares the CE's log-softmax with the KL
def test_kd_loss_matches_hand_computation_with_padding(t, weighting):
    B, T, V, D = 3, 6, 7, 4
    s_logits, t_logits = torch.randn(B, T, V) * 2, torch.randn(B, T, V) * 2
    targets = torch.randint(0, V, (B, T))
    lengths = [6, 4, 2]
    loss_mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        loss_mask[b, 1:n] = 1.0
    s_hidden = [torch.randn(B, T, D) for _ in range(2)]
    t_hidden = [torch.randn(B, T, D) for _ in range(2)]
    lam, alpha = 0.3, 0.5

    parts = kd_loss(
        s_logits,
        t_logits,
        targets,
        loss_mask,
        lam=lam,
        temperature=t,
        student_hidden=s_hidden,
        teacher_hidden=t_hidden,
        alpha=alpha,
        weighting=weighting,
    )

    def softmax(row, temp):
        m = max(row)
        e = [math.exp((x - m) / temp) for x in row]
        return [x / sum(e) for x in e]

    for b in range(B):
        ce = kl = mse = 0.0
        scored = 0
        for j in range(1, T):  # token j is predicted at position j - 1
            if loss_mask[b, j] == 0:
                continue
            scored += 1
            s_row, t_row = s_logits[b, j - 1].tolist(), t_logits[b, j - 1].tolist()
            ce += -math.log(softmax(s_row, 1.0)[targets[b, j]])
            p_s, p_t = softmax(s_row, t), softmax(t_row, t)
            kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
            mse += sum(
                sum((sh[b, j - 1, d].item() - th[b, j - 1, d].item()) ** 2 for d in range(D)) / D
                for sh, th in zip(s_hidden, t_hidden)
            ) / len(s_hidden)
        # the paper's code sums the KL over positions; everything else is a mean over scored tokens
        ce, kl, mse = ce / scored, kl / scored if weighting == "token_mean" else kl, mse / scored
        total = (1 - lam) * ce + lam * t**2 * kl + alpha * mse
        assert parts.ce[b].item() == pytest.approx(ce, rel=1e-5)
        assert parts.kl[b].item() == pytest.approx(kl, rel=1e-5)
        assert parts.mse[b].item() == pytest.approx(mse, rel=1e-5)
        assert parts.total[b].item() == pytest.approx(total, rel=1e-5)


def test_padding_does_not_change_a_sequence_loss():
    s_logits, t_logits = torch.randn(1, 5, 6), torch.randn(1, 5, 6)
    targets = torch.randint(0, 6, (1, 5))
    mask = torch.tensor([[0.0, 1, 1, 1, 1]])
    alone = kd_loss(s_logits, t_logits, targets, mask).total

    def pad(x, fill):
        return torch.cat([x, torch.full((1, 3) + x.shape[2:], fill, dtype=x.dtype)], dim=1)

    padded = kd_loss(pad(s_logits, 9.0), pad(t_logits, -9.0), pad(targets, 0), pad(mask, 0.0)).total
    torch.testing.assert_close(alone, padded)


def test_lam_zero_is_the_plain_per_sequence_lm_loss():
    model, teacher = tiny_gpt2(seed=1), tiny_gpt2(seed=2)
    batch = collate_kd(examples(), pad_id=EOS)
    from distildp.lm.training import lm_loss_per_sequence

    expected = lm_loss_per_sequence(model, batch)
    got = make_kd_loss_fn(teacher, KDConfig(lam=0.0, temperature=3.0))(model, batch)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, reference_lm_loss_per_sequence(model, batch))


def test_kl_is_zero_when_student_equals_teacher():
    logits = torch.randn(2, 5, 9)
    parts = kd_loss(logits, logits.clone(), torch.randint(0, 9, (2, 5)), torch.ones(2, 5), lam=1.0, temperature=2.0)
    torch.testing.assert_close(parts.kl, torch.zeros(2), atol=1e-6, rtol=0)

    student = tiny_gpt2(seed=3)
    teacher = copy.deepcopy(student)
    batch = collate_kd(examples(), pad_id=EOS)
    loss = make_kd_loss_fn(teacher, KDConfig(lam=1.0, temperature=2.0, teacher_context="none"))(student, batch)
    torch.testing.assert_close(loss, torch.zeros(4), atol=1e-5, rtol=0)
    # ... and clearly not zero for a different teacher, so the check above can fail.
    other = make_kd_loss_fn(tiny_gpt2(seed=4), KDConfig(lam=1.0, temperature=2.0, teacher_context="none"))(
        student, batch
    )
    assert (other > 1e-3).all()


def test_t_squared_keeps_gradient_size_comparable_across_temperatures():
    s_logits, t_logits = torch.randn(2, 8, 30), torch.randn(2, 8, 30)
    targets, mask = torch.randint(0, 30, (2, 8)), torch.ones(2, 8)

    def grad_norm(temperature: float) -> float:
        x = s_logits.clone().requires_grad_(True)
        kd_loss(x, t_logits, targets, mask, lam=1.0, temperature=temperature).total.mean().backward()
        return x.grad.norm().item()

    ratio = grad_norm(4.0) / grad_norm(1.0)
    assert 0.33 < ratio < 3.0  # with t^2: comparable
    assert ratio / 16 < 0.1  # the bare KL gradient (t^2 removed) shrinks by an order of magnitude


# ----------------------------------------------------------------------------------------------
# Hidden states and the projection
# ----------------------------------------------------------------------------------------------


def test_default_layer_map_is_evenly_spaced_and_pairs_the_last_layers():
    assert default_layer_map(2, 4) == {1: 2, 2: 4}
    assert default_layer_map(3, 4) == {1: 2, 2: 3, 3: 4}
    assert default_layer_map(2, 2) == {1: 1, 2: 2}
    assert default_layer_map(6, 12) == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}
    assert default_layer_map(4, 2) == {1: 1, 2: 1, 3: 2, 4: 2}


def test_hidden_mse_uses_the_layer_map():
    student, teacher = tiny_gpt2(16, n_layer=2, seed=5), tiny_gpt2(16, n_layer=4, seed=6)
    batch = collate_kd(examples(), pad_id=EOS)
    got = make_kd_loss_fn(teacher, KDConfig(lam=0.0, alpha=1.0, teacher_context="none"), layer_map={2: 3})(
        student, batch
    )
    s_out = student(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        output_hidden_states=True,
    )
    t_out = teacher(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        output_hidden_states=True,
    )
    expected = kd_loss(
        s_out.logits,
        t_out.logits,
        batch["input_ids"],
        batch["loss_mask"],
        lam=0.0,
        alpha=1.0,
        student_hidden=s_out.hidden_states[2],
        teacher_hidden=t_out.hidden_states[3],
    )
    torch.testing.assert_close(got, expected.total.detach())
    assert (expected.mse > 0).all()


def test_projection_path_trains_with_different_widths():
    student, teacher = tiny_gpt2(16, n_layer=2, seed=7), tiny_gpt2(32, n_layer=4, seed=8)
    model = StudentWithProjection(student, teacher_width=32)
    loss_fn = make_kd_loss_fn(teacher, KDConfig(lam=0.5, temperature=2.0, alpha=1.0), hidden_projection=True)
    batch = collate_kd(examples(), pad_id=EOS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = loss_fn(model, batch).mean()
        loss.backward()
        assert model.projection.linear.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert model.student is student  # what the stage saves


def test_width_mismatch_without_projection_names_both_widths_and_the_fix():
    student, teacher = tiny_gpt2(16, seed=9), tiny_gpt2(32, seed=10)
    batch = collate_kd(examples(), pad_id=EOS)
    with pytest.raises(ValueError, match=r"16.*32.*projection="):
        make_kd_loss_fn(teacher, KDConfig(alpha=1.0))(student, batch)
    logits_and_mask = (
        torch.randn(1, 3, 5),
        torch.randn(1, 3, 5),
        torch.zeros(1, 3, dtype=torch.long),
        torch.ones(1, 3),
    )
    hidden = {"student_hidden": torch.randn(1, 3, 16), "teacher_hidden": torch.randn(1, 3, 32), "alpha": 1.0}
    with pytest.raises(ValueError, match=r"16.*32.*projection="):
        kd_loss(*logits_and_mask, **hidden)
    kd_loss(*logits_and_mask, **hidden, projection=HiddenProjection(16, 32))  # with the projection it works


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_opacus_sees_the_projection_and_per_sample_grads_match_a_loop():
    from opacus import GradSampleModule

    student, teacher = tiny_gpt2(16, n_layer=1, seed=11), tiny_gpt2(32, n_layer=2, seed=12)
    model = StudentWithProjection(student, teacher_width=32)
    loss_fn = make_kd_loss_fn(teacher, KDConfig(lam=0.5, temperature=2.0, alpha=1.0))
    data = examples()
    private = GradSampleModule(copy.deepcopy(model), batch_first=True, loss_reduction="mean")
    loss_fn(private, collate_kd(data, pad_id=EOS)).mean().backward()
    per_sample = private._module.projection.linear.weight.grad_sample
    assert per_sample.shape == (len(data), 32, 16)
    for n, ex in enumerate(data):
        model.zero_grad()
        loss_fn(model, collate_kd([ex], pad_id=EOS)).mean().backward()
        # with loss_reduction="mean" Opacus undoes the 1/B: grad_sample is each example's own gradient
        torch.testing.assert_close(per_sample[n], model.projection.linear.weight.grad, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Batches and teacher alignment
# ----------------------------------------------------------------------------------------------


def test_collate_kd_builds_student_and_teacher_rows():
    data = examples()
    batch = collate_kd(data, pad_id=EOS)
    for b, ex in enumerate(data):
        n, k = len(ex["input_ids"]), len(ex["prefix_ids"])
        assert batch["input_ids"][b, :n].tolist() == ex["input_ids"]
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["loss_mask"][b, :n].tolist() == [0.0] + [1.0] * (n - 1)
        assert batch["loss_mask"][b, n:].sum() == 0
        teacher_row = [EOS] + ex["prefix_ids"] + ex["input_ids"][1:]
        assert batch["teacher_input_ids"][b, : n + k].tolist() == teacher_row
        assert batch["teacher_attention_mask"][b].sum() == n + k
        assert batch["teacher_offset"][b] == k
    assert batch["position_ids"][0].tolist() == list(range(batch["input_ids"].shape[1]))
    assert batch["teacher_position_ids"][0].tolist() == list(range(batch["teacher_input_ids"].shape[1]))
    from distildp.lm.training import collate_lm

    plain = collate_lm([{"input_ids": ex["input_ids"]} for ex in data], EOS)
    for key in ("input_ids", "attention_mask", "position_ids", "loss_mask"):
        torch.testing.assert_close(batch[key], plain[key].to(batch[key].dtype))


def test_code_prefixed_teacher_logits_align_with_the_students_tokens():
    teacher = tiny_gpt2(24, n_layer=2, seed=13).eval()
    data = examples()
    batch = collate_kd(data, pad_id=EOS)
    aligned = teacher_outputs_for_student(teacher, batch, "code_prefix", output_hidden_states=True)
    assert aligned.logits.shape[:2] == batch["input_ids"].shape
    for b, ex in enumerate(data):
        n, k = len(ex["input_ids"]), len(ex["prefix_ids"])
        ids = torch.tensor([[EOS] + ex["prefix_ids"] + ex["input_ids"][1:]])
        with torch.no_grad():
            single = teacher(input_ids=ids, position_ids=torch.arange(n + k)[None], output_hidden_states=True)
        torch.testing.assert_close(aligned.logits[b, :n], single.logits[0, k : k + n], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            aligned.hidden_states[-1][b, :n], single.hidden_states[-1][0, k : k + n], atol=1e-5, rtol=1e-4
        )
        # The aligned teacher row at student position i predicts the student's token i + 1.
        assert ids[0, k + 1 : k + n].tolist() == ex["input_ids"][1:]
    assert not aligned.logits.requires_grad


def test_teacher_context_none_uses_the_students_input():
    teacher = tiny_gpt2(24, seed=14).eval()
    batch = collate_kd(examples(), pad_id=EOS)
    got = teacher_logits_for_student(teacher, batch, teacher_context="none")
    with torch.no_grad():
        direct = teacher(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
    torch.testing.assert_close(got, direct)
    prefixed = teacher_logits_for_student(teacher, batch, teacher_context="code_prefix")
    assert not torch.allclose(got[0, :6], prefixed[0, :6])  # example 0 has a prefix: the context matters
    torch.testing.assert_close(got[3, :5], prefixed[3, :5])  # example 3 has none: same view


@pytest.mark.parametrize("context", ["code_prefix", "none"])
def test_cached_teacher_states_give_the_live_teachers_logits_and_loss(context):
    teacher = tiny_gpt2(24, n_layer=2, seed=17).eval()
    student = tiny_gpt2(16, seed=18)
    data = examples() * 3
    cached = attach_teacher_states(teacher, data, pad_id=EOS, teacher_context=context, batch_size=5)
    for ex, with_states in zip(data, cached):
        assert with_states["teacher_states"].shape == (len(ex["input_ids"]), 24)
        assert with_states["input_ids"] == ex["input_ids"]  # the examples themselves are untouched
    assert "teacher_states" not in data[0]
    assert teacher_states_bytes(teacher, data) == sum(len(ex["input_ids"]) for ex in data) * 24 * 4
    order = [4, 0, 9, 2, 7]  # another batch composition (and padding) than the cache was computed with
    live_batch = collate_kd([data[i] for i in order], pad_id=EOS)
    cached_batch = collate_kd([cached[i] for i in order], pad_id=EOS)
    assert cached_batch["teacher_states"].shape == (*live_batch["input_ids"].shape, 24)
    live = teacher_logits_for_student(teacher, live_batch, context)
    from_cache = teacher_logits_for_student(teacher, cached_batch, context)
    mask = live_batch["attention_mask"].bool()
    torch.testing.assert_close(from_cache[mask], live[mask], atol=1e-5, rtol=1e-4)
    loss_fn = make_kd_loss_fn(teacher, KDConfig(lam=0.4, teacher_context=context, weighting="paper_sum"))
    torch.testing.assert_close(loss_fn(student, cached_batch), loss_fn(student, live_batch), atol=1e-5, rtol=1e-5)


def test_hidden_state_alignment_runs_the_teacher_live_even_with_cached_states():
    teacher, student = tiny_gpt2(16, n_layer=2, seed=19).eval(), tiny_gpt2(16, n_layer=1, seed=20)
    cached = attach_teacher_states(teacher, examples(), pad_id=EOS)
    batch = collate_kd(cached, pad_id=EOS)
    batch["teacher_states"] = torch.zeros_like(batch["teacher_states"])  # would poison the logits if used
    loss_fn = make_kd_loss_fn(teacher, KDConfig(lam=0.4, alpha=1.0))
    live = make_kd_loss_fn(teacher, KDConfig(lam=0.4, alpha=1.0))(student, collate_kd(examples(), pad_id=EOS))
    torch.testing.assert_close(loss_fn(student, batch), live)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": -0.1}, "lam"),
        ({"lam": 1.5}, "lam"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"alpha": -0.5}, "alpha"),
        ({"teacher_context": "prefix"}, "teacher_context"),
        ({"weighting": "sum"}, "weighting"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_kd_loss_fn(tiny_gpt2(), KDConfig(**kwargs))


def test_bad_shapes_and_batches_are_refused():
    with pytest.raises(ValueError, match="vocab"):
        kd_loss(torch.randn(1, 3, 5), torch.randn(1, 3, 6), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3))
    with pytest.raises(ValueError, match="loss_mask"):
        kd_loss(torch.randn(1, 3, 5), torch.randn(1, 3, 5), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 4))
    with pytest.raises(ValueError, match="paired hidden states"):
        kd_loss(
            torch.randn(1, 3, 5), torch.randn(1, 3, 5), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), alpha=1.0
        )
    with pytest.raises(ValueError, match="collate_kd"):
        teacher_logits_for_student(tiny_gpt2(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="input_ids"):
        collate_kd([{"input_ids": [EOS], "prefix_ids": [3]}], pad_id=EOS)
    with pytest.raises(ValueError, match="out of range"):
        batch = collate_kd(examples(), pad_id=EOS)
        make_kd_loss_fn(tiny_gpt2(n_layer=2), KDConfig(alpha=1.0), layer_map={3: 1})(tiny_gpt2(n_layer=2), batch)


def _word_level_tokenizer(words: list[str], eos: str = "<|endoftext|>"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([eos] + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=eos))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token=eos, pad_token=eos)


def test_check_compatible():
    a = _word_level_tokenizer(["good", "food", "slow"])
    check_compatible(a, _word_level_tokenizer(["good", "food", "slow"]))
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_compatible(a, _word_level_tokenizer(["good", "food", "fast"]))
    other_eos = _word_level_tokenizer(["good", "food", "slow"])
    other_eos.pad_token = "good"
    with pytest.raises(ValueError, match="pad_token"):
        check_compatible(a, other_eos)


# ----------------------------------------------------------------------------------------------
# With the training loop (distildp.dp.dpsgd)
# ----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("privacy", [None, "hooks", "ghost"])
def test_kd_loss_fn_trains_through_train_causal_lm(privacy):
    from distildp.dp.dpsgd import train_causal_lm
    from distildp.lm.training import TrainConfig

    from helpers import seeded_privacy

    student, teacher = tiny_gpt2(16, n_layer=1, seed=15), tiny_gpt2(32, n_layer=2, seed=16)
    model = StudentWithProjection(student, teacher_width=32)
    before = model.projection.linear.weight.detach().clone()
    data = examples() * 4
    privacy_cfg = (
        None if privacy is None else seeded_privacy(noise_multiplier=0.5, grad_sample_mode=privacy, delta=1e-3)
    )
    report = train_causal_lm(
        model,
        data,
        TrainConfig(batch_size=8, epochs=2, max_steps=3, lr=1e-2),
        privacy_cfg,
        loss_fn=make_kd_loss_fn(teacher, KDConfig(lam=0.5, temperature=2.0, alpha=1.0), hidden_projection=True),
        collate_fn=lambda exs: collate_kd(exs, pad_id=EOS),
        progress=False,
    )
    assert report.steps == 3 and all(math.isfinite(x) for x in report.losses)
    assert not torch.equal(model.projection.linear.weight, before)  # the projection was trained
    assert report.private == (privacy is not None)
    assert report.tied_embeddings_untied == (privacy == "ghost")  # through the wrapper's pass-throughs
