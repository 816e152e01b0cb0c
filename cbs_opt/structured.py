"""Structured budgets for layer weights: N:M patterns and balanced (per-row) sparsity.

Hardware-accelerated sparsity constrains groups that run along the *input* dimension of a weight:

* a Linear weight ``(out, in)`` is flattened row-major, so each row (one output unit) is ``in``
  consecutive entries; N:M groups are ``M`` consecutive weights of a row;
* a Conv weight ``(out, in, kh, kw)`` (any ``(out, …)``) is flattened the same way: each output channel's
  row is the flattened ``in × kh × kw`` filter, and the N:M groups run along it.

Every function here works on the flat, row-major index ``i = row · L + j`` with ``L = prod(shape[1:])``,
the layout of ``weight.reshape(-1)`` / ``weight.flatten()``, and returns plain numpy arrays or a
:class:`~cbs_opt.budget.Budget`, so a caller can build a :class:`~cbs_opt.problem.Problem` over a whole
tensor or slice rows out of it (``row_slice``).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from .budget import Budget, parse_pattern
from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["row_length", "pattern_groups", "pattern_budget", "row_groups", "row_budget", "row_slice",
           "check_pattern_mask", "check_row_mask"]


def _shape(shape) -> tuple[int, ...]:
    if hasattr(shape, "shape") and not isinstance(shape, tuple):
        shape = tuple(shape.shape)  # a tensor or array was passed: use its shape
    if isinstance(shape, numbers.Integral) or not isinstance(shape, Sequence):
        raise ArgumentTypeError(f"shape must be a tuple like (out, in) or (out, in, kh, kw), got {shape!r}")
    shape = tuple(shape)
    if len(shape) < 2:
        raise InvalidArgumentError(f"shape must have at least 2 dimensions (out, in, ...) for a structured "
                                   f"budget, got {shape}")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise InvalidArgumentError(f"shape must hold positive integers, got {shape}")
    return tuple(int(d) for d in shape)


def row_length(shape) -> int:
    """``L = prod(shape[1:])``: the length of one output unit's row (``in`` or ``in·kh·kw``)."""
    shape = _shape(shape)
    return int(np.prod(shape[1:]))


def pattern_groups(shape, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Group ids and per-group prune counts of N:M sparsity on a weight of ``shape``.

    Returns ``(groups, counts)``: ``groups`` (prod(shape),) np.intp with ``groups[i] = i // M`` on the
    row-major flat index (each row splits into ``L / M`` groups of ``M`` consecutive weights, never
    crossing rows) and ``counts`` (G,) np.intp, all ``M − N``. The row length ``L`` must be divisible by M.
    """
    shape = _shape(shape)
    n, m = parse_pattern(pattern)
    length = int(np.prod(shape[1:]))
    if length % m:
        what = "in_features" if len(shape) == 2 else "in_channels × kernel size"
        raise InvalidArgumentError(f"pattern {pattern!r} needs the row length ({what} = {length} for a weight "
                                   f"of shape {shape}) to be divisible by M = {m}")
    total = shape[0] * length
    groups = np.arange(total, dtype=np.intp) // m
    counts = np.full(total // m, m - n, dtype=np.intp)
    return groups, counts


def pattern_budget(shape, pattern: str) -> Budget:
    """:class:`Budget` of N:M sparsity over a whole weight of ``shape`` (see :func:`pattern_groups`)."""
    shape = _shape(shape)
    pattern_groups(shape, pattern)  # the row-length check with its layer-aware message
    return Budget.pattern(int(np.prod(shape)), pattern)


def row_groups(shape) -> np.ndarray:
    """Group ids of balanced sparsity: ``groups[i] = i // L`` — one group per output unit / channel."""
    shape = _shape(shape)
    return np.arange(int(np.prod(shape)), dtype=np.intp) // int(np.prod(shape[1:]))


def row_budget(shape, sparsity: float) -> Budget:
    """Balanced sparsity: the same prune count ``round(sparsity · L)`` in every row of a weight of ``shape``."""
    shape = _shape(shape)
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ArgumentTypeError(f"sparsity must be a real number, got {type(sparsity).__name__}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity <= 1.0:
        raise InvalidArgumentError(f"sparsity must be in [0, 1], got {sparsity}")
    length = int(np.prod(shape[1:]))
    per_row = int(round(sparsity * length))
    return Budget.partition(row_groups(shape), np.full(shape[0], per_row, dtype=np.intp))


def row_slice(shape, row: int) -> slice:
    """The flat index range of output unit ``row`` (``weight.reshape(-1)[row_slice(shape, r)]``)."""
    shape = _shape(shape)
    if isinstance(row, bool) or not isinstance(row, numbers.Integral) or not 0 <= row < shape[0]:
        raise InvalidArgumentError(f"row must be an integer in [0, {shape[0]}), got {row!r}")
    length = int(np.prod(shape[1:]))
    return slice(int(row) * length, (int(row) + 1) * length)


def _mask_array(mask) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.dtype != bool:
        raise ArgumentTypeError(f"mask must be a boolean array (True = kept), got dtype {arr.dtype}")
    return arr


def check_pattern_mask(mask, pattern: str, *, name: str = "mask") -> None:
    """Raise :class:`InvalidArgumentError` unless the keep-mask (True = kept, shape ``(out, …)``) has at most
    ``N`` kept in every group of ``M`` consecutive weights of each row (what the hardware requires)."""
    arr = _mask_array(mask)
    n, m = parse_pattern(pattern)
    groups, _ = pattern_groups(arr.shape, pattern)
    kept = np.bincount(groups, weights=arr.reshape(-1).astype(np.float64), minlength=groups[-1] + 1)
    bad = np.flatnonzero(kept > n)
    if bad.size:
        g = int(bad[0])
        length = int(np.prod(arr.shape[1:]))
        row, col = divmod(g * m, length)
        raise InvalidArgumentError(f"{name} breaks pattern {pattern!r}: {int(kept[g])} kept in row {row}, "
                                   f"columns {col}..{col + m - 1} ({bad.size} groups violated)")


def check_row_mask(mask, per_row: int, *, name: str = "mask") -> None:
    """Raise :class:`InvalidArgumentError` unless every row of the keep-mask prunes exactly ``per_row``."""
    arr = _mask_array(mask)
    rows = arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else None
    if rows is None:
        raise InvalidArgumentError(f"{name} must have at least 2 dimensions, got shape {arr.shape}")
    pruned = (~rows).sum(axis=1)
    bad = np.flatnonzero(pruned != per_row)
    if bad.size:
        r = int(bad[0])
        raise InvalidArgumentError(f"{name} prunes {int(pruned[r])} weights in row {r}, expected {per_row} "
                                   f"in every row ({bad.size} rows differ)")
