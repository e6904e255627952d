"""Stage 2 wired through the store: the control-code histogram released (DP, exact at epsilon = inf, or uniform) and
the synthetic set sampled from the DP teacher with those counts (post-processing of both)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from distildp.core import distributed
from distildp.core.manifests import Artifact
from distildp.distill.generate import generate_synthetic
from distildp.dp import histogram
from distildp.dp.calibration import ComposedCalibration
from distildp.dp.config import RANDOMNESS
from distildp.lm.training import secret_seed
from distildp.pipeline.context import StageContext
from distildp.pipeline.privacy_plan import release_noise


def synthetic(ctx: StageContext, teacher: Artifact, seed: int, plan: ComposedCalibration | None = None) -> Artifact:
    """Sample the synthetic corpus from `teacher`; per-code counts from the histogram, released at the noise `plan`
    gives its 'histogram' part (exactly, or uniform, where it has none: Settings.histogram)."""
    s = ctx.settings
    histogram_noise = release_noise(plan, "histogram")
    mode = histogram_mode(ctx, histogram_noise)
    config = {
        "size": synthetic_count(ctx),
        "histogram": mode,
        "histogram_noise": histogram_noise,
        "generation": asdict(s.generation),
        "data": ctx.data_config,
        **ctx.randomness_key(mode == "dp"),
    }

    def build(out: Path) -> dict | None:
        # one DP histogram for all processes (each drawing its own would release several), and one folder:
        # every process samples its shard of the chunks into rank 0's build directory
        hist, record = distributed.run_on_main(lambda: release_histogram(ctx, seed, histogram_noise))
        data_dir = distributed.broadcast(out / "data")
        names = list(ctx.corpus.code_columns.values())
        code_counts = [(dict(zip(names, key)), n) for key, n in hist.items() if n > 0]
        model, tok = ctx.load_model(teacher.path)
        result = generate_synthetic(
            model,
            tok,
            code_counts,
            data_dir,
            s.generation,
            seed=seed,
            progress=ctx.progress,
            code_columns=ctx.corpus.code_columns,
            sharded=ctx.data_parallel,
        )
        if not distributed.is_main():
            return None  # rank 0 evaluates and records the set
        # the test perplexity of what the synthetic text is drawn from (before top-k / top-p): the teacher
        # with codes drawn from the released histogram, scored like a student (gate 2 of the README)
        metrics = {"n_samples": result.n_samples, "teacher_marginal_ppl": ctx.marginal_ppl(model, tok, hist)}
        extra = {"histogram": {"|".join(k): n for k, n in hist.items()}, "generation": result.summary}
        return {"privacy": record, "metrics": metrics, "extra": {**extra, "device": str(ctx.device)}}

    inputs = {"teacher": teacher}
    return ctx.store.build("synthetic", config, build, inputs=inputs, seed=seed, collective=ctx.data_parallel)


def synthetic_count(ctx: StageContext) -> int:
    """How many synthetic documents to sample: synthetic_size, else synthetic_factor x the private records."""
    s = ctx.settings
    return s.synthetic_size or round(s.synthetic_factor * len(ctx.corpus.texts("train")))


def histogram_mode(ctx: StageContext, histogram_noise: float | None) -> str:
    """The histogram release actually used: 'dp' needs a noise multiplier (at epsilon = inf there is none,
    and the exact counts are released)."""
    s = ctx.settings
    return s.histogram if histogram_noise is not None or s.histogram != "dp" else "exact"


def release_histogram(ctx: StageContext, seed: int, histogram_noise: float | None) -> tuple[dict, dict]:
    """(code tuple -> number of synthetic documents, privacy record) as Settings.histogram says."""
    size, mode = synthetic_count(ctx), histogram_mode(ctx, histogram_noise)
    keys, key_note = ctx.code_keys()
    counts = ctx.train_code_counts
    if mode == "dp":
        secret = ctx.settings.dp_randomness == "secret"
        noise_seed = np.random.default_rng(secret_seed()) if secret else seed
        hist, record = histogram.dp_histogram(counts, size, histogram_noise, seed=noise_seed, keys=keys)
        record["randomness"] = RANDOMNESS[ctx.settings.dp_randomness]
    elif mode == "exact":
        hist, record = histogram.exact_histogram(counts, size, keys=keys)
    else:
        hist, record = histogram.uniform_histogram(keys, size)
    record.setdefault("notes", []).extend(key_note)
    return hist, record
