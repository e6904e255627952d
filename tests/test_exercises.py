"""The autograded exercises: solutions pass every check, the student versions fail every one, the usual wrong
answers get their targeted message, and `make exercises` / `make grade` score a folder of submissions."""

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from distildp.dp import calibration, privacy
from distildp.teaching import dp_exercises, grading, model_exercises
from distildp.teaching.exercises import ExerciseError
from distildp.teaching.grading import questions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
QUESTIONS = {q.name: q for name in grading.EXERCISE_NOTEBOOKS for q in questions(NOTEBOOKS / f"{name}.ipynb")}
AUTOGRADED = sorted(name for name, q in QUESTIONS.items() if not q.manual)


def test_the_seven_exercises_are_in_the_teaching_notebooks():
    assert AUTOGRADED == [
        "q1_dp_sgd_step",
        "q2_accountant",
        "q3_dp_histogram",
        "q4_top_k_top_p",
        "q5_kd_loss",
        "q6_floor",
        "q7_results_verdict",
    ]
    assert QUESTIONS["q7_results_written"].manual
    for name in AUTOGRADED:
        q = QUESTIONS[name]
        assert q.public_tests and q.hidden_tests, f"{name} needs public checks and hidden grading checks"
        assert all("hidden=True" in t for t in q.hidden_tests) and not any("hidden=True" in t for t in q.public_tests)


@pytest.mark.parametrize("name", AUTOGRADED)
def test_solution_passes_every_check(name):
    outcome = grading.run_question(QUESTIONS[name], QUESTIONS[name].solution, hidden=True)
    assert all(error is None for error in outcome.values()), outcome


@pytest.mark.parametrize("name", AUTOGRADED)
def test_student_version_as_shipped_fails_every_check(name):
    q = QUESTIONS[name]
    assert "BEGIN SOLUTION" not in q.student_solution() and "..." in q.student_solution()
    outcome = grading.run_question(q, q.student_solution(), hidden=True)
    assert all(error and "replace the `...`" in error for error in outcome.values()), outcome


# ------------------------------------------------------------------------------ one wrong answer each
def _solution(name: str) -> dict:
    """The namespace of a question's solution cell (the right functions, to build wrong ones from)."""
    namespace = {}
    exec(QUESTIONS[name].solution, namespace)
    return namespace


def batch_gradient_per_example(model, inputs, targets):
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(inputs), targets), params)
    return torch.cat([g.flatten() for g in grads]).expand(len(inputs), -1)


def fixed_size_batch(n_examples, sample_rate, generator):
    return torch.randperm(n_examples, generator=generator)[: round(n_examples * sample_rate)].tolist()


def clip_the_batch_gradient(grads, clip, noise_multiplier, expected_batch_size, generator):
    total = grads.sum(0)
    total = total * min(1.0, clip / (total.norm().item() + 1e-6))
    return (
        total + torch.normal(0.0, noise_multiplier * clip, size=total.shape, generator=generator, dtype=total.dtype)
    ) / expected_batch_size


def divide_by_actual_size(grads, clip, noise_multiplier, expected_batch_size, generator):
    right = _solution("q1_dp_sgd_step")["noisy_step"]
    step = right(grads, clip, noise_multiplier, expected_batch_size, generator)
    return step * expected_batch_size / max(len(grads), 1)


def noise_std_sigma(grads, clip, noise_multiplier, expected_batch_size, generator):
    right = _solution("q1_dp_sgd_step")["noisy_step"]
    clean = right(grads, clip, 0.0, expected_batch_size, generator)
    return (
        clean
        + torch.normal(0.0, noise_multiplier, size=clean.shape, generator=generator, dtype=clean.dtype)
        / expected_batch_size
    )


def noise_per_example(grads, clip, noise_multiplier, expected_batch_size, generator):
    right = _solution("q1_dp_sgd_step")["noisy_step"]
    clean = right(grads, clip, 0.0, expected_batch_size, generator)
    noise = torch.normal(0.0, noise_multiplier * clip, size=grads.shape, generator=generator, dtype=grads.dtype)
    return clean + noise.sum(0) / expected_batch_size


