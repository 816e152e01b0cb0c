"""Exact backend ``miqp``: the CBS MIQP, proven optimal.

Engines
-------
``engine="highs"`` (default) — HiGHS refuses MIQPs, so the exact method is our own search over keep-sets,
one of three, or two of them time-sliced (``search=``; ``"auto"`` picks by :func:`_leaps_applies`, the rule
measured in ``docs/benchmarks/miqp_capacity.md``; above ``LEAPS_FULL_P`` weights it runs the portfolio below
instead of leaps alone):

* ``search="leaps"`` ("update" cost, positive definite ``F``) — depth-first *leaps and bounds*
  (:mod:`solvers.exact_leaps`): the cost is ``½w̃ᵀFw̃ − ½gain(S)`` with a monotone ``gain``; a subtree that
  may only add weights from a suffix of an ordered candidate list is bounded by the gain of keeping that
  whole suffix (all suffixes from one Cholesky factorisation), the last two levels are evaluated in closed
  form; the node loop is compiled (numba) for total budgets. No relaxation is involved. Strongest at high
  sparsity and whenever the kept set is small against the rank of ``F`` (real blocks with N > p; low-rank
  blocks keeping fewer than N weights).
* ``search="best_first"`` — best-first branch-and-bound (:mod:`solvers.exact_bnb`) on the convex
  under-estimator ``φ`` of :mod:`solvers.exact_core` (perspective form for "update", diagonally shifted QP
  for "selection"), with:

  - node bounds that are proven by construction — tangents ``φ(z̄) + min_{z ∈ node} ∇φ(z̄)ᵀ(z − z̄)``
    (a sort), from a pool of all global tangents seen and from a few warm-started Frank–Wolfe steps per
    node; the tangent at "keep every free weight" dominates the classic monotone bound;
  - for "update", node relaxations on the node's *reduced* problem (:mod:`solvers.exact_node`) with a
    node-specific eigenvalue shift — far tighter than the global ``λ`` split deep in the tree; the node's
    final tangent also bounds both children before they are queued;
  - optionally (``root_relaxation=True``) the root perspective relaxation solved by HiGHS (the QP of
    :mod:`solvers.relaxation`) to seed the cut pool and an incumbent. Off by default: measured on generated
    and MLPNet blocks it never reduced the node count and cost 0.05–0.7 s;
  - incumbents from rounding node relaxations; leaves are costed in closed form.

  It is the stronger search on low-rank blocks that keep at least ``N`` weights (the cost is then
  λ-sized and the perspective bounds carry it), and the only one for singular, undamped ``F``.
* ``search="portfolio"`` ("update", positive definite ``F``) — leaps-and-bounds and best-first *time-sliced*:
  leaps is a suspendable generator (:class:`solvers.exact_leaps.LeapsSearch`), best-first a re-entrant
  queue (:class:`solvers.exact_bnb.BestFirst`); slices alternate (leaps first) and grow geometrically, the
  searches share one incumbent (each prunes with the best known cost), the bound is the larger of the two
  proven bounds, and the first search to settle (or the two bounds together) proves optimality. Leaps'
  share of a slice pair follows best-first's relative gap (a stalled best-first gives leaps most of the
  time), with a floor of 0.4 up to 64 weights and 0.1 above. Neither search wins everywhere on real blocks
  (leaps proves most fc1 chunks at damping 1e-5, where best-first stalls; best-first finishes the fc2 row
  pairs and some fc1 chunks): the portfolio gets both within about 1–2× of the faster one (measured 1.0–1.8×).
  (``PORTFOLIO = False`` restores the earlier leaps probe then best-first.)
* ``search="milp"`` ("selection" only) — HiGHS's branch-and-cut on the exact MILP linearisation of the
  binary QP (:mod:`solvers.kernels.selection_milp`), started from the incumbent. For "selection" on low-rank blocks
  (N < p), ``"auto"`` runs a best-first probe of ``SELECTION_PROBE_NODES`` nodes (it settles most of them in
  well under a second) and hands what is still open to HiGHS, keeping the larger of the two proven bounds;
  full-rank blocks (real MLPNet rows, N > p) stay best-first, which measured 3–100x faster there.

All start from a swap-local-search incumbent (from OBS / magnitude). HiGHS does the work on "selection"
blocks the probe leaves open; for "update" the searches are our own (HiGHS solves the ``relaxation``
backend's QP and, on request, the best-first root): ``engine="highs"`` stands for "no commercial/external
MIQP solver needed".

Status "optimal" only when ``best − bound ≤ max(abs_gap, rel_gap·|best|)``; on ``time_limit`` the best
incumbent is returned with the proven bound and status "time_limit" — every phase reads the clock (the
first swap search gets ``INCUMBENT_SHARE`` of it, the root has a bound before any node, uninterruptible
factorisations are skipped when they would not fit), met within max(10%, 0.5 s) with one BLAS thread.
Ctrl-C returns the incumbent and the bound with status "interrupted"; blocks whose arrays cannot fit raise
``MemoryLimitError`` before any work. Partition budgets (N:M, per-row) are handled by both searches and
the selection MILP (per-group counts in every bound, branch and rounding). With ``damping = 0`` and a singular
``F`` the update objective has no perspective split and the search uses the monotone bound only.

``engine="gurobi" | "scip"`` — the same problem as the Pyomo model of :mod:`solvers.kernels.pyomo_model`
(``formulation=`` picks it), solved through Pyomo's interfaces on one thread.

``build_model`` / ``export_model`` are re-exported here: ``solvers.miqp.export_model(prob, "cbs.lp")``.
"""
from __future__ import annotations

