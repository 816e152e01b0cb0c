"""Exact backend ``miqp``: the CBS MIQP, proven optimal.

Engines
-------
``engine="highs"`` (default) — HiGHS refuses MIQPs, so the exact method is our own branch-and-bound over
keep-sets (:mod:`solvers.exact_bnb`) on the convex under-estimator ``φ`` of :mod:`solvers.exact_core`
(perspective form for "update", diagonally shifted QP for "selection"), with:

* node bounds that are proven by construction — tangents ``φ(z̄) + min_{z ∈ node} ∇φ(z̄)ᵀ(z − z̄)``
  (a sort), from a pool of all global tangents seen and from a few warm-started Frank–Wolfe steps per node;
  the tangent at "keep every free weight" dominates the classic monotone bound;
* for "update", node relaxations on the node's *reduced* problem (:mod:`solvers.exact_node`: pruned
  weights' cost and Newton point folded in, fixed-kept weights minimised out into a Schur complement) with
  a node-specific eigenvalue shift — far tighter than the global ``λ`` split deep in the tree; the node's
  final tangent also bounds both children before they are queued;
* optionally (``root_relaxation=True``) the root perspective relaxation solved by HiGHS (the QP of
  :mod:`solvers.relaxation`) to seed the cut pool and an incumbent. Off by default: measured on generated
  and MLPNet blocks it never reduced the node count and cost 0.05–0.7 s, because the Frank–Wolfe pool
  reaches the same root bound. So on the default path HiGHS does no work; the name ``engine="highs"``
  stands for "no commercial/external MIQP solver needed";
* incumbents from swap local search (started from OBS / magnitude) and from rounding node relaxations;
  leaves are costed in closed form.

Status "optimal" only when ``best − bound ≤ max(abs_gap, rel_gap·|best|)``; on ``time_limit`` the best
incumbent is returned with the proven bound and status "time_limit". With ``damping = 0`` and a singular
``F`` the update objective has no perspective split and the search uses the monotone bound only.

``engine="gurobi" | "scip"`` — the same problem as the Pyomo model of :mod:`solvers.pyomo_model`
(``formulation=`` picks it), solved through Pyomo's interfaces on one thread.

``build_model`` / ``export_model`` are re-exported here: ``solvers.miqp.export_model(prob, "cbs.lp")``.
"""
from __future__ import annotations

import numpy as np

from .base import BackendResult, Deadline, Status
from .exact_bnb import CutPool, branch_and_bound, initial_incumbent
from .exact_core import make_oracle
from .pyomo_model import ENGINES, build_model, export_model, solve_with_engine
from .registry import register

__all__ = ["solve_miqp", "build_model", "export_model", "ENGINES"]

# Node-level shifts factor an |alive| × |alive| block per node: worth it for the block sizes exact search reaches.
NODE_SHIFT_MAX_P = 400


class _MonotoneOracle:
    """Update costs when ``F`` is singular and undamped: exact values, no tangents (gradient 0).

    A zero gradient makes every tangent bound equal ``φ(z̄)``; used only with ``z̄`` = "keep every free
    weight", that is the monotone bound ``cost(K) ≥ cost(K ∪ U)``.
    """

    kind = "update"

    def __init__(self, problem):
        self.problem, self.p, self.offset = problem, problem.p, problem.update_constant
        self.w = problem.effective_weights

    def cut(self, z):
        z = np.asarray(z, dtype=float)
        pruned = np.flatnonzero(z < 0.5)
        return self.problem.update_cost(pruned) - self.offset, np.zeros(self.p)


def _scores(problem) -> np.ndarray:
    """Keep-priority for the first incumbent: OBS saliency (update) or |w| (selection)."""
    if problem.objective_kind == "update":
        try:
            from .obs import obs_scores
            return obs_scores(problem)
        except ValueError:
            return np.abs(problem.effective_weights)
    return np.abs(problem.weights)


