"""Tests of distildp.generate on a tiny random GPT-2 and a tokenizer trained here (seconds in all)."""
import copy
import json
import math
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import replace

import pandas as pd
import pytest
import torch
from scipy.stats import chi2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from distildp.artifacts import ArtifactStore, config_hash
from distildp.data import control_prefix
import distildp.generate as gen
from distildp.generate import GenerationConfig, generate_synthetic, load_synthetic

EOS = "<|endoftext|>"
CODES = [
    {"Business Category": "Restaurants", "Review Stars": "5.0"},
    {"Business Category": "Hotels", "Review Stars": "1.0"},
    {"Business Category": "Auto Repair", "Review Stars": "3.0"},
]
COLUMNS = {"label_category": "Business Category", "label_stars": "Review Stars"}


@pytest.fixture(scope="module")
def tokenizer():
    words = "the food was great terrible service room car repair slow friendly staff clean dirty".split()
    texts = [control_prefix(c) for c in CODES] + [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=EOS)
    tok.model_max_length = 64
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()


def small_cfg(**kw):
    return GenerationConfig(**{"max_length": 24, "batch_size": 4, "chunk_size": 5, **kw})


def run(model, tokenizer, out_dir, counts=(3, 0, 7), seed=0, **kw):
    return generate_synthetic(model, tokenizer, list(zip(CODES, counts)), out_dir, small_cfg(**kw), seed=seed,
                              progress=False, code_columns=COLUMNS)


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
    biased.lm_head.register_forward_hook(lambda m, i, out: out + torch.nn.functional.one_hot(
        torch.tensor(tokenizer.eos_token_id), out.shape[-1]) * 3.0)
    result = run(biased, tokenizer, tmp_path, counts=(6, 6, 0), max_attempts_factor=50)
    frame = load_synthetic(tmp_path)
    assert len(frame) == 12 and (frame["text"] != "").all()
    assert result.summary["dropped_empty"] > 0
    assert result.summary["attempts"] == 12 + result.summary["dropped_empty"]


def test_gives_up_with_clear_message_when_teacher_only_emits_eos(model, tokenizer, tmp_path):
    always_eos = GPT2LMHeadModel(model.config).eval()
    always_eos.lm_head.register_forward_hook(lambda m, i, out: out + torch.nn.functional.one_hot(
        torch.tensor(tokenizer.eos_token_id), out.shape[-1]) * 1e4)
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
    real_write = gen._write_chunk
    written = []

    def crash_after_two(path, frame, metadata):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated crash")
        real_write(path, frame, metadata)
        written.append(path.name)

    monkeypatch.setattr(gen, "_write_chunk", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, tmp_path / "resumed", counts=(4, 5, 8))
    with pytest.raises(ValueError, match="incomplete"):
        load_synthetic(tmp_path / "resumed")
    monkeypatch.setattr(gen, "_write_chunk", real_write)

    generated = []
    monkeypatch.setattr(gen, "_generate_chunk", _recording(gen._generate_chunk, generated))
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
    """A _write_chunk that writes k chunks, then calls crash()."""
    real_write, written = gen._write_chunk, []

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
            patch.setattr(gen, "_write_chunk", _crash_after(2, _interrupt))
            store.build("synthetic", config, _synthetic_stage(model, tokenizer, counts))
        assert sorted(p.name for p in (stage_dir / f".resume-{key}" / "data").glob("chunk-*")) == [
            "chunk-00000.parquet", "chunk-00001.parquet"]
    else:
        def killed_build():
            gen._write_chunk = _crash_after(2, _die)  # in the child only
            store.build("synthetic", config, _synthetic_stage(model, tokenizer, counts))

        child = mp.get_context("fork").Process(target=killed_build)
        child.start()
        child.join(timeout=300)
        assert child.exitcode == 3
        [stale] = stage_dir.glob(f".tmp-{key}-*")  # what the store's cleanup used to delete
        assert len(list((stale / "data").glob("chunk-*"))) == 2
    generated = []
    monkeypatch.setattr(gen, "_generate_chunk", _recording(gen._generate_chunk, generated))
    art = store.build("synthetic", config, _synthetic_stage(model, tokenizer, counts))
    assert len(generated) == 2
    summary = json.loads((art.path / "data" / gen.PROGRESS_FILE).read_text())["summary"]
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
        patch.setattr(gen, "_write_chunk", _crash_after(2, _interrupt))
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
        patch.setattr(gen, "_write_chunk", _crash_after(2, _interrupt))
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
    plan = gen.plan_chunks([3, 0, 7, 2], chunk_size=5)
    assert plan == [[(0, 3), (2, 2)], [(2, 5)], [(3, 2)]]
    assert gen.chunk_seed(0, 1) == gen.chunk_seed(0, 1) != gen.chunk_seed(0, 2) != gen.chunk_seed(1, 1)


