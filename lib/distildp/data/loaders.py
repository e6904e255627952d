"""Corpora by name, one interface each: the private corpus (`load_corpus`: the built-in one, `csv:<dir>`, the hub
datasets) and the public pretraining text (`load_public`: built-in reviews and prose, `csv:<dir>`, `hub:<dataset>`).

`corpus_loader` and `public_options` tell what options a corpus takes (its loader's signature, which
`distildp.pipeline.settings` checks a user's options against); `train_size` gives the private training set's size
without loading it. The built-in private corpus is drawn from `distildp.data.source.ReviewSource` here; what a
corpus is, `distildp.data.corpus`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distildp.data.canaries import insert_canaries
from distildp.data.corpus import SPLITS, Corpus, control_prefix, display_name
from distildp.data.csv_corpus import count_csv_rows, load_csv_dir, read_csv
from distildp.data.hub_corpora import HUB_LOADERS, as_frame, load_dataset
from distildp.data.label_split import read_split_record
from distildp.data.lexicon import PRIVATE_CATEGORIES, PUBLIC_CATEGORIES
from distildp.data.source import CATEGORY, STARS, Record, ReviewSource

KNOWN_CORPORA = ("builtin", "csv:<dir>", "yelp", "big_patent", "dbpedia_14")


def load_corpus(name: str = "builtin", **options) -> Corpus:
    """Load a corpus by name: 'builtin', 'csv:<dir>', 'yelp', 'big_patent' or 'dbpedia_14'."""
    if name.startswith("csv:"):
        corpus = load_csv_dir(name[4:], **options)
        split = read_split_record(name[4:])
        if split:  # made by distildp.data.label_split: the record goes into the artifacts' keys and manifests
            corpus.info["label_split"] = split
        return corpus
    return corpus_loader(name)(**options)


def corpus_loader(name: str):
    """The function `load_corpus(name, **options)` passes `options` to: its signature is what options a corpus
    takes (for csv:<dir>, the folder comes from the name and is not an option)."""
    if name == "builtin":
        return _builtin
    if name.startswith("csv:"):
        return load_csv_dir
    if name in HUB_LOADERS:
        return HUB_LOADERS[name]
    raise ValueError(f"unknown corpus {name!r}; known: {', '.join(KNOWN_CORPORA)}")


def corpus_options(name: str) -> dict[str, inspect.Parameter]:
    """The options (keyword parameters) corpus `name` accepts, by name."""
    params = dict(inspect.signature(corpus_loader(name)).parameters)
    if name.startswith("csv:"):
        params.pop("directory")  # given by the name itself
    return params


def train_size(name: str, options: dict | None = None) -> int | None:
    """The number of private training documents corpus `name` will have, without loading it: the built-in
    corpus's `n_train` (option or default), the records of a CSV folder's train.csv (capped by `n_train` for
    yelp's data_dir); None for a hub dataset (known only once downloaded)."""
    options = options or {}
    if name == "builtin":
        return options.get("n_train", corpus_options(name)["n_train"].default)
    folder = name[4:] if name.startswith("csv:") else options.get("data_dir") if name == "yelp" else None
    if folder is None:
        return None
    train = Path(folder) / "train.csv"
    if not train.exists():
        raise FileNotFoundError(
            f"corpus {name!r} needs {train} (with val.csv or validation.csv and test.csv beside it); check the path"
        )
    n = count_csv_rows(train)
    cap = options.get("n_train") if name == "yelp" else None
    return min(n, cap) if cap is not None else n


# ------------------------------------------------------------------------------- built-in corpus
def _builtin(
    n_train: int = 4000,
    n_val: int = 400,
    n_test: int = 400,
    seed: int = 0,
    source_seed: int = 0,
    categories: list[str] | None = None,
    canaries: int = 0,
    canary_repeats: int | list[int] = 1,
    source: ReviewSource | None = None,
) -> Corpus:
    """Private corpus from `ReviewSource`, restricted to the private categories. The default N = 4,000 training
    documents make DP-SGD's noise per step (sigma / batch) at epsilon = 2 about 4x the paper's at the embedded
    default's batch of 1,000; 400 validation documents (where learning rates are chosen) and 400 test.

    Splits are sampled from separate seed streams (the test split depends only on `seed` and
    `n_test`) and made disjoint: a validation text that is also in test, or a train text that is in
    validation or test, is replaced by a fresh draw. Canaries go into train only: `canaries` secrets for each
    repeat count in `canary_repeats` (an int, or a list such as [1, 4, 16] for groups repeated that many times).
    """
    for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"{key} must be >= 1, got {n}")
    src = source or ReviewSource(source_seed)
    cats = list(categories or PRIVATE_CATEGORIES)
    taken: set[str] = set()
    frames = {}
    for split_id, (split, n) in enumerate((("test", n_test), ("validation", n_val), ("train", n_train))):
        records: list[Record] = []
        for attempt in range(100):
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, attempt]))
            records += [r for r in src.sample(n - len(records), rng, categories=cats) if r.text not in taken]
            if len(records) == n:
                break
        else:
            raise RuntimeError(f"could not draw {n} {split} texts distinct from the other splits")
        taken |= {r.text for r in records}
        frames[split] = pd.DataFrame(
            {
                "text": [r.text for r in records],
                "label_business_category": [r.codes[CATEGORY] for r in records],
                "label_review_stars": [r.codes[STARS] for r in records],
            }
        )
    inserted = insert_canaries(frames["train"], canaries, canary_repeats, seed) if canaries else []
    return Corpus(
        "builtin",
        {s: frames[s] for s in SPLITS},
        {"label_business_category": CATEGORY, "label_review_stars": STARS},
        source=src,
        canaries=inserted,
        info={"categories": cats, "seed": seed, "source_seed": source_seed, "source_fingerprint": src.fingerprint},
    )


