"""Perplexity and its floor (distildp.lm.evaluate), each checked against a hand computation."""

import dataclasses
import math
import pydoc_data.topics
import random

import pytest
import torch

from distildp.data.corpus import control_prefix
from distildp.data.loaders import load_corpus
from distildp.data.source import ReviewSource
from distildp.dp.dpsgd import train_causal_lm
from distildp.lm.evaluate import (
    corpus_floor,
    corpus_marginal_perplexity,
    corpus_metrics,
    encode_documents,
    floor,
    marginal_perplexity,
    paper_perplexity,
    perplexity,
)
from distildp.lm.models import build_model, encode_with_prefix, train_tokenizer
from distildp.lm.training import TrainConfig

TEXTS = [
    "The soup was cold.",
    "Friendly staff, great coffee, and a quiet room to read in.",
    "Never again!",
    "We came for the tacos and stayed for the music; the salsa was superb.",
    "Fine.",
]
PREFIXES = [
    f"Business Category: {c}\tReview Stars: {s}\n\n"
    for c, s in zip(["Restaurants", "Cafes", "Bars", "Restaurants", "Hotels"], ["1.0", "5.0", "2.0", "4.0", "3.0"])
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(list(pydoc_data.topics.topics.values())[:20] + TEXTS * 3, vocab_size=400)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_model("tiny-student", tok, seed=3, n_embd=32, n_layer=2, n_head=2, n_positions=48).eval()


# ------------------------------------------------------------------------------------------- hand references
def logp_next(model, context: list[int], target: int) -> float:
    """log p(target | context), one forward pass from position 0."""
    with torch.no_grad():
        logits = model(torch.tensor([context])).logits[0, -1].double()
    return torch.log_softmax(logits, -1)[target].item()


def hand_stream(tok, texts, prefixes=None):
    """The stream [eos] p1 t1 [eos] p2 t2 [eos] ... built by hand, with the scored positions."""
    eos, ids, scored = tok.eos_token_id, [tok.eos_token_id], [False]
    for i, text in enumerate(texts):
        p = tok(prefixes[i])["input_ids"] if prefixes else []
        t = tok(text)["input_ids"]
        ids += p + t + [eos]
        scored += [False] * len(p) + [True] * (len(t) + 1)
    return ids, scored


def hand_sliding(model, ids, scored, L, S):
    """Token by token: target j is scored by the first window (begin k*S, end min(k*S+L, M)) reaching input j-1."""
    M = len(ids) - 1
    nll, n = 0.0, 0
    for j in range(1, len(ids)):
        if not scored[j]:
            continue
        k = 0
        while min(k * S + L, M) < j:
            k += 1
        nll -= logp_next(model, ids[k * S : j], ids[j])
        n += 1
    return nll, n


# ------------------------------------------------------------------------------------------- perplexity
def test_stream_encoding(tok):
    ids, scored = encode_documents(tok, TEXTS, PREFIXES)
    assert (ids, scored) == hand_stream(tok, TEXTS, PREFIXES)
    assert ids.count(tok.eos_token_id) == len(TEXTS) + 1  # one [eos] between documents, shared


@pytest.mark.parametrize("L,S", [(16, 8), (16, 5), (12, 12)])
def test_sliding_window_equals_token_loop(model, tok, L, S):
    ids, scored = hand_stream(tok, TEXTS, PREFIXES)
    assert len(ids) > 3 * L  # several windows
    nll, n = hand_sliding(model, ids, scored, L, S)
    got = perplexity(model, tok, TEXTS, PREFIXES, max_length=L, stride=S, batch_size=3, progress=False)
    assert got.n_tokens == n == sum(len(tok(t)["input_ids"]) + 1 for t in TEXTS)
    assert got.nll_sum == pytest.approx(nll, rel=1e-6)
    assert got.ppl == pytest.approx(math.exp(nll / n), rel=1e-6)


def test_stride_equal_to_window_is_disjoint_chunks(model, tok):
    ids, scored = hand_stream(tok, TEXTS)
    L = 10
    nll, n = 0.0, 0
    for begin in range(0, len(ids) - 1, L):  # chunk inputs [begin, begin+L) predict the next token each
        chunk = ids[begin : begin + L + 1]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([chunk[:-1]])).logits[0].double(), -1)
        for i in range(len(chunk) - 1):
            if scored[begin + i + 1]:
                nll -= logp[i, chunk[i + 1]].item()
                n += 1
    got = perplexity(model, tok, TEXTS, max_length=L, stride=L, progress=False)
    assert (got.n_tokens, got.nll_sum) == (n, pytest.approx(nll, rel=1e-6))


