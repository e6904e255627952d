"""Stage 2 of DistilDP: a synthetic corpus sampled from a teacher prompted with control codes, on disk.

Generation only reads the (DP) teacher, so it is post-processing and costs no privacy. The number of
samples per control code comes from elsewhere (a DP histogram, `distildp.dp.histogram.dp_histogram`) and
arrives here as `code_counts`.

The teacher was trained on [eos] + tok(prefix) + tok(text) + [eos]; we prompt it with
[eos] + tok(prefix), sample a continuation (`distildp.lm.sampling`), and keep the text up to its first [eos].

On disk the synthetic set is a folder of parquet chunks plus `progress.json` (`distildp.distill.synthetic_store`):
- the chunk plan (which codes, how many samples, in which chunk) is a pure function of the inputs;
- every chunk has its own seed, derived from (seed, chunk index), and is written atomically, so a
  killed run, re-run with the same arguments, generates only the missing chunks and ends with exactly
  the data an uninterrupted run gives. Only one chunk is ever held in memory;
- the folder is marked resumable for the artifact store (`distildp.core.artifacts.mark_resumable`), so inside a
  store build the chunks of a killed build survive the store's cleanup and its retry resumes from them;
- N processes of a data-parallel run (`sharded=True`) fill one folder together: each generates the chunks whose
  index % N is its rank, with the same per-chunk seeds, so they write exactly the set one process writes. Rank 0
  alone checks the folder and writes `progress.json`; what is done is read off the chunk files.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from distildp.core import distributed
from distildp.core.artifacts import mark_resumable, restored_by_store
from distildp.core.manifests import write_json_atomic
from distildp.data.corpus import control_prefix
from distildp.distill.chunks import chunk_seed, generate_chunk, plan_chunks
from distildp.distill.synthetic_store import (
    PROGRESS_FILE,
    SetPlan,
    chunk_path,
    chunks_present,
    load_synthetic,
    start_or_resume,
    summarise,
    write_chunk,
)
from distildp.lm.sampling import GenerationConfig, n_positions

# Set by the pipeline on a teacher before save_pretrained (it lands in config.json): the ordered list of
# control-code field names the teacher was trained with, [] for a teacher trained on plain text.
CONFIG_CODES_ATTR = "distildp_control_codes"


@dataclass
class SyntheticSet:
    """A finished synthetic corpus on disk. `code_columns` maps label column -> display name."""

    out_dir: Path
    chunk_files: list[Path]
    n_samples: int
    code_columns: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)

    def to_pandas(self) -> pd.DataFrame:
        return load_synthetic(self.out_dir)


# ----------------------------------------------------------------------------------------------
# Inputs


def column_name(display_name: str) -> str:
    """'Business Category' -> 'business_category' (default label column for a display name)."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", display_name).strip("_").lower()


def _validate_code_counts(code_counts: Sequence[tuple[Mapping[str, str], int]]) -> list[tuple[dict[str, str], int]]:
    cleaned: list[tuple[dict[str, str], int]] = []
    seen: set[tuple] = set()
    for i, item in enumerate(code_counts):
        codes, count = item
        try:
            count = operator.index(count)
        except TypeError:
            raise ValueError(
                f"code_counts[{i}] has count {count!r}: counts must be integers; round the DP histogram "
                f"first (e.g. max(0, round(c)))."
            ) from None
        if count < 0:
            raise ValueError(
                f"code_counts[{i}] ({dict(codes)}) has a negative count {count}: clip DP histogram counts "
                f"at 0 before generating."
            )
        codes = {str(k): str(v) for k, v in dict(codes).items()}
        if not codes:
            raise ValueError(
                f"code_counts[{i}] has no control codes; every entry needs e.g. {{'Review Stars': '5.0'}}."
            )
        key = tuple(codes.items())
        if key in seen:
            raise ValueError(f"code_counts lists {codes} twice; merge the counts into one entry.")
        seen.add(key)
        cleaned.append((codes, count))
    if not cleaned or sum(c for _, c in cleaned) == 0:
        raise ValueError("code_counts asks for 0 samples in total; request at least one sample.")
    fields = [list(codes) for codes, _ in cleaned]
    if any(f != fields[0] for f in fields):
        raise ValueError(
            f"all control codes must have the same fields in the same order; got {fields[0]} and "
            f"{next(f for f in fields if f != fields[0])}."
        )
    return cleaned


