"""Time per global DP-SGD batch on one process and on several (data-parallel, as torchrun runs them).

    python benchmarks/bench_ddp.py                                  # 1x1, 1x2 and 2x1 (processes x threads), CPU
    python benchmarks/bench_ddp.py --layouts 1x1 2x1 4x1 --modes bookkeeping
    python benchmarks/bench_ddp.py --device cuda --layouts 1x1 2x1  # NCCL, one GPU per process

Every layout trains the same model (a tiny preset, random weights) with a fixed noise multiplier on the same global
batch: B random token sequences with batch_size = B, so q = 1 and every step holds exactly B examples (a Poisson
batch would vary in size from step to step and layout to layout). Each process cuts its share into physical
batches of at most --physical. Time per step is measured after --warmup steps, on rank 0 (the processes step
together: each step ends with their all-reduce). Each layout PxT starts P fresh processes (spawned, with the
environment variables torchrun sets) of T torch threads each. Layouts take turns for --repeats rounds, so a change in
the machine's load falls on all of them; the table has the median, min and max over the rounds. Writes
results/benchmarks/ddp.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [
    "layout",
    "processes",
    "threads_per_process",
    "backend",
    "device",
    "grad_sample_mode",
    "model",
    "vocab",
    "seq",
    "global_batch",
    "physical_batch",
    "steps_timed",
    "repeats",
    "seconds_per_step_median",
    "seconds_per_step_min",
    "seconds_per_step_max",
    "speedup_vs_1x1",
    "cpus",
    "load_average_before",
    "torch",
    "opacus",
    "machine",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, threads: int, mode: str, args, out: str) -> None:
    """One process of a layout: DP-SGD for warmup + steps steps; rank 0 writes its seconds per timed step."""
    import torch

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(threads)
    from transformers import GPT2Config, GPT2LMHeadModel

    from distildp.core import distributed
    from distildp.dp.config import PrivacyConfig
    from distildp.dp.dpsgd import train_causal_lm
    from distildp.lm.models import PRESETS
    from distildp.lm.training import TrainConfig

    device = distributed.rank_device(torch.device(args.device))
    backend = distributed.init(world, device)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=args.vocab,
        **{**PRESETS[args.model], "n_positions": max(args.seq, 128)},
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).to(device)
    g = torch.Generator().manual_seed(1)
    examples = [
        {"input_ids": torch.randint(0, args.vocab, (args.seq,), generator=g).tolist()} for _ in range(args.batch)
    ]
    stamps: list[float] = []

    def on_step(step: int, loss: float) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    train_causal_lm(
        model,
        examples,
        TrainConfig(
            epochs=args.warmup + args.steps,
            batch_size=args.batch,  # = the number of examples: q = 1, exactly B examples per step
            physical_batch_size=args.physical,
            lr=1e-3,
            seed=0,
        ),
        PrivacyConfig(
            noise_multiplier=1.0, grad_sample_mode=mode, accountant="rdp", delta=1e-5, secret_randomness=False
        ),
        progress=False,
        on_step=on_step,
        data_parallel=world > 1,
    )
    if rank == 0:
        seconds = (stamps[-1] - stamps[args.warmup - 1]) / args.steps  # from the end of the last warm-up step
        Path(out).write_text(f"{seconds!r} {backend or 'none'}")
    if world > 1:
        torch.distributed.destroy_process_group()


def run_layout(processes: int, threads: int, mode: str, args) -> tuple[float, str]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds")
        mp.start_processes(
            worker,
            args=(processes, _free_port(), threads, mode, args, out),
            nprocs=processes,
            start_method="spawn",
        )
        seconds, backend = Path(out).read_text().split()
    return float(seconds), backend


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1"], help="PROCESSESxTHREADS each")
    parser.add_argument("--modes", nargs="+", default=["bookkeeping", "hooks"], help="grad_sample_mode")
    parser.add_argument("--model", default="tiny-teacher", help="a tiny preset of distildp.lm.models")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=64, help="tokens per example")
    parser.add_argument("--batch", type=int, default=64, help="global batch B (= examples: q = 1)")
    parser.add_argument("--physical", type=int, default=32, help="examples per forward/backward pass, per process")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (at least 1)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the layouts")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process, NCCL)")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "ddp.csv"))
    args = parser.parse_args(argv)
    if min(args.warmup, args.steps, args.repeats) < 1:
        parser.error("--warmup, --steps and --repeats must be at least 1")
    layouts = []
    for layout in args.layouts:
        try:
            processes, threads = (int(part) for part in layout.split("x"))
        except ValueError:
            parser.error(f"--layouts {layout!r}: write PROCESSESxTHREADS, e.g. 2x1")
        layouts.append((layout, processes, threads))

    import opacus

    seconds: dict[tuple[str, str], list[float]] = {}
    backends, loads = {}, {}
    for round_ in range(args.repeats):
        for mode in args.modes:
            for layout, processes, threads in layouts:
                load = os.getloadavg()[0]
                taken, backends[layout] = run_layout(processes, threads, mode, args)
                seconds.setdefault((mode, layout), []).append(taken)
                loads.setdefault((mode, layout), []).append(load)
                print(f"round {round_ + 1}: {mode:12s} {layout}: {taken:.3f} s per step (load {load:.1f})", flush=True)
    rows = []
    for mode in args.modes:
        baseline = statistics.median(seconds[mode, "1x1"]) if (mode, "1x1") in seconds else None
        for layout, processes, threads in layouts:
            taken = seconds[mode, layout]
            rows.append(
                {
                    "layout": layout,
                    "processes": processes,
                    "threads_per_process": threads,
                    "backend": backends[layout],
                    "device": args.device,
                    "grad_sample_mode": mode,
                    "model": args.model,
                    "vocab": args.vocab,
                    "seq": args.seq,
                    "global_batch": args.batch,
                    "physical_batch": args.physical,
                    "steps_timed": args.steps,
                    "repeats": args.repeats,
                    "seconds_per_step_median": round(statistics.median(taken), 4),
                    "seconds_per_step_min": round(min(taken), 4),
                    "seconds_per_step_max": round(max(taken), 4),
                    "speedup_vs_1x1": round(baseline / statistics.median(taken), 3) if baseline else "",
                    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "load_average_before": round(statistics.median(loads[mode, layout]), 2),
                    "torch": torch.__version__,
                    "opacus": opacus.__version__,
                    "machine": platform.processor() or platform.machine(),
                }
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