PUBLIC_CORPORA = ("builtin", "prose", "csv:<dir>", "hub:<dataset>[:<config>]")


@dataclass
class PublicText:
    """Public pretraining text, with a held-out split to tell convergence. A document may come behind a control
    code prefix (`*_prefixes`, '' for none), tokenized apart from its text as in private fine-tuning."""

    name: str
    train: list[str]
    validation: list[str]
    info: dict = field(default_factory=dict)
    train_prefixes: list[str] = field(default_factory=list)
    validation_prefixes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.train_prefixes = self.train_prefixes or [""] * len(self.train)
        self.validation_prefixes = self.validation_prefixes or [""] * len(self.validation)


def load_public(
    name: str = "builtin",
    n_docs: int | None = 4000,
    n_val: int = 500,
    seed: int = 0,
    source: ReviewSource | None = None,
    coded_share: float = 0.5,
    **options,
) -> PublicText:
    """The public corpus that tokenizer and models are pretrained on, by name:

    - 'builtin': reviews of the PUBLIC categories (no codes; they write about every private aspect, see
      `distildp.data.lexicon.BORROWED_ASPECTS`) plus Python's documentation as general prose: the domain is covered,
      as web text covers Yelp for GPT-2. `n_docs` reviews for training, `n_val` more held out. A share
      `coded_share` of them is written behind its public control codes (`control_prefix`), as web text holds
      labelled text: a pretrained model has seen the format, and fine-tuning only has to learn the private
      codes' values.
    - 'prose': Python's documentation only: off-domain public text (the regime map's far end).
    - 'csv:<dir>': train.csv (and val.csv or validation.csv; else 5% of train is held out) with a `text` column
      (`text_column=` to name another): public text to pair with a `csv:` private corpus. Its label columns (the
      label* ones, or `label_columns=[...]`; display names as a private corpus's, or `code_names=`) make it coded
      public text: a share `coded_share` of its documents is written behind its own codes, in the private
      corpus's format, as the built-in public reviews are. `distildp.data.label_split` makes such a folder from a
      labelled corpus.
    - 'hub:<dataset>[:<config>]': a hub dataset's `text` column and label columns, as for csv (`data_files=` for
      local files in the hub's schema, `cache_dir=`).
    Distinct prose paragraphs are split 9:1 into train and validation. For csv and hub corpora `n_docs` caps the
    training documents (None: all) and `n_val` the validation ones.
    """
    if name in ("builtin", "prose"):
        if options:
            raise ValueError(f"public corpus {name!r} takes no options, got {sorted(options)}")
        prose = list(dict.fromkeys(pydoc_paragraphs()))  # a few paragraphs repeat in the docs
        order = np.random.default_rng(np.random.SeedSequence([seed, 0x9B0])).permutation(len(prose))
        cut = len(prose) * 9 // 10
        train, validation = [prose[i] for i in order[:cut]], [prose[i] for i in order[cut:]]
        train_prefixes, validation_prefixes = [""] * len(train), [""] * len(validation)
        if name == "builtin":
            if not 0 <= coded_share <= 1:
                raise ValueError(f"coded_share={coded_share} must lie in [0, 1]")
            src = source or ReviewSource(0)
            reviews = _public_reviews(src, n_docs or 0, seed, 0x9B1, coded_share)
            train += [text for text, _ in reviews]
            train_prefixes += [prefix for _, prefix in reviews]
            seen = set(train)
            held_out = [(t, p) for t, p in _public_reviews(src, n_val, seed, 0x9B2, coded_share) if t not in seen]
            validation += [text for text, _ in held_out]
            validation_prefixes += [prefix for _, prefix in held_out]
        return PublicText(
            name,
            train,
            validation,
            {
                "n_reviews": n_docs if name == "builtin" else 0,
                "coded_share": coded_share if name == "builtin" else 0.0,
                "n_coded": sum(bool(p) for p in train_prefixes),
            },
            train_prefixes,
            validation_prefixes,
        )
    if name.startswith("csv:"):
        return _public_csv(Path(name[4:]), n_docs, n_val, seed, coded_share, **options)
    if name.startswith("hub:"):
        return _public_hub(name, n_docs, n_val, seed, coded_share, **options)
    raise ValueError(f"unknown public corpus {name!r}; known: {', '.join(PUBLIC_CORPORA)}")


