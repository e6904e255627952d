"""Stage 3 (distildp.distill.synthetic_training): the student on synthetic text, kept at its best held-out step, with
hard
labels or the KD loss; a teacher's outputs cached or computed live give the same student."""

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from distildp.data.corpus import control_prefix
from distildp.distill.synthetic_training import train_on_synthetic
from distildp.lm.evaluate import perplexity
from distildp.pipeline.settings import make_settings

from helpers import CODES, code_teacher, code_tokenizer

WORDS = "the food was great terrible service room car repair slow friendly staff clean dirty".split()


@pytest.fixture(scope="module")
def tok():
    return code_tokenizer()


def synthetic_set(n: int = 26):
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n)]
    prefixes = [control_prefix(CODES[i % len(CODES)]) for i in range(n)]
    return texts, prefixes


def student(tok, n_embd: int = 16) -> GPT2LMHeadModel:
    torch.manual_seed(5)
    eos = tok.eos_token_id
    config = GPT2Config(
        vocab_size=len(tok), n_embd=n_embd, n_layer=1, n_head=2, n_positions=64, bos_token_id=eos, eos_token_id=eos
    )
    return GPT2LMHeadModel(config)


def synthetic_config(**overrides):  # how the tests train students: the smoke profile, quicker
    train = {"epochs": 3, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0, "group_by_length": True}
    return make_settings(
        "smoke", {"distill_train": train, "synthetic_val_fraction": 0.25, **overrides}
    ).synthetic_training()


def test_hard_labels_select_on_held_out_synthetic_text_and_keep_the_best_check(tok):
    texts, prefixes = synthetic_set()
    model = student(tok)
    done = train_on_synthetic(model, tok, texts, prefixes, synthetic_config(lam=0.0), seed=2, progress=False)
    assert done.n_val == 6 and done.teacher_states is None
    held_out = [texts[i] for i in np.random.default_rng(2).permutation(len(texts))[:6]]
    assert [step for step, _ in done.selector.curve] == [5, 10, 15]  # once per epoch: 20 texts in batches of 4
    assert done.selector.best_ppl == min(ppl for _, ppl in done.selector.curve)
    left_at = perplexity(model, tok, held_out, per_document=True, progress=False).ppl
    assert left_at == pytest.approx(done.selector.best_ppl, rel=1e-6)
    assert done.report.losses[-1] < done.report.losses[0] and not model.training


@pytest.mark.parametrize("cache", ["probabilities", "last hidden states"])
def test_kd_with_the_teachers_outputs_cached_gives_the_student_that_live_outputs_give(tok, cache, monkeypatch):
    texts, prefixes = synthetic_set()
    teacher = code_teacher(tok)
    if cache == "last hidden states":  # probabilities that do not fit: the states, which do
        monkeypatch.setattr("distildp.distill.synthetic_training.teacher_probs_bytes", lambda *args: math.inf)
    cached, live = student(tok), student(tok)
    first = train_on_synthetic(
        cached, tok, texts, prefixes, synthetic_config(), seed=0, teacher=teacher, progress=False
    )
    second = train_on_synthetic(
        live, tok, texts, prefixes, synthetic_config(teacher_cache_gib=0.0), seed=0, teacher=teacher, progress=False
    )
    assert first.teacher_states.startswith(f"{cache} cached once") and second.teacher_states == "live every step"
    # float16 probabilities round each by up to 2^-11 of itself; the states only by float32's rounding
    rtol = 1e-3 if cache == "probabilities" else 1e-5
    assert first.report.losses == pytest.approx(second.report.losses, rel=rtol)
    for a, b in zip(cached.parameters(), live.parameters()):  # Adam magnifies float noise in near-zero gradients
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 if cache != "probabilities" else 1e-3)
    hard = student(tok)
    train_on_synthetic(hard, tok, texts, prefixes, synthetic_config(lam=0.0), seed=0, progress=False)
    assert not torch.allclose(hard.transformer.wte.weight, cached.transformer.wte.weight)  # the teacher mattered


def test_hidden_alignment_across_widths_trains_a_projection_and_returns_the_plain_student(tok):
    texts, prefixes = synthetic_set()
    model = student(tok, n_embd=8)  # the teacher is 16 wide
    before = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    done = train_on_synthetic(
        model, tok, texts, prefixes, synthetic_config(alpha=1.0), seed=0, teacher=code_teacher(tok), progress=False
    )
    assert done.teacher_states == "live every step"  # hidden states are never cached
    assert not torch.equal(before, model.transformer.h[0].mlp.c_fc.weight)
    assert set(model.state_dict()) == set(student(tok, n_embd=8).state_dict())  # no projection left on it
