"""Book-keeping DP clipping: the sum of per-example clipped gradients from ONE backward pass.

Forward hooks keep each layer's input; tensor hooks on the layer's output keep the gradient arriving there.
After an ordinary backward pass of the summed per-example losses, every example's gradient NORM is computed
from those two (without building the gradient where that is cheaper), then the clip factors
c_i = min(1, C / (||g_i|| + 1e-6)) (Opacus' convention), and each parameter's CLIPPED SUM as one weighted
product of the kept tensors. No second backward pass, and autograd does not compute the (unclipped)
parameter gradients: the trainable parameters are frozen while the model's forward runs, so the graph only
carries activation gradients (a submodule called on its own still gets a hook; its `.grad` is overwritten).

A weight gradient of one example is a sum over positions t of outer products left_t (x) right_t:
  nn.Linear (out, in):  left = output grad g, right = input a      Conv1D (in, out): left = a, right = g
  nn.Embedding (V, d):  left = one-hot(id), kept as the ids,       right = output grad
A tied weight (GPT-2's wte and lm_head) has one such term per use; the example's gradient is their SUM, and
its squared norm includes the cross terms. For terms k, l (the ghost-norm identity):
  <G_k, G_l> = sum_{t,s} (left_k,t . left_l,s) (right_k,t . right_l,s)
with one-hot lefts reduced to id comparisons or gathers. Per parameter the norm comes from these (T x T)
Gram matrices, or from the materialised per-example gradient (B, *shape), then reused for the clipped sum;
the latter is cheaper unless the gradient is much larger than the layer's kept tensors (see `_norm`).
Biases and LayerNorm's weight and bias are materialised (they are small); embeddings alone are summed per
distinct id.

Assumptions (as Opacus' hooks): dimension 0 of every hooked input is the example, and parameters are used
only through their modules' forward (a weight read directly by the loss would be missed).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

SUPPORTED = (nn.Linear, Conv1D, nn.Embedding, nn.LayerNorm)
NORM_METHODS = ("auto", "ghost", "materialise")


class _Call:
    """One forward call of a hooked module: its input, and later the gradient at its output."""

    __slots__ = ("module", "x", "grad")

    def __init__(self, module: nn.Module, x: torch.Tensor):
        self.module, self.x, self.grad = module, x, None

    def set_grad(self, grad: torch.Tensor) -> None:
        self.grad = grad.detach()


def _is_ids(left: torch.Tensor) -> bool:
    return not left.is_floating_point()


def _width(left: torch.Tensor) -> int:
    return 1 if _is_ids(left) else left.shape[-1]


class BookkeepingClipper:
    """Hooks on `model` that turn `backward(per_example_losses)` into clipped per-example gradient sums.

    After `backward`, every trainable parameter's `.grad` holds sum_i c_i g_i over this batch's examples
    (what Opacus' DPOptimizerFastGradientClipping expects of a physical batch), and `last_norms` holds the
    unclipped per-example gradient norms. `norm_method` forces 'ghost' or 'materialise' everywhere (tests);
    'auto' chooses per parameter. Call `cleanup()` to remove the hooks.
    """

    def __init__(self, model: nn.Module, max_grad_norm: float, norm_method: str = "auto"):
        if norm_method not in NORM_METHODS:
            raise ValueError(f"norm_method={norm_method!r}; choose one of {NORM_METHODS}.")
        self.model, self.max_grad_norm, self.norm_method = model, max_grad_norm, norm_method
        self._by_id = {id(p): p for p in model.parameters() if p.requires_grad}  # tied weights once
        self.params = list(self._by_id.values())
        self._calls: list[_Call] = []
        self._handles = []
        self.last_norms: torch.Tensor | None = None
        for name, module in model.named_modules():
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            _check_supported(name or type(model).__name__, module, [n for n, _ in own])
            self._handles.append(module.register_forward_hook(self._keep))
        # Frozen parameters during the forward pass: autograd then skips the unclipped weight gradients.
        self._was_trainable: list[nn.Parameter] = []
        self._handles.append(model.register_forward_pre_hook(self._freeze))
        self._handles.append(model.register_forward_hook(self._unfreeze, always_call=True))

    # ---------------------------------------------------------------------------------------- hooks
    def _freeze(self, module, args) -> None:
        if torch.is_grad_enabled() and not self._was_trainable:
            self._was_trainable = [p for p in self.params if p.requires_grad]
            for p in self._was_trainable:
                p.requires_grad_(False)

    def _unfreeze(self, module, args, output) -> None:
        for p in self._was_trainable:
            p.requires_grad_(True)
        self._was_trainable = []

    def _keep(self, module, args, output):
        if not torch.is_grad_enabled():
            return None
        if not args or not torch.is_tensor(args[0]) or not torch.is_tensor(output):
            raise ValueError(
                f"bookkeeping clipping needs {type(module).__name__} called with its input as the "
                "first positional argument, returning one tensor."
            )
        call = _Call(module, args[0].detach())
        self._calls.append(call)
        replaced = None
        if not output.requires_grad:
            # Nothing upstream needs a gradient (its parameters are frozen for now), but this layer's
            # output gradient is needed: make the output a leaf that records it.
            replaced = output = output.detach().requires_grad_()
        output.register_hook(call.set_grad)
        return replaced

    def cleanup(self) -> None:
        """Remove the hooks; the model is as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._calls.clear()
        self._unfreeze(None, None, None)

    # ------------------------------------------------------------------------------------ clipping
    def backward(self, per_example_loss: torch.Tensor) -> None:
        """One backward pass of the (B,) losses; then each trainable parameter's `.grad` = clipped sum."""
        # Calls whose gradient already arrived belong to an earlier backward pass made without this method.
        self._calls = [call for call in self._calls if call.grad is None]
        try:
            per_example_loss.sum().backward()
            self._clip_and_sum(per_example_loss.shape[0], per_example_loss.device)
        finally:
            self._calls.clear()

    def _clip_and_sum(self, batch: int, device: torch.device) -> None:
        squared = torch.zeros(batch, device=device)
        plans, terms = {}, self._terms(batch)
        self._calls.clear()  # from here each layer's tensors live only as long as its plan needs them
        # Parameters with dense terms only (biases, LayerNorm) are many and small: a few operations on all of them
        # at once rather than a few on each
        dense = {key: terms.pop(key) for key in list(terms) if all(t[0] == "dense" for t in terms[key])}
        if dense:
            squared, dense_plan = _materialise_together(dense, batch)
        while terms:
            key, parts = terms.popitem()
            sq, plans[key] = self._norm(parts, self._by_id[key])
            squared = squared.to(sq.dtype) + sq  # float64 models keep float64 norms
        norms = squared.clamp_min(0).sqrt()  # a Gram-form square can round to just below 0
        factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        self.last_norms = norms.detach()
        dense_sums = dense_plan(factors) if dense else {}
        for p in self.params:
            if id(p) in dense_sums:
                total = dense_sums[id(p)]
            elif id(p) in plans:
                total = plans.pop(id(p))(factors)
            else:  # not used in this forward pass: its clipped sum is zero
                total = torch.zeros_like(p)
            p.grad = total.to(p.dtype).view_as(p)

    def _terms(self, batch: int) -> dict[int, list[tuple]]:
        """Per trainable parameter: ('outer', left, right) or ('dense', per-example gradient) terms."""
        terms: dict[int, list[tuple]] = {}

        def wanted(p) -> bool:  # terms are built only for trainable parameters
            return p is not None and id(p) in self._by_id

        for call in self._calls:
            if call.grad is None:  # its output did not reach the loss
                continue
            m, x, g = call.module, call.x, call.grad
            if x.shape[0] != batch or g.shape[0] != batch:
                raise ValueError(
                    f"{type(m).__name__} saw {x.shape[0]} rows but the loss has {batch} examples; "
                    "bookkeeping clipping needs the example on dimension 0 of every layer's input."
                )
            found = []
            if isinstance(m, (nn.Linear, Conv1D)):
                g = g.reshape(batch, -1, g.shape[-1])
                a = x.to(g.dtype).reshape(batch, -1, x.shape[-1])
                if wanted(m.weight):
                    found.append((m.weight, ("outer", g, a) if isinstance(m, nn.Linear) else ("outer", a, g)))
                if wanted(m.bias):
                    found.append((m.bias, ("dense", g.sum(1))))
            elif isinstance(m, nn.Embedding):
                ids, g = x.reshape(batch, -1), g.reshape(batch, -1, g.shape[-1])
                if m.padding_idx is not None:  # the padding row gets no gradient
                    g = g * (ids != m.padding_idx).unsqueeze(-1).to(g.dtype)
                found.append((m.weight, ("outer", ids, g)))
            else:  # LayerNorm: weight grad = sum_t g_t * x_hat_t, bias grad = sum_t g_t
                shape = tuple(m.normalized_shape)
                if wanted(m.weight):
                    x_hat = F.layer_norm(x.to(g.dtype), shape, eps=m.eps)
                    found.append((m.weight, ("dense", (g * x_hat).reshape(batch, -1, *shape).sum(1))))
                if wanted(m.bias):
                    found.append((m.bias, ("dense", g.reshape(batch, -1, *shape).sum(1))))
            for p, term in found:
                terms.setdefault(id(p), []).append(term)
        return terms

    def _norm(self, parts: list[tuple], p: nn.Parameter):
        """(B,) squared norms of one parameter's per-example gradients, and a function of the clip
        factors that returns the clipped sum."""
        outer = [t for t in parts if t[0] == "outer"]
        method = self.norm_method
        if len(outer) < len(parts):
            method = "materialise"  # some terms dense (one weight used by layers of two kinds): no Gram form
        elif method == "auto":
            if all(_is_ids(t[1]) for t in outer):
                method = "sparse"
            else:
                # Materialising costs one per-example product (as much as the weight gradient) and then passes
                # over (B, *shape); the Gram route adds (sum T)^2 (R + C) per example, plus the clipped sum's
                # matmul. So materialise whenever the per-example gradient is no larger than the kept inputs
                # and output gradients it replaces (freed once it is built): faster, and no more memory.
                kept = sum(t[1].shape[1] * (_width(t[1]) + t[2].shape[-1]) for t in outer)
                method = "materialise" if p.numel() <= kept else "ghost"
        return {"ghost": _ghost, "materialise": _materialise, "sparse": _sparse}[method](outer, parts, p)


# --------------------------------------------------------------------------------------- the three ways
def _ghost(outer, parts, p):
    squared = 0
    for k, (_, left_k, right_k) in enumerate(outer):
        for j in range(k, len(outer)):
            _, left_j, right_j = outer[j]
            right_gram = torch.bmm(right_k, right_j.transpose(1, 2))
            pair = (_left_gram(left_k, left_j, right_gram.dtype) * right_gram).sum((1, 2))
            squared = squared + (pair if k == j else 2 * pair)  # <G_k, G_j> = <G_j, G_k>

    def clipped(factors):
        total = torch.zeros(p.shape, dtype=outer[0][2].dtype, device=p.device)
        for _, left, right in outer:
            per_row = factors.to(right.dtype).repeat_interleave(right.shape[1]).unsqueeze(1)  # c_i per (i, t)
            right = right.reshape(-1, right.shape[-1])
            if _is_ids(left):
                total.index_add_(0, left.reshape(-1), right * per_row)
            else:
                left = left.reshape(-1, left.shape[-1])
                if left.shape[1] < right.shape[1]:  # scale the narrower factor
                    total += (left * per_row).T @ right
                else:
                    total += left.T @ (right * per_row)
        return total

    return squared, clipped


def _left_gram(left_k, left_l, dtype):
    """(B, T_k, T_l) inner products of the left factors; ids stand for one-hot rows."""
    if _is_ids(left_k) and _is_ids(left_l):
        return (left_k.unsqueeze(2) == left_l.unsqueeze(1)).to(dtype)
    if _is_ids(left_k):  # one-hot(id_t) . left_l,s = left_l[s, id_t]
        return torch.gather(left_l, 2, left_k.unsqueeze(1).expand(-1, left_l.shape[1], -1)).transpose(1, 2)
    if _is_ids(left_l):
        return torch.gather(left_k, 2, left_l.unsqueeze(1).expand(-1, left_k.shape[1], -1))
    return torch.bmm(left_k, left_l.transpose(1, 2))


def _materialise(outer, parts, p):
    batch = parts[0][1].shape[0]
    dtype = next(t[-1].dtype for t in parts)
    grads = torch.zeros(batch, *p.shape, dtype=dtype, device=p.device)
    for term in parts:
        if term[0] == "dense":
            grads += term[1]
        elif _is_ids(term[1]):  # row id_t of example i gets right_t
            _, ids, right = term
            grads.scatter_add_(1, ids.unsqueeze(-1).expand(-1, -1, right.shape[-1]), right)
        else:
            grads.baddbmm_(term[1].transpose(1, 2), term[2])
    flat = grads.reshape(batch, -1)
    return flat.pow(2).sum(1), lambda factors: (factors.to(flat.dtype) @ flat).view(p.shape)


def _materialise_together(dense: dict[int, list[tuple]], batch: int):
    """Parameters with only materialised terms (biases, LayerNorm), side by side in one (B, total) tensor: their
    squared norms summed, and a function of the clip factors returning each one's clipped sum by its key."""
    keys = list(dense)
    grads = [sum(term[1] for term in dense[key]).reshape(batch, -1) for key in keys]
    flat = torch.cat(grads, 1)
    sizes = [g.shape[1] for g in grads]

    def clipped(factors):
        return dict(zip(keys, (factors.to(flat.dtype) @ flat).split(sizes)))

    return flat.pow(2).sum(1), clipped


def _sparse(outer, parts, p):
    """Embeddings alone: sum each example's rows per distinct id (sort-based), never (B, V, d)."""
    ids = torch.cat([t[1] for t in outer], 1)  # (B, sum T)
    right = torch.cat([t[2] for t in outer], 1)
    batch, vocab = ids.shape[0], p.shape[0]
    keys = (ids + vocab * torch.arange(batch, device=ids.device).unsqueeze(1)).reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    rows = torch.zeros(len(unique), right.shape[-1], dtype=right.dtype, device=right.device)
    rows.index_add_(0, inverse, right.reshape(-1, right.shape[-1]))
    example = unique // vocab
    squared = torch.zeros(batch, dtype=right.dtype, device=right.device).index_add_(0, example, rows.pow(2).sum(1))

    def clipped(factors):
        total = torch.zeros(p.shape, dtype=rows.dtype, device=p.device)
        return total.index_add_(0, unique % vocab, rows * factors.to(rows.dtype)[example].unsqueeze(1))

    return squared, clipped


# ------------------------------------------------------------------------------------------------ checks
def _check_supported(name: str, module: nn.Module, trainable: Iterable[str]) -> None:
    names = ", ".join(trainable)
    if type(module) not in SUPPORTED:
        raise ValueError(
            f"bookkeeping clipping does not support {type(module).__name__} (module '{name}', "
            f"trainable parameters: {names}); freeze them, or use grad_sample_mode 'hooks'."
        )
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.scale_grad_by_freq or module.sparse):
        raise ValueError(
            f"bookkeeping clipping does not support nn.Embedding with max_norm, scale_grad_by_freq or "
            f"sparse (module '{name}'): its gradient is not a per-example sum."
        )