import numpy as np

from .base import BackendResult, Deadline, Status
from .exact_bnb import CutPool, branch_and_bound, initial_incumbent, top_keep
from .exact_core import Clock, check_memory, group_spec, make_oracle, oracle_bytes, wrap_up_reserve
from .kernels.pyomo_model import ENGINES, build_model, export_model, solve_with_engine
from .registry import register

__all__ = ["solve_miqp", "build_model", "export_model", "ENGINES"]

# Node-level shifts factor an |alive| × |alive| block per node: worth it for the block sizes exact search reaches.
NODE_SHIFT_MAX_P = 400
# Global tangent cuts the best-first pool keeps. With node-level shifts the node's own relaxation is far
# tighter than any global tangent: the 4000 cuts' bound (0.2-0.8 ms a node) changed no tree (measured on real
# and generated blocks: equal node counts with 200 or 50 cuts), so a small pool, same trees, 1.3-2.5x faster.
POOL_CAPACITY = 4000
POOL_CAPACITY_NODE_SHIFT = 200
SEARCHES = ("auto", "leaps", "best_first", "portfolio", "milp")
# "auto" runs leaps alone to the end up to this block size; above it time-sliced with best-first (the
# portfolio; measured: on real MLPNet blocks of 80-120 weights a stopped leaps search left 87-99.7% gaps where
# best-first left 1.3-8.9%, while on fc1 chunks of 64 at damping 1e-5 only leaps proves).
LEAPS_FULL_P = 48
LEAPS_PROBE_SHARE = 0.25
LEAPS_PROBE_NODES = 100_000
# Above LEAPS_FULL_P "auto" time-slices leaps and best-first (a portfolio sharing the incumbent) instead of
# a leaps probe followed by best-first (False: the probe, as measured before; docs/benchmarks/miqp_capacity.md).
PORTFOLIO = True
# Slices: leaps first, then best-first; each pair lasts PORTFOLIO_GROWTH times longer than the last.
PORTFOLIO_FIRST_SLICE = 0.5
PORTFOLIO_GROWTH = 1.5
# Leaps' share of a pair: leaps' own bound says nothing until its last root subtrees, best-first's relative
# gap does — a best-first gap at or below GAP_LOW (it is closing) gives leaps SHARE_MIN of the next pair, at
# or above GAP_HIGH (stalled far from the incumbent, as at tiny dampings) SHARE_MAX, linear in between; the
# first pair is split evenly (measured: docs/benchmarks/miqp_capacity.md). Best-first's gap falls alike
# whether best-first or leaps will finish first (0.15 → 0.04 over 60 s in both traces measured), so the floor
# depends on the block size instead: up to PORTFOLIO_SMALL_P weights leaps (ordered by greedy deletion) proves
# blocks best-first stalls on — a 0.1 floor let a 7 s leaps proof take 57 s — yet best-first still wins some
# (fc1 row 6 cols 128–191 at 0.5: 19.8 s alone, leaps 45.6 s); 0.4 balanced the worst of each kind measured
# (46 s and 35 s; 0.25: 60 s and 29 s; 0.5: 44 s and 49 s). Above it the leaps tree is out of reach where
# best-first proves (fc2 row pairs at 1e-3: leaps alone leaves 90% at 60 s), so best-first keeps 90%.
PORTFOLIO_LEAPS_SHARE = 0.5
PORTFOLIO_SHARE_MIN, PORTFOLIO_SHARE_MAX = 0.1, 0.9
PORTFOLIO_SMALL_P, PORTFOLIO_SHARE_MIN_SMALL = 64, 0.4
PORTFOLIO_GAP_LOW, PORTFOLIO_GAP_HIGH = 0.1, 0.3
# Best-first nodes tried on a "selection" problem before HiGHS takes over on the MILP linearisation.
SELECTION_PROBE_NODES = 2000
# Share of the time limit the swap search for the first incumbent may use (the rest is for the proof).
INCUMBENT_SHARE = 0.3


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


