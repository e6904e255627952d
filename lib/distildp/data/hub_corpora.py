"""The hub datasets of the paper as corpora: Yelp reviews (stars; with the DistilDP CSV folder, business category
too), Big Patent abstracts (CPC section) and DBpedia-14 abstracts (class), each from the hub or from local files in
the hub's schema. `load_dataset` fails fast, with the fix, when the hub is out of reach.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import numpy as np
import pandas as pd

from distildp.core import hub
from distildp.data.corpus import SPLITS, Corpus, corpus_from_frames
from distildp.data.csv_corpus import load_csv_dir
from distildp.data.source import STARS

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
    df = as_frame(table)
    if "text" in df.columns and "label" in df.columns and pd.api.types.is_integer_dtype(df["label"]):
        return pd.DataFrame({"text": df["text"], "label_review_stars": [f"{int(v) + 1}.0" for v in df["label"]]})
    return df


def big_patent_to_columns(table, section: str) -> pd.DataFrame:
    """big_patent rows (`abstract`, `description`) of one CPC section -> text (the abstract) + CPC section name."""
    if section not in BIG_PATENT_SECTIONS:
        raise ValueError(f"unknown CPC section {section!r}; known: {sorted(BIG_PATENT_SECTIONS)}")
    df = as_frame(table)
    return pd.DataFrame({"text": df["abstract"].str.strip(), "label_cpc_section": BIG_PATENT_SECTIONS[section]})


def dbpedia_to_columns(table) -> pd.DataFrame:
    """dbpedia_14 rows (`label` 0..13, `title`, `content`) -> text (the content) + class name."""
    df = as_frame(table)
    return pd.DataFrame(
        {"text": df["content"].str.strip(), "label_class": [DBPEDIA_CLASSES[int(v)] for v in df["label"]]}
    )


def as_frame(table) -> pd.DataFrame:
    """A hub split (a `datasets.Dataset`) or a frame, as a pandas frame."""
    return table if isinstance(table, pd.DataFrame) else table.to_pandas()


def datasets_offline() -> bool:
    """Whether `datasets` may not go online (hub.offline_mode, or its own HF_HUB_OFFLINE)."""
    import datasets

    return hub.offline_mode() or bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def load_dataset(path: str, config: str | None = None, *, data_files=None, cache_dir=None, corpus: str):
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
    if not datasets_offline() and not hub.hub_reachable():  # fail now, not after a minute of retries
        raise ConnectionError(
            f"could not load dataset {path!r} for corpus {corpus!r}: the hub "
            f"({hub.hub_host()}) is unreachable. Fix: {fix}; or, if it is cached, set "
            f"HF_DATASETS_OFFLINE=1 to use the cached copy"
        )
    try:
        return datasets.load_dataset(path, config, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - any failure here means "the data is not reachable"
        state = "offline mode is on and it is not cached" if datasets_offline() else "the hub could not be reached"
        raise ConnectionError(
            f"could not load dataset {path!r}{f' ({config})' if config else ''} for corpus "
            f"{corpus!r}: {state} ({type(err).__name__}: {str(err)[:200]}). Fix: {fix}"
        ) from err


def three_splits(
    parts: dict[str, pd.DataFrame],
    *,
    seed: int = 0,
    val_fraction: float = 0.05,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Train, validation and test from a dataset's splits ('val' or 'valid' names validation): validation carved
    from train when missing (`val_fraction`), then each split subsampled to its `n_*` limit (seeded; None: all).
    Its keyword options are every hub loader's options too (`takes_split_options`)."""
    parts = {("validation" if s in ("val", "valid") else s): frame for s, frame in parts.items()}
    rng = np.random.default_rng(seed)
    if "validation" not in parts:
        train = parts["train"]
        n_val_carved = max(1, int(round(val_fraction * len(train))))
        order = rng.permutation(len(train))
        parts["validation"] = train.iloc[order[:n_val_carved]].reset_index(drop=True)
        parts["train"] = train.iloc[order[n_val_carved:]].reset_index(drop=True)
    if "test" not in parts:
        raise ValueError(f"the dataset has no test split (splits: {list(parts)}); provide one")
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        if n is not None and n < len(parts[split]):
            parts[split] = parts[split].iloc[np.sort(rng.choice(len(parts[split]), n, replace=False))]
    return {s: parts[s].reset_index(drop=True) for s in SPLITS}


