"""Speed of the training and evaluation steps: each optimisation against the eager step it replaced.

    python benchmarks/bench_training.py                    # writes results/benchmarks/training.csv
    python benchmarks/bench_training.py --rounds 3 --steps 10 --only distill

Four workloads on the embedded default's shapes (tiny presets, its 2,048-token vocabulary, one CPU thread as each
grid job has), each on real text of that workload's mix of lengths:
- pretrain: a step of 32 random public documents (reviews among context-long windows of prose), student and teacher;
- distill: a step of 64 length-grouped synthetic-like documents, the student against the teacher's soft labels;
- private: a DP-SGD step of the DP teacher (`--dp-steps`): 1,000 random private documents after their codes, in
  physical batches of 100, book-keeping clipping (the library's, in every configuration), noise, AdamW;
- evaluate: the perplexity of 400 test documents, one document a window.
Every configuration of a workload runs in this process, interleaved round by round (`--rounds`), on the same
batches; a row reports the median seconds per step over the rounds, the range of its per-round ratio to the
workload's eager baseline, and (for torch.compile) the seconds the first call took.

The configurations add one lever at a time, in the order the library applies them:
  eager               the step before this suite's speed-ups: GPT-2's five-op GELU, one padded pass, the loss through
                      autograd (distill.kd_loss; the teacher's cached states through its output layer), foreach AdamW
  + gelu kernel       GELU as one kernel (the tiny presets' activation_function)
  + length chunks     a random batch cut into passes of similar lengths (training.length_chunks)
  + fused loss        fused_loss: the output layer on scored rows, one log-softmax, a closed-form gradient
  + fused adamw       AdamW(fused=True)
  + probs cache       the teacher's float16 probabilities cached (teacher_cache.attach_teacher_probs)
  compiled            the last configuration with the step (evaluation: the model's body) under torch.compile
                      (inductor; dynamic shapes)
  2 stacked (vmap)    two students on the same batches in one vmapped step, per student (torch.func); compare it
                      with '+ gelu kernel', which computes the same loss one student at a time
"""

from __future__ import annotations

import argparse
import csv
import functools
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "training.csv"


def data(n_eval: int = 400):
    """Tokenizer, public pretraining examples, distillation examples (texts with their code prefixes) and test texts
    of the embedded default (the quick profile's corpora)."""
    from distildp.distill.kd_batches import kd_examples
    from distildp.lm.models import encode_with_prefix, train_tokenizer
    from distildp.pipeline import Pipeline
    from distildp.pipeline.public_models import schema_texts
    from distildp.pipeline.settings import make_settings

    pipe = Pipeline(make_settings("quick"), progress=False)
    public, corpus = pipe.public, pipe.corpus
    tok = train_tokenizer(public.train + schema_texts(pipe), 2048)
    pretrain = encode_with_prefix(tok, public.train_prefixes, public.train, 128, overflow="split")
    distill = kd_examples(tok, corpus.texts("train"), corpus.prefixes("train"), 128)
    return tok, pretrain, distill, corpus.texts("test")[:n_eval]


def model(preset: str, tok, gelu_kernel: bool):
    from distildp.lm.models import build_model

    overrides = {} if gelu_kernel else {"activation_function": "gelu_new"}
    return build_model(preset, tok, seed=0, **overrides)


