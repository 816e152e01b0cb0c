"""Group-aware exact searches (issue 12): miqp under N:M and partition budgets equals an independent brute
force over the product of per-group combinations; every bound is ≤ the optimum; every answer meets the
budget. Both built-in searches are checked (depth-first leaps-and-bounds and best-first), and the
relaxation's bound with the group rows.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cbs_opt import Problem
from cbs_opt.instances import FAMILIES, random_problem
from solvers import solve

REL = 1e-7


@pytest.fixture(autouse=True)
def tiny_portfolio_slices(monkeypatch):
    """search="portfolio" switches between its two searches about every node (exercises the suspensions)."""
    import solvers.miqp as miqp_module
    monkeypatch.setattr(miqp_module, "PORTFOLIO_FIRST_SLICE", 1e-6)
    monkeypatch.setattr(miqp_module, "PORTFOLIO_GROWTH", 1.0)


# -- an independent reference (numpy only) --------------------------------------------------------------

def _dense(w, G, damping):
    return G.T @ G / G.shape[0] + damping * np.eye(w.size)


def _update_cost(F, w, pruned, g):
    """min ḡᵀd + ½dᵀFd with d_P = −w_P (the rest free): d_K = −F_KK⁻¹(ḡ_K + F_KP d_P)."""
    p = w.size
    P = np.asarray(pruned, dtype=int)
    K = np.setdiff1d(np.arange(p), P)
    d = np.zeros(p)
    d[P] = -w[P]
    if K.size:
        rhs = g[K] + F[np.ix_(K, P)] @ d[P]
        d[K] = -np.linalg.solve(F[np.ix_(K, K)], rhs)
    return float(g @ d + 0.5 * d @ F @ d)


def _selection_cost(F, w, pruned, g):
    s = np.zeros(w.size)
    s[list(pruned)] = w[list(pruned)]
    return float(0.5 * s @ F @ s - g @ s)


def brute(F, w, groups, counts, kind, g):
    """Minimum over every pruned set with exactly counts[h] weights of group h (itertools.product)."""
    members = [np.flatnonzero(groups == h) for h in range(len(counts))]
    choices = [itertools.combinations(mem.tolist(), int(c)) for mem, c in zip(members, counts)]
    cost = _update_cost if kind == "update" else _selection_cost
    best = np.inf
    for combo in itertools.product(*choices):
        pruned = [i for part in combo for i in part]
        best = min(best, cost(F, w, pruned, g))
    return best


def _instance(seed, family, p, damping):
    base = random_problem(p, seed=seed, family=family, n_samples=None if seed % 3 else p // 2,
                          damping=damping, gradient=seed % 2 == 1)
    return base.weights, base.grads, base.gradient


def _check(prob, w, G, damping, g, groups, counts, **options):
    F = _dense(w, G, damping)
    gg = np.zeros(w.size) if g is None else g
    ref = brute(F, w, groups, counts, prob.objective_kind, gg)
    sol = solve(prob, "miqp", **options)
    assert sol.status == "optimal", (prob, sol)
    assert prob.budget.is_satisfied(sol.pruned)
    assert abs(sol.objective - ref) <= REL * max(abs(ref), 1e-12) + 1e-13, (sol.objective, ref, options)
    tol = 1e-9 * abs(ref) + 1e-13
    assert sol.bound <= sol.objective + tol and sol.bound <= ref + tol
    return sol, ref


# -- N:M ----------------------------------------------------------------------------------------------------

NM_CASES = [(fam, pattern, seed) for fam in FAMILIES for pattern in ("2:4", "1:4", "3:4") for seed in range(3)]


@pytest.mark.parametrize("family,pattern,seed", NM_CASES)
@pytest.mark.parametrize("search", ["auto", "leaps", "best_first", "portfolio"])
def test_nm_update_matches_brute_force(family, pattern, seed, search):
    p = [12, 16, 8][seed]
    w, G, g = _instance(seed, family, p, 1e-3)
    prob = Problem(w, G, damping=1e-3, pattern=pattern, gradient=g)
    _check(prob, w, G, 1e-3, g, np.asarray(prob.budget.groups), np.asarray(prob.budget.counts), search=search)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(3))
def test_nm_selection_matches_brute_force(family, seed):
    p = [12, 16, 8][seed]
    w, G, g = _instance(seed, family, p, 1e-3)
    prob = Problem(w, G, damping=1e-3, pattern="2:4", gradient=g, objective="selection")
    sol, _ = _check(prob, w, G, 1e-3, g, np.asarray(prob.budget.groups), np.asarray(prob.budget.counts))
    assert sol.info["search"] == "best_first"


# -- general partitions, degenerate cases included ------------------------------------------------------------

def _random_partition(rng, p):
    n_groups = int(rng.integers(2, 5))
    groups = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, size=p - n_groups)])
    rng.shuffle(groups)
    sizes = np.bincount(groups, minlength=n_groups)
    counts = np.array([rng.integers(0, s + 1) for s in sizes])
    return groups, counts


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("objective", ["update", "selection"])
def test_partition_matches_brute_force(seed, objective):
    rng = np.random.default_rng(100 + seed)
    p = int(rng.integers(7, 14))
    family = FAMILIES[seed % len(FAMILIES)]
    damping = [1e-3, 1e-5, 1e-8][seed % 3]
    w, G, g = _instance(seed, family, p, damping)
    groups, counts = _random_partition(rng, p)
    prob = Problem(w, G, damping=damping, groups=groups, n_prune=counts, gradient=g, objective=objective)
    searches = ["auto", "best_first"] + (["leaps", "portfolio"] if objective == "update" else [])
    for search in searches:
        _check(prob, w, G, damping, g, groups, counts, search=search)


@pytest.mark.parametrize("case", ["keep_all_but_one_group", "prune_all_but_one_group", "singletons",
                                  "one_weight_per_group_kept", "ties"])
def test_degenerate_partitions(case):
    rng = np.random.default_rng(7)
    p = 12
    w, G = rng.normal(size=p), rng.normal(size=(6, p))
    groups = np.repeat(np.arange(3), 4)
    if case == "keep_all_but_one_group":
        counts = np.array([0, 0, 3])
    elif case == "prune_all_but_one_group":
        counts = np.array([4, 4, 1])
    elif case == "singletons":
        groups = np.arange(p)
        counts = rng.integers(0, 2, size=p)
    elif case == "one_weight_per_group_kept":
        counts = np.array([3, 3, 3])
    else:   # ties everywhere: duplicated weights and gradient columns inside and across groups
        w = np.tile(np.round(rng.normal(size=3), 1), 4)
        G = np.tile(rng.normal(size=(6, 3)), (1, 4))
        counts = np.array([2, 1, 3])
    for damping in (1e-3, 1e-8):
        for objective in ("update", "selection"):
            prob = Problem(w, G, damping=damping, groups=groups, n_prune=counts, objective=objective)
            searches = ["auto", "best_first"] + (["leaps", "portfolio"] if objective == "update" else [])
            for search in searches:
                _check(prob, w, G, damping, None, groups, counts, search=search)


def test_larger_nm_block_leaps_and_best_first_agree():
    """p = 20 at 2:4 (6⁵ = 7,776 feasible sets): both searches prove the same optimum as the brute force."""
    rng = np.random.default_rng(3)
    p = 20
    w, G = rng.normal(size=p), rng.normal(size=(40, p)) * np.exp(rng.normal(size=p))
    prob = Problem(w, G, damping=1e-3, pattern="2:4")
    groups, counts = np.asarray(prob.budget.groups), np.asarray(prob.budget.counts)
    a, ref = _check(prob, w, G, 1e-3, None, groups, counts, search="leaps")
    b, _ = _check(prob, w, G, 1e-3, None, groups, counts, search="best_first")
    c, _ = _check(prob, w, G, 1e-3, None, groups, counts, search="portfolio")
    assert c.info["slices"] > 2
    assert abs(a.objective - b.objective) <= REL * abs(ref)


# -- the other routes: HiGHS's selection MILP, the root relaxation, the relaxation backend --------------------

@pytest.mark.parametrize("seed", range(4))
def test_selection_milp_and_root_relaxation_respect_partitions(seed):
    """The other routes of the highs engine: HiGHS on the selection MILP (group rows) and best-first seeded
    by the HiGHS root relaxation (group rows, per-group rounding)."""
    rng = np.random.default_rng(300 + seed)
    p = 10
    w, G, g = _instance(seed, "lowrank", p, 1e-3)
    groups, counts = _random_partition(rng, p)
    sel = Problem(w, G, damping=1e-3, groups=groups, n_prune=counts, gradient=g, objective="selection")
    _check(sel, w, G, 1e-3, g, groups, counts, search="milp")
    upd = Problem(w, G, damping=1e-3, groups=groups, n_prune=counts, gradient=g)
    _check(upd, w, G, 1e-3, g, groups, counts, search="best_first", root_relaxation=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objective", ["update", "selection"])
def test_relaxation_bound_under_partition_budgets(seed, objective):
    rng = np.random.default_rng(200 + seed)
    p = int(rng.integers(8, 13))
    w, G, g = _instance(seed, FAMILIES[seed % len(FAMILIES)], p, 1e-3)
    groups, counts = _random_partition(rng, p)
    prob = Problem(w, G, damping=1e-3, groups=groups, n_prune=counts, gradient=g, objective=objective)
    ref = brute(_dense(w, G, 1e-3), w, groups, counts, objective, np.zeros(p) if g is None else g)
    sol = solve(prob, "relaxation")
    assert prob.budget.is_satisfied(sol.pruned)
    assert sol.bound <= ref + 1e-9 * abs(ref) + 1e-13
    assert sol.objective >= ref - 1e-9 * abs(ref) - 1e-13


# -- the per-group linear steps and child bounds, against enumeration -----------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_grouped_linear_min_and_child_bounds_match_enumeration(seed):
    """``min gᵀz`` over per-group counts, and both children's bounds of every variable (the basis of the
    grouped best-first bounds and of reduced-cost fixing), equal their enumerated values."""
    from solvers.exact_bnb import child_bounds, child_bounds_grouped
    from solvers.exact_core import grouped_smallest, linear_min
    rng = np.random.default_rng(seed)
    u = int(rng.integers(2, 9))
    ids = rng.integers(0, 3, size=u)
    sizes = np.bincount(ids, minlength=3)
    need = np.array([rng.integers(0, s + 1) for s in sizes])
    g = np.round(rng.normal(size=u), 1 if seed % 2 else 6)     # ties on odd seeds
    base = float(rng.normal())
    feasible = [np.array(z) for z in itertools.product([0, 1], repeat=u)
                if np.array_equal(np.bincount(ids[np.array(z, bool)], minlength=3), need)]
    best = min(float(g @ z) for z in feasible)
    assert grouped_smallest(g, ids, need)[0][0] == pytest.approx(best, abs=1e-12)
    assert linear_min(g, np.zeros(0, int), np.arange(u), need, ids)[0] == pytest.approx(best, abs=1e-12)
    keep, prune = child_bounds_grouped(base, g, need, ids)
    for j in range(u):
        with_j = [base + float(g @ z) for z in feasible if z[j] == 1]
        without = [base + float(g @ z) for z in feasible if z[j] == 0]
        assert keep[j] == (pytest.approx(min(with_j), abs=1e-12) if with_j else np.inf)
        assert prune[j] == (pytest.approx(min(without), abs=1e-12) if without else np.inf)
    # one group: the grouped form reduces to the total one
    k1, p1 = child_bounds_grouped(base, g, np.array([int(need.sum())]), np.zeros(u, int))
    k0, p0 = child_bounds(base, g, int(need.sum()))
    assert np.allclose(k1, k0) and np.allclose(p1, p0)


@pytest.mark.parametrize("sizes", ["equal", "unequal"])
def test_grouped_smallest_large_padded_path_matches_the_sort_path(sizes):
    """Above 4,096 entries the per-group selection uses a padded (groups × width) layout: same minimum, and
    the chosen columns meet the per-group counts."""
    from solvers import exact_core
    rng = np.random.default_rng(5)
    u = 6000
    if sizes == "equal":
        ids = np.repeat(np.arange(u // 4), 4)
    else:   # group sizes 3, 4 or 5
        widths = rng.integers(3, 6, size=u // 3)
        widths = widths[:np.searchsorted(np.cumsum(widths), u)]
        ids = np.repeat(np.arange(widths.size + 1), np.append(widths, u - widths.sum()))
    rng.shuffle(ids)
    counts = np.bincount(ids)
    assert u > 4096 and counts.size * counts.max() <= 2 * u     # the padded path applies
    need = np.array([rng.integers(0, c + 1) for c in counts])
    coef = np.round(rng.normal(size=(3, u)), 2)          # many ties
    sums, chosen = exact_core.grouped_smallest(coef, ids, need)
    for t in range(3):
        assert np.array_equal(np.bincount(ids[chosen[t]], minlength=counts.size), need)
        assert np.unique(chosen[t]).size == chosen.shape[1]
        expect = sum(np.sort(coef[t, ids == g])[:need[g]].sum() for g in range(counts.size))
        assert sums[t] == pytest.approx(expect, abs=1e-9)
        assert coef[t, chosen[t]].sum() == pytest.approx(expect, abs=1e-9)
