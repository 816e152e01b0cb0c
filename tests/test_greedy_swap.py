"""greedy_swap (the paper's Algorithm 1) and its torch curvature operator.

Cross-checks: the swap-delta formula against objectives recomputed from scratch, every accepted swap
and batch replayed against `Problem.selection_cost`, `enumerate` as the oracle, a brute-force check
that a converged `no_swap` search is a 1-swap local optimum, float32 vs float64, operator vs numpy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import solvers
from cbs_opt import Problem
from cbs_opt.instances import random_problem
from solvers.greedy_swap import (batch_delta, greedy_swap_search, initial_pruned, rmp_candidates,
                                 swap_delta)
from solvers.kernels.torch_lowrank import TorchCurvature, resolve_device, resolve_dtype


def close(a, b, rel=1e-9, abs_=1e-12):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


def brute_selection(problem, pruned):
    """½ sᵀFs − ḡᵀs from a dense F written out here (independent of the package's operators)."""
    F = problem.curvature.dense()
    s = np.zeros(problem.p)
    s[list(pruned)] = problem.weights[list(pruned)]
    value = 0.5 * s @ F @ s
    if problem.gradient is not None:
        value -= problem.gradient @ s
    return float(value)


# -------------------------------------------------------------------------------------------------
# the formulas
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["lowrank", "cancelling", "duplicates", "identity"])
@pytest.mark.parametrize("gradient", [False, True])
@pytest.mark.parametrize("dense", [False, True])
def test_swap_delta_equals_recomputed_change(family, gradient, dense):
    prob = random_problem(15, 6, sparsity=0.6, seed=3, family=family, gradient=gradient, dense=dense,
                          objective="selection")
    rng = np.random.default_rng(0)
    for _ in range(10):
        pruned = np.sort(rng.choice(prob.p, prob.n_prune, replace=False))
        kept = np.setdiff1d(np.arange(prob.p), pruned)
        i, j = int(rng.choice(pruned)), int(rng.choice(kept))
        after = np.sort(np.append(pruned[pruned != i], j))
        recomputed = brute_selection(prob, after) - brute_selection(prob, pruned)
        assert close(swap_delta(prob, pruned, i, j), recomputed, 1e-9, 1e-12)
        # a batch of several swaps: exact from the small block
        out = rng.choice(pruned, 3, replace=False)
        into = rng.choice(kept, 3, replace=False)
        after = np.sort(np.concatenate([np.setdiff1d(pruned, out), into]))
        recomputed = brute_selection(prob, after) - brute_selection(prob, pruned)
        assert close(batch_delta(prob, pruned, out, into), recomputed, 1e-9, 1e-12)


def _replay(prob, start, records, rel=1e-9):
    """Apply the traced swaps one by one, checking each predicted Δ and each batch against recomputation.

    ``rel`` is relative to the objective's scale (float32 storage rounds F itself at ~1e-7).
    """
    P = set(int(i) for i in start)
    scale = abs(prob.selection_cost(sorted(P))) + 1e-12

    def close(a, b, *_):
        return abs(a - b) <= rel * (scale + abs(a))

    for rec in records:
        before = prob.selection_cost(sorted(P))
        assert close(rec["objective_before"], before, 1e-7, 1e-10)
        # the batch: exact from the block == sum of sequential Δ's == recomputed change
        assert close(rec["batch_delta"], batch_delta(prob, sorted(P), rec["out"], rec["into"]), 1e-7, 1e-10)
        assert close(rec["batch_delta"], rec["predicted"], 1e-7, 1e-10)
        assert rec["batch_delta"] < 0
        for i, j, predicted in zip(rec["out"], rec["into"], rec["deltas"]):
            assert i in P and j not in P
            assert close(predicted, swap_delta(prob, sorted(P), int(i), int(j)), 1e-7, 1e-10)
            P.remove(int(i))
            P.add(int(j))
            after = prob.selection_cost(sorted(P))
            assert close(after - before, predicted, 1e-7, 1e-10)
            assert predicted < 0
            before = after
        assert close(rec["objective_after"], before, 1e-7, 1e-10)
    return np.array(sorted(P))


