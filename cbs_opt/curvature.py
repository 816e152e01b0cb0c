"""The curvature matrix ``F`` as an operator.

Two representations (DESIGN §1):

* :class:`LowRankCurvature` — the damped empirical Fisher ``F = GᵀG/N + λI`` kept as ``A = G/√N``
  (``N × p``) and ``λ``. ``F`` is never formed: products cost ``O(Np)``, and solves with
  ``F`` or its sub-blocks go through the ``N × N`` matrix ``M = λI + AAᵀ`` (Woodbury) whenever
  that is the smaller side.
* :class:`DenseCurvature` — a user-given dense PSD matrix ``H`` (plus optional ``λI``).

Both expose the same small interface, which is everything the solvers need:
``matvec``, ``diagonal``, ``block``, ``quad``, ``solve``, ``inverse_diagonal`` and
``constrained_step`` (the CBS-U displacement for a pruned set).
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.linalg as sla

__all__ = ["Curvature", "LowRankCurvature", "DenseCurvature", "psd_solve"]

# Above this many entries, `dense()` refuses: forming F is what the low-rank form exists to avoid.
DENSE_LIMIT = 50_000_000


def psd_solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``matrix @ x = rhs`` for a symmetric PSD ``matrix``.

    Cholesky when the matrix is positive definite; a minimum-norm least-squares solution when it
    is singular (then any solution of the normal equations gives the same quadratic value, which is
    all the objectives need).
    """
    if matrix.shape[0] == 0:
        return np.zeros_like(rhs)
    try:
        factor = sla.cho_factor(matrix, lower=True, check_finite=False)
        return sla.cho_solve(factor, rhs, check_finite=False)
    except np.linalg.LinAlgError:
        return sla.lstsq(matrix, rhs, check_finite=False, lapack_driver="gelsy")[0]


