"""The update-objective searches (iht, update_swap) and their incremental move math.

Every delta the search believes in is replayed against ``Problem.update_cost`` recomputed from scratch;
the searches are checked against the enumeration oracle and against their own initialisation.
"""
import itertools

import numpy as np
import pytest
import torch

import brute
import solvers
from cbs_opt import Problem, solve
from cbs_opt.instances import FAMILIES, random_problem
from solvers.magnitude import smallest
from solvers.obs import obs_scores
from solvers.swap_search import SearchStats, hard_threshold_search, swap_descent
from solvers.kernels.update_moves import KeptState, LowRankForm, fit

CASES = [  # (family, p, N, m, dense, gradient)
    ("lowrank", 24, 10, 14, False, False),     # N < p
    ("lowrank", 16, 30, 6, False, True),       # N > p, first-order term
    ("cancelling", 30, 12, 20, False, False),
    ("duplicates", 20, 8, 10, False, False),
    ("identity", 14, 5, 7, False, False),       # F = λI
    ("lowrank", 18, 9, 9, True, False),         # dense hessian (converted to a square-root form)
]


def _kept(p, pruned):
    kept = torch.ones(p, dtype=torch.bool)
    kept[torch.as_tensor(np.asarray(pruned), dtype=torch.long)] = False
    return kept


def _random_pruned(prob, seed):
    return np.sort(np.random.default_rng(seed).choice(prob.p, prob.n_prune, replace=False))


