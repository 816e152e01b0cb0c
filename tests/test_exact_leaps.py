"""Leaps-and-bounds search of the miqp backend: exact against brute force, honest when stopped, auto rule."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import solvers.miqp as miqp_module
from brute import brute_force, dense_f
from cbs_opt import Problem
from cbs_opt.instances import FAMILIES, random_problem
from solvers import solve
from solvers.base import Deadline
from solvers.exact_leaps import LeapsSearch, NumericalFailure, _suffix_gains, leaps_search

REL = 1e-7


def _close(a, b):
    return abs(a - b) <= REL * max(abs(b), 1e-12)


def _gain(F, w, keep):
    c = F @ w
    kk = np.flatnonzero(keep)
    return float(c[kk] @ np.linalg.solve(F[np.ix_(kk, kk)], c[kk]))


def test_suffix_gains_match_direct_solves():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 9))
    S = A.T @ A + 0.1 * np.eye(9)
    c = rng.normal(size=9)
    got = _suffix_gains(S, c)
    for t in range(9):
        want = c[t:] @ np.linalg.solve(S[t:, t:], c[t:])
        assert got[t] == pytest.approx(want, rel=1e-10)
    assert np.all(np.diff(got) <= 1e-12)    # monotone: shorter suffixes never gain more


@pytest.mark.parametrize("seed", range(6))
def test_deletion_order_removes_the_most_valuable_candidate_first(seed):
    """Greedy deletion by direct solves: each position holds the candidate whose removal lowers the rest's gain
    most; the bounds are the suffix gains of that order. The compiled step gives the same order and bounds."""
    from solvers import exact_leaps
    from solvers.kernels import leaps_jit
    rng = np.random.default_rng(seed)
    n = 9
    A = rng.normal(size=(5, n)) * np.exp(rng.normal(size=n))
    S = A.T @ A + [1e-1, 1e-3, 1e-5][seed % 3] * np.eye(n)
    c = rng.normal(size=n)

    def gain(idx):
        idx = list(idx)
        return float(c[idx] @ np.linalg.solve(S[np.ix_(idx, idx)], c[idx])) if idx else 0.0

    order, bounds = exact_leaps._deletion_order(S, c, 0.5, -np.inf, n - 1)
    rest = list(range(n))
    for t in range(n):
        assert bounds[t] == pytest.approx(0.5 + gain(order[t:]), rel=1e-9)
        losses = [gain(rest) - gain([i for i in rest if i != j]) for j in rest]
        assert losses[rest.index(order[t])] >= max(losses) - 1e-9 * gain(range(n))
        rest.remove(order[t])
    # stopping: once the gain left is at or below the threshold, the rest keep index order
    stop_order, stop_bounds = exact_leaps._deletion_order(S, c, 0.0, 0.5 * (bounds[1] + bounds[2]) - 0.5, n - 1)
    assert list(stop_order[:2]) == list(order[:2]) and list(stop_order[2:]) == sorted(order[2:])
    if leaps_jit.AVAILABLE:
        outs = (np.empty((n, n)), np.empty(n), np.empty(n, dtype=np.int64), np.empty(n))
        assert leaps_jit._order_node(S, c, np.arange(n), n, 0.5, -np.inf, n - 1, *outs, np.empty((n, n)), False,
                                     np.empty((n, n)), np.empty((n, n)), np.empty(n),
                                     np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64))
        assert list(outs[2]) == list(order) and np.allclose(outs[3], bounds, rtol=1e-10, atol=0)


@pytest.mark.parametrize("seed", range(8))
def test_leaps_search_matches_brute_force(seed):
    """Against an independent itertools enumeration of F's keep-sets (gain and cost)."""
    rng = np.random.default_rng(seed)
    p = int(rng.integers(5, 13))
    k = int(rng.integers(1, p + 1))
    N = int(rng.integers(1, 2 * p))
    G = rng.normal(size=(N, p)) * np.exp(rng.normal(size=p))
    F = dense_f(None, G, 1e-3)
    w = rng.normal(size=p)
    res = leaps_search(F, w, k)
    assert res.optimal and res.keep.sum() == k
    best = max(_gain(F, w, np.isin(np.arange(p), s)) for s in itertools.combinations(range(p), k))
    total = w @ F @ w
    assert _close(0.5 * (total - _gain(F, w, res.keep)), 0.5 * (total - best))
    # value is a difference of O(wᵀFw) numbers: relative to the optimum, plus rounding of that scale
    assert abs(res.value - 0.5 * (total - best)) <= REL * 0.5 * (total - best) + 1e-12 * total
    assert res.bound <= res.value


