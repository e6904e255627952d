"""Corpora: the built-in private corpus, the public pretraining text, CSV folders and hub datasets.

Every corpus becomes a `Corpus`: three pandas splits ('train', 'validation', 'test'), each with a
`text` column and zero or more label columns, plus the display names of those labels (the control
codes). Accepted CSV shape (the original DistilDP code's): a `text` column and columns whose names
start with `label` (`label`, `label1`, `label_business_category`, ...); other columns are ignored.
The display name drops the `label` prefix: `label_business_category` -> "Business Category",
`label1` -> "Label 1", `label` -> "Label".
"""

from __future__ import annotations

import csv
import functools
import inspect
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distildp import hub
from distildp.source import CATEGORY, PRIVATE_CATEGORIES, PUBLIC_CATEGORIES, STARS, Record, ReviewSource

__all__ = [
    "Record",
    "Corpus",
    "control_prefix",
    "load_corpus",
    "load_public",
    "PublicText",
    "KNOWN_CORPORA",
    "PUBLIC_CORPORA",
    "yelp_to_columns",
    "big_patent_to_columns",
    "dbpedia_to_columns",
    "BIG_PATENT_SECTIONS",
    "DBPEDIA_CLASSES",
]

SPLITS = ("train", "validation", "test")
KNOWN_CORPORA = ("builtin", "csv:<dir>", "yelp", "big_patent", "dbpedia_14")


def control_prefix(codes: dict[str, str]) -> str:
    """The teacher's control-code prefix, e.g. 'Business Category: Restaurants\\tReview Stars: 5.0\\n\\n'."""
    return "\t".join(f"{name}: {value}" for name, value in codes.items()) + "\n\n"


@dataclass
class Corpus:
    """Three splits of text with control codes; `source` is set when the exact floor is computable."""

    name: str
    splits: dict[str, pd.DataFrame]
    code_columns: dict[str, str]  # label column -> display name, in prefix order
    source: ReviewSource | None = None
    canaries: list[dict] = field(default_factory=list)  # secrets inserted into train (builtin only)
    info: dict = field(default_factory=dict)

    def texts(self, split: str) -> list[str]:
        return self._split(split)["text"].tolist()

    def codes(self, split: str) -> list[dict[str, str]]:
        df = self._split(split)
        columns = [df[c].astype(str).tolist() for c in self.code_columns]
        return (
            [dict(zip(self.code_columns.values(), row)) for row in zip(*columns)]
            if columns
            else [{} for _ in range(len(df))]
        )

    def prefixes(self, split: str) -> list[str]:
        return [control_prefix(c) for c in self.codes(split)]

    def _split(self, split: str) -> pd.DataFrame:
        if split not in self.splits:
            raise KeyError(f"no split {split!r}; this corpus has {list(self.splits)}")
        return self.splits[split]


def load_corpus(name: str = "builtin", **options) -> Corpus:
    """Load a corpus by name: 'builtin', 'csv:<dir>', 'yelp', 'big_patent' or 'dbpedia_14'."""
    if name.startswith("csv:"):
        return load_csv_dir(name[4:], **options)
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


