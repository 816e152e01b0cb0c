"""Convex under-estimators of the CBS costs that are exact on binary points (private helpers).

Both objectives are written over the keep-indicator ``z ∈ {0,1}ᵖ`` (1 = kept, ``Σz = k = p − m``) as a
function ``φ`` that is **convex on [0,1]ᵖ** and **equal to the cost at every binary z**. Then every
tangent ``φ(z̄) + ∇φ(z̄)ᵀ(z − z̄)`` is a valid lower bound of the cost of *every* pruned set — the
cuts of the exact methods and the bounds of the relaxation all come from here.

Diagonal split. We write ``F = BᵀB + D`` with ``D = diag(d)``, ``d > 0`` and ``BᵀB ⪰ 0``
(``B = A = G/√N``, ``d = λ`` when N < p; otherwise the largest shift we can certify, see
:func:`diagonal_split`, and ``B`` is a ``p × p`` square root of ``F − D``).

"update" — perspective form. With ``w̃`` the Newton point and ``b = Bw̃``,

    φ(z) = min_x ½‖B(x − w̃)‖² + ½ Σ_i d_i (x_i²/z_i − 2 x_i w̃_i + w̃_i²)        (x_i = 0 when z_i = 0)

equals ``½(x−w̃)ᵀF(x−w̃)`` minimised over ``x_P = 0`` at a binary z (there ``x_i²/z_i = x_i²``). By
Fenchel duality (``½‖r‖² ≥ αᵀr − ½‖α‖²``, then minimising over each ``x_i`` separately), for every
``α`` and every ``z ∈ [0,1]ᵖ``

    φ(z) ≥ ½ Σ d_i w̃_i² − αᵀb − ½‖α‖² − Σ_i z_i v_i² / (2 d_i),      v = Bᵀα − d∘w̃,

with equality at the optimal residual ``α = B(x* − w̃) = −(I + B Z D⁻¹ Bᵀ)⁻¹ B((1−z)∘w̃)``. The right side is
linear in z, so it is the tangent: ``∂φ/∂z_i = −v_i²/(2d_i)``.

"selection" — diagonal shift (QCR style). With ``y = 1 − z`` (pruned), ``Q = WFW`` (``W = diag(w)``) and
``c = w∘ḡ`` the cost is ``½yᵀQy − cᵀy``. On binary points ``y_i² = y_i``, so with ``δ = w²∘d``

    φ(y) = ½ yᵀ(Q − diag δ) y + (½δ − c)ᵀ y,        Q − diag δ = W(F − D)W ⪰ 0,

is convex and exact on binary points; the larger the shift, the tighter its continuous relaxation.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg.lapack import dposv as _posv

__all__ = ["diagonal_split", "UpdateOracle", "SelectionOracle", "make_oracle", "local_search",
           "linear_min", "pool_bound"]

# Shifts are scaled down by this factor so that F − D stays safely positive semidefinite in floating point.
SHIFT_SAFETY = 1.0 - 1e-6


def diagonal_split(problem) -> tuple[np.ndarray | None, np.ndarray]:
    """``(B, d)`` with ``F = BᵀB + diag(d)``, ``d ≥ 0`` as large as we can certify cheaply.

    N < p (low-rank): ``B = A``, ``d = λ`` (``AᵀA`` is singular, no larger uniform shift exists).
    Otherwise ``F`` is formed (``p × p``) and two candidate shifts are compared by ``Σ d_i w̃_i²`` (the
    weight the perspective term can carry): the uniform ``λ_min(F)·1`` and the scaled
    ``λ_min(S F S)·diag(F)``, ``S = diag(F)^{-½}``. ``B`` is the symmetric square root of ``F − D``.
    """
    curv = problem.curvature
    p = problem.p
    if curv.is_low_rank and curv.n_samples < p:
        return curv.A, np.full(p, curv.damping)
    F = curv.dense()
    diag = np.diag(F).copy()
    w = problem.effective_weights if problem.objective_kind == "update" else problem.weights
    weight = w * w + 1e-300
    candidates = []
    lam_min = float(np.linalg.eigvalsh(F)[0])
    candidates.append(np.full(p, max(lam_min, 0.0)))
    if np.all(diag > 0):
        s = 1.0 / np.sqrt(diag)
        mu = float(np.linalg.eigvalsh(F * s[:, None] * s[None, :])[0])
        candidates.append(max(mu, 0.0) * diag)
    d = max(candidates, key=lambda c: float(c @ weight)) * SHIFT_SAFETY
    vals, vecs = np.linalg.eigh(F - np.diag(d))
    B = (vecs * np.sqrt(np.clip(vals, 0.0, None))).T
    keep = vals > 1e-14 * max(1.0, float(vals[-1]))
    return B[keep], d


class UpdateOracle:
    """The perspective function ``φ`` of the "update" cost (module docstring), without the constant."""

    kind = "update"

    def __init__(self, problem, B: np.ndarray, d: np.ndarray):
        if np.any(d <= 0):
            raise ValueError("the perspective form needs a positive diagonal (damping > 0 or F positive definite)")
        self.p = problem.p
        self.B, self.d = B, d
        self.w = problem.effective_weights.copy()
        self.b = B @ self.w
        self.const = 0.5 * float(d @ (self.w * self.w))
        self.offset = problem.update_constant   # added to φ to get the problem's objective

    def cut(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """``(φ(z), ∇φ(z))`` for ``z ∈ [0,1]ᵖ`` (exact value; the tangent is a global under-estimator)."""
        z = np.asarray(z, dtype=float)
        B, d, w = self.B, self.d, self.w
        if B.shape[0] == 0:
            alpha = np.zeros(0)
        else:
            BZ = B * (z / d)
            M = BZ @ B.T
            M.flat[::M.shape[0] + 1] += 1.0
            rhs = -(B @ ((1.0 - z) * w))
            # I + B Z D⁻¹ Bᵀ is symmetric positive definite (eigenvalues ≥ 1): Cholesky through LAPACK
            # directly, since the scipy wrapper's checks cost more than the solve at these sizes.
            _, alpha, info = _posv(M, rhs, lower=1, overwrite_a=0, overwrite_b=0)
            if info != 0:
                alpha = np.linalg.solve(M, rhs)
        v = B.T @ alpha - d * w
        grad = -(v * v) / (2.0 * d)
        value = self.const - float(alpha @ self.b) - 0.5 * float(alpha @ alpha) + float(z @ grad)
        return value, grad


class SelectionOracle:
    """The diagonally shifted convex form ``φ`` of the "selection" cost, over z = 1 − y."""

    kind = "selection"

    def __init__(self, problem, d: np.ndarray):
        self.p = problem.p
        w = problem.weights
        F = problem.curvature.dense()
        self.delta = w * w * d
        self.Q = (F * w[:, None] * w[None, :]) - np.diag(self.delta)
        c = np.zeros(self.p) if problem.gradient is None else w * problem.gradient
        self.lin = 0.5 * self.delta - c
        self.offset = 0.0

    def cut(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        y = 1.0 - np.asarray(z, dtype=float)
        Qy = self.Q @ y
        value = 0.5 * float(y @ Qy) + float(self.lin @ y)
        return value, -(Qy + self.lin)  # d/dz = −d/dy


def make_oracle(problem):
    """The oracle of the problem's objective kind, or ``None`` when no positive diagonal split exists."""
    B, d = diagonal_split(problem)
    if problem.objective_kind == "update":
        if np.any(d <= 0):
            return None
        return UpdateOracle(problem, B, d)
    return SelectionOracle(problem, np.clip(d, 0.0, None))


