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

Shared machinery of the exact searches and the relaxation: :class:`Clock` (a deadline that also carries a
Ctrl-C flag, so every phase of a solve stops together and the caller can report ``Status.INTERRUPTED``),
:func:`affords` (whether work that cannot be interrupted still fits the clock), :func:`check_memory` /
:func:`oracle_bytes` (refuse sizes that cannot fit before any work), and the partition-budget helpers
:func:`group_spec` / :func:`grouped_smallest` (per-group linear minimisation: two sorts).
"""
from __future__ import annotations

import os
import time

import numpy as np
from scipy.linalg.lapack import dposv as _posv

from .base import Deadline
from .errors import MemoryLimitError

__all__ = ["diagonal_split", "UpdateOracle", "SelectionOracle", "make_oracle", "local_search",
           "linear_min", "pool_bound", "Clock", "group_spec", "grouped_smallest", "check_memory",
           "physical_memory", "DENSE_SPLIT_MAX_P"]

# Shifts are scaled down by this factor so that F − D stays safely positive semidefinite in floating point.
SHIFT_SAFETY = 1.0 - 1e-6
# Above this many weights the certified diagonal shift (three O(p³) eigendecompositions, not interruptible)
# is not attempted: the split falls back to ``d = λ`` (always valid for ``F = AᵀA + λI``).
DENSE_SPLIT_MAX_P = 1500
# Swap candidates per side in the local search: the first ``T²`` swaps in first-order order only ever use the
# ``T`` best candidates of each side, so capping keeps the O(p²) candidate matrix out of large blocks.
SWAP_CANDIDATES = 256


def wrap_up_reserve(time_limit: float | None, p: int) -> float:
    """Seconds kept back from ``time_limit`` for the work after the search stops (assembling the answer,
    O(p) array passes): about 0.25 µs a weight, at most a tenth of the limit — so that a run on a million
    weights still returns within the limit's allowance."""
    if time_limit is None:
        return 0.0
    return min(0.1 * float(time_limit), 2.5e-7 * p)


class Clock(Deadline):
    """A :class:`~solvers.base.Deadline` that also carries a shared Ctrl-C flag.

    ``clock.interrupt()`` (called by a search that caught ``KeyboardInterrupt``) makes this clock and every
    clock :meth:`share` d from it report ``expired()``, so the remaining phases of a solve wrap up at once
    and the caller can report ``Status.INTERRUPTED`` with the incumbent and bound found so far.
    """

    def __init__(self, seconds: float | None, _flag: list | None = None):
        super().__init__(seconds)
        self._flag = _flag if _flag is not None else [False]

    @property
    def interrupted(self) -> bool:
        return self._flag[0]

    def interrupt(self) -> None:
        self._flag[0] = True

    def expired(self) -> bool:
        return self._flag[0] or super().expired()

    def remaining(self) -> float:
        return 0.0 if self._flag[0] else super().remaining()

    def share(self, seconds: float | None) -> "Clock":
        """A sub-budget of at most ``seconds`` (and never past this clock), sharing the interrupt flag."""
        rem = super().remaining()
        limit = rem if seconds is None else min(float(seconds), rem)
        return Clock(None if limit == float("inf") else max(0.0, limit), self._flag)


# Above this size "the k smallest" is found by a linear-time partition instead of a stable sort (same set up
# to ties; the sort keeps small blocks bit-for-bit as before).
_PARTITION_FROM = 4096


def smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest ``values`` (stable sort order on small inputs, O(n) partition on large)."""
    n = values.size
    k = int(k)
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    if n <= _PARTITION_FROM or k >= n:
        return np.argsort(values, kind="stable")[:k]
    return np.argpartition(values, k - 1)[:k]


def affords(deadline, seconds: float) -> bool:
    """Whether ``deadline`` (``None``: no limit) has more than ``seconds`` left — checked before work that
    cannot be interrupted (an oracle call, a factorisation) so that a time limit is not overrun by it."""
    return deadline is None or deadline.seconds is None and not getattr(deadline, "interrupted", False) \
        or deadline.remaining() > seconds


def note_interrupt(deadline) -> None:
    """Record a caught ``KeyboardInterrupt`` on ``deadline`` when it can carry one (a :class:`Clock`)."""
    if isinstance(deadline, Clock):
        deadline.interrupt()


def physical_memory() -> int:
    """Bytes of physical memory of this machine (``CBS_OPT_MEMORY_BYTES`` overrides, e.g. for tests)."""
    env = os.environ.get("CBS_OPT_MEMORY_BYTES")
    if env:
        return int(float(env))
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2 ** 30


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} PiB"  # pragma: no cover


def check_memory(what: str, estimate: float, detail: str) -> None:
    """Refuse before any work when ``estimate`` bytes exceed the machine's physical memory.

    Raises :class:`~solvers.errors.MemoryLimitError` naming ``what`` (the backend and size), ``detail``
    (the dominant arrays) and the estimate.
    """
    total = physical_memory()
    if estimate > total:
        raise MemoryLimitError(f"{what}: needs about {_fmt_bytes(estimate)} ({detail}), more than the "
                               f"{_fmt_bytes(total)} of memory on this machine; refused before any work")


def oracle_bytes(problem) -> tuple[float, str]:
    """Peak bytes of :func:`make_oracle` plus a few cuts on ``problem`` and the arrays that dominate it."""
    p = problem.p
    curv = problem.curvature
    if problem.objective_kind == "selection":
        # F and Q = WFW dense, a shifted copy, and one product per cut.
        return 4.0 * 8 * p * p, f"three dense {p}x{p} float64 matrices for the selection QP"
    if curv.is_low_rank and curv.n_samples < p or p > DENSE_SPLIT_MAX_P and curv.is_low_rank:
        n = curv.n_samples
        return 8.0 * (3 * n * p + 2 * n * n + 16 * p), f"three {n}x{p} float64 arrays per cut"
    return 6.0 * 8 * p * p, f"dense {p}x{p} float64 curvature and its eigendecomposition"


def group_spec(problem) -> tuple[np.ndarray, np.ndarray] | None:
    """``(ids, keep_counts)`` of a partition budget with more than one group, else ``None``.

    ``ids``: (p,) group id of every weight; ``keep_counts``: (G,) how many weights each group keeps.
    Coded against ``getattr(problem, "budget", None)`` so that solvers also accept problems without budgets.
    """
    budget = getattr(problem, "budget", None)
    if budget is None or budget.n_groups <= 1:
        return None
    return np.asarray(budget.groups, dtype=np.intp), np.asarray(budget.keep_counts, dtype=np.intp)


def grouped_smallest(coef: np.ndarray, ids: np.ndarray, need: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``coef`` (T, u): the sum of the ``need[g]`` smallest entries within each group ``g``.

    ``ids`` (u,) group of every column. Returns ``(sums (T,), chosen (T, Σneed) column indices)`` — the
    minimiser of a linear function over "exactly ``need[g]`` ones in group ``g``" (two sorts per row).
    """
    coef = np.atleast_2d(coef)
    T, u = coef.shape
    need = np.asarray(need, dtype=np.intp)
    if need.sum() == 0 or u == 0:
        return np.zeros(T), np.zeros((T, 0), dtype=np.intp)
    counts = np.bincount(ids, minlength=need.size)
    width = int(counts.max())
    if u > _PARTITION_FROM and need.size * width <= 2 * u:
        # Large blocks of similar groups (N:M, per-row): a padded (groups × width) layout, sorted along the
        # short axis — O(p log width) instead of two sorts of all p entries.
        order = np.argsort(ids, kind="stable")             # integer keys: a linear-time radix sort
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        g_of = ids[order]
        slot = np.arange(u) - starts[g_of]
        padded = np.full((T, need.size, width), np.inf)
        padded[:, g_of, slot] = coef[:, order]
        col = np.full((need.size, width), -1, dtype=np.intp)
        col[g_of, slot] = order
        rank = np.argsort(padded, axis=2, kind="stable")
        take = np.arange(width)[None, :] < need[:, None]    # (G, width): the first need[g] of each group
        picked = np.take_along_axis(padded, rank, axis=2)[:, take]
        chosen = np.take_along_axis(np.broadcast_to(col, (T, need.size, width)), rank, axis=2)[:, take]
        return picked.sum(axis=1), chosen
    by_value = np.argsort(coef, axis=1, kind="stable")
    by_group = np.argsort(ids[by_value], axis=1, kind="stable")  # grouped, ascending values inside a group
    order = np.take_along_axis(by_value, by_group, axis=1)
    counts = np.bincount(ids, minlength=need.size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, need) if n > 0])
    chosen = order[:, take]
    return np.take_along_axis(coef, chosen, axis=1).sum(axis=1), chosen


# Seconds of an eigendecomposition-based split relative to one Cholesky factorisation of the same matrix
# (two eigvalsh + one eigh against p³/3 flops, with a margin): used to decide whether it fits the time left.
_EIG_OVER_CHOL = 40.0


