"""Documents against the models' context: how long a corpus's documents are in tokens, and what is done with the ones
that do not fit (`Settings.long_documents`).

A document is measured as the teacher reads it in training, [eos] + codes + text + [eos]: the longest view. One
longer than `max_length` tokens (by default the models' context) is, by `long_documents`:

    'refuse'    an error before any training, naming how many documents are long and the two fixes (the default:
                a tiny model's context is 128 tokens, and long documents would otherwise be cut without a word);
    'truncate'  cut, in every split, to its first tokens so that the teacher's view fits; the cut document ends
                there, and test perplexity is of the cut documents. The privacy unit stays the whole document;
    'truncate_training'
                kept whole: training reads a document's first tokens (up to the model's context), evaluation
                scores all of it in context-long windows. Slower to evaluate, but the test set is the documents as
                they are, and the built-in corpus keeps its exact floor (the smoke profile's small vocabulary makes
                a few built-in documents longer than the context).

Private documents are not chunked into windows: each window would be a record of its own, and epsilon would protect
a window, not a document (a document of k windows gets k x epsilon, by group privacy). Public text is chunked
(`distildp.dp.public_training.pretrain`): no privacy is at stake there. Truncation of the built-in corpus drops its
exact floor (it is the floor of the source's untruncated documents).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from distildp.data.corpus import SPLITS, Corpus

LONG_DOCUMENTS = ("refuse", "truncate", "truncate_training")


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens ([eos] is added by the caller, as is any cut to a length)."""
    return tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []


def token_lengths(tokenizer, texts: list[str], prefixes: list[str] | None = None) -> np.ndarray:
    """Tokens of each document as the teacher reads it: [eos] + prefix + text + [eos]."""
    prefix_lengths = [len(ids) for ids in token_ids(tokenizer, prefixes)] if prefixes else [0] * len(texts)
    return np.array([2 + p + len(ids) for p, ids in zip(prefix_lengths, token_ids(tokenizer, texts))], dtype=np.int64)


def length_stats(lengths: np.ndarray, limit: int) -> dict:
    """Median, 90th percentile and longest token length, and how many documents exceed `limit`."""
    return {
        "documents": int(len(lengths)),
        "median": float(np.median(lengths)) if len(lengths) else 0.0,
        "p90": float(np.percentile(lengths, 90)) if len(lengths) else 0.0,
        "max": int(lengths.max()) if len(lengths) else 0,
        "over": int((lengths > limit).sum()),
        "limit": int(limit),
    }


def corpus_lengths(corpus: Corpus, tokenizer) -> dict[str, np.ndarray]:
    """Each split's token lengths, teacher view."""
    return {split: token_lengths(tokenizer, corpus.texts(split), corpus.prefixes(split)) for split in SPLITS}


def fit_corpus(corpus: Corpus, tokenizer, max_length: int, long_documents: str) -> Corpus:
    """`corpus` with every document within `max_length` tokens (teacher view), as `long_documents` says; the
    lengths before and what was done are in `info['lengths']`. A corpus that fits is returned as it is."""
    if long_documents not in LONG_DOCUMENTS:
        raise ValueError(f"long_documents={long_documents!r}; choose one of {LONG_DOCUMENTS}")
    lengths = corpus_lengths(corpus, tokenizer)
    stats = {split: length_stats(lengths[split], max_length) for split in SPLITS}
    over = {split: stats[split]["over"] for split in SPLITS}
    if not sum(over.values()):
        return corpus
    if long_documents == "refuse":
        counts = ", ".join(f"{over[s]} of {stats[s]['documents']} in {s}" for s in SPLITS)
        longest = max(stats[s]["max"] for s in SPLITS)
        raise ValueError(
            f"corpus {corpus.name!r}: {counts} are longer than max_length={max_length} tokens (codes and the two "
            f"[eos] included; the longest has {longest}); set long_documents: truncate to cut each to its first "
            f"{max_length} tokens (the privacy unit stays the document; truncate_training cuts them in training only), "
            f"raise max_length up to the models' context, or shorten the documents in the files"
        )
    record = {"max_length": max_length, "long_documents": long_documents, "before": stats}
    counts = ", ".join(f"{over[s]} of {stats[s]['documents']} in {s}" for s in SPLITS if over[s])
    what = (
        "training reads their first tokens, evaluation all of them"
        if long_documents == "truncate_training"
        else "each is cut to its first tokens in every split"
    )
    warnings.warn(
        f"corpus {corpus.name!r}: {counts} are longer than {max_length} tokens: {what} "
        f"(long_documents={long_documents!r})",
        UserWarning,
        stacklevel=2,
    )
    if long_documents == "truncate_training":
        return dataclasses.replace(corpus, info={**corpus.info, "lengths": record})
    splits = {}
    for split in SPLITS:
        frame = corpus.splits[split].copy()
        frame["text"] = _truncated(tokenizer, corpus.texts(split), corpus.prefixes(split), lengths[split], max_length)
        splits[split] = frame
    schema = {"code_schema": corpus.public_code_keys()[0]} if corpus.source is not None else {}
    # the exact floor is the source's, of whole documents: it does not hold for cut ones (the schema does)
    return dataclasses.replace(corpus, splits=splits, source=None, info={**corpus.info, **schema, "lengths": record})


def _truncated(tokenizer, texts: list[str], prefixes: list[str], lengths: np.ndarray, max_length: int) -> list[str]:
    """Each text cut to its first tokens so that [eos] + prefix + text + [eos] fits in `max_length`."""
    prefix_lengths = [len(ids) for ids in token_ids(tokenizer, prefixes)]
    out = []
    for text, prefix, prefix_length, ids, length in zip(
        texts, prefixes, prefix_lengths, token_ids(tokenizer, texts), lengths
    ):
        if length <= max_length:
            out.append(text)
            continue
        budget = max_length - 2 - prefix_length
        if budget < 1:
            raise ValueError(
                f"control prefix {prefix!r} takes {prefix_length} tokens: with the two [eos] no text fits in "
                f"max_length={max_length}; raise max_length or shorten the codes"
            )
        cut = tokenizer.decode(ids[:budget]).rstrip()
        while len(token_ids(tokenizer, [cut])[0]) > budget:  # a decoded cut can re-encode one token longer
            cut = cut[:-1].rstrip()
        out.append(cut or text[:1])
    return out