def sigma_too_small(epsilon, delta, sample_rate, steps, accountant="prv"):
    return 0.9 * calibration.calibrate_noise(epsilon, delta, sample_rate, steps, accountant)


def sum_of_epsilons(teacher_sigma, sample_rate, steps, histogram_sigma, delta, accountant="prv"):
    return privacy.epsilon_spent(
        [privacy.DPSGDMechanism(teacher_sigma, sample_rate, steps)], delta, accountant
    ) + privacy.epsilon_spent([privacy.GaussianMechanism(histogram_sigma)], delta, accountant)


def one_over_n(n):
    return 1 / n


def histogram_of_observed_codes(counts, keys, total, noise_multiplier, seed):
    observed = [k for k in keys if counts.get(k, 0) > 0] or list(keys)
    return _solution("q3_dp_histogram")["dp_histogram_by_hand"](counts, observed, total, noise_multiplier, seed)


def histogram_without_noise(counts, keys, total, noise_multiplier, seed):
    return _solution("q3_dp_histogram")["dp_histogram_by_hand"](counts, keys, total, 1e-12, seed)


def top_k_not_renormalised(logits, top_k, top_p, temperature):
    probs = (logits / temperature).softmax(-1)
    if top_k:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
    return probs


def top_p_before_temperature(logits, top_k, top_p, temperature):
    right = _solution("q4_top_k_top_p")["sampling_distribution"]
    kept = right(logits, top_k, top_p, 1.0) > 0
    probs = (logits / temperature).softmax(-1) * kept
    return probs / probs.sum(-1, keepdim=True)


def _kd(mistake: str):
    def loss(student_logits, teacher_logits, targets, loss_mask, lam, temperature):
        return model_exercises.kd_variant(student_logits, teacher_logits, targets, loss_mask, lam, temperature, mistake)

    return loss


def floor_without_closing_eos(source, tokenizer, texts, codes=None, categories=None):
    right = _solution("q6_floor")["floor_by_hand"]
    n = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return right(source, tokenizer, texts, codes, categories) ** ((n + len(texts)) / n)


def floor_over_every_category(source, tokenizer, texts, codes=None, categories=None):
    return _solution("q6_floor")["floor_by_hand"](source, tokenizer, texts, codes, None)


def verdict_with_one_std(table, epsilon):
    right = _solution("q7_results_verdict")["verdict"]
    answer = right(table, epsilon)
    main = table[(table["kind"] == "main") & (table["epsilon"] == epsilon)]
    noise = main.groupby("method")["student_ppl"].std(ddof=1).max()
    answer["result"] = "WIN" if -answer["margin"] > noise else "LOSS" if answer["margin"] > noise else "TIE"
    return answer


def verdict_with_flipped_margin(table, epsilon):
    answer = _solution("q7_results_verdict")["verdict"](table, epsilon)
    return {**answer, "margin": -answer["margin"]}


WRONG_ANSWERS = [
    ("per_example_gradients", batch_gradient_per_example, "every row is the batch's gradient"),
    ("poisson_batch", fixed_size_batch, "fixed-size batch, not a Poisson one"),
    ("noisy_step", clip_the_batch_gradient, "you clipped the batch gradient, not each example's"),
    ("noisy_step", divide_by_actual_size, "not by the expected batch size qN"),
    ("noisy_step", noise_std_sigma, "not σ·C"),
    ("noisy_step", noise_per_example, "add the noise once"),
    ("sigma_for_epsilon", sigma_too_small, "> the target"),
    ("composed_epsilon", sum_of_epsilons, "you added the two epsilons"),
    ("default_delta", one_over_n, "publishes one whole record at random"),
    ("dp_histogram_by_hand", histogram_of_observed_codes, "missing from your histogram"),
    ("dp_histogram_by_hand", histogram_without_noise, "exact histogram"),
    ("sampling_distribution", top_k_not_renormalised, "renormalise over the tokens kept"),
    ("sampling_distribution", top_p_before_temperature, "before applying the temperature"),
    ("distillation_loss", _kd("t_squared"), "not multiplied by t²"),
    ("distillation_loss", _kd("batch_mean"), "its OWN scored"),
    ("distillation_loss", _kd("ignore_mask"), "padding positions count"),
    ("distillation_loss", _kd("ce_at_t"), "the CE is at temperature 1"),
    ("distillation_loss", _kd("reverse_kl"), "KL is reversed"),
    ("distillation_loss", _kd("one_minus_lam"), "not weighted by (1 − λ)"),
    ("floor_by_hand", floor_without_closing_eos, "closing <|endoftext|>"),
    ("floor_by_hand", floor_over_every_category, "you summed the codes over every category"),
    ("verdict", verdict_with_one_std, "twice the largest seed std"),
    ("verdict", verdict_with_flipped_margin, "wrong sign"),
]