def public_options(name: str) -> dict[str, inspect.Parameter]:
    """The options (Settings.public_options) public corpus `name` takes, by name: none for 'builtin' and 'prose'."""
    if name in ("builtin", "prose"):
        return {}
    if not name.startswith(("csv:", "hub:")):
        raise ValueError(f"unknown public corpus {name!r}; known: {', '.join(PUBLIC_CORPORA)}")
    loader = _public_csv if name.startswith("csv:") else _public_hub
    parameters = inspect.signature(loader).parameters.items()
    # coded_share is Settings.public_coded_share, not an option
    return {k: p for k, p in parameters if p.default is not inspect.Parameter.empty and k != "coded_share"}


def _public_reviews(src: ReviewSource, n: int, seed: int, stream: int, coded_share: float) -> list[tuple[str, str]]:
    """n reviews of the public categories as (text, prefix): a share `coded_share` behind its codes, else ''."""
    if not n:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    records = src.sample(n, rng, categories=PUBLIC_CATEGORIES)
    coded = rng.random(n) < coded_share
    return [(r.text, control_prefix(r.codes) if c else "") for r, c in zip(records, coded)]


def _public_documents(
    frame: pd.DataFrame, where: str, text_column: str, label_columns: list[str] | None, code_names: dict | None
) -> tuple[list[str], list[dict[str, str]]]:
    """The non-empty texts of `frame` and each one's codes ({display name: value}; {} without label columns).

    Label columns are `label_columns`, or (None) the columns named label*, as in a private corpus; their display
    names are `code_names` or `distildp.data.corpus.display_name`'s, so a public document's prefix has the same form
    as a private one's."""
    if text_column not in frame.columns:
        raise ValueError(
            f"{where} has no `{text_column}` column (columns: {list(frame.columns)}); name the text "
            f"column with public_options={{'text_column': ...}}"
        )
    if label_columns is None:
        label_columns = [c for c in frame.columns if c.startswith("label") and c != text_column]
    missing = [c for c in label_columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where} has no label column(s) {missing} (columns: {list(frame.columns)}); name existing columns "
            f"in public_options={{'label_columns': [...]}}, or [] for none"
        )
    names = {c: (code_names or {}).get(c, display_name(c)) for c in label_columns}
    texts, codes = [], []
    for row in frame[[text_column, *label_columns]].itertuples(index=False):
        text, labels = row[0], [str(v) for v in row[1:]]
        if isinstance(text, str) and text.strip():
            texts.append(text)
            # a document with an empty label is written without codes: a prefix with an empty value would teach
            # the model a code the private corpus never has
            codes.append(dict(zip(names.values(), labels)) if all(v.strip() for v in labels) else {})
    if not texts:
        raise ValueError(f"{where} has no non-empty text in column `{text_column}`")
    return texts, codes


