"""Independent brute-force references for the tests (no cbs-opt code used here).

The update cost is solved as a least-squares problem through a square root of F,
the selection cost as a plain quadratic form; subsets by itertools.
"""
from __future__ import annotations

import itertools

import numpy as np


def dense_f(weights, grads=None, damping=0.0, hessian=None):
    if hessian is not None:
        return np.asarray(hessian, float) + damping * np.eye(len(weights))
    G = np.asarray(grads, float)
    return G.T @ G / G.shape[0] + damping * np.eye(G.shape[1])


def sqrt_psd(F):
    vals, vecs = np.linalg.eigh(F)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def update_cost(F, w, pruned, gradient=None):
    """min_x  ḡᵀ(x−w) + ½(x−w)ᵀF(x−w)  s.t. x_P = 0."""
    p = len(w)
    pruned = list(pruned)
    kept = [i for i in range(p) if i not in pruned]
    if gradient is None:
        # ½‖F^{1/2}(x − w)‖² with x_P = 0: least squares in x_K.
        R = sqrt_psd(F)
        if kept:
            xk = np.linalg.lstsq(R[:, kept], R @ w, rcond=None)[0]
        x = np.zeros(p)
        x[kept] = xk if kept else 0.0
        d = x - w
        return 0.5 * d @ F @ d
    # with a gradient: the KKT system of the equality-constrained QP (F assumed positive definite)
    d = np.zeros(p)
    d[pruned] = -np.asarray(w)[pruned]
    if kept:
        FKK = F[np.ix_(kept, kept)]
        rhs = -(F[np.ix_(kept, pruned)] @ d[pruned] + gradient[kept])
        d[kept] = np.linalg.solve(FKK, rhs)
    return gradient @ d + 0.5 * d @ F @ d


def selection_cost(F, w, pruned, gradient=None):
    s = np.zeros(len(w))
    s[list(pruned)] = np.asarray(w)[list(pruned)]
    value = 0.5 * s @ F @ s
    if gradient is not None:
        value -= gradient @ s
    return value


def brute_force(F, w, m, kind, gradient=None):
    """(best cost, best subset) over all subsets of size m."""
    cost = update_cost if kind == "update" else selection_cost
    best = (np.inf, None)
    for subset in itertools.combinations(range(len(w)), m):
        c = cost(F, w, subset, gradient)
        if c < best[0] - 1e-15:
            best = (c, subset)
    return best


def partition_sets(groups, counts):
    """Every pruned set with exactly ``counts[g]`` indices from each group ``g`` (itertools only)."""
    groups = [int(g) for g in groups]
    members = [[i for i, g in enumerate(groups) if g == k] for k in range(len(counts))]
    per_group = [itertools.combinations(mem, int(c)) for mem, c in zip(members, counts)]
    for choice in itertools.product(*per_group):
        yield tuple(sorted(i for part in choice for i in part))


def brute_force_partition(F, w, groups, counts, kind, gradient=None):
    """(best cost, best subset) over every pruned set with exactly counts[g] indices in group g."""
    cost = update_cost if kind == "update" else selection_cost
    best = (np.inf, None)
    for subset in partition_sets(groups, counts):
        c = cost(F, w, subset, gradient)
        if c < best[0] - 1e-15:
            best = (c, subset)
    return best
