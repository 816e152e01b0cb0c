"""Exact moves on the *update* objective (combinatorial OBS) from the low-rank form, in torch.

The search backends of :mod:`solvers.swap_search` work on

    cost(K) = min_{x : x_P = 0} ½ (x − w)ᵀ F (x − w),     F = AᵀA + λI,  A = G/√N  (N × p),

with ``K`` the kept set (``|K| = k``), ``P`` its complement (``|P| = m``) and ``w`` the effective
weights (the Newton point ``w − F⁻¹ḡ`` when a gradient term is present; the cost then shifts by the
constant ``−½ḡᵀF⁻¹ḡ``). ``F`` is never formed: everything goes through the ``N × N`` *kept Gram*

    S = λI + A_K A_Kᵀ,

by the push-through identity ``A_K (A_KᵀA_K + λI)⁻¹ = S⁻¹A_K``:

* refit (CBS-U for K):  ``z = S⁻¹ A_P w_P``,  ``x_K = w_K + A_Kᵀz``,  ``x_P = 0``;
  ``A(x − w) = −λz`` so ``cost = ½λ²‖z‖² + ½λ(‖A_Kᵀz‖² + ‖w_P‖²)`` (no cancellation);
* the residual gradient ``r = F(w − x)`` is 0 on K and ``λ(A_Pᵀz + w_P)`` on P;
* with ``q_i = a_iᵀS⁻¹a_i`` (``a_i`` the i-th column of A):
  adding a pruned ``i`` to K lowers the cost by ``g_i = ½ r_i² / (λ(1 + q_i))``;
  removing a kept ``j`` raises it by ``h_j = ½ λ x_j² / β_j`` with ``β_j = 1 − q_j = λ[(F_KK)⁻¹]_jj``;
* swapping (i in, j out) changes it by exactly

      Δ_ij = h_j − ½ (r_i + λ x_j U_ij / β_j)² / (λ(1 + q_i) + λ U_ij² / β_j),   U_ij = a_iᵀ S⁻¹ a_j,

  (remove j, then add i to K − j: the residual and the Schur complement of i both change through
  ``U_ij``), and applying it is two rank-one updates of ``S⁻¹`` plus two products ``Aᵀv`` — ``O(Np + N²)``.

``A`` lives on the chosen device in the chosen dtype (float32 or float64); everything ``N × N`` and
all ``p``-vectors (x, r, q) are float64, so float32 only affects the products with ``A``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .torch_lowrank import resolve_device, resolve_dtype  # noqa: F401  (re-exported)

__all__ = ["LowRankForm", "KeptState", "fit", "resolve_device", "resolve_dtype", "DENSE_CONVERT_LIMIT"]

# A dense hessian (or an undamped low-rank F) is converted to a square-root form up to this size.
DENSE_CONVERT_LIMIT = 4096
# Columns of A processed at once by the N²-per-column passes (bounds the float64 scratch memory).
CHUNK_COLUMNS = 8192
_BETA_FLOOR = 1e-15


@dataclass
class LowRankForm:
    """The problem restated for the search: ``F = AᵀA + λI`` (λ > 0) and the weights to prune.

    A         (N, p) tensor in the search dtype, on the search device (never written to)
    damping   λ > 0
    w         (p,) float64 effective weights
    constant  added to every cost (the gradient term's ``−½ḡᵀF⁻¹ḡ``; 0 without one)
    """

    A: torch.Tensor
    damping: float
    w: torch.Tensor
    constant: float = 0.0

    @property
    def p(self) -> int:
        return self.A.shape[1]

    @property
    def n_rows(self) -> int:
        return self.A.shape[0]

    @property
    def device(self) -> torch.device:
        return self.A.device

    @classmethod
    def from_tensors(cls, A: torch.Tensor, damping: float, w, constant: float = 0.0) -> "LowRankForm":
        """Build directly from ``A = G/√N`` (for problems too large to hold as a :class:`Problem`)."""
        if not isinstance(A, torch.Tensor) or A.ndim != 2:
            raise ValueError("A must be a 2-d torch tensor (N, p)")
        if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping > 0):
            raise ValueError(f"damping must be a positive number, got {damping!r}")
        w = torch.as_tensor(w, dtype=torch.float64, device=A.device)
        if w.shape != (A.shape[1],):
            raise ValueError(f"w must have shape ({A.shape[1]},), got {tuple(w.shape)}")
        return cls(A=A, damping=float(damping), w=w, constant=float(constant))

    @classmethod
    def from_problem(cls, problem, device=None, dtype=torch.float64) -> "LowRankForm":
        """The low-rank form of a :class:`cbs_opt.Problem`.

        A low-rank problem with λ > 0 is used as is (``A`` is shared, not copied, when it already has
        the right dtype and device). A dense hessian, or an undamped low-rank ``F``, is converted
        through its eigen-decomposition ``F = V diag(e) Vᵀ``: ``λ' = min(e)/2``,
        ``A = diag(√(e − λ'))Vᵀ`` — exact, but it needs ``F`` positive definite.
        """
        device = resolve_device(device)
        dtype = resolve_dtype(dtype)
        curv = problem.curvature
        if curv.is_low_rank and curv.damping > 0:
            view = getattr(curv, "torch_view", None)
            if view is not None:  # cached on the (shared) curvature per device and dtype
                A = view(device, dtype)
            else:
                with warnings.catch_warnings():  # the problem's arrays are read-only; A is never written
                    warnings.simplefilter("ignore", UserWarning)
                    A = torch.from_numpy(curv.A)
                A = A.to(device=device, dtype=dtype)
            lam = curv.damping
            if A.shape[0] > A.shape[1]:
                # More samples than weights: every solve would go through an N × N kernel. The p × p
                # triangular factor R of A = QR has RᵀR = AᵀA, so it defines the same F and the same
                # objective at a fraction of the cost (16 weights with N = 1000: ~0.1 s → ~1 ms per solve).
                A = torch.linalg.qr(A.double(), mode="r").R.to(dtype)
        else:
            if problem.p > DENSE_CONVERT_LIMIT:
                raise ValueError(f"the update-objective search needs damping > 0 for a low-rank problem "
                                 f"with p = {problem.p} > {DENSE_CONVERT_LIMIT} (F = GᵀG/N is singular "
                                 "or too large to factor densely)")
            F = curv.dense()
            # a shared DenseCurvature (the rows of a layer) caches its eigendecomposition: once per layer
            e, V = curv.eigh() if hasattr(curv, "eigh") else np.linalg.eigh(0.5 * (F + F.T))
            if e[0] <= 1e-12 * max(1.0, e[-1]):
                raise ValueError("the update-objective search needs F positive definite "
                                 f"(smallest eigenvalue {e[0]:.3g}); add damping")
            lam = 0.5 * float(e[0])
            A = torch.from_numpy(np.sqrt(e - lam)[:, None] * V.T).to(device=device, dtype=dtype)
        w = torch.from_numpy(np.array(problem.effective_weights, dtype=np.float64)).to(device)
        return cls(A=A, damping=float(lam), w=w, constant=float(problem.update_constant))

    # -- products with A, in its dtype, returned in float64 ------------------------------------------
    def times(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` for a p-vector ``v``."""
        return (self.A @ v.to(self.A.dtype)).double()

    def times_t(self, z: torch.Tensor) -> torch.Tensor:
        """``Aᵀ z`` for an N-vector ``z``."""
        return (self.A.T @ z.to(self.A.dtype)).double()

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """``A[:, idx]`` in float64."""
        return self.A[:, idx].double()

    @cached_property
    def diagonal(self) -> torch.Tensor:
        """``diag(F) = ‖a_i‖² + λ`` (float64)."""
        out = torch.empty(self.p, dtype=torch.float64, device=self.device)
        for start in range(0, self.p, CHUNK_COLUMNS):
            block = self.A[:, start:start + CHUNK_COLUMNS].double()
            out[start:start + block.shape[1]] = (block * block).sum(0)
        return out + self.damping

    @cached_property
    def full_gram(self) -> torch.Tensor:
        """``λI + AAᵀ`` (N × N, float64)."""
        return self.gram(torch.arange(self.p, device=self.device)) + self.damping * torch.eye(
            self.n_rows, dtype=torch.float64, device=self.device)

    def gram(self, idx: torch.Tensor) -> torch.Tensor:
        """``A_I A_Iᵀ`` (N × N, float64), accumulated over column chunks."""
        out = torch.zeros(self.n_rows, self.n_rows, dtype=torch.float64, device=self.device)
        for start in range(0, idx.numel(), CHUNK_COLUMNS):
            block = self.columns(idx[start:start + CHUNK_COLUMNS])
            out += block @ block.T
        return out

    def kept_gram(self, kept: torch.Tensor) -> torch.Tensor:
        """``S = λI + A_K A_Kᵀ``, from whichever side (kept or pruned columns) is smaller."""
        n_kept = int(kept.sum())
        if n_kept <= self.p - n_kept:
            S = self.gram(torch.nonzero(kept).flatten())
            S.diagonal().add_(self.damping)
        else:
            S = self.full_gram - self.gram(torch.nonzero(~kept).flatten())
        return 0.5 * (S + S.T)

    def cost_of(self, x: torch.Tensor) -> float:
        """``½(x − w)ᵀF(x − w)`` evaluated directly (float64 accumulation; excludes the constant)."""
        d = x - self.w
        ad = self.times(d)
        return 0.5 * float(ad @ ad) + 0.5 * self.damping * float(d @ d)


def _cholesky(S: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:  # S ⪰ λI in exact arithmetic; only rounding can get here — add a nudge
        jitter = 1e-12 * float(S.diagonal().abs().max())
        L = torch.linalg.cholesky(S + jitter * torch.eye(S.shape[0], dtype=S.dtype, device=S.device))
    return L


@dataclass
class Fit:
    """CBS-U of one kept set: the optimal weights ``x``, the residual gradient ``r`` and the cost."""

    kept: torch.Tensor      # (p,) bool
    x: torch.Tensor         # (p,) float64, zero on the pruned set
    r: torch.Tensor         # (p,) float64, F(w − x): zero on the kept set
    cost: float             # ½(x−w)ᵀF(x−w), without the form's constant
    chol: torch.Tensor      # Cholesky factor of S = λI + A_K A_Kᵀ


def fit(form: LowRankForm, kept: torch.Tensor) -> Fit:
    """The exact update (CBS-U) for the kept mask ``kept`` — see the module docstring."""
    kept = kept.to(device=form.device, dtype=torch.bool)
    lam = form.damping
    w_pruned = torch.where(kept, torch.zeros_like(form.w), form.w)
    b = form.times(w_pruned)                                    # A_P w_P
    L = _cholesky(form.kept_gram(kept))
    z = torch.cholesky_solve(b[:, None], L)[:, 0]
    u = form.times_t(z)                                         # Aᵀz
    x = torch.where(kept, form.w + u, torch.zeros_like(u))
    r = torch.where(kept, torch.zeros_like(u), lam * (u + form.w))
    u_kept = torch.where(kept, u, torch.zeros_like(u))
    cost = 0.5 * lam * lam * float(z @ z) + 0.5 * lam * (float(u_kept @ u_kept) + float(w_pruned @ w_pruned))
    return Fit(kept=kept.clone(), x=x, r=r, cost=cost, chol=L)


class KeptState:
    """A kept set with everything needed to score and apply swaps incrementally.

    Holds ``S⁻¹`` (N × N), ``x``, ``r`` and ``q_i = a_iᵀS⁻¹a_i`` for every weight; building it costs
    ``O(N²p)`` (the ``q`` pass), each swap ``O(Np + N²)``. ``cost`` is tracked incrementally by the
    exact deltas; :meth:`refresh` recomputes everything from scratch (call it now and then to wash out
    rounding drift).
    """

    def __init__(self, form: LowRankForm, kept: torch.Tensor):
        self.form = form
        self.refresh(kept)

    def refresh(self, kept: torch.Tensor | None = None) -> None:
        """Recompute the state from scratch for ``kept`` (default: the current kept set)."""
        kept = self.kept if kept is None else kept
        f = fit(self.form, kept)
        self.kept, self.x, self.r, self.cost = f.kept, f.x, f.r, f.cost
        self.Sinv = torch.cholesky_inverse(f.chol)
        self.q = self._quadratic_forms()

    def _quadratic_forms(self) -> torch.Tensor:
        form = self.form
        q = torch.empty(form.p, dtype=torch.float64, device=form.device)
        for start in range(0, form.p, CHUNK_COLUMNS):
            block = form.A[:, start:start + CHUNK_COLUMNS].double()
            q[start:start + block.shape[1]] = (block * (self.Sinv @ block)).sum(0)
        return q

    # -- scores ------------------------------------------------------------------------------------
    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    def _beta(self, idx: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.q[idx]).clamp_min(_BETA_FLOOR)

    def gains(self) -> torch.Tensor:
        """``g_i`` for pruned ``i`` (the cost drop of keeping it), ``−inf`` on the kept set."""
        g = 0.5 * self.r * self.r / (self.form.damping * (1.0 + self.q))
        return torch.where(self.kept, torch.full_like(g, -math.inf), g)

    def removal_costs(self) -> torch.Tensor:
        """``h_j`` for kept ``j`` (the cost rise of pruning it), ``+inf`` on the pruned set."""
        beta = (1.0 - self.q).clamp_min(_BETA_FLOOR)
        h = 0.5 * self.form.damping * self.x * self.x / beta
        return torch.where(self.kept, h, torch.full_like(h, math.inf))

    def swap_deltas(self, into: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The exact cost change ``Δ[a, b]`` of keeping ``into[a]`` (pruned now) and pruning ``out[b]``."""
        lam = self.form.damping
        A_in, A_out = self.form.columns(into), self.form.columns(out)
        U = A_in.T @ (self.Sinv @ A_out)                              # a_iᵀ S⁻¹ a_j
        beta = self._beta(out)[None, :]
        x_out = self.x[out][None, :]
        h = 0.5 * lam * x_out * x_out / beta
        resid = self.r[into][:, None] + lam * x_out * U / beta
        schur = lam * (1.0 + self.q[into])[:, None] + lam * U * U / beta
        return h - 0.5 * resid * resid / schur

    # -- moves -------------------------------------------------------------------------------------
    def remove(self, j: int) -> float:
        """Prune kept ``j``; returns the exact cost increase ``h_j``."""
        lam, form = self.form.damping, self.form
        a = form.columns(torch.tensor([j], device=form.device))[:, 0]
        v = self.Sinv @ a
        beta = max(1.0 - float(a @ v), _BETA_FLOOR)
        u = form.times_t(v)                                            # U[:, j] for every weight
        xj = float(self.x[j])
        coef = xj / beta
        was_kept = self.kept
        self.Sinv += torch.outer(v, v) / beta
        self.q += u * u / beta
        self.x = torch.where(was_kept, self.x + coef * u, self.x)
        self.r = torch.where(was_kept, self.r, self.r + lam * coef * u)
        self.x[j] = 0.0
        self.r[j] = lam * coef
        self.kept = was_kept.clone()
        self.kept[j] = False
        delta = 0.5 * lam * xj * xj / beta
        self.cost += delta
        return delta

    def add(self, i: int) -> float:
        """Keep pruned ``i``; returns the exact cost change ``−g_i`` (≤ 0)."""
        lam, form = self.form.damping, self.form
        a = form.columns(torch.tensor([i], device=form.device))[:, 0]
        t = self.Sinv @ a
        alpha = 1.0 + float(a @ t)
        u = form.times_t(t)
        ri = float(self.r[i])
        xi = ri / (lam * alpha)
        was_kept = self.kept
        self.Sinv -= torch.outer(t, t) / alpha
        self.q -= u * u / alpha
        self.x = torch.where(was_kept, self.x - xi * u, self.x)
        self.r = torch.where(was_kept, self.r, self.r - lam * xi * u)
        self.x[i] = xi
        self.r[i] = 0.0
        self.kept = was_kept.clone()
        self.kept[i] = True
        delta = -0.5 * ri * ri / (lam * alpha)
        self.cost += delta
        return delta

    def swap(self, into: int, out: int) -> float:
        """Keep ``into``, prune ``out``; returns the exact cost change (equals ``swap_deltas``)."""
        return self.remove(out) + self.add(into)

    def local_round(self, into: torch.Tensor, out: torch.Tensor, *, max_swaps: int, epsilon: float,
                    on_swap=None, groups: torch.Tensor | None = None) -> int:
        """Best-improvement swaps restricted to the candidates ``C = into ∪ out``, applied in one batch.

        Inside the round only ``C`` is tracked — ``W = S⁻¹A_C`` and ``U = A_CᵀS⁻¹A_C`` by the same
        rank-one updates as :meth:`remove` / :meth:`add` (``O(N·|C|)`` a swap; ``S⁻¹`` itself takes
        the round's ``Σ ±v_k v_kᵀ/β_k`` in one product at the end), so every swap in the
        round is scored and applied *exactly*; the ``p``-vectors (``x``, ``r``, ``q``) of the weights
        outside ``C`` are then updated with one product ``Aᵀ[v₁ … v_s]`` over all the round's rank-one
        directions. Returns the number of swaps applied; ``on_swap(i, j, delta)`` sees each one.
        ``groups`` (the group id of every weight, a partition budget): only swaps inside a group are made.
        """
        lam, form = self.form.damping, self.form
        C = torch.cat([into, out])
        A_C = form.columns(C)
        W = self.Sinv @ A_C
        U = A_C.T @ W
        kept_C, x_C, r_C = self.kept[C].clone(), self.x[C].clone(), self.r[C].clone()
        groups_C = None if groups is None else groups[C]
        vecs, x_coef, r_coef, q_coef = [], [], [], []
        n_swaps = 0
        while n_swaps < max_swaps:
            q_C = U.diagonal()
            ins, outs = torch.nonzero(~kept_C).flatten(), torch.nonzero(kept_C).flatten()
            beta = (1.0 - q_C[outs]).clamp_min(_BETA_FLOOR)[None, :]
            U_io = U[ins][:, outs]
            x_o = x_C[outs][None, :]
            resid = r_C[ins][:, None] + lam * x_o * U_io / beta
            schur = lam * (1.0 + q_C[ins])[:, None] + lam * U_io * U_io / beta
            deltas = 0.5 * lam * x_o * x_o / beta - 0.5 * resid * resid / schur
            if groups_C is not None:  # a partition budget: a pruned weight trades places inside its group only
                same = groups_C[ins][:, None] == groups_C[outs][None, :]
                deltas = torch.where(same, deltas, torch.full_like(deltas, math.inf))
            if deltas.numel() == 0:
                break
            flat = int(torch.argmin(deltas))
            best = float(deltas.flatten()[flat])
            if not best < -epsilon * abs(self.cost) or not math.isfinite(best):
                break
            a, b = int(ins[flat // outs.numel()]), int(outs[flat % outs.numel()])
            before = self.cost
            # remove C[b]: S⁻¹ += vvᵀ/β
            v, u = W[:, b].clone(), U[:, b].clone()
            bt = max(1.0 - float(U[b, b]), _BETA_FLOOR)
            xj = float(x_C[b])
            coef = xj / bt
            W += torch.outer(v, u / bt)
            U += torch.outer(u, u / bt)
            x_C = torch.where(kept_C, x_C + coef * u, x_C)
            r_C = torch.where(kept_C, r_C, r_C + lam * coef * u)
            self.cost += 0.5 * lam * xj * xj / bt
            x_C[b], r_C[b], kept_C[b] = 0.0, lam * coef, False
            vecs.append(v); x_coef.append(coef); r_coef.append(lam * coef); q_coef.append(1.0 / bt)
            # add C[a]: S⁻¹ −= ttᵀ/α
            t, u = W[:, a].clone(), U[:, a].clone()
            alpha = 1.0 + float(U[a, a])
            ra = float(r_C[a])
            xi = ra / (lam * alpha)
            W -= torch.outer(t, u / alpha)
            U -= torch.outer(u, u / alpha)
            x_C = torch.where(kept_C, x_C - xi * u, x_C)
            r_C = torch.where(kept_C, r_C, r_C - lam * xi * u)
            x_C[a], r_C[a], kept_C[a] = xi, 0.0, True
            self.cost -= 0.5 * ra * ra / (lam * alpha)
            vecs.append(t); x_coef.append(-xi); r_coef.append(-lam * xi); q_coef.append(-1.0 / alpha)
            n_swaps += 1
            if on_swap is not None:
                on_swap(int(C[a]), int(C[b]), self.cost - before)
        if n_swaps:
            V = torch.stack(vecs, 1)
            self._flush(V, x_coef, r_coef, q_coef)
            # S⁻¹ += Σ_k (±1/β_k) v_k v_kᵀ, deferred to here: the round itself only needs W and U
            cq = torch.tensor(q_coef, dtype=torch.float64, device=form.device)
            self.Sinv += (V * cq) @ V.T
            self.Sinv = 0.5 * (self.Sinv + self.Sinv.T)
            self.kept[C], self.x[C], self.r[C] = kept_C, x_C, r_C
            self.q[C] = U.diagonal()
        return n_swaps

    def _flush(self, V: torch.Tensor, x_coef, r_coef, q_coef) -> None:
        """Apply the round's rank-one updates to every weight (membership of those outside C is fixed)."""
        form = self.form
        cx, cr, cq = (torch.tensor(c, dtype=torch.float64, device=form.device) for c in (x_coef, r_coef, q_coef))
        Vd = V.to(form.A.dtype)
        for start in range(0, form.p, CHUNK_COLUMNS):
            sl = slice(start, start + CHUNK_COLUMNS)
            Um = (form.A[:, sl].T @ Vd).double()                      # (chunk, s): u_k for each weight
            kept = self.kept[sl]
            self.x[sl] = torch.where(kept, self.x[sl] + Um @ cx, self.x[sl])
            self.r[sl] = torch.where(kept, self.r[sl], self.r[sl] + Um @ cr)
            self.q[sl] += (Um * Um) @ cq

    def pruned_indices(self) -> np.ndarray:
        return torch.nonzero(~self.kept).flatten().cpu().numpy()
