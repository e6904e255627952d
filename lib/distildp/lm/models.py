"""Tokenizer, model presets, loading, and how documents become training examples.

Conventions: the tokenizer's `<|endoftext|>` is bos = eos = pad = unk (GPT-2 style).
A student example is [eos] + tok(text) + [eos]; a teacher example is [eos] + tok(prefix) + tok(text) + [eos],
with prefix and text tokenized separately so the student's tokens are a suffix-aligned slice of the teacher's.
Every token after the first [eos] is a target of the language-model loss.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from distildp.core import hub
from distildp.data.lengths import token_ids  # noqa: F401 (re-exported: data sits below lm and owns it)

EOS = "<|endoftext|>"
TINY_CONTEXT = 128

# Tiny GPT-2s for 2 CPU cores. No dropout: DP noise already regularises, and drawing dropout's random masks is a
# large share of a tiny model's forward and backward pass on a CPU (docs/performance.md). The student is narrow,
# so its capacity limits it (as DistilGPT2's does next to GPT-2 Large); the teachers differ from it in width and
# depth. Parameters at the default 2,048-token vocabulary (embeddings tied to the output layer, counted once), and
# the ratio to the student's, total (without the embeddings):
#   tiny-student   width 16, 2 layers:  41k (6.6k without embeddings)
#   teacher-1.6x   width 24, 2 layers:  67k, 1.6x (2.2x): a teacher hardly bigger than its student
#   teacher-4x     width 40, 4 layers: 166k, 4.0x (12x)
#   tiny-teacher   width 64, 4 layers: 339k, 8.2x (30x): the embedded default, about GPT-2 Large / DistilGPT2's 9.4x
#   teacher-16x    width 96, 4 layers: 656k, 15.9x (68x)
# Hidden-state alignment across widths goes through a learned projection (distill.StudentWithProjection).
# GELU as one kernel, in its exact (erf) form: GPT-2's own "gelu_new" is its tanh approximation written as five tensor
# ops, and even torch's one-kernel tanh form takes about three times as long as the erf form on a CPU.
_TINY = dict(  # no dropout (above), the erf GELU
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, n_positions=TINY_CONTEXT, activation_function="gelu"
)
PRESETS: dict[str, dict] = {
    "tiny-student": dict(n_embd=16, n_layer=2, n_head=2, **_TINY),
    "teacher-1.6x": dict(n_embd=24, n_layer=2, n_head=2, **_TINY),
    "teacher-4x": dict(n_embd=40, n_layer=4, n_head=4, **_TINY),
    "tiny-teacher": dict(n_embd=64, n_layer=4, n_head=4, **_TINY),
    "teacher-16x": dict(n_embd=96, n_layer=4, n_head=4, **_TINY),
}
# The paper's models, downloaded from the Hugging Face hub (cached after the first download).
HUB_MODELS: tuple[str, ...] = ("gpt2-large", "gpt2", "distilgpt2")


# ----------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(
    texts: list[str], vocab_size: int = 4096, model_max_length: int = TINY_CONTEXT
) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE on `texts` (deterministic for a given input)."""
    if not texts:
        raise ValueError("train_tokenizer got no texts; pass the public corpus (a non-empty list of strings).")
    if vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte symbols + 1 special token; use >= 257.")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: "Hello" and " Hello" stay different tokens, exactly as GPT-2.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # as GPT-2: its one special token begins, ends and pads every sequence (and stands for the unknown, never needed)
    special = dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), EOS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **special)


# ----------------------------------------------------------------------------------------------- models
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device to train on: 'auto' picks the first CUDA GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but torch sees no CUDA GPU (torch {torch.__version__}); "
            "use device='auto' or 'cpu', or install a CUDA build of torch."
        )
    return resolved


