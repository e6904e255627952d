"""Tests of distildp.lm.sampling: the next-token distribution against transformers' processors and warpers, and the
cached, left-padded decode loop against full forward passes."""

import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from scipy.stats import chi2
from transformers import GPT2Config, GPT2LMHeadModel

import distildp.lm.sampling as sampling
from distildp.data.corpus import control_prefix
from distildp.lm.sampling import GenerationConfig, draw, next_token_distribution, sample_batch

from helpers import CODES, code_teacher, code_tokenizer


def small_cfg(**kw):
    return GenerationConfig(**{"max_length": 24, "batch_size": 4, **kw})


def test_left_padding_matches_unpadded_generation_and_excludes_prompt():
    tokenizer = code_tokenizer()
    model = code_teacher(tokenizer)
    eos = tokenizer.eos_token_id
    short = [eos] + tokenizer("the food", add_special_tokens=False)["input_ids"]
    long = [eos] + tokenizer(control_prefix(CODES[2]), add_special_tokens=False)["input_ids"]
    assert len(long) > len(short) + 3
    cfg = GenerationConfig(top_k=1, max_length=len(long) + 8)  # top_k=1: greedy, no-repeat 2-grams on
    batched = sample_batch(model, [short, long], cfg, eos)
    alone = [sample_batch(model, [p], cfg, eos)[0] for p in (short, long)]
    assert batched == alone
    # max_length counts the prompt: each row gets exactly its own remaining budget (unless it hit [eos]).
    for prompt, out in zip((short, long), batched):
        assert len(prompt) + len(out) <= cfg.max_length
    assert eos not in batched[0] + batched[1]
    # The prompt is not echoed: the greedy continuation of `long` does not start with its prompt.
    assert batched[1][: len(long) - 1] != long[1:]


def transformers_probs(logits, ids, cfg):
    """Reference: transformers' own chain (no-repeat n-gram processor, then temperature, top-k and top-p
    warpers) on `ids` as they stand, softmaxed over the whole vocabulary."""
    from transformers import NoRepeatNGramLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    chain = [TemperatureLogitsWarper(cfg.temperature), TopPLogitsWarper(cfg.top_p)]
    if cfg.top_k:  # transformers leaves the top-k warper out at top_k = 0
        chain.insert(1, TopKLogitsWarper(cfg.top_k))
    if cfg.no_repeat_ngram_size:
        chain.insert(0, NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram_size))
    scores = logits.float()
    for processor in chain:
        scores = processor(ids, scores)
    return scores.softmax(-1)