@pytest.mark.parametrize("family,gradient,dense,dtype", [
    ("lowrank", False, False, "float64"),
    ("lowrank", True, False, "float64"),
    ("cancelling", True, True, "float64"),
    ("duplicates", False, False, "float32"),
    ("lowrank", True, False, "float32"),
])
def test_every_accepted_swap_and_batch_matches_recomputed_objective(family, gradient, dense, dtype):
    prob = random_problem(240, 30, sparsity=0.85, seed=11, family=family, gradient=gradient, dense=dense)
    records = []
    sol = solvers.solve(prob, "greedy_swap", dtype=dtype, rho=15, tau=6, block_size=8,
                        trace=records.append)
    assert sol.info["swaps"] > 0 and len(records) == sol.info["batches"]
    assert any(len(r["out"]) > 1 for r in records)          # real batches, not only single swaps
    start = initial_pruned(prob, "magnitude")[0]
    final = _replay(prob, start, records, rel=1e-6 if dtype == "float32" else 1e-10)
    np.testing.assert_array_equal(final, sol.pruned)
    assert close(sol.info["selection_objective"], prob.selection_cost(sol.pruned), 1e-7, 1e-10)
    assert sol.info["refused_batches"] == 0


# -------------------------------------------------------------------------------------------------
# quality
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["magnitude", "rmp", "obs", "given"])
def test_never_worse_than_its_initialisation(init):
    for seed in range(4):
        prob = random_problem(120, 30, sparsity=0.8, seed=seed, family="cancelling", gradient=seed % 2 == 1)
        if init == "given":
            start = np.sort(np.random.default_rng(seed).choice(prob.p, prob.n_prune, replace=False))
            arg = start
        else:
            start, _ = initial_pruned(prob, init, seed=seed)
            arg = init
        sol = solvers.solve(prob, "greedy_swap", init=arg, seed=seed, rho=10, tau=3)
        assert sol.objective <= prob.selection_cost(start) + 1e-12
        assert close(sol.info["initial_selection_objective"], prob.selection_cost(start), 1e-6, 1e-10)
        assert sol.info["selection_objective"] <= sol.info["initial_selection_objective"]
        objs = [h["objective"] for h in sol.info["history"]]
        assert all(b <= a + 1e-12 for a, b in zip(objs, objs[1:]))     # monotone per pass


def test_enumerate_is_a_lower_bound_and_mostly_reached():
    hits, total = 0, 0
    for sparsity in (0.5, 0.75):
        for seed in range(10):
            prob = random_problem(12, 6, sparsity=sparsity, seed=seed, objective="selection",
                                  gradient=seed % 3 == 0)
            greedy = solvers.solve(prob, "greedy_swap", dtype="float64")
            exact = solvers.solve(prob, "enumerate")
            assert exact.objective <= greedy.objective + 1e-10 * abs(exact.objective) + 1e-12
            hits += greedy.objective <= exact.objective + 1e-9 * abs(exact.objective) + 1e-12
            total += 1
    assert hits >= 0.6 * total, f"greedy_swap reached the optimum on only {hits}/{total}"


def test_update_objective_selects_on_selection_and_reports_update_cost():
    prob = random_problem(12, 6, sparsity=0.5, seed=4, objective="update", gradient=True)
    sol = solvers.solve(prob, "greedy_swap", dtype="float64")
    assert close(sol.objective, prob.update_cost(sol.pruned))
    assert close(sol.info["selection_objective"], prob.selection_cost(sol.pruned), 1e-9, 1e-12)
    assert "reported_objective" not in sol.info     # no claim about the update cost is made
    # the same selection as on the selection-objective twin
    twin = solvers.solve(prob.with_objective("selection"), "greedy_swap", dtype="float64")
    np.testing.assert_array_equal(twin.pruned, sol.pruned)
    assert solvers.solve(prob, "enumerate").objective <= sol.objective + 1e-12


