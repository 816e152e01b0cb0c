"""Torch side of the engine: per-sample gradients and the :class:`Problem` blocks they define.

The empirical Fisher of a loss ``ℓ`` over ``N`` samples, restricted to a set of parameters ``w``, is

    F = GᵀG / N + λI,     G[n] = ∇_w ℓ(f(x_n; w), y_n)          (DESIGN §1)

:func:`per_sample_gradients` computes ``G`` with ``torch.func`` — ``vmap(grad(loss ∘ functional_call))``
over chunks of samples, so memory stays bounded by ``chunk_size`` per step rather than by ``N``.
With ``batch_size=b > 1`` each row is instead the gradient of the mean loss over ``b`` consecutive
samples (the mini-batch Fisher used for large models, where ``N`` per-sample rows would not fit).

:func:`build_blocks` samples the data, computes ``G`` once and cuts the flat parameter vector into
blocks (whole model, per parameter, per output row/channel, or fixed-size chunks). A block-diagonal
Fisher is the usual approximation that keeps each block small enough for the exact solvers.
Each block is a :class:`Block` whose ``problem`` has ``n_prune=0``; callers pick the budget with
``block.problem.with_n_prune(m)``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .problem import Problem

__all__ = ["select_parameters", "per_sample_gradients", "batch_gradients", "collect_samples", "build_blocks",
           "Block", "ParamSlice", "LOSSES", "resolve_loss", "check_device"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossSpec = Union[str, LossFn]
BlockSpec = Union[Literal["model", "layer", "row"], int]

# Losses by name; each maps (outputs, targets) of a batch to the mean loss over it.
LOSSES: dict[str, LossFn] = {
    "cross_entropy": lambda out, y: nn.functional.cross_entropy(out, y),  # outputs are logits
    "nll": lambda out, y: nn.functional.nll_loss(out, y),                 # outputs are log-probabilities
    "mse": lambda out, y: nn.functional.mse_loss(out, y),
}

_PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def resolve_loss(loss: LossSpec) -> LossFn:
    """A loss function ``(outputs, targets) → scalar`` from a name in :data:`LOSSES` or a callable."""
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]
    raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable (outputs, targets) -> scalar, "
                     f"got {loss!r}")


# -- parameters ------------------------------------------------------------------------------------
def select_parameters(model: nn.Module, names: Sequence[str] | str | None = None) -> list[str]:
    """Names of the parameters to prune, in ``model.named_parameters()`` order.

    By default the weights of every ``Linear`` and ``Conv*`` module (biases, norm layers and
    embeddings are left alone). With ``names``, exactly those parameters, in the given order
    (an unknown or repeated name is a ``ValueError`` naming it).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    if names is not None:
        if isinstance(names, str):
            names = [names]
        names = list(names)
        if not names:
            raise ValueError("params is empty: no parameters selected to prune")
        seen: set[str] = set()
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"params must be parameter names (str), got {type(name).__name__}")
            if name not in named:
                raise ValueError(f"params names {name!r}, which is not a parameter of the model "
                                 f"(parameters: {', '.join(named) or 'none'})")
            if name in seen:
                raise ValueError(f"params names {name!r} twice")
            seen.add(name)
        return names
    # Canonical names by identity: a tied weight appears once, under its first name.
    canonical: dict[int, str] = {}
    for name, param in model.named_parameters():
        canonical.setdefault(id(param), name)
    wanted = {id(m.weight) for m in model.modules()
              if isinstance(m, _PRUNABLE) and isinstance(getattr(m, "weight", None), nn.Parameter)}
    selected = [name for name, param in model.named_parameters() if id(param) in wanted]
    if not selected:
        raise ValueError("no parameters selected: the model has no Linear/Conv weights; "
                         "pass params=[names] to choose them")
    return selected


def check_device(model: nn.Module, device) -> torch.device:
    """The device to compute on: ``device`` if given (the model must already live there), else the model's."""
    devices = {p.device for p in model.parameters()}
    if not devices:
        raise ValueError("model has no parameters")
    if device is None:
        if len(devices) > 1:
            raise ValueError(f"model parameters live on several devices ({sorted(map(str, devices))}); "
                             "pass device=")
        return next(iter(devices))
    want = torch.device(device)
    for have in devices:
        if have.type != want.type or (want.index is not None and have.index not in (None, want.index)):
            raise ValueError(f"model is on {have} but device={str(want)!r} was requested; "
                             f"move it first (model.to({str(want)!r})) or pass device={str(have)!r}")
    return next(iter(devices)) if want.index is None else want