def _leaps_applies(problem, monotone: bool) -> bool:
    """Whether ``search="auto"`` picks leaps-and-bounds (measured rule, docs/benchmarks/miqp_capacity.md).

    Leaps needs the "update" cost with a positive definite ``F`` (a dense ``p × p`` copy). Its monotone
    bound bites once the candidate suffixes fall below the rank of ``F``; on low-rank blocks that keep at
    least ``N`` weights the kept set can span every gradient direction, the cost is λ-sized and the
    perspective bounds of best-first search are the stronger ones.
    """
    if monotone or problem.objective_kind != "update" or problem.p > NODE_SHIFT_MAX_P:
        return False
    curv = problem.curvature
    return not (curv.is_low_rank and curv.n_samples < problem.p and problem.n_keep >= curv.n_samples)


def _run_leaps(problem, oracle, z0, *, deadline, rel_gap, abs_gap, node_limit, progress, groups=None):
    """Leaps-and-bounds on the problem's dense ``F``; ``None`` when a factorisation fails numerically."""
    from .exact_leaps import NumericalFailure, leaps_search
    try:
        return leaps_search(problem.curvature.dense(), problem.effective_weights, problem.n_keep, incumbent=z0,
                            deadline=deadline, node_limit=node_limit, rel_gap=rel_gap, abs_gap=abs_gap,
                            progress=progress, groups=groups)
    except NumericalFailure:
        return None


def check_miqp_memory(problem) -> None:
    """Refuse (:class:`~solvers.errors.MemoryLimitError`) sizes whose arrays cannot fit, before any work.

    The estimate is the oracle's arrays (low-rank ``N × p`` products, or dense ``p × p`` matrices when the
    curvature is dense, full rank or the cost is "selection") plus the capped cut pool.
    """
    oracle, detail = oracle_bytes(problem)
    from .exact_bnb import POOL_BYTES
    check_memory(f"miqp on a block of p = {problem.p} weights", oracle + POOL_BYTES, detail)