def test_no_swap_rule_converges_to_a_one_swap_local_optimum():
    """With ρ and τ covering everything, a converged pass has tried every pair: brute-force check."""
    for seed in range(3):
        prob = random_problem(40, 10, sparsity=0.7, seed=seed, family="cancelling", gradient=seed == 1,
                              objective="selection")
        sol = solvers.solve(prob, "greedy_swap", dtype="float64", stop_rule="no_swap", rho=100, tau=100,
                            epsilon=1e-9)
        assert sol.info["stopped"] == "converged"
        P = sol.pruned
        K = np.setdiff1d(np.arange(prob.p), P)
        base = brute_selection(prob, P)
        best = min(brute_selection(prob, np.append(P[P != i], j)) - base for i in P for j in K)
        assert best > -1e-9 - 1e-12 * abs(base)


def test_float32_and_float64_agree():
    for family in ("lowrank", "cancelling", "duplicates"):
        for seed in range(2):
            prob = random_problem(300, 40, sparsity=0.8, seed=seed, family=family, gradient=seed == 1)
            a = solvers.solve(prob, "greedy_swap", dtype="float32", rho=20, tau=5, block_size=16)
            b = solvers.solve(prob, "greedy_swap", dtype="float64", rho=20, tau=5, block_size=16)
            if not np.array_equal(a.pruned, b.pruned):     # only a floating-point tie may split them
                assert close(a.objective, b.objective, 1e-6, 1e-9)
            assert a.info["swaps"] > 0


# -------------------------------------------------------------------------------------------------
# control: passes, time limit, progress, determinism, trivial budgets
# -------------------------------------------------------------------------------------------------
def test_status_and_limits(capsys):
    prob = random_problem(200, 30, sparsity=0.9, seed=1)
    full = solvers.solve(prob, "greedy_swap")
    assert full.status == "feasible" and full.info["stopped"] == "converged"
    one = solvers.solve(prob, "greedy_swap", max_passes=1)
    assert one.info["passes"] == 1
    assert one.status == ("feasible" if one.info["stopped"] == "converged" else "iteration_limit")
    zero = solvers.solve(prob, "greedy_swap", max_passes=0)
    np.testing.assert_array_equal(zero.pruned, solvers.solve(prob, "magnitude").pruned)
    assert zero.status == "feasible"
    timed = solvers.solve(prob, "greedy_swap", time_limit=1e-9)
    assert timed.status == "time_limit" and timed.pruned.size == prob.n_prune
    assert timed.objective <= solvers.solve(prob, "magnitude").objective + 1e-12
    solvers.solve(prob, "greedy_swap", progress=True, max_passes=2)
    assert "greedy_swap" in capsys.readouterr().err


def test_deterministic_in_seed_and_rmp():
    prob = random_problem(400, 20, sparsity=0.9, seed=2, family="cancelling")
    a = solvers.solve(prob, "greedy_swap", init="rmp", seed=5)
    b = solvers.solve(prob, "greedy_swap", init="rmp", seed=5)
    np.testing.assert_array_equal(a.pruned, b.pruned)
    assert a.info["selection_objective"] == b.info["selection_objective"]
    assert a.info["init"] == b.info["init"]
    draws = rmp_candidates(prob.weights, prob.n_prune, 3, seed=0)
    assert all(d.size == prob.n_prune and np.unique(d).size == d.size for d in draws)
    assert not np.array_equal(draws[0], draws[1])
    again = rmp_candidates(prob.weights, prob.n_prune, 3, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(draws, again))
    # rmp picks the best of magnitude and the draws on the selection objective
    start, label = initial_pruned(prob, "rmp", seed=0, rmp_trials=3)
    assert prob.selection_cost(start) <= min(prob.selection_cost(d) for d in draws) + 1e-12
    assert prob.selection_cost(start) <= prob.selection_cost(initial_pruned(prob, "magnitude")[0]) + 1e-12


