"""Speed and memory of DP-SGD (Opacus) against non-private training of the same model and batches.

    python benchmarks/bench_dpsgd.py --preset tiny-teacher --batch 32 --seq 96 --steps 6

Each configuration runs in its own subprocess, so its peak memory is its own. Memory is the peak
resident set size (getrusage ru_maxrss): torch's CPU allocator has no statistics API and tracemalloc
sees only Python objects, not tensor storage, so RSS is the honest number for CPU training; it includes
the interpreter and libraries (~0.4-0.5 GB), so the table also shows the peak minus the RSS just before
training ("train MB"). On CUDA the peak allocated GPU memory is recorded too.
Time per step is normalised to `--batch` examples (Poisson batches vary in size) and excludes
warm-up steps, noise calibration (a fixed noise multiplier is used) and accounting.
With --rounds R the configurations run R times, interleaved: `time_ratio` is the ratio of median times, and
`time_ratio_min` / `time_ratio_max` the range of each round's ratio against its own baseline run.
Writes results/benchmarks/dpsgd.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

# name -> (private, grad_sample_mode, Conv1D sampler, frozen embeddings, untied lm_head, one pass per batch)
CONFIGS = {
    "non-private": (False, None, False, False, False, False),
    "hooks": (True, "hooks", False, False, False, False),
    "hooks+conv1d": (True, "hooks", True, False, False, False),
    "ghost+conv1d": (True, "ghost", True, False, True, False),
    "ghost": (True, "ghost", False, False, True, False),
    "bookkeeping": (True, "bookkeeping", False, False, False, False),  # one backward pass, tied lm_head kept
    # each Poisson batch in one pass, however far above --batch (by default a pass holds at most --batch)
    "bookkeeping one-pass": (True, "bookkeeping", False, False, False, True),
    "non-private untied": (False, None, False, False, True, False),  # ghost's baseline: same parameter count
    "hooks+conv1d frozen-emb": (True, "hooks", True, True, False, False),  # what the embeddings' grads cost
    "non-private frozen-emb": (False, None, False, True, False, False),
}
ROOT = Path(__file__).resolve().parents[1]


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def model_sizes(args) -> dict:
    from distildp.lm.models import PRESETS

    sizes = dict(PRESETS[args.preset]) if args.preset else {}
    for key in ("n_embd", "n_layer", "n_head", "n_positions"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    sizes.setdefault("n_positions", max(args.seq, 128))
    return sizes


def worker(args) -> dict:
    """One configuration, in this process: train and measure."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from distildp.dp.config import PrivacyConfig
    from distildp.dp.dpsgd import train_causal_lm, untie_embeddings
    from distildp.lm.training import TrainConfig, lm_loss_per_sequence

    torch.set_num_threads(args.threads)
    private, mode, conv1d, frozen, untied, one_pass = CONFIGS[args.worker]
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=args.vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0, **model_sizes(args))
    model = GPT2LMHeadModel(config).to(device)
    if untied:
        untie_embeddings(model)
    if frozen:
        for emb in (model.transformer.wte, model.transformer.wpe):
            emb.weight.requires_grad_(False)
    n = args.batch * 20
    g = torch.Generator().manual_seed(0)
    examples = [
        {"input_ids": [0] + torch.randint(1, args.vocab, (args.seq - 2,), generator=g).tolist() + [0]} for _ in range(n)
    ]
    seen, stamps = [], []

    def counting_loss(m, batch):
        seen.append(batch["input_ids"].shape[0])
        return lm_loss_per_sequence(m, batch)

    def on_step(step, loss):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append((time.perf_counter(), len(seen), sum(seen)))

    total = args.warmup + args.steps
    train_cfg = TrainConfig(
        epochs=1,
        batch_size=args.batch,
        physical_batch_size=n if one_pass else args.physical or None,
        max_steps=total,
        lr=1e-4,
        seed=0,
    )
    privacy_cfg = (
        PrivacyConfig(
            noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp", grad_sample_mode=mode, conv1d_sampler=conv1d
        )
        if private
        else None
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss_mb()
    start = time.perf_counter()
    stamps.append((start, 0, 0))
    with torch.profiler.profile() if args.profile else contextlib.nullcontext() as profiler:
        train_causal_lm(model, examples, train_cfg, privacy_cfg, loss_fn=counting_loss, on_step=on_step, progress=False)
    if args.profile:  # where the step's time goes, operator by operator (warm-up steps included)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile), file=sys.stderr)
    (t0, _, ex0), (t1, _, ex1) = stamps[args.warmup], stamps[-1]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "config": args.worker,
        "s_per_step": (t1 - t0) / (ex1 - ex0) * args.batch,  # per `batch` examples
        "peak_rss_mb": peak_mb,
        "train_mb": peak_mb - rss_before,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "examples_timed": ex1 - ex0,
        "largest_pass": max(seen),  # examples in the largest forward/backward pass (Poisson batches vary)
    }