CASES = [(fam, seed) for fam in FAMILIES for seed in range(6)]


@pytest.mark.parametrize("family,seed", CASES)
def test_both_searches_match_enumeration(family, seed):
    """Every family (ties, λI, cancelling pairs), gradients, N < p and N > p: both searches hit the optimum."""
    rng = np.random.default_rng(100 + seed)
    p = int(rng.integers(6, 15))
    prob = random_problem(p, seed=seed, family=family, sparsity=[0.25, 0.5, 0.75, 0.9][seed % 4],
                          gradient=seed % 2 == 1, n_samples=None if seed % 3 else 2 * p)
    ref = solve(prob, "enumerate")
    for search in ("leaps", "best_first"):
        sol = solve(prob, "miqp", search=search)
        assert sol.status == "optimal" and sol.info["search"] in (search, "closed form")
        assert _close(sol.objective, ref.objective), (search, sol.objective, ref.objective)
        assert sol.bound <= ref.objective + 1e-9 * abs(ref.objective) + 1e-15


def test_brute_force_reference_on_dense_hessian_with_gradient():
    rng = np.random.default_rng(5)
    M = rng.normal(size=(11, 11))
    H = M @ M.T / 11
    w, g = rng.normal(size=11), 0.1 * rng.normal(size=11)
    prob = Problem(w, hessian=H, damping=1e-2, n_prune=7, gradient=g)
    sol = solve(prob, "miqp", search="leaps")
    ref, _ = brute_force(dense_f(w, hessian=H, damping=1e-2), w, 7, "update", gradient=g)
    assert sol.status == "optimal" and _close(sol.objective, ref)


def test_stopped_search_is_honest():
    """A node or time limit returns the incumbent with a bound below the true optimum, never "optimal"."""
    prob = random_problem(30, seed=0, sparsity=0.75)     # thousands of nodes (N = 15, keep 8 of 30)
    full = solve(prob, "miqp", search="leaps")
    assert full.status == "optimal" and full.info["nodes"] > 1000
    opt = full.objective
    for options in ({"node_limit": 5}, {"time_limit": 1e-9}):
        sol = solve(prob, "miqp", search="leaps", **options)
        assert sol.status in ("iteration_limit", "time_limit")
        assert sol.bound <= opt + 1e-12 and sol.objective >= opt - 1e-12
    F, w = prob.curvature.dense(), prob.effective_weights
    stopped = leaps_search(F, w, prob.n_keep, node_limit=3)
    assert not stopped.optimal and stopped.bound <= opt - prob.update_constant + 1e-12
    expired = leaps_search(F, w, prob.n_keep, deadline=Deadline(0.0))
    assert not expired.optimal and expired.bound <= stopped.value


def test_incumbent_is_kept_when_optimal():
    prob = random_problem(12, seed=1, sparsity=0.5, n_samples=40)
    ref = solve(prob, "enumerate")
    F, w = prob.curvature.dense(), prob.effective_weights
    res = leaps_search(F, w, prob.n_keep, incumbent=ref.mask)
    assert res.optimal and _close(res.value + prob.update_constant, ref.objective)