# the function each exercise asks for -> the check its test cells call
CHECKS = {
    "per_example_gradients": dp_exercises.check_per_example_gradients,
    "poisson_batch": dp_exercises.check_poisson_batch,
    "noisy_step": dp_exercises.check_noisy_step,
    "sigma_for_epsilon": dp_exercises.check_sigma_for_epsilon,
    "composed_epsilon": dp_exercises.check_composed_epsilon,
    "default_delta": dp_exercises.check_default_delta,
    "dp_histogram_by_hand": dp_exercises.check_dp_histogram,
    "sampling_distribution": model_exercises.check_sampling_distribution,
    "distillation_loss": model_exercises.check_kd_loss,
    "floor_by_hand": model_exercises.check_floor,
    "verdict": model_exercises.check_verdict,
}


@pytest.mark.parametrize(
    "function, wrong, message",
    WRONG_ANSWERS,
    ids=[w[1].__name__ if hasattr(w[1], "__name__") else w[0] for w in WRONG_ANSWERS],
)
def test_wrong_answer_gets_its_targeted_message(function, wrong, message):
    with pytest.raises(ExerciseError) as caught:
        CHECKS[function](wrong, hidden=True)
    assert message in str(caught.value), str(caught.value)


def test_each_exercise_has_a_wrong_answer_tested():
    functions_by_question = {
        "q1_dp_sgd_step": {"per_example_gradients", "poisson_batch", "noisy_step"},
        "q2_accountant": {"sigma_for_epsilon", "composed_epsilon", "default_delta"},
        "q3_dp_histogram": {"dp_histogram_by_hand"},
        "q4_top_k_top_p": {"sampling_distribution"},
        "q5_kd_loss": {"distillation_loss"},
        "q6_floor": {"floor_by_hand"},
        "q7_results_verdict": {"verdict"},
    }
    assert set(functions_by_question) == set(AUTOGRADED)
    assert set().union(*functions_by_question.values()) == {w[0] for w in WRONG_ANSWERS} == set(CHECKS)
    # every check the library has is in CHECKS, and the notebooks' test cells call it on that function
    library = {
        f for module in (dp_exercises, model_exercises) for n, f in vars(module).items() if n.startswith("check_")
    }
    assert set(CHECKS.values()) == library
    test_cells = [t for q in QUESTIONS.values() for t in q.public_tests + q.hidden_tests]
    for function, check in CHECKS.items():
        assert any(f"{check.__name__}({function}" in t for t in test_cells), function


def test_the_empty_codes_edge_case_needs_a_clear_error():
    def no_error_for_no_codes(counts, keys, total, noise_multiplier, seed):
        return (
            {}
            if not keys
            else _solution("q3_dp_histogram")["dp_histogram_by_hand"](counts, keys, total, noise_multiplier, seed)
        )

    with pytest.raises(ExerciseError, match="must raise ValueError"):
        dp_exercises.check_dp_histogram(no_error_for_no_codes, hidden=True)


