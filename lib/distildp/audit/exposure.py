"""Empirical privacy audit, part 1: which data a model saw, and how much of an inserted secret it gives away.

How the audit fits together (part 2, membership inference and the epsilon lower bound, is `distildp.audit.mia`):

    provenance.training_set(artifact_dir)
                                   the private training documents (canaries included) and held-out documents of a
                                   pipeline model, rebuilt from its manifest; refuses when they cannot be rebuilt
    canary_exposure(model, tok, canary), canary_exposures(model, tok, training_set)
                                   the "secret sharer" exposure (Carlini et al. 2019) of one inserted secret:
                                   log2(#candidates) - log2(rank of the secret among them by model likelihood),
                                   enumerated when the candidate space is small, else extrapolated from a sample
    secrets_in_texts(canaries, texts)
                                   which secrets a text set (the synthetic text) reproduces verbatim
    provenance.synthetic_texts(artifact_dir)
                                   the synthetic text a DistilDP / synthetic-only student was trained on
    mia.attack_scores / mia.roc_metrics / mia.epsilon_lower_bound / mia.check_lower_bound
                                   loss and reference-model attacks on training_set's members versus
                                   non-members, their ROC metrics with confidence intervals, and the empirical
                                   epsilon lower bound, checked against the accounted epsilon

Canaries are inserted by the corpus (`load_corpus('builtin', canaries=..., canary_repeats=...)`, see
`distildp.data.canaries.insert_canaries`), so a pipeline run with those dataset options trains every method on them and
`provenance.training_set` finds them again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from distildp.audit.provenance import AuditError, TrainingSet
from distildp.lm.evaluate import document_nll

ENUMERATE_LIMIT = 100_000  # candidate spaces up to this size are scored in full


# ---------------------------------------------------------------------------------------------- secrets
@dataclass(frozen=True)
class SecretSpace:
    """The candidate secrets: `groups` of characters from `alphabet`, joined by `separator`, written into
    `template`. The default is the format `distildp.data.canaries.insert_canaries` writes: 'My secret code is 4821
    7395.'
    (10^8 candidates). `preceding` is what precedes the sentence in a training document (insert_canaries appends
    ' ' + sentence to a review): candidates are scored as preceding + sentence, so the model sees the tokens it was
    trained on (' My', not a document-initial 'My')."""

    template: str = "My secret code is {secret}."
    groups: tuple[int, ...] = (4, 4)
    alphabet: str = "0123456789"
    separator: str = " "
    preceding: str = " "

    def __post_init__(self) -> None:
        if "{secret}" not in self.template:
            raise AuditError(f"template {self.template!r} has no '{{secret}}' field; write one where the secret goes")
        if not self.groups or any(g < 1 for g in self.groups):
            raise AuditError(f"groups={self.groups} must be positive group lengths, e.g. (4, 4)")
        if len(set(self.alphabet)) != len(self.alphabet) or len(self.alphabet) < 2:
            raise AuditError(f"alphabet {self.alphabet!r} needs at least 2 distinct characters, none repeated")
        if self.separator and set(self.separator) & set(self.alphabet):
            raise AuditError(
                f"separator {self.separator!r} shares characters with the alphabet; secrets would be ambiguous"
            )
        if self.size >= 2**63:  # candidates are indexed by int64 when sampled
            raise AuditError(
                f"a space of {len(self.alphabet)}^{sum(self.groups)} candidates is too large to index; "
                f"use fewer or shorter groups"
            )

    @property
    def size(self) -> int:
        return len(self.alphabet) ** sum(self.groups)

    @property
    def max_exposure(self) -> float:
        """log2 of the number of candidates: the exposure of a secret the model ranks first."""
        return math.log2(self.size)

    def secret(self, index: int) -> str:
        """The candidate with this index (0 .. size - 1), in lexicographic order of the alphabet."""
        if not 0 <= index < self.size:
            raise AuditError(f"candidate index {index} is outside 0..{self.size - 1}")
        base, chars = len(self.alphabet), []
        for _ in range(sum(self.groups)):
            index, digit = divmod(index, base)
            chars.append(self.alphabet[digit])
        return self._join("".join(reversed(chars)))

    def index(self, secret: str) -> int:
        """The index of `secret` in the space; an error naming the expected format if it is not in it."""
        parts = secret.split(self.separator) if self.separator else self._split(secret)
        if [len(p) for p in parts] != list(self.groups) or any(c not in self.alphabet for c in "".join(parts)):
            example = self.secret(0)
            raise AuditError(
                f"secret {secret!r} is not in this candidate space: expected {len(self.groups)} "
                f"group(s) of {list(self.groups)} characters from {self.alphabet!r} joined by "
                f"{self.separator!r}, like {example!r}; describe the canaries' format with SecretSpace"
            )
        value = 0
        for char in "".join(parts):
            value = value * len(self.alphabet) + self.alphabet.index(char)
        return value

    def sentence(self, secret: str) -> str:
        return self.template.format(secret=secret)

    def scored_text(self, secret: str) -> str:
        """The text whose likelihood ranks a candidate: preceding + sentence."""
        return self.preceding + self.sentence(secret)

    def sample(self, n: int, rng: np.random.Generator, exclude: str | None = None) -> list[str]:
        """`n` distinct candidates drawn uniformly without replacement, never `exclude`."""
        available = self.size - (exclude is not None)
        if not 1 <= n <= available:
            raise AuditError(
                f"cannot sample {n} distinct candidates from a space of {available}; ask for 1..{available}"
            )
        skip = self.index(exclude) if exclude is not None else -1
        if available <= 4 * n:  # dense: draw from the explicit list of candidates
            indices = rng.choice(np.delete(np.arange(self.size), skip) if skip >= 0 else self.size, n, replace=False)
            return [self.secret(int(i)) for i in indices]
        chosen: dict[int, None] = {}  # sparse: rejection is cheap, and the dict keeps the draw order
        while len(chosen) < n:
            for i in rng.integers(0, self.size, size=n):
                if int(i) != skip:
                    chosen.setdefault(int(i))
                if len(chosen) == n:
                    break
        return [self.secret(i) for i in chosen]

    def _join(self, chars: str) -> str:
        out, start = [], 0
        for g in self.groups:
            out.append(chars[start : start + g])
            start += g
        return self.separator.join(out)

    def _split(self, secret: str) -> list[str]:
        out, start = [], 0
        for g in self.groups:
            out.append(secret[start : start + g])
            start += g
        return out if start == len(secret) else out + [secret[start:]]


DEFAULT_SPACE = SecretSpace()


def check_encodable(tokenizer, text: str, what: str = "canary") -> None:
    """Raise AuditError when `tokenizer` cannot encode `text` faithfully: a character it maps to the unknown token,
    a special token written in the text, or any text that does not decode back to itself."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    hits = [tokenizer.convert_ids_to_tokens(i) for i in ids if i in special]
    if hits:
        raise AuditError(
            f"{what} {text!r} encodes to special or unknown token(s) {hits}: the tokenizer cannot "
            f"represent it, so the model could never have learned it. Write the {what} in characters "
            f"the tokenizer encodes (no special tokens such as {tokenizer.eos_token!r})"
        )
    decoded = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if decoded != text:
        raise AuditError(
            f"{what} {text!r} does not survive the tokenizer (it decodes back as {decoded!r}): some of "
            f"its characters are outside the vocabulary. Write the {what} in characters the tokenizer "
            f"encodes"
        )