def tiny_gpt2(n_layer=2, init=0.02):
    """init: the weights' std; a large one makes every part of the network move the logits."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=50,
            n_embd=16,
            n_layer=n_layer,
            n_head=2,
            n_positions=32,
            initializer_range=init,
            bos_token_id=0,
            eos_token_id=0,
        )
    ).eval()


@pytest.mark.parametrize(
    "top_k, top_p, temperature, n",
    [
        (50, 0.9, 1.0, 2),
        (10, 0.5, 0.7, 3),
        (300, 1.0, 1.3, 1),
        (1, 0.9, 1.0, 2),
        (5, 0.8, 1.0, 0),
        (0, 1.0, 1.0, 0),
        (0, 1.0, 0.8, 2),
        (0, 0.9, 1.0, 0),
    ],
)
def test_next_token_distribution_equals_transformers_processors(top_k, top_p, temperature, n):
    """On a left-padded batch, each row's distribution equals transformers' chain on that row alone."""
    cfg = GenerationConfig(top_k=top_k, top_p=top_p, temperature=temperature, no_repeat_ngram_size=n)
    g = torch.Generator().manual_seed(top_k + n)
    pad, vocab = 0, 300
    # Rows start with the pad token, as our prompts start with [eos]; few distinct tokens, so n-grams repeat,
    # and those tokens are the likeliest, so the ban changes the distribution.
    rows = [[pad] + torch.randint(1, 4, (length - 1,), generator=g).tolist() for length in (9, 4, 12, 1, 2, 12)]
    width = max(map(len, rows))
    tokens = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    n_pad = torch.tensor([width - len(r) for r in rows])
    logits = torch.randn(len(rows), vocab, generator=g) * 3
    logits[:, :4] = 10 + torch.randn(len(rows), 4, generator=g)

    def ours(cfg):
        candidates, probs = next_token_distribution(logits, tokens, n_pad, cfg)
        return torch.zeros(len(rows), vocab).scatter_(1, candidates, probs)

    got = ours(cfg)
    for i, row in enumerate(rows):
        torch.testing.assert_close(
            got[i],
            transformers_probs(logits[i : i + 1], torch.tensor([row]), cfg)[0],
            atol=1e-6,
            rtol=1e-5,
            msg=f"row {i}",
        )
    # transformers on the padded batch counts the pads as text: for rows that start with the pad token and
    # hold at least n tokens (our prompts) that bans nothing more
    full = [i for i, r in enumerate(rows) if len(r) >= n]
    torch.testing.assert_close(got[full], transformers_probs(logits, tokens, cfg)[full], atol=1e-6, rtol=1e-5)
    if n:
        assert not torch.allclose(got, ours(replace(cfg, no_repeat_ngram_size=0)))  # the ban bites


def test_cached_decoding_with_left_padding_and_dropped_rows_equals_full_forward(monkeypatch):
    """Script the tokens; at every step each row's logits must equal a full forward of its unpadded text,
    while rows of different prompt lengths end (by [eos] or by max_length) and leave the batch."""
    model, eos = tiny_gpt2(init=0.5), 0
    prompts = [
        [eos, 1, 7, 9],
        [eos, 2, 3, 4, 5, 6, 8, 9],
        [eos, 3, 11],
        [eos, 4, 12, 13, 14, 15],
        [eos, 5, 9, 8, 7, 6, 5, 4],
    ]
    stop = [2, None, 0, 3, None]  # the step at which each row emits [eos]; None: runs to max_length
    cfg = GenerationConfig(max_length=14)
    by_second_token = {p[1]: i for i, p in enumerate(prompts)}
    batch_sizes = []

    def scripted(logits, tokens, n_pad, cfg):
        batch_sizes.append(len(tokens))
        chosen = []
        for i in range(len(tokens)):
            text = tokens[i, int(n_pad[i]) :]
            torch.testing.assert_close(logits[i], model(text[None]).logits[0, -1], atol=1e-5, rtol=1e-4)
            row = by_second_token[int(text[1])]
            step = len(text) - len(prompts[row])
            chosen.append(eos if step == stop[row] else 20 + (3 * row + step) % 25)
        return torch.tensor(chosen)

    monkeypatch.setattr(sampling, "next_token", scripted)
    got = sample_batch(model, prompts, cfg, eos)
    budgets = [cfg.max_length - len(p) for p in prompts]
    assert got == [
        [20 + (3 * row + step) % 25 for step in range(budgets[row] if stop[row] is None else stop[row])]
        for row in range(len(prompts))
    ]
    # rows left as they ended; at the end only unpadded rows were left
    assert batch_sizes == [5, 4, 4, 3, 2, 2]


@pytest.mark.parametrize("n, prompt, banned", [(2, [0, 5, 6, 5], 6), (3, [0, 5, 6, 5, 6], 5)])
def test_first_two_tokens_follow_the_exact_distribution(n, prompt, banned):
    """4000 samples of two tokens against their exact probabilities (transformers' chain on full forwards).
    Biased logits make the prompt's likeliest next token one that no-repeat n-grams ban."""
    model, eos = tiny_gpt2(n_layer=1), 0
    bias = torch.zeros(50)
    bias[[5, 6, 7, 8]] = torch.tensor([2.0, 1.5, 1.0, 0.5])
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    cfg = GenerationConfig(top_k=3, top_p=0.95, temperature=0.8, no_repeat_ngram_size=n, max_length=len(prompt) + 2)

    def probs(ids):
        with torch.no_grad():
            return transformers_probs(model(torch.tensor([ids])).logits[:, -1], torch.tensor([ids]), cfg)[0]

    exact, first = {}, probs(prompt)
    for t1 in first.nonzero().flatten().tolist():
        if t1 == eos:
            exact[(eos,)] = float(first[t1])
            continue
        second = probs(prompt + [t1])
        for t2 in second.nonzero().flatten().tolist():
            exact[(t1, t2)] = float(first[t1] * second[t2])
    assert banned not in {key[0] for key in exact}
    torch.manual_seed(0)
    samples = sample_batch(model, [prompt] * 4000, cfg, eos)
    counts = Counter(tuple(s) + (eos,) * (len(s) < 2) if s else (eos,) for s in samples)
    assert set(counts) <= set(exact), set(counts) - set(exact)
    expected = {key: p * len(samples) for key, p in exact.items()}
    statistic = sum((counts[key] - e) ** 2 / e for key, e in expected.items())
    assert chi2.sf(statistic, len(exact) - 1) > 1e-3, (statistic, counts, expected)


def test_sample_batch_is_seeded():
    tokenizer = code_tokenizer()
    model = code_teacher(tokenizer)
    eos = tokenizer.eos_token_id
    prompts = [[eos] + tokenizer(control_prefix(c), add_special_tokens=False)["input_ids"] for c in CODES] * 3
    biased = GPT2LMHeadModel(model.config).eval()
    biased.load_state_dict(model.state_dict())  # [eos] likelier, so rows end at different steps
    biased.lm_head.register_forward_hook(
        lambda m, i, out: out + torch.nn.functional.one_hot(torch.tensor(eos), out.shape[-1]) * 2.0
    )

    def sample(seed):
        torch.manual_seed(seed)
        return sample_batch(biased, prompts, small_cfg(max_length=40), eos)

    first = sample(5)
    assert sample(5) == first and sample(6) != first
    assert len({len(ids) for ids in first}) > 3


@pytest.mark.parametrize("vocab, k", [(2048, 50), (2049, 50), (300, 7), (1000, 1), (50, 50)])
def test_top_k_candidates_are_torch_topk(vocab, k):
    """The candidates (found over blocks of the vocabulary) are torch.topk's, with its order and ties."""
    scores = torch.randn(4, vocab, generator=torch.Generator().manual_seed(vocab)) * 3
    scores[0, 3:] = -math.inf  # fewer allowed tokens than k: the rest are -inf ties
    cfg = GenerationConfig(top_k=k, top_p=1.0, temperature=1.0, no_repeat_ngram_size=0)
    ids, probs = next_token_distribution(
        scores, torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, dtype=torch.long), cfg
    )
    expected = torch.topk(scores, k)
    assert torch.equal(ids[1:], expected.indices[1:]) and torch.equal(ids[0, :3], expected.indices[0, :3])
    assert torch.equal(scores.gather(1, ids), expected.values)  # ids in range, each with its value
    torch.testing.assert_close(probs, expected.values.softmax(-1))