def _solve_highs(problem, *, deadline: Deadline, progress: bool, rel_gap: float, node_limit: int | None,
                 root_relaxation: bool, node_shift: bool, search: str) -> BackendResult:
    p, k = problem.p, problem.n_keep
    groups = group_spec(problem)
    if k in (0, p):
        pruned = np.arange(p) if k == 0 else np.zeros(0, dtype=np.intp)
        value = problem.objective(pruned)
        return BackendResult(pruned=pruned, status=Status.OPTIMAL, bound=value, objective=value,
                             info={"engine": "highs", "search": "closed form", "nodes": 0})
    oracle = make_oracle(problem, deadline)
    monotone = oracle is None
    if monotone:
        oracle = _MonotoneOracle(problem)
    if search in ("leaps", "portfolio") and (monotone or problem.objective_kind != "update"):
        raise ValueError(f'search="{search}" needs objective="update" and a positive definite F '
                         '(damping > 0 or a full-rank hessian)')
    if search == "milp" and problem.objective_kind != "selection":
        raise ValueError('search="milp" (the exact MILP linearisation on HiGHS) exists only for '
                         'objective="selection"')
    share = None if deadline.seconds is None else INCUMBENT_SHARE * deadline.seconds
    z0, v0, b0 = initial_incumbent(problem, oracle, _scores(problem), deadline=deadline.share(share),
                                   groups=groups, with_bound=True)
    # Absolute tolerance: a tiny fraction of the cost of pruning everything (a natural scale of the instance).
    # (½w̃ᵀFw̃ for the update cost: O(Np), unlike a cut.)
    prune_all = (0.5 * problem.curvature.quad(problem.effective_weights) if problem.objective_kind == "update"
                 else oracle.cut(np.zeros(p))[0])
    scale = abs(prune_all) + abs(v0)
    abs_gap = 1e-13 * scale
    use_leaps = search == "leaps" or (search == "auto" and _leaps_applies(problem, monotone))
    # Above LEAPS_FULL_P weights "auto" time-slices leaps and best-first (the portfolio, sharing the
    # incumbent). With PORTFOLIO off, it only probes with leaps (a quarter of the time, at most
    # LEAPS_PROBE_NODES nodes), then best-first takes over from the probe's incumbent.
    sliced = search == "portfolio" or (use_leaps and search == "auto" and PORTFOLIO and p > LEAPS_FULL_P
                                       and node_limit is None)
    probe = use_leaps and search == "auto" and not sliced and p > LEAPS_FULL_P and node_limit is None
    leaps_nodes = 0
    if use_leaps and not sliced:
        leaps_deadline = deadline
        if probe and deadline.seconds is not None:
            leaps_deadline = deadline.share(max(0.0, deadline.remaining()) * LEAPS_PROBE_SHARE)
        result = _run_leaps(problem, oracle, z0, deadline=leaps_deadline, rel_gap=rel_gap, abs_gap=abs_gap,
                            node_limit=LEAPS_PROBE_NODES if probe else node_limit, progress=progress,
                            groups=groups)
        if result is not None and probe and not result.optimal and not deadline.interrupted:
            leaps_nodes = result.nodes
            value = result.value      # the same units as the oracle's (cost without the offset)
            if value < v0:
                z0, v0 = result.keep, value
            result = None      # continue best-first below
        if result is not None:
            pruned = np.flatnonzero(~result.keep)
            # Costs from gains are differences of O(w̃ᵀFw̃) numbers: report the cost recomputed from the set.
            objective = problem.update_cost(pruned)
            bound = min(result.bound + oracle.offset, objective)
            status = _status(result.optimal, node_limit, result.nodes, deadline)
            return BackendResult(pruned=pruned, status=status, bound=bound, objective=objective,
                                 info={"engine": "highs", "search": "leaps", "nodes": result.nodes,
                                       "compiled": result.info["compiled"], "bound_kind": "monotone suffix"})
    use_reducer = node_shift and not monotone and problem.objective_kind == "update" and p <= NODE_SHIFT_MAX_P
    pool = CutPool(p, capacity=POOL_CAPACITY_NODE_SHIFT if use_reducer else POOL_CAPACITY,
                   ids=None if groups is None else groups[0])
    if root_relaxation and not monotone and not deadline.expired():
        from .relaxation import relaxation_point
        try:
            zr = relaxation_point(problem, oracle, deadline.share(max(0.0, deadline.remaining()) / 4))
        except KeyboardInterrupt:   # keep the incumbent: the search below sees the flag and stops at once
            deadline.interrupt()
            zr = top_keep(np.abs(oracle.w) if hasattr(oracle, "w") else np.ones(p), k, groups).astype(float)
        pool.add(*oracle.cut(zr), zr)
        keep = top_keep(zr, k, groups)
        from .exact_core import local_search
        cost = lambda zz: oracle.cut(zz.astype(float))[0]  # noqa: E731
        keep, value, _ = local_search(cost, keep, max_evals=500, deadline=deadline,
                                      ids=None if groups is None else groups[0])
        if value < v0:
            z0, v0 = keep, value
    selection = problem.objective_kind == "selection"
    if selection and search == "milp":
        return _run_selection_milp(problem, np.flatnonzero(~z0), None, deadline=deadline, rel_gap=rel_gap,
                                   progress=progress)
    # Selection portfolio: a bounded best-first probe (it settles most blocks in well under a second),
    # then HiGHS on the MILP linearisation, which wins where the shifted-QP bounds are weak.
    # Only on low-rank blocks (N < p): on full-rank ones (real MLPNet rows) best-first alone measured 3–100x
    # faster than the MILP, which then stalls on the dense linearisation.
    curv = problem.curvature
    portfolio = (selection and search == "auto" and node_limit is None and curv.is_low_rank
                 and curv.n_samples < p)
    reducer = None
    if use_reducer:
        from .exact_node import NodeReducer
        reducer = NodeReducer(problem.curvature.dense(), problem.effective_weights)
    if sliced:
        return _run_portfolio(problem, oracle, z0, v0, b0, deadline=deadline, rel_gap=rel_gap, abs_gap=abs_gap,
                              progress=progress, node_limit=node_limit, pool=pool, reducer=reducer,
                              groups=groups)
    result = branch_and_bound(problem, oracle, z0, v0, deadline=deadline, rel_gap=rel_gap,
                              abs_gap=abs_gap, progress=progress,
                              node_limit=SELECTION_PROBE_NODES if portfolio else node_limit, pool=pool,
                              tangents=not monotone, reducer=reducer, groups=groups, root_key=b0)
    pruned = np.flatnonzero(~result.keep)
    if portfolio and not result.optimal and not deadline.expired():
        return _run_selection_milp(problem, pruned, result.bound + oracle.offset, deadline=deadline,
                                   rel_gap=rel_gap, progress=progress, probe_nodes=result.nodes)
    nodes = result.nodes + leaps_nodes
    objective, bound = result.value + oracle.offset, result.bound + oracle.offset
    if p <= NODE_SHIFT_MAX_P:
        # The oracle's value and the registry's recomputed cost are different roundings of the same number
        # (far apart when the damping is tiny and ḡ large): keep the bound at most the recomputed cost.
        objective = problem.objective(pruned)
        bound = min(bound, objective)
    return BackendResult(pruned=pruned, status=_status(result.optimal, node_limit, nodes, deadline),
                         bound=bound, objective=objective,
                         info={"engine": "highs", "search": "best_first", "nodes": nodes,
                               "leaps_probe_nodes": leaps_nodes,
                               "cuts": result.info.get("cuts", 0),
                               "bound_kind": "monotone" if monotone else "perspective" if
                               problem.objective_kind == "update" else "shifted QP"})