@pytest.mark.parametrize("m", [0, 1, 11, 12])
def test_trivial_budgets(m):
    prob = random_problem(12, 6, n_prune=m, seed=0, gradient=True)
    sol = solvers.solve(prob, "greedy_swap")
    assert sol.pruned.size == m
    if m in (0, 12):
        assert sol.info["swaps"] == 0
    assert solvers.solve(prob, "enumerate").objective <= sol.objective + 1e-12


def test_identity_family_is_magnitude_optimal():
    # F = λI: the selection objective is ½λ‖w_P‖², so magnitude pruning is optimal and no swap improves it
    prob = random_problem(50, 10, sparsity=0.6, seed=0, family="identity")
    sol = solvers.solve(prob, "greedy_swap", epsilon=0.0)
    np.testing.assert_array_equal(sol.pruned, solvers.solve(prob, "magnitude").pruned)
    assert sol.info["swaps"] == 0


# -------------------------------------------------------------------------------------------------
# property-based
# -------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=st.integers(1, 25), data=st.data(), n=st.integers(1, 8),
       family=st.sampled_from(["lowrank", "cancelling", "identity", "duplicates"]),
       gradient=st.booleans(), dense=st.booleans(), dtype=st.sampled_from(["float32", "float64"]),
       objective=st.sampled_from(["update", "selection"]), seed=st.integers(0, 10 ** 6))
def test_properties(p, data, n, family, gradient, dense, dtype, objective, seed):
    m = data.draw(st.integers(0, p))
    prob = random_problem(p, n, n_prune=m, seed=seed, family=family, gradient=gradient, dense=dense,
                          objective=objective)
    init = data.draw(st.sampled_from(["magnitude", "rmp", "obs"]))
    sol = solvers.solve(prob, "greedy_swap", init=init, dtype=dtype, seed=seed, rho=data.draw(st.integers(1, 30)),
                        tau=data.draw(st.integers(0, 5)), block_size=data.draw(st.integers(1, 9)))
    assert sol.pruned.dtype.kind == "i" and sol.pruned.size == m
    assert np.all(np.diff(sol.pruned) > 0) and (m == 0 or (sol.pruned[0] >= 0 and sol.pruned[-1] < p))
    assert sol.mask.sum() == p - m
    sel = prob.selection_cost(sol.pruned)
    scale = 1e-6 if dtype == "float32" else 1e-9
    assert sel <= sol.info["initial_selection_objective"] + scale * (1 + abs(sel))
    assert close(sol.info["selection_objective"], sel, scale, scale)
    assert sol.status in ("feasible", "iteration_limit")


@settings(max_examples=15, deadline=None)
@given(p=st.integers(2, 30), seed=st.integers(0, 10 ** 6), gradient=st.booleans())
def test_property_deterministic(p, seed, gradient):
    prob = random_problem(p, 5, sparsity=0.5, seed=seed, gradient=gradient, family="cancelling")
    a = solvers.solve(prob, "greedy_swap", init="rmp", seed=seed, rho=3, tau=2, block_size=2)
    b = solvers.solve(prob, "greedy_swap", init="rmp", seed=seed, rho=3, tau=2, block_size=2)
    np.testing.assert_array_equal(a.pruned, b.pruned)


