"""Node-level reduced problems for the "update" cost, with node-specific diagonal shifts (private).

A branch-and-bound node fixes ``K₀`` kept and ``P₀`` pruned and leaves ``U`` undecided (keep ``n`` more of
them). Its problem is again a CBS problem, only smaller:

* pruning ``P₀`` alone moves the Newton point to ``ŵ_R = w̃_R + F_RR⁻¹F_RP w̃_P`` on the alive set
  ``R = K₀ ∪ U`` and costs ``c₀ = ½w̃_PᵀF_PPw̃_P − ½tᵀF_RR⁻¹t`` (``t = F_RP w̃_P``), so for every ``x`` with
  ``x_P = 0``: ``½(x−w̃)ᵀF(x−w̃) = c₀ + ½(x_R−ŵ_R)ᵀF_RR(x_R−ŵ_R)``;
* the fixed-kept ``x_K`` are free continuous variables: minimising them out leaves the Schur complement
  ``S = F_UU − F_UK F_KK⁻¹ F_KU`` on ``U``, i.e. ``node cost(x_U) = c₀ + ½(x_U − ŵ_U)ᵀS(x_U − ŵ_U)``.

With the Cholesky factor ``L`` of ``F_RR`` ordered ``(K₀, U)`` the trailing block gives ``S = L_UU L_UUᵀ``.
``λ_min(S) ≥ λ_min(F_RR) ≥ λ_min(F)`` (interlacing), and deep in the tree it is often far larger: a split
``S = BᵀB + diag(d)`` with a node-specific ``d`` (uniform ``λ_min(S)``, or ``λ_min(ΣSΣ)·diag(S)`` with
``Σ = diag(S)^{-½}``, whichever carries more ``Σd_iŵ_i²``) gives a perspective relaxation of the node that
is never weaker than the global one and usually much stronger. Its tangents are valid for the node's
subtree only (they live in the node's coordinates), so they are used for that node and its children.
"""
from __future__ import annotations

import time

import numpy as np
from scipy.linalg.lapack import dpotrf as _potrf, dpotrs as _potrs

from .exact_core import SHIFT_SAFETY, UpdateOracle

__all__ = ["NodeReducer", "NodeProblem"]


class NodeProblem:
    """The reduced problem of one node: ``cost = c0 + φ_node(z_U)`` (oracle units, without the offset)."""

    __slots__ = ("free", "c0", "oracle", "shift")

    def __init__(self, free: np.ndarray, c0: float, oracle: UpdateOracle | None, shift: float):
        self.free, self.c0, self.oracle, self.shift = free, c0, oracle, shift


def _oracle_from_arrays(B: np.ndarray, d: np.ndarray, w: np.ndarray, R: np.ndarray | None = None) -> UpdateOracle:
    """An :class:`UpdateOracle` on given arrays (no Problem needed); ``R = BᵀB`` when known."""
    o = UpdateOracle.__new__(UpdateOracle)
    o.p, o.B, o.d, o.w, o.R = w.size, B, d, w, R
    o.b = B @ w
    o.const = 0.5 * float(d @ (w * w))
    o.offset = 0.0
    return o


class NodeReducer:
    """Builds :class:`NodeProblem` s from the dense ``F`` (``p × p``) and the Newton point ``w̃``."""

    def __init__(self, F: np.ndarray, w: np.ndarray):
        self.F = np.ascontiguousarray(F, dtype=float)
        self.w = np.asarray(w, dtype=float)
        self.p = self.w.size
        self.seconds = 0.0      # wall time of the latest reduce() (two eigendecompositions, not interruptible)

    def affordable(self, deadline) -> bool:
        """Whether a reduce() like the latest one fits in the time ``deadline`` has left."""
        return deadline is None or deadline.seconds is None or deadline.remaining() > 1.5 * self.seconds

    def reduce(self, kept: np.ndarray, pruned: np.ndarray, free: np.ndarray) -> NodeProblem | None:
        """The node's reduced problem, or ``None`` when a factorisation fails (caller falls back)."""
        start = time.perf_counter()
        try:
            return self._reduce(kept, pruned, free)
        finally:
            self.seconds = time.perf_counter() - start

    def _reduce(self, kept: np.ndarray, pruned: np.ndarray, free: np.ndarray) -> NodeProblem | None:
        F, w = self.F, self.w
        alive = np.concatenate([kept, free])
        FRR = F[np.ix_(alive, alive)]
        L, info = _potrf(FRR, lower=1, clean=1, overwrite_a=0)
        if info != 0:
            return None
        if pruned.size:
            wp = w[pruned]
            t = F[np.ix_(alive, pruned)] @ wp
            sol, info = _potrs(L, t, lower=1)
            if info != 0:
                return None
            c0 = 0.5 * float(wp @ (F[np.ix_(pruned, pruned)] @ wp)) - 0.5 * float(t @ sol)
            w_hat = w[alive] + sol
        else:
            c0, w_hat = 0.0, w[alive].copy()
        nk = kept.size
        Lu = L[nk:, nk:]
        S = Lu @ Lu.T
        wu = w_hat[nk:]
        B, d, shift, R = _split(S, wu)
        if B is None:
            return NodeProblem(free, c0, None, 0.0)
        return NodeProblem(free, max(c0, 0.0), _oracle_from_arrays(B, d, wu, R), shift)


def _split(S: np.ndarray, w: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, float, np.ndarray | None]:
    """``S = BᵀB + diag(d)`` with the better of the uniform and the diagonally scaled eigenvalue shift:
    ``(B, d, min d, R = S − diag(d) = BᵀB)`` (``B``, ``R`` ``None`` when no positive shift exists).

    The two shifts need only the smallest eigenvalues (``eigvalsh``); ``B`` is then the Cholesky factor of
    ``S − D`` (any factor serves: the oracle uses only ``BᵀB``), positive definite thanks to ``SHIFT_SAFETY``.
    Where that factorisation fails numerically, ``B`` is the clipped square root from ``eigh``.
    """
    n = S.shape[0]
    diag = np.diag(S).copy()
    weight = w * w
    best = None
    mu = float(np.linalg.eigvalsh(S)[0]) * SHIFT_SAFETY
    if mu > 0:
        best = (mu * float(weight.sum()), np.full(n, mu))
    if np.all(diag > 0):
        s = 1.0 / np.sqrt(diag)
        nu = float(np.linalg.eigvalsh(S * s[:, None] * s[None, :])[0]) * SHIFT_SAFETY
        if nu > 0 and (best is None or nu * float(diag @ weight) > best[0]):
            best = (nu * float(diag @ weight), nu * diag)
    if best is None:
        return None, np.zeros(n), 0.0, None
    d = best[1]
    R = S - np.diag(d)
    L, info = _potrf(R, lower=1, clean=1, overwrite_a=0)
    if info == 0:
        return L.T, d, float(np.min(d)), R
    ev, V = np.linalg.eigh(R)
    ev = np.clip(ev, 0.0, None)
    keep = ev > 1e-14 * max(1.0, float(ev[-1]))
    return (V[:, keep] * np.sqrt(ev[keep])).T, d, float(np.min(d)), R
