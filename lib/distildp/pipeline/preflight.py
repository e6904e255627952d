"""The check before the spend: what a user's data will cost and which regime it is in, from its public models alone.

    python -m distildp.pipeline --check --dataset csv:DIR [--public csv:DIR] [--profile quick]

builds the tokenizer and the pretrained teacher and student (public data only: the first, and only, compute it
spends) and reports:

- the documents' token lengths against the models' context (what `Settings.long_documents` will do with long ones);
- gate 1 (the pretrained teacher / student perplexity ratio on the private test text, as the results tables);
- the code-format probe: the pretrained teacher's validation perplexity with the control codes in front over
  without them. A teacher pretrained on coded public text reads codes of values it never saw at little cost; one
  that never saw the format is thrown off by them (`FORMAT_PROBE_RATIO` tells the two apart). Gate 2 itself (the DP
  teacher against the DP-SGD student) is not estimated: it compares models after DP fine-tuning at a budget, which
  the public models do not bound;
- an estimate of each later stage's time on this machine: its work in tokens (epochs x documents x mean length) at
  the seconds per token this machine's pretraining of the same model just took, times the stage's cost relative to
  pretraining (`STAGE_FACTORS`, measured on the embedded default; `calibrate` recomputes them from a store); the
  synthetic set's from one chunk of it sampled from the pretrained teacher (`sampling_probe`);
- one sentence: the method the regime map (results/regime) recommends for data like this.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distildp.core.manifests import Artifact
from distildp.data.corpus import SPLITS
from distildp.data.lengths import corpus_lengths, length_stats, token_lengths
from distildp.distill.chunks import generate_chunk, plan_chunks
from distildp.lm.evaluate import perplexity
from distildp.lm.models import encode_with_prefix, load_tokenizer
from distildp.pipeline.context import StageContext
from distildp.pipeline.public_models import pretrained, tokenizer
from distildp.pipeline.synthetic_stage import synthetic_count
from distildp.reporting.results import GATE_1_RATIO

ROOT = Path(__file__).resolve().parents[3]
REGIME_TABLE = ROOT / "results" / "regime" / "tables" / "regime.csv"

# A stage's seconds per token over its model's seconds per token in public pretraining on the same machine (median
# over a `make run` store's artifacts; evaluation included). Recompute: `calibrate(store)`; docs/performance.md.
STAGE_FACTORS = {
    "DP teacher": 0.68,
    "DP-SGD student": 0.77,
    "DPKD student": 0.99,
    "synthetic text": 0.60,
    "distilled student (hard labels)": 0.36,
    "distilled student (KD)": 0.79,
}
# At most this probe ratio, the pretrained teacher reads the code format: on the embedded default it is about 1.0
# with half the public reviews coded and about 2 with none (docs/own_data.md)
FORMAT_PROBE_RATIO = 1.25
# the stages of each method at one (epsilon, seed), in the order they are built
METHOD_STAGES = {
    "distildp": ("DP teacher", "synthetic text", "distilled student (KD)"),
    "synthetic_only": ("DP teacher", "synthetic text", "distilled student (hard labels)"),
    "dpkd": ("DP teacher", "DPKD student"),
    "dpsgd": ("DP-SGD student",),
}


@dataclass
class Work:
    """Tokens a stage processes (`tokens`) and the model whose pretraining rate prices them (`role`)."""

    stage: str
    role: str
    tokens: float


def stage_work(ctx: StageContext) -> list[Work]:
    """The tokens each later stage processes at these settings: epochs x documents x their mean length."""
    s = ctx.settings
    corpus, tok = ctx.corpus, ctx.length_tokenizer()
    n = len(corpus.texts("train"))
    teacher_view = float(np.mean(token_lengths(tok, corpus.texts("train"), corpus.prefixes("train"))))
    student_view = float(np.mean(token_lengths(tok, corpus.texts("train"))))
    n_synthetic = synthetic_count(ctx)
    return [
        Work("DP teacher", "teacher", s.teacher_train.epochs * n * teacher_view),
        Work("DP-SGD student", "student", s.student_train.epochs * n * student_view),
        Work("DPKD student", "student", s.dpkd_train.epochs * n * student_view),
        Work("synthetic text", "teacher", n_synthetic * teacher_view),
        Work("distilled student (hard labels)", "student", s.distill_train.epochs * n_synthetic * student_view),
        Work("distilled student (KD)", "student", s.distill_train.epochs * n_synthetic * student_view),
    ]


def pretraining_rates(ctx: StageContext, arts: dict[str, Artifact]) -> dict[str, float]:
    """Seconds per token of each role's pretrained artifact's build: its wall time over steps x batch x the mean
    length of the public windows (the same windows for both roles: one tokenizer, one context)."""
    public = ctx.public
    tok = load_tokenizer(tokenizer(ctx).path)
    windows = encode_with_prefix(tok, public.train_prefixes, public.train, ctx.context_length, overflow="split")
    tokens_per_step = ctx.settings.pretrain.batch_size * float(np.mean([len(w["input_ids"]) for w in windows]))
    return {role: art.manifest["wall_time_s"] / (art.metrics["steps"] * tokens_per_step) for role, art in arts.items()}


def estimates(
    ctx: StageContext,
    rates: dict[str, float],
    factors: dict[str, float] | None = None,
    seconds_per_sample: float | None = None,
) -> dict[str, float]:
    """Seconds of each later stage (one artifact) on the machine whose pretraining ran at `rates` (role -> s/token);
    the synthetic set's from `sampling_probe`'s seconds per sample where given."""
    factors = factors or STAGE_FACTORS
    seconds = {w.stage: w.tokens * rates[w.role] * factors[w.stage] for w in stage_work(ctx)}
    if seconds_per_sample is not None:
        seconds["synthetic text"] = seconds_per_sample * synthetic_count(ctx)
    return seconds


def sampling_probe(ctx: StageContext, teacher: Artifact) -> float:
    """Seconds per synthetic sample, timed on the synthetic set's first chunk as the pipeline plans it (codes in
    the training split's proportions, `generation.chunk_size` samples) drawn from the pretrained teacher. Sampling
    cost depends on more than tokens: a batch holds prompts of one length only, so the codes' count and lengths
    decide the batch sizes."""
    corpus, cfg = ctx.corpus, ctx.settings.generation
    counts = corpus.code_counts("train")
    n_synthetic = synthetic_count(ctx)
    total = sum(counts.values())
    keys = sorted(counts)
    planned = [max(1, round(counts[key] * n_synthetic / total)) for key in keys]
    plan = plan_chunks(planned, cfg.chunk_size)[0]
    model, tok = ctx.load_model(teacher.path)
    model.eval()
    eos = tok.eos_token_id
    prompts = [[eos] + tok(corpus.code_prefix(key), add_special_tokens=False)["input_ids"] for key in keys]
    started = time.perf_counter()
    with torch.no_grad(), tqdm(disable=True) as bar:
        generate_chunk(model, tok, prompts, plan, cfg, seed=0, eos_id=eos, bar=bar)
    return (time.perf_counter() - started) / sum(n for _, n in plan)


def format_probe(ctx: StageContext, teacher: Artifact) -> dict:
    """The pretrained teacher's validation perplexity with the codes as unscored context, and without."""
    corpus = ctx.corpus
    if not corpus.code_columns:
        return {"coded": math.nan, "plain": math.nan, "ratio": math.nan}
    model, tok = ctx.load_model(teacher.path)
    texts = corpus.texts("validation")
    coded = perplexity(model, tok, texts, prefixes=corpus.prefixes("validation"), per_document=True, progress=False)
    plain = perplexity(model, tok, texts, per_document=True, progress=False)
    return {"coded": coded.ppl, "plain": plain.ppl, "ratio": coded.ppl / plain.ppl}