def run_config(name: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--batch",
        str(args.batch),
        "--physical",
        str(args.physical),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--vocab",
        str(args.vocab),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--preset",
        args.preset or "",
        "--profile",
        str(args.profile),
    ]
    for key in ("n_embd", "n_layer", "n_head", "n_positions"):
        if getattr(args, key) is not None:
            command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    if args.profile:
        print(f"--- {name}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_row(measured: list[dict]) -> dict:
    """One configuration's rounds: the median of every measured figure, and how many rounds it is over."""
    row = dict(measured[0])
    for key, value in row.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = statistics.median(m[key] for m in measured)
    row["rounds"] = len(measured)
    return row


def baseline_for(name: str) -> str:
    if "frozen-emb" in name:
        return "non-private frozen-emb"
    if name.startswith("ghost"):
        return "non-private untied"
    return "non-private"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-teacher", help="distildp.lm.models preset ('' for explicit sizes)")
    parser.add_argument("--n-embd", dest="n_embd", type=int)
    parser.add_argument("--n-layer", dest="n_layer", type=int)
    parser.add_argument("--n-head", dest="n_head", type=int)
    parser.add_argument("--n-positions", dest="n_positions", type=int)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--physical",
        type=int,
        default=0,
        help="examples per forward/backward pass (TrainConfig.physical_batch_size); 0: the default, --batch",
    )
    parser.add_argument("--seq", type=int, default=96, help="tokens per example")
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="runs of every configuration, interleaved; medians")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "dpsgd.csv"))
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="print the N operators that take the most time in each configuration (torch.profiler)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    names = list(dict.fromkeys([baseline_for(c) for c in args.configs if c in CONFIGS] + args.configs))
    # Rounds interleave the configurations, so a slow spell of a shared machine falls on all of them alike;
    # each figure is the median over the rounds.
    runs = {name: [] for name in names}
    for _ in tqdm(range(args.rounds), desc="rounds", disable=args.rounds == 1):
        for name in names:
            runs[name].append(run_config(name, args))
    rows = {name: median_row(measured) for name, measured in runs.items()}
    for name, row in rows.items():
        baseline = baseline_for(name)
        base = rows[baseline]
        # each round against its own baseline run: how far the machine's drift moves the ratio
        paired = [m["s_per_step"] / b["s_per_step"] for m, b in zip(runs[name], runs[baseline])]
        row.update(
            time_ratio=row["s_per_step"] / base["s_per_step"],
            time_ratio_min=min(paired),
            time_ratio_max=max(paired),
            rss_ratio=row["peak_rss_mb"] / base["peak_rss_mb"],
            train_mem_ratio=row["train_mb"] / max(base["train_mb"], 1.0),
            baseline=baseline,
            preset=args.preset,
            batch=args.batch,
            physical=args.physical or "",
            seq=args.seq,
            threads=args.threads,
            device=args.device,
            steps=args.steps,
            machine=platform.machine(),
        )
    print(
        f"{'config':26s} {'s/step':>8s} {'peak MB':>8s} {'train MB':>9s} {'time x':>7s} {'rounds range':>12s} "
        f"{'RSS x':>6s} {'train-mem x':>11s}  vs"
    )
    for name, r in rows.items():
        spread = f"{r['time_ratio_min']:.2f}-{r['time_ratio_max']:.2f}"
        print(
            f"{name:26s} {r['s_per_step']:8.3f} {r['peak_rss_mb']:8.0f} {r['train_mb']:9.0f} "
            f"{r['time_ratio']:7.2f} {spread:>12s} {r['rss_ratio']:6.2f} {r['train_mem_ratio']:11.2f}  {r['baseline']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(next(iter(rows.values()))))
        writer.writeheader()
        writer.writerows(rows.values())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
