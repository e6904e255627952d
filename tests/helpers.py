"""What several test modules build: tiny tokenizers and GPT-2s, control codes, the runner loaded as a module.

Test modules import from here, never from each other.
"""

import importlib.util
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from distildp.data import control_prefix

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"

# ---------------------------------------------------------------------------------------------- generation
CODES = [
    {"Business Category": "Restaurants", "Review Stars": "5.0"},
    {"Business Category": "Hotels", "Review Stars": "1.0"},
    {"Business Category": "Auto Repair", "Review Stars": "3.0"},
]
COLUMNS = {"label_category": "Business Category", "label_stars": "Review Stars"}


def code_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE of 400 tokens that knows the CODES' prefixes and a few review words."""
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


def code_teacher(tokenizer) -> GPT2LMHeadModel:
    """A random one-layer GPT-2 over `tokenizer`'s vocabulary with 64 positions, in eval mode."""
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()
