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
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .base import BackendResult, Deadline, Status
from .exact_bnb import relax_node
from .exact_core import make_oracle
from .registry import register

__all__ = ["solve_relaxation", "relaxation_point"]


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


def _add_rows(h, lower, upper, rows):
    """``rows``: list of (indices, values) — appended row-wise."""
    starts, idx, vals = [], [], []
    for ind, val in rows:
        starts.append(len(idx))
        idx.extend(int(i) for i in ind)
        vals.extend(float(v) for v in val)
    h.addRows(len(rows), np.asarray(lower, float), np.asarray(upper, float), len(idx),
              np.asarray(starts, np.int32), np.asarray(idx, np.int32), np.asarray(vals, float))


def _set_hessian(highspy, h, diag_entries: dict[int, float], n: int) -> None:
    """A diagonal Hessian (column index → value) for ``½ xᵀQx``."""
    hess = highspy.HighsHessian()
    hess.dim_ = n
    hess.format_ = highspy.HessianFormat.kTriangular
    start, index, value = [0], [], []
    for j in range(n):
        if j in diag_entries:
            index.append(j)
            value.append(diag_entries[j])
        start.append(len(index))
    hess.start_, hess.index_, hess.value_ = start, index, value
    h.passHessian(hess)


def _update_qp(problem, oracle, deadline: Deadline, rounds: int) -> np.ndarray:
    """The perspective relaxation of the update objective as HiGHS QPs; returns the final ``z̄``."""
    highspy, h = _highs()
    from .pyomo_model import feasible_cost_scale
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
    _set_hessian(highspy, h, {R + j: scale for j in range(nb)}, n)
    rows, lo, up = [], [], []
    b = B @ w
    for j in range(nb):  # r_j − B_j x = −b_j
        rows.append((np.concatenate([[R + j], X + np.arange(p)]), np.concatenate([[1.0], -B[j]])))
        lo.append(-b[j]), up.append(-b[j])
    rows.append((Z + np.arange(p), np.ones(p)))
    lo.append(k), up.append(k)
    for i in range(p):  # big-M: x_i − M_i z_i ≤ 0 ≤ x_i + M_i z_i
        rows.append(([X + i, Z + i], [1.0, -big_m[i]])), lo.append(-np.inf), up.append(0.0)
        rows.append(([X + i, Z + i], [1.0, big_m[i]])), lo.append(0.0), up.append(np.inf)
    # initial tangents of s ≥ x²/z at t = 0 and t = ±w̃_i (s − 2t x + t² z ≥ 0)
    for i in range(p):
        for t in (0.0, w[i]):
            rows.append(([S + i, X + i, Z + i], [1.0, -2.0 * t, t * t])), lo.append(0.0), up.append(np.inf)
    _add_rows(h, lo, up, rows)
    z_bar = np.full(p, k / p)
    for _ in range(rounds):
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
        new = []
        for i in viol:
            t = x[i] / z[i]
            new.append(([S + i, X + i, Z + i], [1.0, -2.0 * t, t * t]))
        _add_rows(h, np.zeros(len(new)), np.full(len(new), np.inf), new)
    return z_bar


def _selection_qp(problem, oracle, deadline: Deadline) -> np.ndarray:
    """The shifted selection QP on HiGHS; returns ``z̄ = 1 − ȳ``."""
    highspy, h = _highs()
    from .pyomo_model import feasible_cost_scale
    p, m = problem.p, problem.n_prune
    scale = 1.0 / feasible_cost_scale(problem)
    Q = oracle.Q * scale
    h.addCols(p, oracle.lin * scale, np.zeros(p), np.ones(p), 0, np.zeros(0, np.int32),
              np.zeros(0, np.int32), np.zeros(0))
    hess = highspy.HighsHessian()
    hess.dim_ = p
    hess.format_ = highspy.HessianFormat.kTriangular
    start, index, value = [0], [], []
    for j in range(p):  # lower triangle, column-wise
        rows = np.flatnonzero(Q[j:, j]) + j
        index.extend(rows.tolist())
        value.extend(Q[rows, j].tolist())
        start.append(len(index))
    hess.start_, hess.index_, hess.value_ = start, index, value
    h.passHessian(hess)
    _add_rows(h, [m], [m], [(np.arange(p), np.ones(p))])
    h.setOptionValue("time_limit", max(1e-3, min(deadline.remaining(), 1e6)))
    h.run()
    y = np.asarray(h.getSolution().col_value)
    if y.size != p:
        return np.full(p, problem.n_keep / p)
    return 1.0 - np.clip(y, 0.0, 1.0)


def relaxation_point(problem, oracle, deadline: Deadline, rounds: int = 12) -> np.ndarray:
    """The relaxation's keep-vector ``z̄ ∈ [0,1]ᵖ`` computed by HiGHS (see the module docstring)."""
    if problem.objective_kind == "update":
        return _update_qp(problem, oracle, deadline, rounds)
    return _selection_qp(problem, oracle, deadline)


@register("relaxation", description="continuous (perspective / shifted) relaxation on HiGHS: proven bound + rounding",
          exact=False, requires=("highspy",))
def solve_relaxation(problem, *, seed: int, time_limit, progress: bool, rounds: int = 12,
                     polish_steps: int = 20) -> BackendResult:
    """Solve the continuous relaxation on HiGHS; return its rounding with a proven lower bound.

    ``rounds``: perspective tangent rounds (update objective); ``polish_steps``: Frank–Wolfe steps that
    tighten the certified bound from the QP point. Status "optimal" only when the rounding meets the bound.
    """
    p, k = problem.p, problem.n_keep
    deadline = Deadline(time_limit)
    if k in (0, p):  # nothing to choose
        pruned = np.arange(p) if k == 0 else np.zeros(0, dtype=np.intp)
        value = problem.objective(pruned)
        return BackendResult(pruned=pruned, status=Status.OPTIMAL, bound=value, objective=value)
    oracle = make_oracle(problem)
    if oracle is None:
        raise ValueError("the relaxation needs damping > 0 (or a positive definite F) for the update objective")
    z_bar = relaxation_point(problem, oracle, deadline, rounds)
    kept, free = np.zeros(0, dtype=np.intp), np.arange(p)
    bound, z_fw, _ = relax_node(oracle, kept, free, k, z_bar, max_iter=polish_steps)
    bound += oracle.offset
    tie = np.abs(oracle.w) if problem.objective_kind == "update" else np.abs(problem.weights)
    # Rounding: a weak relaxation leaves z̄ nearly flat, and "largest z̄" then degenerates to the tie
    # break (magnitude). Also try the polished point and the minimiser of the tangent at z̄ (keep the
    # k most negative ∇φ entries), and keep the best of the three roundings.
    grad = oracle.cut(z_bar)[1]
    candidates = [np.lexsort((-tie, -np.round(z, 9)))[k:] for z in (z_bar, z_fw)]
    candidates.append(np.lexsort((-tie, grad))[k:])
    value, pruned = min(((problem.objective(c), tuple(np.sort(c))) for c in candidates), key=lambda t: t[0])
    pruned = np.array(pruned, dtype=np.intp)
    tol = 1e-9 * max(abs(value), 1e-300)
    status = Status.OPTIMAL if bound >= value - tol else Status.FEASIBLE
    if deadline.expired() and status != Status.OPTIMAL:
        status = Status.TIME_LIMIT
    return BackendResult(pruned=pruned, status=status, bound=min(bound, value), objective=value,
                         info={"relaxation": "perspective" if problem.objective_kind == "update" else "shifted QP",
                               "relaxation_value": float(oracle.cut(z_bar)[0] + oracle.offset)})