def diagonal_split(problem, deadline=None) -> tuple[np.ndarray | None, np.ndarray]:
    """``(B, d)`` with ``F = BᵀB + diag(d)``, ``d ≥ 0`` as large as we can certify cheaply.

    N < p (low-rank): ``B = A``, ``d = λ`` (``AᵀA`` is singular, no larger uniform shift exists).
    Otherwise ``F`` is formed (``p × p``) and two candidate shifts are compared by ``Σ d_i w̃_i²`` (the
    weight the perspective term can carry): the uniform ``λ_min(F)·1`` and the scaled
    ``λ_min(S F S)·diag(F)``, ``S = diag(F)^{-½}``. ``B`` is the symmetric square root of ``F − D``.

    With a ``deadline`` whose remaining time cannot pay for those eigendecompositions (estimated from one
    timed Cholesky factorisation), the split is the cheap one ``d = ½λ``, ``B = Lᵀ`` with ``LLᵀ = F − ½λI``
    (positive definite for λ > 0; ``d = 0`` — no perspective split — when λ = 0).
    """
    curv = problem.curvature
    p = problem.p
    if curv.is_low_rank and (curv.n_samples < p or p > DENSE_SPLIT_MAX_P):
        return curv.A, np.full(p, curv.damping)
    F = curv.dense()
    if deadline is not None and deadline.seconds is not None:
        import time
        start = time.perf_counter()
        lam = float(curv.damping)
        L = np.linalg.cholesky(F - 0.5 * lam * np.eye(p)) if lam > 0 else None
        chol_seconds = time.perf_counter() - start
        if deadline.remaining() < _EIG_OVER_CHOL * max(chol_seconds, 1e-4):
            if L is None:
                return np.zeros((0, p)), np.zeros(p)
            return L.T.copy(), np.full(p, 0.5 * lam)
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
    seconds = 0.0     # wall time of the latest cut (callers check that another one fits their clock)

    def __init__(self, problem, B: np.ndarray, d: np.ndarray):
        if np.any(d <= 0):
            raise ValueError("the perspective form needs a positive diagonal (damping > 0 or F positive definite)")
        self.p = problem.p
        self.B, self.d = B, d
        self.w = problem.effective_weights.copy()
        self.b = B @ self.w
        self.const = 0.5 * float(d @ (self.w * self.w))
        self.offset = problem.update_constant   # added to φ to get the problem's objective
        self.R = None      # BᵀB when known densely (node problems): cuts then take the support form

    def cut(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """``(φ(z), ∇φ(z))`` for ``z ∈ [0,1]ᵖ`` (exact value; the tangent is a global under-estimator)."""
        start = time.perf_counter()
        z = np.asarray(z, dtype=float)
        B, d, w = self.B, self.d, self.w
        support = np.flatnonzero(z)
        if self.R is not None and support.size <= B.shape[0]:
            value, grad = self._cut_on_support(z, support)
            self.seconds = time.perf_counter() - start
            return value, grad
        if B.shape[0] == 0:
            alpha = np.zeros(0)
        else:
            # B Z D⁻¹ Bᵀ only involves the columns with z_i > 0: Frank–Wolfe vertices and the points between
            # two of them keep few weights at high sparsity, so the product shrinks with them.
            if support.size < 0.75 * z.size:
                Bs = B[:, support]
                M = (Bs * (z[support] / d[support])) @ Bs.T
            else:
                M = (B * (z / d)) @ B.T
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
        self.seconds = time.perf_counter() - start
        return value, grad

    def _cut_on_support(self, z: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray]:
        """The same cut through ``R = BᵀB`` on the support ``s = {i : z_i > 0}`` (Woodbury), O(p² + |s|³).

        With ``u = (1−z)∘w̃``, ``t = Ru`` and ``y = (diag(d_s/z_s) + R_ss)⁻¹ t_s``:
        ``Bᵀα = −t + R_{:,s} y``, ``αᵀb = (Bᵀα)ᵀw̃`` and ``‖α‖² = uᵀt − 2t_sᵀy + yᵀR_ss y`` — no product
        with ``B`` and an ``|s| × |s|`` factorisation instead of a (rows of B)² one: cheaper whenever few
        weights are kept.
        """
        R, d, w = self.R, self.d, self.w
        u = (1.0 - z) * w
        t = R @ u
        if s.size:
            Rss = R[np.ix_(s, s)]
            M = Rss.copy()
            M.flat[::s.size + 1] += d[s] / z[s]
            _, y, info = _posv(M, t[s], lower=1, overwrite_a=1, overwrite_b=0)
            if info != 0:
                y = np.linalg.solve(Rss + np.diag(d[s] / z[s]), t[s])
            bt_alpha = R[:, s] @ y - t
            alpha_sq = float(u @ t) - 2.0 * float(t[s] @ y) + float(y @ (Rss @ y))
        else:
            bt_alpha, alpha_sq = -t, float(u @ t)
        v = bt_alpha - d * w
        grad = -(v * v) / (2.0 * d)
        value = self.const - float(bt_alpha @ w) - 0.5 * alpha_sq + float(z @ grad)
        return value, grad


class SelectionOracle:
    """The diagonally shifted convex form ``φ`` of the "selection" cost, over z = 1 − y."""

    kind = "selection"
    seconds = 0.0

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
        start = time.perf_counter()
        y = 1.0 - np.asarray(z, dtype=float)
        Qy = self.Q @ y
        value = 0.5 * float(y @ Qy) + float(self.lin @ y)
        self.seconds = time.perf_counter() - start
        return value, -(Qy + self.lin)  # d/dz = −d/dy


def make_oracle(problem, deadline=None):
    """The oracle of the problem's objective kind, or ``None`` when no positive diagonal split exists.

    ``deadline``: passed to :func:`diagonal_split` (a cheaper split when time is short)."""
    B, d = diagonal_split(problem, deadline)
    if problem.objective_kind == "update":
        if np.any(d <= 0):
            return None
        return UpdateOracle(problem, B, d)
    return SelectionOracle(problem, np.clip(d, 0.0, None))


def linear_min(coef: np.ndarray, kept: np.ndarray, free: np.ndarray, n_more, ids=None) -> np.ndarray:
    """``min cᵀz`` over binary z with ``z = 1`` on ``kept``, ``n_more`` ones among ``free``, 0 elsewhere.

    ``coef`` may be a stack ``(T, p)``; returns one value per row (a sort). With group ids ``ids`` (p,),
    ``n_more`` is a (G,) array: ``n_more[g]`` ones among the free weights of group ``g``.
    """
    coef = np.atleast_2d(coef)
    out = coef[:, kept].sum(axis=1)
    if ids is not None:
        return out + grouped_smallest(coef[:, free], ids[free], n_more)[0]
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


def local_search(cost, z: np.ndarray, grad_of=None, *, max_evals: int = 2000, deadline=None,
                 ids: np.ndarray | None = None) -> tuple[np.ndarray, float, int]:
    """First-improvement swap search over binary keep-vectors.

    ``cost(z)`` is the exact cost of a binary z. Candidate swaps (drop kept ``j``, keep pruned ``i``) are tried
    in the order of their first-order estimate ``g_i − g_j`` when ``grad_of(z)`` is given; only the
    ``SWAP_CANDIDATES`` best of each side are paired (the first swaps in that order use no others), so the
    candidate matrix never grows with ``p²``. With group ids ``ids`` only swaps inside a group are tried
    (per-group counts are kept). Stops when ``deadline`` expires; a ``KeyboardInterrupt`` ends the search
    with the best point so far (and marks a :class:`Clock` ``deadline`` as interrupted).
    Returns ``(z, cost, evaluations)``.
    """
    z = z.astype(bool).copy()
    tick = time.perf_counter()
    best = cost(z)
    eval_seconds = time.perf_counter() - tick
    best_z = z.copy()
    evals = 1
    improved = True
    try:
        while improved and evals < max_evals:
            improved = False
            if not affords(deadline, 2 * eval_seconds):
                break
            kept, pruned = np.flatnonzero(z), np.flatnonzero(~z)
            if kept.size == 0 or pruned.size == 0:
                break
            if grad_of is not None:
                g = grad_of(z)
                if pruned.size > SWAP_CANDIDATES:
                    pruned = pruned[np.sort(smallest(g[pruned], SWAP_CANDIDATES))]
                if kept.size > SWAP_CANDIDATES:
                    kept = kept[np.sort(smallest(-g[kept], SWAP_CANDIDATES))]
                est = g[pruned][:, None] - g[kept][None, :]
            else:
                pruned, kept = pruned[:SWAP_CANDIDATES], kept[:SWAP_CANDIDATES]
                est = np.zeros((pruned.size, kept.size))
            if ids is not None:
                est = np.where(ids[pruned][:, None] == ids[kept][None, :], est, np.inf)
            order = np.argsort(est, axis=None, kind="stable")
            if ids is not None:
                order = order[np.isfinite(est.ravel()[order])]
            for flat in order:
                if not affords(deadline, eval_seconds):
                    break
                i, j = pruned[flat // kept.size], kept[flat % kept.size]
                z[i], z[j] = True, False
                tick = time.perf_counter()
                value = cost(z)
                eval_seconds = time.perf_counter() - tick
                evals += 1
                if value < best - 1e-12 * max(1.0, abs(best)):
                    best, improved = value, True
                    best_z = z.copy()
                    break
                z[i], z[j] = False, True
                if evals >= max_evals:
                    break
    except KeyboardInterrupt:
        note_interrupt(deadline)
    return best_z, best, evals