# -------------------------------------------------------------------------------------------------
# bad options
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,error,word", [
    ({"rho": 0}, ValueError, "rho"),
    ({"rho": 1.5}, TypeError, "rho"),
    ({"tau": -1}, ValueError, "tau"),
    ({"epsilon": -1.0}, ValueError, "epsilon"),
    ({"epsilon": float("nan")}, ValueError, "epsilon"),
    ({"max_passes": -1}, ValueError, "max_passes"),
    ({"block_size": 0}, ValueError, "block_size"),
    ({"rmp_trials": 0}, ValueError, "rmp_trials"),
    ({"threads": 0}, ValueError, "threads"),
    ({"init": "random"}, ValueError, "init"),
    ({"init": np.arange(3)}, ValueError, "init"),
    ({"init": np.array([0, 0, 1, 2, 3, 4])}, ValueError, "init"),
    ({"init": np.array([0, 1, 2, 3, 4, 99])}, ValueError, "init"),
    ({"stop_rule": "never"}, ValueError, "stop_rule"),
    ({"device": "tpu"}, ValueError, "device"),
    ({"device": 3}, TypeError, "device"),
    ({"dtype": "float16"}, ValueError, "dtype"),
    ({"trace": 3}, TypeError, "trace"),
    ({"nonsense": 1}, TypeError, "nonsense"),
])
def test_bad_options_name_the_option(options, error, word):
    prob = random_problem(12, 6, sparsity=0.5, seed=0)
    with pytest.raises(error, match=word):
        solvers.solve(prob, "greedy_swap", **options)


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal path is for machines without it")
    prob = random_problem(12, 6, sparsity=0.5, seed=0)
    with pytest.raises(ValueError, match="CUDA is not available"):
        solvers.solve(prob, "greedy_swap", device="cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU paths are tested above)")
def test_cuda_matches_cpu():
    for seed in range(3):
        prob = random_problem(500, 60, sparsity=0.9, seed=seed, family="cancelling", gradient=seed == 1)
        cpu = solvers.solve(prob, "greedy_swap", dtype="float64", rho=20, tau=5)
        gpu = solvers.solve(prob, "greedy_swap", dtype="float64", rho=20, tau=5, device="cuda")
        if not np.array_equal(cpu.pruned, gpu.pruned):
            assert close(cpu.objective, gpu.objective, 1e-9, 1e-12)


def test_threads_setting_is_restored():
    before = torch.get_num_threads()
    solvers.solve(random_problem(30, 6, sparsity=0.5, seed=0), "greedy_swap", threads=1)
    assert torch.get_num_threads() == before


# -------------------------------------------------------------------------------------------------
# the torch operator
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_operator_matches_numpy(dense, dtype):
    prob = random_problem(70, 9, sparsity=0.5, seed=5, dense=dense, damping=0.01)
    F = prob.curvature.dense()
    op = TorchCurvature.from_problem(prob, "cpu", dtype, cache=False, chunk_rows=16)
    tol = 1e-5 if dtype == "float32" else 1e-11
    scale = np.abs(F).max()
    rng = np.random.default_rng(0)
    v = rng.normal(size=70)
    V = rng.normal(size=(70, 3))
    np.testing.assert_allclose(op.matvec(v).numpy(), F @ v, atol=tol * scale * 70)
    np.testing.assert_allclose(op.matvec(V, precise=False).numpy(), F @ V, atol=tol * scale * 70)
    np.testing.assert_allclose(op.diagonal().numpy(), np.diag(F), rtol=1e-12)
    rows, cols = np.array([3, 5, 7, 60]), np.array([5, 1, 69])
    np.testing.assert_allclose(op.block(rows, cols).numpy(), F[np.ix_(rows, cols)], atol=tol * scale)
    np.testing.assert_allclose(op.column(5).numpy(), F[:, 5], atol=tol * scale * 70)
    np.testing.assert_allclose(op.column(5, rows).numpy(), F[rows, 5], atol=tol * scale * 70)
    assert math.isclose(op.quad(v), v @ F @ v, rel_tol=tol * 10)
    tracker = op.tracker(v)
    np.testing.assert_allclose(tracker.values(rows).numpy(), (F @ v)[rows], atol=tol * scale * 70)
    idx, delta = np.array([0, 9, 33]), np.array([1.5, -2.0, 0.25])
    tracker.add(idx, delta)
    v2 = v.copy()
    v2[idx] += delta
    np.testing.assert_allclose(tracker.full(precise=True).numpy(), F @ v2, atol=tol * scale * 70)
    assert math.isclose(tracker.quad(), v2 @ F @ v2, rel_tol=tol * 10)
    assert np.array_equal(v, v)          # the caller's vectors are not modified
    assert op.device.type == "cpu" and op.dtype == resolve_dtype(dtype)