# -- gradients -------------------------------------------------------------------------------------
def _as_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return value


def per_sample_gradients(model: nn.Module, inputs, targets, *, loss: LossSpec = "cross_entropy",
                         params: Sequence[str] | None = None, chunk_size: int = 256, device=None,
                         dtype: torch.dtype | None = None, batch_size: int = 1,
                         progress: bool = False) -> torch.Tensor:
    """Per-sample gradients ``G`` of shape ``(N, p)``, flattened over ``params`` in order.

    Row ``n`` is ``∇_w loss(model(inputs[n:n+1]), targets[n:n+1])`` for the selected parameters
    ``w`` (all others held fixed), computed as ``vmap(grad(loss ∘ functional_call))`` over chunks of
    ``chunk_size`` rows. With ``batch_size=b`` the ``len(inputs)`` samples (a multiple of ``b``) form
    ``len(inputs)/b`` consecutive mini-batches and row ``n`` is the gradient of the mean loss over
    mini-batch ``n``.

    ``loss`` is a name in :data:`LOSSES` or a callable ``(outputs, targets) → scalar`` applied to a
    batch of one sample (or one mini-batch). ``dtype`` (default: the parameters' dtype) is the compute
    and output dtype; the model itself is never modified. ``device`` must be where the model lives
    (default: there); inputs are moved to it.
    """
    loss_fn = resolve_loss(loss)
    names = select_parameters(model, params)
    dev = check_device(model, device)
    inputs, targets = _as_tensor("inputs", inputs), _as_tensor("targets", targets)
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs and targets must hold the same number of samples, "
                         f"got {inputs.shape[0]} and {targets.shape[0]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    n_total = inputs.shape[0]
    if n_total == 0:
        raise ValueError("inputs is empty: need at least one sample")
    if n_total % batch_size:
        raise ValueError(f"the number of samples ({n_total}) must be a multiple of batch_size ({batch_size})")
    rows = n_total // batch_size

    named = dict(model.named_parameters())
    dtype = dtype or named[names[0]].dtype

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(dtype) if t.is_floating_point() else t

    selected = {n: cast(named[n]) for n in names}
    fixed = {n: cast(p) for n, p in named.items() if n not in selected}
    fixed.update({n: cast(b) for n, b in model.named_buffers()})
    sizes = [selected[n].numel() for n in names]

    def group_loss(sel: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **sel}, (x,))
        return loss_fn(out, y)

    # randomness="different": dropout (if the model is in train mode) draws per sample, as in a loop.
    per_group = vmap(grad(group_loss), in_dims=(None, 0, 0), randomness="different")
    out = torch.empty(rows, sum(sizes), dtype=dtype, device=dev)
    step = max(1, chunk_size // batch_size)
    starts = range(0, rows, step)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="per-sample gradients", unit="chunk")
    for start in starts:
        stop = min(rows, start + step)
        x = inputs[start * batch_size:stop * batch_size].to(dev)
        y = targets[start * batch_size:stop * batch_size].to(dev)
        x = cast(x).reshape(stop - start, batch_size, *x.shape[1:])
        y = y.reshape(stop - start, batch_size, *y.shape[1:])
        if y.is_floating_point():
            y = y.to(dtype)
        grads = per_group(selected, x, y)
        out[start:stop] = torch.cat([grads[n].reshape(stop - start, -1) for n in names], dim=1)
    return out


def batch_gradients(model: nn.Module, inputs, targets, *, batch_size: int, **kwargs) -> torch.Tensor:
    """Per-mini-batch gradients: :func:`per_sample_gradients` with ``batch_size`` samples per row."""
    return per_sample_gradients(model, inputs, targets, batch_size=batch_size, **kwargs)


# -- data --------------------------------------------------------------------------------------------
def _is_pair_of_tensors(data) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in data))