def recommendation(gate_1: float, coded_public: bool, probe_ratio: float, has_codes: bool, n_train: int) -> str:
    """One sentence: the method the regime map recommends for data like this, with the map's nearest cell."""
    cells = _regime_cells()

    def cell(axis: str, value: str) -> str:
        row = cells.get((axis, value))
        if row is None:
            return ""
        margin = float(row["Δ distildp - best"])
        return f" (regime map, {axis} = {value}: DistilDP minus the best baseline {margin:+.2f})"

    if gate_1 > GATE_1_RATIO:
        return (
            f"Gate 1 fails ({gate_1:.2f} > {GATE_1_RATIO}): the public text does not give the teacher a head start on "
            f"this data, every method is poor and DistilDP is not expected to win{cell('public_corpus', 'prose')}; "
            "bring public text closer to the private domain (or a larger teacher) before spending the budget."
        )
    if not has_codes:
        return (
            "The private corpus has no label columns, so the teacher is prompted without codes: the regime map has "
            "no cell for that; run DP-SGD and DistilDP at one budget before a grid."
        )
    if coded_public and probe_ratio <= FORMAT_PROBE_RATIO:
        small = f"; with this few documents ({n_train}) the margin shrinks{cell('dataset_options.n_train', '1000')}"
        return (
            "DistilDP: the public text covers the domain (gate 1 passes) and taught the teacher the code format "
            f"(probe {probe_ratio:.2f} <= {FORMAT_PROBE_RATIO}){cell('epsilon', '2')}"
            + (small if n_train <= 1000 else "")
            + "."
        )
    return (
        "DP-SGD on the student: gate 1 passes but the public text "
        + ("has no codes" if not coded_public else f"did not teach the code format (probe {probe_ratio:.2f})")
        + f", and there DistilDP lost{cell('public_corpus', 'builtin') or cell('public_coded_share', '0.0')}; "
        "give the public text its labels (public_coded_share) to move toward DistilDP's regime."
    )


