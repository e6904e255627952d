"""A synthetic set's chunks: the plan (which codes, how many samples, in which chunk: a pure function of the counts),
each chunk's own seed, and sampling one chunk from the teacher until every code in it has its samples
(`distildp.distill.generate` writes them to disk)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from distildp.lm.sampling import GenerationConfig, n_positions, sample_batch

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


# ----------------------------------------------------------------------------------------------
# One chunk: batches of prompts until every code has its samples


def generate_chunk(
    model,
    tokenizer,
    prompts: list[list[int]],
    plan: list[tuple[int, int]],
    cfg: GenerationConfig,
    seed: int,
    eos_id: int,
    bar,
) -> tuple[list[tuple[int, str]], list[dict]]:
    """Generate exactly the planned samples of one chunk, retrying empties. Returns rows and per-code stats."""
    length_slack = n_positions(model) - cfg.max_length
    need = {code: n for code, n in plan}
    budget = {code: math.ceil(cfg.max_attempts_factor * n) for code, n in plan}
    stats = {
        code: {"code_index": code, "requested": n, "produced": 0, "attempts": 0, "dropped_empty": 0, "new_tokens": 0}
        for code, n in plan
    }
    texts: dict[int, list[str]] = {code: [] for code, _ in plan}
    with torch.random.fork_rng(devices=cuda_devices(model)):
        torch.manual_seed(seed)
        while any(need.values()):
            slots = next_batch(plan, need, budget, prompts, cfg.batch_size, length_slack, stats)
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


def next_batch(plan, need: dict, budget: dict, prompts, batch_size: int, length_slack: int, stats) -> list[int]:
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


def cuda_devices(model: torch.nn.Module) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []
