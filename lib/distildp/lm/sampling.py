"""Sampling from a GPT-2 teacher: the next-token distribution (no-repeat n-gram ban, temperature, top-k, top-p,
as transformers' logits processors and warpers) and a batched decode loop with a key/value cache.

    prompts ([eos] + control-code prefix), left-padded -> prefill -> repeat: next_token_distribution -> draw
                                                          -> rows that reached [eos] or max_length leave the batch

`distildp.distill.generate` cuts a synthetic set into resumable chunks of such batches; this module knows nothing of
files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel


@dataclass
class GenerationConfig:
    """Sampling settings (the paper's defaults) and how the work is cut up."""

    top_k: int = 50  # 0: no top-k cut
    top_p: float = 0.9
    temperature: float = 1.0
    no_repeat_ngram_size: int = 2
    max_length: int = 128  # tokens per sample INCLUDING the [eos] + prefix prompt, as in the paper
    batch_size: int = 256  # rows decoded together: a decode step's overhead is shared by all of them
    chunk_size: int = 512  # samples per parquet file: the unit of resumption and of memory
    max_attempts_factor: float = 4.0  # give up on a code after this many attempts per requested sample

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GenerationConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.top_k < 0:
            raise ValueError(f"GenerationConfig.top_k must be >= 0 (0 turns it off), got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature <= 0:
            raise ValueError(f"GenerationConfig.temperature must be > 0, got {self.temperature}.")
        if self.no_repeat_ngram_size < 0:
            raise ValueError("GenerationConfig.no_repeat_ngram_size must be >= 0 (0 turns it off).")
        if self.max_attempts_factor < 1:
            raise ValueError(
                f"GenerationConfig.max_attempts_factor must be >= 1 (one attempt per sample at least), "
                f"got {self.max_attempts_factor}."
            )


def n_positions(model: torch.nn.Module) -> int:
    """The teacher's context length (position embeddings); unbounded when the config does not say."""
    config = getattr(model, "config", None)
    n = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return int(n) if n else 2**31


def next_token_distribution(
    logits: torch.Tensor, tokens: torch.Tensor, n_pad: torch.Tensor, cfg: GenerationConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution transformers samples the next token from, over the k best candidates only.

    logits: (batch, vocab) for the next token; tokens: (batch, length) each row's tokens so far, LEFT-padded
    with n_pad[row] tokens that are not text. Returns (candidate ids, probabilities), both (batch, k), most
    likely first: the no-repeat n-gram ban, then temperature, top-k and top-p, as transformers' processors
    and warpers (tests/test_sampling.py compares them). Only the k candidates are softmaxed and sorted: over
    the whole vocabulary that work dominates sampling from a small teacher.
    """
    scores = logits.float()
    n = cfg.no_repeat_ngram_size
    if n and tokens.shape[1] >= n:
        # Ban a token when it would complete an n-gram the row already holds (prompt included, padding not:
        # the row's text alone, as transformers sees an unpadded row; on a padded batch transformers counts
        # the pads too, which bans nothing more for our prompts, [eos] first and [eos] as pad). Each window
        # whose first n-1 tokens equal the row's last n-1 tokens bans its own last token.
        windows = tokens.unfold(1, n, 1)
        hit = (windows[..., :-1] == tokens[:, tokens.shape[1] - n + 1 :].unsqueeze(1)).all(-1)
        hit &= torch.arange(windows.shape[1], device=tokens.device) >= n_pad.unsqueeze(1)
        ban = torch.where(hit, -math.inf, math.inf).to(scores.dtype)
        scores = scores.scatter_reduce(1, windows[..., -1], ban, "amin")
    if cfg.top_k == 0 and cfg.top_p == 1.0:  # the model's own distribution: every token a candidate
        candidates = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
        return candidates, (scores / cfg.temperature).softmax(-1)
    k = scores.shape[-1] if cfg.top_k == 0 else min(cfg.top_k, scores.shape[-1])
    values, candidates = _top_k(scores, k)
    probs = (values / cfg.temperature).softmax(-1)
    if cfg.top_p < 1.0:
        # as transformers: drop the least likely tokens while their cumulative mass is <= 1 - top_p
        # (the mass of a token and all less likely ones), always keeping the most likely token
        mass_up_to = probs.flip(-1).cumsum(-1).flip(-1)
        drop = mass_up_to <= 1 - cfg.top_p
        drop[..., 0] = False
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return candidates, probs


def _top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(scores, k) along the last dimension, in two cheaper passes over blocks of the vocabulary.

    The k best scores lie in the k blocks with the best maxima (the k-th best block maximum is at most the
    k-th best score, and a block holding one of the k best scores has a maximum at least that high), so a
    top-k over the block maxima and then over those k blocks' entries finds them. With about sqrt(vocab / k)
    entries a block, both passes are short, where a top-k over the whole vocabulary costs most of sampling.
    """
    batch, vocab = scores.shape
    block = math.isqrt(vocab // k)
    if block <= 1:
        return torch.topk(scores, k, dim=-1)
    blocks = F.pad(scores, (0, -vocab % block), value=-math.inf).view(batch, -1, block)
    best_blocks = blocks.amax(-1).topk(k, dim=-1).indices
    entries = blocks.gather(1, best_blocks.unsqueeze(-1).expand(-1, -1, block)).view(batch, -1)
    values, where = entries.topk(k, dim=-1)
    # padding is -inf and can be picked only among other -inf scores (probability 0): keep its id in range
    return values, (best_blocks.gather(1, where // block) * block + where % block).clamp_(max=vocab - 1)


def draw(candidates: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """One token per row from `next_token_distribution`, drawn with torch's global generator (a seed fixes it).

    By inverting the cumulative distribution: one uniform number u per row, scaled by the row's total, picks the
    first entry whose cumulative probability exceeds it (an entry of probability 0 never does). The same
    distribution as torch.multinomial(probs, 1), which on a CPU costs about twenty times as much."""
    cumulative = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device) * cumulative[:, -1:]
    picked = torch.searchsorted(cumulative, u, right=True).clamp_(max=probs.shape[-1] - 1)
    return candidates.gather(-1, picked).squeeze(-1)


def next_token(logits: torch.Tensor, tokens: torch.Tensor, n_pad: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Each row's next token as sample_batch chooses it: the distribution `cfg` defines, then one draw."""
    return draw(*next_token_distribution(logits, tokens, n_pad, cfg))


class _GPT2Decoder:
    """A GPT-2's forward pass for sampling: each call runs the new tokens only; the keys and values of all
    earlier positions stay in buffers allocated once, and `compact` drops finished rows from them.

    The same computation as `GPT2LMHeadModel.forward` in eval mode (no dropout), without its per-call
    machinery (module calls, mask building, a cache that concatenates at every step), which costs more than
    the arithmetic on a small teacher. lm_head is called as a module, so hooks on it still apply.
    """

    def __init__(self, model: torch.nn.Module, batch: int, length: int):
        if not isinstance(model, GPT2LMHeadModel):
            raise TypeError(f"sampling decodes GPT-2 teachers (GPT2LMHeadModel) only; got {type(model).__name__}.")
        config, weight = model.config, model.transformer.wte.weight
        unsupported = [
            flag for flag in ("reorder_and_upcast_attn", "add_cross_attention") if getattr(config, flag, False)
        ]
        if unsupported:
            raise ValueError(
                f"the sampler's GPT-2 decode step does not implement config {unsupported}; "
                "sample with transformers' generate() for such a model."
            )
        self.model, self.heads = model, config.n_head
        head_dim = config.n_embd // config.n_head
        self.keys = [weight.new_empty(batch, self.heads, length, head_dim) for _ in model.transformer.h]
        self.values = [weight.new_empty(batch, self.heads, length, head_dim) for _ in model.transformer.h]
        # GPT2Attention's scaling, from the config (older transformers do not store it on the module)
        scale = head_dim**-0.5 if config.scale_attn_weights else 1.0
        self.scales = [
            scale / (i + 1) if config.scale_attn_by_inverse_layer_idx else scale for i in range(config.n_layer)
        ]
        # GPT-2's "gelu_new" is the tanh approximation of GELU, which torch computes in one kernel
        tanh_gelu = config.activation_function in ("gelu_new", "gelu_pytorch_tanh")
        # each block's tensors, looked up once: a decode step's arithmetic is small enough that attribute lookups
        # through the modules were a noticeable share of it
        self.blocks = [
            (
                _norm_args(block.ln_1),
                _conv1d_args(block.attn.c_attn),
                _conv1d_args(block.attn.c_proj),
                _norm_args(block.ln_2),
                _conv1d_args(block.mlp.c_fc),
                _conv1d_args(block.mlp.c_proj),
                partial(F.gelu, approximate="tanh") if tanh_gelu else block.mlp.act,
            )
            for block in model.transformer.h
        ]
        self.embeddings = (model.transformer.wte.weight, model.transformer.wpe.weight)
        self.final_norm = _norm_args(model.transformer.ln_f)
        self.length = 0  # positions held in the buffers

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits of each row's last new token. ids, positions: (batch, new); mask: (batch, 1, new, length +
        new) bool, True where a new token may attend (its own text, up to itself); None: everything held."""
        batch, new = ids.shape
        start, end = self.length, self.length + new
        hidden = F.embedding(ids, self.embeddings[0]) + F.embedding(positions, self.embeddings[1])
        for (ln_1, attn_in, attn_out, ln_2, fc, proj, act), keys, values, scale in zip(
            self.blocks, self.keys, self.values, self.scales
        ):
            qkv = _conv1d(attn_in, F.layer_norm(hidden, *ln_1))
            q, k, v = qkv.view(batch, new, 3, self.heads, -1).unbind(2)
            keys[:, :, start:end] = k.transpose(1, 2)
            values[:, :, start:end] = v.transpose(1, 2)
            attn = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys[:, :, :end], values[:, :, :end], attn_mask=mask, scale=scale
            )
            hidden = hidden + _conv1d(attn_out, attn.transpose(1, 2).reshape(batch, new, -1))
            hidden = hidden + _conv1d(proj, act(_conv1d(fc, F.layer_norm(hidden, *ln_2))))
        self.length = end
        return self.model.lm_head(F.layer_norm(hidden[:, -1], *self.final_norm))

    def compact(self, targets: torch.Tensor, sources: torch.Tensor, batch: int) -> None:
        """Copy rows `sources` into rows `targets`, then keep the first `batch` rows: dropping finished rows
        moves only the rows that fill their places, not the whole cache."""
        for buffers in (self.keys, self.values):
            for i, buffer in enumerate(buffers):
                buffer[targets] = buffer[sources]
                buffers[i] = buffer[:batch]


def _conv1d_args(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Conv1D as (weight (in, out), bias): a linear layer with a transposed weight."""
    return layer.weight, layer.bias


def _conv1d(args: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    weight, bias = args
    return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], -1)


def _norm_args(layer: torch.nn.LayerNorm) -> tuple:
    """F.layer_norm's arguments after the input, for `layer`."""
    return layer.normalized_shape, layer.weight, layer.bias, layer.eps


@torch.no_grad()
def sample_batch(
    model: torch.nn.Module, prompts: list[list[int]], cfg: GenerationConfig, eos_id: int
) -> list[list[int]]:
    """Sample one continuation per prompt, cut at (and excluding) its first [eos].

    Prompts are LEFT-padded (the pads are masked out and get position 0, as `generate` does) so every row's
    next token sits in the same column. Each row stops at its first [eos] or at max_length tokens including
    its own prompt, and then leaves the batch, so late steps run on the rows still going.
    The padded batch must fit the teacher's positions: longest prompt + longest budget <= n_positions.
    """
    device = next(model.parameters()).device
    lengths = torch.tensor([len(p) for p in prompts])
    width, steps = int(lengths.max()), cfg.max_length - int(lengths.min())
    if width + steps > n_positions(model):
        raise ValueError(
            f"prompts of {int(lengths.min())} to {width} tokens with max_length={cfg.max_length} "
            f"overrun the teacher's {n_positions(model)} positions once padded; batch prompts of closer lengths."
        )
    if steps <= 0:
        return [[] for _ in prompts]
    tokens = torch.full((len(prompts), width + steps), eos_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) : width] = torch.tensor(prompt)
    tokens, n_pad, budget = tokens.to(device), (width - lengths).to(device), (cfg.max_length - lengths).to(device)
    rows = torch.arange(len(prompts), device=device)  # batch row -> prompt index
    text = torch.arange(width + steps, device=device) >= n_pad.unsqueeze(1)  # False on padding
    new = torch.full((len(prompts), steps), eos_id, dtype=torch.long, device=device)

    decoder = _GPT2Decoder(model, len(prompts), width + steps)
    # Prefill: causal attention within each row's text. A pad attends to itself only: a query that may attend
    # to nothing gives NaN on some attention kernels, and the pad's NaN keys and values would then reach its
    # row's text through their zero attention weights (0 * NaN).
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    mask = (text[:, None, None, :width] & causal) | torch.eye(width, dtype=torch.bool, device=device)
    logits = decoder(tokens[:, :width], (torch.arange(width, device=device) - n_pad.unsqueeze(1)).clamp(min=0), mask)
    padded = bool(n_pad.any())
    for step in range(steps):
        length = width + step
        token = next_token(logits, tokens[:, :length], n_pad, cfg)
        tokens[:, length] = token
        new[rows, step] = token
        done = (token == eos_id) | (budget <= step + 1)
        n_done = int(done.sum())
        if n_done == len(rows):
            break
        if n_done:
            # finished rows leave: the rows still going past the new batch size move into their places
            batch = len(rows) - n_done
            targets = done[:batch].nonzero().squeeze(1)
            sources = (~done[batch:]).nonzero().squeeze(1) + batch
            order = torch.arange(batch, device=device).index_put((targets,), sources)
            rows, tokens, n_pad, budget, text, token = (x[order] for x in (rows, tokens, n_pad, budget, text, token))
            decoder.compact(targets, sources, batch)
            padded = bool(n_pad.any())
        mask = text[:, None, None, : length + 1] if padded else None  # without padding a new token sees all
        logits = decoder(token.unsqueeze(1), (length - n_pad).unsqueeze(1), mask)

    continuations = []
    for ids, prompt in zip(new.tolist(), prompts):
        ids = ids[: cfg.max_length - len(prompt)]
        continuations.append(ids[: ids.index(eos_id)] if eos_id in ids else ids)
    return continuations