def test_operator_cache_is_shared_by_variants():
    """One torch view per (curvature, device, dtype, layout): variants of a problem, other problems sharing
    its curvature by reference (rows of a layer), and the update-objective search's form all reuse it."""
    import torch
    from cbs_opt import Problem
    from solvers.kernels.update_moves import LowRankForm

    prob = random_problem(40, 5, sparsity=0.5, seed=0)
    a = TorchCurvature.from_problem(prob, "cpu", "float32")
    assert TorchCurvature.from_problem(prob.with_objective("selection"), "cpu", "float32").At is a.At
    other = Problem(weights=np.ones(40), curvature=prob.curvature, n_prune=3)
    assert TorchCurvature.from_problem(other, "cpu", "float32").At is a.At
    b = TorchCurvature.from_problem(prob, "cpu", "float64")
    assert b.At is not a.At and b.At.dtype == torch.float64
    assert TorchCurvature.from_problem(prob, "cpu", "float32", cache=False).At is not a.At
    assert prob.curvature.torch_view("cpu", torch.float32, transposed=True) is a.At
    form = LowRankForm.from_problem(prob, "cpu", torch.float64)
    assert form.A.data_ptr() == prob.curvature.torch_view("cpu", torch.float64).data_ptr()
    assert form.A.data_ptr() == prob.curvature.A.__array_interface__["data"][0]  # float64 CPU: no copy


def test_problem_arrays_not_mutated():
    prob = random_problem(60, 8, sparsity=0.7, seed=0, gradient=True)
    w, g = prob.weights.copy(), prob.gradient.copy()
    init = np.sort(np.random.default_rng(0).choice(60, prob.n_prune, replace=False))
    init_copy = init.copy()
    solvers.solve(prob, "greedy_swap", init=init)
    np.testing.assert_array_equal(prob.weights, w)
    np.testing.assert_array_equal(prob.gradient, g)
    np.testing.assert_array_equal(init, init_copy)
    assert isinstance(prob, Problem)


def test_search_function_directly():
    prob = random_problem(80, 10, sparsity=0.8, seed=0)
    op = TorchCurvature.from_problem(prob, "cpu", "float64")
    start = initial_pruned(prob, "magnitude")[0]
    res = greedy_swap_search(op, prob.weights, start, rho=5, tau=2)
    assert res.pruned.size == prob.n_prune
    assert close(res.objective, prob.selection_cost(res.pruned), 1e-9, 1e-12)
    assert close(res.initial_objective, prob.selection_cost(start), 1e-9, 1e-12)


def test_rmp_under_a_partition_budget_is_feasible_and_seeded():
    from cbs_opt import Problem
    from solvers.greedy_swap import rmp_group_candidates
    rng = np.random.default_rng(0)
    prob = Problem(weights=rng.normal(size=24), grads=rng.normal(size=(6, 24)), damping=1e-3, pattern="1:4",
                   objective="selection")
    draws = rmp_group_candidates(prob.weights, prob.budget, 5, seed=3)
    assert all(prob.budget.is_satisfied(d) for d in draws)
    again = rmp_group_candidates(prob.weights, prob.budget, 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    assert len({tuple(d) for d in draws}) > 1           # the perturbation does change the draws
    sol = solvers.solve(prob, "greedy_swap", init="rmp", rmp_trials=5, seed=3)
    assert prob.budget.is_satisfied(sol.pruned)
    assert sol.info["initial_selection_objective"] <= solvers.solve(prob, "magnitude").objective * (1 + 1e-6)