def _check_teacher_codes(
    model: torch.nn.Module,
    fields: list[str],
    code_counts: list[tuple[dict[str, str], int]],
    known_codes: Collection[str] | Mapping[str, Collection[str]] | None,
    trained_with_codes: bool | None,
) -> None:
    """Refuse prompts the teacher never saw: a plain-text teacher, or unknown fields or values."""
    config_codes = getattr(getattr(model, "config", None), CONFIG_CODES_ATTR, None)
    if trained_with_codes is None and config_codes is not None:
        trained_with_codes = len(config_codes) > 0
    if trained_with_codes is False:
        raise ValueError(
            "this teacher was trained without control codes (plain text), so prompting it with codes "
            "samples from a distribution it never learned; train the teacher on code-prefixed documents "
            "(teacher_cc) and generate from that one."
        )
    if known_codes is None:
        known_codes = config_codes
    if known_codes is None:
        return
    known_fields = list(known_codes)
    if fields != known_fields:
        raise ValueError(
            f"unknown control codes: the prompts use fields {fields} but the teacher was trained with "
            f"{known_fields} (same names, same order); build code_counts from the teacher's training codes."
        )
    if isinstance(known_codes, Mapping):
        for codes, _ in code_counts:
            for name, value in codes.items():
                allowed = {str(v) for v in known_codes[name]}
                if value not in allowed:
                    raise ValueError(
                        f"unknown control code {name}: {value!r}; the teacher was trained with values "
                        f"{sorted(allowed)}."
                    )