def test_left_padding_matches_unpadded_generation_and_excludes_prompt(model, tokenizer):
    eos = tokenizer.eos_token_id
    short = [eos] + tokenizer("the food", add_special_tokens=False)["input_ids"]
    long = [eos] + tokenizer(control_prefix(CODES[2]), add_special_tokens=False)["input_ids"]
    assert len(long) > len(short) + 3
    cfg = GenerationConfig(top_k=1, max_length=len(long) + 8)  # top_k=1: greedy, no-repeat 2-grams on
    batched = gen.sample_batch(model, [short, long], cfg, eos)
    alone = [gen.sample_batch(model, [p], cfg, eos)[0] for p in (short, long)]
    assert batched == alone
    # max_length counts the prompt: each row gets exactly its own remaining budget (unless it hit [eos]).
    for prompt, out in zip((short, long), batched):
        assert len(prompt) + len(out) <= cfg.max_length
    assert eos not in batched[0] + batched[1]
    # The prompt is not echoed: the greedy continuation of `long` does not start with its prompt.
    assert batched[1][: len(long) - 1] != long[1:]


def test_default_columns_and_known_codes(model, tokenizer, tmp_path):
    result = generate_synthetic(model, tokenizer, [(CODES[0], 2)], tmp_path, small_cfg(), progress=False,
                                known_codes={"Business Category": ["Restaurants"], "Review Stars": ["5.0"]})
    assert result.code_columns == {"business_category": "Business Category", "review_stars": "Review Stars"}
    assert list(load_synthetic(tmp_path).columns) == ["text", "business_category", "review_stars"]