def takes_split_options(loader):
    """Declare on `loader`, which passes `**split_options` on to `three_splits`, the options that takes: its
    signature and annotations, as `inspect` and the settings' option checks read them, list each one by name."""
    own = inspect.signature(loader)
    split = [p for p in inspect.signature(three_splits).parameters.values() if p.kind is p.KEYWORD_ONLY]
    loader.__signature__ = own.replace(
        parameters=[p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD] + split
    )
    loader.__annotations__ = {**typing.get_type_hints(three_splits), **typing.get_type_hints(loader)}
    return loader


def _hub_corpus(name: str, parts: dict[str, pd.DataFrame], code_names: dict[str, str], split_options) -> Corpus:
    """A corpus from a hub dataset's splits, already text + label columns, cut by `three_splits`."""
    seed = split_options.get("seed", inspect.signature(three_splits).parameters["seed"].default)
    return corpus_from_frames(name, three_splits(parts, **split_options), code_names=code_names, info={"seed": seed})


@takes_split_options
def load_yelp(
    data_dir: str | None = None,
    hub_name: str = "Yelp/yelp_review_full",
    data_files=None,
    cache_dir=None,
    code_names: dict[str, str] | None = None,
    **split_options,
) -> Corpus:
    """Yelp reviews. `data_dir`: the DistilDP/Yue et al. CSV folder (text + label columns, e.g.
    Business Category and Review Stars); otherwise `hub_name` (default: stars only, no category)."""
    if data_dir is not None:
        corpus = load_csv_dir(data_dir, name="yelp", code_names=code_names)
        frames = three_splits(corpus.splits, **split_options)
        return corpus_from_frames("yelp", frames, code_names=corpus.code_columns, info={"data_dir": str(data_dir)})
    raw = load_dataset(hub_name, data_files=data_files, cache_dir=cache_dir, corpus="yelp")
    parts = {split: yelp_to_columns(raw[split]) for split in raw}
    return _hub_corpus("yelp", parts, {"label_review_stars": STARS, **(code_names or {})}, split_options)


@takes_split_options
def load_big_patent(
    hub_name: str = "NortheasternUniversity/big_patent",
    sections: str = "abcdefghy",
    data_files: dict[str, dict[str, str]] | None = None,
    cache_dir=None,
    **split_options,
) -> Corpus:
    """Patent abstracts labelled with their CPC section; one hub config per section letter.
    `data_files`: {section letter: {split: path}} of local files in the hub's schema."""
    merged: dict[str, list[pd.DataFrame]] = {}
    for sec in sections:
        files = None if data_files is None else data_files.get(sec)
        if data_files is not None and files is None:
            continue
        raw = load_dataset(hub_name, sec, data_files=files, cache_dir=cache_dir, corpus="big_patent")
        for split in raw:
            merged.setdefault(split, []).append(big_patent_to_columns(raw[split], sec))
    parts = {split: pd.concat(frames, ignore_index=True) for split, frames in merged.items()}
    return _hub_corpus("big_patent", parts, {"label_cpc_section": "CPC Section"}, split_options)


@takes_split_options
def load_dbpedia(hub_name: str = "fancyzhx/dbpedia_14", data_files=None, cache_dir=None, **split_options) -> Corpus:
    """DBpedia-14 article abstracts labelled with their class name."""
    raw = load_dataset(hub_name, data_files=data_files, cache_dir=cache_dir, corpus="dbpedia_14")
    parts = {split: dbpedia_to_columns(raw[split]) for split in raw}
    return _hub_corpus("dbpedia_14", parts, {"label_class": "Class"}, split_options)


HUB_LOADERS = {"yelp": load_yelp, "big_patent": load_big_patent, "dbpedia_14": load_dbpedia}
