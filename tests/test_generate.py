"""Tests of distildp.distill.generate (the resumable chunk store) on a tiny random GPT-2 and a tokenizer trained
here."""

import copy
import json
import multiprocessing as mp
import os

import pandas as pd
import pytest
import torch
from transformers import GPT2LMHeadModel

import distildp.distill.generate as gen
from distildp.core.artifacts import ArtifactStore
from distildp.core.manifests import config_hash
from distildp.data.corpus import control_prefix
from distildp.distill import chunks
from distildp.distill.generate import generate_synthetic
from distildp.distill.synthetic_store import PROGRESS_FILE, load_synthetic
from distildp.lm.sampling import GenerationConfig, sample_batch

from helpers import CODES, COLUMNS, code_teacher, code_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return code_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return code_teacher(tokenizer)


def small_cfg(**kw):
    return GenerationConfig(**{"max_length": 24, "batch_size": 4, "chunk_size": 5, **kw})


def run(model, tokenizer, out_dir, counts=(3, 0, 7), seed=0, **kw):
    return generate_synthetic(
        model,
        tokenizer,
        list(zip(CODES, counts)),
        out_dir,
        small_cfg(**kw),
        seed=seed,
        progress=False,
        code_columns=COLUMNS,
    )


def test_exact_counts_labels_and_no_empty_texts(model, tokenizer, tmp_path):
    result = run(model, tokenizer, tmp_path)
    frame = load_synthetic(tmp_path)
    assert list(frame.columns) == ["text", "label_category", "label_stars"]
    assert frame.attrs["code_columns"] == COLUMNS
    got = frame.groupby(["label_category", "label_stars"]).size().to_dict()
    assert got == {("Restaurants", "5.0"): 3, ("Auto Repair", "3.0"): 7}
    assert (frame["text"].str.strip() == frame["text"]).all() and (frame["text"] != "").all()
    assert len(result.chunk_files) == 2 and result.n_samples == 10
    s = result.summary
    assert s["n_requested"] == s["n_produced"] == 10
    assert s["attempts"] == s["n_produced"] + s["dropped_empty"]
    assert [row["produced"] for row in s["per_code"]] == [3, 0, 7]
    assert s["new_tokens"] > 0 and s["sampling"]["top_k"] == 50 and s["seed"] == 0


def test_empty_outputs_are_dropped_and_regenerated(model, tokenizer, tmp_path):
    # Bias the teacher towards [eos] so that about half the first tokens end the sample at once.
    biased = GPT2LMHeadModel(model.config).eval()
    biased.load_state_dict(model.state_dict())
    biased.lm_head.register_forward_hook(
        lambda m, i, out: out + torch.nn.functional.one_hot(torch.tensor(tokenizer.eos_token_id), out.shape[-1]) * 3.0
    )
    result = run(biased, tokenizer, tmp_path, counts=(6, 6, 0), max_attempts_factor=50)
    frame = load_synthetic(tmp_path)
    assert len(frame) == 12 and (frame["text"] != "").all()
    assert result.summary["dropped_empty"] > 0
    assert result.summary["attempts"] == 12 + result.summary["dropped_empty"]


def test_gives_up_with_clear_message_when_teacher_only_emits_eos(model, tokenizer, tmp_path):
    always_eos = GPT2LMHeadModel(model.config).eval()
    always_eos.lm_head.register_forward_hook(
        lambda m, i, out: out + torch.nn.functional.one_hot(torch.tensor(tokenizer.eos_token_id), out.shape[-1]) * 1e4
    )
    with pytest.raises(RuntimeError, match="max_attempts_factor"):
        run(always_eos, tokenizer, tmp_path, counts=(2, 0, 0), max_attempts_factor=2)