def linear_min(coef: np.ndarray, kept: np.ndarray, free: np.ndarray, n_more: int) -> np.ndarray:
    """``min cᵀz`` over binary z with ``z = 1`` on ``kept``, ``n_more`` ones among ``free``, 0 elsewhere.

    ``coef`` may be a stack ``(T, p)``; returns one value per row (a sort).
    """
    coef = np.atleast_2d(coef)
    out = coef[:, kept].sum(axis=1)
    if n_more > 0:
        sub = coef[:, free]
        if n_more < free.size:
            sub = np.partition(sub, n_more - 1, axis=1)[:, :n_more]
        out = out + sub.sum(axis=1)
    return out


def pool_bound(values: np.ndarray, grads: np.ndarray, points: np.ndarray, kept: np.ndarray,
               free: np.ndarray, n_more: int) -> float:
    """Best lower bound of the cut pool over a node: ``max_t [φ_t − g_tᵀz_t + min_{z∈node} g_tᵀz]``."""
    if values.size == 0:
        return -np.inf
    base = values - np.einsum("tp,tp->t", grads, points)
    return float(np.max(base + linear_min(grads, kept, free, n_more)))


def local_search(cost, z: np.ndarray, grad_of=None, *, max_evals: int = 2000) -> tuple[np.ndarray, float, int]:
    """First-improvement swap search over binary keep-vectors.

    ``cost(z)`` is the exact cost of a binary z. Candidate swaps (drop kept ``j``, keep pruned ``i``) are tried
    in the order of their first-order estimate ``g_i − g_j`` when ``grad_of(z)`` is given.
    Returns ``(z, cost, evaluations)``.
    """
    z = z.astype(bool).copy()
    best = cost(z)
    evals = 1
    improved = True
    while improved and evals < max_evals:
        improved = False
        kept, pruned = np.flatnonzero(z), np.flatnonzero(~z)
        if kept.size == 0 or pruned.size == 0:
            break
        if grad_of is not None:
            g = grad_of(z)
            est = g[pruned][:, None] - g[kept][None, :]
            order = np.argsort(est, axis=None, kind="stable")
        else:
            order = np.arange(pruned.size * kept.size)
        for flat in order:
            i, j = pruned[flat // kept.size], kept[flat % kept.size]
            z[i], z[j] = True, False
            value = cost(z)
            evals += 1
            if value < best - 1e-12 * max(1.0, abs(best)):
                best, improved = value, True
                break
            z[i], z[j] = False, True
            if evals >= max_evals:
                break
    return z, best, evals
