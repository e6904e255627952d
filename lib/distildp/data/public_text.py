"""The public English text the embedded default is built from, frozen into the package.

Python's own documentation (`pydoc_data.topics`) gives the built-in source its general vocabulary and bigrams
and gives public pretraining its prose paragraphs. That module changes between Python versions, even patch
releases, so reading it at run time would make the corpus, and every number in results/, depend on the
interpreter. `public_text.json.gz` holds what was read from it once (the Python version is recorded inside);
`python -m distildp.data.public_text` rebuilds the file from the running Python.
"""

from __future__ import annotations

import gzip
import json
import platform
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

FROZEN = Path(__file__).with_name("public_text.json.gz")


@lru_cache(maxsize=1)
def frozen() -> dict:
    """{'python': version it was read from, 'general': word -> count, 'bigrams': word -> {next: count},
    'paragraphs': [prose paragraph, ...]}."""
    if not FROZEN.exists():
        raise FileNotFoundError(
            f"{FROZEN} is missing from the installed package; reinstall it "
            "(`pip install -e .`) or rebuild it with `python -m distildp.data.public_text`."
        )
    with gzip.open(FROZEN, "rt", encoding="utf-8") as f:
        return json.load(f)


def read_pydoc(min_count: int = 2, max_successors: int = 24, min_words: int = 8) -> dict:
    """The same tables read from this interpreter's `pydoc_data.topics` (what `frozen()` was built with)."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics)).lower()
    counts = Counter(re.findall(r"[a-z]+", text))
    general = {w: float(n) for w, n in counts.items() if n >= min_count and (len(w) > 1 or w in ("a", "i"))}
    pair_counts: dict[str, Counter] = {}
    for run in re.findall(r"[a-z]+(?: [a-z]+)+", text):  # words separated by single spaces only
        words = run.split(" ")
        for a, b in zip(words, words[1:]):
            if a in general and b in general:
                pair_counts.setdefault(a, Counter())[b] += 1
    bigrams = {a: {b: float(n) for b, n in c.most_common(max_successors)} for a, c in pair_counts.items()}
    paragraphs = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.split("\n")
            if any(line.startswith((" ", "\t", ">>>", "*", "+", "=", "-")) for line in lines):
                continue  # code, tables, lists and indented blocks
            para = " ".join(line.strip() for line in lines)
            if len(para.split()) >= min_words and sum(ch.isalpha() or ch == " " for ch in para) > 0.9 * len(para):
                paragraphs.append(para)
    return {"python": platform.python_version(), "general": general, "bigrams": bigrams, "paragraphs": paragraphs}


def main() -> None:
    """Rebuild public_text.json.gz from this Python (this changes the built-in corpus and all results)."""
    tables = read_pydoc()
    with gzip.GzipFile(FROZEN, "wb", mtime=0) as f:  # mtime=0: the same tables give the same bytes
        f.write(json.dumps(tables).encode("utf-8"))  # key order kept: the source depends on it
    print(
        f"wrote {FROZEN} from Python {tables['python']}: {len(tables['general'])} words, "
        f"{len(tables['paragraphs'])} paragraphs"
    )


if __name__ == "__main__":
    main()
