"""A synthetic set's folder: parquet chunks, each written atomically with its metadata (fingerprint, seed,
per-code statistics), and `progress.json`; starting or resuming a set (`start_or_resume`: another run's folder is
refused, or discarded when the artifact store kept it from a killed build), totals read back from the chunks
(`summarise`), and reading a finished set (`load_synthetic`). What goes into the chunks is
`distildp.distill.generate`'s.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distildp.core.manifests import write_json_atomic
from distildp.lm.sampling import GenerationConfig

PROGRESS_FILE = "progress.json"
CHUNK_METADATA_KEY = b"distildp_chunk"


def chunk_path(out_dir: Path, chunk_index: int) -> Path:
    """The file of chunk `chunk_index` in a synthetic set's folder."""
    return out_dir / f"chunk-{chunk_index:05d}.parquet"


def write_chunk(path: Path, frame: pd.DataFrame, metadata: dict) -> None:
    """Write a chunk under a temporary name, then rename: a chunk file either is complete or absent."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), CHUNK_METADATA_KEY: json.dumps(metadata).encode()}
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_chunk_metadata(path: Path) -> dict:
    """What `write_chunk` recorded with a chunk (its fingerprint, seed, per-code statistics, time)."""
    return json.loads(pq.read_schema(path).metadata[CHUNK_METADATA_KEY])


def chunks_present(out_dir: Path, n_chunks: int) -> list[int]:
    """The chunks written so far: a chunk file is complete or absent (written under a temporary name, renamed)."""
    return [index for index in range(n_chunks) if chunk_path(out_dir, index).exists()]


@dataclass(frozen=True)
class SetPlan:
    """One synthetic set on disk: its folder, its chunks' plan, and the arguments its fingerprint covers."""

    out_dir: Path
    fingerprint: str
    plan: list[list[tuple[int, int]]]
    counts: list[tuple[dict[str, str], int]]
    cfg: GenerationConfig
    seed: int
    columns: dict[str, str]

    def description(self) -> dict:
        """What progress.json and the summary both record of the set's arguments."""
        return {
            "sampling": asdict(self.cfg),
            "seed": self.seed,
            "n_chunks": len(self.plan),
            "code_columns": self.columns,
            "fingerprint": self.fingerprint,
        }


def start_or_resume(target: SetPlan, restored: bool) -> dict:
    """Load progress.json if it describes this very run; trust chunk files over it (they are atomic).

    restored: out_dir is partial work the artifact store kept from a killed build. If that was made with
    other arguments (a secret noise draw gives another histogram) it is discarded rather than refused.
    """
    out_dir, fingerprint, plan = target.out_dir, target.fingerprint, target.plan
    for leftover in out_dir.glob(".*.tmp-*"):
        leftover.unlink()  # a chunk or progress file a killed run was writing (other shards wait for this check)
    path = out_dir / PROGRESS_FILE
    other_run = None
    if path.exists() and (old := _recorded_fingerprint(path)) != fingerprint:
        other_run = (
            f"{out_dir} holds a synthetic set made with different arguments (fingerprint {old} != {fingerprint})"
        )
    for index in range(len(plan)):
        chunk = chunk_path(out_dir, index)
        if not other_run and chunk.exists() and _recorded_fingerprint(chunk) != fingerprint:
            other_run = f"{chunk} belongs to a different run (or is unreadable)"
    if other_run and not restored:
        raise ValueError(f"{other_run}; use a fresh out_dir or delete that one.")
    if other_run:
        warnings.warn(
            f"{other_run}: discarding this partial work of a killed build and generating from the start", stacklevel=3
        )
        for chunk in out_dir.glob("chunk-*.parquet"):
            chunk.unlink()
    done = chunks_present(out_dir, len(plan))
    state = {
        **target.description(),
        "complete": False,
        "chunk_plan": plan,
        "code_counts": [{"codes": codes, "count": n} for codes, n in target.counts],
        "chunks_done": done,
    }
    write_json_atomic(path, state)
    return state


def _recorded_fingerprint(path: Path) -> str | None:
    """The fingerprint a progress file or chunk records; None when it cannot be read (damaged)."""
    try:
        record = json.loads(path.read_text()) if path.name == PROGRESS_FILE else read_chunk_metadata(path)
        return record.get("fingerprint")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # pyarrow's errors are ValueErrors
        return None


def summarise(target: SetPlan) -> dict:
    """Manifest-ready totals, read back from the chunk files (so resumed runs count every chunk once)."""
    per_code = [
        {"codes": codes, "requested": n, "produced": 0, "attempts": 0, "dropped_empty": 0, "new_tokens": 0}
        for codes, n in target.counts
    ]
    generation_time = 0.0
    for index in range(len(target.plan)):
        meta = read_chunk_metadata(chunk_path(target.out_dir, index))
        generation_time += meta["wall_time_s"]
        for stat in meta["stats"]:
            row = per_code[stat["code_index"]]
            for key in ("produced", "attempts", "dropped_empty", "new_tokens"):
                row[key] += stat[key]
    totals = {
        key: sum(row[key] for row in per_code)
        for key in ("requested", "produced", "attempts", "dropped_empty", "new_tokens")
    }
    return {
        "n_requested": totals["requested"],
        "n_produced": totals["produced"],
        "attempts": totals["attempts"],
        "dropped_empty": totals["dropped_empty"],
        "new_tokens": totals["new_tokens"],
        "per_code": per_code,
        **target.description(),
        "generation_time_s": generation_time,
    }


def iter_synthetic_chunks(out_dir: str | os.PathLike) -> Iterator[pd.DataFrame]:
    """Yield a finished synthetic set chunk by chunk (flat memory for large sets)."""
    out_dir = Path(out_dir)
    path = out_dir / PROGRESS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {out_dir} is not a synthetic set; run generate_synthetic first.")
    state = json.loads(path.read_text())
    missing = state["n_chunks"] - len(chunks_present(out_dir, state["n_chunks"]))
    if missing:
        raise ValueError(
            f"{out_dir} is incomplete ({missing} of {state['n_chunks']} chunks missing); re-run "
            f"generate_synthetic with the same arguments to finish it."
        )
    for index in range(state["n_chunks"]):
        yield pd.read_parquet(chunk_path(out_dir, index))


def load_synthetic(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The whole synthetic set: `text` plus label columns; `.attrs['code_columns']` maps column -> display name."""
    frame = pd.concat(list(iter_synthetic_chunks(out_dir)), ignore_index=True)
    frame.attrs["code_columns"] = json.loads((Path(out_dir) / PROGRESS_FILE).read_text())["code_columns"]
    return frame