def test_same_seed_same_result_other_seed_differs(model, tokenizer, tmp_path):
    run(model, tokenizer, tmp_path / "a", seed=3)
    run(model, tokenizer, tmp_path / "b", seed=3)
    run(model, tokenizer, tmp_path / "c", seed=4)
    a, b, c = (load_synthetic(tmp_path / d) for d in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a["text"].equals(c["text"])


def test_generation_leaves_global_rng_alone(model, tokenizer, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(model, tokenizer, tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_interrupted_run_resumes_to_identical_result(model, tokenizer, tmp_path, monkeypatch):
    run(model, tokenizer, tmp_path / "full", counts=(4, 5, 8))
    real_write = gen.write_chunk
    written = []

    def crash_after_two(path, frame, metadata):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated crash")
        real_write(path, frame, metadata)
        written.append(path.name)

    monkeypatch.setattr(gen, "write_chunk", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, tmp_path / "resumed", counts=(4, 5, 8))
    with pytest.raises(ValueError, match="incomplete"):
        load_synthetic(tmp_path / "resumed")
    monkeypatch.setattr(gen, "write_chunk", real_write)

    generated = []
    monkeypatch.setattr(gen, "generate_chunk", _recording(gen.generate_chunk, generated))
    result = run(model, tokenizer, tmp_path / "resumed", counts=(4, 5, 8))
    assert written == ["chunk-00000.parquet", "chunk-00001.parquet"]
    assert len(generated) == 2 and result.summary["chunks_generated_this_call"] == 2  # 4 chunks of <=5
    assert result.summary["resumed"]
    pd.testing.assert_frame_equal(load_synthetic(tmp_path / "resumed"), load_synthetic(tmp_path / "full"))
    full = run(model, tokenizer, tmp_path / "full", counts=(4, 5, 8))  # all chunks present: nothing to do
    assert full.summary["chunks_generated_this_call"] == 0
    for key in ("attempts", "dropped_empty", "new_tokens", "per_code"):
        assert result.summary[key] == full.summary[key]
    assert not list((tmp_path / "resumed").glob(".*tmp*"))


def _recording(fn, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapper


def _synthetic_stage(model, tokenizer, counts):
    """The pipeline's synthetic stage in small: generate into the store's build directory."""

    def build(out):
        return {"metrics": {"n_samples": run(model, tokenizer, out / "data", counts=counts).n_samples}}

    return build


def _crash_after(k, crash):
    """A write_chunk that writes k chunks, then calls crash()."""
    real_write, written = gen.write_chunk, []

    def write(path, frame, metadata):
        if len(written) == k:
            crash()
        real_write(path, frame, metadata)
        written.append(path.name)

    return write


def _interrupt():
    raise KeyboardInterrupt("simulated crash")


def _die():
    os._exit(3)  # no exception handler, no cleanup: as SIGKILL


@pytest.mark.parametrize("kill", ["exception", "process_killed"])
def test_store_build_of_a_killed_generation_resumes_at_the_next_chunk(model, tokenizer, tmp_path, monkeypatch, kill):
    """Killed after 2 of 4 chunks, the retried store build generates chunks 2 and 3 only, and the artifact
    holds exactly what an uninterrupted run gives."""
    monkeypatch.setenv("DISTILDP_VERIFY", "full")
    counts, config = (4, 5, 8), {"counts": [4, 5, 8]}
    run(model, tokenizer, tmp_path / "uninterrupted", counts=counts)
    store, key = ArtifactStore(tmp_path / "store"), config_hash("synthetic", config)
    stage_dir = tmp_path / "store" / "synthetic"
    if kill == "exception":
        with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
            patch.setattr(gen, "write_chunk", _crash_after(2, _interrupt))
            store.build("synthetic", config, _synthetic_stage(model, tokenizer, counts))
        assert sorted(p.name for p in (stage_dir / f".resume-{key}" / "data").glob("chunk-*")) == [
            "chunk-00000.parquet",
            "chunk-00001.parquet",
        ]
    else:

        def killed_build():
            gen.write_chunk = _crash_after(2, _die)  # in the child only
            store.build("synthetic", config, _synthetic_stage(model, tokenizer, counts))

        child = mp.get_context("fork").Process(target=killed_build)
        child.start()
        child.join(timeout=300)
        assert child.exitcode == 3
        [stale] = stage_dir.glob(f".tmp-{key}-*")  # what the store's cleanup used to delete
        assert len(list((stale / "data").glob("chunk-*"))) == 2
    generated = []
    monkeypatch.setattr(gen, "generate_chunk", _recording(gen.generate_chunk, generated))
    art = store.build("synthetic", config, _synthetic_stage(model, tokenizer, counts))
    assert len(generated) == 2
    summary = json.loads((art.path / "data" / PROGRESS_FILE).read_text())["summary"]
    assert summary["chunks_generated_this_call"] == 2 and summary["resumed"]
    pd.testing.assert_frame_equal(load_synthetic(art.path / "data"), load_synthetic(tmp_path / "uninterrupted"))
    assert not any(name.endswith(".resumable") for name in art.manifest["files"])
    assert sorted(p.name for p in stage_dir.iterdir() if p.name.startswith(".")) == [f".{key}.lock"]
    assert store.build("synthetic", config, _synthetic_stage(model, tokenizer, counts)).path == art.path  # verified


def test_kept_chunks_made_with_other_counts_are_discarded_not_refused(model, tokenizer, tmp_path, monkeypatch):
    """Under secret DP noise the retry draws another histogram, so the kept chunks do not fit: start over."""
    monkeypatch.setenv("DISTILDP_VERIFY", "full")
    store, draws = ArtifactStore(tmp_path / "store"), iter([(4, 5, 8), (6, 3, 8)])

    def build(out):
        return {"metrics": {"n_samples": run(model, tokenizer, out / "data", counts=next(draws)).n_samples}}

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(gen, "write_chunk", _crash_after(2, _interrupt))
        store.build("synthetic", {"histogram": "dp"}, build)
    with pytest.warns(UserWarning, match="different arguments.*discarding"):
        art = store.build("synthetic", {"histogram": "dp"}, build)
    run(model, tokenizer, tmp_path / "uninterrupted", counts=(6, 3, 8))
    pd.testing.assert_frame_equal(load_synthetic(art.path / "data"), load_synthetic(tmp_path / "uninterrupted"))


def test_damaged_kept_chunk_is_discarded_so_the_retry_cannot_fail_forever(model, tokenizer, tmp_path, monkeypatch):
    """Kept work that cannot be read would fail every retry the same way: it is dropped instead."""
    monkeypatch.setenv("DISTILDP_VERIFY", "full")
    store, config = ArtifactStore(tmp_path / "store"), {"counts": [4, 5, 8]}
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(gen, "write_chunk", _crash_after(2, _interrupt))
        store.build("synthetic", config, _synthetic_stage(model, tokenizer, (4, 5, 8)))
    kept = tmp_path / "store" / "synthetic" / f".resume-{config_hash('synthetic', config)}" / "data"
    chunk = kept / "chunk-00001.parquet"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.warns(UserWarning, match="chunk-00001.parquet belongs to a different run \\(or is unreadable\\)"):
        art = store.build("synthetic", config, _synthetic_stage(model, tokenizer, (4, 5, 8)))
    run(model, tokenizer, tmp_path / "uninterrupted", counts=(4, 5, 8))
    pd.testing.assert_frame_equal(load_synthetic(art.path / "data"), load_synthetic(tmp_path / "uninterrupted"))


def test_out_dir_of_another_run_is_refused(model, tokenizer, tmp_path):
    run(model, tokenizer, tmp_path, seed=0)
    with pytest.raises(ValueError, match="different arguments"):
        run(model, tokenizer, tmp_path, seed=1)


def test_chunk_plan_is_deterministic_and_exact():
    plan = chunks.plan_chunks([3, 0, 7, 2], chunk_size=5)
    assert plan == [[(0, 3), (2, 2)], [(2, 5)], [(3, 2)]]
    assert chunks.chunk_seed(0, 1) == chunks.chunk_seed(0, 1) != chunks.chunk_seed(0, 2) != chunks.chunk_seed(1, 1)


def test_default_columns_and_known_codes(model, tokenizer, tmp_path):
    result = generate_synthetic(
        model,
        tokenizer,
        [(CODES[0], 2)],
        tmp_path,
        small_cfg(),
        progress=False,
        known_codes={"Business Category": ["Restaurants"], "Review Stars": ["5.0"]},
    )
    assert result.code_columns == {"business_category": "Business Category", "review_stars": "Review Stars"}
    assert list(load_synthetic(tmp_path).columns) == ["text", "business_category", "review_stars"]


@pytest.mark.parametrize(
    "counts, message",
    [
        ([(CODES[0], 0), (CODES[1], 0)], "0 samples"),
        ([], "0 samples"),
        ([(CODES[0], -1)], "negative"),
        ([(CODES[0], 2.5)], "integers"),
        ([(CODES[0], 1), (CODES[0], 1)], "twice"),
        ([(CODES[0], 1), ({"Business Category": "Hotels"}, 1)], "same fields"),
    ],
)
def test_bad_counts(model, tokenizer, tmp_path, counts, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic(model, tokenizer, counts, tmp_path, small_cfg(), progress=False)


def test_unknown_codes_and_plain_text_teacher(model, tokenizer, tmp_path):
    counts = [(CODES[0], 1)]
    with pytest.raises(ValueError, match="unknown control codes"):
        generate_synthetic(
            model, tokenizer, counts, tmp_path, small_cfg(), progress=False, known_codes=["Category", "Stars"]
        )
    with pytest.raises(ValueError, match="unknown control code Review Stars"):
        generate_synthetic(
            model,
            tokenizer,
            counts,
            tmp_path,
            small_cfg(),
            progress=False,
            known_codes={"Business Category": ["Restaurants"], "Review Stars": ["1.0"]},
        )
    with pytest.raises(ValueError, match="without control codes"):
        generate_synthetic(model, tokenizer, counts, tmp_path, small_cfg(), progress=False, trained_with_codes=False)
    plain = GPT2LMHeadModel(copy.deepcopy(model.config))  # own config: we mark it below
    plain.config.distildp_control_codes = []  # what the pipeline records on a plain-text teacher
    with pytest.raises(ValueError, match="without control codes"):
        generate_synthetic(plain, tokenizer, counts, tmp_path, small_cfg(), progress=False)
    plain.config.distildp_control_codes = ["Stars"]
    with pytest.raises(ValueError, match="unknown control codes"):
        generate_synthetic(plain, tokenizer, counts, tmp_path, small_cfg(), progress=False)


def test_bad_config_and_lengths(model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError, match="max_attempts_factor"):
        GenerationConfig(max_attempts_factor=0.5)
    with pytest.raises(ValueError, match="n_positions"):
        generate_synthetic(model, tokenizer, [(CODES[0], 1)], tmp_path, small_cfg(max_length=65), progress=False)
    with pytest.raises(ValueError, match="no room"):
        generate_synthetic(model, tokenizer, [(CODES[0], 1)], tmp_path, small_cfg(max_length=4), progress=False)
    with pytest.raises(FileNotFoundError):
        load_synthetic(tmp_path / "nothing")


def test_chunks_draw_fresh_randomness(model, tokenizer, tmp_path):
    # One code over two chunks of 5: had the chunks shared a seed, the second would repeat the first.
    run(model, tokenizer, tmp_path, counts=(10, 0, 0))
    texts = load_synthetic(tmp_path)["text"].tolist()
    assert texts[:5] != texts[5:]
    assert len(set(texts)) > 5


def test_prompts_of_different_lengths_share_a_batch_only_when_positions_allow(model, tokenizer, tmp_path):
    # max_length == n_positions leaves no room to pad: codes whose prompts differ in length go in separate batches.
    lengths = {len(tokenizer(control_prefix(c))["input_ids"]) for c in (CODES[0], CODES[2])}
    assert len(lengths) == 2
    tight = GPT2LMHeadModel(copy.deepcopy(model.config)).eval()
    tight.config.n_positions = 24
    run(tight, tokenizer, tmp_path, counts=(3, 0, 7))
    assert len(load_synthetic(tmp_path)) == 10
    eos = tokenizer.eos_token_id
    prompts = [[eos] + tokenizer(control_prefix(c), add_special_tokens=False)["input_ids"] for c in CODES]
    need, budget = {0: 3, 2: 2}, {0: 9, 2: 9}
    assert chunks.next_batch([(0, 3), (2, 2)], need, budget, prompts, 8, 0, None) == [0, 0, 0]
    assert chunks.next_batch([(0, 3), (2, 2)], need, budget, prompts, 8, 5, None) == [0, 0, 0, 2, 2]
    with pytest.raises(ValueError, match="positions"):
        sample_batch(tight, [prompts[0], prompts[2]], small_cfg(), eos)


def test_a_teacher_loaded_from_elsewhere_still_resumes(model, tokenizer, tmp_path):
    """A store reached by another path (moved, another mount) must still resume its kept chunks: where the
    teacher was loaded from is not part of what a synthetic set must match."""
    run(model, tokenizer, tmp_path)
    original = model.config._name_or_path
    try:
        model.config._name_or_path = "/somewhere/else/teacher"
        assert run(model, tokenizer, tmp_path).summary["chunks_generated_this_call"] == 0
    finally:
        model.config._name_or_path = original
