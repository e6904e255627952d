"""Split a labelled CSV corpus by label into a private part and a public part: a simulation of public in-domain text.

DP distillation assumes public text from the private data's domain (web reviews for private reviews). With only one
labelled corpus at hand, holding out some values of one label column stands in for it: the documents of the public
labels (e.g. label_module `email` and `json`) become the public part, the others stay private. The public part keeps
all columns, labels included, so that it can serve as coded public text.

This is a simulation and never a privacy boundary: documents of public labels may be written by the same people as
private ones, quote them or share their templates. A DP guarantee computed on the private part says nothing about
the public part, which is treated as if it had been published.

Output: the private folder holds train.csv, val.csv and test.csv (the private labels' rows, each in the split it was
in); the public folder holds train.csv (the public labels' rows of the source's train and test) and val.csv (of its
validation). Both get the same `split.json` record; `check_disjoint` tells whether two folders that carry such a
record still hold disjoint labels.

    python -m distildp.data.label_split SRC --column label_module --public-labels email,json --private P --public Q
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from distildp.data.csv_corpus import read_csv

SPLIT_RECORD = "split.json"
NOTE = (
    "simulated public in-domain text: the documents of public_labels were held out of the source corpus by label; "
    "this is not a privacy boundary (public documents may share authors, topics or text with private ones)"
)
CLI = "python -m distildp.data.label_split"
LAYOUT = {  # (part, file written) -> the source splits its rows come from
    ("private", "train.csv"): ("train",),
    ("private", "val.csv"): ("validation",),
    ("private", "test.csv"): ("test",),
    ("public", "train.csv"): ("train", "test"),
    ("public", "val.csv"): ("validation",),
}


def split_by_label(
    source: str | os.PathLike,
    private_dir: str | os.PathLike,
    public_dir: str | os.PathLike,
    column: str,
    public_labels: str | Iterable[str] | None = None,
    public_fraction: float | None = None,
    seed: int = 0,
) -> dict:
    """Write the private and public parts of the CSV corpus in `source`, split by the values of `column`, and
    return the split record (also written to both folders as split.json).

    Give exactly one of `public_labels` (the values to make public) and `public_fraction` (labels are drawn with
    `seed` until at least that share of the documents is public). Every check runs before anything is written;
    a folder that already holds CSV files is refused, never overwritten."""
    source, private_dir, public_dir = Path(source), Path(private_dir), Path(public_dir)
    frames, files = _read_source(source)
    if column not in frames["train"].columns:
        labels = [c for c in frames["train"].columns if c.startswith("label")]
        raise ValueError(
            f"{files['train']} has no column `{column}` (columns: {list(frames['train'].columns)}); pass the label "
            f"column to split by as `column` (--column); label columns are named label*: {labels}"
        )
    counts = Counter(value for frame in frames.values() for value in frame[column])
    public = _public_labels(source, column, counts, public_labels, public_fraction, seed)
    _check_outputs(source, private_dir, public_dir)

    parts: dict[str, dict[str, pd.DataFrame]] = {"private": {}, "public": {}}
    for (part, name), splits in LAYOUT.items():
        chosen = [frames[split][frames[split][column].isin(public) == (part == "public")] for split in splits]
        table = pd.concat(chosen)
        if table.empty:
            raise ValueError(
                f"the {part} part's {name} would have no rows: {' and '.join(str(files[s]) for s in splits)} "
                f"hold(s) no document with a {part} label of `{column}`; choose other public labels (or another "
                f"public_fraction or seed) so that every split keeps documents of both parts"
            )
        parts[part][name] = table
    data = {part: {name: _csv_bytes(table) for name, table in tables.items()} for part, tables in parts.items()}
    record = {
        "note": NOTE,
        "source": str(source.resolve()),
        "column": column,
        "public_labels": sorted(public),
        "private_labels": sorted(set(counts) - public),
        **({"seed": seed, "public_fraction": public_fraction} if public_fraction is not None else {}),
        "disjoint": True,
        "folders": {"private": str(private_dir.resolve()), "public": str(public_dir.resolve())},
        "counts": {part: {name: len(table) for name, table in tables.items()} for part, tables in parts.items()},
        "sha256": {
            part: {name: hashlib.sha256(content).hexdigest() for name, content in written.items()}
            for part, written in data.items()
        },
    }
    text = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    _write_all_or_nothing(
        {private_dir: {**data["private"], SPLIT_RECORD: text}, public_dir: {**data["public"], SPLIT_RECORD: text}}
    )
    return record


def read_split_record(folder: str | os.PathLike) -> dict | None:
    """The split.json record of `folder`, or None if it has none."""
    path = Path(folder) / SPLIT_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a JSON record ({err}); re-run {CLI} to rewrite it, or remove it") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds {type(record).__name__}, not a split record; re-run {CLI}, or remove it")
    return record


def check_disjoint(private_dir: str | os.PathLike, public_dir: str | os.PathLike) -> None:
    """Raise ValueError if the folders claim a label split (a split.json with "disjoint": true in either) and a value
    of its label column occurs in both; return None otherwise, also when neither claims anything."""
    private_dir, public_dir = Path(private_dir), Path(public_dir)
    records = [read_split_record(private_dir), read_split_record(public_dir)]
    claims = [r for r in records if r is not None and r.get("disjoint") is True]
    columns = {r.get("column") for r in claims}
    if not all(isinstance(c, str) for c in columns):
        raise ValueError(
            f"a {SPLIT_RECORD} in {private_dir} or {public_dir} claims disjoint labels but names no label column; "
            f"re-run {CLI} to rewrite it, or remove it"
        )
    for column in sorted(columns):
        private = _label_values(private_dir, ("train.csv", "val.csv", "validation.csv", "test.csv"), column)
        public = _label_values(public_dir, ("train.csv", "val.csv", "validation.csv"), column)
        shared = sorted(private & public)
        if shared:
            shown = ", ".join(repr(v) for v in shared[:10]) + (" ..." if len(shared) > 10 else "")
            raise ValueError(
                f"{private_dir} (private) and {public_dir} (public) share {len(shared)} value(s) of `{column}`: "
                f"{shown}, but their {SPLIT_RECORD} records them as disjoint by label; re-run {CLI} to split the "
                f"corpus again, or remove {SPLIT_RECORD} from both folders if the overlap is intended"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=CLI, description="Split a labelled CSV corpus by label into a private and a public part (a simulation)."
    )
    parser.add_argument("source", help="folder with train.csv, val.csv (or validation.csv) and test.csv")
    parser.add_argument("--column", required=True, help="the label column to split by, e.g. label_module")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--public-labels", help="comma-separated values of the column to make public")
    choice.add_argument("--public-fraction", type=float, help="share of documents to make public (labels drawn)")
    parser.add_argument("--private", required=True, help="new folder for the private part")
    parser.add_argument("--public", required=True, help="new folder for the public part")
    parser.add_argument("--seed", type=int, default=0, help="seed of the label draw (with --public-fraction)")
    args = parser.parse_args(argv)
    labels = None if args.public_labels is None else [v.strip() for v in args.public_labels.split(",") if v.strip()]
    try:
        record = split_by_label(
            args.source, args.private, args.public, args.column, labels, args.public_fraction, args.seed
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"{CLI}: {err}", file=sys.stderr)
        return 2
    for part in ("private", "public"):
        counts = ", ".join(f"{name} {n}" for name, n in record["counts"][part].items())
        print(f"{part} ({', '.join(record[f'{part}_labels'])}): {record['folders'][part]}: {counts}")
    return 0


def _read_source(source: Path) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """The source's three splits (train, validation, test) with the same columns, and the file each came from."""
    if not source.is_dir():
        raise FileNotFoundError(
            f"corpus folder {source} does not exist; pass a folder with train.csv, val.csv "
            f"(or validation.csv) and test.csv"
        )
    vals = [source / n for n in ("val.csv", "validation.csv") if (source / n).exists()]
    if len(vals) > 1:
        raise ValueError(f"{source} has both val.csv and validation.csv: keep one")
    files = {
        "train": source / "train.csv",
        "validation": vals[0] if vals else source / "val.csv",
        "test": source / "test.csv",
    }
    for path in files.values():
        if not path.exists():
            raise FileNotFoundError(
                f"missing {path}: a csv corpus needs train.csv, val.csv (or validation.csv) and test.csv in {source}"
            )
    frames = {split: read_csv(path) for split, path in files.items()}
    columns = list(frames["train"].columns)
    for split, frame in frames.items():
        if set(frame.columns) != set(columns):
            raise ValueError(
                f"{files[split]} has columns {list(frame.columns)} but {files['train']} has {columns}; "
                f"give every split the same columns"
            )
    return {split: frame[columns] for split, frame in frames.items()}, files


