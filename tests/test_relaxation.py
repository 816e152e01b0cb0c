"""relaxation: its bound never exceeds the optimum; its rounding is feasible; it beats the big-M bound."""
from __future__ import annotations

import pytest

from cbs_opt.instances import FAMILIES, random_problem
from solvers import solve


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", ["update", "selection"])
def test_bound_below_optimum(family, objective):
    for seed in range(5):
        prob = random_problem(11, seed=seed, family=family, objective=objective,
                              sparsity=[0.3, 0.5, 0.7, 0.9, 0.5][seed], gradient=seed % 2 == 1,
                              n_samples=None if seed < 3 else 25)
        opt = solve(prob, "enumerate").objective
        sol = solve(prob, "relaxation")
        assert sol.bound <= opt + 1e-9 * abs(opt) + 1e-15, (prob, sol.bound, opt)
        assert sol.objective >= opt - 1e-9 * abs(opt) - 1e-15
        assert sol.pruned.size == prob.n_prune
        if sol.status == "optimal":
            assert abs(sol.objective - opt) <= 1e-7 * max(abs(opt), 1e-12)


def test_perspective_bound_is_far_above_zero_on_damped_instances():
    """With N > p (a certified diagonal shift) the perspective relaxation closes most of the gap."""
    prob = random_problem(14, n_samples=60, seed=0, sparsity=0.5)
    opt = solve(prob, "enumerate").objective
    sol = solve(prob, "relaxation")
    assert sol.bound > 0.3 * opt
    assert sol.info["relaxation"] == "perspective"


def test_trivial_budgets_are_optimal():
    for m in (0, 9):
        sol = solve(random_problem(9, n_prune=m, seed=0), "relaxation")
        assert sol.status == "optimal" and sol.bound == pytest.approx(sol.objective)


def test_time_limit_returns_a_valid_answer():
    prob = random_problem(30, seed=1, sparsity=0.5)
    sol = solve(prob, "relaxation", time_limit=0.05)
    assert sol.pruned.size == prob.n_prune
    assert sol.bound <= sol.objective