@pytest.mark.parametrize("counts, message", [
    ([(CODES[0], 0), (CODES[1], 0)], "0 samples"),
    ([], "0 samples"),
    ([(CODES[0], -1)], "negative"),
    ([(CODES[0], 2.5)], "integers"),
    ([(CODES[0], 1), (CODES[0], 1)], "twice"),
    ([(CODES[0], 1), ({"Business Category": "Hotels"}, 1)], "same fields"),
])
def test_bad_counts(model, tokenizer, tmp_path, counts, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic(model, tokenizer, counts, tmp_path, small_cfg(), progress=False)


def test_unknown_codes_and_plain_text_teacher(model, tokenizer, tmp_path):
    counts = [(CODES[0], 1)]
    with pytest.raises(ValueError, match="unknown control codes"):
        generate_synthetic(model, tokenizer, counts, tmp_path, small_cfg(), progress=False,
                           known_codes=["Category", "Stars"])
    with pytest.raises(ValueError, match="unknown control code Review Stars"):
        generate_synthetic(model, tokenizer, counts, tmp_path, small_cfg(), progress=False,
                           known_codes={"Business Category": ["Restaurants"], "Review Stars": ["1.0"]})
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
    assert gen._next_batch([(0, 3), (2, 2)], need, budget, prompts, 8, 0, None) == [0, 0, 0]
    assert gen._next_batch([(0, 3), (2, 2)], need, budget, prompts, 8, 5, None) == [0, 0, 0, 2, 2]
    with pytest.raises(ValueError, match="positions"):
        gen.sample_batch(tight, [prompts[0], prompts[2]], small_cfg(), eos)


# ---------------------------------------------------------------------------------------------- the sampler
def transformers_probs(logits, ids, cfg):
    """Reference: transformers' own chain (no-repeat n-gram processor, then temperature, top-k and top-p
    warpers) on `ids` as they stand, softmaxed over the whole vocabulary."""
    from transformers import (NoRepeatNGramLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    chain = [TemperatureLogitsWarper(cfg.temperature), TopPLogitsWarper(cfg.top_p)]
    if cfg.top_k:  # transformers leaves the top-k warper out at top_k = 0
        chain.insert(1, TopKLogitsWarper(cfg.top_k))
    if cfg.no_repeat_ngram_size:
        chain.insert(0, NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram_size))
    scores = logits.float()
    for processor in chain:
        scores = processor(ids, scores)
    return scores.softmax(-1)


def tiny_gpt2(n_layer=2, init=0.02):
    """init: the weights' std; a large one makes every part of the network move the logits."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=n_layer, n_head=2, n_positions=32,
                                      initializer_range=init, bos_token_id=0, eos_token_id=0)).eval()


@pytest.mark.parametrize("top_k, top_p, temperature, n", [
    (50, 0.9, 1.0, 2), (10, 0.5, 0.7, 3), (300, 1.0, 1.3, 1), (1, 0.9, 1.0, 2), (5, 0.8, 1.0, 0),
    (0, 1.0, 1.0, 0), (0, 1.0, 0.8, 2), (0, 0.9, 1.0, 0)])
def test_next_token_distribution_equals_transformers_processors(top_k, top_p, temperature, n):
    """On a left-padded batch, each row's distribution equals transformers' chain on that row alone."""
    cfg = GenerationConfig(top_k=top_k, top_p=top_p, temperature=temperature, no_repeat_ngram_size=n)
    g = torch.Generator().manual_seed(top_k + n)
    pad, vocab = 0, 300
    # Rows start with the pad token, as our prompts start with [eos]; few distinct tokens, so n-grams repeat,
    # and those tokens are the likeliest, so the ban changes the distribution.
    rows = [[pad] + torch.randint(1, 4, (length - 1,), generator=g).tolist() for length in (9, 4, 12, 1, 2, 12)]
    width = max(map(len, rows))
    tokens = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    n_pad = torch.tensor([width - len(r) for r in rows])
    logits = torch.randn(len(rows), vocab, generator=g) * 3
    logits[:, :4] = 10 + torch.randn(len(rows), 4, generator=g)

    def ours(cfg):
        candidates, probs = gen.next_token_distribution(logits, tokens, n_pad, cfg)
        return torch.zeros(len(rows), vocab).scatter_(1, candidates, probs)

    got = ours(cfg)
    for i, row in enumerate(rows):
        torch.testing.assert_close(got[i], transformers_probs(logits[i:i + 1], torch.tensor([row]), cfg)[0],
                                   atol=1e-6, rtol=1e-5, msg=f"row {i}")
    # transformers on the padded batch counts the pads as text: for rows that start with the pad token and
    # hold at least n tokens (our prompts) that bans nothing more
    full = [i for i, r in enumerate(rows) if len(r) >= n]
    torch.testing.assert_close(got[full], transformers_probs(logits, tokens, cfg)[full], atol=1e-6, rtol=1e-5)
    if n:
        assert not torch.allclose(got, ours(replace(cfg, no_repeat_ngram_size=0)))  # the ban bites


def test_cached_decoding_with_left_padding_and_dropped_rows_equals_full_forward(monkeypatch):
    """Script the tokens; at every step each row's logits must equal a full forward of its unpadded text,
    while rows of different prompt lengths end (by [eos] or by max_length) and leave the batch."""
    model, eos = tiny_gpt2(init=0.5), 0
    prompts = [[eos, 1, 7, 9], [eos, 2, 3, 4, 5, 6, 8, 9], [eos, 3, 11], [eos, 4, 12, 13, 14, 15],
               [eos, 5, 9, 8, 7, 6, 5, 4]]
    stop = [2, None, 0, 3, None]  # the step at which each row emits [eos]; None: runs to max_length
    cfg = GenerationConfig(max_length=14)
    by_second_token = {p[1]: i for i, p in enumerate(prompts)}
    batch_sizes = []

    def scripted(logits, tokens, n_pad, cfg):
        batch_sizes.append(len(tokens))
        chosen = []
        for i in range(len(tokens)):
            text = tokens[i, int(n_pad[i]):]
            torch.testing.assert_close(logits[i], model(text[None]).logits[0, -1], atol=1e-5, rtol=1e-4)
            row = by_second_token[int(text[1])]
            step = len(text) - len(prompts[row])
            chosen.append(eos if step == stop[row] else 20 + (3 * row + step) % 25)
        return torch.tensor(chosen)

    monkeypatch.setattr(gen, "_next_token", scripted)
    got = gen.sample_batch(model, prompts, cfg, eos)
    budgets = [cfg.max_length - len(p) for p in prompts]
    assert got == [[20 + (3 * row + step) % 25 for step in range(budgets[row] if stop[row] is None else stop[row])]
                   for row in range(len(prompts))]
    # rows left as they ended; at the end only unpadded rows were left
    assert batch_sizes == [5, 4, 4, 3, 2, 2]


@pytest.mark.parametrize("n, prompt, banned", [(2, [0, 5, 6, 5], 6), (3, [0, 5, 6, 5, 6], 5)])
def test_first_two_tokens_follow_the_exact_distribution(n, prompt, banned):
    """4000 samples of two tokens against their exact probabilities (transformers' chain on full forwards).
    Biased logits make the prompt's likeliest next token one that no-repeat n-grams ban."""
    model, eos = tiny_gpt2(n_layer=1), 0
    bias = torch.zeros(50)
    bias[[5, 6, 7, 8]] = torch.tensor([2.0, 1.5, 1.0, 0.5])
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    cfg = GenerationConfig(top_k=3, top_p=0.95, temperature=0.8, no_repeat_ngram_size=n, max_length=len(prompt) + 2)

    def probs(ids):
        with torch.no_grad():
            return transformers_probs(model(torch.tensor([ids])).logits[:, -1], torch.tensor([ids]), cfg)[0]

    exact, first = {}, probs(prompt)
    for t1 in first.nonzero().flatten().tolist():
        if t1 == eos:
            exact[(eos,)] = float(first[t1])
            continue
        second = probs(prompt + [t1])
        for t2 in second.nonzero().flatten().tolist():
            exact[(t1, t2)] = float(first[t1] * second[t2])
    assert banned not in {key[0] for key in exact}
    torch.manual_seed(0)
    samples = gen.sample_batch(model, [prompt] * 4000, cfg, eos)
    counts = Counter(tuple(s) + (eos,) * (len(s) < 2) if s else (eos,) for s in samples)
    assert set(counts) <= set(exact), set(counts) - set(exact)
    expected = {key: p * len(samples) for key, p in exact.items()}
    statistic = sum((counts[key] - e) ** 2 / e for key, e in expected.items())
    assert chi2.sf(statistic, len(exact) - 1) > 1e-3, (statistic, counts, expected)


def test_sample_batch_is_seeded(model, tokenizer):
    eos = tokenizer.eos_token_id
    prompts = [[eos] + tokenizer(control_prefix(c), add_special_tokens=False)["input_ids"] for c in CODES] * 3
    biased = GPT2LMHeadModel(model.config).eval()
    biased.load_state_dict(model.state_dict())  # [eos] likelier, so rows end at different steps
    biased.lm_head.register_forward_hook(lambda m, i, out: out + torch.nn.functional.one_hot(
        torch.tensor(eos), out.shape[-1]) * 2.0)

    def sample(seed):
        torch.manual_seed(seed)
        return gen.sample_batch(biased, prompts, small_cfg(max_length=40), eos)

    first = sample(5)
    assert sample(5) == first and sample(6) != first
    assert len({len(ids) for ids in first}) > 3


@pytest.mark.parametrize("vocab, k", [(2048, 50), (2049, 50), (300, 7), (1000, 1), (50, 50)])
def test_top_k_over_blocks_equals_torch_topk(vocab, k):
    scores = torch.randn(4, vocab, generator=torch.Generator().manual_seed(vocab)) * 3
    scores[0, 3:] = -math.inf  # fewer allowed tokens than k: the rest are -inf ties
    values, ids = gen._top_k(scores, k)
    expected = torch.topk(scores, k)
    assert torch.equal(values, expected.values)
    assert torch.equal(ids[1:], expected.indices[1:]) and torch.equal(ids[0, :3], expected.indices[0, :3])
    assert torch.equal(scores.gather(1, ids), values)  # ids in range, each with its value


def test_draw_follows_the_probabilities():
    candidates = torch.tensor([[4, 1, 2, 0]])
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.manual_seed(0)
    draws = Counter(int(gen.draw(candidates, probs)) for _ in range(4000))
    for token, p in zip(candidates[0].tolist(), probs[0].tolist()):
        assert abs(draws[token] / 4000 - p) < 4 * (p * (1 - p) / 4000) ** 0.5, (token, draws)


def test_sampling_needs_a_gpt2():
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        gen.sample_batch(torch.nn.Linear(2, 2), [[0, 1]], small_cfg(), 0)


def test_resume_fingerprint_does_not_depend_on_where_the_teacher_was_loaded_from(model, tokenizer):
    """A store reached by another path (moved, another mount) must still resume its kept chunks."""
    from distildp.generate import _fingerprint

    args = ([("a", 2)], GenerationConfig(), 0, {})
    before = _fingerprint(model, tokenizer, *args)
    original = model.config._name_or_path
    try:
        model.config._name_or_path = "/somewhere/else/teacher"
        assert _fingerprint(model, tokenizer, *args) == before
    finally:
        model.config._name_or_path = original
