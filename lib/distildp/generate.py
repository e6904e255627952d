"""Stage 2 of DistilDP: sample a synthetic corpus from a teacher prompted with control codes.

Generation only reads the (DP) teacher, so it is post-processing and costs no privacy. The number of
samples per control code comes from elsewhere (a DP histogram, `distildp.privacy.dp_histogram`) and
arrives here as `code_counts`.

The teacher was trained on [eos] + tok(prefix) + tok(text) + [eos]; we prompt it with
[eos] + tok(prefix), sample a continuation, and keep the text up to its first [eos].

On disk the synthetic set is a folder of parquet chunks plus `progress.json`:
- the chunk plan (which codes, how many samples, in which chunk) is a pure function of the inputs;
- every chunk has its own seed, derived from (seed, chunk index), and is written atomically, so a
  killed run, re-run with the same arguments, generates only the missing chunks and ends with exactly
  the data an uninterrupted run gives. Only one chunk is ever held in memory.
"""
from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from distildp.data import control_prefix

PROGRESS_FILE = "progress.json"
CHUNK_METADATA_KEY = b"distildp_chunk"
# Set by the lead on a teacher before save_pretrained (it lands in config.json): the ordered list of
# control-code field names the teacher was trained with, [] for a teacher trained on plain text.
CONFIG_CODES_ATTR = "distildp_control_codes"