class Curvature:
    """Interface shared by the curvature representations (all arrays float64, numpy)."""

    p: int
    damping: float

    def matvec(self, v: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """``F @ v`` for ``v`` of shape ``(p,)`` or ``(p, k)``."""
        raise NotImplementedError

    def diagonal(self) -> np.ndarray:  # pragma: no cover - interface
        """``diag(F)``."""
        raise NotImplementedError

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:  # pragma: no cover
        """The dense sub-matrix ``F[rows][:, cols]``."""
        raise NotImplementedError

    def quad(self, d: np.ndarray) -> float:
        """``dᵀ F d`` (never negative up to rounding)."""
        return float(d @ self.matvec(d))

    def solve(self, b: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """``F⁻¹ b`` (least-squares when ``F`` is singular)."""
        raise NotImplementedError

    def inverse_diagonal(self) -> np.ndarray:  # pragma: no cover - interface
        """``diag(F⁻¹)``; raises ``ValueError`` when ``F`` is singular."""
        raise NotImplementedError

    def constrained_step(self, pruned: np.ndarray, w: np.ndarray) -> np.ndarray:  # pragma: no cover
        """The CBS-U displacement ``d`` with ``d_P = −w_P`` minimising ``dᵀFd``.

        ``d_K = F_KK⁻¹ F_KP w_P`` (K the kept set), so ``w + d`` is the optimal update.
        """
        raise NotImplementedError

    def dense(self) -> np.ndarray:  # pragma: no cover - interface
        """``F`` as a dense ``p × p`` array (refused for very large ``p``)."""
        raise NotImplementedError

    @property
    def is_low_rank(self) -> bool:
        return isinstance(self, LowRankCurvature)


class LowRankCurvature(Curvature):
    """``F = AᵀA + λI`` with ``A = G/√N`` (DESIGN §1); ``F`` is never formed."""

    def __init__(self, grads: np.ndarray, damping: float):
        self.grads = grads
        self.n_samples, self.p = grads.shape
        self.damping = float(damping)
        self.A = grads / np.sqrt(self.n_samples) if self.n_samples else grads.copy()

    # -- products -------------------------------------------------------------------------------
    def matvec(self, v: np.ndarray) -> np.ndarray:
        return self.A.T @ (self.A @ v) + self.damping * v

    def diagonal(self) -> np.ndarray:
        return np.einsum("np,np->p", self.A, self.A) + self.damping

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = self.A[:, rows].T @ self.A[:, cols]
        if self.damping:
            out = out + self.damping * (np.asarray(rows)[:, None] == np.asarray(cols)[None, :])
        return out

    def quad(self, d: np.ndarray) -> float:
        ad = self.A @ d
        return float(ad @ ad + self.damping * (d @ d))

    def dense(self) -> np.ndarray:
        if self.p * self.p > DENSE_LIMIT:
            raise ValueError(f"refusing to form a dense {self.p}x{self.p} F; use the operator methods")
        return self.A.T @ self.A + self.damping * np.eye(self.p)

    # -- solves ---------------------------------------------------------------------------------
    @cached_property
    def gram(self) -> np.ndarray:
        """``AAᵀ`` (``N × N``), computed once."""
        return self.A @ self.A.T

    @cached_property
    def _small_side(self):
        """Cholesky factor of ``M = λI + AAᵀ`` (``N × N``), the Woodbury kernel."""
        if self.damping <= 0:
            raise ValueError("this operation needs damping > 0 when F is given by grads "
                             "(F = GᵀG/N is singular when N < p)")
        M = self.gram.copy()
        M[np.diag_indices_from(M)] += self.damping
        return sla.cho_factor(M, lower=True, check_finite=False)

    def _woodbury(self, b: np.ndarray) -> np.ndarray:
        # (AᵀA + λI)⁻¹ b = (b − Aᵀ M⁻¹ A b) / λ
        return (b - self.A.T @ sla.cho_solve(self._small_side, self.A @ b, check_finite=False)) / self.damping

    def solve(self, b: np.ndarray) -> np.ndarray:
        if self.damping > 0 and self.n_samples < self.p:
            return self._woodbury(b)
        return psd_solve(self.dense(), b)

    def inverse_diagonal(self) -> np.ndarray:
        return self._inverse_diagonal.copy()

    @cached_property
    def _inverse_diagonal(self) -> np.ndarray:
        # Cached: blocks re-solved at many budgets (prune's cost curves) share one curvature object.
        if self.n_samples >= self.p or self.damping <= 0:
            if self.damping <= 0 and self.n_samples < self.p:
                raise ValueError("diag(F⁻¹) needs damping > 0 when N < p (F is singular)")
            try:  # the p × p side is the smaller one
                L = np.linalg.cholesky(self.dense())
            except np.linalg.LinAlgError as exc:
                raise ValueError("diag(F⁻¹) needs F positive definite (add damping)") from exc
            Linv = sla.solve_triangular(L, np.eye(self.p), lower=True, check_finite=False)
            return np.einsum("ij,ij->j", Linv, Linv)
        # diag((AᵀA+λI)⁻¹) = (1 − diag(Aᵀ M⁻¹ A)) / λ, and diag(Aᵀ M⁻¹ A) = column norms² of L⁻¹A
        # (M = LLᵀ): one triangular solve instead of a full Cholesky solve, in column chunks.
        L = self._small_side[0]
        out = np.empty(self.p)
        for start in range(0, self.p, 8192):
            Y = sla.solve_triangular(L, self.A[:, start:start + 8192], lower=True, check_finite=False)
            out[start:start + 8192] = np.einsum("np,np->p", Y, Y)
        return (1.0 - out) / self.damping

    def constrained_step(self, pruned: np.ndarray, w: np.ndarray) -> np.ndarray:
        pruned = np.asarray(pruned, dtype=np.intp)
        d = np.zeros(self.p)
        if pruned.size == 0:
            return d
        kept = np.setdiff1d(np.arange(self.p), pruned, assume_unique=True)
        d[pruned] = -w[pruned]
        if kept.size == 0:
            return d
        N, lam = self.n_samples, self.damping
        k, m = kept.size, pruned.size
        s = np.zeros(self.p)
        s[pruned] = w[pruned]
        b = self.A @ s  # A_P w_P without copying the (often large) pruned columns
        A_K = self.A[:, kept]
        # Three exact ways to solve F_KK d_K = A_Kᵀ b; take the cheapest (flop estimates).
        primal = k * k * N + k ** 3 / 3
        dual = N * N * min(k, m) + N ** 3 / 3 if lam > 0 else np.inf
        if primal <= dual:
            F_KK = A_K.T @ A_K
            F_KK[np.diag_indices_from(F_KK)] += lam
            d[kept] = psd_solve(F_KK, A_K.T @ b)
        else:
            # Woodbury on the kept block: F_KK⁻¹ A_Kᵀ b = A_Kᵀ S⁻¹ b, S = λI + A_K A_Kᵀ.
            if k <= m:
                S = A_K @ A_K.T
                S[np.diag_indices_from(S)] += lam
            else:  # S = M − A_P A_Pᵀ reuses the cached M when few weights are pruned
                A_P = self.A[:, pruned]
                S = self.gram - A_P @ A_P.T
                S[np.diag_indices_from(S)] += lam
            d[kept] = A_K.T @ psd_solve(S, b)
        return d


class DenseCurvature(Curvature):
    """``F = H + λI`` for a user-given dense symmetric PSD ``H``."""

    def __init__(self, hessian: np.ndarray, damping: float = 0.0):
        self.hessian = hessian  # undamped, as given
        self.H = hessian + damping * np.eye(hessian.shape[0]) if damping else hessian
        self.p = hessian.shape[0]
        self.damping = float(damping)
        self.n_samples = None

    def matvec(self, v: np.ndarray) -> np.ndarray:
        return self.H @ v

    def diagonal(self) -> np.ndarray:
        return np.diag(self.H).copy()

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.H[np.ix_(rows, cols)]

    def dense(self) -> np.ndarray:
        return self.H

    @cached_property
    def _inverse(self) -> np.ndarray:
        try:
            return sla.cho_solve(sla.cho_factor(self.H, lower=True), np.eye(self.p))
        except np.linalg.LinAlgError as exc:
            raise ValueError("the hessian is singular: this operation needs it positive definite "
                             "(add damping)") from exc

    def solve(self, b: np.ndarray) -> np.ndarray:
        return psd_solve(self.H, b)

    def inverse_diagonal(self) -> np.ndarray:
        return np.diag(self._inverse).copy()

    def constrained_step(self, pruned: np.ndarray, w: np.ndarray) -> np.ndarray:
        pruned = np.asarray(pruned, dtype=np.intp)
        d = np.zeros(self.p)
        if pruned.size == 0:
            return d
        kept = np.setdiff1d(np.arange(self.p), pruned, assume_unique=True)
        d[pruned] = -w[pruned]
        if kept.size:
            d[kept] = psd_solve(self.H[np.ix_(kept, kept)], self.H[np.ix_(kept, pruned)] @ w[pruned])
        return d
