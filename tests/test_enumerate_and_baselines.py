"""The enumeration oracle against independent brute force; baselines; the Solution contract."""
import numpy as np
import pytest

import brute
import solvers
from cbs_opt import Problem, solve
from cbs_opt.instances import FAMILIES, random_problem
from solvers.obs import obs_scores


def _dense(prob):
    return brute.dense_f(prob.weights, prob.grads, prob.damping, prob.hessian)


CASES = [  # (family, p, N, dense, gradient, damping)
    ("lowrank", 8, 3, False, False, 1e-3),     # N < p
    ("lowrank", 7, 20, False, True, 1e-2),     # N > p, first-order term
    ("cancelling", 8, 4, False, False, 1e-3),
    ("identity", 7, 4, False, False, 0.5),     # zero gradients: F = λI
    ("duplicates", 8, 5, False, False, 1e-3),  # duplicate weights and columns
    ("lowrank", 7, 4, True, False, 1e-3),      # dense hessian
    ("lowrank", 7, 3, False, False, 0.0),      # singular F
]


@pytest.mark.parametrize("family,p,N,dense,gradient,damping", CASES)
@pytest.mark.parametrize("kind", ["update", "selection"])
def test_enumerate_equals_brute_force(family, p, N, dense, gradient, damping, kind):
    for seed in range(2):
        base = random_problem(p, N, 0, family=family, dense=dense, gradient=gradient, damping=damping,
                              seed=seed, objective=kind)
        F = _dense(base)
        for m in range(p + 1):
            prob = base.with_n_prune(m)
            sol = solve(prob, "enumerate")
            best, _ = brute.brute_force(F, prob.weights, m, kind, prob.gradient)
            assert sol.status == "optimal"
            assert sol.objective == pytest.approx(best, rel=1e-7, abs=1e-10)
            assert sol.bound == pytest.approx(sol.objective, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["update", "selection"])
def test_enumerate_is_below_every_other_backend(family, kind):
    heuristics = [name for name, info in solvers.backends().items()
                  if info.is_available() and not info.exact and kind in info.objectives]
    assert {"magnitude", "obs"} <= set(heuristics)
    for seed in range(3):
        prob = random_problem(10, 5, 6, family=family, seed=seed, objective=kind)
        exact = solve(prob, "enumerate").objective
        for name in heuristics:
            sol = solve(prob, name, seed=seed)
            assert sol.objective >= exact - 1e-9 * max(1.0, abs(exact)), name


def test_solution_contract():
    prob = random_problem(9, 4, 5, seed=1)
    for name in ("magnitude", "obs", "enumerate"):
        sol = solve(prob, name)
        assert sol.pruned.dtype.kind == "i" and np.all(np.diff(sol.pruned) > 0) and sol.pruned.size == 5
        assert np.array_equal(sol.mask, ~np.isin(np.arange(9), sol.pruned))
        assert np.all(sol.weights[sol.pruned] == 0)
        assert np.allclose(sol.weights, prob.update(sol.pruned))
        assert sol.objective == prob.objective(sol.pruned)
        assert sol.seconds >= 0 and sol.solver == name
        assert name in repr(sol) and "objective" in sol.summary()


def test_magnitude_picks_smallest_and_breaks_ties_by_index():
    w = np.array([3.0, -1.0, 2.0, 1.0, -0.5, 1.0])
    prob = Problem(w, np.ones((2, 6)), 1e-3, 3)
    assert solve(prob, "magnitude").pruned.tolist() == [1, 3, 4]


def test_obs_scores_are_single_weight_update_costs():
    for gradient in (False, True):
        prob = random_problem(8, 5, 1, gradient=gradient, damping=1e-2, seed=5)
        scores = obs_scores(prob)
        singles = np.array([prob.update_cost([i]) - prob.update_constant for i in range(8)])
        assert np.allclose(scores, singles, rtol=1e-7)
        # with m = 1 OBS is exact for the update objective
        assert solve(prob, "obs").objective == pytest.approx(solve(prob, "enumerate").objective)