def _run_portfolio(problem, oracle, z0, v0, b0, *, deadline, rel_gap, abs_gap, progress, node_limit, pool,
                   reducer, groups) -> BackendResult:
    """Leaps-and-bounds and best-first, time-sliced, sharing one incumbent ("update", positive definite F).

    Slices alternate (leaps first); each pair lasts ``PORTFOLIO_GROWTH`` times longer than the last; leaps
    takes ``PORTFOLIO_LEAPS_SHARE`` of the first pair and then a share set by best-first's relative gap and
    the block size (:func:`_leaps_share`: a stalled best-first leaves most of the time to leaps). Before its
    slice each search is offered the other's incumbent (both prune against the best known cost). The proven
    bound is the larger of the two valid bounds: best-first's smallest open key and leaps' root suffix bound (everything leaps has
    not enumerated lies below it). Stops when either search settles, when
    ``best − bound ≤ max(abs_gap, rel_gap·|best|)``, at the deadline (``Status.TIME_LIMIT``) or on Ctrl-C
    (``Status.INTERRUPTED``), keeping incumbent and bound. ``node_limit``: per search.
    """
    import time
    from .exact_bnb import BestFirst
    from .exact_leaps import LeapsSearch, NumericalFailure
    k = problem.n_keep
    bf = BestFirst(problem, oracle, z0, v0, deadline=deadline, rel_gap=rel_gap, abs_gap=abs_gap,
                   progress=progress, node_limit=node_limit, pool=pool, tangents=True, reducer=reducer,
                   groups=groups, root_key=b0)
    leaps = None
    try:
        leaps = LeapsSearch(problem.curvature.dense(), problem.effective_weights, k, incumbent=z0,
                            deadline=deadline, node_limit=node_limit, rel_gap=rel_gap, abs_gap=abs_gap,
                            progress=progress, groups=groups)
    except NumericalFailure:
        pass
    slice_s, slices, winner = PORTFOLIO_FIRST_SLICE, 0, None
    share = PORTFOLIO_LEAPS_SHARE
    leaps_active = leaps is not None     # false once leaps has ended (node limit, numerical failure)
    leaps_bound = -np.inf                # the bound of an ended leaps search

    def incumbent():
        if leaps is not None and leaps.keep is not None and leaps.value < bf.best_v:
            return leaps.keep, leaps.value
        return bf.best_z, bf.best_v

    def bound():
        b = max(bf.bound(), leaps_bound)
        if leaps_active:
            b = max(b, leaps.current_bound())
        return b

    try:
        while True:
            if leaps_active:
                slices += 1
                leaps.offer_value(bf.best_z, bf.best_v)
                try:
                    leaps.run(until=time.perf_counter() + share * slice_s)
                except NumericalFailure:
                    leaps_active = False     # a Schur complement lost definiteness: best-first carries on
                if leaps_active and leaps.done:
                    leaps_active = False
                    res = leaps.result()
                    leaps_bound = res.bound
                    if res.optimal:
                        winner = "leaps"
                        break
            keep, value = incumbent()
            if value - bound() <= max(abs_gap, rel_gap * abs(value)):
                winner = "combined"
                break
            if deadline.expired():
                break
            slices += 1
            bf.offer(keep, value)
            bf.run(until=time.perf_counter() + ((1.0 - share) if leaps_active else 1.0) * slice_s)
            if bf.done:
                if not bf.stopped:
                    winner = "best_first"
                break
            slice_s *= PORTFOLIO_GROWTH
            share = _leaps_share(bf.bound(), incumbent()[1], problem.p)
    except KeyboardInterrupt:       # between slices: keep what both searches have
        deadline.interrupt()
    keep, value = incumbent()
    lower = bound()
    if leaps_active:
        try:
            lower = max(lower, leaps.result().bound)    # closes the suspended search
        except NumericalFailure:
            pass
    pruned = np.flatnonzero(~np.asarray(keep, dtype=bool))
    # Costs from gains and from the oracle are roundings of the same number: report the recomputed cost and
    # keep the bound at most that.
    objective = problem.objective(pruned)
    bound_ = min(lower + oracle.offset, objective)
    leaps_nodes = 0 if leaps is None else leaps.nodes
    limit_hit = node_limit is not None and max(bf.nodes, leaps_nodes) >= node_limit
    status = _status(winner is not None, node_limit if limit_hit else None, 0, deadline)
    if limit_hit and winner is None and not deadline.expired():
        status = Status.ITERATION_LIMIT
    return BackendResult(pruned=pruned, status=status, bound=bound_, objective=objective,
                         info={"engine": "highs", "search": "portfolio", "nodes": leaps_nodes + bf.nodes,
                               "leaps_nodes": leaps_nodes, "bf_nodes": bf.nodes, "slices": slices,
                               "winner": winner, "cuts": len(bf.pool),
                               "compiled": leaps is not None and leaps.compiled,
                               "bound_kind": "max(perspective, monotone suffix)"})