def test_full_context_is_one_forward_pass(model, tok):
    texts = [TEXTS[0], TEXTS[2], TEXTS[4]]  # short enough for one 48-token window
    ids, scored = hand_stream(tok, texts)
    assert len(ids) - 1 <= 48
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    nll = -sum(logp[j - 1, ids[j]].item() for j in range(1, len(ids)) if scored[j])
    got = perplexity(model, tok, texts, progress=False)  # max_length defaults to the model's 48 positions
    assert got.nll_sum == pytest.approx(nll, rel=1e-6)


def test_prefixes_are_context_not_scored(model, tok):
    plain = perplexity(model, tok, TEXTS, max_length=48, progress=False)
    coded = perplexity(model, tok, TEXTS, PREFIXES, max_length=48, progress=False)
    assert plain.n_tokens == coded.n_tokens
    assert plain.nll_sum != pytest.approx(coded.nll_sum)  # the prefix did condition the model


def test_per_document_restarts_context(model, tok):
    got = perplexity(model, tok, TEXTS, PREFIXES, per_document=True, progress=False)
    nll, n = 0.0, 0
    for text, prefix in zip(TEXTS, PREFIXES):
        ids, scored = hand_stream(tok, [text], [prefix])
        d_nll, d_n = hand_sliding(model, ids, scored, 48, 24)
        nll, n = nll + d_nll, n + d_n
    assert (got.n_tokens, got.nll_sum) == (n, pytest.approx(nll, rel=1e-6))


def test_uniform_model_has_vocabulary_perplexity(tok):
    model = build_model("tiny-student", tok, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    torch.nn.init.zeros_(model.transformer.wte.weight)  # tied head: every logit is 0
    got = perplexity(model, tok, TEXTS, max_length=32, progress=False)
    assert got.ppl == pytest.approx(len(tok), rel=1e-9)


def test_perplexity_rejects_bad_arguments(model, tok):
    with pytest.raises(ValueError, match="context"):
        perplexity(model, tok, TEXTS, max_length=49, progress=False)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tok, TEXTS, max_length=16, stride=17, progress=False)
    with pytest.raises(ValueError, match="prefix"):
        perplexity(model, tok, TEXTS, PREFIXES[:2], progress=False)
    with pytest.raises(ValueError, match="no texts"):
        perplexity(model, tok, [], progress=False)


def test_evaluation_restores_training_mode(model, tok):
    model.train()
    perplexity(model, tok, TEXTS[:2], progress=False)
    paper_perplexity(model, tok, TEXTS[:2], window=16)
    assert model.training
    model.eval()


def test_paper_perplexity_equals_hand_computation(model, tok):
    ids = tok("\n\n".join(TEXTS))["input_ids"]
    window = 16
    assert len(ids) % window >= 2  # a short last window, which counts as much as a full one
    means = []
    for begin in range(0, len(ids), window):
        chunk = ids[begin : begin + window]
        means.append(-sum(logp_next(model, chunk[:i], chunk[i]) for i in range(1, len(chunk))) / (len(chunk) - 1))
    expected = math.exp(sum(means) / len(means))
    assert paper_perplexity(model, tok, TEXTS, window=window) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------- floor
