"""Perplexity (sliding window, and the paper's variant) and the exact perplexity floor of a known source.

Documents are scored as a stream: [eos] p1 t1 [eos] p2 t2 [eos] ... where each [eos] closes one document and opens
the next (GPT-2 style). Prefix tokens p (control codes) are context only; text tokens t and each closing [eos] are
scored; the very first [eos] is never a target. So every method's perplexity counts the same tokens, whatever the
model conditions on, and `floor()` divides by exactly that count.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

from distildp.data.corpus import Corpus
from distildp.lm.models import encode_with_prefix, token_ids


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float  # exp(nll_sum / n_tokens)
    nll_sum: float  # total negative log-likelihood in nats
    n_tokens: int  # number of scored tokens

    def as_dict(self) -> dict:
        return asdict(self)


def _document_streams(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], prefixes: list[str] | None
) -> list[tuple[list[int], list[bool]]]:
    """Per document: the training encoding [eos] + prefix + text + [eos] (`encode_with_prefix`, untruncated)
    and whether each id is a scored target (the text and its closing [eos])."""
    streams = []
    for ex in encode_with_prefix(tokenizer, prefixes, texts):
        context = 1 + ex["prefix_length"]
        streams.append((ex["input_ids"], [False] * context + [True] * (len(ex["input_ids"]) - context)))
    return streams


def encode_documents(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], prefixes: list[str] | None = None
) -> tuple[list[int], list[bool]]:
    """The evaluation stream [eos] p1 t1 [eos] p2 t2 [eos] ... and its scored mask (see the module docstring)."""
    ids, scored = [], []
    for i, (doc_ids, doc_scored) in enumerate(_document_streams(tokenizer, texts, prefixes)):
        start = 0 if i == 0 else 1  # the previous document's closing [eos] opens this one
        ids += doc_ids[start:]
        scored += doc_scored[start:]
    return ids, scored


def _windows(n_inputs: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) windows over the inputs, as the transformers perplexity guide.

    Input i predicts target i + 1; a window feeds inputs [begin, end) and scores only its last n_new targets,
    which no earlier window scored. Unlike the guide's labels-based loop this loses no token at window edges:
    stride == max_length gives disjoint windows, and every target is scored exactly once.
    """
    windows, prev_end = [], 0
    for begin in range(0, n_inputs, stride):
        end = min(begin + max_length, n_inputs)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == n_inputs:
            break
    return windows


@torch.inference_mode()
def _stream_nll(
    model: PreTrainedModel,
    streams: list[tuple[list[int], list[bool]]],
    max_length: int,
    stride: int,
    batch_size: int,
    pad_id: int,
    progress: bool,
) -> tuple[list[float], list[int]]:
    """(nats, scored tokens) of every stream. Windows are batched by length (little padding), and the output layer
    and the log-softmax (in float64) run on the scored positions only."""
    jobs = []  # (stream index, begin, end, n_new)
    for s, (ids, _) in enumerate(streams):
        jobs += [(s, *w) for w in _windows(len(ids) - 1, max_length, stride)]
    jobs.sort(key=lambda job: job[2] - job[1])
    nll = torch.zeros(len(streams), dtype=torch.float64)
    n_tokens = torch.zeros(len(streams), dtype=torch.long)
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(jobs), batch_size), desc="perplexity", disable=not progress):
        chunk = jobs[i : i + batch_size]
        width = max(end - begin for _, begin, end, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros(len(chunk), width, dtype=torch.long)
        positions, targets, owners = [], [], []  # the scored tokens: (row * width + column, target id, stream)
        for row, (s, begin, end, n_new) in enumerate(chunk):
            ids, scored = streams[s]
            input_ids[row, : end - begin] = torch.tensor(ids[begin:end])
            attention_mask[row, : end - begin] = 1
            for column in range(end - begin - n_new, end - begin):
                if scored[begin + column + 1]:
                    positions.append(row * width + column)
                    targets.append(ids[begin + column + 1])
                    owners.append(s)
        if not positions:
            continue
        position_ids = torch.arange(width).repeat(len(chunk), 1)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        rows_out, to_logits = _scored_rows(model, {k: v.to(device) for k, v in inputs.items()}, torch.tensor(positions))
        targets_t, owners_t = torch.tensor(targets), torch.tensor(owners)
        for rows in torch.arange(len(positions)).split(_rows_per_pass(model.config.vocab_size)):
            # float64: a perplexity sums thousands of log-probabilities. -log p = logsumexp - logit at the target
            # (no log-softmax matrix written)
            logits = to_logits(rows_out[rows.to(device)]).double()
            at_target = logits.gather(1, targets_t[rows].to(device).unsqueeze(1)).squeeze(1)
            nll.index_add_(0, owners_t[rows], (torch.logsumexp(logits, dim=-1) - at_target).cpu())
        n_tokens.index_add_(0, owners_t, torch.ones_like(owners_t))
    return nll.tolist(), n_tokens.tolist()


def _rows_per_pass(vocab: int) -> int:
    """Scored positions whose float64 logits take about 256 MB: a batch at GPT-2's vocabulary is split."""
    return max(1, 2**25 // vocab)


def _scored_rows(model: PreTrainedModel, inputs: dict, positions: torch.Tensor):
    """(rows, the map from rows to logits) at `positions` of the flattened (B, T) batch: a GPT-2 LM's last hidden
    states there and its output layer, applied later a slice at a time; another model's logits, indexed."""
    device = inputs["input_ids"].device
    if isinstance(model, GPT2LMHeadModel):
        hidden = model.base_model(**inputs).last_hidden_state
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions.to(device)), model.get_output_embeddings()
    logits = model(**inputs).logits
    return logits.reshape(-1, logits.shape[-1]).index_select(0, positions.to(device)), lambda rows: rows


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    prefixes: list[str] | None = None,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 64,
    per_document: bool = False,
    progress: bool = True,
) -> PerplexityResult:
    """Token-weighted perplexity of `texts` (prefixes, if given, are unscored context).

    Sliding window over the document stream: each window holds up to `max_length` tokens (default: the model's
    context), and advances by `stride` (default max_length // 2), so every scored token sees at least
    max_length - stride tokens of context. per_document=True instead starts every document in a fresh window at
    position 0, as the models are trained (same tokens scored, no cross-document context).
    """
    if not texts:
        raise ValueError("perplexity got no texts; pass a non-empty list of strings.")
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    max_length = max_length or context
    if max_length > context:
        raise ValueError(
            f"max_length={max_length} exceeds the model's context of {context} positions; use max_length <= {context}."
        )
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride={stride} must lie in [1, max_length={max_length}].")
    streams = (
        _document_streams(tokenizer, texts, prefixes)
        if per_document
        else [encode_documents(tokenizer, texts, prefixes)]
    )
    nll, n_tokens = _nll_in_eval_mode(model, tokenizer, streams, max_length, stride, batch_size, progress)
    return PerplexityResult(math.exp(sum(nll) / sum(n_tokens)), sum(nll), sum(n_tokens))


def _nll_in_eval_mode(model, tokenizer, streams, max_length, stride, batch_size, progress):
    was_training = model.training
    model.eval()
    try:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return _stream_nll(model, streams, max_length, stride, batch_size, pad, progress)
    finally:
        model.train(was_training)


def document_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    prefixes: list[str] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[float], list[int]]:
    """Per document: its negative log-likelihood in nats and its number of scored tokens, each document scored as
    the models are trained on it ([eos] prefix text [eos], the prefix unscored context, a fresh window)."""
    if not texts:
        raise ValueError("document_nll got no texts; pass a non-empty list of strings.")
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    streams = _document_streams(tokenizer, texts, prefixes)
    return _nll_in_eval_mode(model, tokenizer, streams, context, max(1, context // 2), batch_size, progress)


def marginal_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    prefixes: list[str],
    weights: list[float],
    batch_size: int = 64,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of a code-conditioned model used as a model of plain text: each document's probability is
    sum_c w_c p(text | prefix_c), the mixture the synthetic text is sampled from when codes are drawn with
    weights w. It scores the same tokens as `perplexity(..., per_document=True)` without prefixes, so a teacher
    and a student (which sees no codes) are compared on equal terms; its floor is the student's floor.
    """
    if not texts:
        raise ValueError("marginal_perplexity got no texts; pass a non-empty list of strings.")
    if len(prefixes) != len(weights) or not prefixes:
        raise ValueError(f"{len(prefixes)} prefixes and {len(weights)} weights: pass one weight per code prefix.")
    w = torch.tensor(weights, dtype=torch.float64)
    if bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
    keep = [i for i in range(len(prefixes)) if weights[i] > 0]
    # every (code, document) pair in one pass, so batches of similar lengths form across codes
    pairs = [prefixes[i] for i in keep for _ in texts]
    nll, n_tokens = document_nll(model, tokenizer, texts * len(keep), pairs, batch_size, progress)
    log_p = -torch.tensor(nll, dtype=torch.float64).view(len(keep), len(texts)).T  # (documents, codes)
    n_tokens = n_tokens[: len(texts)]  # the same text tokens are scored whatever the prefix
    mixture = torch.logsumexp(log_p + (w[keep] / w.sum()).log(), dim=1)  # (documents,)
    nats = -float(mixture.sum())
    return PerplexityResult(math.exp(nats / sum(n_tokens)), nats, sum(n_tokens))


@torch.inference_mode()
def paper_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], window: int = 128
) -> float:
    """The paper's perplexity: texts joined by "\\n\\n", cut into disjoint `window`-token windows, exp of the mean
    of the windows' mean losses (each window's first token is unscored; a short last window counts fully)."""
    if not texts:
        raise ValueError("paper_perplexity got no texts; pass a non-empty list of strings.")
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    if not 2 <= window <= context:
        raise ValueError(f"window={window} must lie in [2, {context}] (the model's context).")
    ids = token_ids(tokenizer, ["\n\n".join(texts)])[0]
    was_training = model.training
    model.eval()
    losses = []
    device = next(model.parameters()).device
    for begin in range(0, len(ids), window):
        chunk = torch.tensor(ids[begin : begin + window], device=device)[None]
        if chunk.shape[1] < 2:  # a single token has nothing to predict
            continue
        losses.append(model(input_ids=chunk, labels=chunk).loss.item())
    model.train(was_training)
    if not losses:
        raise ValueError("paper_perplexity: the texts are shorter than 2 tokens; pass longer texts.")
    return math.exp(sum(losses) / len(losses))


def floor(
    source,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    codes: list[dict] | None = None,
    categories: list[str] | None = None,
) -> PerplexityResult:
    """The lowest perplexity any model can reach in expectation on texts drawn from `source`.

    nats = sum of -log p(text | codes) when codes are given (a teacher sees the codes), else
    -log p(text) marginalised over codes (a student does not); divided by the tokens `perplexity()` scores for
    the same texts: each text's tokens plus its closing [eos].
    """
    if not texts:
        raise ValueError("floor got no texts; pass a non-empty list of strings.")
    if codes is not None and len(codes) != len(texts):
        raise ValueError(f"{len(codes)} code dicts for {len(texts)} texts; pass one per text (or None).")
    if codes is not None:
        nats = -sum(source.log_prob(text, c) for text, c in zip(texts, codes))
    else:
        nats = -sum(source.log_prob_marginal(text, categories=categories) for text in texts)
    n_tokens = sum(len(ids) + 1 for ids in token_ids(tokenizer, texts))
    return PerplexityResult(math.exp(nats / n_tokens), nats, n_tokens)


# ----------------------------------------------------------------------------------------- a model on a corpus
def corpus_floor(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, role: str) -> float:
    """The exact floor of `corpus`' test split as `role` sees it (codes given to teachers only); nan when no
    source is known."""
    if corpus.source is None:
        return math.nan
    codes = corpus.codes("test") if role == "teacher" else None
    texts = corpus.texts("test")
    return floor(corpus.source, tokenizer, texts, codes=codes, categories=corpus.info.get("categories")).ppl


def corpus_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    role: str,
    stride: int | None = None,
    per_document: bool = False,
    progress: bool = True,
) -> dict:
    """Test and validation perplexity on `corpus`: a teacher gets the control codes as unscored context, a
    student plain text; beside them the exact floor, where the source is known. Learning rates are chosen on the
    validation split, never the test split."""
    metrics = {}
    for split, name in (("test", "test_ppl"), ("validation", "val_ppl")):
        prefixes = corpus.prefixes(split) if role == "teacher" else None
        result = perplexity(
            model,
            tokenizer,
            corpus.texts(split),
            prefixes=prefixes,
            stride=stride,
            per_document=per_document,
            progress=progress,
        )
        metrics[name] = result.ppl
        if split == "test":
            metrics["test_tokens"] = result.n_tokens
    if corpus.source is not None:
        metrics["floor"] = corpus_floor(corpus, tokenizer, role)
    return metrics


def corpus_marginal_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    code_counts: Mapping[tuple[str, ...], float],
    progress: bool = True,
) -> float:
    """A code-conditioned model as a model of `corpus`' plain test text, codes drawn with weights `code_counts`
    (code tuple -> count): scored on exactly the tokens a student is (`marginal_perplexity`)."""
    keys = [key for key, n in code_counts.items() if n > 0]
    prefixes = [corpus.code_prefix(key) for key in keys]
    weights = [code_counts[key] for key in keys]
    texts = corpus.texts("test")
    return marginal_perplexity(model, tokenizer, texts, prefixes, weights, batch_size=64, progress=progress).ppl


class BestOnHeldOut:
    """on_step callback: every `every` steps, score held-out text and keep the best weights. With a
    `tolerance` > 0, it also asks training to stop (returns True) once a check improves on the best one by less
    than that relative amount: the held-out perplexity has flattened. None or 0: it never stops training."""

    def __init__(
        self,
        model,
        tok,
        texts: list[str],
        every: int,
        tolerance: float | None = None,
        prefixes: list[str] | None = None,
    ):
        self.model, self.tok, self.texts, self.every, self.tolerance = model, tok, texts, every, tolerance or None
        self.prefixes = prefixes
        self.best_ppl, self.best_step, self.best_state = math.inf, 0, copy.deepcopy(model.state_dict())
        self.curve: list[tuple[int, float]] = []
        self.converged = False

    def __call__(self, step: int, loss: float) -> bool:
        if step % self.every:
            return False
        self.converged = self._check(step) < (self.tolerance if self.tolerance is not None else -math.inf)
        return self.converged

    def finish(self, steps: int) -> None:
        """A last check after the final step (training may end between two checks)."""
        if not self.curve or self.curve[-1][0] != steps:
            self._check(steps)

    def _check(self, step: int) -> float:
        """Score the held-out text, keep the best weights; return the relative improvement on the best so far."""
        ppl = perplexity(
            self.model, self.tok, self.texts, prefixes=self.prefixes, per_document=True, progress=False
        ).ppl
        self.model.train()
        self.curve.append((step, ppl))
        improved_by = (self.best_ppl - ppl) / self.best_ppl if math.isfinite(self.best_ppl) else math.inf
        if ppl < self.best_ppl:
            self.best_ppl, self.best_step = ppl, step
            self.best_state = copy.deepcopy(self.model.state_dict())
        return improved_by