def insert_canaries(train: pd.DataFrame, n_canaries: int, repeats: int | list[int], seed: int) -> list[dict]:
    """Append secret sentences ('My secret code is 4821 7395.') to train rows, in place: `n_canaries` secrets
    for each repeat count in `repeats` (an int, or a list such as [1, 4, 16]), each secret in that many rows.

    Returns one dict per canary: id, secret (the digits), sentence, repeats, rows. Secrets are distinct, and no
    row holds two. Canaries are outside the source's vocabulary, so they never enter the floor (computed on
    test, which has none).
    """
    counts = [repeats] if isinstance(repeats, int) and not isinstance(repeats, bool) else repeats
    if (
        not isinstance(counts, list)
        or not counts
        or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in counts)
    ):
        raise ValueError(
            f"canary_repeats={repeats!r} must be a positive int or a non-empty list of them, e.g. [1, 4, 16]"
        )
    if isinstance(n_canaries, bool) or not isinstance(n_canaries, int) or n_canaries < 0:
        raise ValueError(f"canaries={n_canaries!r} must be a non-negative int (secrets per repeat count)")
    needed = n_canaries * sum(counts)
    if needed > len(train):
        raise ValueError(
            f"{n_canaries} canaries x repeats {counts} need {needed} train rows; "
            f"train has {len(train)}: lower canaries/canary_repeats or raise n_train"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA7]))
    rows = rng.choice(len(train), size=needed, replace=False)
    out, taken, start = [], set(), 0
    for count in counts:
        for _ in range(n_canaries):
            secret = _draw_secret(rng)
            while secret in taken:  # distinct secrets, so each canary's exposure is its own
                secret = _draw_secret(rng)
            taken.add(secret)
            sentence = f"My secret code is {secret}."
            mine = sorted(rows[start : start + count].tolist())
            start += count
            for r in mine:
                train.iat[r, train.columns.get_loc("text")] += " " + sentence
            out.append({"id": len(out), "secret": secret, "sentence": sentence, "repeats": count, "rows": mine})
    return out


def _draw_secret(rng: np.random.Generator) -> str:
    return " ".join("".join(map(str, rng.integers(0, 10, 4))) for _ in range(2))


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
      `distildp.source.BORROWED_ASPECTS`) plus Python's documentation as general prose: the domain is covered,
      as web text covers Yelp for GPT-2. `n_docs` reviews for training, `n_val` more held out. A share
      `coded_share` of them is written behind its public control codes (`control_prefix`), as web text holds
      labelled text: a pretrained model has seen the format, and fine-tuning only has to learn the private
      codes' values.
    - 'prose': Python's documentation only: off-domain public text (the regime map's far end).
    - 'csv:<dir>': train.csv (and val.csv or validation.csv; else 5% of train is held out) with a `text` column
      (`text_column=` to name another): public text to pair with a `csv:` private corpus.
    - 'hub:<dataset>[:<config>]': a hub dataset's `text` column (`text_column=`, `data_files=` for local files in
      the hub's schema, `cache_dir=`).
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
            held_out = [(t, p) for t, p in _public_reviews(src, n_val, seed, 0x9B2, coded_share) if t not in set(train)]
            validation += [text for text, _ in held_out]
            validation_prefixes += [prefix for _, prefix in held_out]
        return PublicText(
            name,
            train,
            validation,
            {"n_reviews": n_docs if name == "builtin" else 0, "coded_share": coded_share if name == "builtin" else 0.0},
            train_prefixes,
            validation_prefixes,
        )
    if name.startswith("csv:"):
        return _public_csv(Path(name[4:]), n_docs, n_val, seed, **options)
    if name.startswith("hub:"):
        return _public_hub(name, n_docs, n_val, seed, **options)
    raise ValueError(f"unknown public corpus {name!r}; known: {', '.join(PUBLIC_CORPORA)}")


def public_options(name: str) -> dict[str, inspect.Parameter]:
    """The options (Settings.public_options) public corpus `name` takes, by name: none for 'builtin' and 'prose'."""
    if name in ("builtin", "prose"):
        return {}
    if not name.startswith(("csv:", "hub:")):
        raise ValueError(f"unknown public corpus {name!r}; known: {', '.join(PUBLIC_CORPORA)}")
    loader = _public_csv if name.startswith("csv:") else _public_hub
    return {k: p for k, p in inspect.signature(loader).parameters.items() if p.default is not inspect.Parameter.empty}


def _public_reviews(src: ReviewSource, n: int, seed: int, stream: int, coded_share: float) -> list[tuple[str, str]]:
    """n reviews of the public categories as (text, prefix): a share `coded_share` behind its codes, else ''."""
    if not n:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    records = src.sample(n, rng, categories=PUBLIC_CATEGORIES)
    coded = rng.random(n) < coded_share
    return [(r.text, control_prefix(r.codes) if c else "") for r, c in zip(records, coded)]


