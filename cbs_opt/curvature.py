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

import weakref
from functools import cached_property

import numpy as np
import scipy.linalg as sla

__all__ = ["Curvature", "LowRankCurvature", "DenseCurvature", "ScaledGrads", "psd_solve"]

# Torch views of curvature objects (Curvature.torch_view): {curvature: {(device, dtype, transposed): tensor}};
# weak keys, so a view dies with its curvature, and nothing of it travels when a curvature is pickled.
_TORCH_VIEWS: "weakref.WeakKeyDictionary[Curvature, dict]" = weakref.WeakKeyDictionary()

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

    def torch_view(self, device="cpu", dtype=None, *, transposed: bool = False):
        """The big array of ``F`` as a torch tensor on ``device`` in ``dtype``, cached per curvature object.

        Low rank: ``A = G/√N`` ``(N, p)``, or with ``transposed=True`` a contiguous ``Aᵀ`` ``(p, N)`` (row
        gathers of a few weights' columns are then contiguous); dense: ``F = H + λI`` ``(p, p)``
        (``transposed`` is ignored, ``F`` is symmetric). ``dtype`` defaults to float64. Every backend that
        works in torch asks here, so blocks or rows sharing one curvature convert it once per
        (device, dtype, layout); a float64 CPU view of ``A`` shares the numpy memory (no copy). The
        cache lives as long as this object and is never pickled. Treat the tensor as read-only.
        """
        import torch  # the engine's numpy core does not need torch; backends that ask for a view do

        dev = torch.device(device)
        dt = torch.float64 if dtype is None else dtype
        low_rank = self.is_low_rank
        key = (str(dev), dt, bool(transposed) and low_rank)
        views = _TORCH_VIEWS.setdefault(self, {})
        hit = views.get(key)
        if hit is not None:
            return hit
        import warnings
        with warnings.catch_warnings():  # the arrays may be read-only numpy; the view is only read
            warnings.simplefilter("ignore", UserWarning)
            if low_rank:
                A = torch.from_numpy(np.asarray(self.A))
                if transposed:
                    src = A.T  # (p, N) strided view; copied to a contiguous tensor in row chunks
                    out = torch.empty(src.shape, dtype=dt, device=dev)
                    step = max(1, (64 << 20) // (8 * max(1, src.shape[1])))
                    for lo in range(0, src.shape[0], step):
                        out[lo:lo + step] = src[lo:lo + step].to(device=dev, dtype=dt)
                else:
                    out = A.to(device=dev, dtype=dt)
            else:
                out = torch.from_numpy(np.asarray(self.dense())).to(device=dev, dtype=dt)
        views[key] = out
        return out


class ScaledGrads:
    """Read-only stand-in for ``G = √N·A`` when only the factor ``A`` is stored (compact curvature).

    Has ``shape``/``ndim``/``dtype`` like the array it stands for; indexing or ``np.asarray`` computes
    the float64 values on demand (``Problem.save``, slicing a sub-problem), so nothing of size
    ``N × p`` in float64 exists unless somebody asks for it.
    """

    class _Flags:
        owndata = False
        writeable = False

    flags = _Flags()

    def __init__(self, A: np.ndarray, scale: float):
        self._A, self._scale = A, float(scale)
        self.shape, self.ndim, self.size = tuple(A.shape), 2, int(A.size)
        self.dtype = np.dtype(np.float64)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self._A, dtype=np.float64) * self._scale
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self._A[index], dtype=np.float64) * self._scale

    def __repr__(self) -> str:
        return f"ScaledGrads(shape={self.shape}, stored as {self._A.dtype})"


# Columns per step when a compact (float32) factor is upcast piecewise: about 64 MiB of float64 at N = 1000.
_COLUMN_CHUNK_BYTES = 64 << 20