def _regime_cells() -> dict[tuple[str, str], dict]:
    """The committed regime map's rows by (axis, value); empty where the repository's results are not at hand."""
    if not REGIME_TABLE.exists():
        return {}
    import pandas as pd

    frame = pd.read_csv(REGIME_TABLE, dtype=str)
    return {(row["axis"], row["value"]): row for _, row in frame.iterrows()}


def check(ctx: StageContext) -> dict:
    """Build the public models and report lengths, gate 1, the format probe, stage estimates and a recommendation."""
    raw = ctx.raw_corpus
    tok = ctx.length_tokenizer()
    limit = ctx.max_length
    lengths = {split: length_stats(v, limit) for split, v in corpus_lengths(raw, tok).items()}
    public_lengths = length_stats(token_lengths(tok, ctx.public.train, ctx.public.train_prefixes), limit)
    report = {
        "dataset": ctx.settings.dataset,
        "public_corpus": ctx.settings.public_corpus,
        "documents": {split: len(raw.texts(split)) for split in SPLITS},
        "codes": list(raw.code_columns.values()),
        "public": {**ctx.public.info, "documents": len(ctx.public.train)},
        "context": ctx.context_length,
        "max_length": limit,
        "long_documents": ctx.settings.long_documents,
        "lengths": lengths,
        "public_lengths": public_lengths,
    }
    try:
        ctx.corpus  # noqa: B018 (fitted to the context as the pipeline will: refused here, before any training)
    except ValueError as err:
        report["refused"] = f"{err}. The public models are not built"
        return report
    arts = {role: pretrained(ctx, role) for role in ("teacher", "student")}
    ppl = {role: art.metrics["test_ppl"] for role, art in arts.items()}
    report["pretrained"] = {
        role: {"test_ppl": ppl[role], "seconds": arts[role].manifest["wall_time_s"]} for role in arts
    }
    report["gate_1"] = ppl["teacher"] / ppl["student"]
    report["format_probe"] = format_probe(ctx, arts["teacher"])
    rates = pretraining_rates(ctx, arts)
    stages = estimates(ctx, rates, seconds_per_sample=sampling_probe(ctx, arts["teacher"]))
    report["estimates_s"] = stages
    report["method_estimates_s"] = {m: sum(stages[s] for s in parts) for m, parts in METHOD_STAGES.items()}
    coded_public = bool(ctx.public.info.get("n_coded", 0) or ctx.public.info.get("coded_share", 0))
    report["recommendation"] = recommendation(
        report["gate_1"], coded_public, report["format_probe"]["ratio"], bool(raw.code_columns), len(raw.texts("train"))
    )
    return report


