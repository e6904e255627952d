"""The same primitives on every device torch sees: CPU always, a CUDA GPU when there is one (`pytest -m gpu`).

GPU results are compared with CPU references computed here, so a GPU run checks device placement, noise
generation and evaluation on the GPU, not just that nothing crashes.
"""

import math

import pytest
import torch

from distildp.core.artifacts import ArtifactStore
from distildp.core.methods import METHODS
from distildp.data.corpus import control_prefix
from distildp.distill.generate import generate_synthetic
from distildp.distill.synthetic_store import load_synthetic
from distildp.lm.evaluate import perplexity
from distildp.lm.models import build_model, train_tokenizer
from distildp.lm.sampling import GenerationConfig
from distildp.pipeline import Pipeline
from distildp.pipeline.settings import make_settings

from helpers import (
    CODES,
    COLUMNS,
    make_examples,
    one_step,
    params,
    poisson_batch,
    reference_step,
    seeded_privacy,
    tiny_model,
)

TEXTS_FOR_CODES = [control_prefix(c) for c in CODES]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_clipped_step_matches_hand_clipping_on_the_cpu(device):
    examples, batch_size, seed, clip = make_examples(24, seed=5), 6, 3, 0.05
    batch = poisson_batch(len(examples), batch_size / len(examples), seed)
    expected = reference_step(tiny_model(), examples, batch, batch_size, clip=clip)  # CPU reference
    model = tiny_model().to(device)
    one_step(model, examples, batch_size, seeded_privacy(noise_multiplier=0.0, max_grad_norm=clip), seed=seed)
    for name, value in params(model).items():
        torch.testing.assert_close(value.cpu(), expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_noise_has_the_calibrated_scale(device):
    """With a tiny clipping norm the update is almost pure noise: N(0, (sigma * C / B)^2) per coordinate."""
    sigma, clip, batch_size, lr = 2.0, 1.0, 6, 1.0
    model = tiny_model().to(device)
    before = params(model)
    report = one_step(
        model, make_examples(24, seed=8), batch_size, seeded_privacy(noise_multiplier=sigma, max_grad_norm=clip), lr=lr
    )
    update = torch.cat([(before[n] - v).flatten() for n, v in params(model).items()]).double().cpu()
    expected = lr * sigma * clip / batch_size
    # the clipped gradients add at most lr * B_actual * C / B in norm, spread over ~30k coordinates
    assert update.numel() > 20_000
    assert abs(update.std().item() / expected - 1) < 0.03
    assert abs(update.mean().item()) < 4 * expected / math.sqrt(update.numel())
    assert report.steps == 1 and report.privacy_record()["noise_multiplier"] == sigma


@pytest.mark.parametrize("device", DEVICES)
def test_perplexity_does_not_depend_on_the_device(device):
    tok = _tokenizer()
    model = build_model("tiny-student", tok, seed=0, n_embd=16, n_layer=1, n_head=2)
    texts = ["the food was great", "slow service and a dirty room", "friendly staff"]
    reference = perplexity(model, tok, texts, per_document=True, progress=False)
    got = perplexity(model.to(device), tok, texts, per_document=True, progress=False)
    assert got.n_tokens == reference.n_tokens
    assert got.ppl == pytest.approx(reference.ppl, rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_generation_is_seeded_on_the_device(device, tmp_path):
    tok = _tokenizer()
    model = build_model("tiny-student", tok, seed=1, n_embd=16, n_layer=1, n_head=2).to(device).eval()
    cfg = GenerationConfig(max_length=72, batch_size=4, chunk_size=5)
    runs = []
    for name in ("a", "b"):
        generate_synthetic(
            model, tok, list(zip(CODES, (3, 0, 4))), tmp_path / name, cfg, seed=7, progress=False, code_columns=COLUMNS
        )
        runs.append(load_synthetic(tmp_path / name))
    assert runs[0]["text"].tolist() == runs[1]["text"].tolist() and len(runs[0]) == 7


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_pipeline_on_the_gpu_spends_the_same_budget(tmp_path):
    """Every method end to end on the GPU (smoke profile): same plan as on the CPU, models on the GPU."""
    gpu = Pipeline(make_settings("smoke", {"device": "cuda"}), ArtifactStore(tmp_path), progress=False)
    cpu = Pipeline(make_settings("smoke", {"device": "cpu"}), ArtifactStore(tmp_path / "cpu"), progress=False)
    for method in METHODS:
        row = gpu.run(method, 4.0, seed=0)
        first_release = next(iter(cpu.plan(method, 4.0).noise_multipliers().values()))
        assert row["noise_multiplier"] == pytest.approx(first_release, rel=1e-12)
        assert 0.95 * 4.0 < row["epsilon_spent"] <= 4.0 + 0.01
        assert row["floor"] < row["student_ppl"] < math.inf
    assert {a.manifest["extra"]["device"] for a in gpu.store.list("private_teacher")} == {"cuda"}


def _tokenizer():
    words = "the food was great terrible service room car repair slow friendly staff clean dirty and a".split()
    return train_tokenizer(
        TEXTS_FOR_CODES + [" ".join(words[i:] + words[:i]) for i in range(len(words))], vocab_size=300
    )