class WordSource:
    """Stand-in for distildp.data.source.ReviewSource (helper DATA writes the real one): a category picks a unigram
    distribution over words; a text is words joined by spaces, its length geometric. Exact log-probabilities."""

    words = ["good", "bad", "food", "staff", "slow", "fast", "great", "cold", "coffee", "room", "price", "again"]
    categories = ["Restaurants", "Cafes"]
    stop = 0.15

    def __init__(self, seed=0):
        rng = random.Random(seed)
        self.p_words = {}
        for c in self.categories:
            weights = [rng.random() ** 3 + 0.01 for _ in self.words]
            self.p_words[c] = {w: x / sum(weights) for w, x in zip(self.words, weights)}

    def sample(self, n, seed):
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            c = rng.choice(self.categories)
            words = [rng.choices(self.words, weights=list(self.p_words[c].values()))[0]]
            while rng.random() > self.stop:
                words.append(rng.choices(self.words, weights=list(self.p_words[c].values()))[0])
            out.append((" ".join(words), {"Business Category": c}))
        return out

    def log_prob(self, text, codes):
        words = text.split(" ")
        p = self.p_words[codes["Business Category"]]
        return sum(math.log(p[w]) for w in words) + (len(words) - 1) * math.log(1 - self.stop) + math.log(self.stop)

    def log_prob_marginal(self, text, categories=None):
        cats = categories or self.categories
        return math.log(sum(math.exp(self.log_prob(text, {"Business Category": c})) / len(cats) for c in cats))


