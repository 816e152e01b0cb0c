"""Torch side of the engine: per-sample gradients and the :class:`Problem` blocks they define.

The empirical Fisher of a loss ``ℓ`` over ``N`` samples, restricted to a set of parameters ``w``, is

    F = GᵀG / N + λI,     G[n] = ∇_w ℓ(f(x_n; w), y_n)          (DESIGN §1)

**Gradients.** :func:`per_sample_gradients` computes ``G`` in chunks of samples, by one of three
methods (``method=``):

* ``"hooks"`` — one batched forward/backward per chunk; the rows of every Linear/Conv2d weight come
  from the layer inputs × output gradients (:mod:`cbs_opt.grad_hooks`), one layer at a time;
* ``"vmap"`` — ``vmap(grad(loss ∘ functional_call))`` over the chunk: any model torch.func handles;
* ``"loop"`` — ``grad(loss ∘ functional_call)`` one row at a time: the fallback for models that fail
  inside ``vmap`` (recurrent layers, data-dependent control flow).

``"auto"`` (default) uses hooks when every selected parameter belongs to a plain Linear/Conv2d and a
check of the first rows against the loop agrees, else ``vmap``, and the loop when ``vmap`` fails.
The model is evaluated in **eval mode** (dropout off, BatchNorm on its running statistics, so rows are
deterministic and samples independent); every submodule's train/eval flag is restored afterwards.
With ``batch_size=b > 1`` each row is the gradient of the mean loss over ``b`` consecutive samples.
A ``G`` that is all zero or holds NaN/inf is refused (:class:`ModelNotSupportedError`): the Fisher
would carry no information and every solver would silently reduce to magnitude pruning.

**Blocks in bounded memory.** :func:`build_blocks` streams the rows straight into per-block storage
(float32 unless the model computes in float64; in RAM or, with ``gradient_storage="disk"``, in a
memory-mapped temporary file), laid out block after block so each block's ``G_b`` is contiguous and no
full ``N × p`` copy is ever made. A :class:`Block` builds its float64 :class:`Problem` only when asked
(``block.problem`` / ``block.make_problem()``); a small least-recently-used cache holds those, so
blocks are upcast one at a time, and ``block.release()`` frees one as soon as it is solved. A block too
large to upcast (``compact``) is stored as the float32 factor ``A = G_b/√N`` and its problem computes on
that storage directly (float64 arithmetic over column chunks; see :class:`~cbs_opt.curvature.LowRankCurvature`).
On disk every block is row-major (a chunk of rows is one contiguous write), and the file pages of ``G``
are handed back to the kernel (``madvise(MADV_DONTNEED)``; nothing is lost) as soon as a chunk of rows
is written and when a block's problem leaves the cache, so the resident set holds about one block of
``G`` at a time rather than the whole file.
``memory_limit`` (bytes) refuses up front, with :class:`MemoryLimitError`, a layout that cannot fit.
Each problem has ``n_prune=0``; callers pick the budget with ``block.problem.with_n_prune(m)``.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import numbers
import os
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .curvature import LowRankCurvature
from .damping import Damping, as_damping
from .errors import ArgumentTypeError, InvalidArgumentError, MemoryLimitError, ModelNotSupportedError
from .problem import Problem

__all__ = ["select_parameters", "per_sample_gradients", "batch_gradients", "collect_samples", "build_blocks",
           "Block", "ParamSlice", "LOSSES", "resolve_loss", "check_device", "eval_mode", "METHODS"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossSpec = Union[str, LossFn]
BlockSpec = Union[Literal["model", "layer", "row"], int]
METHODS = ("auto", "hooks", "vmap", "loop")

# Losses by name; each maps (outputs, targets) of a batch to the mean loss over it.
LOSSES: dict[str, LossFn] = {
    "cross_entropy": lambda out, y: nn.functional.cross_entropy(out, y),  # outputs are logits
    "nll": lambda out, y: nn.functional.nll_loss(out, y),                 # outputs are log-probabilities
    "mse": lambda out, y: nn.functional.mse_loss(out, y),
}
_CLASS_LOSSES = ("cross_entropy", "nll")

_PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)
# Scratch memory for one chunk of gradient rows (activations kept for the backward pass and the rows
# themselves) when no memory_limit is given: the chunk is shrunk to fit.
_CHUNK_BYTES = 512 << 20
# float64 problems kept by a build_blocks cache beyond the one in use, without a memory_limit.
_CACHE_BYTES = 256 << 20
# A block whose float64 problem would take more than this is kept compact (float32 factor, chunked float64).
_FLOAT64_BLOCK_BYTES = 256 << 20


def resolve_loss(loss: LossSpec) -> LossFn:
    """A loss function ``(outputs, targets) → scalar`` from a name in :data:`LOSSES` or a callable."""
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]
    raise InvalidArgumentError(f"loss must be one of {sorted(LOSSES)} or a callable (outputs, targets) -> scalar, "
                               f"got {loss!r}")


# -- parameters ------------------------------------------------------------------------------------
def select_parameters(model: nn.Module, names: Sequence[str] | str | None = None) -> list[str]:
    """Names of the parameters to prune, in ``model.named_parameters()`` order.

    By default the weights of every ``Linear`` and ``Conv*`` module (biases, norm layers and
    embeddings are left alone). With ``names``, exactly those parameters, in the given order
    (an unknown or repeated name is a ``ValueError`` naming it).
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    if names is not None:
        if isinstance(names, str):
            names = [names]
        names = list(names)
        if not names:
            raise InvalidArgumentError("params is empty: no parameters selected to prune")
        seen: set[str] = set()
        for name in names:
            if not isinstance(name, str):
                raise ArgumentTypeError(f"params must be parameter names (str), got {type(name).__name__}")
            if name not in named:
                raise InvalidArgumentError(f"params names {name!r}, which is not a parameter of the model "
                                 f"(parameters: {', '.join(named) or 'none'})")
            if name in seen:
                raise InvalidArgumentError(f"params names {name!r} twice")
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
        raise InvalidArgumentError("no parameters selected: the model has no Linear/Conv weights; "
                         "pass params=[names] to choose them")
    return selected