def _solve_highs(problem, *, deadline: Deadline, progress: bool, rel_gap: float, node_limit: int | None,
                 root_relaxation: bool, node_shift: bool) -> BackendResult:
    p, k = problem.p, problem.n_keep
    if k in (0, p):
        pruned = np.arange(p) if k == 0 else np.zeros(0, dtype=np.intp)
        value = problem.objective(pruned)
        return BackendResult(pruned=pruned, status=Status.OPTIMAL, bound=value, objective=value,
                             info={"engine": "highs", "nodes": 0})
    oracle = make_oracle(problem)
    monotone = oracle is None
    if monotone:
        oracle = _MonotoneOracle(problem)
    z0, v0 = initial_incumbent(problem, oracle, _scores(problem))
    pool = CutPool(p)
    if root_relaxation and not monotone:
        from .relaxation import relaxation_point
        zr = relaxation_point(problem, oracle, Deadline(max(0.0, deadline.remaining()) / 4))
        pool.add(*oracle.cut(zr), zr)
        keep = np.zeros(p, dtype=bool)
        keep[np.argsort(-zr, kind="stable")[:k]] = True
        from .exact_core import local_search
        cost = lambda zz: oracle.cut(zz.astype(float))[0]  # noqa: E731
        keep, value, _ = local_search(cost, keep, max_evals=500)
        if value < v0:
            z0, v0 = keep, value
    # Absolute tolerance: a tiny fraction of the cost of pruning everything (a natural scale of the instance).
    scale = abs(oracle.cut(np.zeros(p))[0]) + abs(v0)
    reducer = None
    if node_shift and not monotone and problem.objective_kind == "update" and p <= NODE_SHIFT_MAX_P:
        from .exact_node import NodeReducer
        reducer = NodeReducer(problem.curvature.dense(), problem.effective_weights)
    result = branch_and_bound(problem, oracle, z0, v0, deadline=deadline, rel_gap=rel_gap,
                              abs_gap=1e-13 * scale, progress=progress, node_limit=node_limit, pool=pool,
                              tangents=not monotone, reducer=reducer)
    pruned = np.flatnonzero(~result.keep)
    if result.optimal:
        status = Status.OPTIMAL
    elif node_limit is not None and result.nodes >= node_limit and not deadline.expired():
        status = Status.ITERATION_LIMIT
    else:
        status = Status.TIME_LIMIT
    return BackendResult(pruned=pruned, status=status, bound=result.bound + oracle.offset,
                         objective=result.value + oracle.offset,
                         info={"engine": "highs", "nodes": result.nodes, "cuts": result.info.get("cuts", 0),
                               "bound_kind": "monotone" if monotone else "perspective" if
                               problem.objective_kind == "update" else "shifted QP"})


@register("miqp", description="exact CBS MIQP: own branch-and-bound with HiGHS relaxations, or Gurobi/SCIP "
                              "via Pyomo", exact=True, requires=("pyomo", "highspy"),
          install_hint="pip install pyomo highspy")
def solve_miqp(problem, *, seed: int, time_limit, progress: bool, engine: str = "highs",
               formulation: str = "auto", rel_gap: float = 1e-9, node_limit: int | None = None,
               root_relaxation: bool = False, node_shift: bool = True, threads: int = 1) -> BackendResult:
    """Solve the CBS problem to proven optimality (module docstring).

    engine          "highs" (default, exact branch-and-bound), "gurobi" or "scip" (Pyomo model)
    formulation     Pyomo model for gurobi/scip: "auto" | "lowrank" | "dense" | "milp" (selection only)
    rel_gap         relative optimality tolerance for status "optimal"
    node_limit      highs engine: stop after this many nodes (status "iteration_limit")
    root_relaxation highs engine: seed the search with the HiGHS root relaxation (off: measured not to pay)
    node_shift      highs engine, "update": node relaxations with node-level eigenvalue shifts
    threads         gurobi engine threads (1 for fair comparisons)
    """
    if not isinstance(rel_gap, (int, float)) or not 0 <= rel_gap < 1:
        raise ValueError(f"rel_gap must be in [0, 1), got {rel_gap!r}")
    if node_limit is not None and (isinstance(node_limit, bool) or not isinstance(node_limit, (int, np.integer))
                                   or node_limit < 1):
        raise ValueError(f"node_limit must be a positive integer or None, got {node_limit!r}")
    deadline = Deadline(time_limit)
    if engine == "highs":
        return _solve_highs(problem, deadline=deadline, progress=progress, rel_gap=float(rel_gap),
                            node_limit=node_limit, root_relaxation=root_relaxation, node_shift=node_shift)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {('highs',) + tuple(ENGINES)}, got {engine!r}")
    return solve_with_engine(problem, engine, time_limit=time_limit, formulation=formulation,
                             rel_gap=max(float(rel_gap), 1e-9), threads=threads, progress=progress)
