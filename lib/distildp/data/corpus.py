"""What a corpus is: three splits of text with control codes (`Corpus`), the prefix a teacher reads the codes from
(`control_prefix`), and the checks any three splits pass before they become one (`corpus_from_frames`).

Every private corpus becomes a `Corpus`: three pandas splits ('train', 'validation', 'test'), each with a `text`
column and zero or more label columns, plus the display names of those labels (the control codes). The label
columns are those whose names start with `label` (`label`, `label1`, `label_business_category`, ...; the original
DistilDP code's CSV shape); other columns are dropped. The display name drops the `label` prefix:
`label_business_category` -> "Business Category", `label1` -> "Label 1", `label` -> "Label".
Loading corpora by name is `distildp.data.loaders`'s; CSV folders are `distildp.data.csv_corpus`'s, hub datasets
`distildp.data.hub_corpora`'s.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from distildp.data.source import ReviewSource

SPLITS = ("train", "validation", "test")


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

    def code_prefix(self, key: Sequence[str]) -> str:
        """The control-code prefix of a code tuple (values in prefix order, as `code_counts` keys them)."""
        return control_prefix(dict(zip(self.code_columns.values(), key)))

    def code_counts(self, split: str) -> Counter:
        """How many documents of `split` carry each code tuple (values in prefix order)."""
        return Counter(tuple(c.values()) for c in self.codes(split))

    def public_code_keys(self) -> tuple[list[tuple[str, ...]], list[str]]:
        """Every possible code tuple, zeros included, and notes on where that set came from. A DP histogram
        draws noise for each: keys read off the private data would leak which codes occur. A known source
        publishes its schema (categories x stars); otherwise the keys are the training split's, and a note says so."""
        if self.source is not None:
            return list(itertools.product(self.info["categories"], self.source.stars)), []
        if "code_schema" in self.info:  # a known source's schema, kept when its documents were cut to fit
            return [tuple(key) for key in self.info["code_schema"]], []
        keys = sorted(self.code_counts("train"))
        return keys, [
            "the set of codes was read off the private training data (no public schema known): "
            "which codes occur is not protected"
        ]

    def _split(self, split: str) -> pd.DataFrame:
        if split not in self.splits:
            raise KeyError(f"no split {split!r}; this corpus has {list(self.splits)}")
        return self.splits[split]


def display_name(column: str) -> str:
    """'label_business_category' -> 'Business Category'; 'label1' -> 'Label 1'; 'label' -> 'Label'."""
    rest = column[len("label") :].strip("_- ")
    if not rest:
        return "Label"
    if rest.isdigit():
        return f"Label {rest}"
    return " ".join(w.capitalize() for w in re.split(r"[_\-\s]+", rest) if w)


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