def check_device(model: nn.Module, device) -> torch.device:
    """The device to compute on: ``device`` if given (the model must already live there), else the model's."""
    devices = {p.device for p in model.parameters()}
    if not devices:
        raise InvalidArgumentError("model has no parameters")
    if device is None:
        if len(devices) > 1:
            raise InvalidArgumentError(f"model parameters live on several devices ({sorted(map(str, devices))}); "
                             "pass device=")
        return next(iter(devices))
    want = torch.device(device)
    for have in devices:
        if have.type != want.type or (want.index is not None and have.index not in (None, want.index)):
            raise InvalidArgumentError(f"model is on {have} but device={str(want)!r} was requested; "
                             f"move it first (model.to({str(want)!r})) or pass device={str(have)!r}")
    return next(iter(devices)) if want.index is None else want




# -- gradients -------------------------------------------------------------------------------------
def _as_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return value


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block; every submodule's own train/eval flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _prepare_targets(loss: LossSpec, targets: torch.Tensor) -> torch.Tensor:
    """Class labels of any integer dtype (uint8, int32, …) as int64, which cross_entropy / nll require."""
    if isinstance(loss, str) and loss in _CLASS_LOSSES and not targets.is_floating_point() \
            and not targets.is_complex() and targets.dtype != torch.long:
        return targets.long()
    return targets


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


_KNOWN_LEAVES = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                 nn.Embedding)


def _unusual_layers(model: nn.Module) -> list[str]:
    """Type names of parametrised leaf modules outside the common per-sample-safe set (for messages)."""
    seen = []
    for m in model.modules():
        if next(m.children(), None) is None and any(True for _ in m.parameters(recurse=False)) \
                and not isinstance(m, _KNOWN_LEAVES) and type(m).__name__ not in seen:
            seen.append(type(m).__name__)
    return seen


