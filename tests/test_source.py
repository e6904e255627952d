"""The review source: exact probabilities that sum to one, agree with sampling, and reject impossible text."""

import itertools
import math

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import chisquare

from distildp.data.lexicon import PRIVATE_CATEGORIES
from distildp.data.source import CATEGORY, STARS, ReviewSource


@pytest.fixture(scope="module")
def source():
    return ReviewSource(0)


def all_texts(src: ReviewSource) -> list[str]:
    """Every distinct rendering of every token sequence up to the cap (impossible ones included)."""
    seqs = (s for n in range(1, src.max_tokens + 1) for s in itertools.product(range(len(src.tokens)), repeat=n))
    return sorted({src.render(list(s)) for s in seqs})


def codes(c, s):
    return {CATEGORY: c, STARS: s}


@pytest.mark.parametrize("min_tokens", [1, 2])
def test_tiny_source_probabilities_sum_to_one(min_tokens):
    src = ReviewSource.tiny(0, max_tokens=3, min_tokens=min_tokens)
    texts = all_texts(src)
    for c, s in itertools.product(src.categories, src.stars):
        total = np.exp(src.log_prob_batch(texts, [codes(c, s)] * len(texts))).sum()
        assert total == pytest.approx(1.0, abs=1e-12), (c, s)
    assert np.exp(src.log_prob_marginal_batch(texts)).sum() == pytest.approx(1.0, abs=1e-12)
    restricted = np.exp(src.log_prob_marginal_batch(texts, categories=["Hotels & Travel"])).sum()
    assert restricted == pytest.approx(1.0, abs=1e-12)


def test_code_probabilities_sum_to_one(source):
    pairs = list(itertools.product(source.categories, source.stars))
    assert sum(math.exp(source.log_prob_codes(codes(c, s))) for c, s in pairs) == pytest.approx(1.0)
    sub = sum(math.exp(source.log_prob_codes(codes(c, s), PRIVATE_CATEGORIES)) for c, s in pairs)
    assert sub == pytest.approx(1.0)
    assert source.log_prob_codes(codes("Shopping", "5.0"), PRIVATE_CATEGORIES) == -math.inf


def test_marginal_equals_logsumexp_over_codes(source):
    recs = source.sample(5, 3)
    for r in recs:
        terms = [
            source.log_prob_codes(codes(c, s)) + source.log_prob(r.text, codes(c, s))
            for c in source.categories
            for s in source.stars
        ]
        assert source.log_prob_marginal(r.text) == pytest.approx(logsumexp(terms), rel=1e-10)


def test_sample_frequencies_match_exact_probabilities():
    src = ReviewSource.tiny(1, max_tokens=3, min_tokens=1)
    n = 20_000
    recs = src.sample(n, 7, categories=["Restaurants"])
    texts, counts = np.unique([r.text for r in recs], return_counts=True)
    p = np.exp(src.log_prob_marginal_batch(list(texts), categories=["Restaurants"]))
    # every sampled text is possible; the unseen ones carry little mass
    assert np.all(p > 0) and p.sum() > 0.99
    common = p * n >= 5  # chi-square on well-populated cells, the rest pooled
    observed = np.append(counts[common], n - counts[common].sum())
    expected = np.append(p[common] * n, n - (p[common] * n).sum())
    assert chisquare(observed, expected).pvalue > 1e-3
    # and the codes: stars given the category
    stars = np.array([src.stars.index(r.codes[STARS]) for r in recs])
    freq = np.bincount(stars, minlength=5) / n
    exact = np.exp([src.log_prob_codes(codes("Restaurants", s), ["Restaurants"]) for s in src.stars])
    assert np.max(np.abs(freq - exact)) < 5 * np.sqrt(0.25 / n)


def test_sampled_documents_have_finite_log_prob_and_respect_lengths(source):
    recs = source.sample(300, 11)
    batch = source.log_prob_batch([r.text for r in recs], [r.codes for r in recs])
    assert np.all(np.isfinite(batch)) and np.all(batch < 0)
    assert source.log_prob(recs[0].text, recs[0].codes) == pytest.approx(batch[0])
    lengths = [len(source.parse(r.text)) for r in recs]
    assert min(lengths) >= source.min_tokens and max(lengths) <= source.max_tokens
    assert all(source.render(source.parse(r.text)) == r.text for r in recs)


def test_corrupted_text_has_log_prob_minus_inf(source):
    r = source.sample(1, 5)[0]
    words = r.text.split(" ")
    corrupted = [
        r.text + " ",  # trailing space
        r.text.replace(" ", "  ", 1),  # double space
        r.text[0].lower() + r.text[1:],  # sentence start not capitalised
        r.text + " My secret code is 4821 7395.",  # a canary: digits are not in the vocabulary
        " ".join(words[:1] + ["zyzzyva"] + words[1:]),  # unknown word
        "",  # empty
        ". " + r.text,  # punctuation first
        " ".join([r.text] * 3),  # past the hard cap
    ]
    for text in corrupted:
        assert source.log_prob(text, r.codes) == -math.inf, text
        assert source.log_prob_marginal(text) == -math.inf, text


def test_sample_is_deterministic_in_seed(source):
    a, b, c = source.sample(50, 42), source.sample(50, 42), source.sample(50, 43)
    assert a == b and a != c
    assert [r.text for r in ReviewSource(0).sample(5, 1)] == [r.text for r in source.sample(5, 1)]
    assert ReviewSource(1).fingerprint != source.fingerprint


def test_category_restriction_and_bad_codes(source):
    recs = source.sample(200, 2, categories=["Pets", "Automotive"])
    assert {r.codes[CATEGORY] for r in recs} == {"Pets", "Automotive"}
    assert list(recs[0].codes) == [CATEGORY, STARS]
    with pytest.raises(ValueError, match="unknown or empty categories"):
        source.sample(3, 0, categories=["Bakeries"])
    with pytest.raises(ValueError, match="codes must be"):
        source.log_prob(recs[0].text, {CATEGORY: "Pets", STARS: "6.0"})


def test_codes_shape_the_wording(source):
    """Conditioning on the true codes must beat the marginal: the codes carry information about the text."""
    recs = source.sample(200, 9, categories=PRIVATE_CATEGORIES)
    texts = [r.text for r in recs]
    cond = source.log_prob_batch(texts, [r.codes for r in recs])
    codes_lp = np.array([source.log_prob_codes(r.codes, PRIVATE_CATEGORIES) for r in recs])
    marg = source.log_prob_marginal_batch(texts, PRIVATE_CATEGORIES)
    assert np.all(marg >= cond + codes_lp - 1e-9)  # one term of the logsumexp
    assert cond.mean() > marg.mean() + 1.0  # nats per document