# ---------------------------------------------------------------------------------------------- scoring
def sequence_nll(
    model, tokenizer, texts: Sequence[str], prefixes: Sequence[str] | None = None, batch_size: int = 64
) -> np.ndarray:
    """Negative log-likelihood in nats of each text as the models are trained on it, [eos] prefix text [eos],
    the prefix (control codes) unscored context (`distildp.lm.evaluate`'s per-document scoring)."""
    if not texts:
        raise AuditError("sequence_nll got no texts; pass a non-empty list of strings")
    nll, _ = document_nll(model, tokenizer, list(texts), list(prefixes) if prefixes is not None else None, batch_size)
    return np.asarray(nll, dtype=np.float64)


def sequence_losses(
    model, tokenizer, texts: Sequence[str], prefixes: Sequence[str] | None = None, batch_size: int = 64
) -> np.ndarray:
    """Mean negative log-likelihood per scored token of each text (the membership-inference loss)."""
    if not texts:
        raise AuditError("sequence_losses got no texts; pass a non-empty list of strings")
    nll, n_tokens = document_nll(
        model, tokenizer, list(texts), list(prefixes) if prefixes is not None else None, batch_size
    )
    return np.asarray(nll, dtype=np.float64) / np.maximum(np.asarray(n_tokens), 1)