class _RowEngine:
    """Computes gradient rows of one model/parameter set/loss by the vmap, loop or hook method."""

    def __init__(self, model: nn.Module, names: list[str], loss_fn: LossFn, dtype: torch.dtype, batch_size: int):
        self.model, self.names, self.loss_fn, self.dtype, self.batch_size = model, names, loss_fn, dtype, batch_size
        named = dict(model.named_parameters())
        self.selected = {n: self.cast(named[n]) for n in names}
        self.fixed = {n: self.cast(p) for n, p in named.items() if n not in self.selected}
        self.fixed.update({n: self.cast(b) for n, b in model.named_buffers()})
        self.sizes = {n: self.selected[n].numel() for n in names}
        # randomness="different": anything random left in eval mode draws per sample, as in a loop.
        self._vmapped = vmap(grad(self._group_loss), in_dims=(None, 0, 0), randomness="different")
        self.plan = None

    def cast(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(self.dtype) if t.is_floating_point() else t

    def _group_loss(self, sel: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, {**self.fixed, **sel}, (x,))
        return self.loss_fn(out, y)

    def _grouped(self, x: torch.Tensor, y: torch.Tensor, rows: int):
        x = self.cast(x).reshape(rows, self.batch_size, *x.shape[1:])
        y = y.reshape(rows, self.batch_size, *y.shape[1:])
        if y.is_floating_point():
            y = y.to(self.dtype)
        return x, y

    def vmap_rows(self, x, y, rows: int, sink) -> None:
        xs, ys = self._grouped(x, y, rows)
        grads = self._vmapped(self.selected, xs, ys)
        for n in self.names:
            sink(n, grads[n].reshape(rows, -1))

    def loop_rows(self, x, y, rows: int, sink) -> None:
        xs, ys = self._grouped(x, y, rows)
        one = grad(self._group_loss)
        per_row = [one(self.selected, xs[i], ys[i]) for i in range(rows)]
        for n in self.names:
            sink(n, torch.stack([g[n].reshape(-1) for g in per_row]))

    def hook_rows(self, x, y, rows: int, sink) -> None:
        from .grad_hooks import hooked_gradients
        if y.is_floating_point():
            y = y.to(self.dtype)
        hooked_gradients(self.model, self.plan, x, y, self.loss_fn, sink)

    def hooks_agree(self, x, y) -> bool:
        """The hook rows of the first samples equal the loop's (guards against samples that interact)."""
        from .grad_hooks import HookUnsupported
        got: dict[str, torch.Tensor] = {}
        ref: dict[str, torch.Tensor] = {}
        try:
            self.hook_rows(x, y, x.shape[0], lambda n, r: got.__setitem__(n, r))
        except HookUnsupported:
            return False
        self.loop_rows(x, y, x.shape[0], lambda n, r: ref.__setitem__(n, r))
        for n in self.names:
            scale = float(ref[n].abs().max()) if ref[n].numel() else 0.0
            if not torch.allclose(got[n], ref[n], rtol=1e-4, atol=1e-5 * max(scale, 1e-30)):
                return False
        return True


def _stream_gradients(model: nn.Module, inputs, targets, names: list[str], loss: LossSpec, *, dtype, batch_size: int,
                      chunk_size: int, device, method: str, progress: bool, chunk_bytes: int | None,
                      sink: Callable[[int, int, str, torch.Tensor], None]) -> str:
    """Compute all gradient rows chunk by chunk and hand them to ``sink(start, stop, name, rows)``.

    Returns the method used. Runs in eval mode (the caller's modes restored); refuses an all-zero or
    non-finite ``G`` with :class:`ModelNotSupportedError`.
    """
    loss_fn = resolve_loss(loss)
    dev = check_device(model, device)
    inputs, targets = _as_tensor("inputs", inputs), _as_tensor("targets", targets)
    if inputs.shape[0] != targets.shape[0]:
        raise InvalidArgumentError(f"inputs and targets must hold the same number of samples, "
                                   f"got {inputs.shape[0]} and {targets.shape[0]}")
    batch_size = _check_positive_int("batch_size", batch_size)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}, got {method!r}")
    n_total = inputs.shape[0]
    if n_total == 0:
        raise InvalidArgumentError("inputs is empty: need at least one sample")
    if n_total % batch_size:
        raise InvalidArgumentError(f"the number of samples ({n_total}) must be a multiple of batch_size ({batch_size})")
    targets = _prepare_targets(loss, targets)
    rows_total = n_total // batch_size
    named = dict(model.named_parameters())
    model_dtype = named[names[0]].dtype
    dtype = dtype or model_dtype
    engine = _RowEngine(model, names, loss_fn, dtype, batch_size)
    numels = [engine.sizes[n] for n in names]
    itemsize = torch.empty(0, dtype=dtype).element_size()

    chosen = method
    if method in ("auto", "hooks"):
        from .grad_hooks import HookUnsupported, hook_plan
        reason = None
        if batch_size != 1:
            reason = "batch_size > 1 (rows are mini-batch means)"
        elif dtype != model_dtype or any(p.dtype != model_dtype for p in model.parameters()):
            reason = f"dtype={dtype} differs from the model's own dtype"
        else:
            try:
                engine.plan = hook_plan(model, names)
            except HookUnsupported as exc:
                reason = str(exc)
        if reason is not None:
            if method == "hooks":
                raise ModelNotSupportedError(f"method='hooks' needs the weights/biases of plain Linear/Conv2d "
                                             f"layers, batch_size=1 and the model's dtype: {reason}; "
                                             f"use method='vmap'")
            chosen = "vmap"
        else:
            chosen = "hooks"

    budget = chunk_bytes if chunk_bytes is not None else _CHUNK_BYTES
    activations = None

    def rows_per_chunk(how: str) -> int:
        """Rows per chunk so that one chunk in flight stays within ``budget``: per row, the activations
        autograd keeps (and their gradients), plus the gradient rows themselves — every parameter's for
        vmap, the largest layer's for hooks (which stream one layer at a time)."""
        nonlocal activations
        if activations is None:
            activations = _activation_bytes(model, engine.cast(inputs[:batch_size].to(dev)), itemsize)
        grads = 3 * itemsize * (max(numels) if how == "hooks" else sum(numels))
        per_row = 2 * activations * batch_size + grads
        return max(1, min(chunk_size // batch_size or 1, budget // max(per_row, 1)))

    state = {"nonzero": False, "bad": None}

    def checked(start: int, stop: int):
        def put(name: str, rows: torch.Tensor) -> None:
            # One reduction per row: Σ|g| is NaN/inf iff the row holds NaN/inf, and 0 iff it is all zero.
            l1 = torch.linalg.vector_norm(rows.detach(), ord=1, dim=1)
            finite = torch.isfinite(l1)
            if state["bad"] is None and not bool(finite.all()):
                state["bad"] = (name, start + int(torch.nonzero(~finite)[0, 0]))
            if not state["nonzero"] and bool((l1 > 0).any()):
                state["nonzero"] = True
            sink(start, stop, name, rows)
        return put

    def chunk(start: int, stop: int):
        x = inputs[start * batch_size:stop * batch_size].to(dev)
        y = targets[start * batch_size:stop * batch_size].to(dev)
        return x, y

    with eval_mode(model):
        if method == "auto" and chosen == "hooks":
            x, y = chunk(0, min(2, rows_total))
            if not engine.hooks_agree(x, y):
                chosen = "vmap"
        step = rows_per_chunk(chosen)
        starts = range(0, rows_total, step)
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=f"per-sample gradients ({chosen})", unit="chunk")
        for start in starts:
            stop = min(rows_total, start + step)
            x, y = chunk(start, stop)
            put = checked(start, stop)
            if chosen == "hooks":
                engine.hook_rows(x, y, stop - start, put)
                continue
            if chosen == "vmap":
                try:
                    engine.vmap_rows(x, y, stop - start, put)
                    continue
                except Exception as exc:  # recurrent layers, data-dependent control flow, …
                    if method == "vmap":
                        raise ModelNotSupportedError(
                            f"per-sample gradients fail inside torch.func.vmap ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); use method='loop' (one row at a time)") from exc
                    chosen = "loop"
                    if progress:
                        starts.set_description("per-sample gradients (loop)")
            try:
                engine.loop_rows(x, y, stop - start, put)
            except Exception as exc:
                layers = _unusual_layers(model)
                hint = f" (layers that may not support torch.func: {', '.join(layers)})" if layers else ""
                raise ModelNotSupportedError(
                    f"per-sample gradients cannot be computed for this model{hint}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]}. Select other parameters with params=, or make the "
                    f"model's forward work under torch.func.grad") from exc
        if hasattr(starts, "close"):
            starts.close()
    if state["bad"] is not None:
        name, row = state["bad"]
        raise ModelNotSupportedError(
            f"per-sample gradients of {name!r} are NaN or infinite (row {row}): the Fisher is undefined. "
            f"Check the inputs for NaN/inf, the loss, and that the model does not overflow in {dtype}")
    if not state["nonzero"]:
        raise ModelNotSupportedError(_zero_gradient_message(model, inputs[:1].to(dev), loss, engine))
    return chosen


def _activation_bytes(model: nn.Module, x: torch.Tensor, itemsize: int) -> int:
    """Bytes of the leaf-module outputs of one forward pass on ``x`` (one sample or one mini-batch):
    an estimate of what autograd keeps per row, used to size the gradient chunks."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # the estimate is only a guide; the real pass reports real errors
        total = 0
    finally:
        for h in handles:
            h.remove()
    return (total + x.numel()) * itemsize


def _zero_gradient_message(model: nn.Module, x: torch.Tensor, loss: LossSpec, engine: _RowEngine) -> str:
    msg = ("the loss gives zero gradients for every sample with respect to the selected parameters, so the "
           "Fisher carries no information and every solver would reduce to magnitude pruning")
    with torch.no_grad(), eval_mode(model):
        try:
            out = model(engine.cast(x))
        except Exception:  # pragma: no cover - the forward worked moments ago
            out = None
    if isinstance(loss, str) and loss in _CLASS_LOSSES and out is not None and out.dim() >= 1 \
            and out.shape[-1] == 1:
        msg += (f": the model has one output and loss={loss!r} over a single class is constant (always 0). "
                f"Use loss='mse' for regression, or a callable such as "
                f"lambda out, y: torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), y.float())")
    else:
        msg += ("; check that the selected parameters (params=) influence the output and the loss is not "
                "constant (dead ReLUs, a detached output, saturated activations)")
    return msg


def per_sample_gradients(model: nn.Module, inputs, targets, *, loss: LossSpec = "cross_entropy",
                         params: Sequence[str] | None = None, chunk_size: int = 256, device=None,
                         dtype: torch.dtype | None = None, batch_size: int = 1,
                         progress: bool = False, method: str = "auto") -> torch.Tensor:
    """Per-sample gradients ``G`` of shape ``(N, p)``, flattened over ``params`` in order.

    Row ``n`` is ``∇_w loss(model(inputs[n:n+1]), targets[n:n+1])`` for the selected parameters
    ``w`` (all others held fixed), with the model in eval mode. With ``batch_size=b`` the
    ``len(inputs)`` samples (a multiple of ``b``) form ``len(inputs)/b`` consecutive mini-batches and
    row ``n`` is the gradient of the mean loss over mini-batch ``n``.

    ``loss`` is a name in :data:`LOSSES` or a callable ``(outputs, targets) → scalar`` applied to a
    batch of one sample (or one mini-batch); integer class labels of any width are cast to int64 for
    the named classification losses. ``method``: ``"auto"`` | ``"hooks"`` | ``"vmap"`` | ``"loop"``
    (see the module docstring). ``dtype`` (default: the parameters' dtype) is the compute and output
    dtype; the model itself is never modified (its train/eval flags are restored). ``device`` must be
    where the model lives (default: there); inputs are moved to it. Raises
    :class:`ModelNotSupportedError` when ``G`` is all zero or not finite.
    """
    names = select_parameters(model, params)
    dev = check_device(model, device)
    named = dict(model.named_parameters())
    dtype = dtype or named[names[0]].dtype
    sizes = [named[n].numel() for n in names]
    offsets = dict(zip(names, np.cumsum([0] + sizes)[:-1].tolist()))
    inputs_t = _as_tensor("inputs", inputs)
    batch = batch_size if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0 else 1
    out = torch.empty(max(inputs_t.shape[0] // batch, 0), sum(sizes), dtype=dtype, device=dev)

    def sink(start: int, stop: int, name: str, rows: torch.Tensor) -> None:
        out[start:stop, offsets[name]:offsets[name] + rows.shape[1]] = rows

    _stream_gradients(model, inputs_t, targets, names, loss, dtype=dtype, batch_size=batch_size,
                      chunk_size=chunk_size, device=device, method=method, progress=progress, chunk_bytes=None,
                      sink=sink)
    return out


def batch_gradients(model: nn.Module, inputs, targets, *, batch_size: int, **kwargs) -> torch.Tensor:
    """Per-mini-batch gradients: :func:`per_sample_gradients` with ``batch_size`` samples per row."""
    return per_sample_gradients(model, inputs, targets, batch_size=batch_size, **kwargs)


def _outside_stacklevel() -> int:
    """The ``warnings`` stacklevel of the first frame outside this package (the user's call)."""
    import sys
    pkg = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


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
        raise InvalidArgumentError(f"n_samples must be a positive integer, got {n_samples!r}")
    n_samples = int(n_samples)
    if _is_pair_of_tensors(data):
        x, y = _as_tensor("data[0]", data[0]), _as_tensor("data[1]", data[1])
        if x.shape[0] != y.shape[0]:
            raise InvalidArgumentError(f"data inputs and targets differ in length ({x.shape[0]} vs {y.shape[0]})")
        if x.shape[0] == 0:
            raise InvalidArgumentError("data is empty: need at least one (inputs, targets) sample")
        if x.shape[0] > n_samples:
            idx = np.random.default_rng(seed).choice(x.shape[0], size=n_samples, replace=False)
            idx = torch.as_tensor(np.sort(idx))
            x, y = x[idx], y[idx]
        got_x, got_y = [x], [y]
        count = x.shape[0]
    else:
        if not isinstance(data, Iterable):
            raise ArgumentTypeError(f"data must be an iterable of (inputs, targets) batches or a pair of tensors, "
                            f"got {type(data).__name__}")
        got_x, got_y, count = [], [], 0
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ArgumentTypeError(f"data must yield (inputs, targets) pairs, got {type(batch).__name__}")
            bx, by = _as_tensor("inputs in data", batch[0]), _as_tensor("targets in data", batch[1])
            if bx.shape[0] != by.shape[0]:
                raise InvalidArgumentError(f"a batch in data has {bx.shape[0]} inputs but {by.shape[0]} targets")
            take = min(bx.shape[0], n_samples - count)
            got_x.append(bx[:take])
            got_y.append(by[:take])
            count += take
            if count >= n_samples:
                break
        if count == 0:
            raise InvalidArgumentError("data is empty: need at least one (inputs, targets) sample")
    if count < n_samples:
        warnings.warn(f"data holds only {count} samples, fewer than n_samples={n_samples}; using them all",
                      stacklevel=_outside_stacklevel())
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


def _problem_bytes(n_rows: int, p: int) -> int:
    """float64 bytes of a block's problem: ``G_b`` and ``A = G_b/√N`` (the curvature's copy)."""
    return 2 * 8 * n_rows * p


def _compact_bytes(n_rows: int, p: int) -> int:
    """Working bytes of a compact block's problem: ``AAᵀ``, ``λI + AAᵀ`` and its factor (``N × N``
    float64 each) and one chunk of float64 columns (see :class:`~cbs_opt.curvature.LowRankCurvature`)."""
    return 3 * 8 * n_rows * n_rows + min(64 << 20, 8 * n_rows * p)


_BLOCK_KEYS = itertools.count()


class _ProblemCache:
    """Least-recently-used float64 problems of one :func:`build_blocks` call, bounded in bytes.

    The most recently requested problem is always kept; older ones go once the total exceeds
    ``capacity`` — so iterating over the blocks upcasts them one at a time.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.items: OrderedDict[int, tuple[Problem, int]] = OrderedDict()

    def get(self, block: "Block") -> Problem:
        key = block._key
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key][0]
        problem = block.make_problem()
        # A disk-backed block's gradients become resident as its problem reads them: count them too.
        self.items[key] = (problem, block.nbytes + _mapped_nbytes(block.grads), block.grads)
        while len(self.items) > 1 and sum(entry[1] for entry in self.items.values()) > self.capacity:
            _, (_, _, grads) = self.items.popitem(last=False)
            _drop_pages(grads)  # hand the evicted block's file pages back (no-op in RAM)
        return problem

    def drop(self, block: "Block") -> None:
        entry = self.items.pop(block._key, None)
        if entry is not None:
            _drop_pages(entry[2])

    def clear(self) -> None:
        self.items.clear()


class Block:
    """One diagonal block of the Fisher: a :class:`Problem` over some coordinates of some parameters.

    A block from :func:`build_blocks` keeps its weights (float64), its gradient rows ``grads``
    (``N × size``, float32 by default, possibly memory-mapped) and its damping rule, and builds the
    float64 problem ``F = G_bᵀG_b/N + λ_b I`` only when asked: :attr:`problem` (cached, in a cache
    shared by the blocks of one call and bounded in bytes) or :meth:`make_problem` (a fresh one,
    not cached). :meth:`release` frees the cached one once the block is solved. A ``compact`` block stores
    ``A = G_b/√N`` (float32; column-major in RAM, row-major on disk) in ``grads`` instead, and its problem works on that storage
    without any float64 copy. A block can also wrap a ready ``problem``.

    ``problem`` has ``n_prune=0`` (use ``problem.with_n_prune(m)``); ``param_slices`` maps its
    coordinates back to the model; ``n_fixed`` counts the coordinates of the block's region already
    pruned before (held at zero, so not part of the problem). ``damping`` is the absolute ``λ_b``.
    """

    def __init__(self, name: str, problem: Problem | None = None, param_slices: Sequence[ParamSlice] = (),
                 n_fixed: int = 0, info: dict | None = None, *, weights: np.ndarray | None = None,
                 grads: np.ndarray | None = None, damping: float = 0.0, objective: str = "update",
                 gradient: bool = False, cache: _ProblemCache | None = None, compact: bool = False):
        if problem is None and (weights is None or grads is None):
            raise InvalidArgumentError("a Block needs a problem, or weights and grads")
        self.name = name
        self.param_slices = list(param_slices)
        self.n_fixed = int(n_fixed)
        self.info = dict(info or {})
        self._fixed_problem = problem
        self.weights = problem.weights if problem is not None else weights
        self.grads = grads
        self.damping = float(problem.damping if problem is not None else damping)
        self.objective = problem.objective_kind if problem is not None else objective
        self.with_gradient = bool(gradient)
        # compact: ``grads`` holds the factor A = G/√N (float32) and the problem computes on it directly
        self.compact = bool(compact) and problem is None
        # damping-free results over this block's stored factor (its AAᵀ), shared with its re-damped copies
        self._shared: dict = {}
        self._cache = cache if cache is not None else _ProblemCache(0)
        self._key = next(_BLOCK_KEYS)  # never reused (unlike id()), so a cache entry is this block's

    def __repr__(self) -> str:
        rows = "" if self.grads is None else f", N={self.grads.shape[0]}"
        return f"Block({self.name!r}, size={self.size}{rows}, damping={self.damping:g})"

    def __getstate__(self):  # pickled (e.g. to a worker): the data, not the cache of problems
        state = dict(self.__dict__)
        state["_cache"] = None
        state["_shared"] = {}
        if state["grads"] is not None:
            state["grads"] = np.asarray(state["grads"])  # a memory map travels as its values
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache = _ProblemCache(0)
        self._key = next(_BLOCK_KEYS)

    @property
    def size(self) -> int:
        return int(self.weights.size)

    @property
    def problem(self) -> Problem:
        """The block's float64 problem (``n_prune=0``), built on first use and cached (see the class)."""
        if self._fixed_problem is not None:
            return self._fixed_problem
        return self._cache.get(self)

    def make_problem(self) -> Problem:
        """A new float64 :class:`Problem` for the block: ``G_b`` upcast once, shared with its curvature."""
        if self._fixed_problem is not None:
            return self._fixed_problem
        if self.compact:
            # The stored float32 A = G/√N is the curvature's factor itself: no float64 copy of the block.
            curvature = LowRankCurvature.from_factor(self.grads, self.damping, shared=self._shared)
            gradient = self.mean_gradient if self.with_gradient else None
            return Problem(weights=self.weights, curvature=curvature, n_prune=0, objective=self.objective,
                           gradient=gradient)
        grads = np.array(self.grads, dtype=np.float64)  # the block's one float64 copy
        _drop_pages(self.grads)  # the copy is what the problem reads; the file pages can go
        grads.flags.writeable = False
        if self.with_gradient and "mean_gradient" not in self.info:  # from the copy: no second read of G
            self.info["mean_gradient"] = grads.mean(axis=0)
        gradient = self.mean_gradient if self.with_gradient else None
        curvature = LowRankCurvature(grads, self.damping)
        return Problem(weights=self.weights, curvature=curvature, n_prune=0, objective=self.objective,
                       gradient=gradient)

    @property
    def mean_gradient(self) -> np.ndarray:
        """``ḡ = mean of the gradient rows`` over the block's coordinates (float64), cached: the first-order
        term of the block's loss model at its current weights."""
        if "mean_gradient" not in self.info:
            if self.grads is None:
                gradient = self.problem.gradient
                self.info["mean_gradient"] = np.zeros(self.size) if gradient is None else gradient
            else:
                scale = np.sqrt(self.grads.shape[0]) if self.compact else 1.0  # A = G/√N
                self.info["mean_gradient"] = _column_means(self.grads) * scale
                _drop_pages(self.grads)
        return self.info["mean_gradient"]

    @property
    def mean_diagonal(self) -> float:
        """``mean(diag(G_bᵀG_b/N))``: the block's undamped curvature scale (for relative damping), cached."""
        if "mean_diagonal" not in self.info:
            if self.grads is not None:
                scale = self.grads.shape[0] if self.compact else 1.0  # Σ A² = Σ G² / N
                self.info["mean_diagonal"] = _mean_square(self.grads) * scale
                _drop_pages(self.grads)
            else:
                curv = self.problem.curvature
                self.info["mean_diagonal"] = float(np.mean(curv.diagonal()) - curv.damping)
        return self.info["mean_diagonal"]

    def with_damping(self, damping) -> "Block":
        """The same block under another damping: a number (absolute ``λ``), ``"relative:α"`` or a
        :class:`~cbs_opt.damping.Damping` (resolved against :attr:`mean_diagonal`).

        Stays lazy: the new block shares the gradient storage and the problem cache, and builds its own
        float64 problem only when asked (a block wrapping a ready problem is re-damped eagerly instead).
        """
        rule = as_damping(damping)
        lam = rule.resolve(self.mean_diagonal) if rule.relative else rule.value
        info = {**self.info, "damping": lam}
        if self._fixed_problem is not None:
            prob = self._fixed_problem
            curv = prob.curvature
            if float(curv.damping) == lam:
                return Block(self.name, prob, self.param_slices, self.n_fixed, info)
            if not isinstance(curv, LowRankCurvature):
                raise InvalidArgumentError("with_damping needs a block given by gradients (low-rank curvature)")
            new = LowRankCurvature(curv.grads, lam) if isinstance(curv.grads, np.ndarray) \
                else LowRankCurvature.from_factor(curv.A, lam)  # a compact curvature: share its factor
            return Block(self.name, Problem(weights=prob.weights, curvature=new, n_prune=0,
                                            objective=prob.objective_kind, gradient=prob.gradient),
                         self.param_slices, self.n_fixed, info)
        out = Block(self.name, None, self.param_slices, self.n_fixed, info, weights=self.weights,
                    grads=self.grads, damping=lam, objective=self.objective, gradient=self.with_gradient,
                    cache=self._cache, compact=self.compact)
        out._shared = self._shared
        return out

    def release(self) -> None:
        """Drop the cached float64 problem (it is rebuilt on the next :attr:`problem` access)."""
        if self._fixed_problem is None:
            self._cache.drop(self)

    @property
    def nbytes(self) -> int:
        """Bytes the problem of this block adds to its stored gradients: ``G_b`` and ``A`` in float64,
        or, for a compact block, the ``N × N`` Woodbury matrices and one chunk of upcast columns."""
        n = self.grads.shape[0] if self.grads is not None else (self.problem.n_samples or self.size)
        return _compact_bytes(n, self.size) if self.compact else _problem_bytes(n, self.size)

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
            raise InvalidArgumentError(f"blocks as a chunk size must be a positive integer, got {blocks}")
        # Fixed-size chunks of the surviving coordinates, in the global flat order.
        owner = np.concatenate([np.full(int(keep[n].sum()), k, dtype=np.intp) for k, n in enumerate(names)])
        index = np.concatenate([np.flatnonzero(keep[n]) for n in names])
        out = []
        for k, start in enumerate(range(0, index.size, size)):
            o, ix = owner[start:start + size], index[start:start + size]
            parts = [(names[j], ix[o == j]) for j in np.unique(o)]
            out.append((f"chunk{k}", parts, 0))
        return out
    raise InvalidArgumentError(f"blocks must be 'model', 'layer', 'row' or a positive chunk size, got {blocks!r}")


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
            raise InvalidArgumentError(f"masks[{n!r}] must be a boolean keep-mask with {numel} entries "
                             f"(shape {tuple(params[n].shape)}), got dtype {m.dtype} and size {m.size}")
        keep[n] = m.reshape(-1).copy()
    return keep




def _column_means(g: np.ndarray) -> np.ndarray:
    """Column means of ``g`` accumulated in float64 over row chunks."""
    total = np.zeros(g.shape[1])
    step = max(1, (64 << 20) // max(1, 8 * g.shape[1]))
    for start in range(0, g.shape[0], step):
        total += np.asarray(g[start:start + step], dtype=np.float64).sum(axis=0)
    return total / max(1, g.shape[0])


def _mean_square(g: np.ndarray) -> float:
    """``mean(diag(GᵀG/N))`` = mean of ``G²``, accumulated in float64 over row chunks (no full upcast)."""
    total = 0.0
    step = max(1, (64 << 20) // max(1, 8 * g.shape[1]))
    for start in range(0, g.shape[0], step):
        part = np.asarray(g[start:start + step], dtype=np.float64)
        total += float(np.einsum("np,np->", part, part))
    return total / max(1, g.size)


def _byte_bounds(arr: np.ndarray) -> tuple[int, int]:
    """First and one-past-last byte addresses of ``arr`` (numpy ≥ 2: ``np.lib.array_utils.byte_bounds``)."""
    utils = getattr(np.lib, "array_utils", None)
    return (utils.byte_bounds if utils is not None else np.byte_bounds)(arr)


def _mapped_base(arr) -> tuple[int, "mmap.mmap"] | None:
    """``(address of the mapping's first byte, mmap)`` when ``arr`` views a memory-mapped file, else None."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, mmap.mmap):
        return None
    try:
        start = np.frombuffer(base, dtype=np.uint8, count=1).__array_interface__["data"][0]
    except (ValueError, TypeError, BufferError):  # an empty or closed mapping
        return None
    return start, base


def _mapped_nbytes(arr) -> int:
    """Bytes of ``arr`` that live in a memory-mapped file (its pages become resident when read), else 0."""
    if not isinstance(arr, np.ndarray) or arr.size == 0 or _mapped_base(arr) is None:
        return 0
    lo, hi = _byte_bounds(arr)
    return int(hi - lo)


def _drop_pages(arr) -> None:
    """Unmap the resident pages under a memory-mapped ``arr`` (``madvise(MADV_DONTNEED)``); no-op otherwise.

    For a shared file mapping this loses nothing — dirty pages pass to the page cache, which writes them
    back, and the next access faults them in again from there or from the file — but the pages stop
    counting in this process's resident set. Disk-backed ``G`` relies on it to keep the RSS at about one
    block (and one chunk of rows while the gradients are written) instead of the whole file. The range is
    widened to whole pages; a neighbour's page dropped with it is simply read back when touched.
    """
    if not isinstance(arr, np.ndarray) or arr.size == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    found = _mapped_base(arr)
    if found is None:
        return
    start, mapping = found
    lo, hi = _byte_bounds(arr)
    first = (lo - start) // mmap.PAGESIZE * mmap.PAGESIZE
    length = min(hi - start, len(mapping)) - first
    if length <= 0:
        return
    try:
        mapping.madvise(mmap.MADV_DONTNEED, int(first), int(length))
    except (OSError, ValueError):  # only a hint: the data is safe either way
        pass


def _gradient_storage(n_values: int, dtype: np.dtype, storage: str, directory) -> np.ndarray:
    """A flat buffer for ``n_values`` gradient entries: RAM, or a temporary memory-mapped file."""
    if storage == "memory":
        return np.empty(n_values, dtype=dtype)
    fd, path = tempfile.mkstemp(prefix="cbs-opt-G-", suffix=".bin", dir=directory)
    try:
        os.close(fd)
        buf = np.memmap(path, dtype=dtype, mode="w+", shape=(max(n_values, 1),))[:n_values]
    finally:
        os.unlink(path)  # the mapping keeps the data; the file vanishes with the last reference
    return buf


def _gb(n: float) -> str:
    """Bytes for a message, in the largest binary unit that keeps the number >= 1."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def build_blocks(model: nn.Module, data, *, params: Sequence[str] | None = None, n_samples: int = 1000,
                 damping: float | str | Damping = 1e-3, blocks: BlockSpec = "model",
                 loss: LossSpec = "cross_entropy", seed: int = 0, device=None, objective: str = "update",
                 batch_size: int = 1, masks: dict | None = None, gradient: bool = False, chunk_size: int = 256,
                 dtype: torch.dtype | None = None, progress: bool = False, method: str = "auto",
                 memory_limit: int | None = None, gradient_storage: Literal["memory", "disk"] = "memory",
                 storage_dir: str | os.PathLike | None = None,
                 storage_dtype: torch.dtype | np.dtype | None = None, compact: bool | None = None) -> list[Block]:
    """The pruning problem of ``model`` on ``data`` as a list of Fisher blocks.

    ``n_samples`` gradient rows (each over ``batch_size`` samples) are computed once on samples from
    ``data`` (see :func:`collect_samples`), in eval mode, and streamed into each block's storage;
    block ``b`` is ``F_b = G_bᵀG_b/N + λ_b·I``, built lazily (see :class:`Block`).

    ``blocks``: ``"model"`` (one block, the paper's global setting), ``"layer"`` (one per parameter),
    ``"row"`` (one per output row / channel), or an int (chunks of that many coordinates).
    ``damping``: a number (absolute ``λ``), ``"relative:α"`` or a :class:`~cbs_opt.damping.Damping`
    (``λ_b = α·mean diag(G_bᵀG_b/N)`` per block). ``masks`` ({name: bool keep-mask}) marks coordinates
    already pruned: they are held at zero and left out of every block (multi-stage pruning).
    ``gradient=True`` adds the mean gradient ``ḡ`` as the first-order term of each problem. Blocks whose
    coordinates are all pruned are omitted.

    Memory: ``G`` is stored once, as ``storage_dtype`` (default float32, float64 when the model computes
    in float64), in RAM or on disk (``gradient_storage="disk"``: a memory-mapped temporary file in
    ``storage_dir``). ``memory_limit`` (bytes) bounds the RAM for ``G``, one block's float64 problem and
    the gradient chunks; a layout that cannot fit raises :class:`MemoryLimitError` before any gradient is
    computed. ``compact``: store a block as the float32 factor ``A = G_b/√N`` and let its problem compute
    on it directly (float64 arithmetic over column chunks, no float64 copy of the block); ``None``
    (default) does so for blocks whose float64 problem would exceed 256 MiB or the room ``memory_limit``
    leaves. ``method`` chooses how the rows are computed (:func:`per_sample_gradients`).
    """
    names = select_parameters(model, params)
    dev = check_device(model, device)
    batch_size = _check_positive_int("batch_size", batch_size)
    damping_rule = as_damping(damping)
    if gradient_storage not in ("memory", "disk"):
        raise InvalidArgumentError(f"gradient_storage must be 'memory' or 'disk', got {gradient_storage!r}")
    if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, numbers.Real)
                                     or not memory_limit > 0):
        raise InvalidArgumentError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
    keep = _keep_masks(model, names, masks)
    named = dict(model.named_parameters())
    shapes = {n: named[n].shape for n in names}
    regions = []
    for block_name, parts, n_fixed in _regions(names, shapes, keep, blocks):
        parts = [(n, np.asarray(ix, dtype=np.intp)) for n, ix in parts if len(ix)]
        if parts:
            regions.append((block_name, parts, n_fixed))
    if not regions:
        raise InvalidArgumentError("every selected coordinate is already pruned (masks are all False)")

    compute_dtype = dtype or named[names[0]].dtype
    if storage_dtype is None:
        store = np.float64 if compute_dtype == torch.float64 else np.float32
    else:
        store = torch.empty(0, dtype=storage_dtype).numpy().dtype if isinstance(storage_dtype, torch.dtype) \
            else np.dtype(storage_dtype)
        if store not in (np.float32, np.float64):
            raise InvalidArgumentError(f"storage_dtype must be float32 or float64, got {storage_dtype!r}")
    store = np.dtype(store)

    x, y = collect_samples(data, n_samples * batch_size, seed=seed)
    rows = x.shape[0] // batch_size
    if rows == 0:
        raise InvalidArgumentError(f"data holds {x.shape[0]} samples, fewer than one batch of batch_size={batch_size}")
    usable = rows * batch_size
    sizes = [sum(ix.size for _, ix in parts) for _, parts, _ in regions]
    total = int(sum(sizes))

    # Memory plan: G (unless on disk) + the largest block's problem + a gradient chunk. A block too large
    # for a float64 problem is kept compact (its float32 factor is the problem's own storage).
    g_bytes = rows * total * store.itemsize if gradient_storage == "memory" else 0
    limit = None if memory_limit is None else int(memory_limit)
    room = _FLOAT64_BLOCK_BYTES if limit is None else max(0, min(_FLOAT64_BLOCK_BYTES, limit - g_bytes))
    if compact is None:
        compacts = [_problem_bytes(rows, p_b) > room and _compact_bytes(rows, p_b) < _problem_bytes(rows, p_b)
                    for p_b in sizes]
    else:
        compacts = [bool(compact)] * len(sizes)
    work = [_compact_bytes(rows, p_b) if c else _problem_bytes(rows, p_b) for p_b, c in zip(sizes, compacts)]
    largest = int(np.argmax(work))
    chunk_bytes = None
    cache_bytes = _CACHE_BYTES
    if limit is not None:
        if g_bytes + work[largest] > limit:
            what = (f"G ({rows} rows × {total} weights × {store.itemsize} B = {_gb(g_bytes)}) plus "
                    if g_bytes else "")
            form = "in compact float32 form" if compacts[largest] else "as a float64 problem"
            hint = "gradient_storage='disk', " if g_bytes and work[largest] <= 0.9 * limit else ""
            raise MemoryLimitError(
                f"memory_limit={_gb(limit)} cannot hold {what}the largest block ({regions[largest][0]!r}: "
                f"{sizes[largest]} weights × {rows} rows, {_gb(work[largest])} {form}); use {hint}smaller blocks "
                f"(blocks='layer', 'row' or a chunk size) or fewer n_samples")
        spare = limit - g_bytes - work[largest]
        chunk_bytes = max(spare // 2, 16 << 20)
        cache_bytes = max(spare // 2, 0)

    buffer = _gradient_storage(rows * total, store, gradient_storage, storage_dir)
    views, routes, off = [], {n: [] for n in names}, 0
    inv_sqrt_n = 1.0 / math.sqrt(rows)
    for (block_name, parts, _), p_b, is_compact in zip(regions, sizes, compacts):
        # A compact block in RAM is stored column-major: its columns (what the chunked products read) are
        # contiguous, and Aᵀ is a ready contiguous (p, N) matrix for the torch backends. On disk every
        # block is row-major, so that a chunk of rows is one contiguous write (column-major, each chunk
        # would touch, and re-read from the file, every page of G).
        column_major = is_compact and gradient_storage == "memory"
        view = buffer[off:off + rows * p_b].reshape(p_b, rows).T if column_major \
            else buffer[off:off + rows * p_b].reshape(rows, p_b)
        views.append(view)
        col = 0
        for n, ix in parts:
            contiguous = ix.size == ix[-1] - ix[0] + 1 and bool(np.all(np.diff(ix) == 1))
            src = slice(int(ix[0]), int(ix[-1]) + 1) if contiguous else torch.as_tensor(ix)
            routes[n].append((view, col, col + ix.size, src, inv_sqrt_n if is_compact else None))
            col += ix.size
        off += rows * p_b

    on_disk = gradient_storage == "disk"

    def sink(start: int, stop: int, name: str, values: torch.Tensor) -> None:
        values = values.detach()
        for view, c0, c1, src, scale in routes[name]:
            part = values[:, src] if isinstance(src, slice) else values.index_select(1, src.to(values.device))
            if scale is not None:  # a compact block stores A = G/√N
                part = part * scale
            view[start:stop, c0:c1] = part.cpu().numpy()
            if on_disk:  # the written rows go to the page cache / file, not this process's RSS
                _drop_pages(view[start:stop])

    used = _stream_gradients(model, x[:usable], y[:usable], names, loss, dtype=dtype, batch_size=batch_size,
                             chunk_size=chunk_size, device=dev, method=method, progress=progress,
                             chunk_bytes=chunk_bytes, sink=sink)
    flat_w = {n: named[n].detach().reshape(-1).double().cpu().numpy() for n in names}
    cache = _ProblemCache(cache_bytes)
    out = []
    for (block_name, parts, n_fixed), view, is_compact in zip(regions, views, compacts):
        slices, start = [], 0
        for n, ix in parts:
            slices.append(ParamSlice(n, ix, start))
            start += ix.size
        w = np.concatenate([flat_w[n][ix] for n, ix in parts])
        info = {"n_rows": rows, "batch_size": batch_size, "gradient_method": used,
                "damping_rule": str(damping_rule), "storage": gradient_storage}
        if is_compact:
            info["compact"] = True
        if damping_rule.relative:
            info["mean_diagonal"] = _mean_square(view) * (rows if is_compact else 1.0)
            _drop_pages(view)
            lam = damping_rule.resolve(info["mean_diagonal"])
        else:
            lam = damping_rule.value
        out.append(Block(block_name, None, slices, n_fixed, info=info,
                         weights=w, grads=view, damping=lam, objective=objective, gradient=gradient, cache=cache,
                         compact=is_compact))
    return out
