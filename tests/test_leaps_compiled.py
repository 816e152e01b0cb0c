"""The compiled leaps-and-bounds node loop (numba) against the Python loop and against enumeration.

Both loops must visit the same nodes and return the same answer; stopped, paused, interrupted or offered an
incumbent, the compiled one must stay as honest as the Python one.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from brute import dense_f
from cbs_opt.instances import random_problem
from solvers import exact_leaps, solve
from solvers.base import Deadline
from solvers.exact_leaps import LeapsSearch, NumericalFailure, leaps_search
from solvers.kernels import leaps_jit

pytestmark = pytest.mark.skipif(not leaps_jit.AVAILABLE, reason="numba is not installed")


def _instance(seed, p_range=(6, 14)):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(*p_range))
    k = int(rng.integers(3, p))
    G = rng.normal(size=(int(rng.integers(1, 2 * p)), p)) * np.exp(rng.normal(size=p))
    if seed % 3 == 1:       # identical columns, as the background pixels of an fc1 chunk
        G[:, 1:4] = G[:, [0]]
    if seed % 5 == 2:       # a zero-gradient weight
        G[:, -1] = 0.0
    F = dense_f(None, G, [1e-3, 1e-5, 1e-8][seed % 3])
    w = rng.normal(size=p)
    if seed % 4 == 3:
        w[0] = 0.0
    return F, w, k


def _optimum(F, w, k):
    c = F @ w
    total = float(w @ c)
    best = max(float(c[list(s)] @ np.linalg.solve(F[np.ix_(s, s)], c[list(s)]))
               for s in map(list, itertools.combinations(range(w.size), k)))
    return 0.5 * (total - best), total


@pytest.mark.parametrize("seed", range(40))
def test_compiled_loop_equals_python_loop_and_enumeration(seed):
    F, w, k = _instance(seed)
    py = leaps_search(F, w, k, compiled=False)
    jit = leaps_search(F, w, k, compiled=True, dominance=False)
    assert jit.info["compiled"] and not py.info["compiled"]
    opt, total = _optimum(F, w, k)
    for res in (py, jit):
        assert res.optimal and res.keep.sum() == k
        assert abs(res.value - opt) <= 1e-7 * abs(opt) + 1e-12 * total
        assert res.bound <= res.value
    if opt > 1e-9 * total:      # a zero-cost optimum ties bounds with the incumbent to rounding: trees may differ
        assert jit.nodes == py.nodes
    assert abs(jit.value - py.value) <= 1e-9 * abs(py.value) + 1e-13 * total


@pytest.mark.parametrize("seed", range(6))
def test_compiled_loop_equals_python_loop_on_larger_blocks(seed):
    """Tens of thousands of nodes (p = 30, keep 8), where a divergence would show in the node count."""
    rng = np.random.default_rng(100 + seed)
    G = rng.normal(size=(15, 30))
    if seed % 2:
        G[:, 5:9] = G[:, [4]]
    F = dense_f(None, G, [1e-3, 1e-5][seed % 2])
    w = rng.normal(size=30)
    py = leaps_search(F, w, 8, compiled=False)
    jit = leaps_search(F, w, 8, dominance=False)
    assert jit.info["compiled"] and py.optimal and jit.optimal
    assert jit.nodes == py.nodes > 100
    assert abs(jit.value - py.value) <= 1e-9 * abs(py.value)


@pytest.mark.parametrize("seed", range(6))
def test_stopped_compiled_search_is_honest(seed):
    """A node limit or a closed suspended search: never "optimal" unless finished, bound ≤ optimum ≤ value."""
    F, w, k = _instance(seed, (10, 15))
    opt, total = _optimum(F, w, k)
    full = leaps_search(F, w, k)
    for limit in (1, 2, 5, max(1, full.nodes // 2)):
        res = leaps_search(F, w, k, node_limit=limit)
        assert res.nodes <= limit or limit >= full.nodes
        assert res.bound <= opt + 1e-12 * total and res.value >= opt - 1e-12 * total
        if res.nodes < full.nodes:
            assert not res.optimal
    search = LeapsSearch(F, w, k)
    if not search.run(nodes=2):
        res = search.result()
        assert not res.optimal and res.bound <= opt + 1e-12 * total


def test_compiled_search_meets_a_time_limit_and_the_bound_stays_honest():
    """A block of 120 weights keeping 30 runs for minutes; a 0.3 s deadline is met within a few ms of calls."""
    rng = np.random.default_rng(7)
    G = rng.normal(size=(60, 120))
    F = dense_f(None, G, 1e-5)
    w = rng.normal(size=120)
    leaps_search(F, w, 3)                                   # compiled before the clock starts
    start = time.perf_counter()
    res = leaps_search(F, w, 30, deadline=Deadline(0.3))
    elapsed = time.perf_counter() - start
    assert res.info["compiled"] and not res.optimal and elapsed < 0.3 + 0.25
    assert res.bound <= res.value and res.nodes > 10


def test_interrupt_in_the_compiled_loop_returns_incumbent_and_bound(monkeypatch):
    F, w, k = _instance(0, (13, 14))
    opt, total = _optimum(F, w, k)
    kernels = leaps_jit.compiled()
    real = kernels["run_nodes"]
    calls = {"n": 0}

    def interrupted_on_third_call(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args[:12], 1, *args[13:])      # args[12] is the node budget: one node per call

    monkeypatch.setitem(kernels, "run_nodes", interrupted_on_third_call)
    res = leaps_search(F, w, k, deadline=Deadline(None))
    assert res.info["interrupted"] and not res.optimal
    assert res.keep.sum() == k and res.bound <= opt + 1e-12 * total and res.value >= opt - 1e-12 * total


def test_python_loop_where_the_compiled_one_does_not_apply(monkeypatch):
    """Partition budgets, k ≤ 2, a workspace above the cap or no numba: the Python loop, same answers."""
    F, w, k = _instance(3, (10, 12))
    ids = np.arange(w.size) % 2
    counts = np.array([k - k // 2, k // 2])
    assert not leaps_search(F, w, k, groups=(ids, counts)).info["compiled"]
    assert not leaps_search(F, w, 2).info["compiled"]
    ref = leaps_search(F, w, k)
    monkeypatch.setattr(exact_leaps, "COMPILED_MAX_BYTES", 10)
    capped = leaps_search(F, w, k)
    monkeypatch.setattr(exact_leaps, "COMPILED_MAX_BYTES", 2 ** 30)
    monkeypatch.setattr(leaps_jit, "AVAILABLE", False)
    missing = leaps_search(F, w, k)
    assert not capped.info["compiled"] and not missing.info["compiled"] and ref.info["compiled"]
    assert capped.nodes == missing.nodes == ref.nodes and capped.value == missing.value


def test_singular_schur_complement_raises_numerical_failure_in_both_loops():
    """No damping and duplicated columns: keeping both duplicates makes a Schur pivot zero."""
    G = np.array([[1.0, 1.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0, 3.0]])
    F = G.T @ G
    w = np.array([1.0, 2.0, 0.5, -1.0, 0.3])
    for compiled in (False, True):
        with pytest.raises(NumericalFailure):
            leaps_search(F, w, 3, compiled=compiled)


def test_miqp_runs_the_compiled_loop_and_proves_the_enumerated_optimum():
    prob = random_problem(14, seed=2, sparsity=0.75, n_samples=40)
    sol = solve(prob, "miqp", search="leaps")
    ref = solve(prob, "enumerate")
    assert sol.status == "optimal" and sol.info["compiled"]
    assert abs(sol.objective - ref.objective) <= 1e-7 * abs(ref.objective)


def test_a_numba_that_cannot_compile_falls_back_to_the_python_loop(monkeypatch):
    """numba installed but unusable here (e.g. a numpy it does not support): one warning, the Python loop, the
    same answer — never a failed solve."""
    F, w, k = _instance(5, (9, 12))
    ref = leaps_search(F, w, k, compiled=False)
    monkeypatch.setattr(leaps_jit, "_COMPILED", None)
    monkeypatch.setattr(leaps_jit, "AVAILABLE", True)

    def broken(plain):
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(leaps_jit, "_compile", broken)
    with pytest.warns(RuntimeWarning, match="Python loop"):
        res = leaps_search(F, w, k)
    assert not leaps_jit.AVAILABLE and not res.info["compiled"]
    assert res.optimal and res.nodes == ref.nodes and res.value == ref.value
    assert not leaps_search(F, w, k).info["compiled"]          # no second attempt, no second warning


def test_a_child_inverse_is_a_block_of_the_parent_inverse():
    """The identity the compiled loop hands inverses down by: keeping position 0, the inverse of the Schur
    complement on the rest is the rest's block of the parent's inverse (and dropping position 0 instead is a
    Schur complement of that inverse)."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(9, 6))
    S = A.T @ A + 1e-3 * np.eye(6)
    H = np.linalg.inv(S)
    schur = S[1:, 1:] - np.outer(S[1:, 0], S[0, 1:]) / S[0, 0]
    assert np.allclose(np.linalg.inv(schur), H[1:, 1:], rtol=1e-9, atol=0)
    dropped = H.copy()
    assert leaps_jit._drop_leading(dropped, 0, 1, 6)
    assert np.allclose(dropped[1:, 1:], np.linalg.inv(S[1:, 1:]), rtol=1e-9, atol=0)
    bad = H.copy()
    bad[0, 0] = -1.0
    assert not leaps_jit._drop_leading(bad, 0, 1, 6)