def _public_labels(
    source: Path, column: str, counts: Counter, public_labels, public_fraction: float | None, seed: int
) -> set[str]:
    """The public values of `column`: those named, or those drawn until `public_fraction` of the documents."""
    if (public_labels is None) == (public_fraction is None):
        raise ValueError(
            "give exactly one of public_labels (the label values to make public, --public-labels a,b) and "
            "public_fraction (the share of documents to make public, labels drawn with seed, --public-fraction F)"
        )
    values = sorted(counts)
    if len(values) < 2:
        raise ValueError(
            f"`{column}` of {source} has {len(values)} value(s) {values}; a label split needs at least "
            f"two: split by another label column"
        )
    if public_labels is not None:
        public = {public_labels} if isinstance(public_labels, str) else set(public_labels)
        unknown = sorted(public - set(values), key=str)
        if unknown:
            raise ValueError(
                f"public label(s) {unknown} do not occur in `{column}` of {source}; known values: "
                f"{values}; name public labels among them"
            )
    else:
        if not 0 < public_fraction < 1:
            raise ValueError(
                f"public_fraction={public_fraction} must lie strictly between 0 and 1 (a share of the "
                f"documents, e.g. 0.2)"
            )
        public, n_public = set(), 0
        for i in np.random.default_rng(seed).permutation(len(values)):
            if n_public >= public_fraction * counts.total():
                break
            public.add(values[i])
            n_public += counts[values[i]]
    if not public:
        raise ValueError(
            f"public_labels is empty: no label of `{column}` would be public; name at least one of {values}"
        )
    if public == set(values):
        how = (
            f"public_fraction={public_fraction} with seed {seed} took"
            if public_fraction is not None
            else "public_labels name"
        )
        raise ValueError(
            f"{how} every value of `{column}` in {source}: no label would be private; keep at least "
            f"one label private (name fewer public labels, or a lower public_fraction or another seed)"
        )
    return public


