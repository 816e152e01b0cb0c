"""miqp on "selection": HiGHS on the exact MILP linearisation, and the best-first → MILP portfolio."""
from __future__ import annotations

import numpy as np
import pytest

import solvers.miqp as miqp_module
from cbs_opt.instances import FAMILIES, random_problem
from solvers import solve
from solvers.base import Deadline
from solvers.kernels.selection_milp import solve_selection_milp

REL = 1e-7


def _close(a, b):
    return abs(a - b) <= REL * max(abs(b), 1e-12)


CASES = [(fam, seed) for fam in FAMILIES for seed in range(5)]


@pytest.mark.parametrize("family,seed", CASES)
def test_milp_matches_enumeration(family, seed):
    """Ties, λI, cancelling pairs (negative Q_ij, so both linearisation rows are exercised), gradients."""
    rng = np.random.default_rng(200 + seed)
    p = int(rng.integers(6, 14))
    prob = random_problem(p, seed=seed, family=family, objective="selection",
                          sparsity=[0.25, 0.5, 0.75, 0.9, 0.6][seed], gradient=seed % 2 == 0)
    ref = solve(prob, "enumerate")
    sol = solve(prob, "miqp", search="milp")
    assert sol.status == "optimal" and sol.info["search"] in ("milp", "closed form")
    assert _close(sol.objective, ref.objective), (sol.objective, ref.objective)
    assert sol.bound <= ref.objective + 1e-9 * abs(ref.objective) + 1e-15


def test_linearisation_uses_both_signs():
    prob = random_problem(10, seed=1, family="cancelling", objective="selection", sparsity=0.5)
    Q = prob.curvature.dense() * np.outer(prob.weights, prob.weights)
    upper = Q[np.triu_indices(10, 1)]
    assert (upper > 0).any() and (upper < 0).any()
    res = solve_selection_milp(prob, deadline=Deadline(None), rel_gap=1e-9)
    assert res.optimal and _close(prob.selection_cost(res.pruned), solve(prob, "enumerate").objective)


def test_portfolio_hands_over_to_milp(monkeypatch):
    """With a one-node probe the best-first search cannot finish: HiGHS must, from its incumbent."""
    monkeypatch.setattr(miqp_module, "SELECTION_PROBE_NODES", 1)
    prob = random_problem(14, seed=3, objective="selection", sparsity=0.5, gradient=True)
    sol = solve(prob, "miqp")
    ref = solve(prob, "enumerate")
    assert sol.info["search"] == "milp" and sol.info["probe_nodes"] == 1
    assert sol.status == "optimal" and _close(sol.objective, ref.objective)
    assert sol.bound <= ref.objective + 1e-9 * abs(ref.objective)


def test_portfolio_keeps_best_first_when_it_finishes():
    prob = random_problem(12, seed=0, objective="selection", sparsity=0.75)
    sol = solve(prob, "miqp")
    assert sol.status == "optimal" and sol.info["search"] == "best_first"


def test_milp_time_limit_is_honest():
    prob = random_problem(40, seed=0, objective="selection", sparsity=0.5)
    sol = solve(prob, "miqp", search="milp", time_limit=0.25)  # a root bound even under load; the proof takes seconds
    opt = solve(prob, "miqp", search="milp").objective                      # proven in a few seconds
    assert sol.status == "time_limit" and sol.info["search"] == "milp"
    assert sol.bound is not None and sol.bound <= opt + 1e-9 * abs(opt)
    assert sol.objective >= opt - 1e-9 * abs(opt)


def test_milp_refuses_the_update_objective():
    with pytest.raises(ValueError, match="milp"):
        solve(random_problem(8, seed=0), "miqp", search="milp")


def test_full_rank_blocks_stay_best_first(monkeypatch):
    monkeypatch.setattr(miqp_module, "SELECTION_PROBE_NODES", 1)
    prob = random_problem(14, n_samples=30, seed=3, objective="selection", sparsity=0.5, gradient=True)
    sol = solve(prob, "miqp")
    assert sol.info["search"] == "best_first" and sol.status == "optimal"
    assert _close(sol.objective, solve(prob, "enumerate").objective)


@pytest.mark.parametrize("seed", range(6))
def test_milp_budget_rows_per_group(seed):
    """One budget row per group: the MILP equals brute force over the per-group choices (N:M and irregular)."""
    import brute
    from cbs_opt import Problem
    rng = np.random.default_rng(seed)
    p = 12
    w, G = rng.normal(size=p), rng.normal(size=(int(rng.integers(2, 9)), p))
    if seed % 2:
        prob = Problem(weights=w, grads=G, damping=1e-3, pattern=["2:4", "1:4", "3:4"][seed % 3],
                       objective="selection", gradient=0.1 * rng.normal(size=p) if seed == 3 else None)
    else:
        ids = rng.permutation(np.repeat([0, 1, 2], [4, 3, 5]))
        prob = Problem(weights=w, grads=G, damping=1e-3, groups=ids, n_prune=[1, 3, 2], objective="selection")
    b = prob.budget
    F = brute.dense_f(w, G, prob.damping)
    best, _ = brute.brute_force_partition(F, w, b.groups, b.counts, "selection", prob.gradient)
    res = solve_selection_milp(prob, deadline=Deadline(None), rel_gap=1e-9)
    assert res is not None and res.optimal and b.is_satisfied(res.pruned)
    assert _close(prob.selection_cost(res.pruned), best)
    assert res.bound <= best + 1e-7 * max(abs(best), 1e-12)