@pytest.mark.parametrize("family,p,N,m,dense,gradient", CASES)
def test_fit_is_cbs_u(family, p, N, m, dense, gradient):
    prob = random_problem(p, N, m, family=family, dense=dense, gradient=gradient, seed=1)
    form = LowRankForm.from_problem(prob)
    F = brute.dense_f(prob.weights, prob.grads, prob.damping, prob.hessian)
    for seed in range(3):
        pruned = _random_pruned(prob, seed)
        f = fit(form, _kept(p, pruned))
        assert f.cost + form.constant == pytest.approx(brute.update_cost(F, prob.weights, pruned, prob.gradient),
                                                       rel=1e-8, abs=1e-10)
        # x is the CBS-U point of the Newton-shifted weights, r = F(w̃ − x) vanishes on the kept set
        np.testing.assert_allclose(f.x.numpy(), prob.update(pruned), rtol=1e-7, atol=1e-8)
        r = F @ (prob.effective_weights - f.x.numpy())
        np.testing.assert_allclose(f.r.numpy(), np.where(f.kept.numpy(), 0.0, r), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("family,p,N,m,dense,gradient", CASES)
def test_every_swap_delta_is_exact(family, p, N, m, dense, gradient):
    """All p·m single-swap deltas equal the recomputed change of the update objective; so does apply."""
    prob = random_problem(p, N, m, family=family, dense=dense, gradient=gradient, seed=2)
    state = KeptState(LowRankForm.from_problem(prob), _kept(p, _random_pruned(prob, 0)))
    for _ in range(3):
        pruned = state.pruned_indices()
        kept = np.setdiff1d(np.arange(p), pruned)
        base = prob.update_cost(pruned)
        deltas = state.swap_deltas(torch.as_tensor(pruned), torch.as_tensor(kept)).numpy()
        for (a, i), (b, j) in itertools.product(enumerate(pruned), enumerate(kept)):
            moved = np.append(np.setdiff1d(pruned, [i]), j)
            assert deltas[a, b] == pytest.approx(prob.update_cost(moved) - base, rel=1e-6,
                                                 abs=1e-9 * max(1.0, abs(base)))
        a, b = np.unravel_index(np.argmin(deltas), deltas.shape)
        applied = state.swap(int(pruned[a]), int(kept[b]))
        assert applied == pytest.approx(deltas[a, b], rel=1e-8, abs=1e-12)
        assert state.cost + state.form.constant == pytest.approx(prob.update_cost(state.pruned_indices()),
                                                                 rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("family,p,N,m,dense,gradient", CASES)
def test_batched_rounds_replay_exactly(family, p, N, m, dense, gradient):
    """Every swap accepted inside a batched round lowers the recomputed objective by its predicted delta,
    and the state after the round's single flush equals a fresh rebuild."""
    prob = random_problem(p, N, m, family=family, dense=dense, gradient=gradient, seed=3)
    form = LowRankForm.from_problem(prob)
    pruned = set(_random_pruned(prob, 1).tolist())
    state = KeptState(form, _kept(p, sorted(pruned)))
    scale = max(1.0, state.cost)  # rounding drift is relative to the size of the moves made
    checked = []

    def on_swap(i, j, delta):
        before = prob.update_cost(sorted(pruned))
        pruned.discard(i)
        pruned.add(j)
        after = prob.update_cost(sorted(pruned))
        assert delta < 0
        assert delta == pytest.approx(after - before, rel=1e-6, abs=1e-9 * max(1.0, abs(before)))
        checked.append(delta)

    swap_descent(state, rho=5, inner=4, epsilon=1e-12, on_swap=on_swap, refresh=10 ** 9)
    assert sorted(pruned) == state.pruned_indices().tolist()
    fresh = KeptState(form, state.kept)
    assert state.cost == pytest.approx(fresh.cost, rel=1e-8, abs=1e-10 * scale)
    for name in ("x", "r", "q", "Sinv"):
        got, want = getattr(state, name), getattr(fresh, name)
        assert float((got - want).abs().max()) <= 1e-7 * max(1.0, float(want.abs().max())), name
    if family != "identity":  # F = λI starts... and may stay optimal; elsewhere the search must move
        assert checked


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gradient", [False, True])
def test_backends_beat_their_start_and_respect_enumerate(family, gradient):
    for seed in range(2):
        prob = random_problem(11, 6, 6, family=family, gradient=gradient, seed=seed)
        exact = solve(prob, "enumerate").objective
        tol = 1e-9 * max(1.0, abs(exact))
        for init in ("magnitude", "obs", _random_pruned(prob, seed)):
            named = {"magnitude": np.abs(prob.weights), "obs": obs_scores(prob)}
            start = prob.update_cost(smallest(named[init], prob.n_prune) if isinstance(init, str) else init)
            for name, extra in (("iht", {}), ("update_swap", {}), ("update_swap", {"iht_iter": 20})):
                sol = solve(prob, name, seed=seed, init=init, **extra)
                assert exact - tol <= sol.objective <= start + tol, (name, init)
                assert sol.info["reported_objective"] == pytest.approx(sol.objective, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("family", ["lowrank", "cancelling", "duplicates"])
def test_exact_when_every_set_is_one_swap_away(family):
    """With m = 1 or m = p − 1 every feasible set is one swap from every other: a swap-local optimum over
    all pairs (rho ≥ p) is the global optimum."""
    for seed in range(3):
        base = random_problem(9, 4, 1, family=family, seed=seed, gradient=seed == 2)
        for m in (1, 8):
            prob = base.with_n_prune(m)
            exact = solve(prob, "enumerate").objective
            sol = solve(prob, "update_swap", init="magnitude", rho=16)
            assert sol.objective == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_kicks_reach_the_optimum_on_tiny_blocks():
    """Iterated local search finds the enumerate optimum on small generated blocks (measured: all of these)."""
    misses = 0
    for family, seed in itertools.product(("lowrank", "cancelling", "duplicates"), range(3)):
        prob = random_problem(12, 6, 7, family=family, seed=40 + seed)
        exact = solve(prob, "enumerate").objective
        sol = solve(prob, "update_swap", seed=seed, kicks=10, rho=16)
        misses += sol.objective > exact + 1e-9 * max(1.0, abs(exact))
    assert misses <= 1


@pytest.mark.skipif("greedy_swap" not in solvers.available(), reason="greedy_swap backend not present")
def test_update_swap_closer_to_optimum_than_greedy_swap_on_cancelling_pairs():
    """The quality claim of issue 6 on held-out small blocks (within 1% of enumerate)."""
    hits = {"greedy_swap": 0, "update_swap": 0}
    for seed in range(8):
        prob = random_problem(14, 7, 9, family="cancelling", seed=500 + seed)
        exact = solve(prob, "enumerate").objective
        for name, opts in (("greedy_swap", {}), ("update_swap", {"kicks": 5})):
            hits[name] += solve(prob, name, seed=seed, **opts).objective <= exact + 0.01 * abs(exact) + 1e-12
    assert hits["update_swap"] > hits["greedy_swap"]
    assert hits["update_swap"] >= 7


def test_iht_trace_is_monotone_and_both_scalings_work():
    prob = random_problem(80, 30, 60, family="lowrank", seed=4)
    form = LowRankForm.from_problem(prob)
    kept = _kept(prob.p, smallest(np.abs(prob.weights), prob.n_prune))
    for scaling in ("none", "diagonal"):
        stats = SearchStats()
        result = hard_threshold_search(form, kept, scaling=scaling, stats=stats)
        assert all(b < a for a, b in zip(stats.trace, stats.trace[1:]))
        assert result.cost == pytest.approx(prob.update_cost(np.flatnonzero(~result.kept.numpy())), rel=1e-8)
        assert stats.iterations >= 1


def test_default_start_is_greedy_swap_when_available():
    prob = random_problem(40, 15, 25, family="cancelling", seed=16)
    sol = solve(prob, "update_swap")
    start = "greedy_swap" if "greedy_swap" in solvers.available() else "obs"
    begin = solve(prob, start).objective
    assert sol.info["start_objective"] == pytest.approx(begin, rel=1e-8)
    assert sol.objective <= begin + 1e-12


def test_float32_matches_float64():
    prob = random_problem(60, 25, 40, family="lowrank", seed=5)
    s64 = solve(prob, "update_swap", dtype="float64")
    s32 = solve(prob, "update_swap", dtype="float32")
    assert s32.objective == pytest.approx(s64.objective, rel=1e-4)
    assert s32.info["dtype"] == "float32"


def test_seeded_and_deterministic():
    prob = random_problem(40, 15, 25, family="cancelling", seed=6)
    a = solve(prob, "update_swap", seed=3, kicks=4)
    b = solve(prob, "update_swap", seed=3, kicks=4)
    np.testing.assert_array_equal(a.pruned, b.pruned)


def test_time_limit_returns_an_honest_incumbent():
    prob = random_problem(3000, 200, 2700, family="lowrank", seed=7)
    for name in ("iht", "update_swap"):
        sol = solve(prob, name, time_limit=1e-3, init="magnitude")
        assert sol.status == "time_limit"
        assert sol.pruned.size == prob.n_prune
        assert sol.objective <= prob.update_cost(smallest(np.abs(prob.weights), prob.n_prune)) * (1 + 1e-9)


def test_trivial_budgets_and_progress(capsys):
    prob = random_problem(10, 4, 5, seed=8)
    for m in (0, 10):
        sol = solve(prob.with_n_prune(m), "update_swap")
        assert sol.status == "optimal" and sol.pruned.size == m
    sol = solve(prob, "update_swap", progress=True, kicks=2)
    assert sol.pruned.size == 5


def test_caller_arrays_untouched():
    rng = np.random.default_rng(9)
    w, G = rng.normal(size=30), rng.normal(size=(12, 30))
    w0, G0 = w.copy(), G.copy()
    prob = Problem(weights=w, grads=G, damping=1e-2, n_prune=20)
    before = (prob.weights.copy(), prob.grads.copy())
    for name in ("iht", "update_swap"):
        solve(prob, name, kicks=2) if name == "update_swap" else solve(prob, name)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(G, G0)
    np.testing.assert_array_equal(prob.weights, before[0])
    np.testing.assert_array_equal(prob.grads, before[1])


@pytest.mark.parametrize("name", ["iht", "update_swap"])
@pytest.mark.parametrize("options,match", [
    ({"init": "bogus"}, "init"),
    ({"init": [0, 1]}, "init"),
    ({"init": [0, 0, 1, 2, 3]}, "init"),
    ({"init": [0.5, 1, 2, 3, 4]}, "init"),
    ({"device": "tpu"}, "device"),
    ({"dtype": "int8"}, "dtype"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"),
])
def test_bad_options_are_named(name, options, match):
    prob = random_problem(10, 4, 5, seed=10)
    with pytest.raises(ValueError, match=match):
        solve(prob, name, **options)


@pytest.mark.parametrize("options,match", [
    ({"rho": 0}, "rho"), ({"kicks": -1}, "kicks"), ({"kick_size": 0}, "kick_size"),
    ({"refresh": 0}, "refresh"), ({"max_swaps": -2}, "max_swaps"), ({"rho": 2.5}, "rho"),
    ({"iht_iter": True}, "iht_iter"),
])
def test_bad_update_swap_options(options, match):
    with pytest.raises(ValueError, match=match):
        solve(random_problem(10, 4, 5, seed=11), "update_swap", **options)


def test_bad_iht_options_and_unknown_option():
    prob = random_problem(10, 4, 5, seed=12)
    with pytest.raises(ValueError, match="scaling"):
        solve(prob, "iht", scaling="newton")
    with pytest.raises(ValueError, match="max_iter"):
        solve(prob, "iht", max_iter=-1)
    with pytest.raises(TypeError, match="rho"):
        solve(prob, "iht", rho=4)  # update_swap's option, not iht's
    with pytest.raises(ValueError, match="init"):
        solve(prob, "iht", init="auto")  # update_swap's start rule, not iht's


def test_cuda_refused_clearly_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path is exercised by the benchmark instead")
    with pytest.raises(ValueError, match="CUDA is not available"):
        solve(random_problem(10, 4, 5, seed=13), "update_swap", device="cuda")


def test_refuses_selection_objective_and_singular_curvature():
    prob = random_problem(10, 4, 5, seed=14, objective="selection")
    for name in ("iht", "update_swap"):
        with pytest.raises(ValueError, match="does not handle objective=.selection."):
            solve(prob, name)
    singular = random_problem(10, 4, 5, seed=14, damping=0.0)  # F = GᵀG/N, rank 4 < 10
    with pytest.raises(ValueError, match="positive definite"):
        solve(singular, "update_swap")
    big = random_problem(5000, 3, 10, seed=14, damping=0.0)
    with pytest.raises(ValueError, match="damping > 0"):
        solve(big, "iht")


def test_undamped_but_full_rank_is_accepted():
    prob = random_problem(8, 40, 4, seed=15, damping=0.0)  # N > p: F = GᵀG/N is positive definite
    exact = solve(prob, "enumerate").objective
    sol = solve(prob, "update_swap", kicks=5, rho=8)
    assert sol.objective >= exact - 1e-9 * max(1.0, abs(exact))
    assert sol.objective == pytest.approx(exact, rel=0.05)


def test_from_tensors_validates():
    A = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="damping"):
        LowRankForm.from_tensors(A, 0.0, torch.zeros(5))
    with pytest.raises(ValueError, match="w must have shape"):
        LowRankForm.from_tensors(A, 1e-3, torch.zeros(4))
    with pytest.raises(ValueError, match="A must be"):
        LowRankForm.from_tensors(np.ones((3, 5)), 1e-3, np.zeros(5))
    form = LowRankForm.from_tensors(A, 1e-2, torch.randn(5, dtype=torch.float64))
    f = fit(form, torch.tensor([True, False, True, False, True]))
    assert f.cost == pytest.approx(form.cost_of(f.x), rel=1e-10)


# -- partition budgets (issue 12) ------------------------------------------------------------------------
def test_group_pairs_stay_inside_groups_and_rank_by_profit():
    from solvers.swap_search import group_pairs
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    kept = torch.tensor([True, False, False, True, True, False, True, True])
    score_in = torch.tensor([0.0, 5.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0])
    score_out = torch.tensor([3.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.1, 0.2])
    into, out, profit = group_pairs(score_in, score_out, kept, groups)
    pairs = list(zip(into.tolist(), out.tolist()))
    # group 0: best entering 1 (5.0) with its only kept 0 (3.0); group 1: entering 5 (2.0) with cheapest 4 (0.5);
    # group 2 has nothing pruned
    assert pairs == [(1, 0), (5, 4)]
    assert profit.tolist() == pytest.approx([2.0, 1.5])


@pytest.mark.parametrize("seed", range(4))
def test_update_swap_grouped_moves_replay_exactly(seed):
    """Every swap under an N:M budget stays inside a group, and its delta is the true change of the cost."""
    rng = np.random.default_rng(seed)
    prob = Problem(weights=rng.normal(size=32), grads=rng.normal(size=(10, 32)), damping=1e-2, pattern="2:4")
    form = LowRankForm.from_problem(prob, "cpu", torch.float64)
    start = solvers.magnitude.smallest_for(np.abs(prob.weights), prob)
    kept = torch.ones(32, dtype=torch.bool)
    kept[torch.as_tensor(start)] = False
    state = KeptState(form, kept)
    groups = torch.as_tensor(prob.budget.groups.copy())
    current = set(start.tolist())
    events = []

    def on_swap(i, j, delta):
        events.append((i, j, delta))

    swap_descent(state, rho=8, epsilon=1e-12, groups=groups, on_swap=on_swap)
    assert events
    for i, j, delta in events:
        assert prob.budget.groups[i] == prob.budget.groups[j]
        before = prob.update_cost(np.array(sorted(current)))
        current = (current - {i}) | {j}
        after = prob.update_cost(np.array(sorted(current)))
        assert after - before == pytest.approx(delta, rel=1e-6, abs=1e-12) and after < before
    assert sorted(current) == state.pruned_indices().tolist()
    assert prob.budget.is_satisfied(state.pruned_indices())


def test_iht_grouped_projection_is_monotone_and_feasible():
    rng = np.random.default_rng(7)
    prob = Problem(weights=rng.normal(size=64), grads=rng.normal(size=(20, 64)), damping=1e-2,
                   groups=np.repeat(np.arange(4), 16), n_prune=[4, 8, 12, 0])
    start = prob.update_cost(solvers.magnitude.smallest_for(np.abs(prob.weights), prob))
    sol = solve(prob, "iht", init="magnitude")
    assert prob.budget.is_satisfied(sol.pruned) and sol.objective <= start
    assert sol.info["iterations"] >= 1
    kicked = solve(prob, "update_swap", init="magnitude", kicks=3, seed=1)
    assert prob.budget.is_satisfied(kicked.pruned) and kicked.objective <= start


def test_update_search_uses_a_p_by_p_factor_when_samples_outnumber_weights():
    """Issue 15 item 16: a 16-weight block with N = 1000 must not factor a 1000 × 1000 kernel per solve.
    The triangular factor R (RᵀR = AᵀA) defines the same F, so the objective of every set is unchanged."""
    import itertools

    import torch

    from cbs_opt.instances import random_problem
    from solvers.kernels.update_moves import LowRankForm

    prob = random_problem(10, 400, sparsity=0.5, seed=2)
    form = LowRankForm.from_problem(prob)
    assert tuple(form.A.shape) == (10, 10)
    F_small = form.A.T @ form.A + form.damping * torch.eye(10, dtype=form.A.dtype)
    assert np.allclose(F_small.numpy(), prob.curvature.dense(), rtol=1e-10, atol=1e-12)
    best = min(itertools.combinations(range(10), 5), key=lambda s: prob.objective(np.array(s)))
    sol = solvers.solve(prob, "update_swap", seed=0)
    assert sol.objective <= prob.objective(np.array(best)) * (1 + 1e-9) + 1e-15  # still optimal here
