"""distildp.distill.on_policy (DP-OPD's loss): the divergences against a per-row reference, the batched continuation
loss against a per-example loop, on-policy sampling from the student, and one DP-SGD step at sigma = 0 without
clipping equal to the non-private step."""

import math

import pytest
import torch

from distildp.distill import on_policy
from distildp.distill.on_policy import (
    OnPolicyConfig,
    collate_prompts,
    continuation_losses,
    continued_batch,
    make_on_policy_loss_fn,
    sample_continuations,
    token_divergence,
)
from distildp.dp.dpsgd import train_causal_lm
from distildp.lm.training import TrainConfig

from helpers import VOCAB, params, seeded_privacy, tiny_model

EOS = 0


def prompts(n: int, seed: int = 0) -> list[dict]:
    """[eos] + 1-5 random tokens, each with 0-3 code tokens for the teacher: unequal lengths, so batches pad."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length, codes = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g))
        text = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        out.append({"input_ids": [EOS] + text, "prefix_ids": torch.randint(1, VOCAB, (codes,), generator=g).tolist()})
    return out


# ---------------------------------------------------------------------------------------------- divergences
def reference_divergence(s: torch.Tensor, t: torch.Tensor, kind: str, beta: float) -> float:
    """One row, in float64, straight from the definitions."""
    p_s, p_t = s.double().softmax(-1), t.double().softmax(-1)

    def kl(a, b):
        return float(sum(a[i] * math.log(a[i] / b[i]) for i in range(len(a))))

    if kind == "forward_kl":
        return kl(p_t, p_s)
    if kind == "reverse_kl":
        return kl(p_s, p_t)
    m = beta * p_t + (1 - beta) * p_s
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


@pytest.mark.parametrize("kind, beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)])
def test_each_divergence_equals_its_definition_row_by_row(kind, beta):
    student, teacher = torch.randn(5, 11) * 3, torch.randn(5, 11) * 3
    got = token_divergence(student, teacher, kind, beta)
    want = [reference_divergence(student[r], teacher[r], kind, beta) for r in range(5)]
    assert got.tolist() == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert token_divergence(student, student, kind, beta).abs().max() < 1e-5  # zero where the two agree


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="unknown divergence 'kl'; choose from"):
        OnPolicyConfig(divergence="kl")
    with pytest.raises(ValueError, match="beta must lie strictly between 0 and 1"):
        OnPolicyConfig(divergence="jsd", beta=1.0)
    with pytest.raises(ValueError, match="prompt_tokens and continuation_tokens must be >= 1"):
        OnPolicyConfig(continuation_tokens=0)


# ---------------------------------------------------------------------------------------------- the loss
def loss_alone(student, teacher, prompt: dict, continuation: list[int], cfg: OnPolicyConfig) -> torch.Tensor:
    """Reference: one example on its own (no padding), its teacher row written out by hand."""
    ids = prompt["input_ids"] + continuation
    student_logits = student(torch.tensor([ids])).logits[0]
    teacher_ids = ids[:1] + prompt["prefix_ids"] + ids[1:]
    with torch.no_grad():
        teacher_logits = teacher(torch.tensor([teacher_ids])).logits[0, len(prompt["prefix_ids"]) :]
    # position j predicts token j + 1: the continuation's tokens are predicted from the prompt's last position on
    predicting = range(len(prompt["input_ids"]) - 1, len(ids) - 1)
    per_token = [
        token_divergence(student_logits[j : j + 1], teacher_logits[j : j + 1], cfg.divergence, cfg.beta)
        for j in predicting
    ]
    return torch.cat(per_token).mean()


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_the_batched_continuation_loss_equals_a_per_example_loop_with_padding(divergence):
    student, teacher = tiny_model(0), tiny_model(1).eval()
    cfg = OnPolicyConfig(divergence=divergence)
    examples = prompts(6)
    g = torch.Generator().manual_seed(1)
    continuations = [
        torch.randint(1, VOCAB, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist() for _ in examples
    ]
    continuations[0] += [EOS]  # one that ended by itself: its closing [eos] is scored too
    batch = continued_batch(collate_prompts(examples), continuations, pad_id=EOS)
    assert batch["input_ids"].shape[1] > min(len(e["input_ids"]) + len(c) for e, c in zip(examples, continuations))
    got = continuation_losses(student, teacher, batch, cfg)
    want = torch.stack([loss_alone(student, teacher, e, c, cfg) for e, c in zip(examples, continuations)])
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6)
    # the plain-text teacher reads no codes: the same loss as a teacher whose prefixes are all empty
    plain = cfg
    without_codes = [{**e, "prefix_ids": []} for e in examples]
    want_plain = [loss_alone(student, teacher, e, c, plain) for e, c in zip(without_codes, continuations)]
    torch.testing.assert_close(
        continuation_losses(student, teacher, batch, plain, teacher_context="none"),
        torch.stack(want_plain).detach(),
        rtol=1e-4,
        atol=1e-6,
    )


def test_continuations_are_the_students_own_samples_under_a_fixed_seed():
    student, teacher = tiny_model(0).eval(), tiny_model(1).eval()
    prompt = prompts(1)[0]["input_ids"]
    torch.manual_seed(7)
    drawn = sample_continuations(student, [prompt], 6, EOS)[0]
    # by hand: the student's full softmax at each step, one uniform number per token as sampling draws it
    torch.manual_seed(7)
    ids, by_hand = list(prompt), []
    with torch.no_grad():
        for _ in range(6):
            probs = student(torch.tensor([ids])).logits[0, -1].double().softmax(-1)
            cumulative = probs.cumsum(-1)
            u = torch.rand(1, 1, dtype=torch.float64) * cumulative[-1:]
            token = int(torch.searchsorted(cumulative, u, right=True).clamp(max=VOCAB - 1))
            by_hand.append(token)
            if token == EOS:
                break
            ids.append(token)
    assert drawn == by_hand
    torch.manual_seed(7)
    assert sample_continuations(teacher, [prompt], 6, EOS)[0] != drawn  # another model draws another text


def test_the_loss_samples_from_the_model_it_trains(monkeypatch):
    student, teacher = tiny_model(0), tiny_model(1)
    seen = []

    def spy(model, batch_prompts, max_new, eos_id):
        seen.append(model)
        return sample_continuations(model, batch_prompts, max_new, eos_id)

    monkeypatch.setattr(on_policy, "sample_continuations", spy)
    loss_fn = make_on_policy_loss_fn(teacher, OnPolicyConfig(continuation_tokens=5), EOS, EOS)
    losses = loss_fn(student, collate_prompts(prompts(4)))
    assert seen == [student] and losses.shape == (4,) and bool((losses >= 0).all())
    assert not teacher.training  # frozen: evaluation mode, no dropout


# ---------------------------------------------------------------------------------------------- DP-SGD
def one_dp_step(monkeypatch, student, teacher, examples, cfg, clip: float, lr: float) -> list[list[int]]:
    """One DP-SGD step of DP-OPD at sigma = 0 over all `examples` (q = 1); the continuations it drew, in the order the
    step saw the examples: sorted by prompt length (a stable sort)."""
    drawn = []

    def recording(model, batch_prompts, max_new, eos_id):
        drawn.append(sample_continuations(model, batch_prompts, max_new, eos_id))
        return drawn[-1]

    monkeypatch.setattr(on_policy, "sample_continuations", recording)
    train = TrainConfig(epochs=1, batch_size=len(examples), lr=lr, optimizer="sgd", seed=3, max_steps=1)
    privacy = seeded_privacy(noise_multiplier=0.0, max_grad_norm=clip)
    loss_fn = make_on_policy_loss_fn(teacher, cfg, EOS, EOS)
    train_causal_lm(student, examples, train, privacy, loss_fn=loss_fn, collate_fn=collate_prompts, progress=False)
    assert len(drawn) == 1 and len(drawn[0]) == len(examples)
    return drawn[0]


def test_a_dp_sgd_step_at_sigma_zero_without_clipping_is_the_non_private_step(monkeypatch):
    """Every example in the batch (q = 1), sigma = 0 and a clipping norm no gradient reaches: the DP-OPD step equals
    one SGD step on the mean of the examples' losses, over the very continuations the DP step drew."""
    examples, cfg = prompts(5), OnPolicyConfig(continuation_tokens=6)
    teacher, student, reference = tiny_model(1), tiny_model(0), tiny_model(0)
    drawn = one_dp_step(monkeypatch, student, teacher, examples, cfg, clip=1e6, lr=0.5)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    batch = continued_batch(collate_prompts([examples[i] for i in order]), drawn, pad_id=EOS)
    reference.train()
    continuation_losses(reference, teacher.eval(), batch, cfg).mean().backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.5 * p.grad
    before = params(tiny_model(0))  # the updates are compared: they are far smaller than the weights
    for name, p in reference.named_parameters():
        step, want = params(student)[name] - before[name], p.detach() - before[name]
        torch.testing.assert_close(step, want, rtol=1e-3, atol=1e-8, msg=name)
    assert any(bool(p.detach().ne(before[name]).any()) for name, p in reference.named_parameters())  # it moved