def test_obs_needs_invertible_fisher():
    prob = random_problem(8, 3, 2, damping=0.0)
    with pytest.raises(ValueError, match="damping > 0"):
        solve(prob, "obs")


def test_enumerate_refuses_large_and_honours_time_limit():
    prob = random_problem(40, 5, 20)
    with pytest.raises(solvers.SolverError, match="refuses C\\(40, 20\\)"):
        solve(prob, "enumerate")
    prob = random_problem(22, 5, 11)
    sol = solve(prob, "enumerate", time_limit=0.05)
    assert sol.status == "time_limit" and sol.bound is None
    assert sol.info["subsets_evaluated"] < sol.info["subsets_total"]
    assert sol.objective == prob.objective(sol.pruned)


def test_caller_problem_untouched_by_solvers():
    prob = random_problem(8, 4, 4, seed=2)
    w0 = prob.weights.copy()
    for name in ("magnitude", "obs", "enumerate"):
        solve(prob, name)
    assert np.array_equal(prob.weights, w0) and prob.n_prune == 4


# -- issue 15 item 7: enumerate refuses huge blocks by itself, never through Python's digit limit ----------
@pytest.mark.parametrize("p", [2_500, 30_000])
def test_enumerate_refusal_never_formats_a_huge_count(p):
    import sys
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)   # C(2500, 1250) has ~750 digits, C(30000, 15000) ~9000
    try:
        prob = Problem(np.linspace(1.0, 2.0, p), np.ones((1, p)), 1.0, p // 2)
        with pytest.raises(solvers.SolverError, match=f"refuses C\\({p}, {p // 2}\\) = about 10\\^\\d+ subsets"):
            solve(prob, "enumerate")
        nm = Problem(np.linspace(1.0, 2.0, p - p % 4), np.ones((1, p - p % 4)), 1.0, pattern="2:4")
        with pytest.raises(solvers.SolverError, match=f"about 10\\^\\d+ pruned sets .* over {p // 4} groups"):
            solve(nm, "enumerate")
    finally:
        sys.set_int_max_str_digits(old)


def test_enumerate_partition_counts_and_small_limits():
    prob = Problem(np.arange(1.0, 9.0), np.ones((2, 8)), 1e-2, pattern="2:4")
    sol = solve(prob, "enumerate")
    assert sol.info["subsets_total"] == 36 and sol.info["subsets_evaluated"] == 36
    with pytest.raises(solvers.SolverError, match="36 pruned sets"):
        solve(prob, "enumerate", max_subsets=35)
    with pytest.raises(ValueError, match="max_subsets must be a positive integer"):
        solve(prob, "enumerate", max_subsets=0)


def test_magnitude_and_obs_are_per_group():
    w = np.array([0.1, 5.0, 0.2, 6.0, 7.0, 0.3, 8.0, 0.05])
    prob = Problem(w, np.eye(8)[:3], 1.0, pattern="2:4")
    assert solve(prob, "magnitude").pruned.tolist() == [0, 2, 5, 7]
    # a total budget of 4 would prune the 4 smallest anywhere: the same here by construction, so skew it
    w2 = np.array([0.1, 0.2, 0.3, 0.4, 7.0, 8.0, 9.0, 6.0])
    prob2 = Problem(w2, np.eye(8)[:3], 1.0, pattern="2:4")
    assert solve(prob2, "magnitude").pruned.tolist() == [0, 1, 4, 7]
    assert solve(prob2.with_budget(prob2.budget.__class__.total(8, 4)), "magnitude").pruned.tolist() == [0, 1, 2, 3]
    # OBS with F = I: scores w²/2, the same order per group
    assert solve(prob2, "obs").pruned.tolist() == [0, 1, 4, 7]
