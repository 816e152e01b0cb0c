"""Duplicate weights in the exact search: detection, the dominance rule itself, and the search that uses it.

Duplicates (identical gradient columns: the always-background pixels of every fc1 block) make ``F_DD = a·11ᵀ +
δI`` with ``F_iD`` constant over ``D``. Then some optimal keep-set prunes, in every group, one contiguous run
of the group's weights sorted by value (``solvers.exact_leaps`` module doc); the compiled search visits only
such keep-sets. Checked here by enumeration: the rule on its own, and the search against the optimum.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from brute import dense_f
from solvers import exact_leaps
from solvers.base import Deadline
from solvers.exact_leaps import duplicate_groups, leaps_search
from solvers.kernels import leaps_jit


def _instance(seed, p_range=(7, 13)):
    """Random blocks with planted duplicate groups (some of zero gradients), ties in w, low dampings."""
    rng = np.random.default_rng(seed)
    p = int(rng.integers(*p_range))
    G = rng.normal(size=(int(rng.integers(2, 2 * p)), p)) * np.exp(rng.normal(size=p))
    cols = rng.permutation(p)
    start = 0
    for size in rng.integers(2, 5, size=int(rng.integers(1, 3))):
        group = cols[start:start + int(size)]
        start += int(size)
        if group.size < 2:
            break
        G[:, group] = 0.0 if rng.random() < 0.2 else G[:, [group[0]]]
    F = dense_f(None, G, [1e-2, 1e-3, 1e-5, 1e-8][seed % 4])
    w = rng.normal(size=p)
    if seed % 3 == 0:
        w[cols[1]] = w[cols[0]]            # a tie inside the first group
    k = int(rng.integers(3, p))
    return F, w, k


def _gain(F, c, keep):
    s = list(keep)
    return float(c[s] @ np.linalg.solve(F[np.ix_(s, s)], c[s]))


def _canonical(keep_mask, group_of, rank_of):
    """Every group prunes one contiguous run of ranks (or nothing)."""
    for g in range(group_of.max() + 1):
        members = np.flatnonzero(group_of == g)
        pruned = np.sort(rank_of[members[~keep_mask[members]]])
        if pruned.size and pruned[-1] - pruned[0] + 1 != pruned.size:
            return False
    return True


def test_duplicate_groups_finds_identical_columns_and_ranks_them_by_value():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(30, 10))
    G[:, [2, 5, 7]] = G[:, [2]]
    G[:, [1, 8]] = 0.0                      # zero gradients: duplicates with a = 0
    G[:, 9] = G[:, 3] * (1 + 1e-6)          # nearly identical: not a group
    F = dense_f(None, G, 1e-5)
    w = np.array([0.3, -1.0, 0.5, 0.1, 0.2, -0.4, 0.9, 0.0, 2.0, 0.7])
    group_of, rank_of = duplicate_groups(F, w)
    groups = sorted(sorted(np.flatnonzero(group_of == g).tolist()) for g in range(group_of.max() + 1))
    assert groups == [[1, 8], [2, 5, 7]]
    g = group_of[2]
    assert [rank_of[j] for j in (5, 7, 2)] == [0, 1, 2]      # w = −0.4, 0.0, 0.5
    assert rank_of[1] == 0 and rank_of[8] == 1
    assert np.all(group_of[[0, 3, 4, 6, 9]] == -1) and g >= 0


def test_large_groups_are_split_into_runs_of_ranks(monkeypatch):
    monkeypatch.setattr(leaps_jit, "GROUP_BITS", 3)
    G = np.random.default_rng(1).normal(size=(20, 9))
    G[:, :7] = G[:, [0]]
    w = np.arange(9, dtype=float)[::-1]
    group_of, rank_of = duplicate_groups(dense_f(None, G, 1e-4), w)
    # seven duplicates sorted by value (columns 6, 5, …, 0) in runs of three, three and one (no group)
    assert group_of[[6, 5, 4]].tolist() == [0, 0, 0] and group_of[[3, 2, 1]].tolist() == [1, 1, 1]
    assert group_of[0] == -1 and rank_of[[6, 5, 4]].tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", range(30))
def test_some_optimum_prunes_a_contiguous_run_of_every_group(seed):
    """The rule itself, by enumeration: the best canonical keep-set is as good as the best keep-set."""
    F, w, k = _instance(seed)
    group_of, rank_of = duplicate_groups(F, w)
    assert group_of.max() >= 0
    c = F @ w
    total = float(w @ c)
    best = best_canonical = -np.inf
    for keep in itertools.combinations(range(w.size), k):
        gain = _gain(F, c, keep)
        best = max(best, gain)
        mask = np.zeros(w.size, dtype=bool)
        mask[list(keep)] = True
        if _canonical(mask, group_of, rank_of):
            best_canonical = max(best_canonical, gain)
    assert best_canonical >= best - 1e-9 * total


@pytest.mark.skipif(not leaps_jit.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("seed", range(40))
def test_search_with_dominance_finds_the_enumerated_optimum(seed):
    F, w, k = _instance(seed)
    c = F @ w
    total = float(w @ c)
    opt = max(_gain(F, c, s) for s in itertools.combinations(range(w.size), k))
    res = leaps_search(F, w, k, dominance=True)
    assert res.info["compiled"] and res.info["duplicate_groups"] >= 1 and res.optimal
    assert res.keep.sum() == k
    value = 0.5 * (total - _gain(F, c, np.flatnonzero(res.keep)))       # recomputed from the returned mask
    assert abs(value - 0.5 * (total - opt)) <= 1e-9 * total
    assert abs(res.value - value) <= 1e-9 * total and res.bound <= res.value + 1e-12 * total


@pytest.mark.skipif(not leaps_jit.AVAILABLE, reason="numba is not installed")
def test_dominance_shrinks_the_tree_and_stopped_searches_stay_honest():
    # An fc1-like block: 12 pixels that are background in every sample (duplicates), the rest inked now and
    # then; few samples, so the curvature is low rank and the λ-sized terms decide between keep-sets.
    rng = np.random.default_rng(3)
    p, n, k = 30, 8, 15
    X = np.full((n, p), -0.42)
    ink = rng.random((n, p)) < np.r_[np.zeros(12), np.linspace(0.01, 0.3, p - 12)]
    X[ink] = rng.normal(size=ink.sum()) + 1.5
    F = dense_f(None, rng.normal(size=(n, 1)) * X, 1e-5)
    w = rng.normal(size=p) * 0.05
    with_rule = leaps_search(F, w, k, dominance=True)
    without = leaps_search(F, w, k, dominance=False)
    assert with_rule.optimal and without.optimal
    assert abs(with_rule.value - without.value) <= 1e-9 * abs(without.value) + 1e-13 * float(w @ F @ w)
    assert with_rule.nodes < without.nodes
    for limit in (5, 50, max(with_rule.nodes // 3, 1)):
        stopped = leaps_search(F, w, k, dominance=True, node_limit=limit)
        assert stopped.bound <= with_rule.value + 1e-12 * float(w @ F @ w)
        assert stopped.value >= with_rule.value - 1e-12 * float(w @ F @ w)


@pytest.mark.skipif(not leaps_jit.AVAILABLE, reason="numba is not installed")
def test_dominance_is_the_default_and_can_be_switched_off(monkeypatch):
    F, w, k = _instance(3)
    assert leaps_search(F, w, k).info["duplicate_groups"] >= 1
    monkeypatch.setattr(exact_leaps, "DUPLICATE_DOMINANCE", False)
    assert leaps_search(F, w, k).info["duplicate_groups"] == 0
    assert leaps_search(F, w, k, deadline=Deadline(None), dominance=True).info["duplicate_groups"] >= 1