@dataclass
class GenerationConfig:
    """Sampling settings (the paper's defaults) and how the work is cut up."""

    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    no_repeat_ngram_size: int = 2
    max_length: int = 128  # tokens per sample INCLUDING the [eos] + prefix prompt, as in the paper
    batch_size: int = 32  # tiny teacher, 1 CPU thread: batch 16, 32 and 64 sample ~1.7-2k new tokens/s alike
    chunk_size: int = 512  # samples per parquet file: the unit of resumption and of memory
    max_attempts_factor: float = 4.0  # give up on a code after this many attempts per requested sample

    def __post_init__(self) -> None:
        for name in ("top_k", "max_length", "batch_size", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GenerationConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature <= 0:
            raise ValueError(f"GenerationConfig.temperature must be > 0, got {self.temperature}.")
        if self.no_repeat_ngram_size < 0:
            raise ValueError("GenerationConfig.no_repeat_ngram_size must be >= 0 (0 turns it off).")
        if self.max_attempts_factor < 1:
            raise ValueError(
                f"GenerationConfig.max_attempts_factor must be >= 1 (one attempt per sample at least), "
                f"got {self.max_attempts_factor}."
            )


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
            raise ValueError(f"code_counts[{i}] has no control codes; every entry needs e.g. {{'Review Stars': '5.0'}}.")
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
# The chunk plan: a pure function of code_counts and chunk_size


def plan_chunks(counts: Sequence[int], chunk_size: int) -> list[list[tuple[int, int]]]:
    """Lay the samples out code after code and cut every `chunk_size`: chunk -> [(code index, n)]."""
    chunks: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    room = chunk_size
    for code_index, count in enumerate(counts):
        while count > 0:
            take = min(count, room)
            current.append((code_index, take))
            count -= take
            room -= take
            if room == 0:
                chunks.append(current)
                current, room = [], chunk_size
    if current:
        chunks.append(current)
    return chunks


def chunk_seed(seed: int, chunk_index: int) -> int:
    """An independent, reproducible seed per chunk (numpy's SeedSequence mixes the pair well)."""
    return int(np.random.SeedSequence([seed, chunk_index]).generate_state(1)[0])


def _chunk_path(out_dir: Path, chunk_index: int) -> Path:
    return out_dir / f"chunk-{chunk_index:05d}.parquet"


def _fingerprint(model: torch.nn.Module, tokenizer: Any, code_counts: list, cfg: GenerationConfig,
                 seed: int, code_columns: dict[str, str]) -> str:
    """What must match for an existing folder to be resumed. Weights are not hashed (too slow for large
    teachers): the artifact store already keys the folder by the teacher's hash."""
    config = getattr(model, "config", None)
    description = {
        "code_counts": code_counts,
        "cfg": asdict(cfg),
        "seed": seed,
        "code_columns": code_columns,
        "model_config": config.to_dict() if hasattr(config, "to_dict") else repr(config),
        "tokenizer": [type(tokenizer).__name__, len(tokenizer), tokenizer.eos_token_id],
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Sampling one batch


class TopKTopPSampler(LogitsProcessor):
    """Draws the next token from the temperature, top-k, then top-p (nucleus) distribution, looking only at
    the k best candidates, and returns scores that make greedy search pick that token.

    It is the distribution of transformers' temperature, TopK and TopP warpers followed by multinomial sampling
    (tests/test_generate.py compares them), but those sort and sample over the whole vocabulary at every step:
    with a tiny teacher on a CPU that was ~40% of the sampling time. Tokens an earlier processor banned
    (no_repeat_ngram_size) arrive as -inf and are never drawn. Draws use torch's global generator, as
    `generate(do_sample=True)` does, so a seed fixes the samples.
    """

    def __init__(self, top_k: int, top_p: float, temperature: float):
        self.top_k, self.top_p, self.temperature = top_k, top_p, temperature

    def distribution(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(candidate token ids, their probabilities), both (batch, k), most likely first."""
        k = min(self.top_k, scores.shape[-1])
        values, candidates = torch.topk(scores.float() / self.temperature, k, dim=-1)
        probs = values.softmax(-1)
        if self.top_p < 1.0:
            # as transformers: drop the least likely tokens while their cumulative mass is <= 1 - top_p
            # (the mass of a token and all less likely ones), always keeping the most likely token
            mass_up_to = probs.flip(-1).cumsum(-1).flip(-1)
            drop = mass_up_to <= 1 - self.top_p
            drop[..., 0] = False
            probs = probs.masked_fill(drop, 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        return candidates, probs

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        candidates, probs = self.distribution(scores)
        chosen = candidates.gather(-1, torch.multinomial(probs, 1))
        return torch.full_like(scores, -math.inf).scatter_(-1, chosen, 0.0)


@torch.no_grad()
def sample_batch(model: torch.nn.Module, prompts: list[list[int]], cfg: GenerationConfig,
                 eos_id: int) -> list[list[int]]:
    """Sample one continuation per prompt, cut at (and excluding) its first [eos].

    Prompts are LEFT-padded with [eos] (masked out) so every row's next token sits in the last column and
    the KV cache serves the whole batch; generate derives position ids from the attention mask.
    Each row stops at max_length tokens including its own prompt: we generate enough for the shortest
    prompt and trim the rest, which equals per-row generation because sampling never looks ahead.
    The padded batch must fit the teacher's positions: longest prompt + that budget <= n_positions.
    """
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), eos_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt):] = 1
    max_new_tokens = cfg.max_length - min(len(p) for p in prompts)
    if width + max_new_tokens > _n_positions(model):
        raise ValueError(
            f"prompts of {min(len(p) for p in prompts)} to {width} tokens with max_length={cfg.max_length} "
            f"overrun the teacher's {_n_positions(model)} positions once padded; batch prompts of closer lengths."
        )
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        do_sample=False,  # the sampler draws the token; greedy search then takes it
        logits_processor=LogitsProcessorList([TopKTopPSampler(cfg.top_k, cfg.top_p, cfg.temperature)]),
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,  # applied before the sampler
        max_new_tokens=max_new_tokens,
        pad_token_id=eos_id,
        eos_token_id=eos_id,
    )
    continuations = []
    for row, prompt in enumerate(prompts):
        new = output[row, width:width + cfg.max_length - len(prompt)].tolist()
        continuations.append(new[: new.index(eos_id)] if eos_id in new else new)
    return continuations


def _generate_chunk(model, tokenizer, prompts: list[list[int]], plan: list[tuple[int, int]],
                    cfg: GenerationConfig, seed: int, eos_id: int, bar) -> tuple[list[tuple[int, str]], list[dict]]:
    """Generate exactly the planned samples of one chunk, retrying empties. Returns rows and per-code stats."""
    length_slack = _n_positions(model) - cfg.max_length
    need = {code: n for code, n in plan}
    budget = {code: math.ceil(cfg.max_attempts_factor * n) for code, n in plan}
    stats = {code: {"code_index": code, "requested": n, "produced": 0, "attempts": 0,
                    "dropped_empty": 0, "new_tokens": 0} for code, n in plan}
    texts: dict[int, list[str]] = {code: [] for code, _ in plan}
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        torch.manual_seed(seed)
        while any(need.values()):
            slots = _next_batch(plan, need, budget, prompts, cfg.batch_size, length_slack, stats)
            for code, ids in zip(slots, sample_batch(model, [prompts[c] for c in slots], cfg, eos_id)):
                stats[code]["attempts"] += 1
                budget[code] -= 1
                # the [eos] that ended the sample was generated too
                stats[code]["new_tokens"] += len(ids) + (len(ids) + len(prompts[code]) < cfg.max_length)
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                if not text:
                    stats[code]["dropped_empty"] += 1
                    continue
                texts[code].append(text)
                stats[code]["produced"] += 1
                need[code] -= 1
                bar.update(1)
    rows = [(code, text) for code, _ in plan for text in texts[code]]
    return rows, [stats[code] for code, _ in plan]


def _next_batch(plan, need: dict, budget: dict, prompts, batch_size: int, length_slack: int, stats) -> list[int]:
    """The codes of the next batch: those still short of their count, in plan order, while the padded
    batch fits the teacher's positions (prompt lengths within `length_slack`; see sample_batch)."""
    slots: list[int] = []
    for code, _ in plan:
        if need[code] and budget[code] == 0:
            raise RuntimeError(
                f"control code #{code} gave {stats[code]['dropped_empty']} empty outputs in "
                f"{stats[code]['attempts']} attempts and still lacks {need[code]} samples; the teacher "
                f"may be undertrained. Raise GenerationConfig.max_attempts_factor or train the teacher longer."
            )
        take = min(need[code], budget[code], batch_size - len(slots))
        lengths = {len(prompts[c]) for c in slots} | {len(prompts[code])}
        if take and max(lengths) - min(lengths) <= length_slack:
            slots += [code] * take
    return slots


def _n_positions(model: torch.nn.Module) -> int:
    """The teacher's context length (position embeddings); unbounded when the config does not say."""
    config = getattr(model, "config", None)
    n = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return int(n) if n else 2**31


def _cuda_devices(model: torch.nn.Module) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []


# ----------------------------------------------------------------------------------------------
# Files


def _atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _write_chunk(path: Path, frame: pd.DataFrame, metadata: dict) -> None:
    """Write a chunk under a temporary name, then rename: a chunk file either is complete or absent."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           CHUNK_METADATA_KEY: json.dumps(metadata).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_chunk_metadata(path: Path) -> dict:
    return json.loads(pq.read_schema(path).metadata[CHUNK_METADATA_KEY])


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
) -> SyntheticSet:
    """Sample `count` texts for every (codes, count) in `code_counts` into parquet chunks in `out_dir`.

    code_columns: label column -> display name (like `Corpus.code_columns`) naming the output columns;
        by default each display name is turned into a snake_case column.
    known_codes: the teacher's training fields (ordered), or a mapping field -> allowed values; unknown
        codes raise. Defaults to `model.config.distildp_control_codes` when the lead has set it.
    trained_with_codes: False (or `model.config.distildp_control_codes == []`) refuses a plain-text teacher.
    Re-running with the same arguments resumes: completed chunks are kept, missing ones generated.
    """
    started = time.perf_counter()
    cfg = cfg or GenerationConfig()
    counts = _validate_code_counts(code_counts)
    fields = list(counts[0][0])
    _check_teacher_codes(model, fields, counts, known_codes, trained_with_codes)
    columns = _resolve_columns(fields, code_columns)

    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token = '<|endoftext|>' (GPT-2 convention).")
    prompts = [[eos_id] + tokenizer(control_prefix(codes), add_special_tokens=False)["input_ids"]
               for codes, _ in counts]
    _check_lengths(model, prompts, counts, cfg)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(model, tokenizer, counts, cfg, seed, columns)
    plan = plan_chunks([n for _, n in counts], cfg.chunk_size)
    state = _start_or_resume(out_dir, fingerprint, plan, counts, cfg, seed, columns)

    done = set(state["chunks_done"])
    total = sum(n for _, n in counts)
    was_training = model.training
    model.eval()
    generated_now = 0
    try:
        with tqdm(total=total, initial=sum(n for i in done for _, n in plan[i]), unit="sample",
                  desc="generate", disable=not progress) as bar:
            for index, chunk_plan in enumerate(plan):
                if index in done:
                    continue
                chunk_started = time.perf_counter()
                rows, stats = _generate_chunk(model, tokenizer, prompts, chunk_plan, cfg,
                                              chunk_seed(seed, index), eos_id, bar)
                frame = pd.DataFrame({
                    "text": [text for _, text in rows],
                    **{column: [counts[code][0][name] for code, _ in rows] for column, name in columns.items()},
                })
                _write_chunk(_chunk_path(out_dir, index), frame, {
                    "fingerprint": fingerprint, "chunk_index": index, "seed": chunk_seed(seed, index),
                    "stats": stats, "wall_time_s": time.perf_counter() - chunk_started,
                })
                generated_now += 1
                state["chunks_done"] = sorted(done | {index})
                done.add(index)
                _atomic_write_json(out_dir / PROGRESS_FILE, state)
    finally:
        model.train(was_training)

    summary = _summarise(out_dir, plan, counts, cfg, seed, columns, fingerprint)
    summary.update(wall_time_s=time.perf_counter() - started, chunks_generated_this_call=generated_now,
                   resumed=generated_now < len(plan))
    state.update(complete=True, summary=summary)
    _atomic_write_json(out_dir / PROGRESS_FILE, state)
    return SyntheticSet(out_dir=out_dir, chunk_files=[_chunk_path(out_dir, i) for i in range(len(plan))],
                        n_samples=total, code_columns=columns, summary=summary)


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
    n_positions = _n_positions(model)
    if cfg.max_length > n_positions:
        raise ValueError(
            f"GenerationConfig.max_length={cfg.max_length} exceeds the teacher's n_positions={n_positions}; "
            f"lower max_length."
        )
    for prompt, (codes, _) in zip(prompts, counts):
        if len(prompt) >= cfg.max_length:
            raise ValueError(
                f"the prompt for {codes} is {len(prompt)} tokens, leaving no room under max_length="
                f"{cfg.max_length}; raise max_length or shorten the control codes."
            )


def _start_or_resume(out_dir: Path, fingerprint: str, plan, counts, cfg, seed, columns) -> dict:
    """Load progress.json if it describes this very run; trust chunk files over it (they are atomic)."""
    path = out_dir / PROGRESS_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{out_dir} holds a synthetic set made with different arguments (fingerprint "
                f"{old.get('fingerprint')} != {fingerprint}); use a fresh out_dir or delete that one."
            )
    done = []
    for index in range(len(plan)):
        chunk = _chunk_path(out_dir, index)
        if chunk.exists():
            if _read_chunk_metadata(chunk).get("fingerprint") != fingerprint:
                raise ValueError(f"{chunk} belongs to a different run; use a fresh out_dir or delete that one.")
            done.append(index)
    state = {
        "fingerprint": fingerprint,
        "complete": False,
        "n_chunks": len(plan),
        "chunk_plan": plan,
        "code_counts": [{"codes": codes, "count": n} for codes, n in counts],
        "code_columns": columns,
        "sampling": asdict(cfg),
        "seed": seed,
        "chunks_done": done,
    }
    _atomic_write_json(path, state)
    return state


def _summarise(out_dir: Path, plan, counts, cfg, seed, columns, fingerprint) -> dict:
    """Manifest-ready totals, read back from the chunk files (so resumed runs count every chunk once)."""
    per_code = [{"codes": codes, "requested": n, "produced": 0, "attempts": 0, "dropped_empty": 0,
                 "new_tokens": 0} for codes, n in counts]
    generation_time = 0.0
    for index in range(len(plan)):
        meta = _read_chunk_metadata(_chunk_path(out_dir, index))
        generation_time += meta["wall_time_s"]
        for stat in meta["stats"]:
            row = per_code[stat["code_index"]]
            for key in ("produced", "attempts", "dropped_empty", "new_tokens"):
                row[key] += stat[key]
    totals = {key: sum(row[key] for row in per_code) for key in ("requested", "produced", "attempts",
                                                               "dropped_empty", "new_tokens")}
    return {
        "n_requested": totals["requested"],
        "n_produced": totals["produced"],
        "attempts": totals["attempts"],
        "dropped_empty": totals["dropped_empty"],
        "new_tokens": totals["new_tokens"],
        "per_code": per_code,
        "sampling": asdict(cfg),
        "seed": seed,
        "n_chunks": len(plan),
        "code_columns": columns,
        "fingerprint": fingerprint,
        "generation_time_s": generation_time,
    }


def iter_synthetic_chunks(out_dir: str | os.PathLike) -> Iterator[pd.DataFrame]:
    """Yield a finished synthetic set chunk by chunk (flat memory for large sets)."""
    out_dir = Path(out_dir)
    path = out_dir / PROGRESS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {out_dir} is not a synthetic set; run generate_synthetic first.")
    state = json.loads(path.read_text())
    missing = [i for i in range(state["n_chunks"]) if not _chunk_path(out_dir, i).exists()]
    if missing:
        raise ValueError(
            f"{out_dir} is incomplete ({len(missing)} of {state['n_chunks']} chunks missing); re-run "
            f"generate_synthetic with the same arguments to finish it."
        )
    for index in range(state["n_chunks"]):
        yield pd.read_parquet(_chunk_path(out_dir, index))


def load_synthetic(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The whole synthetic set: `text` plus label columns; `.attrs['code_columns']` maps column -> display name."""
    frame = pd.concat(list(iter_synthetic_chunks(out_dir)), ignore_index=True)
    frame.attrs["code_columns"] = json.loads((Path(out_dir) / PROGRESS_FILE).read_text())["code_columns"]
    return frame