def _leaps_share(bf_bound: float, best: float, p: int) -> float:
    """Leaps' share of the next slice pair from best-first's relative gap and the block size ``p`` (constants
    PORTFOLIO_*)."""
    gap = (best - bf_bound) / max(abs(best), 1e-300) if np.isfinite(bf_bound) else 1.0
    frac = min(1.0, max(0.0, (gap - PORTFOLIO_GAP_LOW) / (PORTFOLIO_GAP_HIGH - PORTFOLIO_GAP_LOW)))
    floor = PORTFOLIO_SHARE_MIN_SMALL if p <= PORTFOLIO_SMALL_P else PORTFOLIO_SHARE_MIN
    return floor + frac * (PORTFOLIO_SHARE_MAX - floor)


def _run_selection_milp(problem, start_pruned: np.ndarray, known_bound: float | None, *, deadline: Deadline,
                        rel_gap: float, progress: bool, probe_nodes: int = 0) -> BackendResult:
    """HiGHS on the selection MILP (:mod:`solvers.kernels.selection_milp`), started from ``start_pruned``.

    ``known_bound``: a proven bound from a best-first probe; the reported bound is the larger of the two.
    """
    from .kernels.selection_milp import solve_selection_milp
    res = solve_selection_milp(problem, deadline=deadline, rel_gap=rel_gap, start_pruned=start_pruned,
                               progress=progress)
    pruned, bound, optimal, nodes, hstatus = start_pruned, known_bound, False, 0, "no solution"
    if res is not None:
        if problem.selection_cost(res.pruned) <= problem.selection_cost(start_pruned):
            pruned = res.pruned
        finite = [b for b in (known_bound, res.bound) if b is not None and np.isfinite(b)]
        bound = max(finite) if finite else None     # HiGHS reports −inf before its first LP
        optimal, nodes, hstatus = res.optimal, res.nodes, res.status
    objective = problem.selection_cost(pruned)
    bound = None if bound is None else min(bound, objective)
    return BackendResult(pruned=np.sort(pruned), status=Status.OPTIMAL if optimal else Status.TIME_LIMIT,
                         bound=bound, objective=objective,
                         info={"engine": "highs", "search": "milp", "nodes": probe_nodes + nodes,
                               "probe_nodes": probe_nodes, "highs_status": hstatus,
                               "bound_kind": "HiGHS MILP (linearised)"})


