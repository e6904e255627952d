"""Tests of distildp.generate on a tiny random GPT-2 and a tokenizer trained here (seconds in all)."""
import copy

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

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
    plain.config.distildp_control_codes = []  # what the lead records on a plain-text teacher
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
@pytest.mark.parametrize("top_k, top_p, temperature", [(50, 0.9, 1.0), (10, 0.5, 0.7), (300, 1.0, 1.3), (1, 0.9, 1.0)])
def test_sampler_distribution_equals_transformers_warpers(top_k, top_p, temperature):
    """Reference: transformers' own temperature -> top-k -> top-p chain, softmaxed over the whole vocabulary."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.randn(6, 300, generator=torch.Generator().manual_seed(top_k)) * 3
    scores[0, :40] = -float("inf")  # banned by an earlier processor (no-repeat n-grams)
    ids = torch.zeros(6, 1, dtype=torch.long)
    expected = scores.clone()
    for warper in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)):
        expected = warper(ids, expected)
    candidates, probs = gen.TopKTopPSampler(top_k, top_p, temperature).distribution(scores)
    got = torch.zeros_like(scores).scatter_(1, candidates, probs)
    torch.testing.assert_close(got, expected.softmax(-1), atol=1e-6, rtol=1e-5)


def test_sampler_draws_by_those_probabilities_and_greedy_search_takes_the_draw():
    sampler = gen.TopKTopPSampler(top_k=5, top_p=0.95, temperature=1.0)
    scores = torch.log(torch.tensor([[0.05, 0.4, 0.3, 0.02, 0.2, 0.03]]))
    candidates, probs = sampler.distribution(scores)
    expected = torch.zeros(6).scatter_(0, candidates[0], probs[0])
    torch.manual_seed(0)
    draws = [int(sampler(None, scores.clone()).argmax()) for _ in range(4000)]
    for token in range(6):
        share, p = draws.count(token) / len(draws), float(expected[token])
        assert abs(share - p) < 4 * (p * (1 - p) / len(draws)) ** 0.5 + 1e-9, (token, share, p)
    out = sampler(None, scores.clone())
    assert (out == 0).sum() == 1 and torch.isinf(out).sum() == 5  # one finite score: greedy search takes it
