"""Optimal split of a global pruning budget across independent blocks.

With a block-diagonal Fisher the global objective is separable: pruning ``m_b`` weights in block
``b`` costs ``c_b(m_b)`` (the block's optimal — or best found — cost at that budget), so the best
split of a global budget ``M`` solves

    min  Σ_b c_b(m_b)    s.t.  Σ_b m_b = M,   0 ≤ m_b ≤ p_b,  m_b integer.

* ``"dp"`` — dynamic programming over blocks (a multiple-choice knapsack with an equality):
  ``V_b(s) = min_j V_{b−1}(s − j) + c_b(j)``; exact for any curves, ``O(Σ_b (p_b+1) · (M+1))``.
* ``"greedy"`` — take the ``M`` smallest marginal costs ``c_b(j) − c_b(j−1)`` over all blocks;
  exact when every curve is convex (marginals nondecreasing, so each block's picks form a prefix).
* ``"hull"`` — greedy on each curve's lower convex envelope: exact for the envelopes, a heuristic for
  the curves themselves (used by ``"auto"`` only when the DP would be too large).

``"auto"`` picks ``greedy`` when all curves are convex, else ``dp`` (``hull`` beyond ``max_dp_work``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

__all__ = ["Allocation", "allocate", "is_convex", "lower_hull", "interpolate_curve", "uniform_split"]

Method = Literal["auto", "dp", "greedy", "hull"]


@dataclass
class Allocation:
    """The chosen budgets ``counts[b]``, their total cost under the curves, and how it was found."""

    counts: np.ndarray
    cost: float
    method: str
    exact: bool  # proven optimal for the given curves


def _check_curves(curves: Sequence) -> list[np.ndarray]:
    out = []
    if len(curves) == 0:
        raise ValueError("curves is empty: need at least one block")
    for b, c in enumerate(curves):
        arr = np.asarray(c, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"curves[{b}] must be a non-empty 1-D array of costs c_b(0..p_b)")
        if np.isnan(arr).any() or np.isneginf(arr).any():
            raise ValueError(f"curves[{b}] contains NaN or -inf (use +inf for unavailable budgets)")
        out.append(arr)
    return out


def is_convex(curve, rtol: float = 1e-9) -> bool:
    """Whether the marginals ``c(j) − c(j−1)`` are nondecreasing (up to ``rtol`` of the curve's scale)."""
    c = np.asarray(curve, dtype=np.float64)
    if not np.all(np.isfinite(c)):
        return False
    if c.size < 3:
        return True
    d = np.diff(c)
    scale = max(1.0, float(np.abs(c).max()))
    return bool(np.all(np.diff(d) >= -rtol * scale))


def lower_hull(curve) -> np.ndarray:
    """The lower convex envelope of a finite curve, evaluated at every integer point."""
    c = np.asarray(curve, dtype=np.float64)
    hull: list[int] = []
    for j in range(c.size):  # Andrew's monotone chain, lower part
        while len(hull) >= 2:
            i, k = hull[-2], hull[-1]
            # drop k when it lies on or above the segment i → j
            if (c[k] - c[i]) * (j - i) >= (c[j] - c[i]) * (k - i):
                hull.pop()
            else:
                break
        hull.append(j)
    return np.interp(np.arange(c.size), hull, c[hull])


def interpolate_curve(ms, costs, size: int) -> np.ndarray:
    """A dense curve ``c(0..size)`` from costs known at the budgets ``ms`` (piecewise linear)."""
    ms = np.asarray(ms, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    order = np.argsort(ms)
    ms, costs = ms[order], costs[order]
    if ms[0] != 0 or ms[-1] != size:
        raise ValueError(f"ms must include both ends 0 and {size}, got {ms[0]:g}..{ms[-1]:g}")
    return np.interp(np.arange(size + 1), ms, costs)


def uniform_split(sizes, total: int) -> np.ndarray:
    """``total`` split in proportion to ``sizes`` (largest remainder; exact sum, each ≤ its size)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if total < 0 or total > sizes.sum():
        raise ValueError(f"total must be in [0, {int(sizes.sum())}], got {total}")
    if sizes.sum() == 0:
        return np.zeros_like(sizes)
    exact = sizes * (total / sizes.sum())
    counts = np.floor(exact).astype(np.int64)
    rest = int(total - counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    return np.minimum(counts, sizes)


def _greedy(curves: list[np.ndarray], total: int) -> np.ndarray:
    marg = np.concatenate([np.diff(c) for c in curves])
    owner = np.concatenate([np.full(c.size - 1, b) for b, c in enumerate(curves)])
    # stable sort keeps a block's equal marginals in budget order, so every block takes a prefix
    picked = np.argsort(marg, kind="stable")[:total]
    return np.bincount(owner[picked], minlength=len(curves)).astype(np.int64)


def _dp(curves: list[np.ndarray], total: int) -> np.ndarray:
    S = total
    best = np.full(S + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((len(curves), S + 1), dtype=np.int64)
    for b, c in enumerate(curves):
        new = np.full(S + 1, np.inf)
        arg = np.zeros(S + 1, dtype=np.int64)
        for j in range(min(c.size - 1, S) + 1):
            if not np.isfinite(c[j]):
                continue
            cand = best[:S + 1 - j] + c[j]
            better = cand < new[j:]  # strict: the smallest j wins ties (deterministic)
            new[j:][better] = cand[better]
            arg[j:][better] = j
        best, choice[b] = new, arg
    if not np.isfinite(best[S]):
        raise ValueError(f"no split of total={total} has finite cost under the given curves")
    counts = np.zeros(len(curves), dtype=np.int64)
    s = S
    for b in range(len(curves) - 1, -1, -1):
        counts[b] = choice[b, s]
        s -= counts[b]
    return counts


def allocate(curves: Sequence, total: int, *, method: Method = "auto",
             max_dp_work: float = 2e9) -> Allocation:
    """Split ``total`` over blocks minimising ``Σ_b curves[b][m_b]`` (``curves[b]`` = costs at m = 0..p_b).

    ``+inf`` marks a budget a block cannot take. See the module docstring for the methods.
    """
    curves = _check_curves(curves)
    capacity = sum(c.size - 1 for c in curves)
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)):
        raise TypeError(f"total must be an integer, got {type(total).__name__}")
    total = int(total)
    if not 0 <= total <= capacity:
        raise ValueError(f"total must be in [0, {capacity}] (the blocks' combined size), got {total}")
    if method not in ("auto", "dp", "greedy", "hull"):
        raise ValueError(f"method must be 'auto', 'dp', 'greedy' or 'hull', got {method!r}")
    finite = all(np.all(np.isfinite(c)) for c in curves)
    convex = finite and all(is_convex(c) for c in curves)
    work = sum(min(c.size, total + 1) for c in curves) * (total + 1)
    if method == "auto":
        method = "greedy" if convex else ("dp" if work <= max_dp_work or not finite else "hull")
    if method in ("greedy", "hull") and not finite:
        raise ValueError(f"method={method!r} needs finite curves (use 'dp' with +inf entries)")
    if method == "greedy":
        counts, exact = _greedy(curves, total), convex
    elif method == "hull":
        counts, exact = _greedy([lower_hull(c) for c in curves], total), convex
    else:
        counts, exact = _dp(curves, total), True
    cost = float(sum(c[m] for c, m in zip(curves, counts)))
    return Allocation(counts=counts, cost=cost, method=method, exact=exact)
