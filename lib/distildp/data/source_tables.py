"""The tables the built-in review source draws from and scores with, built once from its seed and its lexicon.

The vocabulary (punctuation, general words by frequency, lexicon words); the aspects of each category and their
words; the category, sentiment and general word distributions; one bigram row per previous token; and the length
model (punctuation by words since the last mark, the END hazard by stars). `distildp.data.source.ReviewSource`
builds them in this order from one generator, so the order of the draws is part of the source.
"""

from __future__ import annotations

import math

import numpy as np

from distildp.data.lexicon import PUBLIC_CATEGORIES, Lexicon

PUNCT = (".", "!", "?", ",")  # token ids 0..3; the first three end a sentence
SENTENCE_END = frozenset(".!?")
# Share of (negative, mixed, positive) sentiment words for 1..5 stars.
SENTIMENT_MIX = np.array(
    [[0.80, 0.15, 0.05], [0.60, 0.30, 0.10], [0.25, 0.50, 0.25], [0.10, 0.30, 0.60], [0.05, 0.15, 0.80]]
)
# Punctuation (. ! ? ,) by stars: angry and delighted reviews shout.
PUNCT_BY_STARS = np.array(
    [
        [0.50, 0.15, 0.08, 0.27],
        [0.56, 0.08, 0.06, 0.30],
        [0.60, 0.04, 0.06, 0.30],
        [0.57, 0.08, 0.03, 0.32],
        [0.50, 0.18, 0.02, 0.30],
    ]
)
STAR_LENGTH_SHIFT = np.array([8.0, 6.0, 2.0, -2.0, -4.0])  # unhappy reviewers write longer


def normalise(weights: dict[str, float] | np.ndarray, power: float = 1.0) -> np.ndarray:
    values = list(weights.values()) if isinstance(weights, dict) else np.asarray(weights, dtype=np.float64).tolist()
    # math.pow, not numpy's `**`: numpy's SIMD power differs in the last bit between CPUs (AVX-512 or not),
    # and the source's tables must be the same on every machine.
    w = np.array([math.pow(v, power) for v in values], dtype=np.float64)
    return w / w.sum()


