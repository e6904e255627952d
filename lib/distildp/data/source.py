"""A seeded generative source of Yelp-like reviews whose probabilities are exactly computable.

Why: with a known source, the lowest possible perplexity of any test set (the *floor*) is
computable, so every model's perplexity can be read against it.

A document is drawn like this (everything but the latent aspect is observable from the text):

1. codes: Business Category ``c ~ p(c)``, Review Stars ``s ~ p(s | c)``;
2. a latent aspect (topic) ``z ~ p(z | c)``, e.g. "food" or "service" for Restaurants,
   summed out exactly in ``log_prob`` (it gives long-range consistency);
3. tokens one by one, a Markov chain on the previous token:
   - END (only after ``. ! ?``, past ``min_tokens``) with a hazard that rises with length and
     depends on the stars; at ``max_tokens`` END is certain (the hard cap);
   - a punctuation mark (never first, never after another mark) with a probability that grows
     with the words since the last mark;
   - otherwise a word from a mixture of: a bigram table (real English bigrams counted in
     Python's own documentation, ``pydoc_data.topics``), the general unigram, the category's
     lexicon, the aspect's lexicon, and the stars' sentiment lexicon (the words: ``distildp.data.lexicon``).

Text is rendered reversibly: words joined by single spaces, a punctuation mark glued to the
word before it, the first word of a sentence capitalised and "i" written "I". ``log_prob``
parses the text back, re-renders it and returns ``-inf`` unless the two match exactly.

The general vocabulary and bigrams were counted in ``pydoc_data.topics`` once and frozen into the package
(``distildp.data.public_text``): that module changes between Python versions, the corpus must not.
The tables are built from the seed in ``distildp.data.source_tables``; ``ReviewSource.fingerprint`` hashes them
so manifests can tell sources apart.
Canaries (digits) are not in the vocabulary: text containing them has ``log_prob == -inf``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from distildp.data.lexicon import Lexicon, pydoc_lexicon, tiny_lexicon
from distildp.data.source_tables import (
    PUNCT,
    SENTENCE_END,
    aspect_tables,
    bigram_table,
    category_table,
    end_hazard,
    general_table,
    punctuation_tables,
    sentiment_table,
    star_weights,
    vocabulary,
)

CATEGORY = "Business Category"
STARS = "Review Stars"
# Mixture weights of the word components: bigram, general, category, aspect, sentiment.
WORD_WEIGHTS = np.array([0.42, 0.12, 0.14, 0.16, 0.16])


@dataclass
class Record:
    """One document: its text and its control codes, e.g. {"Business Category": ..., "Review Stars": ...}."""

    text: str
    codes: dict[str, str] = field(default_factory=dict)


class ReviewSource:
    """Seeded Yelp-like review source with exact log-probabilities (see the module docstring).

    `seed` fixes the source's structure (code, aspect and bigram weights); sampling takes its own seed.
    """

    # Short reviews (mean ~19 words, at most 32): compute per document grows with length, and the quick grid must
    # run in minutes on 2 CPU cores (docs/performance.md).
    def __init__(
        self,
        seed: int = 0,
        *,
        lexicon: Lexicon | None = None,
        max_tokens: int = 32,
        min_tokens: int = 8,
        length_center: float = 14.0,
        length_scale: float = 3.0,
        punct_base: float = 0.02,
        punct_slope: float = 0.035,
        punct_max: float = 0.6,
    ):
        if not 1 <= min_tokens <= max_tokens:
            raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens=} {max_tokens=}")
        lex = lexicon or pydoc_lexicon()
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
        self.seed, self.max_tokens, self.min_tokens = seed, max_tokens, min_tokens
        self.categories: list[str] = list(lex.aspects)
        self.stars: list[str] = [f"{s}.0" for s in range(1, 6)]
        self.n_topics = max(len(a) for a in lex.aspects.values())
        self.tokens: list[str] = vocabulary(lex)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        V = len(self.tokens)
        # Codes, then the word distributions, in this order: each draws from the same generator.
        self.p_category = rng.dirichlet(np.full(len(self.categories), 20.0))
        self.p_stars = star_weights(self.categories, rng)
        self.p_topic, self.topic = aspect_tables(lex, self.categories, self.n_topics, self.index, V, rng)
        self.category = category_table(lex, self.categories, self.index, V, rng)
        self.sentiment = sentiment_table(lex, self.index, V)
        self.general = general_table(lex, self.index, V)
        self.bigram = bigram_table(self.tokens, lex, self.index, rng)
        self.start_state = V  # the bigram row of the document's start
        self.p_punct, self.punct = punctuation_tables(max_tokens, punct_base, punct_slope, punct_max, V)
        self.hazard = end_hazard(max_tokens, length_center, length_scale)
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        """Identifies the source by what it is, not by float bits: the vocabulary, every table written to 9
        significant digits, and 64 documents drawn from it. Equal on any machine whose arithmetic agrees to
        far better than 9 digits, so artifact keys and golden values do not depend on the CPU."""
        tables = (
            self.p_category,
            self.p_stars,
            self.p_topic,
            self.topic.probs,
            self.category.probs,
            self.sentiment.probs,
            self.general.probs,
            self.bigram.probs,
            self.p_punct,
            self.punct.probs,
            self.hazard,
        )
        digest = hashlib.sha256("|".join(self.tokens).encode())
        for table in tables:
            digest.update(" ".join(f"{x:.9g}" for x in np.ravel(table).tolist()).encode())
        for record in self.sample(64, np.random.SeedSequence([self.seed, 0xF1]), categories=None):
            digest.update(f"{record.codes}{record.text}".encode())
        return digest.hexdigest()[:16]

    @classmethod
    def tiny(cls, seed: int = 0, max_tokens: int = 3, min_tokens: int = 1) -> ReviewSource:
        """An enumerable configuration (a dozen tokens, at most `max_tokens` per document) for tests."""
        return cls(
            seed,
            lexicon=tiny_lexicon(),
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            length_center=1.0,
            length_scale=1.0,
            punct_base=0.3,
            punct_slope=0.2,
        )

    # ---------------------------------------------------------------- codes
    def _category_weights(self, categories: list[str] | None) -> np.ndarray:
        if categories is None:
            return self.p_category
        unknown = [c for c in categories if c not in self.categories]
        if unknown or not categories:
            raise ValueError(f"unknown or empty categories {unknown or categories}; choose from {self.categories}")
        mask = np.isin(self.categories, categories)
        return np.where(mask, self.p_category, 0.0) / self.p_category[mask].sum()

    def _code_index(self, codes: dict[str, str]) -> tuple[int, int]:
        try:
            return self.categories.index(codes[CATEGORY]), self.stars.index(codes[STARS])
        except (KeyError, ValueError):
            raise ValueError(
                f"codes must be {{{CATEGORY!r}: one of {self.categories}, {STARS!r}: one of {self.stars}}}; got {codes}"
            ) from None

    def log_prob_codes(self, codes: dict[str, str], categories: list[str] | None = None) -> float:
        """Exact log p(codes), renormalised over `categories` when given."""
        c, s = self._code_index(codes)
        with np.errstate(divide="ignore"):
            return float(np.log(self._category_weights(categories)[c]) + np.log(self.p_stars[c, s]))

    # ---------------------------------------------------------------- sampling
    def sample(
        self,
        n: int,
        rng_or_seed: int | np.random.Generator | np.random.SeedSequence = 0,
        categories: list[str] | None = None,
    ) -> list[Record]:
        """Draw `n` documents with their codes; deterministic in the seed."""
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
        cat = rng.choice(len(self.categories), size=n, p=self._category_weights(categories))
        star = (rng.random(n)[:, None] >= np.cumsum(self.p_stars[cat], 1)).sum(1).clip(max=len(self.stars) - 1)
        topic = (rng.random(n)[:, None] >= np.cumsum(self.p_topic[cat], 1)).sum(1).clip(max=self.n_topics - 1)
        tokens = self._sample_tokens(cat, star, topic, rng)
        return [
            Record(self.render(row), {CATEGORY: self.categories[c], STARS: self.stars[s]})
            for row, c, s in zip(tokens, cat, star)
        ]

    def _sample_tokens(self, cat, star, topic, rng) -> list[list[int]]:
        n = len(cat)
        out = np.full((n, self.max_tokens), -1, dtype=np.int64)
        prev = np.full(n, self.start_state)
        since = np.zeros(n, dtype=np.int64)  # words since the last punctuation mark
        alive = np.ones(n, dtype=bool)
        cum_w = np.cumsum(WORD_WEIGHTS)
        for step in range(self.max_tokens):
            i = np.flatnonzero(alive)
            if len(i) == 0:
                break
            u = rng.random((4, len(i)))
            can_end = np.isin(prev[i], (0, 1, 2)) & (step >= self.min_tokens)
            ends = can_end & (u[0] < self.hazard[star[i], step])
            alive[i[ends]] = False
            i, u = i[~ends], u[:, ~ends]
            is_punct = u[1] < self.p_punct[since[i]]
            tok = np.empty(len(i), dtype=np.int64)
            tok[is_punct] = self.punct.draw(star[i[is_punct]], u[2, is_punct])
            w = ~is_punct
            comp = (u[3, w][:, None] >= cum_w).sum(1).clip(max=4)
            iw, uw, tw = i[w], rng.random(int(w.sum())), np.empty(int(w.sum()), dtype=np.int64)
            tables = [
                (self.bigram, prev[iw]),
                (self.general, np.zeros_like(iw)),
                (self.category, cat[iw]),
                (self.topic, cat[iw] * self.n_topics + topic[iw]),
                (self.sentiment, star[iw]),
            ]
            for k, (table, rows) in enumerate(tables):
                m = comp == k
                tw[m] = table.draw(rows[m], uw[m])
            tok[w] = tw
            out[i, step] = tok
            prev[i] = tok
            since[i] = np.where(tok < len(PUNCT), 0, since[i] + 1)
        return [row[row >= 0].tolist() for row in out]

    # ---------------------------------------------------------------- text <-> tokens
    def render(self, token_ids: list[int]) -> str:
        """Tokens -> text: single spaces, marks glued to the word before, sentences capitalised."""
        out: list[str] = []
        capital = True
        for t in token_ids:
            tok = self.tokens[t]
            if t < len(PUNCT):
                if out:
                    out[-1] += tok
                else:
                    out.append(tok)
                capital = tok in SENTENCE_END
            else:
                out.append("I" if tok == "i" else tok.capitalize() if capital else tok)
                capital = False
        return " ".join(out)

    def parse(self, text: str) -> list[int] | None:
        """Text -> tokens, or None if this source could not have written `text`."""
        ids = []
        for piece in text.split(" "):
            word, mark = (piece[:-1], piece[-1]) if piece[-1:] in PUNCT else (piece, None)
            t = self.index.get(word.lower()) if word else None
            if t is None or t < len(PUNCT):
                return None
            ids.append(t)
            if mark is not None:
                ids.append(PUNCT.index(mark))
        return ids if self.render(ids) == text else None

    # ---------------------------------------------------------------- exact probabilities
    def log_prob(self, text: str, codes: dict[str, str]) -> float:
        """Exact natural log p(text | codes)."""
        return float(self.log_prob_batch([text], [codes])[0])

    def log_prob_marginal(self, text: str, categories: list[str] | None = None) -> float:
        """Exact log sum over codes of p(codes) p(text | codes) (codes restricted to `categories`)."""
        return float(self.log_prob_marginal_batch([text], categories)[0])

    def log_prob_batch(self, texts: list[str], codes: list[dict[str, str]]) -> np.ndarray:
        """Vectorised `log_prob`: one value per text."""
        if len(texts) != len(codes):
            raise ValueError(f"{len(texts)} texts but {len(codes)} code dicts")
        index = np.array([self._code_index(c) for c in codes], dtype=np.int64).reshape(-1, 2)
        out = np.empty(len(texts))
        for c, s in {tuple(x) for x in index.tolist()}:  # one pass per code pair
            rows = np.flatnonzero((index[:, 0] == c) & (index[:, 1] == s))
            out[rows] = self._log_lik([texts[r] for r in rows], np.array([c]), np.array([s]))[:, 0, 0]
        return out

    def log_prob_marginal_batch(self, texts: list[str], categories: list[str] | None = None) -> np.ndarray:
        """Vectorised `log_prob_marginal`."""
        pc = self._category_weights(categories)
        cats = np.flatnonzero(pc > 0)
        with np.errstate(divide="ignore"):
            log_codes = np.log(pc[cats])[:, None] + np.log(self.p_stars[cats])  # (C', S)
        table = self._log_lik(texts, cats, np.arange(len(self.stars)))  # (n, C', S)
        return logsumexp(table + log_codes[None], axis=(1, 2))

    def _log_lik(self, texts: list[str], cats: np.ndarray, stars: np.ndarray, chunk: int = 2_000_000) -> np.ndarray:
        """log p(text | c, s) for every text and every (c, s) in cats x stars: shape (n, C', S')."""
        parsed = [self.parse(t) for t in texts]
        result = np.full((len(texts), len(cats), len(stars)), -np.inf)
        good = [i for i, p in enumerate(parsed) if p and len(p) <= self.max_tokens]
        per_doc = len(cats) * len(stars) * self.n_topics
        start = 0
        while start < len(good):  # chunks bound memory: tokens x codes x topics floats
            stop, size = start, 0
            while stop < len(good) and (size == 0 or (size + len(parsed[good[stop]])) * per_doc <= chunk):
                size += len(parsed[good[stop]])
                stop += 1
            docs = good[start:stop]
            result[docs] = self._log_lik_parsed([parsed[i] for i in docs], cats, stars)
            start = stop
        return result

    def _log_lik_parsed(self, docs: list[list[int]], cats: np.ndarray, stars: np.ndarray) -> np.ndarray:
        lengths = np.array([len(d) for d in docs])
        tok = np.concatenate(docs)
        doc_of = np.repeat(np.arange(len(docs)), lengths)
        pos = np.arange(len(tok)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # tokens before this one
        prev = np.where(pos == 0, self.start_state, np.roll(tok, 1))
        is_punct = tok < len(PUNCT)
        prev_punct = (pos == 0) | (prev < len(PUNCT))
        # words since the last mark (or the document start), before this token
        j = np.arange(len(tok))
        since = j - np.maximum.accumulate(np.where(prev_punct, j, 0))
        p_punct = self.p_punct[np.minimum(since, self.max_tokens)]
        p_punct[prev_punct] = 0.0
        can_end = np.isin(prev, (0, 1, 2)) & (pos >= self.min_tokens)

        nC, K = len(cats), self.n_topics
        # Terms that depend only on the stars: punctuation, END hazards (shape tokens x S').
        with np.errstate(divide="ignore"):
            star_terms = np.where(
                is_punct[:, None],
                np.log(p_punct[:, None] * self.punct.dense[stars][:, np.minimum(tok, 3)].T),
                np.log1p(-p_punct)[:, None],
            )
            haz = self.hazard[stars][:, pos].T  # (tokens, S')
            star_terms += np.where(can_end[:, None], np.log1p(-haz), 0.0)
        log_star = np.add.reduceat(star_terms, np.cumsum(lengths) - lengths, axis=0)  # docs are contiguous
        # END after the last token.
        last = np.cumsum(lengths) - 1
        end_ok = np.isin(tok[last], (0, 1, 2)) & (lengths >= self.min_tokens)
        with np.errstate(divide="ignore"):
            end = np.where(
                lengths[:, None] >= self.max_tokens,
                0.0,
                np.where(end_ok[:, None], np.log(self.hazard[stars][:, lengths].T), -np.inf),
            )
        # Word tokens: mixture over components; the aspect term is per (c, z), summed out at the end.
        w = np.flatnonzero(~is_punct)
        tw, pw = tok[w], prev[w]
        bigram = ((self.bigram.ids[pw] == tw[:, None]) * self.bigram.probs[pw]).sum(1)
        base = WORD_WEIGHTS[0] * bigram + WORD_WEIGHTS[1] * self.general.dense[0, tw]
        cat_term = WORD_WEIGHTS[2] * self.category.dense[cats][:, tw].T  # (w, C')
        topic_rows = (cats[:, None] * K + np.arange(K)).ravel()
        topic_term = WORD_WEIGHTS[3] * self.topic.dense[topic_rows][:, tw].T.reshape(len(w), nC, K)
        sent_term = WORD_WEIGHTS[4] * self.sentiment.dense[stars][:, tw].T  # (w, S')
        mix = (
            base[:, None, None, None]
            + cat_term[:, :, None, None]
            + topic_term[:, :, None, :]
            + sent_term[:, None, :, None]
        )  # (w, C', S', K)
        with np.errstate(divide="ignore"):
            # every document starts with a word, so each has a non-empty run of word tokens
            log_words = np.add.reduceat(np.log(mix), np.searchsorted(doc_of[w], np.arange(len(docs))), axis=0)
            log_pz = np.log(self.p_topic[cats])  # (C', K)
        log_text = logsumexp(log_words + log_pz[None, :, None, :], axis=3)  # (docs, C', S')
        return log_text + (log_star + end)[:, None, :]