def _public_texts_of(frame: pd.DataFrame, where: str, text_column: str) -> list[str]:
    if text_column not in frame.columns:
        raise ValueError(
            f"{where} has no `{text_column}` column (columns: {list(frame.columns)}); name the text "
            f"column with public_options={{'text_column': ...}}"
        )
    texts = [t for t in frame[text_column].tolist() if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"{where} has no non-empty text in column `{text_column}`")
    return texts


def _split_public(
    name: str, train: list[str], validation: list[str] | None, n_docs, n_val, seed, info: dict
) -> PublicText:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9B3]))
    if validation is None:  # hold out 5% of train
        order = rng.permutation(len(train))
        cut = max(1, len(train) // 20)
        validation, train = [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]
    if not train:
        raise ValueError(f"public corpus {name!r} has too few documents to hold out a validation split")
    if n_docs is not None:
        train = train[:n_docs]
    return PublicText(name, train, validation[:n_val], info)


def _public_csv(folder: Path, n_docs, n_val, seed, text_column: str = "text") -> PublicText:
    if not (folder / "train.csv").exists():
        raise FileNotFoundError(
            f"public corpus csv:{folder} needs {folder / 'train.csv'} (and optionally "
            f"val.csv) with a `{text_column}` column"
        )
    train = _public_texts_of(_read_csv(folder / "train.csv"), str(folder / "train.csv"), text_column)
    vals = [folder / n for n in ("val.csv", "validation.csv") if (folder / n).exists()]
    validation = _public_texts_of(_read_csv(vals[0]), str(vals[0]), text_column) if vals else None
    return _split_public(f"csv:{folder}", train, validation, n_docs, n_val, seed, {"folder": str(folder)})


def _public_hub(
    name: str, n_docs, n_val, seed, text_column: str = "text", data_files=None, cache_dir=None
) -> PublicText:
    path, _, config = name[4:].partition(":")
    raw = _load_dataset(path, config or None, data_files=data_files, cache_dir=cache_dir, corpus=name)
    if "train" not in raw:
        raise ValueError(f"public corpus {name!r} has no train split (splits: {list(raw)})")
    train = _public_texts_of(_as_frame(raw["train"]), f"{name} train", text_column)
    val_split = next((s for s in ("validation", "val", "valid") if s in raw), None)
    validation = _public_texts_of(_as_frame(raw[val_split]), f"{name} {val_split}", text_column) if val_split else None
    return _split_public(name, train, validation, n_docs, n_val, seed, {"dataset": path, "config": config})


def pydoc_paragraphs() -> list[str]:
    """English prose paragraphs of Python's docs (code, tables and indented blocks left out), as frozen in
    `distildp.public_text` so that the public corpus does not change with the Python version."""
    from distildp.public_text import frozen

    return list(frozen()["paragraphs"])


# ------------------------------------------------------------------------------- CSV folders
def display_name(column: str) -> str:
    """'label_business_category' -> 'Business Category'; 'label1' -> 'Label 1'; 'label' -> 'Label'."""
    rest = column[len("label") :].strip("_- ")
    if not rest:
        return "Label"
    if rest.isdigit():
        return f"Label {rest}"
    return " ".join(w.capitalize() for w in re.split(r"[_\-\s]+", rest) if w)


def load_csv_dir(
    directory: str | os.PathLike, name: str | None = None, code_names: dict[str, str] | None = None
) -> Corpus:
    """A folder with train.csv, val.csv (or validation.csv) and test.csv; see the module docstring.

    Read strictly: a row with more or fewer fields than the header, a repeated column name, a split with no
    rows or a label that is a number in one split and text in another is an error naming file and line."""
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"corpus folder {folder} does not exist; pass csv:<dir> with train.csv, "
            f"val.csv (or validation.csv) and test.csv inside"
        )
    files = {"train": folder / "train.csv", "test": folder / "test.csv"}
    vals = [folder / n for n in ("val.csv", "validation.csv") if (folder / n).exists()]
    if len(vals) > 1:
        raise ValueError(f"{folder} has both val.csv and validation.csv: keep one")
    files["validation"] = vals[0] if vals else folder / "val.csv"
    frames, lines = {}, {}
    for split in SPLITS:
        if not files[split].exists():
            raise FileNotFoundError(
                f"missing {files[split]}: a csv corpus needs train.csv, val.csv "
                f"(or validation.csv) and test.csv in {folder}"
            )
        frames[split], lines[split] = _read_csv_lines(files[split])
    corpus = corpus_from_frames(
        name or f"csv:{folder}", frames, code_names=code_names, where={s: str(files[s]) for s in SPLITS}, lines=lines
    )
    _check_label_types(corpus, files, lines)
    return corpus