def collect_samples(data, n_samples: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_samples`` examples ``(inputs, targets)`` from ``data``.

    ``data`` is either a pair of tensors ``(inputs, targets)`` holding a whole dataset — then a
    seeded random subset (without replacement) is drawn — or an iterable of ``(inputs, targets)``
    batches (a ``DataLoader``) — then its first ``n_samples`` examples are taken (shuffle the
    loader for a random sample). Fewer available than asked: all of them, with a warning.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    n_samples = int(n_samples)
    if _is_pair_of_tensors(data):
        x, y = _as_tensor("data[0]", data[0]), _as_tensor("data[1]", data[1])
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data inputs and targets differ in length ({x.shape[0]} vs {y.shape[0]})")
        if x.shape[0] == 0:
            raise ValueError("data is empty: need at least one (inputs, targets) sample")
        if x.shape[0] > n_samples:
            idx = np.random.default_rng(seed).choice(x.shape[0], size=n_samples, replace=False)
            idx = torch.as_tensor(np.sort(idx))
            x, y = x[idx], y[idx]
        got_x, got_y = [x], [y]
        count = x.shape[0]
    else:
        if not isinstance(data, Iterable):
            raise TypeError(f"data must be an iterable of (inputs, targets) batches or a pair of tensors, "
                            f"got {type(data).__name__}")
        got_x, got_y, count = [], [], 0
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(f"data must yield (inputs, targets) pairs, got {type(batch).__name__}")
            bx, by = _as_tensor("inputs in data", batch[0]), _as_tensor("targets in data", batch[1])
            if bx.shape[0] != by.shape[0]:
                raise ValueError(f"a batch in data has {bx.shape[0]} inputs but {by.shape[0]} targets")
            take = min(bx.shape[0], n_samples - count)
            got_x.append(bx[:take])
            got_y.append(by[:take])
            count += take
            if count >= n_samples:
                break
        if count == 0:
            raise ValueError("data is empty: need at least one (inputs, targets) sample")
    if count < n_samples:
        warnings.warn(f"data holds only {count} samples, fewer than n_samples={n_samples}; using them all",
                      stacklevel=3)
    return torch.cat(got_x), torch.cat(got_y)


# -- blocks ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSlice:
    """Block coordinates ``[start, start + len(indices))`` are the entries ``indices`` of the
    flattened parameter ``name`` (``param.reshape(-1)[indices]``)."""

    name: str
    indices: np.ndarray
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.indices.size


@dataclass
class Block:
    """One diagonal block of the Fisher: a :class:`Problem` over some coordinates of some parameters.

    ``problem`` has ``n_prune=0`` (use ``problem.with_n_prune(m)``); ``param_slices`` maps its
    coordinates back to the model; ``n_fixed`` counts the coordinates of the block's region already
    pruned before (held at zero, so not part of the problem).
    """

    name: str
    problem: Problem
    param_slices: list[ParamSlice]
    n_fixed: int = 0
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.problem.p

    def scatter(self, vector, tensors: dict[str, torch.Tensor]) -> None:
        """Write the block vector ``vector`` (length ``size``) into ``tensors[name]`` (flat views)."""
        vector = torch.as_tensor(np.asarray(vector))
        for s in self.param_slices:
            flat = tensors[s.name].view(-1)
            flat[torch.as_tensor(s.indices)] = vector[s.start:s.stop].to(flat.dtype).to(flat.device)

    def gather(self, tensors: dict[str, torch.Tensor]) -> np.ndarray:
        """The block's coordinates read out of ``tensors`` (float64 numpy)."""
        return np.concatenate([tensors[s.name].detach().reshape(-1)[torch.as_tensor(s.indices)]
                               .double().cpu().numpy() for s in self.param_slices])


def _regions(names: list[str], shapes: dict[str, torch.Size], keep: dict[str, np.ndarray],
             blocks: BlockSpec) -> list[tuple[str, list[tuple[str, np.ndarray]], int]]:
    """Cut the surviving coordinates into blocks: ``(block name, [(param, flat indices)], n_fixed)``."""
    if blocks == "model":
        parts = [(n, np.flatnonzero(keep[n])) for n in names]
        fixed = sum(int((~keep[n]).sum()) for n in names)
        return [("model", parts, fixed)]
    if blocks == "layer":
        return [(n, [(n, np.flatnonzero(keep[n]))], int((~keep[n]).sum())) for n in names]
    if blocks == "row":
        out = []
        for n in names:
            rows = shapes[n][0] if len(shapes[n]) else 1
            per_row = keep[n].size // max(rows, 1)
            for r in range(rows):
                region = np.arange(r * per_row, (r + 1) * per_row)
                kept = region[keep[n][region]]
                out.append((f"{n}[{r}]", [(n, kept)], region.size - kept.size))
        return out
    if isinstance(blocks, (int, np.integer)) and not isinstance(blocks, bool):
        size = int(blocks)
        if size < 1:
            raise ValueError(f"blocks as a chunk size must be a positive integer, got {blocks}")
        # Fixed-size chunks of the surviving coordinates, in the global flat order.
        owner = np.concatenate([np.full(int(keep[n].sum()), k, dtype=np.intp) for k, n in enumerate(names)])
        index = np.concatenate([np.flatnonzero(keep[n]) for n in names])
        out = []
        for k, start in enumerate(range(0, index.size, size)):
            o, ix = owner[start:start + size], index[start:start + size]
            parts = [(names[j], ix[o == j]) for j in np.unique(o)]
            out.append((f"chunk{k}", parts, 0))
        return out
    raise ValueError(f"blocks must be 'model', 'layer', 'row' or a positive chunk size, got {blocks!r}")


def _keep_masks(model: nn.Module, names: list[str], masks) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    keep = {}
    for n in names:
        numel = params[n].numel()
        if masks is None or n not in masks:
            keep[n] = np.ones(numel, dtype=bool)
            continue
        m = masks[n]
        m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        if m.dtype != bool or m.size != numel:
            raise ValueError(f"masks[{n!r}] must be a boolean keep-mask with {numel} entries "
                             f"(shape {tuple(params[n].shape)}), got dtype {m.dtype} and size {m.size}")
        keep[n] = m.reshape(-1).copy()
    return keep


def build_blocks(model: nn.Module, data, *, params: Sequence[str] | None = None, n_samples: int = 1000,
                 damping: float = 1e-3, blocks: BlockSpec = "model", loss: LossSpec = "cross_entropy",
                 seed: int = 0, device=None, objective: str = "update", batch_size: int = 1,
                 masks: dict | None = None, gradient: bool = False, chunk_size: int = 256,
                 dtype: torch.dtype | None = None, progress: bool = False) -> list[Block]:
    """The pruning problem of ``model`` on ``data`` as a list of Fisher blocks.

    ``n_samples`` gradient rows (each over ``batch_size`` samples) are computed once on samples from
    ``data`` (see :func:`collect_samples`); ``F = GᵀG/N + damping·I`` restricted to each block.

    ``blocks``: ``"model"`` (one block, the paper's global setting), ``"layer"`` (one per parameter),
    ``"row"`` (one per output row / channel), or an int (chunks of that many coordinates).
    ``masks`` ({name: bool keep-mask}) marks coordinates already pruned: they are held at zero and
    left out of every block (multi-stage pruning). ``gradient=True`` adds the mean gradient ``ḡ`` as the
    first-order term of each problem. Blocks whose coordinates are all pruned are omitted.
    """
    names = select_parameters(model, params)
    check_device(model, device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    keep = _keep_masks(model, names, masks)
    shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
    regions = _regions(names, shapes, keep, blocks)

    x, y = collect_samples(data, n_samples * batch_size, seed=seed)
    usable = (x.shape[0] // batch_size) * batch_size
    if usable == 0:
        raise ValueError(f"data holds {x.shape[0]} samples, fewer than one batch of batch_size={batch_size}")
    G = per_sample_gradients(model, x[:usable], y[:usable], loss=loss, params=names, chunk_size=chunk_size,
                             device=device, dtype=dtype, batch_size=batch_size, progress=progress)
    G = G.detach().cpu().double().numpy()
    offsets = dict(zip(names, np.cumsum([0] + [keep[n].size for n in names])[:-1].tolist()))
    flat_w = {n: p.detach().reshape(-1).double().cpu().numpy() for n, p in model.named_parameters() if n in names}

    out = []
    for block_name, parts, n_fixed in regions:
        parts = [(n, np.asarray(ix, dtype=np.intp)) for n, ix in parts if len(ix)]
        if not parts:
            continue
        cols = np.concatenate([offsets[n] + ix for n, ix in parts])
        w = np.concatenate([flat_w[n][ix] for n, ix in parts])
        # one block over everything: hand G itself to Problem (which copies it once) instead of a gather
        whole = cols.size == G.shape[1] and bool(np.all(cols == np.arange(cols.size)))
        Gb = G if whole else G[:, cols]
        slices, start = [], 0
        for n, ix in parts:
            slices.append(ParamSlice(n, ix, start))
            start += ix.size
        problem = Problem(weights=w, grads=Gb, damping=damping, n_prune=0, objective=objective,
                          gradient=Gb.mean(axis=0) if gradient else None)
        out.append(Block(block_name, problem, slices, n_fixed,
                         info={"n_rows": G.shape[0], "batch_size": batch_size}))
    if not out:
        raise ValueError("every selected coordinate is already pruned (masks are all False)")
    return out