def test_auto_rule():
    """Low-rank blocks keeping ≥ N weights go best-first; high sparsity and full-rank blocks go leaps."""
    low_rank_dense_keep = random_problem(20, seed=0, sparsity=0.5)          # N = 10, keep 10
    low_rank_sparse_keep = random_problem(20, seed=0, sparsity=0.75)        # N = 10, keep 5
    full_rank = random_problem(20, seed=0, sparsity=0.5, n_samples=50)
    assert solve(low_rank_dense_keep, "miqp").info["search"] == "best_first"
    assert solve(low_rank_sparse_keep, "miqp").info["search"] == "leaps"
    assert solve(full_rank, "miqp").info["search"] == "leaps"
    assert solve(full_rank.with_objective("selection"), "miqp").info["search"] == "best_first"


def test_numerical_failure_falls_back_to_best_first(monkeypatch):
    def broken(*args, **kwargs):
        raise NumericalFailure("test")

    monkeypatch.setattr("solvers.exact_leaps.leaps_search", broken)
    prob = random_problem(12, seed=3, sparsity=0.75, n_samples=30)
    sol = solve(prob, "miqp", search="leaps")
    assert sol.info["search"] == "best_first" and sol.status == "optimal"
    assert _close(sol.objective, solve(prob, "enumerate").objective)


def test_bad_search_options():
    prob = random_problem(8, seed=0)
    with pytest.raises(ValueError, match="search"):
        solve(prob, "miqp", search="dfs")
    with pytest.raises(ValueError, match="search"):
        solve(prob.with_objective("selection"), "miqp", search="leaps")
    rng = np.random.default_rng(0)
    singular = Problem(rng.normal(size=8), rng.normal(size=(3, 8)), damping=0.0, n_prune=4)
    with pytest.raises(ValueError, match="positive definite"):
        solve(singular, "miqp", search="leaps")
    with pytest.raises(ValueError, match="k must"):
        leaps_search(np.eye(3), np.ones(3), 0)
    assert miqp_module.SEARCHES == ("auto", "leaps", "best_first", "portfolio", "milp")
    with pytest.raises(ValueError, match="positive definite"):
        solve(singular, "miqp", search="portfolio")
    with pytest.raises(ValueError, match="search"):
        solve(prob.with_objective("selection"), "miqp", search="portfolio")


def test_searches_agree_beyond_the_small_grid():
    """p = 22, keep 5 of N = 11 gradients (the regime leaps exists for): both searches and enumeration agree."""
    prob = random_problem(22, seed=4, sparsity=0.75)
    ref = solve(prob, "enumerate")
    leaps = solve(prob, "miqp", search="leaps")
    best_first = solve(prob, "miqp", search="best_first")
    for sol in (leaps, best_first):
        assert sol.status == "optimal" and _close(sol.objective, ref.objective)
    assert leaps.info["search"] == "leaps" and best_first.info["search"] == "best_first"


def test_progress_bar_names_the_search(capsys):
    prob = random_problem(30, seed=0, sparsity=0.75)          # > 256 nodes, so the bar updates
    sol = solve(prob, "miqp", search="leaps", progress=True)
    assert sol.status == "optimal"
    assert "leaps-and-bounds" in capsys.readouterr().err


def test_large_blocks_probe_with_leaps_then_go_best_first(monkeypatch):
    """Without the portfolio (PORTFOLIO = False), above LEAPS_FULL_P "auto" gives leaps a bounded probe; an
    unfinished probe hands over its incumbent."""
    monkeypatch.setattr(miqp_module, "PORTFOLIO", False)
    monkeypatch.setattr(miqp_module, "LEAPS_FULL_P", 5)
    prob = random_problem(14, seed=2, sparsity=0.75, n_samples=30)
    ref = solve(prob, "enumerate")
    monkeypatch.setattr(miqp_module, "LEAPS_PROBE_NODES", 1)
    handed_over = solve(prob, "miqp")
    assert handed_over.info["search"] == "best_first" and handed_over.info["leaps_probe_nodes"] >= 1
    assert handed_over.status == "optimal" and _close(handed_over.objective, ref.objective)
    monkeypatch.setattr(miqp_module, "LEAPS_PROBE_NODES", 10**6)
    finished = solve(prob, "miqp")
    assert finished.info["search"] == "leaps" and finished.status == "optimal"
    assert _close(finished.objective, ref.objective)