def test_references_agree_with_transformers_warpers():
    logits = 2 * torch.randn(4, 30, generator=torch.Generator().manual_seed(0))
    for setting in [(5, 0.9, 1.0), (0, 0.8, 2.0), (10, 0.7, 0.5), (1, 1.0, 1.0)]:
        torch.testing.assert_close(
            model_exercises.reference_sampling_distribution(logits, *setting),
            model_exercises.transformers_sampling_distribution(logits, *setting),
        )


def test_verdict_reference_reads_the_committed_table():
    from distildp.reporting import results

    table = results.read_csv(model_exercises.committed_results_table())
    answer = model_exercises.reference_verdict(table, 2.0)
    main = table[(table["kind"] == "main") & (table["epsilon"] == 2.0)]
    means = main.groupby("method")["student_ppl"].mean()
    assert answer["best_baseline"] == min(results.BASELINES, key=lambda m: means[m])
    assert math.isclose(answer["margin"], means["distildp"] - means[answer["best_baseline"]])
    # the changed tables the hidden check uses cover all three outcomes
    outcomes = [model_exercises.reference_verdict(t, 2.0)["result"] for t in model_exercises.shifted_tables(table)]
    assert sorted(outcomes) == ["LOSS", "TIE", "WIN"]


# ------------------------------------------------------------------------------ build and grade, the pieces
def test_strip_solution_keeps_the_signature_and_replaces_the_body():
    source = 'def f(x):\n    """doc"""\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n'
    assert grading.strip_solution(source) == 'def f(x):\n    """doc"""\n    ...'
    with pytest.raises(ValueError, match="no '# END SOLUTION'"):
        grading.strip_solution("# BEGIN SOLUTION\nx = 1\n")


def test_grading_copy_ignores_every_code_cell_outside_the_questions():
    nb = grading.grading_copy(NOTEBOOKS / "05_distillation.ipynb")
    inside, seen = False, {"ignored": 0, "graded": 0}
    for cell in nb.cells:
        marker = grading.otter_marker(cell)
        if marker in ("# BEGIN QUESTION", "# END QUESTION"):
            inside = marker == "# BEGIN QUESTION"
        elif cell.cell_type == "code":
            ignored = grading.IGNORE_TAG in cell.metadata.get("tags", [])
            assert ignored != inside
            seen["ignored" if ignored else "graded"] += 1
    assert seen["ignored"] >= 5 and seen["graded"] >= 1
    assert "parameters" in nb.cells[[c.cell_type for c in nb.cells].index("code")].metadata["tags"]


def test_scores_are_read_per_question_from_otter_results():
    results = {
        "tests": [
            {"name": "Public Tests", "status": "failed", "output": "..."},
            {"name": "q1_dp_sgd_step", "score": 1.5, "max_score": 3.0},
            {"name": "q2_accountant", "score": 0, "max_score": 3.0},
        ]
    }
    assert grading.scores_from_results(results) == {"q1_dp_sgd_step": 1.5, "q2_accountant": 0.0}


def test_submissions_are_matched_to_their_assignment(tmp_path):
    zips = {
        "ex02_dp_sgd": tmp_path / "02_dp_sgd-autograder.zip",
        "ex05_distillation": tmp_path / "05_distillation-autograder.zip",
    }
    by_metadata = tmp_path / "anything.ipynb"
    by_metadata.write_text(json.dumps({"metadata": {"otter": {"assignment_name": "ex05_distillation"}}, "cells": []}))
    assert grading.autograder_for(by_metadata, zips) == zips["ex05_distillation"]
    by_name = tmp_path / "02_dp_sgd_alice.ipynb"
    by_name.write_text("{}")
    assert grading.autograder_for(by_name, zips) == zips["ex02_dp_sgd"]
    stranger = tmp_path / "homework.ipynb"
    stranger.write_text("{}")
    assert grading.autograder_for(stranger, zips) is None


def test_grade_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        grading.grade(tmp_path / "nope", tmp_path, tmp_path / "g.csv")
    with pytest.raises(FileNotFoundError, match="run `make exercises` first"):
        grading.grade(tmp_path, tmp_path, tmp_path / "g.csv")