def _check_outputs(source: Path, private_dir: Path, public_dir: Path) -> None:
    """The output folders are new or hold no CSV files or split record, and are neither the source nor each other."""
    if private_dir.resolve() == public_dir.resolve():
        raise ValueError(f"the private and public folders are both {private_dir}; give each part its own folder")
    for role, folder in (("private", private_dir), ("public", public_dir)):
        if folder.resolve() == source.resolve():
            raise ValueError(f"the {role} folder {folder} is the source folder; write each part to a new folder")
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"the {role} folder {folder} is a file; choose a folder path")
        if folder.is_dir():
            found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".csv" or p.name == SPLIT_RECORD)
            if found:
                raise ValueError(
                    f"the {role} folder {folder} already holds {found}; the split never overwrites: "
                    f"remove them or choose another folder"
                )


def _csv_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows(table.itertuples(index=False, name=None))
    return buffer.getvalue().encode("utf-8")


def _write_all_or_nothing(contents: dict[Path, dict[str, bytes]]) -> None:
    """Write each folder's files, all of them or none: into a hidden sibling folder first, moved into place at the
    end; whatever was moved is removed again if a later step fails, so an error leaves no half-written folder."""
    staged: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for folder, files in contents.items():
            folder.parent.mkdir(parents=True, exist_ok=True)
            staged[folder] = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.partial")
            staged[folder].mkdir()
            for name, data in files.items():
                (staged[folder] / name).write_bytes(data)
        for folder, stage in staged.items():
            if folder.is_dir():  # an existing folder, without CSV files (`_check_outputs`)
                for name in contents[folder]:
                    os.replace(stage / name, folder / name)
                    placed.append(folder / name)
            else:
                stage.rename(folder)
                placed.append(folder)
    except BaseException:
        for path in reversed(placed):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise
    finally:
        for stage in staged.values():
            shutil.rmtree(stage, ignore_errors=True)


def _label_values(folder: Path, names: tuple[str, ...], column: str) -> set[str]:
    """The values of `column` in those of the CSV files `names` that `folder` holds."""
    paths = [folder / name for name in names if (folder / name).exists()]
    if not paths:
        raise FileNotFoundError(
            f"{folder} holds none of {list(names)}, but a {SPLIT_RECORD} claims it is a part of a "
            f"label split; check the folder, or remove {SPLIT_RECORD}"
        )
    values = set()
    for path in paths:
        stat = path.stat()
        values |= _column_values(str(path.resolve()), stat.st_mtime_ns, stat.st_size, column)
    return values


@functools.lru_cache(maxsize=32)
def _column_values(path: str, mtime_ns: int, size: int, column: str) -> frozenset[str]:
    """A CSV file's values of `column`, cached per file version: settings are checked once per grid point."""
    frame = read_csv(Path(path))
    if column not in frame.columns:
        raise ValueError(
            f"{path} has no column `{column}` (columns: {list(frame.columns)}), but {SPLIT_RECORD} names it as "
            f"the label the parts are split by; keep that column in every CSV of both parts, or remove "
            f"{SPLIT_RECORD} if the folders are no longer a label split"
        )
    return frozenset(frame[column])


if __name__ == "__main__":
    sys.exit(main())
