"""Why DP-OPD's student barely moves on the embedded default: its DP-SGD step's signal and direction beside DP-SGD's.

    .venv/bin/python benchmarks/dpopd_direction.py [--n 200] [--store DIR]    # ~1 minute with the models in the store

At the pretrained student, for `n` private training documents: each example's gradient of DP-SGD's cross-entropy
and of DP-OPD's on-policy loss (its own continuation scored by DP-OPD's default DP teacher at epsilon 2), clipped
to C = 1 and averaged. Printed: the per-example norms; the mean clipped gradient's norm (the signal) beside the
noise's norm on the mean of an expected batch (sigma C sqrt(d) / B, each method's own sigma); their cosine; and the
cross-entropy of `n` held-out documents after a step of a few sizes along each mean (no noise): does the direction
itself lower perplexity? A diagnostic, not a timed benchmark: it writes nothing. The store must hold (or will build)
the quick profile's pretrained student and DP-OPD's DP teacher.
"""

from __future__ import annotations

import argparse
import math

import torch

from distildp.core.artifacts import ArtifactStore
from distildp.distill import on_policy
from distildp.lm.models import encode_plain
from distildp.pipeline import Pipeline, public_models
from distildp.pipeline.settings import make_settings

EPSILON, CLIP = 2.0, 1.0
STEP_NORMS = (0.05, 0.2, 0.5)


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def clipped_mean(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([g * min(1.0, CLIP / g.norm().item()) for g in grads]).mean(0)


@torch.no_grad()
def shift(params: list[torch.Tensor], vector: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p += vector[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


@torch.no_grad()
def mean_loss(model, examples: list[dict]) -> float:
    return sum(model(ids := torch.tensor([e["input_ids"]]), labels=ids).loss.item() for e in examples) / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="private documents (and held-out documents) used")
    parser.add_argument("--store", default="", help="artifact store (default: the project's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = Pipeline(make_settings("quick", {}), ArtifactStore(args.store) if args.store else None, progress=False)
    plan = pipe.plan("dpopd", EPSILON)
    student, tok = pipe.load_model(public_models.pretrained(pipe, "student", 0).path)
    teacher, _ = pipe.load_model(pipe.opd_teacher(0, plan).path)
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    texts, prefixes = pipe.corpus.texts("train")[: args.n], pipe.corpus.prefixes("train")[: args.n]
    cfg, context = pipe.settings.on_policy, student.config.n_positions

    cross_entropy = []
    for example in encode_plain(tok, texts, context):
        ids = torch.tensor([example["input_ids"]])
        cross_entropy.append(flat_grad(student(ids, labels=ids).loss, params))
    opd = []
    for example in on_policy.prompt_examples(tok, texts, prefixes, cfg.prompt_tokens):
        batch = on_policy.collate_prompts([example])
        continuation = on_policy.sample_continuations(
            student, batch["prompts"], cfg.continuation_tokens, tok.eos_token_id
        )
        scored = on_policy.continued_batch(batch, continuation, tok.pad_token_id)
        loss = on_policy.continuation_losses(student, teacher, scored, cfg, pipe.settings.teacher_context)[0]
        opd.append(flat_grad(loss, params))

    d, batch_size = sum(p.numel() for p in params), pipe.settings.opd_train.batch_size
    sigmas = {
        "cross-entropy": pipe.plan("dpsgd", EPSILON).noise_multipliers()["student"],
        "on-policy": plan.noise_multipliers()["student"],
    }
    means = {"cross-entropy": clipped_mean(cross_entropy), "on-policy": clipped_mean(opd)}
    held_out = encode_plain(tok, pipe.corpus.texts("validation")[: args.n], context)
    before = mean_loss(student, held_out)
    print(f"{args.n} documents, d = {d} trained parameters, expected batch B = {batch_size}, C = {CLIP}")
    for name, grads in (("cross-entropy", cross_entropy), ("on-policy", opd)):
        norms = torch.tensor([g.norm().item() for g in grads])
        noise = sigmas[name] * CLIP * math.sqrt(d) / batch_size
        print(
            f"{name}: per-example norm median {norms.median():.2f}; mean clipped gradient {means[name].norm():.4f} "
            f"against noise {noise:.4f} on the mean (sigma {sigmas[name]:.3f})"
        )
    cosine = torch.nn.functional.cosine_similarity(means["cross-entropy"], means["on-policy"], dim=0)
    print(f"cosine of the two mean clipped gradients: {cosine:.3f}; held-out cross-entropy before a step {before:.4f}")
    for name, mean in means.items():
        direction = mean / mean.norm()
        for norm in STEP_NORMS:
            shift(params, -norm * direction)
            change = mean_loss(student, held_out) - before
            print(f"  a step of norm {norm} down the {name} gradient: held-out loss {change:+.4f}")
            shift(params, norm * direction)


if __name__ == "__main__":
    main()