# ------------------------------------------------------------------------------ the real thing (minutes)
def _submissions(built: Path, folder: Path) -> None:
    """perfect: the solution notebooks; blank: the student notebooks as shipped; half: 02 with exercise 1 only."""
    for who in ("perfect", "blank", "half"):
        (folder / who).mkdir(parents=True)
    for name in ("02_dp_sgd", "05_distillation"):
        shutil.copy(built / "solutions" / f"{name}.ipynb", folder / "perfect")
        shutil.copy(built / "student" / f"{name}.ipynb", folder / "blank")
    half = nbformat.read(built / "student" / "02_dp_sgd.ipynb", as_version=4)
    cell = next(c for c in half.cells if c.cell_type == "code" and "def per_example_gradients" in c.source)
    assert "..." in cell.source and "torch.autograd.grad" not in cell.source  # shipped without the answer
    cell.source = QUESTIONS["q1_dp_sgd_step"].solution.strip()
    nbformat.write(half, folder / "half" / "02_dp_sgd.ipynb")


@pytest.mark.slow
def test_make_exercises_then_make_grade(tmp_path):
    built = tmp_path / "exercises"
    subprocess.run(["make", "exercises", f"EXERCISES={built}"], cwd=ROOT, check=True)
    for name in grading.EXERCISE_NOTEBOOKS:
        student = (built / "student" / f"{name}.ipynb").read_text()
        assert "BEGIN SOLUTION" not in student and "grader.check(" in student
        assert (built / "autograder" / f"{name}-autograder.zip").exists()
    _submissions(built, tmp_path / "submissions")
    grades = tmp_path / "grades.csv"
    subprocess.run(
        ["make", "grade", f"EXERCISES={built}", f"SUBMISSIONS={tmp_path / 'submissions'}", f"GRADES={grades}"],
        cwd=ROOT,
        check=True,
    )
    rows = {row["submission"]: row for row in csv.DictReader(grades.open())}
    assert sorted(rows) == [
        "blank/02_dp_sgd.ipynb",
        "blank/05_distillation.ipynb",
        "half/02_dp_sgd.ipynb",
        "perfect/02_dp_sgd.ipynb",
        "perfect/05_distillation.ipynb",
    ]
    expected = {
        "perfect/02_dp_sgd.ipynb": (3, 3, 6),
        "blank/02_dp_sgd.ipynb": (0, 0, 0),
        "half/02_dp_sgd.ipynb": (3, 0, 3),
    }
    for submission, (q1, q2, total) in expected.items():
        row = rows[submission]
        assert (float(row["q1_dp_sgd_step"]), float(row["q2_accountant"]), float(row["total"])) == (q1, q2, total), row
        assert float(row["possible"]) == 6 and not row["error"]
    assert float(rows["perfect/05_distillation.ipynb"]["q5_kd_loss"]) == 2
    assert float(rows["blank/05_distillation.ipynb"]["q5_kd_loss"]) == 0


def test_dp_sgd_references_agree_with_opacus():
    """The references exercise 1 is graded against are what the library's DP-SGD (Opacus) computes."""
    from opacus import GradSampleModule
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    inputs, targets = torch.randn(6, 5), torch.randint(0, 3, (6,))
    expected = dp_exercises.reference_per_example_gradients(model, inputs, targets)
    sampled = GradSampleModule(model, loss_reduction="sum")  # so each row is that example's own gradient
    F.cross_entropy(sampled(inputs), targets, reduction="sum").backward()
    opacus_rows = torch.cat([p.grad_sample.flatten(1) for p in sampled.parameters()], dim=1)
    torch.testing.assert_close(opacus_rows, expected)
    for seed in range(5):
        sampler = UniformWithReplacementSampler(
            num_samples=24, sample_rate=0.25, generator=torch.Generator().manual_seed(seed)
        )
        assert sorted(next(iter(sampler))) == dp_exercises.reference_poisson_batch(
            24, 0.25, torch.Generator().manual_seed(seed)
        )
