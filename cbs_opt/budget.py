"""Pruning budgets: how many weights to prune, in total or per group (DESIGN §1, "Structured budgets").

A budget partitions the ``p`` weights of a block into groups ``g = 0 … G−1`` and fixes an exact prune
count ``m_g`` in each:  ``|P ∩ group_g| = m_g``  (``Σ_{i∈g} y_i = m_g`` in the integer programs).

* ``Budget.total(p, m)`` — the classic single cardinality ``|P| = m`` (one group holding every weight);
* ``Budget.partition(groups, counts)`` — integer group ids (``0 … G−1``, each used) and per-group counts;
* ``Budget.pattern(p, "N:M")`` — N:M sparsity: consecutive groups of ``M`` weights, ``M − N`` pruned in each
  (at most ``N`` nonzeros in every ``M`` consecutive weights; 2:4 on NVIDIA tensor cores).

A :class:`Budget` is immutable and validated once, at construction; its arrays are read-only, so it may be
shared by reference between problems (e.g. every row of a layer).

Note on names: ``Budget.pattern(p, "2:4")`` called on the class builds an N:M budget, while
``budget.pattern`` on an instance is its pattern text (``"2:4"``) or ``None``.
"""
from __future__ import annotations

import numbers
import re
from typing import Literal

import numpy as np

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["Budget", "parse_pattern", "BUDGET_KINDS"]