def test_draw_follows_the_probabilities():
    candidates = torch.tensor([[4, 1, 2, 0]])
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.manual_seed(0)
    draws = Counter(int(draw(candidates, probs)) for _ in range(4000))
    for token, p in zip(candidates[0].tolist(), probs[0].tolist()):
        assert abs(draws[token] / 4000 - p) < 4 * (p * (1 - p) / 4000) ** 0.5, (token, draws)


def test_draw_never_picks_a_zero_probability_and_follows_each_rows_own_distribution():
    candidates = torch.tensor([[7, 8, 9, 10], [3, 4, 5, 6]])
    probs = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.25, 0.0, 0.25, 0.5]])  # rows need not sum to 1, as multinomial
    torch.manual_seed(1)
    drawn = torch.stack([draw(candidates, probs) for _ in range(3000)])
    assert set(drawn[:, 0].tolist()) == {9}  # the only entry with mass
    counts = Counter(drawn[:, 1].tolist())
    assert 4 not in counts
    for token, p in ((3, 0.25), (5, 0.25), (6, 0.5)):
        assert abs(counts[token] / 3000 - p) < 4 * (p * (1 - p) / 3000) ** 0.5, counts


def test_sampling_needs_a_gpt2():
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        sample_batch(torch.nn.Linear(2, 2), [[0, 1]], small_cfg(), 0)
