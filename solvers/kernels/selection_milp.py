"""The "selection" cost solved exactly by HiGHS as its MILP linearisation (private; used by ``miqp``).

With ``y ∈ {0,1}ᵖ`` the pruned indicator, ``Q = W F W`` (``W = diag w``) and ``c = w∘ḡ``, the selection cost is
the binary QP ``½ yᵀQy − cᵀy`` over ``Σy = m`` (under a partition budget: ``Σ_{i∈g} y_i = m_g`` for every
group ``g``, one row each). On binary points ``y_i² = y_i`` and ``y_i y_j`` is exactly
the ``u_ij`` of

    u_ij ≥ y_i + y_j − 1     for Q_ij > 0   (the objective pushes u_ij down to max(0, y_i + y_j − 1)),
    u_ij ≤ y_i,  u_ij ≤ y_j  for Q_ij < 0   (the objective pushes u_ij up to min(y_i, y_j)),
    0 ≤ u_ij ≤ 1,

so ``min ½ Σ_i Q_ii y_i + Σ_{i<j} Q_ij u_ij − cᵀy`` is the same problem as a MILP, which HiGHS solves by
branch-and-cut. The objective is scaled by ``1/U`` (``U`` a feasible cost) so that HiGHS's absolute
tolerances act on O(1) numbers, and the swap-search incumbent is handed to HiGHS as a start.

Honesty: HiGHS works with feasibility tolerances (~1e-7 on O(1) numbers), so the caller recomputes the cost of
the returned set in float64 and clips the bound to it; "optimal" means HiGHS closed its gap to ``rel_gap``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base import Deadline

__all__ = ["solve_selection_milp", "MilpResult"]


@dataclass
class MilpResult:
    pruned: np.ndarray         # indices of the pruned weights
    bound: float               # HiGHS's dual bound, in cost units (unscaled)
    optimal: bool
    nodes: int
    status: str                # HiGHS's model status, for the record


def solve_selection_milp(problem, *, deadline: Deadline, rel_gap: float, start_pruned: np.ndarray | None = None,
                         progress: bool = False) -> MilpResult | None:
    """Solve the selection cost exactly (module doc). ``None`` if HiGHS returns no solution at all."""
    from .pyomo_model import feasible_cost_scale
    from ..relaxation import _highs

    highspy, h = _highs()
    p, m = problem.p, problem.n_prune
    w = problem.weights
    scale = 1.0 / feasible_cost_scale(problem)
    Q = problem.curvature.dense() * w[:, None] * w[None, :] * scale
    c = (np.zeros(p) if problem.gradient is None else w * problem.gradient) * scale
    iu, ju = np.triu_indices(p, 1)
    q = Q[iu, ju]
    nz = q != 0.0
    iu, ju, q = iu[nz], ju[nz], q[nz]
    n_pairs = q.size

    # Columns: y (binary) then u (continuous in [0, 1]).
    cost = np.concatenate([0.5 * np.diag(Q) - c, q])
    n_col = p + n_pairs
    h.addCols(n_col, cost, np.zeros(n_col), np.ones(n_col), 0, np.zeros(0, np.int32), np.zeros(0, np.int32),
              np.zeros(0))
    h.changeColsIntegrality(p, np.arange(p, dtype=np.int32),
                            np.full(p, highspy.HighsVarType.kInteger, dtype=np.uint8))

    # Rows (row-wise CSR): the budget Σy = m, then u − y_i − y_j ≥ −1 per positive pair and
    # u − y_i ≤ 0, u − y_j ≤ 0 per negative pair.
    u_col = p + np.arange(n_pairs)
    pos, neg = q > 0, q < 0
    pos_idx = np.stack([u_col[pos], iu[pos], ju[pos]], axis=1)
    neg_idx = np.concatenate([np.stack([u_col[neg], iu[neg]], axis=1), np.stack([u_col[neg], ju[neg]], axis=1)])
    n_pos, n_neg = pos_idx.shape[0], neg_idx.shape[0]
    # Budget rows: one Σy = m for a total budget, one Σ_{i∈g} y_i = m_g per group for a partition budget.
    budget = problem.budget
    if budget.n_groups == 1:
        b_len, b_idx, b_rhs = np.array([p]), np.arange(p), np.array([float(m)])
    else:
        b_len = np.asarray(budget.group_sizes)
        b_idx = np.concatenate(budget.members)
        b_rhs = np.asarray(budget.counts, dtype=np.float64)
    lengths = np.concatenate([b_len, np.full(n_pos, 3), np.full(n_neg, 2)]).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
    index = np.concatenate([b_idx, pos_idx.ravel(), neg_idx.ravel()]).astype(np.int32)
    value = np.concatenate([np.ones(p), np.tile([1.0, -1.0, -1.0], n_pos), np.tile([1.0, -1.0], n_neg)])
    lower = np.concatenate([b_rhs, np.full(n_pos, -1.0), np.full(n_neg, -np.inf)])
    upper = np.concatenate([b_rhs, np.full(n_pos, np.inf), np.zeros(n_neg)])
    h.addRows(lengths.size, lower, upper, index.size, starts, index, value)

    h.setOptionValue("mip_rel_gap", float(rel_gap))
    h.setOptionValue("mip_abs_gap", 1e-12)
    if deadline.seconds is not None:
        h.setOptionValue("time_limit", max(1e-3, float(deadline.remaining())))
    if progress:
        h.setOptionValue("output_flag", True)
    if start_pruned is not None:
        y0 = np.zeros(p)
        y0[np.asarray(start_pruned, dtype=np.intp)] = 1.0
        u0 = y0[iu] * y0[ju]
        sol = highspy.HighsSolution()
        sol.col_value = np.concatenate([y0, u0]).tolist()
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    status = h.getModelStatus()
    values = np.asarray(h.getSolution().col_value)
    if values.size != n_col:
        return None
    y = values[:p] > 0.5
    if not budget.is_satisfied(np.flatnonzero(y)):
        return None
    info = h.getInfo()
    bound = float(info.mip_dual_bound) / scale
    optimal = status == highspy.HighsModelStatus.kOptimal
    return MilpResult(np.flatnonzero(y), bound, optimal, int(info.mip_node_count), str(status))