# ----------------------------------------------------------------------------------------------
def _fingerprint(
    model: torch.nn.Module,
    tokenizer: Any,
    code_counts: list,
    cfg: GenerationConfig,
    seed: int,
    code_columns: dict[str, str],
) -> str:
    """What must match for an existing folder to be resumed. Weights are not hashed (too slow for large
    teachers): the artifact store already keys the folder by the teacher's hash."""
    config = getattr(model, "config", None)
    model_config = config.to_dict() if hasattr(config, "to_dict") else repr(config)
    if isinstance(model_config, dict):
        model_config.pop("_name_or_path", None)  # where the teacher was loaded from: not what it samples
    description = {
        "code_counts": code_counts,
        "cfg": asdict(cfg),
        "seed": seed,
        "code_columns": code_columns,
        "model_config": model_config,
        "tokenizer": [type(tokenizer).__name__, len(tokenizer), tokenizer.eos_token_id],
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# The stage


def generate_synthetic(
    model: torch.nn.Module,
    tokenizer: Any,
    code_counts: Sequence[tuple[Mapping[str, str], int]],
    out_dir: str | os.PathLike,
    cfg: GenerationConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    code_columns: Mapping[str, str] | None = None,
    known_codes: Collection[str] | Mapping[str, Collection[str]] | None = None,
    trained_with_codes: bool | None = None,
    sharded: bool = False,
) -> SyntheticSet:
    """Sample `count` texts for every (codes, count) in `code_counts` into parquet chunks in `out_dir`.

    code_columns: label column -> display name (like `Corpus.code_columns`) naming the output columns;
        by default each display name is turned into a snake_case column.
    known_codes: the teacher's training fields (ordered), or a mapping field -> allowed values; unknown
        codes raise. Defaults to `model.config.distildp_control_codes` when the pipeline has set it.
    trained_with_codes: False (or `model.config.distildp_control_codes == []`) refuses a plain-text teacher.
    sharded: this is one of the processes of a data-parallel run (`distildp.core.distributed.init`), all called with
        the same arguments and out_dir: each generates its share of the chunks, and all return once every chunk
        is written.
    Re-running with the same arguments resumes: completed chunks are kept, missing ones generated. An
    out_dir made with other arguments is refused, unless it is partial work the artifact store kept from
    a killed build (then it is discarded and generation starts over).
    """
    started = time.perf_counter()
    cfg = cfg or GenerationConfig()
    counts = _validate_code_counts(code_counts)
    fields = list(counts[0][0])
    _check_teacher_codes(model, fields, counts, known_codes, trained_with_codes)
    columns = _resolve_columns(fields, code_columns)
    prompts = _prompts(tokenizer, counts)
    _check_lengths(model, prompts, counts, cfg)

    rank, world = _shard(sharded)
    out_dir = Path(out_dir)
    fingerprint = _fingerprint(model, tokenizer, counts, cfg, seed, columns)
    plan = plan_chunks([n for _, n in counts], cfg.chunk_size)
    target = SetPlan(out_dir, fingerprint, plan, counts, cfg, seed, columns)
    state = _open_folder(target, rank, sharded)
    mine = [index for index in range(len(plan)) if index % world == rank]
    desc = "generate" if world == 1 else f"generate (rank {rank} of {world})"
    was_training = model.training
    model.eval()
    try:
        generated_now = _write_chunks(model, tokenizer, prompts, target, mine, state, desc, progress)
    finally:
        model.train(was_training)

    if sharded:
        distributed.barrier()  # every chunk is written
        generated_now = int(distributed.sum_over_ranks([generated_now])[0])
    summary = summarise(target)
    summary.update(
        wall_time_s=time.perf_counter() - started,
        chunks_generated_this_call=generated_now,
        resumed=generated_now < len(plan),
        world_size=world,
    )
    if state is not None:
        state.update(complete=True, chunks_done=list(range(len(plan))), summary=summary)
        write_json_atomic(out_dir / PROGRESS_FILE, state)
    if sharded:
        distributed.barrier()  # progress.json says complete before any process returns
    chunk_files = [chunk_path(out_dir, i) for i in range(len(plan))]
    return SyntheticSet(out_dir, chunk_files, sum(n for _, n in counts), columns, summary)


def _prompts(tokenizer, counts: list[tuple[dict[str, str], int]]) -> list[list[int]]:
    """[eos] + tok(control prefix) for every code: what the teacher is prompted with."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            "the tokenizer has no eos_token; set tokenizer.eos_token = '<|endoftext|>' (GPT-2 convention)."
        )
    return [[eos_id] + tokenizer(control_prefix(codes), add_special_tokens=False)["input_ids"] for codes, _ in counts]


def _open_folder(target: SetPlan, rank: int, sharded: bool) -> dict | None:
    """Rank 0 checks the folder (resuming it, or discarding another run's work) and returns its progress state;
    the other processes wait for that and get None."""
    state = None
    if rank == 0:
        target.out_dir.mkdir(parents=True, exist_ok=True)
        restored = restored_by_store(target.out_dir)
        mark_resumable(target.out_dir)  # a store build killed midway keeps the chunks for its retry
        state = start_or_resume(target, restored)
    if sharded:
        distributed.barrier()  # the folder is checked before anyone writes to it
    return state


def _write_chunks(model, tokenizer, prompts, target: SetPlan, mine: list[int], state, desc, progress) -> int:
    """Sample and write every chunk of `mine` not yet on disk; returns how many were written now."""
    out_dir, plan, counts, columns, cfg, seed = (
        target.out_dir,
        target.plan,
        target.counts,
        target.columns,
        target.cfg,
        target.seed,
    )
    done = set(chunks_present(out_dir, len(plan)))
    generated_now = 0
    with tqdm(
        total=sum(n for i in mine for _, n in plan[i]),
        initial=sum(n for i in done.intersection(mine) for _, n in plan[i]),
        unit="sample",
        desc=desc,
        disable=not progress,
    ) as bar:
        for index in mine:
            if index in done:
                continue
            chunk_started = time.perf_counter()
            rows, stats = generate_chunk(
                model, tokenizer, prompts, plan[index], cfg, chunk_seed(seed, index), tokenizer.eos_token_id, bar
            )
            frame = pd.DataFrame(
                {
                    "text": [text for _, text in rows],
                    **{column: [counts[code][0][name] for code, _ in rows] for column, name in columns.items()},
                }
            )
            meta = {"fingerprint": target.fingerprint, "chunk_index": index, "seed": chunk_seed(seed, index)}
            wall_time_s = time.perf_counter() - chunk_started
            write_chunk(chunk_path(out_dir, index), frame, {**meta, "stats": stats, "wall_time_s": wall_time_s})
            generated_now += 1
            done.add(index)
            if state is not None:  # rank 0 keeps progress.json; the chunk files are what counts
                state["chunks_done"] = chunks_present(out_dir, len(plan))
                write_json_atomic(out_dir / PROGRESS_FILE, state)
    return generated_now


def _shard(sharded: bool) -> tuple[int, int]:
    """(rank, world size) of this process's share of the chunks; (0, 1) unsharded."""
    if not sharded:
        return 0, 1
    if not distributed.is_initialized():
        raise ValueError(
            "sharded=True needs the process group of a data-parallel run: launch the processes with torchrun and "
            "call distildp.core.distributed.init(world_size) first."
        )
    return distributed.rank(), distributed.world_size()


def _resolve_columns(fields: list[str], code_columns: Mapping[str, str] | None) -> dict[str, str]:
    if code_columns is None:
        return {column_name(name): name for name in fields}
    columns = dict(code_columns)
    if sorted(columns.values()) != sorted(fields):
        raise ValueError(
            f"code_columns maps to display names {list(columns.values())} but the control codes have fields "
            f"{fields}; pass the corpus's code_columns (label column -> display name)."
        )
    if "text" in columns:
        raise ValueError("a label column cannot be called 'text'; rename it in code_columns.")
    return {column: columns[column] for column in columns}


def _check_lengths(model, prompts: list[list[int]], counts, cfg: GenerationConfig) -> None:
    context = n_positions(model)
    if cfg.max_length > context:
        raise ValueError(
            f"GenerationConfig.max_length={cfg.max_length} exceeds the teacher's n_positions={context}; "
            f"lower max_length."
        )
    for prompt, (codes, _) in zip(prompts, counts):
        if len(prompt) >= cfg.max_length:
            raise ValueError(
                f"the prompt for {codes} is {len(prompt)} tokens, leaving no room under max_length="
                f"{cfg.max_length}; raise max_length or shorten the control codes."
            )