def test_a_drifted_handed_down_inverse_is_recomputed():
    """A handed-down inverse that lost definiteness (rounding drift) is recomputed: same order, same bounds."""
    kernels = leaps_jit.compiled()
    assert kernels is not None
    rng = np.random.default_rng(1)
    n = 12
    A = rng.normal(size=(20, n))
    S = A.T @ A / 20 + 1e-5 * np.eye(n)
    c = rng.normal(size=n)

    def order(H0, known):
        outs = (np.empty((n, n)), np.empty(n), np.empty(n, dtype=np.int64), np.empty(n))
        H = H0.copy()
        ok = leaps_jit._order_node(S, c, np.arange(n), n, 0.0, -np.inf, n - 3, *outs, H, known,
                                   np.empty((n, n)), np.empty((n, n)), np.empty(n), np.empty(n, dtype=np.int64),
                                   np.empty(n, dtype=np.int64))
        return ok, outs, H

    ok_fresh, fresh, H_fresh = order(np.zeros((n, n)), False)
    drifted = np.linalg.inv(S)
    drifted[np.diag_indices(n)] *= -1.0
    ok_drift, redone, H_redone = order(drifted, True)
    assert ok_fresh and ok_drift
    assert np.array_equal(fresh[2], redone[2]) and np.allclose(fresh[3], redone[3], rtol=1e-12, atol=0)
    broken = np.linalg.inv(S)
    broken[0, :] = np.nan                   # no finite greedy score at all
    ok_nan, from_nan, _ = order(broken, True)
    assert ok_nan and np.array_equal(fresh[2], from_nan[2])
    perm = fresh[2]
    assert np.allclose(H_redone, np.linalg.inv(S)[np.ix_(perm, perm)], rtol=1e-6, atol=0)
    # the bounds are suffix gains of the returned order
    for t in range(n):
        rest = perm[t:]
        assert np.isclose(fresh[3][t], c[rest] @ np.linalg.solve(S[np.ix_(rest, rest)], c[rest]), rtol=1e-8)
