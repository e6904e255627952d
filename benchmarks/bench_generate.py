"""Speed of `generate_synthetic`: its tokens/s against plain `model.generate`, and how wall time grows with size.

    .venv/bin/python benchmarks/bench_generate.py                    # random tiny teacher (~2 min)
    .venv/bin/python benchmarks/bench_generate.py --model-dir DIR    # a saved teacher (save_pretrained)

Both sides sample with the same settings (top-k 50, top-p 0.9, no-repeat 2-grams, max_length 128 including
the prompt). Plain generate gets the easy case (one prompt repeated, so no padding); generate_synthetic
mixes codes in a batch (left padding), decodes, drops empties and writes parquet chunks.
"New tokens" count every sampled token up to and including the [eos] that ends a sample; tokens/s and the
ratio (ours / plain) use wall time, of each side's fastest of --repeats runs; `cpu_s` and `cpu_ratio` use this
process's CPU time instead, which other work on the machine inflates less.
Writes results/benchmarks/generate.csv.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from distildp.data.corpus import control_prefix
from distildp.data.loaders import pydoc_paragraphs
from distildp.distill.generate import generate_synthetic
from distildp.lm.models import load_pretrained, train_tokenizer
from distildp.lm.sampling import GenerationConfig

ROOT = Path(__file__).resolve().parents[1]
CODES = [
    {"Business Category": c, "Review Stars": s}
    for c in ("Restaurants", "Shopping", "Hotels & Travel", "Auto Repair")
    for s in ("1.0", "5.0")
]


def tiny_teacher():
    """The tiny-teacher preset at the embedded default's vocabulary (Settings.vocab_size), random weights."""
    from distildp.lm.models import build_model
    from distildp.pipeline.settings import Settings

    tokenizer = train_tokenizer(pydoc_paragraphs(), vocab_size=Settings().vocab_size)
    return build_model("tiny-teacher", tokenizer, seed=0).eval(), tokenizer


@torch.no_grad()
def plain_generate(model, tokenizer, n: int, batch_size: int, cfg: GenerationConfig) -> tuple[int, float, float]:
    """Baseline: `model.generate` on one prompt repeated; returns (new tokens, wall seconds, CPU seconds)."""
    eos = tokenizer.eos_token_id
    prompt = [eos] + tokenizer(control_prefix(CODES[0]), add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    tokens, started, cpu_started = 0, time.perf_counter(), time.process_time()
    for start in range(0, n, batch_size):
        ids = torch.tensor([prompt] * min(batch_size, n - start))
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            temperature=cfg.temperature,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            max_length=cfg.max_length,
            pad_token_id=eos,
            eos_token_id=eos,
        )
        for row in out[:, len(prompt) :].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return tokens, time.perf_counter() - started, time.process_time() - cpu_started


def synthetic(model, tokenizer, n: int, cfg: GenerationConfig) -> tuple[int, float, float]:
    """generate_synthetic on n samples spread evenly over the codes; returns (new tokens, wall s, CPU s)."""
    counts = [(codes, n // len(CODES) + (i < n % len(CODES))) for i, codes in enumerate(CODES)]
    cpu_started = time.process_time()
    with tempfile.TemporaryDirectory() as out_dir:
        result = generate_synthetic(model, tokenizer, counts, out_dir, cfg, seed=0, progress=False)
    return result.summary["new_tokens"], result.summary["wall_time_s"], time.process_time() - cpu_started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a saved teacher (model + tokenizer); default: random tiny teacher")
    parser.add_argument("--batch-size", type=int, default=GenerationConfig.batch_size)
    parser.add_argument(
        "--compare-samples",
        type=int,
        nargs=2,
        default=[16, 256],
        metavar=("BATCH1", "BATCHED"),
        help="samples for the batch-1 and batched comparisons",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each throughput comparison (fastest kept)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 is fastest on a shared 2-core machine (2 threads spin against each other)",
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "generate.csv"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, tokenizer = load_pretrained(args.model_dir) if args.model_dir else tiny_teacher()
    model.eval()
    base = GenerationConfig(batch_size=args.batch_size)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"teacher: {n_params / 1e6:.2f}M params, {torch.get_num_threads()} threads, {base}", file=sys.stderr)

    rows = []

    def record(kind, method, batch, n, tokens, seconds, cpu_seconds, ratio="", cpu_ratio=""):
        rows.append(
            dict(
                benchmark=kind,
                method=method,
                batch_size=batch,
                n_samples=n,
                new_tokens=tokens,
                wall_s=round(seconds, 3),
                cpu_s=round(cpu_seconds, 3),
                tokens_per_s=round(tokens / seconds, 1),
                ratio=ratio,
                cpu_ratio=cpu_ratio,
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                n_params=n_params,
                threads=torch.get_num_threads(),
            )
        )
        print(rows[-1], file=sys.stderr)

    synthetic(model, tokenizer, 8, replace(base, batch_size=8))  # warm-up: first-call overheads
    for batch, n in zip((1, args.batch_size), args.compare_samples):
        cfg = replace(base, batch_size=batch)
        # alternate the two and keep each one's fastest run: other work on the machine only slows a run down
        runs = [
            (plain_generate(model, tokenizer, n, batch, cfg), synthetic(model, tokenizer, n, cfg))
            for _ in range(args.repeats)
        ]
        plain, ours = (min((run[i] for run in runs), key=lambda r: r[1]) for i in (0, 1))
        record("throughput", "model.generate", batch, n, *plain)
        ratio, cpu_ratio = (round((ours[0] / ours[i]) / (plain[0] / plain[i]), 3) for i in (1, 2))
        record("throughput", "generate_synthetic", batch, n, *ours, ratio=ratio, cpu_ratio=cpu_ratio)
    for n in args.sizes:
        record("scaling", "generate_synthetic", args.batch_size, n, *synthetic(model, tokenizer, n, base))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = (
        f"{'benchmark':<11} {'method':<19} {'batch':>5} {'samples':>7} {'tokens':>7} {'wall s':>8} {'cpu s':>8} "
        f"{'tok/s':>8} {'ratio':>6} {'cpu ratio':>9} {'rss MB':>6}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['benchmark']:<11} {r['method']:<19} {r['batch_size']:>5} {r['n_samples']:>7} {r['new_tokens']:>7} "
            f"{r['wall_s']:>8} {r['cpu_s']:>8} {r['tokens_per_s']:>8} {r['ratio']:>6} {r['cpu_ratio']:>9} "
            f"{r['peak_rss_mb']:>6}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