# ---------------------------------------------------------------------------------------------- exposure
@dataclass(frozen=True)
class Exposure:
    """A secret's exposure in bits, between about 0 (no better ranked than chance) and log2(n_candidates)."""

    secret: str
    exposure: float
    rank: float  # 1 = the most likely candidate; estimated when extrapolated
    n_candidates: int
    method: str  # 'enumerated' or 'extrapolated'
    secret_nll: float  # nats
    n_scored: int  # candidates scored besides the secret
    sample_exposure: float  # from the scored candidates alone (capped at log2 of their number + 1)

    @property
    def max_exposure(self) -> float:
        return math.log2(self.n_candidates)


def exposure_from_rank(rank: float, n_candidates: int) -> float:
    """log2(n_candidates) - log2(rank): Carlini et al.'s exposure."""
    if not 1 <= rank <= n_candidates:
        raise AuditError(f"rank {rank} must lie in 1..{n_candidates} (the number of candidates)")
    return math.log2(n_candidates) - math.log2(rank)


def rank_among(secret_nll: float, other_nlls: np.ndarray) -> float:
    """The secret's rank among itself and the other candidates (1 = lowest NLL). Ties share the mean rank, so a
    model that cannot tell candidates apart gives no exposure (and no credit) to any of them."""
    other = np.asarray(other_nlls, dtype=np.float64)
    return 1.0 + float(np.sum(other < secret_nll)) + float(np.sum(other == secret_nll)) / 2


def extrapolated_fraction(secret_nll: float, sample_nlls: np.ndarray) -> float:
    """The estimated share of all candidates more likely than the secret: the CDF at the secret's NLL of a
    skew-normal fitted to the sampled candidates' NLLs (Carlini et al. 2019, section 4.3). Reaches far below
    1 / sample size, where counting the sample cannot."""
    sample = np.asarray(sample_nlls, dtype=np.float64)
    if sample.size < 20:
        raise AuditError(
            f"{sample.size} sampled candidates are too few to fit their distribution; sample >= 20 "
            f"(hundreds to thousands in practice)"
        )
    if np.ptp(sample) == 0:  # a model that gives every candidate the same likelihood
        return 0.5 if secret_nll == sample[0] else float(secret_nll > sample[0])
    shape, loc, scale = stats.skewnorm.fit(sample)
    return float(stats.skewnorm.cdf(secret_nll, shape, loc, scale))