def _split_public(
    name: str,
    train: tuple[list[str], list[dict]],
    validation: tuple[list[str], list[dict]] | None,
    n_docs,
    n_val,
    seed,
    coded_share: float,
    info: dict,
) -> PublicText:
    """Hold out 5% of train when there is no validation file, cap the sizes, and write a share `coded_share` of the
    documents that have labels behind their codes (the rest plain, as the built-in public reviews)."""
    if not 0 <= coded_share <= 1:
        raise ValueError(f"public_coded_share={coded_share} must lie in [0, 1]")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9B3]))
    docs = list(zip(*train))
    if validation is None:  # hold out 5% of train
        order = rng.permutation(len(docs))
        cut = max(1, len(docs) // 20)
        held_out, docs = [docs[i] for i in order[:cut]], [docs[i] for i in order[cut:]]
    else:
        held_out = list(zip(*validation))
    if not docs:
        raise ValueError(f"public corpus {name!r} has too few documents to hold out a validation split")
    if n_docs is not None:
        docs = docs[:n_docs]
    held_out = held_out[:n_val]
    coded = np.random.default_rng(np.random.SeedSequence([seed, 0x9B4]))
    parts = {}
    for split, part in (("train", docs), ("validation", held_out)):
        draws = coded.random(len(part)) < coded_share
        parts[split] = (
            [text for text, _ in part],
            [control_prefix(codes) if codes and c else "" for (_, codes), c in zip(part, draws)],
        )
    n_labelled = sum(bool(codes) for _, codes in docs)
    n_coded = sum(bool(p) for p in parts["train"][1])
    info = {**info, "coded_share": coded_share if n_coded else 0.0, "n_coded": n_coded, "n_labelled": n_labelled}
    return PublicText(name, parts["train"][0], parts["validation"][0], info, parts["train"][1], parts["validation"][1])


def _public_csv(
    folder: Path,
    n_docs,
    n_val,
    seed,
    coded_share: float = 0.5,
    text_column: str = "text",
    label_columns: list | None = None,
    code_names: dict | None = None,
) -> PublicText:
    if not (folder / "train.csv").exists():
        raise FileNotFoundError(
            f"public corpus csv:{folder} needs {folder / 'train.csv'} (and optionally "
            f"val.csv) with a `{text_column}` column"
        )
    read = functools.partial(_public_documents, text_column=text_column, label_columns=label_columns)
    train = read(read_csv(folder / "train.csv"), str(folder / "train.csv"), code_names=code_names)
    vals = [folder / n for n in ("val.csv", "validation.csv") if (folder / n).exists()]
    validation = read(read_csv(vals[0]), str(vals[0]), code_names=code_names) if vals else None
    info = {"folder": str(folder), **({"label_split": split} if (split := read_split_record(folder)) else {})}
    return _split_public(f"csv:{folder}", train, validation, n_docs, n_val, seed, coded_share, info)


def _public_hub(
    name: str,
    n_docs,
    n_val,
    seed,
    coded_share: float = 0.5,
    text_column: str = "text",
    label_columns: list | None = None,
    code_names: dict | None = None,
    data_files=None,
    cache_dir=None,
) -> PublicText:
    path, _, config = name[4:].partition(":")
    raw = load_dataset(path, config or None, data_files=data_files, cache_dir=cache_dir, corpus=name)
    if "train" not in raw:
        raise ValueError(f"public corpus {name!r} has no train split (splits: {list(raw)})")
    read = functools.partial(_public_documents, text_column=text_column, label_columns=label_columns)
    train = read(as_frame(raw["train"]), f"{name} train", code_names=code_names)
    val_split = next((s for s in ("validation", "val", "valid") if s in raw), None)
    validation = read(as_frame(raw[val_split]), f"{name} {val_split}", code_names=code_names) if val_split else None
    info = {"dataset": path, "config": config}
    return _split_public(name, train, validation, n_docs, n_val, seed, coded_share, info)


def pydoc_paragraphs() -> list[str]:
    """English prose paragraphs of Python's docs (code, tables and indented blocks left out), as frozen in
    `distildp.data.public_text` so that the public corpus does not change with the Python version."""
    from distildp.data.public_text import frozen

    return list(frozen()["paragraphs"])
