"""Tokenizer, presets, loading and encoding (distildp.lm.models)."""

import pydoc_data.topics
import time

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from distildp.core import hub
from distildp.lm import models
from distildp.lm.models import PRESETS, build_model, encode_plain, encode_with_prefix, load_pretrained, train_tokenizer

TEXTS = list(pydoc_data.topics.topics.values())[:20]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=512)


def tiny(tok, **kw):
    return build_model("tiny-student", tok, seed=0, **{"n_embd": 32, "n_layer": 1, "n_head": 2, **kw})


# ------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_conventions(tok):
    assert len(tok) == 512
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    assert tok.model_max_length == 128
    text = "Hello, world! The café's naïve 🦜 costs $5.\n\nNew paragraph."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id not in ids  # no special tokens added implicitly
    assert tok.decode(ids) == text  # byte-level: any text round-trips, nothing unknown


def test_tokenizer_is_deterministic(tok):
    again = train_tokenizer(TEXTS, vocab_size=512)
    assert again.get_vocab() == tok.get_vocab()
    assert again(TEXTS[0])["input_ids"] == tok(TEXTS[0])["input_ids"]


def test_tokenizer_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = TEXTS[3][:500]
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id) == (tok.eos_token_id,) * 3
    assert loaded.model_max_length == 128


def test_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, vocab_size=100)


# ------------------------------------------------------------------------------------------- presets
def test_presets_set_special_ids_and_have_the_documented_sizes(tok):
    for name in models.PRESETS:
        c = build_model(name, tok).config
        assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (tok.eos_token_id,) * 3
        assert c.vocab_size == len(tok) and c.n_positions == 128

    def sizes(name: str) -> tuple[int, int]:  # (total, without embeddings) at the default vocabulary
        model = GPT2LMHeadModel(GPT2Config(vocab_size=2048, **models.PRESETS[name]))
        embeddings = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
        return models.n_params(model), models.n_params(model) - embeddings

    student = sizes("tiny-student")
    # the ratios models.py documents: total, and without the embeddings (never the smaller of the two)
    for name, total_ratio in (("teacher-1.6x", 1.6), ("teacher-4x", 4.0), ("tiny-teacher", 8.2), ("teacher-16x", 15.9)):
        total, core = sizes(name)
        assert total / student[0] == pytest.approx(total_ratio, abs=0.05), name
        assert core / student[1] > total / student[0], name
    assert sizes("tiny-teacher")[0] >= 6 * student[0]  # the embedded default's capacity gap


def test_build_model_is_seeded(tok):
    a, b, c = tiny(tok), tiny(tok), build_model("tiny-student", tok, seed=1, n_embd=32, n_layer=1, n_head=2)
    assert torch.equal(a.transformer.wte.weight, b.transformer.wte.weight)
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)


def test_unknown_preset_lists_known_ones(tok):
    with pytest.raises(ValueError, match="tiny-teacher.*tiny-student|tiny-student.*tiny-teacher"):
        build_model("tiny-giant", tok)
    with pytest.raises(ValueError, match="hub model"):
        build_model("gpt2", tok)


def test_resolve_model(tok):
    model, same_tok = models.resolve_model("tiny-student", tok)
    assert same_tok is tok and model.config.n_layer == PRESETS["tiny-student"]["n_layer"]
    with pytest.raises(ValueError, match="needs a tokenizer"):
        models.resolve_model("tiny-teacher")
    assert models.is_pretrained_name("gpt2") and not models.is_pretrained_name("tiny-teacher")


# ------------------------------------------------------------------------------------------- loading
def test_load_pretrained_local_dir(tok, tmp_path):
    model = tiny(tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_pretrained(tmp_path)
    ids = torch.tensor([tok("def f(x): return x")["input_ids"]])
    assert loaded_tok("def f(x): return x")["input_ids"] == ids[0].tolist()
    assert torch.allclose(model.eval()(ids).logits, loaded.eval()(ids).logits)


def test_load_pretrained_hub_name_offline_fails_fast():
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"'distilgpt2'.*(offline|unreachable).*(connect once|local directory)"):
        load_pretrained("distilgpt2")
    assert time.perf_counter() - start < 10


def test_load_pretrained_unreachable_hub_fails_fast(monkeypatch):
    # As if offline mode were off but the network were down: the socket probe must answer, not 50 s of retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    start = time.perf_counter()
    with pytest.raises(OSError, match="'gpt2'.*unreachable"):
        load_pretrained("gpt2")
    assert time.perf_counter() - start < 10


def test_load_pretrained_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)  # exists but holds no model


# ------------------------------------------------------------------------------------------- encoding
def test_prefix_and_text_are_tokenized_separately(tok):
    prefixes = [
        "Business Category: Restaurants\tReview Stars: 5.0\n\n",
        "Business Category: Bars\tReview Stars: 1.0\n\n",
    ]
    texts = ["Great food and friendly staff.", "Dirty glasses."]
    teacher = encode_with_prefix(tok, prefixes, texts)
    student = encode_plain(tok, texts)
    eos = tok.eos_token_id
    for t, s, p, text in zip(teacher, student, prefixes, texts):
        n_prefix = len(tok(p)["input_ids"])
        assert t["prefix_length"] == n_prefix and s["prefix_length"] == 0
        assert s["input_ids"] == [eos] + tok(text)["input_ids"] + [eos]
        assert t["input_ids"][1 + n_prefix :] == s["input_ids"][1:]  # student i <-> teacher i + n_prefix


def test_truncate_and_split(tok):
    text = TEXTS[0][:2000]
    full = encode_plain(tok, [text])[0]["input_ids"]
    assert len(full) > 40
    cut = encode_plain(tok, [text], max_length=16)[0]["input_ids"]
    assert cut == full[:16] and cut[-1] != tok.eos_token_id  # truncated: no false closing [eos]
    windows = [e["input_ids"] for e in encode_plain(tok, [text], max_length=16, overflow="split")]
    assert all(len(w) <= 16 for w in windows)
    # Windows overlap by one token, so every token after the first [eos] is a target exactly once.
    targets = [t for w in windows for t in w[1:]]
    assert targets == full[1:]
    with pytest.raises(ValueError, match="prefix"):
        encode_with_prefix(tok, [TEXTS[1][:400]], ["x"], max_length=8)
    with pytest.raises(ValueError, match="overflow"):
        encode_plain(tok, ["x"], 8, overflow="wrap")


# ------------------------------------------------------------------------------------------- devices
def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.resolve_device("auto").type == expected
    assert models.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        models.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            models.resolve_device("cuda")