def test_each_documents_gradient_is_clipped_on_its_own(monkeypatch):
    """With a clipping norm below every example's gradient norm (sigma = 0, q = 1), the step is the sum of each
    example's gradient, computed on that example alone and clipped to the norm, over the expected batch size:
    one document moves the student by at most the clipping norm, whatever its continuation."""
    examples, cfg, clip, lr = prompts(4, seed=2), OnPolicyConfig(continuation_tokens=5), 1e-3, 0.5
    teacher, student, reference = tiny_model(1), tiny_model(0), tiny_model(0)
    drawn = one_dp_step(monkeypatch, student, teacher, examples, cfg, clip=clip, lr=lr)

    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    total = {name: torch.zeros_like(p) for name, p in reference.named_parameters()}
    reference.train()
    for i, continuation in zip(order, drawn):
        reference.zero_grad(set_to_none=True)
        alone = continued_batch(collate_prompts([examples[i]]), [continuation], pad_id=EOS)
        continuation_losses(reference, teacher.eval(), alone, cfg).sum().backward()
        grads = {name: p.grad for name, p in reference.named_parameters()}
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads.values())))
        assert norm > clip  # the norm binds
        for name in total:
            total[name] += grads[name] * min(1.0, clip / (norm + 1e-6))
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p -= lr * total[name] / len(examples)
    before = params(tiny_model(0))  # the updates are compared: they are far smaller than the weights
    for name, p in reference.named_parameters():
        step, want = params(student)[name] - before[name], p.detach() - before[name]
        torch.testing.assert_close(step, want, rtol=1e-3, atol=1e-9, msg=name)