# ------------------------------------------------------------------------------------------------ steps
def eager_lm_loss(m, batch):
    """The per-sequence cross-entropy through autograd on the whole (B, T, V) logits (the loss before fused_loss)."""
    import torch.nn.functional as F

    logits = m(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
    targets = batch["input_ids"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    mask = batch["loss_mask"][:, 1:]
    return (nll.view(targets.shape) * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def eager_kd_loss(teacher, lam=0.4):
    """distill.kd_loss on the student's and the teacher's whole (B, T, V) logits, the teacher from cached states."""
    from distildp.distill.kd import kd_loss

    def loss(m, batch):
        logits = m(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
        teacher_logits = teacher.get_output_embeddings()(batch["teacher_states"])
        return kd_loss(
            logits, teacher_logits, batch["input_ids"], batch["loss_mask"], lam=lam, weighting="paper_sum"
        ).total

    return loss


class Step:
    """One optimizer step on a logical batch, cut into passes as `chunks` says, with `loss` (model, batch) -> (B,)."""

    def __init__(self, m, loss, collate, lengths, chunked: bool, fused_adamw: bool, size: int):
        from distildp.lm.training import length_chunks, split_batch

        self.m, self.loss, self.collate = m, loss, collate
        self.cut = (lambda ids: length_chunks(ids, lengths, size)) if chunked else (lambda ids: split_batch(ids, size))
        self.opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=fused_adamw)

    def __call__(self, examples, indices) -> torch.Tensor:
        """Steps the optimizer; returns the batch's mean loss (detached)."""
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros(())
        for chunk in self.cut(indices):
            per_seq = self.loss(self.m, self.collate([examples[i] for i in chunk]))
            mean = per_seq.sum() / len(indices)
            mean.backward()
            total += mean.detach()
        self.opt.step()
        return total


def pretrain_configs(tok, examples, preset: str) -> dict:
    from distildp.lm.training import collate_lm, lm_loss_per_sequence

    lengths = [len(ex["input_ids"]) for ex in examples]

    def collate(exs):
        return collate_lm(exs, tok.pad_token_id)

    def make(gelu, chunked, fused, adamw):
        return Step(
            model(preset, tok, gelu),
            lm_loss_per_sequence if fused else eager_lm_loss,
            collate,
            lengths,
            chunked,
            adamw,
            32,
        )

    return {
        "eager": make(False, False, False, False),
        "+ gelu kernel": make(True, False, False, False),
        "+ length chunks": make(True, True, False, False),
        "+ fused loss": make(True, True, True, False),
        "+ fused adamw": make(True, True, True, True),
    }


def distill_configs(tok, examples, teacher) -> tuple[dict, dict]:
    """(configurations, the examples each reads: with the teacher's cached states or probabilities)."""
    from distildp.distill.kd import KDConfig
    from distildp.distill.kd_batches import collate_kd, make_kd_loss_fn
    from distildp.distill.teacher_cache import attach_teacher_probs, attach_teacher_states

    states = attach_teacher_states(teacher, examples, tok.pad_token_id)
    probs = attach_teacher_probs(teacher, examples, tok.pad_token_id)
    lengths = [len(ex["input_ids"]) for ex in examples]
    fused = make_kd_loss_fn(teacher, KDConfig(lam=0.4, weighting="paper_sum"))

    def collate(exs):
        return collate_kd(exs, tok.pad_token_id)

    def make(gelu, loss, adamw):
        return Step(model("tiny-student", tok, gelu), loss, collate, lengths, True, adamw, 64)

    configs = {
        "eager": make(False, eager_kd_loss(teacher), False),
        "+ gelu kernel": make(True, eager_kd_loss(teacher), False),
        "+ fused loss": make(True, fused, False),
        "+ fused adamw": make(True, fused, True),
        "+ probs cache": make(True, fused, True),
    }
    reads = {name: probs if name == "+ probs cache" else states for name in configs}
    return configs, reads


def compiled(step: Step) -> Step:
    """The step with its model's forward and the loss under torch.compile (dynamic shapes: batches vary in length)."""
    loss = step.loss
    step.loss = torch.compile(lambda m, batch: loss(m, batch), dynamic=True)
    return step


class StackedStudents:
    """Students trained on the same batches in one step: their parameters stacked (`params`, a leading student
    axis), the forward vmapped. The students are copied, not trained in place."""

    def __init__(self, tok, teacher, lengths, students):
        from torch.func import stack_module_state

        self.tok, self.teacher, self.lengths, self.base = tok, teacher, lengths, students[0]
        self.params, self.buffers = stack_module_state(students)
        self.opt = torch.optim.AdamW(self.params.values(), lr=1e-4)  # as '+ gelu kernel', whose loss it computes

    def __call__(self, examples, indices) -> torch.Tensor:
        """Steps the optimizer; returns each student's mean loss on the batch, shape (students,)."""
        from torch.func import functional_call, vmap

        from distildp.distill.kd_batches import collate_kd
        from distildp.lm.training import length_chunks

        self.opt.zero_grad(set_to_none=True)
        total = 0
        for chunk in length_chunks(indices, self.lengths, 64):
            batch = collate_kd([examples[i] for i in chunk], self.tok.pad_token_id)
            kd = functools.partial(_kd_on, functional_call, self.base, batch=batch, teacher=self.teacher)
            mean = vmap(kd)(self.params, self.buffers).sum(1) / len(indices)
            mean.sum().backward()
            total = total + mean.detach()
        self.opt.step()
        return total


def stacked_students(tok, teacher, lengths):
    """Two tiny students (same start, as the grid's students sharing a synthetic set would have) in one step."""
    return StackedStudents(tok, teacher, lengths, [model("tiny-student", tok, True) for _ in range(2)])


def _kd_on(functional_call, base, params, buffers, *, batch, teacher, lam=0.4):
    """The KD loss of the student `base` run with `params` (one slice of the stacked students) on `batch`."""
    from distildp.distill.kd import kd_loss

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logits = functional_call(base, (params, buffers), args=(), kwargs=inputs).logits
    teacher_logits = teacher.get_output_embeddings()(batch["teacher_states"])
    return kd_loss(logits, teacher_logits, batch["input_ids"], batch["loss_mask"], lam=lam, weighting="paper_sum").total


# ------------------------------------------------------------------------------------------------ DP-SGD
def private_examples(tok):
    """The DP teacher's training examples: each private training text after its control-code prefix."""
    from distildp.lm.models import encode_with_prefix
    from distildp.pipeline import Pipeline
    from distildp.pipeline.settings import make_settings

    corpus = Pipeline(make_settings("quick"), progress=False).corpus
    return encode_with_prefix(tok, corpus.prefixes("train"), corpus.texts("train"), 128)


class PrivateStep:
    """One DP-SGD step of the DP teacher as train_private takes it: a logical batch sorted by length and cut into
    physical batches of 100, each one backward pass whose per-example gradients book-keeping clips and sums; then
    Gaussian noise on the sum and an AdamW step."""

    def __init__(self, m, loss, collate, sigma: float = 1.0, max_grad_norm: float = 1.0, physical: int = 100):
        from distildp.dp.bookkeeping import BookkeepingClipper

        self.m, self.loss, self.collate, self.physical = m, loss, collate, physical
        self.sigma, self.max_grad_norm = sigma, max_grad_norm
        self.clipper = BookkeepingClipper(m, max_grad_norm)
        self.opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
        self.noise = torch.Generator().manual_seed(0)

    def __call__(self, examples, indices) -> torch.Tensor:
        from distildp.lm.training import split_batch

        summed = [torch.zeros_like(p) for p in self.m.parameters()]
        total = torch.zeros(())
        for chunk in split_batch(indices, self.physical):
            per_seq = self.loss(self.m, self.collate([examples[i] for i in chunk]))
            self.clipper.backward(per_seq)
            for acc, p in zip(summed, self.m.parameters()):
                acc += p.grad
            total += per_seq.detach().sum() / len(indices)
        for acc, p in zip(summed, self.m.parameters()):
            noise = torch.randn(p.shape, generator=self.noise) * (self.sigma * self.max_grad_norm)
            p.grad = (acc + noise) / len(indices)
        self.opt.step()
        return total


def private_configs(tok, examples) -> dict:
    from distildp.lm.training import collate_lm, lm_loss_per_sequence

    def collate(exs):
        return collate_lm(exs, tok.pad_token_id)

    return {
        "eager": PrivateStep(model("tiny-teacher", tok, False), eager_lm_loss, collate),
        "+ gelu kernel": PrivateStep(model("tiny-teacher", tok, True), eager_lm_loss, collate),
        "+ fused loss": PrivateStep(model("tiny-teacher", tok, True), lm_loss_per_sequence, collate),
    }


# ------------------------------------------------------------------------------------------------ evaluation
def eager_perplexity(m, tok, texts, batch_size=16):
    """Perplexity as the suite computed it before, one document a window: windows in document order, 16 a batch,
    the whole (B, T, V) logits, a float64 log-softmax row by row."""
    from distildp.lm.models import encode_plain

    documents = [ex["input_ids"] for ex in encode_plain(tok, texts, 128)]  # [eos] text [eos]: all but the first scored
    nll, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(documents), batch_size):
            chunk = documents[i : i + batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, ids in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            positions = torch.arange(width).repeat(len(chunk), 1)
            logits = m(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
            for row, ids in enumerate(chunk):
                log_probs = torch.log_softmax(logits[row, : len(ids) - 1].double(), -1)
                nll -= log_probs.gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
                n += len(ids) - 1
    return nll, n


def evaluate_configs(tok, texts, compile_body: bool = False):
    """The perplexity of `texts` by each configuration (a function of no arguments returning (nats, tokens));
    with `compile_body`, also the last one with the teacher's body under torch.compile."""
    from distildp.lm.evaluate import perplexity

    old, new = model("tiny-teacher", tok, False).eval(), model("tiny-teacher", tok, True).eval()

    def scored(m):
        result = perplexity(m, tok, texts, per_document=True, progress=False)
        return result.nll_sum, result.n_tokens

    configs = {
        "eager": lambda: eager_perplexity(old, tok, texts),
        "+ gelu kernel": lambda: eager_perplexity(new, tok, texts),
        "+ sorted, 64 a batch, scored rows only": lambda: scored(new),
    }
    if compile_body:
        body_compiled = compiled_body(model("tiny-teacher", tok, True).eval())
        configs["compiled"] = lambda: scored(body_compiled)
    return configs


def compiled_body(m):
    """`m` with its GPT-2 body under torch.compile (dynamic shapes: windows vary in length); evaluation applies the
    output layer itself, on the scored rows only."""
    m.base_model.compile(dynamic=True)
    return m


# ------------------------------------------------------------------------------------------------ measuring
def measure(configs: dict, run, rounds: int, workload: str, unit: str, first_call: dict | None = None) -> list[dict]:
    """Every configuration once per round, in turn; `run(name, config)` returns seconds per `unit`."""
    times = {name: [] for name in configs}
    for _ in range(rounds):
        for name, config in configs.items():
            times[name].append(run(name, config))
    base = times[next(iter(configs))]
    rows = []
    for name, seconds in times.items():
        ratios = [b / s for b, s in zip(base, seconds)]
        rows.append(
            {
                "workload": workload,
                "config": name,
                "unit": unit,
                "seconds": statistics.median(seconds),
                "per_second": 1 / statistics.median(seconds),
                "speedup": statistics.median(base) / statistics.median(seconds),
                "speedup_min": min(ratios),
                "speedup_max": max(ratios),
                "first_call_s": (first_call or {}).get(name, ""),
                "rounds": rounds,
            }
        )
    return rows


def timed_steps(step, examples, batches, warmup: int = 2) -> float:
    for indices in batches[:warmup]:
        step(examples, indices)
    start = time.perf_counter()
    for indices in batches[warmup:]:
        step(examples, indices)
    return (time.perf_counter() - start) / (len(batches) - warmup)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration and round")
    parser.add_argument("--dp-steps", type=int, default=2, help="timed DP-SGD steps (logical batches of 1,000)")
    parser.add_argument("--only", choices=("pretrain", "distill", "private", "evaluate"), action="append")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (a minute or more of compiling)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as each of the grid's jobs
    from transformers.trainer_pt_utils import get_length_grouped_indices

    tok, pretrain_ex, distill_ex, test_texts = data()
    workloads = args.only or ["pretrain", "distill", "private", "evaluate"]
    g = torch.Generator().manual_seed(0)
    rows = []
    steps = args.steps + 2
    if "pretrain" in workloads:
        batches = [torch.randperm(len(pretrain_ex), generator=g)[:32].tolist() for _ in range(steps)]
        for preset in ("tiny-student", "tiny-teacher"):
            configs = pretrain_configs(tok, pretrain_ex, preset)
            first = {}
            if not args.no_compile:
                configs["compiled"] = compiled(pretrain_configs(tok, pretrain_ex, preset)["+ fused adamw"])
                start = time.perf_counter()
                configs["compiled"](pretrain_ex, batches[0])
                first["compiled"] = round(time.perf_counter() - start, 1)
            rows += measure(
                configs,
                lambda name, step: timed_steps(step, pretrain_ex, batches),
                args.rounds,
                f"pretrain {preset}",
                "step of 32",
                first,
            )
            print(rows[-1])
    if "distill" in workloads:
        from distildp.lm.models import build_model

        teacher = build_model("tiny-teacher", tok, seed=1).eval()
        lengths = [len(ex["input_ids"]) for ex in distill_ex]
        order = get_length_grouped_indices(lengths, 64, generator=g)
        batches = [order[i : i + 64] for i in range(0, 64 * steps, 64)]
        configs, reads = distill_configs(tok, distill_ex, teacher)
        first = {}
        if not args.no_compile:
            configs["compiled"] = compiled(distill_configs(tok, distill_ex, teacher)[0]["+ probs cache"])
            reads["compiled"] = reads["+ probs cache"]
            start = time.perf_counter()
            configs["compiled"](reads["compiled"], batches[0])
            first["compiled"] = round(time.perf_counter() - start, 1)
        try:
            configs["2 stacked (vmap), per student"] = stacked_students(tok, teacher, lengths)
            reads["2 stacked (vmap), per student"] = reads["eager"]
        except Exception as err:  # noqa: BLE001 - reported, not fatal: the benchmark says what did not run
            print(f"vmap: {type(err).__name__}: {err}")

        def run(name, step):
            seconds = timed_steps(step, reads[name], batches)
            return seconds / 2 if name.startswith("2 stacked") else seconds

        rows += measure(configs, run, args.rounds, "distill tiny-student", "step of 64", first)
    if "private" in workloads:
        private_ex = private_examples(tok)
        lengths = [len(ex["input_ids"]) for ex in private_ex]
        logical = [torch.randperm(len(private_ex), generator=g)[:1000].tolist() for _ in range(args.dp_steps + 1)]
        batches = [sorted(indices, key=lengths.__getitem__) for indices in logical]
        rows += measure(
            private_configs(tok, private_ex),
            lambda name, step: timed_steps(step, private_ex, batches, warmup=1),
            args.rounds,
            "DP-SGD tiny-teacher",
            "step of 1,000",
        )
    if "evaluate" in workloads:
        configs = evaluate_configs(tok, test_texts, compile_body=not args.no_compile)
        first = {}
        if "compiled" in configs:
            start = time.perf_counter()
            configs["compiled"]()
            first["compiled"] = round(time.perf_counter() - start, 1)

        def run(name, fn):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        rows += measure(configs, run, args.rounds, "evaluate tiny-teacher", f"{len(test_texts)} documents", first)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(
            f"{row['workload']:24} {row['config']:34} {row['seconds'] * 1000:9.1f} ms  x{row['speedup']:.2f} "
            f"({row['speedup_min']:.2f}-{row['speedup_max']:.2f}) {row['first_call_s']}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