class LowRankCurvature(Curvature):
    """``F = AᵀA + λI`` with ``A = G/√N`` (DESIGN §1); ``F`` is never formed.

    Built from float64 ``grads`` (``A`` is then a float64 copy), or with :meth:`from_factor` from a stored
    ``A`` of any float type, without copying it. A **compact** curvature (``A`` in float32) computes in
    float64 all the same: every product upcasts ``A`` one block of columns at a time, so its memory is the
    float32 factor plus ``O(N·chunk)`` — the form :mod:`cbs_opt.fisher` uses for blocks too large to
    hold in float64. Solvers that read ``A`` directly get the float32 factor.
    """

    def __init__(self, grads: np.ndarray, damping: float):
        self.grads = grads
        self.n_samples, self.p = grads.shape
        self.damping = float(damping)
        self.A = grads / np.sqrt(self.n_samples) if self.n_samples else grads.copy()

    @classmethod
    def from_factor(cls, A: np.ndarray, damping: float, *, shared: dict | None = None) -> "LowRankCurvature":
        """The curvature ``AᵀA + λI`` of a stored factor ``A = G/√N`` (shared, never copied or written).

        ``shared``: a dict kept by the caller for every curvature over the same ``A`` (the same block under
        several dampings); the damping-free ``AAᵀ`` is computed once and kept there.
        """
        self = cls.__new__(cls)
        self._shared = shared
        self.A = A
        self.n_samples, self.p = A.shape
        self.damping = float(damping)
        if self.n_samples == 0:
            raise ValueError("the factor A must have at least one row (N >= 1)")
        self.grads = ScaledGrads(A, np.sqrt(self.n_samples))  # G on demand only
        return self

    @property
    def compact(self) -> bool:
        """True when ``A`` is stored in a narrower type than float64 (products are chunked)."""
        return self.A.dtype != np.float64

    def torch_view(self, device="cpu", dtype=None, *, transposed: bool = False):
        """:meth:`Curvature.torch_view`, sharing memory when the stored factor already has the asked
        layout: a column-major float32 ``A`` (as :mod:`cbs_opt.fisher` stores compact blocks) *is* a
        contiguous float32 ``Aᵀ``, so torch backends then work on it without a second copy."""
        import torch

        dt = torch.float64 if dtype is None else dtype
        want = self.A.T if transposed else self.A
        if torch.device(device).type == "cpu" and want.flags.c_contiguous \
                and torch.from_numpy(np.zeros(0, dtype=want.dtype)).dtype == dt:
            import warnings
            with warnings.catch_warnings():  # a read-only array: the view is only read
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(want)
        return super().torch_view(device, dtype, transposed=transposed)

    # -- chunked primitives (float64 results whatever A's type) -------------------------------------
    def _chunks(self, n: int | None = None):
        n = self.p if n is None else n
        step = max(1, _COLUMN_CHUNK_BYTES // (8 * max(1, self.n_samples)))
        return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def _cols(self, index) -> np.ndarray:
        """``A[:, index]`` in float64."""
        return np.asarray(self.A[:, index], dtype=np.float64)

    def _dot(self, v: np.ndarray) -> np.ndarray:
        """``A @ v``."""
        if not self.compact:
            return self.A @ v
        out = np.zeros((self.n_samples,) + np.shape(v)[1:])
        for c in self._chunks():
            out += self._cols(c) @ v[c]
        return out

    def _tdot(self, z: np.ndarray) -> np.ndarray:
        """``Aᵀ @ z``."""
        if not self.compact:
            return self.A.T @ z
        out = np.empty((self.p,) + np.shape(z)[1:])
        for c in self._chunks():
            out[c] = self._cols(c).T @ z
        return out

    def _gram_of(self, index: np.ndarray | None = None) -> np.ndarray:
        """``A_S A_Sᵀ`` (``N × N``) over the columns ``index`` (all by default), accumulated in chunks."""
        out = np.zeros((self.n_samples, self.n_samples))
        n = self.p if index is None else len(index)
        for c in self._chunks(n):
            block = self._cols(c if index is None else index[c])
            out += block @ block.T
        return out

    # -- products -------------------------------------------------------------------------------
    def matvec(self, v: np.ndarray) -> np.ndarray:
        return self._tdot(self._dot(v)) + self.damping * v

    def diagonal(self) -> np.ndarray:
        if not self.compact:
            return np.einsum("np,np->p", self.A, self.A) + self.damping
        out = np.empty(self.p)
        for c in self._chunks():
            block = self._cols(c)
            out[c] = np.einsum("np,np->p", block, block)
        return out + self.damping

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = self._cols(rows).T @ self._cols(cols)
        if self.damping:
            out = out + self.damping * (np.asarray(rows)[:, None] == np.asarray(cols)[None, :])
        return out

    def quad(self, d: np.ndarray) -> float:
        ad = self._dot(d)
        return float(ad @ ad + self.damping * (d @ d))

    def dense(self) -> np.ndarray:
        if self.p * self.p > DENSE_LIMIT:
            raise ValueError(f"refusing to form a dense {self.p}x{self.p} F; use the operator methods")
        A = self._cols(slice(None))
        return A.T @ A + self.damping * np.eye(self.p)

    # -- solves ---------------------------------------------------------------------------------
    @cached_property
    def gram(self) -> np.ndarray:
        """``AAᵀ`` (``N × N``), computed once (once per shared factor, see :meth:`from_factor`)."""
        shared = getattr(self, "_shared", None)
        if shared is not None and "gram" in shared:
            return shared["gram"]
        gram = self.A @ self.A.T if not self.compact else self._gram_of()
        if shared is not None:
            gram.flags.writeable = False
            shared["gram"] = gram
        return gram

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
        return (b - self._tdot(sla.cho_solve(self._small_side, self._dot(b), check_finite=False))) / self.damping

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
            Y = sla.solve_triangular(L, self._cols(slice(start, start + 8192)), lower=True, check_finite=False)
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
        b = self._dot(s)  # A_P w_P without copying the (often large) pruned columns
        # Three exact ways to solve F_KK d_K = A_Kᵀ b; take the cheapest (flop estimates).
        primal = k * k * N + k ** 3 / 3
        dual = N * N * min(k, m) + N ** 3 / 3 if lam > 0 else np.inf
        if primal <= dual:
            A_K = self._cols(kept)
            F_KK = A_K.T @ A_K
            F_KK[np.diag_indices_from(F_KK)] += lam
            d[kept] = psd_solve(F_KK, A_K.T @ b)
            return d
        # Woodbury on the kept block: F_KK⁻¹ A_Kᵀ b = A_Kᵀ S⁻¹ b, S = λI + A_K A_Kᵀ.
        if not self.compact:
            A_K = self.A[:, kept]
            if k <= m:
                S = A_K @ A_K.T
            else:  # S = M − A_P A_Pᵀ reuses the cached M when few weights are pruned
                A_P = self.A[:, pruned]
                S = self.gram - A_P @ A_P.T
            S[np.diag_indices_from(S)] += lam
            d[kept] = A_K.T @ psd_solve(S, b)
            return d
        # compact: the same algebra with every product over column chunks (no N × k float64 copy)
        S = self._gram_of(kept) if k <= m else self.gram - self._gram_of(pruned)
        S[np.diag_indices_from(S)] += lam
        z = psd_solve(S, b)
        for c in self._chunks(k):
            d[kept[c]] = self._cols(kept[c]).T @ z
        return d


class DenseCurvature(Curvature):
    """``F = H + λI`` for a user-given dense symmetric PSD ``H``.

    Built once and shared by reference (``Problem(curvature=...)``, e.g. by every row of a layer in
    layer-wise pruning, where ``H = XᵀX/n``), so everything that depends only on ``F`` is computed
    at most once per object and cached:

    * the Cholesky factor ``F = LLᵀ`` (``factor``; counted in ``n_factorizations``), used by ``solve``;
    * ``F⁻¹`` from it (``inverse``), used by ``inverse_diagonal`` and, once it exists, by
      ``constrained_step`` when few weights are pruned: ``d = −F⁻¹[:, P] ((F⁻¹)_PP)⁻¹ w_P`` costs
      ``O(p·m + m³)`` instead of the ``O(k³)`` kept-block solve;
    * the eigendecomposition ``F = V diag(e) Vᵀ`` (``eigh``), from which the update-objective searches
      (``update_swap``, ``iht``) build their square-root form;
    * the upper Cholesky factor ``U`` of ``F⁻¹`` (``F⁻¹ = UᵀU``; ``inverse_upper_factor``), the
      quantity SparseGPT's column sweep propagates errors through.

    A singular ``F`` has no factor: ``solve`` and ``constrained_step`` fall back to least squares,
    the inverse-based methods raise ``ValueError``.
    """

    def __init__(self, hessian: np.ndarray, damping: float = 0.0):
        self.hessian = hessian  # undamped, as given
        self.H = hessian + damping * np.eye(hessian.shape[0]) if damping else hessian
        self.p = hessian.shape[0]
        self.damping = float(damping)
        self.n_samples = None
        self.n_factorizations = 0  # Cholesky factorisations of F done by this object (0 or 1)
        self._factor_failed = False

    def matvec(self, v: np.ndarray) -> np.ndarray:
        return self.H @ v

    def diagonal(self) -> np.ndarray:
        return np.diag(self.H).copy()

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.H[np.ix_(rows, cols)]

    def dense(self) -> np.ndarray:
        return self.H

    # -- cached factorisations ---------------------------------------------------------------------
    @property
    def factor(self):
        """``(L, lower=True)`` with ``F = LLᵀ`` (scipy ``cho_factor`` form), or ``None`` if ``F`` is singular.

        Computed on first use, then cached: one factorisation per curvature object.
        """
        if "_factor" not in self.__dict__ and not self._factor_failed:
            self.n_factorizations += 1
            try:
                self.__dict__["_factor"] = sla.cho_factor(self.H, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                self._factor_failed = True
        return self.__dict__.get("_factor")

    def _require_factor(self):
        factor = self.factor
        if factor is None:
            raise ValueError("the hessian is singular: this operation needs it positive definite "
                             "(add damping)")
        return factor

    @cached_property
    def _inverse(self) -> np.ndarray:
        inv = sla.cho_solve(self._require_factor(), np.eye(self.p), check_finite=False)
        inv = 0.5 * (inv + inv.T)  # exactly symmetric, so sub-blocks of it are too
        inv.flags.writeable = False
        return inv

    @property
    def inverse(self) -> np.ndarray:
        """``F⁻¹`` (read-only, cached); ``ValueError`` when ``F`` is singular."""
        return self._inverse

    @cached_property
    def _inverse_upper(self) -> np.ndarray:
        try:
            U = np.linalg.cholesky(self._inverse).T
        except np.linalg.LinAlgError as exc:  # only when F is numerically singular
            raise ValueError("F⁻¹ is not numerically positive definite (add damping)") from exc
        U = np.ascontiguousarray(U)
        U.flags.writeable = False
        return U

    def inverse_upper_factor(self) -> np.ndarray:
        """Upper-triangular ``U`` with ``F⁻¹ = UᵀU`` (read-only, cached).

        Row ``j`` of ``U`` divided by ``U_jj`` is the OBS update direction for weight ``j`` when the
        weights before ``j`` are frozen, and ``U_jj² = [(F_{j:, j:})⁻¹]_{00}`` (SparseGPT's sweep).
        """
        return self._inverse_upper

    @cached_property
    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        e, V = np.linalg.eigh(0.5 * (self.H + self.H.T))
        e.flags.writeable = False
        V.flags.writeable = False
        return e, V

    def eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """``(e, V)`` with ``F = V diag(e) Vᵀ``, ascending (read-only, cached): the square-root form the
        update-objective searches build from a dense ``F``, computed once per shared curvature."""
        return self._eigh

    # -- solves ------------------------------------------------------------------------------------
    def solve(self, b: np.ndarray) -> np.ndarray:
        factor = self.factor
        if factor is None:
            return psd_solve(self.H, b)
        return sla.cho_solve(factor, b, check_finite=False)

    def inverse_diagonal(self) -> np.ndarray:
        return np.diag(self._inverse).copy()

    def constrained_step(self, pruned: np.ndarray, w: np.ndarray) -> np.ndarray:
        pruned = np.asarray(pruned, dtype=np.intp)
        d = np.zeros(self.p)
        if pruned.size == 0:
            return d
        kept = np.setdiff1d(np.arange(self.p), pruned, assume_unique=True)
        d[pruned] = -w[pruned]
        if not kept.size:
            return d
        m, k = pruned.size, kept.size
        # Through the inverse when a shared curvature already holds it (OBS scores, SparseGPT) and few weights
        # are pruned: the minimiser of dᵀFd with d_P = −w_P is d = F⁻¹E_P μ, μ = −((F⁻¹)_PP)⁻¹ w_P (Lagrange),
        # so d_K = −(F⁻¹)_KP ((F⁻¹)_PP)⁻¹ w_P — O(m³ + k·m²) instead of the O(k³) kept-block solve. It is not
        # formed for this alone: for a single call, inverting F costs more than the kept-block solve.
        have_inverse = "_inverse" in self.__dict__
        if have_inverse and m ** 3 / 3 + k * m * m < k ** 3 / 3:
            try:
                inv = self._inverse
                mu = psd_solve(inv[np.ix_(pruned, pruned)], w[pruned])
                d[kept] = -(inv[np.ix_(kept, pruned)] @ mu)
                return d
            except ValueError:
                pass
        d[kept] = psd_solve(self.H[np.ix_(kept, kept)], self.H[np.ix_(kept, pruned)] @ w[pruned])
        return d
