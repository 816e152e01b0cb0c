"""Depth-first "leaps and bounds" search over keep-sets for the "update" cost (private; used by ``miqp``).

The update cost of keeping the set ``S`` (``|S| = k``, everything else pruned) is

    cost(S) = ½ w̃ᵀF w̃ − ½ gain(S),        gain(S) = c_Sᵀ F_SS⁻¹ c_S,   c = F w̃,

(``x_S = F_SS⁻¹ c_S`` is the optimal update, w̃ the Newton point). So the search maximises ``gain`` over
k-subsets. ``gain`` is monotone — keeping more weights never costs more — which is the classic bound of
Furnival & Wilson's *leaps and bounds* for best-subset regression, used here in its depth-first form:

* A node keeps ``K`` and may still add ``b`` weights from an *ordered* candidate list ``u_1 … u_n``. Its
  data is the Schur complement ``S = F_UU − F_UK F_KK⁻¹ F_KU`` and ``c' = c_U − F_UK F_KK⁻¹ c_K``; then
  ``gain(K ∪ T) = gain(K) + c'_Tᵀ S_TT⁻¹ c'_T``. Adding ``u_t`` is a rank-one update of ``(S, c')``.
* Its ``t``-th child adds ``u_t`` and may afterwards add only ``u_{t+1} … u_n`` (each subset is visited
  once). Every keep-set in that subtree lies inside ``K ∪ {u_t … u_n}``, so by monotonicity its gain is at
  most ``gain(K) + c'_Vᵀ S_VV⁻¹ c'_V`` with ``V = {u_t … u_n}`` — a suffix. One Cholesky factorisation of
  the *reversed* ``S`` gives all suffix values at once (cumulative sums of the squared forward solve).
  They decrease with ``t``, so the first child whose bound cannot beat the incumbent ends the loop.
* Candidates are ordered by their single gain ``c'_j² / S_jj`` (largest first): the suffixes then hold the
  least useful weights, their bounds are small, and the good subtrees come first.
* Nodes with two weights left evaluate every pair in closed form (vectorised); one left, every single.

This is exact (no relaxation is involved) and strongest when the kept set is small relative to the rank
of ``F`` — high sparsity, or low-rank blocks with ``k < N`` where the perspective bounds of
:mod:`solvers.exact_bnb` are only λ-sized. Pruning leaves a numerical allowance of ``1e-12·w̃ᵀF w̃`` on the
conservative side; the reported bound is the largest gain bound of any pruned or unexplored subtree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg.lapack import dpotrf as _potrf, dtrtrs as _trtrs

from .base import Deadline

__all__ = ["leaps_search", "LeapsResult", "NumericalFailure"]

# Rounding allowance (relative to the largest possible gain w̃ᵀF w̃): a subtree is pruned only when its
# bound is below the incumbent by at least this much minus the optimality tolerance.
NUMERICAL_ALLOWANCE = 1e-12
_CHECK_EVERY = 256          # nodes between deadline checks / progress updates


class NumericalFailure(ArithmeticError):
    """A Schur complement stopped being numerically positive definite (caller falls back)."""


@dataclass
class LeapsResult:
    keep: np.ndarray           # bool (p,), the best keep-set found
    value: float               # its cost without the problem's offset: ½w̃ᵀFw̃ − ½gain
    bound: float               # proven lower bound on the optimum (same units)
    optimal: bool
    nodes: int = 0
    info: dict = field(default_factory=dict)


class _Search:
    """State of one depth-first search (incumbent, bounds of pruned / unexplored subtrees, counters)."""

    def __init__(self, p, total, best_keep, best_gain, deadline, node_limit, rel_gap, abs_gap, bar):
        self.p, self.total = p, total
        self.best_keep, self.best_gain = best_keep, best_gain
        self.deadline, self.node_limit, self.bar = deadline, node_limit, bar
        self.rel_gap, self.abs_gap = rel_gap, abs_gap
        self.allowance = NUMERICAL_ALLOWANCE * max(total, 0.0)
        self.pruned_max = -np.inf      # largest gain bound of a pruned subtree
        self.open_max = -np.inf        # largest gain bound of a subtree left unexplored at a stop
        self.nodes = 0
        self.stopped = False
        self._pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._refresh_threshold()

    def _refresh_threshold(self) -> None:
        if not np.isfinite(self.best_gain):
            self.threshold = -np.inf
            return
        # cost = const − gain/2, so a cost tolerance δ is a gain tolerance 2δ.
        best_cost = 0.5 * (self.total - self.best_gain)
        tol = 2.0 * max(self.abs_gap, self.rel_gap * abs(best_cost))
        self.threshold = self.best_gain + tol - self.allowance

    def offer(self, gain: float, keep_idx) -> None:
        if gain > self.best_gain:
            keep = np.zeros(self.p, dtype=bool)
            keep[np.asarray(keep_idx, dtype=np.intp)] = True
            self.best_keep, self.best_gain = keep, gain
            self._refresh_threshold()

    def tick(self) -> None:
        self.nodes += 1
        if self.nodes % _CHECK_EVERY == 0:
            if self.deadline.expired() or (self.node_limit is not None and self.nodes >= self.node_limit):
                self.stopped = True
            if self.bar is not None:
                self.bar.update(_CHECK_EVERY)
                self.bar.set_postfix(best=f"{0.5 * (self.total - self.best_gain):.6g}", refresh=False)
        elif self.node_limit is not None and self.nodes >= self.node_limit:
            self.stopped = True

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n not in self._pairs:
            self._pairs[n] = np.triu_indices(n, 1)
        return self._pairs[n]


def _suffix_gains(S: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``out[t] = c_Vᵀ S_VV⁻¹ c_V`` for every suffix ``V = {t, …, n−1}`` (one Cholesky of the reversed S)."""
    L, info = _potrf(S[::-1, ::-1], lower=1, clean=1)
    if info != 0:
        raise NumericalFailure("Schur complement not positive definite")
    y, info = _trtrs(L, c[::-1], lower=1)
    if info != 0:
        raise NumericalFailure("singular Cholesky factor")
    return np.cumsum(y * y)[::-1]