def _status(optimal: bool, node_limit: int | None, nodes: int, deadline: Deadline) -> Status:
    if optimal:
        return Status.OPTIMAL
    if getattr(deadline, "interrupted", False):
        return Status.INTERRUPTED
    if node_limit is not None and nodes >= node_limit and not deadline.expired():
        return Status.ITERATION_LIMIT
    return Status.TIME_LIMIT


@register("miqp", description="exact CBS MIQP: own leaps-and-bounds / branch-and-bound (HiGHS MILP for "
                              "selection), or Gurobi/SCIP via Pyomo; total and partition (N:M, per-row) "
                              "budgets", kind="exact", budgets=("total", "partition"),
          requires=("pyomo", "highspy"), install_hint="pip install pyomo highspy")
def solve_miqp(problem, *, seed: int, time_limit, progress: bool, engine: str = "highs",
               formulation: str = "auto", rel_gap: float = 1e-9, node_limit: int | None = None,
               root_relaxation: bool = False, node_shift: bool = True, search: str = "auto",
               threads: int = 1) -> BackendResult:
    """Solve the CBS problem to proven optimality (module docstring).

    engine          "highs" (default, exact branch-and-bound), "gurobi" or "scip" (Pyomo model)
    formulation     Pyomo model for gurobi/scip: "auto" | "lowrank" | "dense" | "milp" (selection only)
    rel_gap         relative optimality tolerance for status "optimal"
    node_limit      highs engine: stop after this many nodes (status "iteration_limit")
    root_relaxation highs engine: seed the search with the HiGHS root relaxation (off: measured not to pay)
    node_shift      highs engine, "update": node relaxations with node-level eigenvalue shifts
    search          highs engine: "auto" (default), "leaps" (depth-first leaps-and-bounds, "update" only),
                    "best_first" (perspective / shifted-QP branch-and-bound), "portfolio" (both time-sliced,
                    one incumbent; "update" only) or "milp" (HiGHS on the exact MILP linearisation,
                    "selection" only). "auto": update → by the rule in _leaps_applies (leaps up to
                    LEAPS_FULL_P weights, the portfolio above);
                    selection → best-first for SELECTION_PROBE_NODES nodes, then "milp" if still open
    threads         gurobi engine threads (1 for fair comparisons)
    """
    if not isinstance(rel_gap, (int, float)) or not 0 <= rel_gap < 1:
        raise ValueError(f"rel_gap must be in [0, 1), got {rel_gap!r}")
    if node_limit is not None and (isinstance(node_limit, bool) or not isinstance(node_limit, (int, np.integer))
                                   or node_limit < 1):
        raise ValueError(f"node_limit must be a positive integer or None, got {node_limit!r}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    deadline = Clock(None if time_limit is None else time_limit - wrap_up_reserve(time_limit, problem.p))
    if engine == "highs":
        check_miqp_memory(problem)
        return _solve_highs(problem, deadline=deadline, progress=progress, rel_gap=float(rel_gap),
                            node_limit=node_limit, root_relaxation=root_relaxation, node_shift=node_shift,
                            search=search)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {('highs',) + tuple(ENGINES)}, got {engine!r}")
    return solve_with_engine(problem, engine, time_limit=time_limit, formulation=formulation,
                             rel_gap=max(float(rel_gap), 1e-9), threads=threads, progress=progress)
