"""Continuous relaxation on HiGHS: a proven lower bound plus a rounded feasible pruned set.

Which relaxation (the strongest we can pose as a convex QP for HiGHS; math in :mod:`solvers.exact_core`):

* ``"update"`` — the **perspective relaxation**: with ``F = BᵀB + diag(d)`` (``d = λ``, or a larger certified
  diagonal shift when N ≥ p) the convex QP in ``(x, z, r, s)``

      min ½‖r‖² + ½ Σ d_i (s_i − 2 x_i w̃_i + w̃_i²)    r = B(x − w̃),  Σz = p − m,  0 ≤ z ≤ 1,
      s_i ≥ 2t x_i − t² z_i  for tangent slopes t ∈ T_i,   −M_i z_i ≤ x_i ≤ M_i z_i

  where the tangent rows outer-approximate the perspective cone ``s_i ≥ x_i²/z_i``; rows at
  ``t = x_i/z_i`` are added for violated entries and the QP re-solved (a few rounds). Its value is far above
  the big-M relaxation's ≈ 0 on real blocks, because ``x_i²/z_i`` charges fractional ``z``.
* ``"selection"`` — the **diagonally shifted QP** ``min ½yᵀ(Q − diag δ)y + (½δ − c)ᵀy`` over
  ``Σy = m, 0 ≤ y ≤ 1`` (``δ = w²∘d``, exact on binary y since ``y_i² = y_i``).

The reported bound never trusts the QP's accuracy: at the QP's point ``z̄`` it is recomputed in float64 as the
tangent bound ``φ(z̄) + min_{z feasible} ∇φ(z̄)ᵀ(z − z̄)`` (a sort), valid for any ``z̄``, then tightened by a
few Frank–Wolfe steps. The feasible answer is the best of three roundings: keep the ``p − m`` largest
``z̄``, the largest polished ``z``, or the ``p − m`` most negative entries of ``∇φ(z̄)`` (ties by ``|w̃|``).

Partition budgets (N:M, per-row) get one row ``Σ_{i∈g} z_i = k_g`` per group, per-group linear steps and a
per-group rounding. Large blocks and time limits: the QP is built from numpy arrays (no Python loop over
entries) and handed to HiGHS only up to ``HIGHS_MAX_P`` weights; beyond, Frank–Wolfe on ``φ`` solves the
same relaxation with the same certificate. One oracle call at the uniform point gives a bound from the start;
the time of the rounding is kept back from the limit; when not even one oracle call fits, the magnitude
rounding is returned with the bound ``φ ≥ 0``. Ctrl-C returns the rounding and the bound so far
(``Status.INTERRUPTED``); sizes whose arrays cannot fit raise ``MemoryLimitError`` before any work.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from .base import BackendResult, Deadline, Status
from .exact_bnb import relax_node
from .exact_core import (_PARTITION_FROM, Clock, affords, check_memory, group_spec, grouped_smallest,
                         linear_min, make_oracle, oracle_bytes, smallest, wrap_up_reserve)
from .registry import register

__all__ = ["solve_relaxation", "relaxation_point", "check_relaxation_memory", "HIGHS_MAX_P"]

# Above this many weights the QP is not handed to HiGHS (its model has ~(N + 11)·p nonzeros, built and
# solved far beyond any time limit a caller would give at that size); Frank–Wolfe on φ solves the same
# relaxation, certified the same way.
HIGHS_MAX_P = 20000
# ... or above this many nonzeros, or when building it (at a conservative time per nonzero) would not fit.
HIGHS_MAX_NNZ = 4_000_000
HIGHS_SECONDS_PER_NONZERO = 1e-6


def _highs():
    import highspy
    # The constructor prints a banner on the C-level stdout before any option can silence it;
    # send file descriptor 1 to /dev/null for that moment so `cbs-opt solve` output stays clean.
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    # HiGHS's active-set QP can cycle on degenerate instances (tied weights): cap it; a capped round
    # only ends the tangent refinement early (the certified bound does not depend on it).
    h.setOptionValue("qp_iteration_limit", 20000)
    return highspy, h


def _add_csr(h, lower, upper, starts, idx, vals) -> None:
    """Append rows given in compressed-row form (numpy arrays; no Python loop over entries)."""
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    h.addRows(lower.size, lower, upper, int(np.asarray(idx).size), np.asarray(starts, np.int32),
              np.asarray(idx, np.int32), np.asarray(vals, float))


def _fixed_width_rows(cols: np.ndarray, vals: np.ndarray):
    """CSR arrays for rows that all have the same number of entries (``cols``, ``vals``: (rows, width))."""
    n_rows, width = cols.shape
    return np.arange(n_rows) * width, cols.ravel(), vals.ravel()


def _budget_rows(h, first_col: int, p: int, problem, keep: bool) -> None:
    """``Σ z = k`` — or, for a partition budget, one row ``Σ_{i∈g} z_i = k_g`` per group (keep counts when
    ``keep``, prune counts otherwise)."""
    spec = group_spec(problem)
    if spec is None:
        n = problem.n_keep if keep else problem.n_prune
        _add_csr(h, [n], [n], np.zeros(1), first_col + np.arange(p), np.ones(p))
        return
    ids, keep_counts = spec
    counts = keep_counts if keep else np.bincount(ids, minlength=keep_counts.size) - keep_counts
    order = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=counts.size))[:-1]])
    _add_csr(h, counts, counts, starts, first_col + order, np.ones(p))


def _set_diagonal_hessian(highspy, h, cols: np.ndarray, values: np.ndarray, n: int) -> None:
    """A diagonal Hessian with ``values`` at the (sorted) columns ``cols``."""
    hess = highspy.HighsHessian()
    hess.dim_ = n
    hess.format_ = highspy.HessianFormat.kTriangular
    present = np.zeros(n, dtype=np.int64)
    present[cols] = 1
    hess.start_ = np.concatenate([[0], np.cumsum(present)]).astype(np.int32)
    hess.index_ = np.asarray(cols, dtype=np.int32)
    hess.value_ = np.asarray(values, dtype=float)
    h.passHessian(hess)


def _update_qp(problem, oracle, deadline: Deadline, rounds: int) -> np.ndarray:
    """The perspective relaxation of the update objective as HiGHS QPs; returns the final ``z̄``."""
    highspy, h = _highs()
    from .kernels.pyomo_model import feasible_cost_scale
    p, k = problem.p, problem.n_keep
    B, d, w = oracle.B, oracle.d, oracle.w
    nb = B.shape[0]
    U = feasible_cost_scale(problem)
    scale = 1.0 / U
    big_m = np.abs(w) + np.sqrt(2.0 * U * np.clip(problem.curvature.inverse_diagonal(), 0.0, None)) * (1 + 1e-9)
    # columns: x (p) | z (p) | s (p) | r (nb); objective scaled by 1/U
    X, Z, S, R = 0, p, 2 * p, 3 * p
    n = 3 * p + nb
    cost = np.zeros(n)
    cost[X:X + p] = -scale * d * w
    cost[S:S + p] = 0.5 * scale * d
    lower = np.concatenate([-big_m, np.zeros(p), np.zeros(p), np.full(nb, -np.inf)])
    upper = np.concatenate([big_m, np.ones(p), np.full(p, np.inf), np.full(nb, np.inf)])
    h.addCols(n, cost, lower, upper, 0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
    _set_diagonal_hessian(highspy, h, R + np.arange(nb), np.full(nb, scale), n)
    b = B @ w
    ar = np.arange(p)
    if nb:  # r_j − B_j x = −b_j
        cols = np.concatenate([(R + np.arange(nb))[:, None], np.broadcast_to(X + ar, (nb, p))], axis=1)
        vals = np.concatenate([np.ones((nb, 1)), -B], axis=1)
        _add_csr(h, -b, -b, *_fixed_width_rows(cols, vals))
    _budget_rows(h, Z, p, problem, keep=True)
    # big-M: x_i − M_i z_i ≤ 0 ≤ x_i + M_i z_i
    cols = np.stack([X + ar, Z + ar], axis=1)
    _add_csr(h, np.full(p, -np.inf), np.zeros(p), *_fixed_width_rows(cols, np.stack([np.ones(p), -big_m], 1)))
    _add_csr(h, np.zeros(p), np.full(p, np.inf), *_fixed_width_rows(cols, np.stack([np.ones(p), big_m], 1)))
    # initial tangents of s ≥ x²/z at t = 0 and t = ±w̃_i (s − 2t x + t² z ≥ 0)
    cols = np.stack([S + ar, X + ar, Z + ar], axis=1)
    for t in (np.zeros(p), w):
        _add_csr(h, np.zeros(p), np.full(p, np.inf),
                 *_fixed_width_rows(cols, np.stack([np.ones(p), -2.0 * t, t * t], axis=1)))
    z_bar = _uniform_start(problem)
    for _ in range(rounds):
        if deadline.expired():
            break
        h.setOptionValue("time_limit", max(1e-3, min(deadline.remaining(), 1e6)))
        h.clearSolver()  # a cold start per round: warm starts made the active set cycle on ties
        h.run()
        sol = np.asarray(h.getSolution().col_value)
        if sol.size != n or h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            break
        x, z, s = sol[X:X + p], np.clip(sol[Z:Z + p], 0.0, 1.0), sol[S:S + p]
        z_bar = z
        need = x * x / np.maximum(z, 1e-12)
        viol = np.flatnonzero((z > 1e-9) & (need - s > 1e-7 * max(1.0, float(np.abs(need).max()))))
        if viol.size == 0 or deadline.expired():
            break
        t = x[viol] / z[viol]
        cols = np.stack([S + viol, X + viol, Z + viol], axis=1)
        _add_csr(h, np.zeros(viol.size), np.full(viol.size, np.inf),
                 *_fixed_width_rows(cols, np.stack([np.ones(viol.size), -2.0 * t, t * t], axis=1)))
    return z_bar


def _selection_qp(problem, oracle, deadline: Deadline) -> np.ndarray:
    """The shifted selection QP on HiGHS; returns ``z̄ = 1 − ȳ``."""
    highspy, h = _highs()
    from .kernels.pyomo_model import feasible_cost_scale
    p, m = problem.p, problem.n_prune
    scale = 1.0 / feasible_cost_scale(problem)
    Q = oracle.Q * scale
    h.addCols(p, oracle.lin * scale, np.zeros(p), np.ones(p), 0, np.zeros(0, np.int32),
              np.zeros(0, np.int32), np.zeros(0))
    hess = highspy.HighsHessian()
    hess.dim_ = p
    hess.format_ = highspy.HessianFormat.kTriangular
    # Lower triangle column-wise = the upper triangle of the symmetric Q row-wise (numpy, no Python loop).
    rows_u, cols_u = np.triu_indices(p)
    vals = Q[rows_u, cols_u]
    nz = vals != 0
    hess.start_ = np.concatenate([[0], np.cumsum(np.bincount(rows_u[nz], minlength=p))]).astype(np.int32)
    hess.index_ = cols_u[nz].astype(np.int32)
    hess.value_ = vals[nz]
    h.passHessian(hess)
    _budget_rows(h, 0, p, problem, keep=False)
    if deadline.expired():
        return _uniform_start(problem)
    h.setOptionValue("time_limit", max(1e-3, min(deadline.remaining(), 1e6)))
    h.run()
    y = np.asarray(h.getSolution().col_value)
    if y.size != p:
        return _uniform_start(problem)
    return 1.0 - np.clip(y, 0.0, 1.0)


def _uniform_start(problem) -> np.ndarray:
    """The feasible point ``z = k/p`` (per group: ``k_g/|g|``), the barycentre of the keep-vectors."""
    spec = group_spec(problem)
    if spec is None:
        return np.full(problem.p, problem.n_keep / problem.p)
    ids, keep = spec
    return (keep / np.bincount(ids, minlength=keep.size))[ids]


def _qp_nonzeros(problem, oracle) -> int:
    """Nonzeros of the QP handed to HiGHS: the ``r × p`` rows of ``B`` plus ~12 per weight (update), or the
    lower triangle of the dense ``Q`` (selection)."""
    p = problem.p
    if problem.objective_kind == "update":
        return int((oracle.B.shape[0] + 12) * p)
    return int(p * (p + 1) // 2 + p)


def _highs_fits(problem, oracle, deadline) -> bool:
    """Whether the QP goes to HiGHS: small enough, and its build fits the time left."""
    nnz = _qp_nonzeros(problem, oracle)
    return (problem.p <= HIGHS_MAX_P and nnz <= HIGHS_MAX_NNZ
            and affords(deadline, HIGHS_SECONDS_PER_NONZERO * nnz))


def relaxation_point(problem, oracle, deadline: Deadline, rounds: int = 12) -> np.ndarray:
    """The relaxation's keep-vector ``z̄ ∈ [0,1]ᵖ`` computed by HiGHS (see the module docstring).

    Above ``HIGHS_MAX_P`` weights, or when the clock has run out, the uniform feasible point instead (the
    caller's Frank–Wolfe steps take it from there; its bound is certified the same way).
    """
    if not _highs_fits(problem, oracle, deadline):
        return _uniform_start(problem)
    if problem.objective_kind == "update":
        return _update_qp(problem, oracle, deadline, rounds)
    return _selection_qp(problem, oracle, deadline)


def _keep_top(score: np.ndarray, tie: np.ndarray, problem) -> np.ndarray:
    """Pruned set that keeps the largest ``score`` (ties by ``tie``), per group under a partition budget.

    Large total-budget blocks use a linear-time partition on ``score + 10⁻¹⁰·tie/max(tie)``: the same order
    for scores rounded to 9 decimals (the perturbation is below their spacing), O(p) instead of a sort."""
    spec = group_spec(problem)
    if spec is None:
        if problem.p > _PARTITION_FROM:
            scale = float(np.max(tie)) if tie.size and np.max(tie) > 0 else 1.0
            keep = smallest(-(score + 1e-10 * tie / scale), problem.n_keep)
            mask = np.ones(problem.p, dtype=bool)
            mask[keep] = False
            return np.flatnonzero(mask)
        return np.sort(np.lexsort((-tie, -score))[problem.n_keep:])
    ids, keep = spec
    if problem.p > _PARTITION_FROM:   # per-group selection on the same perturbed key: no sort of all p
        scale = float(np.max(tie)) if tie.size and np.max(tie) > 0 else 1.0
        kept = grouped_smallest(-(score + 1e-10 * tie / scale), ids, keep)[1][0]
        mask = np.ones(problem.p, dtype=bool)
        mask[kept] = False
        return np.flatnonzero(mask)
    order = np.lexsort((-tie, -score, ids))               # grouped, best first inside each group
    starts = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=keep.size))[:-1]])
    rank = np.empty(ids.size, dtype=np.intp)
    rank[order] = np.arange(ids.size)
    return np.flatnonzero(rank - starts[ids] >= keep[ids])


def check_relaxation_memory(problem) -> None:
    """Refuse (:class:`~solvers.errors.MemoryLimitError`) sizes whose arrays cannot fit, before any work."""
    estimate, detail = oracle_bytes(problem)
    if problem.p <= HIGHS_MAX_P:
        n_samples = problem.n_samples or problem.p
        nnz = (min(n_samples, problem.p) + 12) * problem.p
        estimate += 64.0 * nnz          # HiGHS's copies of the QP (CSR, its own column-wise copy, factors)
    check_memory(f"relaxation on a block of p = {problem.p} weights", estimate, detail)


@register("relaxation", description="continuous (perspective / shifted) relaxation on HiGHS: proven bound + rounding",
          kind="bound", requires=("highspy",), budgets=("total", "partition"))
def solve_relaxation(problem, *, seed: int, time_limit, progress: bool, rounds: int = 12,
                     polish_steps: int = 20) -> BackendResult:
    """Solve the continuous relaxation on HiGHS; return its rounding with a proven lower bound.

    ``rounds``: perspective tangent rounds (update objective); ``polish_steps``: Frank–Wolfe steps that
    tighten the certified bound from the QP point. Status "optimal" only when the rounding meets the bound.
    """
    p, k = problem.p, problem.n_keep
    deadline = Clock(None if time_limit is None else time_limit - wrap_up_reserve(time_limit, problem.p))
    if k in (0, p):  # nothing to choose
        pruned = np.arange(p) if k == 0 else np.zeros(0, dtype=np.intp)
        value = problem.objective(pruned)
        return BackendResult(pruned=pruned, status=Status.OPTIMAL, bound=value, objective=value)
    check_relaxation_memory(problem)
    spec = group_spec(problem)
    ids = None if spec is None else spec[0]
    n_more = k if spec is None else spec[1]
    none, every = np.zeros(0, dtype=np.intp), np.arange(p)
    oracle = make_oracle(problem, deadline)
    if oracle is None:
        raise ValueError("the relaxation needs damping > 0 (or a positive definite F) for the update objective")
    tie = np.abs(oracle.w) if problem.objective_kind == "update" else np.abs(problem.weights)
    z0 = _uniform_start(problem)
    # The rounding's selection (a sort of p entries) is kept back from the relaxation's time.
    sort_seconds = 2e-8 * p * np.log2(p + 1)
    if deadline.remaining() < _cut_seconds_estimate(oracle) + sort_seconds:
        # Not even one oracle call fits: the tangent-free bound φ ≥ 0 (update) and the magnitude rounding.
        pruned = _keep_top(tie, tie, problem)
        floor = oracle.offset if problem.objective_kind == "update" else None
        return BackendResult(pruned=pruned, status=Status.INTERRUPTED if deadline.interrupted else Status.TIME_LIMIT,
                             bound=floor, objective=None, info={"relaxation": "none (no time for one oracle call)"})
    # One cut at the uniform point: a proven bound from the start (its tangent), and the time a cut takes,
    # from which the time kept back for the rounding is sized.
    tick = time.perf_counter()
    v0, g0 = oracle.cut(z0)
    cut_seconds = time.perf_counter() - tick
    bound = float(v0 + linear_min(g0, none, every, n_more, ids)[0] - g0 @ z0)
    work = deadline.share(None if deadline.seconds is None else
                          max(0.0, deadline.remaining() - sort_seconds - 2.0 * cut_seconds))
    z_bar = z_fw = z0
    used_highs = _highs_fits(problem, oracle, work)
    try:
        z_bar = relaxation_point(problem, oracle, work, rounds)
        steps = polish_steps if used_highs else polish_steps + 10 * rounds  # no HiGHS: FW does it all
        fw_bound, z_fw, _ = relax_node(oracle, none, every, n_more, z_bar, max_iter=steps, deadline=work, ids=ids)
        bound = max(bound, fw_bound)
    except KeyboardInterrupt:
        deadline.interrupt()
    bound += oracle.offset
    # Rounding: a weak relaxation leaves z̄ nearly flat, and "largest z̄" then degenerates to the tie
    # break (magnitude). Also try the polished point and the minimiser of the tangent at z̄ (keep the
    # k most negative ∇φ entries), and keep the best of the three roundings — as many as time allows
    # (the first is returned without being costed when no time is left: the registry costs it anyway).
    bar_is_start = np.array_equal(z_bar, z0)
    makers = [lambda: _keep_top(np.round(z_fw, 9), tie, problem),
              lambda: _keep_top(-(g0 if bar_is_start else oracle.cut(z_bar)[1]), tie, problem)]
    if not bar_is_start:
        makers.append(lambda: _keep_top(np.round(z_bar, 9), tie, problem))
    if np.array_equal(z_fw, z0):   # no relaxation step was taken: the tangent at the start is the only information
        makers = [lambda: _keep_top(-g0, tie, problem)]
    value, pruned, eval_seconds = None, None, 2.0 * cut_seconds + sort_seconds
    for make in makers:
        if pruned is not None and (deadline.interrupted or deadline.remaining() < 1.5 * eval_seconds):
            break
        cand = make()
        if pruned is None and (len(makers) == 1 or deadline.interrupted or deadline.remaining() < eval_seconds):
            pruned = cand
            break
        tick = time.perf_counter()
        v = problem.objective(cand)
        eval_seconds = time.perf_counter() - tick + sort_seconds
        if value is None or v < value:
            value, pruned = v, cand
    if value is None and p <= _PARTITION_FROM:   # small: costing it is cheap
        value = problem.objective(pruned)
    pruned = np.asarray(pruned, dtype=np.intp)
    if value is None:   # not costed here (no time left): no optimality claim
        status = Status.INTERRUPTED if deadline.interrupted else Status.TIME_LIMIT
        return BackendResult(pruned=pruned, status=status, bound=bound, objective=None,
                             info={"relaxation": "perspective" if problem.objective_kind == "update"
                                   else "shifted QP", "solver": "highs" if used_highs else "frank-wolfe"})
    tol = 1e-9 * max(abs(value), 1e-300)
    status = Status.OPTIMAL if bound >= value - tol else Status.FEASIBLE
    if status != Status.OPTIMAL:
        if deadline.interrupted:
            status = Status.INTERRUPTED
        elif deadline.expired() or work.expired():
            status = Status.TIME_LIMIT
    return BackendResult(pruned=pruned, status=status, bound=min(bound, value), objective=value,
                         info={"relaxation": "perspective" if problem.objective_kind == "update" else "shifted QP",
                               "relaxation_value": float(oracle.cut(z_bar)[0] + oracle.offset)
                               if used_highs else None,
                               "solver": "highs" if used_highs else "frank-wolfe"})


def _cut_seconds_estimate(oracle) -> float:
    """A conservative a-priori time of one oracle call: a handful of passes over its ``r × p`` factor
    (at ~1 GB/s) plus the ``r × r`` solve — used only to decide whether even one call fits."""
    B = getattr(oracle, "B", None)
    if B is None:
        return 8.0 * oracle.p * oracle.p * 2 / 1e9
    r, p = B.shape
    return (6.0 * 8.0 * r * p) / 1e9 + r ** 3 / 3e8