def test_large_blocks_time_slice_leaps_and_best_first(monkeypatch):
    """Above LEAPS_FULL_P, "auto" runs the portfolio: both searches in alternating slices, one incumbent."""
    monkeypatch.setattr(miqp_module, "LEAPS_FULL_P", 5)
    monkeypatch.setattr(miqp_module, "PORTFOLIO_FIRST_SLICE", 1e-6)     # many slices of about one node
    monkeypatch.setattr(miqp_module, "PORTFOLIO_GROWTH", 1.0)
    prob = random_problem(14, seed=2, sparsity=0.75, n_samples=30)
    ref = solve(prob, "enumerate")
    sol = solve(prob, "miqp")
    assert sol.info["search"] == "portfolio" and sol.status == "optimal"
    assert sol.info["slices"] > 2 and sol.info["leaps_nodes"] >= 1 and sol.info["bf_nodes"] >= 1
    assert sol.info["winner"] in ("leaps", "best_first", "combined")
    assert _close(sol.objective, ref.objective) and sol.bound <= ref.objective * (1 + REL)


@pytest.mark.parametrize("p", [64, 80])
def test_leaps_share_follows_best_first_gap(p):
    """Leaps' share of a slice pair: the floor while best-first closes (higher for blocks small enough for
    leaps), the ceiling while it stalls, monotone in between, and the ceiling when best-first has no finite
    bound yet."""
    share = lambda bound, best: miqp_module._leaps_share(bound, best, p)  # noqa: E731
    small = p <= miqp_module.PORTFOLIO_SMALL_P
    lo = miqp_module.PORTFOLIO_SHARE_MIN_SMALL if small else miqp_module.PORTFOLIO_SHARE_MIN
    hi = miqp_module.PORTFOLIO_SHARE_MAX
    assert 0.0 < miqp_module.PORTFOLIO_SHARE_MIN < miqp_module.PORTFOLIO_SHARE_MIN_SMALL < hi < 1.0
    assert share(0.95, 1.0) == pytest.approx(lo) and share(0.0, 1.0) == pytest.approx(hi)
    assert share(-np.inf, 1.0) == pytest.approx(hi)
    gaps = np.linspace(0.0, 1.0, 21)
    values = [share(1.0 - g, 1.0) for g in gaps]
    assert all(b >= a for a, b in zip(values, values[1:]))


def _leaps_instance(seed):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(9, 15))
    k = int(rng.integers(3, p - 1))
    G = rng.normal(size=(int(rng.integers(2, p)), p))
    if seed % 2:   # identical columns (the background pixels of an fc1 chunk)
        G[:, 1:4] = G[:, [0]]
    F = dense_f(None, G, [1e-3, 1e-5, 1e-8][seed % 3])
    return F, rng.normal(size=p), k


