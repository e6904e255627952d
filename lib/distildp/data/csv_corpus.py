"""CSV folders as corpora: train.csv, val.csv (or validation.csv) and test.csv with a `text` column and label
columns (see `distildp.data.corpus`), read strictly, so that a malformed file is an error naming file and line rather
than a shifted or half-empty split.
"""

from __future__ import annotations

import csv
import functools
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from distildp.data.corpus import SPLITS, Corpus, corpus_from_frames


def load_csv_dir(
    directory: str | os.PathLike, name: str | None = None, code_names: dict[str, str] | None = None
) -> Corpus:
    """A folder with train.csv, val.csv (or validation.csv) and test.csv; see `distildp.data.corpus`.

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


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV file as text columns, read as strictly as a corpus split (see `_read_csv_lines`)."""
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