def canary_exposure(
    model,
    tokenizer,
    secret: str | dict,
    space: SecretSpace = DEFAULT_SPACE,
    method: str = "auto",
    n_samples: int = 2000,
    prefix: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> Exposure:
    """The exposure of one secret (a string, or a canary dict of `insert_canaries` with its 'secret').

    method 'enumerated' scores every candidate of `space`; 'extrapolated' scores `n_samples` random ones and
    fits their NLL distribution; 'auto' enumerates spaces of up to ENUMERATE_LIMIT candidates. `prefix`: unscored
    context before each candidate sentence (a teacher's control codes).

    Read it beside the same secret's exposure in a model that never saw it (the public pretrained model): how a
    candidate tokenizes gives a few bits by itself (a secret whose digits merge into fewer tokens is likelier under
    any model: 3.8 bits for one of two canaries under the smoke profile's pretrained student)."""
    secret = _secret_of(secret)
    space.index(secret)  # in the space, or a clear error
    check_encodable(tokenizer, space.scored_text(secret))
    check_encodable(tokenizer, space.alphabet, "the candidate alphabet")
    if method == "auto":
        method = "enumerated" if space.size <= ENUMERATE_LIMIT else "extrapolated"
    if method == "enumerated":
        if space.size > 10 * ENUMERATE_LIMIT:
            raise AuditError(f"enumerating {space.size:,} candidates is too slow; use method='extrapolated'")
        true_index = space.index(secret)
        others = [space.secret(i) for i in range(space.size) if i != true_index]
    elif method == "extrapolated":
        others = space.sample(min(n_samples, space.size - 1), np.random.default_rng(seed), exclude=secret)
    else:
        raise AuditError(f"method={method!r}; use 'auto', 'enumerated' or 'extrapolated'")
    sentences = [space.scored_text(s) for s in [secret, *others]]
    nll = sequence_nll(
        model, tokenizer, sentences, [prefix] * len(sentences) if prefix is not None else None, batch_size
    )
    secret_nll, other_nll = float(nll[0]), nll[1:]
    sample_rank = rank_among(secret_nll, other_nll)
    sample_exposure = exposure_from_rank(sample_rank, len(other_nll) + 1)
    if method == "enumerated":
        rank = sample_rank
    else:  # rank among all candidates, from the fitted share of them that beat the secret
        rank = 1.0 + extrapolated_fraction(secret_nll, other_nll) * (space.size - 1)
    return Exposure(
        secret,
        exposure_from_rank(rank, space.size),
        rank,
        space.size,
        method,
        secret_nll,
        len(other_nll),
        sample_exposure,
    )


def canary_exposures(
    model, tokenizer, found: TrainingSet, space: SecretSpace = DEFAULT_SPACE, with_codes: bool = False, **options
) -> list[Exposure]:
    """The exposure of every canary of a training set (`provenance.training_set(...)`) in `model`. with_codes: for
    a teacher, the control codes of the first training row holding the canary are the context. `options` go to
    `canary_exposure` (method, n_samples, seed, batch_size)."""
    if not found.canaries:
        raise AuditError(
            f"the training set of {found.artifact} holds no canaries: build the models with "
            f"dataset_options {{'canaries': n, 'canary_repeats': r}} (built-in corpus) to audit exposure"
        )
    return [
        canary_exposure(
            model,
            tokenizer,
            canary,
            space,
            prefix=found.member_prefixes[canary["rows"][0]] if with_codes else None,
            **options,
        )
        for canary in found.canaries
    ]


def secrets_in_texts(canaries: Sequence[dict | str], texts: Sequence[str]) -> list[dict]:
    """Per canary: how many of `texts` contain its secret verbatim (and its whole sentence), and the first one
    that does. Synthetic text that reproduces a secret has leaked it outright."""
    out = []
    for canary in canaries:
        secret = _secret_of(canary)
        sentence = canary.get("sentence") if isinstance(canary, dict) else None
        with_secret = [i for i, t in enumerate(texts) if secret in t]
        out.append(
            {
                "secret": secret,
                "texts_with_secret": len(with_secret),
                "texts_with_sentence": sum(sentence in t for t in texts) if sentence else None,
                "first_text": with_secret[0] if with_secret else None,
            }
        )
    return out


def _secret_of(canary: str | dict) -> str:
    if isinstance(canary, str):
        return canary
    if isinstance(canary, dict) and isinstance(canary.get("secret"), str):
        return canary["secret"]
    raise AuditError(
        f"a canary is a secret string or a dict with a 'secret' string (as insert_canaries returns), got {canary!r}"
    )