BUDGET_KINDS = ("total", "partition")
BudgetKind = Literal["total", "partition"]

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str, name: str = "pattern") -> tuple[int, int]:
    """``"N:M"`` → ``(N, M)`` with ``0 ≤ N ≤ M`` and ``M ≥ 1`` (N kept weights in every M consecutive)."""
    if not isinstance(pattern, str):
        raise ArgumentTypeError(f"{name} must be a string like '2:4', got {type(pattern).__name__}")
    match = _PATTERN_RE.match(pattern)
    if match is None:
        raise InvalidArgumentError(f"{name} must look like 'N:M' (e.g. '2:4': at most N nonzeros in every M "
                                   f"consecutive weights), got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if m < 1:
        raise InvalidArgumentError(f"{name} {pattern!r}: M must be >= 1")
    if n > m:
        raise InvalidArgumentError(f"{name} {pattern!r}: N (kept per group) must be <= M (group size)")
    return n, m


def _int_array(name: str, value, ndim: int = 1) -> np.ndarray:
    """An integer array (bools and floats refused, even integral floats: which did the caller mean?)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be integers, not bool")
    arr = np.asarray(value)
    if arr.dtype == bool:
        raise ArgumentTypeError(f"{name} must be integers, not booleans")
    if arr.dtype == object:
        if arr.size and not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                                for v in arr.ravel()):
            raise ArgumentTypeError(f"{name} must be integers")
        arr = arr.astype(np.int64) if arr.size else arr.astype(np.intp)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ArgumentTypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise InvalidArgumentError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    return arr.astype(np.intp)


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.intp, copy=True)
    arr.flags.writeable = False
    return arr


class Budget:
    """An exact prune count per group of weights (immutable; validated at construction).

    Attributes
    ----------
    kind : "total" | "partition"
    groups : (p,) np.intp, read-only — the group id of each weight (all zeros for "total")
    counts : (G,) np.intp, read-only — how many weights to prune in each group (``[m]`` for "total")
    pattern : "N:M" text for an N:M budget, else None
    """

    def __init__(self, groups, counts, *, kind: BudgetKind = "partition", pattern: str | None = None,
                 _validated: bool = False):
        if not _validated:
            groups = _int_array("groups", groups)
            counts = _int_array("counts", np.atleast_1d(counts) if np.ndim(counts) == 0 else counts)
            p = groups.size
            if p == 0:
                raise InvalidArgumentError("groups must not be empty")
            g = counts.size
            if groups.min() < 0:
                raise InvalidArgumentError(f"groups must be ids 0..G-1, got a negative id {int(groups.min())}")
            used = np.bincount(groups)
            if used.size != g or np.any(used == 0):
                missing = np.flatnonzero(used == 0) if used.size else np.zeros(0, int)
                if used.size > g:
                    raise InvalidArgumentError(f"groups uses ids up to {used.size - 1} but counts gives "
                                               f"{g} per-group counts (need one count per group 0..G-1)")
                if used.size < g:
                    raise InvalidArgumentError(f"counts has {g} entries but groups only uses ids 0..{used.size - 1}"
                                               f" (need one count per group id)")
                raise InvalidArgumentError(f"groups must use every id 0..{g - 1}; id(s) "
                                           f"{', '.join(map(str, missing[:5]))} have no weights")
            bad = np.flatnonzero((counts < 0) | (counts > used))
            if bad.size:
                k = int(bad[0])
                raise InvalidArgumentError(f"counts[{k}] = {int(counts[k])} is outside [0, {int(used[k])}] "
                                           f"(group {k} has {int(used[k])} weights)")
            if kind not in BUDGET_KINDS:
                raise InvalidArgumentError(f"kind must be one of {BUDGET_KINDS}, got {kind!r}")
            if kind == "total" and g != 1:
                raise InvalidArgumentError("a total budget has exactly one group")
            if g == 1 and pattern is None:
                kind = "total"  # one group holding every weight is the classic cardinality budget
        d = object.__getattribute__(self, "__dict__")
        d["kind"] = kind
        d["groups"] = _frozen(groups)
        d["counts"] = _frozen(counts)
        d["pattern"] = pattern

    def __setattr__(self, name, value):
        raise AttributeError("Budget is immutable; use with_counts(...) or build a new one")

    def __delattr__(self, name):
        raise AttributeError("Budget is immutable")

    # -- constructors ----------------------------------------------------------------------------------
    @classmethod
    def total(cls, p: int, m: int) -> "Budget":
        """The classic budget ``|P| = m`` over ``p`` weights."""
        p = _check_int("p", p, 1, None)
        m = _check_int("n_prune", m, 0, p)
        return cls(np.zeros(p, np.intp), np.array([m], np.intp), kind="total", _validated=True)

    @classmethod
    def partition(cls, groups, counts) -> "Budget":
        """Exact prune counts per group: ``groups`` (p,) ids 0..G−1 (each used), ``counts`` (G,)."""
        return cls(groups, counts, kind="partition")

    @classmethod
    def from_pattern(cls, p: int, pattern: str) -> "Budget":
        """N:M sparsity over ``p`` weights: groups ``[0..M), [M..2M), …``, ``M − N`` pruned in each.

        ``p`` must be divisible by ``M``.
        """
        p = _check_int("p", p, 1, None)
        n, m = parse_pattern(pattern)
        if p % m:
            raise InvalidArgumentError(f"pattern {pattern!r} needs the number of weights to be divisible by "
                                       f"M = {m}, got {p} weights")
        g = p // m
        groups = np.repeat(np.arange(g, dtype=np.intp), m)
        counts = np.full(g, m - n, dtype=np.intp)
        return cls(groups, counts, kind="partition", pattern=f"{n}:{m}", _validated=True)

    pattern = from_pattern  # ``Budget.pattern(p, "2:4")``; on an instance ``.pattern`` is the text

    # -- sizes ---------------------------------------------------------------------------------------------
    @property
    def p(self) -> int:
        """Number of weights the budget covers."""
        return int(self.groups.size)

    @property
    def n_groups(self) -> int:
        return int(self.counts.size)

    @property
    def n_prune(self) -> int:
        """The total prune count ``Σ_g m_g``."""
        return int(self.counts.sum())

    @property
    def n_keep(self) -> int:
        return self.p - self.n_prune

    @property
    def group_sizes(self) -> np.ndarray:
        """``(G,)`` number of weights in each group."""
        d = self.__dict__
        if "_sizes" not in d:
            sizes = np.bincount(self.groups, minlength=self.n_groups).astype(np.intp)
            sizes.flags.writeable = False
            d["_sizes"] = sizes
        return d["_sizes"]

    @property
    def keep_counts(self) -> np.ndarray:
        """``(G,)`` how many weights each group keeps."""
        return self.group_sizes - self.counts

    @property
    def members(self) -> list[np.ndarray]:
        """One sorted, read-only index array per group (cached)."""
        d = self.__dict__
        if "_members" not in d:
            order = np.argsort(self.groups, kind="stable")  # stable: indices stay sorted inside a group
            bounds = np.cumsum(self.group_sizes)[:-1]
            parts = np.split(order.astype(np.intp), bounds)
            for part in parts:
                part.flags.writeable = False
            d["_members"] = parts
        return d["_members"]

    @property
    def is_total(self) -> bool:
        return self.kind == "total"

    # -- checks --------------------------------------------------------------------------------------------
    def pruned_counts(self, pruned) -> np.ndarray:
        """``(G,)`` how many of the indices ``pruned`` fall in each group (indices must be in [0, p))."""
        idx = np.asarray(pruned, dtype=np.intp).ravel()
        return np.bincount(self.groups[idx], minlength=self.n_groups)

    def is_satisfied(self, pruned) -> bool:
        """True when ``pruned`` (distinct indices in [0, p)) prunes exactly ``counts[g]`` in every group."""
        idx = np.asarray(pruned)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            return False
        if idx.size and (idx.min() < 0 or idx.max() >= self.p):
            return False
        ordered = np.sort(idx)  # repeats are neighbours once sorted (np.unique is far slower on large sets)
        if ordered.size > 1 and bool((ordered[1:] == ordered[:-1]).any()):
            return False
        return bool(np.array_equal(self.pruned_counts(idx), self.counts))

    def check(self, pruned, name: str = "pruned") -> None:
        """Raise :class:`InvalidArgumentError` naming the first group whose count is violated."""
        idx = np.asarray(pruned)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise InvalidArgumentError(f"{name} must be a 1-D array of integer indices")
        if idx.size and (idx.min() < 0 or idx.max() >= self.p):
            raise InvalidArgumentError(f"{name} has indices outside [0, {self.p})")
        if np.unique(idx).size != idx.size:
            raise InvalidArgumentError(f"{name} has repeated indices")
        got = self.pruned_counts(idx)
        bad = np.flatnonzero(got != self.counts)
        if bad.size:
            k = int(bad[0])
            if self.kind == "total":
                raise InvalidArgumentError(f"{name} prunes {int(got[0])} weights, the budget is {int(self.counts[0])}")
            raise InvalidArgumentError(f"{name} prunes {int(got[k])} weights in group {k}, its budget is "
                                       f"{int(self.counts[k])} ({bad.size} of {self.n_groups} groups violated)")

    # -- derived budgets -----------------------------------------------------------------------------------
    def with_counts(self, counts) -> "Budget":
        """The same groups with other per-group counts (an int is accepted for a total budget)."""
        if self.kind == "total" and np.ndim(counts) == 0:
            return Budget.total(self.p, counts)
        counts = _int_array("counts", counts)
        if counts.size != self.n_groups:
            raise InvalidArgumentError(f"counts must have {self.n_groups} entries (one per group), got {counts.size}")
        bad = np.flatnonzero((counts < 0) | (counts > self.group_sizes))
        if bad.size:
            k = int(bad[0])
            raise InvalidArgumentError(f"counts[{k}] = {int(counts[k])} is outside [0, {int(self.group_sizes[k])}]")
        pattern = self.pattern if np.array_equal(counts, self.counts) else None
        kind = "total" if self.n_groups == 1 and pattern is None else self.kind
        return Budget(self.groups, counts, kind=kind, pattern=pattern, _validated=True)

    # -- dunder --------------------------------------------------------------------------------------------
    def __eq__(self, other) -> bool:
        if not isinstance(other, Budget):
            return NotImplemented
        return (self.kind == other.kind and self.pattern == other.pattern
                and np.array_equal(self.groups, other.groups) and np.array_equal(self.counts, other.counts))

    def __hash__(self) -> int:
        return hash((self.kind, self.pattern, self.groups.tobytes(), self.counts.tobytes()))

    def __repr__(self) -> str:
        if self.kind == "total":
            return f"Budget.total(p={self.p}, m={self.n_prune})"
        if self.pattern is not None:
            return f"Budget.pattern(p={self.p}, {self.pattern!r})"
        return f"Budget.partition(p={self.p}, groups={self.n_groups}, n_prune={self.n_prune})"

    def __reduce__(self):
        return (_rebuild, (self.groups.copy(), self.counts.copy(), self.kind, self.pattern))


def _rebuild(groups, counts, kind, pattern):  # pickling (process pools, Dask)
    return Budget(groups, counts, kind=kind, pattern=pattern)


def _check_int(name: str, value, low: int, high: int | None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidArgumentError(f"{name} must be {rng}, got {value}")
    return value