def build_model(preset: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 from a tiny preset, sized to `tokenizer`'s vocabulary.

    `overrides` replace preset fields (e.g. n_layer=2) for experiments and tests.
    """
    if preset not in PRESETS:
        hint = f" '{preset}' is a hub model: use resolve_model() or load_pretrained()." if preset in HUB_MODELS else ""
        raise ValueError(
            f"Unknown preset '{preset}'. Known presets: {sorted(PRESETS)}; hub models: {list(HUB_MODELS)}.{hint}"
        )
    eos_id = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,  # GPT2Config defaults to 50256
        **{**PRESETS[preset], **overrides},
    )
    torch.manual_seed(seed)  # weight initialisation draws from the global generator
    return GPT2LMHeadModel(config)


def load_pretrained(name_or_path: str | os.PathLike) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a local `save_pretrained` directory or a hub name such as 'gpt2'."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json; pass a directory written by model.save_pretrained().")
        return _load(str(path), local_files_only=True)
    # Hub ids are "name" or "org/name"; anything else that looks like a path is a missing directory.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists():
        raise FileNotFoundError(
            f"No model directory at {path}; pass an existing save_pretrained() directory "
            f"or a hub name like {list(HUB_MODELS)}."
        )
    try:  # the local cache first: no network needed once a model was downloaded
        return _load(name, local_files_only=True)
    except OSError:
        pass
    if hub.offline_mode() or not hub.hub_reachable():
        raise OSError(
            f"Cannot load '{name}': it is not in the local Hugging Face cache and the hub is unreachable "
            "(offline). Fix: connect once to download it into the cache, or pass a local directory "
            "written by save_pretrained()."
        )
    return _load(name, local_files_only=False)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a `save_pretrained` directory (no model weights loaded)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"No tokenizer directory at {path}; pass a directory written by save_pretrained().")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_pretrained_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a hub name or save_pretrained directory (no weights loaded), padded with eos like ours."""
    path = Path(str(name_or_path)).expanduser()
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=hub.offline_mode() or path.is_dir())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load(name: str, local_files_only: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    model = AutoModelForCausalLM.from_pretrained(name, local_files_only=local_files_only)
    if tokenizer.pad_token is None:  # hub GPT-2 has no pad token: pad with eos, as the built-in tokenizer does
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def resolve_model(
    name: str, tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """One call for every model name: a tiny preset (fresh, needs `tokenizer`), a hub name or a local directory."""
    if name in PRESETS:
        if tokenizer is None:
            raise ValueError(
                f"Preset '{name}' is built from scratch and needs a tokenizer: pass tokenizer=... "
                "(see train_tokenizer)."
            )
        return build_model(name, tokenizer, seed), tokenizer
    return load_pretrained(name)


def model_context(name: str) -> int:
    """The context (positions) of a preset, hub model or save_pretrained directory, without loading its weights."""
    if name in PRESETS:
        return PRESETS[name]["n_positions"]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name, local_files_only=hub.offline_mode() or Path(name).is_dir())
    return getattr(config, "n_positions", None) or config.max_position_embeddings


def is_pretrained_name(name: str) -> bool:
    """True when `name` loads pretrained weights (hub model or directory), so public pretraining is skipped."""
    return name not in PRESETS


def n_params(model: torch.nn.Module) -> int:
    """Distinct trainable parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- encoding
def encode_plain(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int | None = None, overflow: str = "truncate"
) -> list[dict]:
    """Student examples [eos] + tok(text) + [eos] as dicts with `input_ids` (list[int]).

    A document longer than `max_length`:
      overflow="truncate": cut to its first `max_length` tokens. The cut document gets no closing [eos]: it did
        not end there, and a false ending would teach the model to stop early.
      overflow="split": cut into windows that overlap by one token (the next window's unscored first token is the
        previous window's last target), so every token after the first [eos] is a target exactly once.
    """
    return encode_with_prefix(tokenizer, None, texts, max_length, overflow)


def encode_with_prefix(
    tokenizer: PreTrainedTokenizerBase,
    prefixes: list[str] | None,
    texts: list[str],
    max_length: int | None = None,
    overflow: str = "truncate",
) -> list[dict]:
    """Teacher examples [eos] + tok(prefix) + tok(text) + [eos]; prefix and text tokenized separately.

    Each dict has `input_ids` and `prefix_length` (number of prefix tokens, so student position i is teacher
    position i + prefix_length). Truncation keeps the whole prefix; see `encode_plain` for `overflow`.
    """
    if prefixes is not None and len(prefixes) != len(texts):
        raise ValueError(f"{len(prefixes)} prefixes for {len(texts)} texts; pass one prefix per text.")
    if overflow not in ("truncate", "split"):
        raise ValueError(f"overflow='{overflow}' is not known; use 'truncate' or 'split'.")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length={max_length} leaves no target token; use max_length >= 2.")
    eos = tokenizer.eos_token_id
    text_ids = token_ids(tokenizer, texts)
    prefix_ids_all = token_ids(tokenizer, prefixes) if prefixes is not None else [[] for _ in texts]
    examples = []
    for i, (prefix_ids, ids) in enumerate(zip(prefix_ids_all, text_ids)):
        ids = [eos] + prefix_ids + ids + [eos]
        if max_length is None or len(ids) <= max_length:
            examples.append({"input_ids": ids, "prefix_length": len(prefix_ids)})
        elif overflow == "truncate":
            if len(prefix_ids) + 2 > max_length:
                raise ValueError(
                    f"Control prefix {prefixes[i]!r} takes {len(prefix_ids)} tokens, leaving no text "
                    f"within max_length={max_length}; raise max_length or shorten the codes."
                )
            examples.append({"input_ids": ids[:max_length], "prefix_length": len(prefix_ids)})
        else:
            step = max_length - 1
            for start in range(0, len(ids) - 1, step):
                examples.append(
                    {
                        "input_ids": ids[start : start + max_length],
                        "prefix_length": len(prefix_ids) if start == 0 else 0,
                    }
                )
    return examples