def _node_loop(monkeypatch, compiled):
    """Run this test's leaps searches on the Python node loop or on the compiled one."""
    from solvers import exact_leaps
    from solvers.kernels import leaps_jit
    if compiled and not leaps_jit.AVAILABLE:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(exact_leaps, "COMPILED", compiled)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_resumed_leaps_equals_one_run(monkeypatch, seed, compiled):
    """A search suspended every few nodes (and every 1 µs) visits the same nodes and returns the same answer as
    one uninterrupted run; while suspended, its current bound is ≤ the optimum and never decreases (both node
    loops)."""
    _node_loop(monkeypatch, compiled)
    F, w, k = _leaps_instance(seed)
    one = leaps_search(F, w, k)
    total = w @ F @ w
    opt = min(0.5 * (total - _gain(F, w, np.isin(np.arange(w.size), s)))
              for s in itertools.combinations(range(w.size), k))
    assert _close(one.value, opt) or abs(one.value - opt) <= 1e-12 * total
    for slicing in ({"nodes": 1}, {"nodes": 7}, {"until": 0.0}):
        search = LeapsSearch(F, w, k)
        pauses, last = 0, -np.inf
        while not search.run(**slicing):
            pauses += 1
            b = search.current_bound()
            assert b <= opt + 1e-12 * total and b >= last - 1e-15 * total
            last = b
        res = search.result()
        assert res.info["compiled"] is compiled
        assert (pauses >= 1 or one.nodes <= slicing.get("nodes", 1)) and res.optimal and res.nodes == one.nodes
        assert np.array_equal(res.keep, one.keep) and res.value == one.value


def test_suspended_leaps_closes_with_an_honest_bound():
    """result() on a suspended search unwinds its stack: not optimal, bound ≤ optimum ≤ value."""
    F, w, k = _leaps_instance(1)
    opt = leaps_search(F, w, k).value
    search = LeapsSearch(F, w, k)
    assert not search.run(nodes=2)
    res = search.result()
    assert not res.optimal and res.bound <= opt + 1e-12 and res.value >= opt - 1e-12
    assert search.run() is True         # closed: nothing more to do


@pytest.mark.parametrize("compiled", [False, True])
def test_offered_incumbent_prunes_the_resumed_search(monkeypatch, compiled):
    """An optimal incumbent offered by another search (in cost units) is kept and prunes: fewer nodes (the
    Python node loop and the compiled one)."""
    _node_loop(monkeypatch, compiled)
    F, w, k = _leaps_instance(4)
    one = leaps_search(F, w, k)
    search = LeapsSearch(F, w, k)
    search.run(nodes=1)
    search.offer_value(one.keep, one.value)
    search.offer_value(~one.keep, one.value + 1.0)    # a worse one changes nothing
    while not search.run():
        pass
    res = search.result()
    assert res.info["compiled"] is compiled
    assert res.optimal and res.value <= one.value + 1e-12 and res.nodes <= one.nodes


@pytest.mark.parametrize("compiled", [False, True])
def test_portfolio_carries_on_best_first_when_leaps_fails_numerically(monkeypatch, compiled):
    """A Schur complement losing definiteness mid-search ends leaps only: best-first still proves the optimum
    (the Python node loop raising from its suffix factorisation, the compiled one returning its code)."""
    from solvers import exact_leaps
    from solvers.kernels import leaps_jit
    count = {"n": 0}
    if compiled:
        if not leaps_jit.AVAILABLE:
            pytest.skip("numba is not installed")
        kernels = leaps_jit.compiled()
        real = kernels["run_nodes"]

        def failing_kernel(*args):
            count["n"] += 1
            return leaps_jit.NUMERICAL if count["n"] >= 3 else real(*args)

        monkeypatch.setitem(kernels, "run_nodes", failing_kernel)
    else:
        original = exact_leaps._suffix_gains

        def failing(S, c):
            count["n"] += 1
            if count["n"] >= 3:
                raise NumericalFailure("test")
            return original(S, c)

        monkeypatch.setattr(exact_leaps, "COMPILED", False)
        monkeypatch.setattr(exact_leaps, "_suffix_gains", failing)
    monkeypatch.setattr(miqp_module, "PORTFOLIO_FIRST_SLICE", 1e-6)
    monkeypatch.setattr(miqp_module, "PORTFOLIO_GROWTH", 1.0)
    prob = random_problem(22, seed=4, sparsity=0.75)
    sol = solve(prob, "miqp", search="portfolio")
    assert sol.info["compiled"] is compiled
    assert count["n"] >= 3 and sol.status == "optimal" and sol.info["winner"] in ("best_first", "combined")
    assert _close(sol.objective, solve(prob, "enumerate").objective)