def _read_csv(path: Path) -> pd.DataFrame:
    return _read_csv_lines(path)[0]


def _read_csv_lines(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """A CSV file as text columns ('5.0' stays '5.0', empty cells stay ''), and the line (1-based, as an editor
    shows it) each row starts on. Blank lines are skipped.

    The csv module rather than pandas: it tells where each record starts (a quoted field may span lines), and
    pandas would read a row with extra fields as a shifted row (or its first fields as an index) and fill
    missing ones with NaN; its `on_bad_lines` callable gets the fields but not the line number."""
    form = "a UTF-8 CSV with a header row naming each column once, and one row per document"
    header, rows, lines = None, [], []
    start = end = 0  # the current record's first line, and the previous record's last
    limit = csv.field_size_limit(2**31 - 1)  # long documents: the default caps a field at 128 KiB
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first name
            reader = csv.reader(f, strict=True)
            for record in reader:
                start, end = end + 1, reader.line_num
                if not record:
                    continue  # a blank line
                if header is None:
                    header, header_line = record, start
                    repeated = sorted(n for n, k in Counter(header).items() if k > 1)
                    if repeated:
                        raise ValueError(
                            f"{path}, line {start}: column name(s) {repeated} appear more than once "
                            f"in the header; give every column its own name"
                        )
                    continue
                if len(record) != len(header):
                    raise ValueError(f"{path}, line {start}: {_ragged(len(record), len(header), header_line)}")
                rows.append(record)
                lines.append(start)
    except UnicodeDecodeError as err:
        raise ValueError(f"cannot read {path} as CSV ({type(err).__name__}: {err}); it must be {form}") from err
    except csv.Error as err:  # strict mode: a quote that does not close, or text after a closing quote
        raise ValueError(
            f"cannot read {path} as CSV: the record starting on line {end + 1}: {err}. A field that "
            f'holds a quote must be quoted as a whole, with the quote doubled: "she said ""hi""", '
            f"and every opening quote needs its closing one"
        ) from err
    except OSError as err:
        raise ValueError(f"cannot read {path} ({type(err).__name__}: {err})") from err
    finally:
        csv.field_size_limit(limit)
    if header is None:
        raise ValueError(f"cannot read {path} as CSV: the file is empty; it must be {form}")
    if not rows:
        raise ValueError(
            f"{path} has a header (line {header_line}) but no rows: a split needs at least one "
            f"document; add rows, or check that the right file is in place"
        )
    return pd.DataFrame(rows, columns=header, dtype=str), lines


def _ragged(n_fields: int, n_header: int, header_line: int) -> str:
    """Why a row with `n_fields` fields under a header of `n_header` names is refused, and the fix."""
    if n_fields > n_header:
        return (
            f"{n_fields} fields where the header (line {header_line}) has {n_header}; quote a field that "
            f'contains a comma ("like, this"), or remove the extra fields'
        )
    return (
        f"{n_fields} field{'s' if n_fields != 1 else ''} where the header (line {header_line}) has "
        f"{n_header}; add the missing fields (a text holding a line break must be quoted) or delete the row"
    )


def count_csv_rows(path: str | os.PathLike) -> int:
    """The rows of a CSV file (records after the header, blank lines skipped), read as strictly as a corpus is
    (see `_read_csv_lines`) but without building a frame. Cached per file version."""
    path = Path(path)
    stat = path.stat()
    return _count_csv_rows(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _count_csv_rows(path: str, mtime_ns: int, size: int) -> int:
    return len(_read_csv_lines(Path(path))[1])


def _check_label_types(corpus: Corpus, files: dict[str, Path], lines: dict[str, list[int]]) -> None:
    """Each label column holds numbers in every split or text in every split. A mix (5.0 in train, 'five' in
    test) means the splits were written differently, and their codes would never match."""
    for column in corpus.code_columns:
        numeric = {s: pd.to_numeric(corpus.splits[s][column], errors="coerce").notna() for s in SPLITS}
        kinds = {s: bool(numeric[s].all()) for s in SPLITS}
        if len(set(kinds.values())) > 1:
            odd = next(s for s in SPLITS if not kinds[s])  # the first split with text where others have numbers
            row = int((~numeric[odd]).to_numpy().argmax())
            value = corpus.splits[odd][column].iloc[row]
            numbers = ", ".join(files[s].name for s in SPLITS if kinds[s])
            raise ValueError(
                f"{files[odd]}, line {lines[odd][row]}: label `{column}` is {value!r} (text), but "
                f"{numbers} hold(s) only numbers in `{column}`; write the label the same way in every "
                f"split (e.g. 5.0 everywhere, or five everywhere)"
            )


def corpus_from_frames(
    name: str,
    frames: dict[str, pd.DataFrame],
    code_names: dict[str, str] | None = None,
    where: dict[str, str] | None = None,
    info: dict | None = None,
    lines: dict[str, list[int]] | None = None,
) -> Corpus:
    """Validate three splits (text + label* columns) and wrap them in a `Corpus`. `where` names each split's
    file; `lines` gives the file line of each row (else row i is on line i + 2: a header, no blank lines)."""
    from_files = where is not None
    where = where or {s: f"split {s!r}" for s in frames}
    label_sets = {}
    clean = {}
    for split in SPLITS:
        df = frames[split]
        if "text" not in df.columns:
            raise ValueError(
                f"{where[split]} has no `text` column (columns: {list(df.columns)}); rename the "
                f"document column to `text`"
            )
        labels = [c for c in df.columns if c.startswith("label")]
        label_sets[split] = labels
        for col in ["text", *labels]:
            values = df[col]
            bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
            if bad:
                line_of = (lambda i, split=split: lines[split][i]) if lines else (lambda i: i + 2 if from_files else i)
                shown = ", ".join(str(line_of(i)) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
                at = f"file lines {shown}, the header being line 1" if from_files else f"rows {shown}, counting from 0"
                raise ValueError(
                    f"{where[split]}: column `{col}` is empty or not text in {len(bad)} row(s) "
                    f"({at}); fill or delete those rows"
                )
        clean[split] = df[["text", *labels]].reset_index(drop=True)
    if len({tuple(v) for v in label_sets.values()}) > 1:
        raise ValueError(f"label columns differ between splits: {label_sets}; every split needs the same ones")
    names = {c: (code_names or {}).get(c, display_name(c)) for c in label_sets["train"]}
    return Corpus(name, clean, names, info=info or {})


# ------------------------------------------------------------------------------- hub datasets
BIG_PATENT_SECTIONS = {
    "a": "Human Necessities",
    "b": "Performing Operations; Transporting",
    "c": "Chemistry; Metallurgy",
    "d": "Textiles; Paper",
    "e": "Fixed Constructions",
    "f": "Mechanical Engineering; Lighting; Heating; Weapons; Blasting",
    "g": "Physics",
    "h": "Electricity",
    "y": "General tagging of new or cross-sectional technology",
}
DBPEDIA_CLASSES = [
    "Company",
    "EducationalInstitution",
    "Artist",
    "Athlete",
    "OfficeHolder",
    "MeanOfTransportation",
    "Building",
    "NaturalPlace",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "WrittenWork",
]


def yelp_to_columns(table) -> pd.DataFrame:
    """Yelp rows -> text + label columns.

    Accepts the hub's `yelp_review_full` schema (`label` 0..4, `text`) -> Review Stars "1.0".."5.0",
    or DistilDP-style CSV rows (`text` + `label*` columns, passed through).
    """
    df = _as_frame(table)
    if "text" in df.columns and "label" in df.columns and pd.api.types.is_integer_dtype(df["label"]):
        return pd.DataFrame({"text": df["text"], "label_review_stars": [f"{int(v) + 1}.0" for v in df["label"]]})
    return df


def big_patent_to_columns(table, section: str) -> pd.DataFrame:
    """big_patent rows (`abstract`, `description`) of one CPC section -> text (the abstract) + CPC section name."""
    if section not in BIG_PATENT_SECTIONS:
        raise ValueError(f"unknown CPC section {section!r}; known: {sorted(BIG_PATENT_SECTIONS)}")
    df = _as_frame(table)
    return pd.DataFrame({"text": df["abstract"].str.strip(), "label_cpc_section": BIG_PATENT_SECTIONS[section]})


def dbpedia_to_columns(table) -> pd.DataFrame:
    """dbpedia_14 rows (`label` 0..13, `title`, `content`) -> text (the content) + class name."""
    df = _as_frame(table)
    return pd.DataFrame(
        {"text": df["content"].str.strip(), "label_class": [DBPEDIA_CLASSES[int(v)] for v in df["label"]]}
    )


def _as_frame(table) -> pd.DataFrame:
    return table if isinstance(table, pd.DataFrame) else table.to_pandas()


def _hub_offline() -> bool:
    import datasets

    return hub.offline_mode() or bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


_hub_host, _hub_reachable = hub.hub_host, hub.hub_reachable  # module-level names, so tests can stub them


def _load_dataset(path: str, config: str | None = None, *, data_files=None, cache_dir=None, corpus: str):
    """`datasets.load_dataset` with a clear error instead of a stack of retries when the hub is unreachable."""
    import datasets

    if data_files is not None:  # local files of the hub's schema
        missing = [f for f in np.atleast_1d(list(data_files.values())) if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(f"{corpus}: data file(s) not found: {missing}")
        suffix = Path(next(iter(data_files.values()))).suffix.lstrip(".")
        fmt = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(suffix)
        if fmt is None:
            raise ValueError(f"{corpus}: cannot tell the format of {data_files}; use .csv, .json(l) or .parquet")
        return datasets.load_dataset(fmt, data_files=data_files, cache_dir=cache_dir)
    fix = (
        f"connect to the internet (unset HF_DATASETS_OFFLINE/HF_HUB_OFFLINE), or pass local files: "
        f"load_corpus({corpus!r}, data_files={{'train': ..., 'test': ...}}) in the hub's schema, or a "
        f"prepared folder via load_corpus('csv:<dir>')"
    )
    if not _hub_offline() and not _hub_reachable():  # fail now, not after a minute of retries
        raise ConnectionError(
            f"could not load dataset {path!r} for corpus {corpus!r}: the hub "
            f"({_hub_host()}) is unreachable. Fix: {fix}; or, if it is cached, set "
            f"HF_DATASETS_OFFLINE=1 to use the cached copy"
        )
    try:
        return datasets.load_dataset(path, config, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - any failure here means "the data is not reachable"
        state = "offline mode is on and it is not cached" if _hub_offline() else "the hub could not be reached"
        raise ConnectionError(
            f"could not load dataset {path!r}{f' ({config})' if config else ''} for corpus "
            f"{corpus!r}: {state} ({type(err).__name__}: {str(err)[:200]}). Fix: {fix}"
        ) from err


def _three_splits(
    parts: dict[str, pd.DataFrame], seed: int, val_fraction: float, limits: dict[str, int | None]
) -> dict[str, pd.DataFrame]:
    """Carve validation from train when missing, then subsample each split to its limit (seeded)."""
    parts = dict(parts)
    rng = np.random.default_rng(seed)
    if "validation" not in parts:
        train = parts["train"]
        n_val = max(1, int(round(val_fraction * len(train))))
        order = rng.permutation(len(train))
        parts["validation"] = train.iloc[order[:n_val]].reset_index(drop=True)
        parts["train"] = train.iloc[order[n_val:]].reset_index(drop=True)
    if "test" not in parts:
        raise ValueError(f"the dataset has no test split (splits: {list(parts)}); provide one")
    for split, n in limits.items():
        if n is not None and n < len(parts[split]):
            parts[split] = parts[split].iloc[np.sort(rng.choice(len(parts[split]), n, replace=False))]
    return {s: parts[s].reset_index(drop=True) for s in SPLITS}


def _hub_corpus(name, load, to_columns, code_names, *, seed, val_fraction, n_train, n_val, n_test) -> Corpus:
    raw = load()
    parts = {("validation" if s in ("val", "valid") else s): to_columns(raw[s]) for s in raw}
    frames = _three_splits(parts, seed, val_fraction, {"train": n_train, "validation": n_val, "test": n_test})
    return corpus_from_frames(name, frames, code_names=code_names, info={"seed": seed})


def load_yelp(
    data_dir: str | None = None,
    hub_name: str = "Yelp/yelp_review_full",
    data_files=None,
    cache_dir=None,
    seed: int = 0,
    val_fraction: float = 0.05,
    n_train=None,
    n_val=None,
    n_test=None,
    code_names: dict[str, str] | None = None,
) -> Corpus:
    """Yelp reviews. `data_dir`: the DistilDP/Yue et al. CSV folder (text + label columns, e.g.
    Business Category and Review Stars); otherwise `hub_name` (default: stars only, no category)."""
    names = {"label_review_stars": STARS, **(code_names or {})}
    if data_dir is not None:
        corpus = load_csv_dir(data_dir, name="yelp", code_names=code_names)
        sizes = {"train": n_train, "validation": n_val, "test": n_test}
        frames = _three_splits(corpus.splits, seed, val_fraction, sizes)
        return corpus_from_frames("yelp", frames, code_names=corpus.code_columns, info={"data_dir": str(data_dir)})
    return _hub_corpus(
        "yelp",
        lambda: _load_dataset(hub_name, data_files=data_files, cache_dir=cache_dir, corpus="yelp"),
        yelp_to_columns,
        names,
        seed=seed,
        val_fraction=val_fraction,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
    )


def load_big_patent(
    hub_name: str = "NortheasternUniversity/big_patent",
    sections: str = "abcdefghy",
    data_files: dict[str, dict[str, str]] | None = None,
    cache_dir=None,
    seed: int = 0,
    val_fraction: float = 0.05,
    n_train=None,
    n_val=None,
    n_test=None,
) -> Corpus:
    """Patent abstracts labelled with their CPC section; one hub config per section letter.
    `data_files`: {section letter: {split: path}} of local files in the hub's schema."""

    def load():
        merged: dict[str, list[pd.DataFrame]] = {}
        for sec in sections:
            files = None if data_files is None else data_files.get(sec)
            if data_files is not None and files is None:
                continue
            raw = _load_dataset(hub_name, sec, data_files=files, cache_dir=cache_dir, corpus="big_patent")
            for split in raw:
                merged.setdefault(split, []).append(big_patent_to_columns(raw[split], sec))
        return {s: pd.concat(v, ignore_index=True) for s, v in merged.items()}

    return _hub_corpus(
        "big_patent",
        load,
        lambda df: df,
        {"label_cpc_section": "CPC Section"},
        seed=seed,
        val_fraction=val_fraction,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
    )


def load_dbpedia(
    hub_name: str = "fancyzhx/dbpedia_14",
    data_files=None,
    cache_dir=None,
    seed: int = 0,
    val_fraction: float = 0.05,
    n_train=None,
    n_val=None,
    n_test=None,
) -> Corpus:
    """DBpedia-14 article abstracts labelled with their class name."""
    return _hub_corpus(
        "dbpedia_14",
        lambda: _load_dataset(hub_name, data_files=data_files, cache_dir=cache_dir, corpus="dbpedia_14"),
        dbpedia_to_columns,
        {"label_class": "Class"},
        seed=seed,
        val_fraction=val_fraction,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
    )


HUB_LOADERS = {"yelp": load_yelp, "big_patent": load_big_patent, "dbpedia_14": load_dbpedia}
