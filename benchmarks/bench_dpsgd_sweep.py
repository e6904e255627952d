"""How DP-SGD's cost grows: non-private, hooks + our Conv1D sampler, ghost clipping and book-keeping clipping,
side by side, across batch size, sequence length and model size (each configuration in its own subprocess,
through bench_dpsgd.py). Writes results/benchmarks/dpsgd_sweep.csv and dpsgd_sweep.png.

    python benchmarks/bench_dpsgd_sweep.py                  # CPU, 1 thread: about 15 minutes on a quiet machine
    python benchmarks/bench_dpsgd_sweep.py --device cuda --models distilgpt2-shape gpt2-large-shape

Ratios are to non-private training of the same model and batches (ghost's to the untied model: it unties the
output layer). GPT-2-shaped models are built from their configs (random weights, GPT-2's 50,257-token vocabulary).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_dpsgd.py"
CONFIGS = ["non-private", "hooks+conv1d", "ghost", "bookkeeping"]


def gpt2_shape(n_layer: int, n_embd: int, n_head: int) -> list[str]:
    """bench_dpsgd.py arguments for a randomly initialised model of a GPT-2 hub model's shape."""
    sizes = {"--n-embd": n_embd, "--n-layer": n_layer, "--n-head": n_head, "--n-positions": 1024, "--vocab": 50257}
    return ["--preset", "", *(str(part) for pair in sizes.items() for part in pair)]


# name -> bench_dpsgd.py arguments for the model
MODELS = {
    "tiny-student": ["--preset", "tiny-student", "--vocab", "2048"],
    "tiny-teacher": ["--preset", "tiny-teacher", "--vocab", "2048"],
    "teacher-16x": ["--preset", "teacher-16x", "--vocab", "2048"],
    "gpt2-small-shape": gpt2_shape(n_layer=12, n_embd=768, n_head=12),
    "distilgpt2-shape": gpt2_shape(n_layer=6, n_embd=768, n_head=12),
    "gpt2-large-shape": gpt2_shape(n_layer=36, n_embd=1280, n_head=20),
}


def measure(model: str, batch: int, seq: int, args, out: Path) -> list[dict]:
    command = [
        sys.executable,
        str(BENCH),
        *MODELS[model],
        "--batch",
        str(batch),
        "--seq",
        str(seq),
        "--steps",
        str(args.steps),
        "--warmup",
        "1",
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--configs",
        *CONFIGS,
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    with out.open() as f:
        return [{**row, "model": model, "sweep": ""} for row in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["tiny-student", "tiny-teacher", "teacher-16x", "gpt2-small-shape"],
        choices=list(MODELS),
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "dpsgd_sweep.csv"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    scratch = out.with_suffix(".part.csv")
    rows = []
    # (sweep, model, batch, seq): one axis at a time from tiny-teacher at 32 x 48 tokens
    plan = [("batch", "tiny-teacher", b, 48) for b in (8, 32, 128)]
    plan += [("seq", "tiny-teacher", 32, s) for s in (24, 48, 96)]
    plan += [("model", m, 8 if "shape" in m else 32, 48) for m in args.models]
    for sweep, model, batch, seq in plan:
        for row in measure(model, batch, seq, args, scratch):
            row["sweep"] = sweep
            rows.append(row)
        print(
            f"{sweep:6s} {model:18s} batch {batch:4d} seq {seq:4d}: "
            + ", ".join(
                f"{r['config']} {float(r['time_ratio']):.2f}x time {float(r['rss_ratio']):.2f}x RSS"
                for r in rows[-len(CONFIGS) - 1 :]
                if r["config"] in CONFIGS[1:]
            ),
            flush=True,
        )
    scratch.unlink(missing_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [
        ("batch", "batch", "examples per step (tiny-teacher, 48 tokens)"),
        ("seq", "seq", "tokens per example (tiny-teacher, batch 32)"),
        ("model", "model", "model"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharey="row")
    for col, (sweep, key, label) in enumerate(sweeps):
        part = [r for r in rows if r["sweep"] == sweep]
        xs = list(dict.fromkeys(r[key] for r in part))
        for config in CONFIGS[1:]:
            for row_i, metric in enumerate(("time_ratio", "rss_ratio")):
                ys = [float(next(r[metric] for r in part if r[key] == x and r["config"] == config)) for x in xs]
                axes[row_i][col].plot([str(x) for x in xs], ys, marker="o", label=config)
        axes[1][col].set_xlabel(label)
        for row_i in (0, 1):
            axes[row_i][col].axhline(1.0, color="black", linewidth=1)
            axes[row_i][col].grid(True, alpha=0.3)
            axes[row_i][col].tick_params(axis="x", labelrotation=20, labelsize=8)
    axes[0][0].set_ylabel("step time / non-private")
    axes[1][0].set_ylabel("peak RSS / non-private")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("DP-SGD's cost relative to non-private training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
