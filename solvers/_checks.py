"""Argument checks shared by the engine and the backends: every message names the offending argument.

It lives in ``solvers`` because backends need the same checks and must not import ``cbs_opt`` (the
engine imports the solvers, never the other way round); ``cbs_opt.validation`` re-exports it.
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["as_float_array", "as_index_set", "check_nonnegative", "check_count"]



def _to_numpy(value):
    # torch tensors (any device) without importing torch here
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return value


def as_float_array(name: str, value, ndim: int, *, copy: bool = True) -> np.ndarray:
    """A finite float64 array with ``ndim`` dimensions (a private copy by default)."""
    if value is None:
        raise InvalidArgumentError(f"{name} is required")
    value = _to_numpy(value)
    if np.iscomplexobj(value) or isinstance(value, complex):
        # numpy would drop the imaginary part with only a warning: refuse instead
        raise InvalidArgumentError(f"{name} must be real, got complex values")
    if isinstance(value, (list, tuple)) and _has_complex(value):
        raise InvalidArgumentError(f"{name} must be real, got complex values")
    try:
        arr = np.array(value, dtype=np.float64, copy=copy)
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
    if arr.ndim != ndim:
        raise InvalidArgumentError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidArgumentError(f"{name} contains NaN or inf")
    return arr


def _has_complex(seq) -> bool:
    for item in seq:
        if isinstance(item, (list, tuple)):
            if _has_complex(item):
                return True
        elif isinstance(item, complex) or np.iscomplexobj(item):
            return True
    return False


def check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be finite and >= 0, got {value}")
    return value


def check_count(name: str, value, upper: int) -> int:
    """An integer in ``[0, upper]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= upper:
        raise InvalidArgumentError(f"{name} must be in [0, {upper}], got {value}")
    return value


def as_index_set(name: str, value, p: int) -> np.ndarray:
    """Sorted unique int indices in ``[0, p)`` (boolean masks are refused: which polarity?)."""
    value = _to_numpy(value)
    arr = np.asarray(value)
    if arr.dtype == bool:
        raise ArgumentTypeError(f"{name} must be integer indices, not a boolean mask "
                        "(use np.flatnonzero(mask) for the positions you mean)")
    if arr.size == 0:
        return np.zeros(0, dtype=np.intp)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ArgumentTypeError(f"{name} must be a 1-D array of integer indices, got dtype {arr.dtype} "
                        f"and shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= p:
        raise InvalidArgumentError(f"{name} has indices outside [0, {p})")
    out = np.sort(arr).astype(np.intp, copy=False)  # sort + neighbour test: np.unique is ~100x slower here
    if out.size > 1 and bool((out[1:] == out[:-1]).any()):
        raise InvalidArgumentError(f"{name} has repeated indices")
    return out