def _expand(st: _Search, gain: float, S: np.ndarray, c: np.ndarray, idx: np.ndarray, b: int,
            kept: list) -> None:
    """Search the subtree "keep ``kept``, add ``b`` of ``idx``" (module doc); ``S``, ``c`` are conditioned on kept."""
    st.tick()
    n = c.size
    d = S.diagonal()
    if d.min() <= 0:
        raise NumericalFailure("non-positive Schur pivot")
    if b == 1:
        single = c * c / d
        j = int(np.argmax(single))
        st.offer(gain + float(single[j]), kept + [int(idx[j])])
        return
    if b == 2:
        a, e = st.pairs(n)
        ca, ce, sae = c[a], c[e], S[a, e]
        pair = (ca * ca * d[e] - 2.0 * ca * ce * sae + ce * ce * d[a]) / (d[a] * d[e] - sae * sae)
        j = int(np.argmax(pair))
        st.offer(gain + float(pair[j]), kept + [int(idx[a[j]]), int(idx[e[j]])])
        return
    order = np.argsort(-(c * c / d), kind="stable")
    S, c, idx = S[order][:, order], c[order], idx[order]
    bounds = gain + _suffix_gains(S, c)
    for t in range(n - b + 1):
        ub = float(bounds[t])
        if ub <= st.threshold:
            # Suffix bounds decrease with t: every later child is pruned too.
            st.pruned_max = max(st.pruned_max, ub)
            return
        if st.stopped:
            st.open_max = max(st.open_max, ub)
            return
        piv = S[t, t]
        col = S[t + 1:, t]
        S_child = S[t + 1:, t + 1:] - col[:, None] * (col / piv)[None, :]
        c_child = c[t + 1:] - col * (c[t] / piv)
        _expand(st, gain + float(c[t] * c[t] / piv), S_child, c_child, idx[t + 1:], b - 1, kept + [int(idx[t])])


def leaps_search(F: np.ndarray, w: np.ndarray, k: int, *, incumbent: np.ndarray | None = None,
                 deadline: Deadline | None = None, node_limit: int | None = None, rel_gap: float = 1e-9,
                 abs_gap: float = 0.0, progress: bool = False) -> LeapsResult:
    """Maximise ``gain(S)`` over ``|S| = k`` (module doc) for a positive definite ``F`` and Newton point ``w``.

    ``incumbent``: an optional bool keep-vector to start from (prunes from the first node).
    Costs are reported without the problem's offset: ``½wᵀFw − ½gain``. Raises :class:`NumericalFailure` when
    a Schur complement is not numerically positive definite.
    """
    F = np.ascontiguousarray(F, dtype=float)
    w = np.asarray(w, dtype=float)
    p = w.size
    if not 1 <= k <= p:
        raise ValueError(f"k must be in [1, {p}], got {k}")
    deadline = deadline if deadline is not None else Deadline(None)
    c = F @ w
    total = float(w @ c)
    best_keep, best_gain = None, -np.inf
    if incumbent is not None:
        kk = np.flatnonzero(incumbent)
        L, info = _potrf(F[np.ix_(kk, kk)], lower=1)
        if info == 0:
            y, _ = _trtrs(L, c[kk], lower=1)
            best_keep, best_gain = incumbent.astype(bool).copy(), float(y @ y)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc="miqp leaps-and-bounds", unit="node")
    st = _Search(p, total, best_keep, best_gain, deadline, node_limit, rel_gap, abs_gap, bar)
    try:
        _expand(st, 0.0, F, c, np.arange(p), k, [])
    finally:
        if bar is not None:
            bar.close()
    best_bound_gain = max(st.best_gain, st.pruned_max, st.open_max)
    value = 0.5 * (total - st.best_gain)
    bound = min(value, 0.5 * (total - best_bound_gain))
    # Stopping only matters if it left a subtree unexplored (a stop at the very last node proves optimality).
    return LeapsResult(st.best_keep, value, bound, optimal=st.open_max == -np.inf, nodes=st.nodes,
                       info={"search": "leaps"})