def print_report(report: dict, say=print) -> None:
    """The report of `check` as a reader wants it: lengths, gate 1, the probe, times, the recommendation."""
    docs = ", ".join(f"{split} {n}" for split, n in report["documents"].items())
    say(f"private corpus {report['dataset']!r}: {docs}; codes: {', '.join(report['codes']) or 'none'}")
    public = report["public"]
    say(
        f"public text {report['public_corpus']!r}: {public['documents']} training documents, "
        f"{public.get('n_coded', 0)} of them behind codes"
    )
    say(
        f"document lengths in tokens (codes and [eos] included), against max_length {report['max_length']} "
        f"(context {report['context']}; long_documents: {report['long_documents']}):"
    )
    for name, stats in [*report["lengths"].items(), ("public train", report["public_lengths"])]:
        say(
            f"  {name:<12} median {stats['median']:6.0f}   90% {stats['p90']:6.0f}   longest {stats['max']:6d}   "
            f"over the limit {stats['over']} of {stats['documents']}"
        )
    if "refused" in report:
        say(f"refused: {report['refused']}")
        return
    for role, pre in report["pretrained"].items():
        say(f"pretrained {role}: test perplexity {pre['test_ppl']:8.2f}   built in {pre['seconds']:.0f} s")
    gate = report["gate_1"]
    say(f"gate 1: pretrained teacher / student = {gate:.3f}: {'PASS' if gate <= GATE_1_RATIO else 'FAIL'}")
    probe = report["format_probe"]
    if math.isnan(probe["ratio"]):
        say("code-format probe: the corpus has no codes")
    else:
        say(
            f"code-format probe: pretrained teacher validation perplexity {probe['coded']:.2f} with codes, "
            f"{probe['plain']:.2f} without: ratio {probe['ratio']:.2f} "
            f"(at most {FORMAT_PROBE_RATIO}: it reads the code format)"
        )
    say("gate 2 (DP teacher against DP-SGD student) is not estimated: it needs the DP models")
    say("estimated time of each stage on this machine (one artifact; seconds):")
    for stage, seconds in report["estimates_s"].items():
        say(f"  {stage:<32} {seconds:8.0f}")
    methods = ", ".join(f"{m} {s:.0f} s" for m, s in report["method_estimates_s"].items())
    say(f"one method at one budget and seed: {methods}")
    say(f"recommendation: {report['recommendation']}")


def calibrate(ctx: StageContext, store_root: Path) -> dict[str, float]:
    """STAGE_FACTORS measured from a store built with `ctx`'s settings (e.g. `make run`'s): for each stage, the
    median over its artifacts of (wall time / work tokens) over the pretraining seconds per token of its model."""
    manifests = {p.parent.parent.name: [] for p in store_root.glob("*/*/manifest.json")}
    for path in store_root.glob("*/*/manifest.json"):
        manifests[path.parent.parent.name].append(json.loads(path.read_text()))
    arts = {role: pretrained(ctx, role) for role in ("teacher", "student")}
    rates = pretraining_rates(ctx, arts)
    work = {w.stage: w for w in stage_work(ctx)}

    def factor(stage: str, records: list[dict]) -> float:
        ratios = [r["wall_time_s"] / (work[stage].tokens * rates[work[stage].role]) for r in records]
        return statistics.median(ratios) if ratios else math.nan

    private = lambda name, role: [  # noqa: E731
        r for r in manifests.get(name, []) if r["config"].get("role") == role and r["privacy"].get("noise_multiplier")
    ]
    students = private("private_student", "student")
    distilled = manifests.get("distilled_student", [])
    return {
        "DP teacher": factor("DP teacher", private("private_teacher", "teacher")),
        "DP-SGD student": factor("DP-SGD student", [r for r in students if not r["config"].get("kd")]),
        "DPKD student": factor("DPKD student", [r for r in students if r["config"].get("kd")]),
        "synthetic text": factor("synthetic text", manifests.get("synthetic", [])),
        "distilled student (hard labels)": factor(
            "distilled student (hard labels)", [r for r in distilled if not r["config"].get("kd")]
        ),
        "distilled student (KD)": factor("distilled student (KD)", [r for r in distilled if r["config"].get("kd")]),
    }
