"""Epsilons computed once per artifact store: an accountant's answer is a pure function of its inputs, so the grid's
processes share it on disk instead of each recomputing it.

A PRV epsilon takes about a second (its domain bound alone evaluates RDP at a few hundred orders), and every DP
model reports its own (`private_training`), every results row its composition (`rows`), each from a process of its
own. `cached(kind, inputs, compute)` returns the value stored under a hash of (kind, inputs, the Opacus version
whose accountant computed it), or computes and stores it. Nothing is cached until a directory is chosen
(`use_directory`, or for the length of a `with directory(...)` block: `Pipeline`'s stages run in one naming its
store's `.accounting/`, a folder `ArtifactStore.list` skips); an unwritable directory only means no caching.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator

_directory: Path | None = None


def use_directory(directory: str | os.PathLike | None) -> None:
    """Cache epsilons in `directory` from now on (None: not at all)."""
    global _directory
    _directory = Path(directory) if directory is not None else None


@contextmanager
def directory(path: str | os.PathLike | None) -> Iterator[None]:
    """Cache epsilons in `path` inside the block; the directory chosen before is restored after it."""
    before = _directory
    use_directory(path)
    try:
        yield
    finally:
        use_directory(before)


def cached(kind: str, inputs: tuple, compute: Callable[[], float]) -> float:
    """The epsilon of `kind` (which accountant, computed how) at `inputs`, from the cache or from `compute()`."""
    if _directory is None:
        return compute()
    record = {"kind": kind, "inputs": inputs, "opacus": version("opacus")}
    path = _directory / f"{hashlib.sha256(json.dumps(record).encode()).hexdigest()[:32]}.json"
    try:
        return float(json.loads(path.read_text())["epsilon"])
    except (OSError, ValueError, KeyError):
        pass
    value = float(compute())
    try:
        _directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({**record, "epsilon": value if math.isfinite(value) else str(value)}))
        os.replace(tmp, path)  # atomic: a reader sees no half-written file
    except OSError:
        pass  # a store that cannot be written still computes every epsilon
    return value
