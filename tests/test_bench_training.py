"""benchmarks/bench_training.py runs its workloads and writes one row per configuration, each against its eager one."""

import csv

import pytest
import torch

import bench_training


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_evaluation_workload_times_every_configuration_against_eager(tmp_path):
    out = tmp_path / "training.csv"
    bench_training.main(["--only", "evaluate", "--rounds", "1", "--no-compile", "--out", str(out)])
    rows = read_rows(out)
    assert [row["config"] for row in rows] == ["eager", "+ gelu kernel", "+ sorted, 64 a batch, scored rows only"]
    assert float(rows[0]["speedup"]) == 1.0
    assert all(float(row["seconds"]) > 0 and row["workload"] == "evaluate tiny-teacher" for row in rows)


@pytest.mark.slow
def test_every_workload_runs_one_round(tmp_path):
    out = tmp_path / "training.csv"
    bench_training.main(["--rounds", "1", "--steps", "1", "--dp-steps", "1", "--no-compile", "--out", str(out)])
    workloads = {row["workload"] for row in read_rows(out)}
    assert workloads == {
        "pretrain tiny-student",
        "pretrain tiny-teacher",
        "distill tiny-student",
        "DP-SGD tiny-teacher",
        "evaluate tiny-teacher",
    }


# ------------------------------------------------------------------------------------------------ parity
# The benchmark's faster configurations must compute the step they are compared with: the same loss and, after one
# AdamW step (lr 1e-4), the same weights. Float32 sums in another order differ by ~1e-6 relative; Adam's first step
# moves each weight by at most lr, so 2e-6 on weights bounds a step that went the same way.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 2e-6


@pytest.fixture(scope="module")
def shapes():
    """The embedded default's tokenizer with a few pretraining and distillation examples of its lengths."""
    tok, pretrain, distill, _ = bench_training.data(n_eval=0)
    return tok, pretrain[:24], distill[:24]


def _weights_equal(a, b):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=WEIGHT_ATOL, msg=lambda m, name=name: f"{name}: {m}")


def test_two_vmapped_students_equal_the_students_trained_one_by_one(shapes):
    from distildp.lm.models import build_model

    tok, _, examples = shapes
    teacher = build_model("tiny-teacher", tok, seed=1).eval()
    reads = bench_training.distill_configs(tok, examples, teacher)[1]["+ gelu kernel"]
    indices = list(range(len(examples)))

    def trained_alone(start):
        """The configuration whose loss the stacked step computes, from `start`'s weights."""
        step = bench_training.distill_configs(tok, examples, teacher)[0]["+ gelu kernel"]
        step.m.load_state_dict(start.state_dict())
        return step.m, step(reads, indices)

    starts = [build_model("tiny-student", tok, seed=s) for s in (3, 4)]  # two students that differ
    stacked = bench_training.StackedStudents(tok, teacher, [len(ex["input_ids"]) for ex in examples], starts)
    losses = stacked(reads, indices)
    for k, start in enumerate(starts):
        trained, loss = trained_alone(start)
        torch.testing.assert_close(losses[k], loss, rtol=LOSS_RTOL, atol=0)
        for name, param in trained.named_parameters():
            torch.testing.assert_close(stacked.params[name][k], param, rtol=0, atol=WEIGHT_ATOL, msg=name)


def _compiled_equals_eager(make, examples, indices):
    eager, compiled = make(), bench_training.compiled(make())
    compiled.m.load_state_dict(eager.m.state_dict())
    for _ in range(2):  # the second step also checks the compiled graph reused with Adam's state
        torch.testing.assert_close(compiled(examples, indices), eager(examples, indices), rtol=LOSS_RTOL, atol=0)
    _weights_equal(compiled.m, eager.m)


@pytest.mark.slow
def test_the_compiled_pretraining_step_equals_the_eager_step(shapes):
    tok, examples, _ = shapes
    _compiled_equals_eager(
        lambda: bench_training.pretrain_configs(tok, examples, "tiny-student")["+ fused adamw"],
        examples,
        list(range(24)),
    )


@pytest.mark.slow
def test_the_compiled_distillation_step_equals_the_eager_step(shapes):
    from distildp.lm.models import build_model

    tok, _, examples = shapes
    teacher = build_model("tiny-teacher", tok, seed=1).eval()
    configs, reads = bench_training.distill_configs(tok, examples, teacher)
    _compiled_equals_eager(
        lambda: bench_training.distill_configs(tok, examples, teacher)[0]["+ probs cache"],
        reads["+ probs cache"],
        list(range(24)),
    )


@pytest.mark.slow
def test_the_compiled_evaluation_equals_the_eager_evaluation(shapes):
    """Perplexity with the model's body compiled: the same scored tokens and, to float32's rounding of the hidden
    states, the same nats (the log-normaliser is float64 in both)."""
    tok = shapes[0]
    texts = bench_training.data(n_eval=40)[3]
    configs = bench_training.evaluate_configs(tok, texts, compile_body=True)
    eager_nats, eager_tokens = configs["+ sorted, 64 a batch, scored rows only"]()
    for _ in range(2):  # the second call reuses the compiled graph
        nats, tokens = configs["compiled"]()
        assert tokens == eager_tokens > 0
        assert nats == pytest.approx(eager_nats, rel=LOSS_RTOL)