class Table:
    """Rows of small categorical distributions over token ids, padded for vectorised sampling."""

    def __init__(self, rows: list[tuple[np.ndarray, np.ndarray]], vocab_size: int, dense: bool = True):
        width = max(len(ids) for ids, _ in rows)
        self.ids = np.zeros((len(rows), width), dtype=np.int64)
        self.probs = np.zeros((len(rows), width))  # padding has probability 0
        self.cdf = np.ones((len(rows), width))
        self.dense = np.zeros((len(rows), vocab_size)) if dense else None  # row -> p(token), for lookups
        for r, (ids, probs) in enumerate(rows):
            if len(set(ids.tolist())) != len(ids):
                raise ValueError("a distribution row lists a token twice")
            self.ids[r, : len(ids)], self.ids[r, len(ids) :] = ids, ids[-1]
            self.probs[r, : len(ids)] = probs
            self.cdf[r, : len(ids)] = np.cumsum(probs)
            self.cdf[r, len(ids) - 1 :] = 1.0  # exact 1 at the end: no draw falls past the last id
            if dense:
                self.dense[r, ids] = probs

    def draw(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        pick = (u[:, None] >= self.cdf[rows]).sum(1).clip(max=self.ids.shape[1] - 1)
        return self.ids[rows, pick]


# ---------------------------------------------------------------- the vocabulary
def general_words(lex: Lexicon) -> list[str]:
    """The general words, most frequent first (ties by spelling)."""
    return sorted(lex.general, key=lambda w: (-lex.general[w], w))


def vocabulary(lex: Lexicon) -> list[str]:
    """Every token: punctuation, then the general words by frequency, then the lexicon's other words sorted."""
    extra = [w for a in lex.aspects.values() for ws in a.values() for w in ws]
    extra += [w for ws in lex.sentiment.values() for w in ws] + list(lex.starters) + list(lex.after_comma) + lex.glue
    words = general_words(lex)
    words += sorted(set(extra) - set(words))
    return list(PUNCT) + words


def token_ids(index: dict[str, int], words) -> np.ndarray:
    return np.array([index[w] for w in words], dtype=np.int64)


# ---------------------------------------------------------------- codes and word distributions
def star_weights(categories: list[str], rng: np.random.Generator) -> np.ndarray:
    """p(stars | category), one row per category: Yelp-like skews, public categories more polarised (a shifted
    star distribution)."""
    base_stars = {True: np.array([0.22, 0.10, 0.08, 0.18, 0.42]), False: np.array([0.14, 0.09, 0.12, 0.24, 0.41])}
    return np.stack([rng.dirichlet(60 * base_stars[c in PUBLIC_CATEGORIES]) for c in categories])


def aspect_tables(
    lex: Lexicon, categories: list[str], n_topics: int, index: dict[str, int], vocab_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, Table]:
    """p(aspect | category), with unused aspect slots at p = 0, and each (category, aspect)'s words (row
    c * n_topics + z; an unused slot repeats the category's first aspect)."""
    p_topic = np.zeros((len(categories), n_topics))
    topic_rows = []
    for c, name in enumerate(categories):
        aspects = list(lex.aspects[name].values())
        p_topic[c, : len(aspects)] = rng.dirichlet(np.full(len(aspects), 3.0))
        for k in range(n_topics):
            ws = aspects[k] if k < len(aspects) else aspects[0]
            topic_rows.append((token_ids(index, ws), rng.dirichlet(np.full(len(ws), 2.0))))
    return p_topic, Table(topic_rows, vocab_size)


def category_table(
    lex: Lexicon, categories: list[str], index: dict[str, int], vocab_size: int, rng: np.random.Generator
) -> Table:
    """Each category's words: all its aspects' words, with random weights."""
    rows = []
    for name in categories:
        ws = list(dict.fromkeys(w for a in lex.aspects[name].values() for w in a))
        rows.append((token_ids(index, ws), rng.dirichlet(np.full(len(ws), 2.0))))
    return Table(rows, vocab_size)


def sentiment_table(lex: Lexicon, index: dict[str, int], vocab_size: int) -> Table:
    """The sentiment words of each star rating: negative, mixed and positive words in SENTIMENT_MIX's shares,
    each list weighted 1/rank."""
    polar = [
        (token_ids(index, lex.sentiment[k]), normalise(1.0 / np.arange(1, len(lex.sentiment[k]) + 1)))
        for k in ("negative", "mixed", "positive")
    ]
    rows = []
    for mix in SENTIMENT_MIX:
        parts = [(i, m * p) for (i, p), m in zip(polar, mix) if len(i)]
        total = sum(p.sum() for _, p in parts)
        rows.append((np.concatenate([i for i, _ in parts]), np.concatenate([p for _, p in parts]) / total))
    return Table(rows, vocab_size)


def general_table(lex: Lexicon, index: dict[str, int], vocab_size: int) -> Table:
    """The general unigram: word counts in Python's documentation, flattened by the power 0.75."""
    general = general_words(lex)
    return Table([(token_ids(index, general), normalise([lex.general[w] for w in general], 0.75))], vocab_size)


def bigram_table(tokens: list[str], lex: Lexicon, index: dict[str, int], rng: np.random.Generator) -> Table:
    """One row per previous token, and a last one (state len(tokens)) for the start of the document."""
    glue = token_ids(index, lex.glue)
    rows = []
    for t in range(len(tokens) + 1):
        tok = tokens[t] if t < len(tokens) else "."
        if tok in SENTENCE_END:
            rows.append((token_ids(index, lex.starters), normalise(lex.starters)))
        elif tok == ",":
            rows.append((token_ids(index, lex.after_comma), normalise(lex.after_comma)))
        elif len(lex.bigrams.get(tok, {})) >= 3:  # real English successors from the docs
            succ = lex.bigrams[tok]
            rows.append((token_ids(index, succ), normalise(succ, 0.75)))
        else:  # a lexicon word: a seeded handful of glue words follow it
            pick = rng.choice(len(glue), size=min(8, len(glue)), replace=False)
            rows.append((glue[pick], rng.dirichlet(np.ones(len(pick)))))
    return Table(rows, len(tokens), dense=False)  # (V+1) x V dense would be ~70 MB


# ---------------------------------------------------------------- length
def punctuation_tables(
    max_tokens: int, base: float, slope: float, most: float, vocab_size: int
) -> tuple[np.ndarray, Table]:
    """p(a mark | words since the last mark), growing with them up to `most` (never first), and which mark by
    stars."""
    k = np.arange(max_tokens + 1)
    p_punct = np.minimum(base + slope * np.maximum(k - 1, 0), most)
    p_punct[0] = 0.0
    return p_punct, Table([(np.arange(4), p) for p in PUNCT_BY_STARS], vocab_size)


def end_hazard(max_tokens: int, center: float, scale: float) -> np.ndarray:
    """p(END | stars, tokens so far): a logistic in the length, centred later for unhappy reviewers."""
    n = np.arange(max_tokens + 1)
    centre = center + STAR_LENGTH_SHIFT[:, None] * center / 38.0
    # math.exp for the same reason as math.pow in normalise
    return 1.0 / (1.0 + np.vectorize(math.exp, otypes=[float])(-(n[None, :] - centre) / scale))