def test_floor_counts_the_tokens_perplexity_scores(model, tok):
    source = WordSource()
    texts, codes = zip(*source.sample(20, seed=1))
    prefixes = [f"Business Category: {c['Business Category']}\n\n" for c in codes]
    student_floor = floor(source, tok, list(texts))
    teacher_floor = floor(source, tok, list(texts), list(codes))
    ppl = perplexity(model, tok, list(texts), prefixes, progress=False)
    assert student_floor.n_tokens == teacher_floor.n_tokens == ppl.n_tokens
    expected = -sum(source.log_prob_marginal(t) for t in texts)
    assert student_floor.nll_sum == pytest.approx(expected)
    assert student_floor.ppl == pytest.approx(math.exp(expected / ppl.n_tokens))
    assert teacher_floor.nll_sum == pytest.approx(-sum(source.log_prob(t, c) for t, c in zip(texts, codes)))
    with pytest.raises(ValueError, match="code dicts"):
        floor(source, tok, list(texts), list(codes)[:3])


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_model_trained_on_the_builtin_source_ends_just_above_its_floor(role):
    """On the real source (ReviewSource.tiny: a dozen words), a small model trained on its corpus comes within a
    few percent of the exact floor of its view: plain text marginalised over the corpus's categories (a student),
    or given the codes (a teacher). So a floor off by a quarter, either way, fails here."""
    categories = ["Restaurants", "Hotels & Travel"]
    source = ReviewSource.tiny(0, max_tokens=6)
    corpus = load_corpus("builtin", n_train=2000, n_val=10, n_test=300, source=source, categories=categories)
    tok = train_tokenizer(corpus.texts("train") + corpus.prefixes("train"), vocab_size=300)
    model = build_model("tiny-student", tok, seed=0, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    prefixes = corpus.prefixes if role == "teacher" else lambda split: None
    examples = encode_with_prefix(tok, prefixes("train"), corpus.texts("train"), 64)
    train_causal_lm(
        model,
        examples,
        TrainConfig(epochs=3, batch_size=32, lr=1e-2, warmup_steps=10, schedule="warmup_linear"),
        progress=False,
    )
    ppl = perplexity(model, tok, corpus.texts("test"), prefixes=prefixes("test"), per_document=True, progress=False).ppl
    codes = corpus.codes("test") if role == "teacher" else None
    exact = floor(source, tok, corpus.texts("test"), codes=codes, categories=categories).ppl
    assert exact < ppl < 1.25 * exact


# ------------------------------------------------------------------------------------------- a model on a corpus
def test_corpus_metrics_give_codes_to_teachers_only_and_the_floor_of_each_view(tok, model):
    source = ReviewSource.tiny(0, max_tokens=6)
    corpus = load_corpus("builtin", n_train=20, n_val=6, n_test=8, source=source, categories=["Restaurants"])
    for role, prefixes in (("teacher", corpus.prefixes), ("student", lambda split: None)):
        metrics = corpus_metrics(model, tok, corpus, role, per_document=True, progress=False)
        for split, name in (("test", "test_ppl"), ("validation", "val_ppl")):
            expected = perplexity(model, tok, corpus.texts(split), prefixes=prefixes(split), per_document=True)
            assert metrics[name] == pytest.approx(expected.ppl, rel=1e-9)
        assert metrics["test_tokens"] == perplexity(model, tok, corpus.texts("test"), per_document=True).n_tokens
        codes = corpus.codes("test") if role == "teacher" else None
        exact = floor(source, tok, corpus.texts("test"), codes=codes, categories=corpus.info["categories"]).ppl
        assert metrics["floor"] == corpus_floor(corpus, tok, role) == pytest.approx(exact, rel=1e-12)
    without_source = dataclasses.replace(corpus, source=None)
    assert "floor" not in corpus_metrics(model, tok, without_source, "student", progress=False)
    assert math.isnan(corpus_floor(without_source, tok, "student"))


def test_corpus_marginal_perplexity_mixes_the_codes_by_their_counts(tok, model):
    source = ReviewSource.tiny(0, max_tokens=6)
    corpus = load_corpus("builtin", n_train=20, n_val=6, n_test=8, source=source, categories=["Restaurants"])
    counts = {("Restaurants", "5.0"): 3, ("Restaurants", "1.0"): 1, ("Hotels & Travel", "2.0"): 0}
    prefixes = [control_prefix({"Business Category": c, "Review Stars": s}) for c, s in list(counts)[:2]]
    expected = marginal_perplexity(model, tok, corpus.texts("test"), prefixes, [3, 1], progress=False).ppl
    assert corpus_marginal_perplexity(model, tok, corpus, counts, progress=False) == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------- marginal perplexity
def hand_document_logp(model, tok, text, prefix):
    """log p(text + [eos] | [eos] + prefix), token by token."""
    eos = tok.eos_token_id
    context = [eos] + tok(prefix)["input_ids"]
    total = 0.0
    for target in tok(text)["input_ids"] + [eos]:
        total += logp_next(model, context, target)
        context = context + [target]
    return total


def test_marginal_perplexity_is_the_code_mixture_computed_by_hand(tok):
    model = build_model("tiny-student", tok, seed=4, n_embd=32, n_layer=2, n_head=2, n_positions=128).eval()
    codes, weights, texts = PREFIXES[:3], [0.5, 0.3, 0.2], TEXTS
    result = marginal_perplexity(model, tok, texts, codes, weights, progress=False)
    nats = 0.0
    for text in texts:
        terms = [math.log(w) + hand_document_logp(model, tok, text, p) for p, w in zip(codes, weights)]
        nats -= math.log(sum(math.exp(t) for t in terms))
    plain = perplexity(model, tok, texts, per_document=True, progress=False)
    assert result.n_tokens == plain.n_tokens  # the same tokens a code-free student is scored on
    assert result.nll_sum == pytest.approx(nats, rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(nats / plain.n_tokens), rel=1e-6)


def test_marginal_perplexity_of_one_code_is_the_prefixed_perplexity(model, tok):
    one = marginal_perplexity(model, tok, TEXTS, [PREFIXES[0], PREFIXES[1]], [1.0, 0.0], progress=False)
    prefixed = perplexity(model, tok, TEXTS, prefixes=[PREFIXES[0]] * len(TEXTS), per_document=True, progress=False)
    assert one.ppl == pytest.approx(prefixed.ppl, rel=1e-9)


@pytest.mark.parametrize(
    "prefixes, weights, match",
    [
        ([], [], "one weight"),
        (["a"], [1.0, 2.0], "one weight"),
        (["a", "b"], [0.0, 0.0], "positive sum"),
        (["a"], [-1.0], "positive sum"),
    ],
)
def test_marginal_perplexity_rejects_bad_weights(model, tok, prefixes, weights, match):
    with pytest.raises(ValueError, match=match):
        marginal_perplexity(model, tok, TEXTS, prefixes, weights, progress=False)
