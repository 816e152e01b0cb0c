"""Node-level perspective oracles of best-first search: the split, and the support form of the cut.

The support form (through ``R = BᵀB``, an ``|s| × |s|`` system on the kept support) must give the same value
and tangent as the dual form (an ``(rows of B)²`` system) and as the definition of ``φ`` solved directly;
every tangent must stay below the true cost of every keep-set (checked by enumeration).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from brute import dense_f, update_cost
from solvers import exact_node
from solvers.exact_node import NodeReducer, _oracle_from_arrays, _split


def _phi_by_definition(R, d, w, z):
    """min_x ½(x−w)ᵀR(x−w) + ½Σ d_i(x_i²/z_i − 2x_i w_i + w_i²), x_i = 0 where z_i = 0 (a linear solve)."""
    s = np.flatnonzero(z > 0)
    x = np.zeros_like(w)
    if s.size:
        x[s] = np.linalg.solve(R[np.ix_(s, s)] + np.diag(d[s] / z[s]), (R @ w)[s] + d[s] * w[s])
    r = x - w
    return 0.5 * r @ R @ r + 0.5 * np.sum(d * w * w) + 0.5 * np.sum(d[s] * (x[s] ** 2 / z[s] - 2 * x[s] * w[s]))


def _instance(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 16))
    G = rng.normal(size=(int(rng.integers(1, 2 * n)), n))
    if seed % 3 == 0:
        G[:, 1] = G[:, 0]                 # duplicate columns
    if seed % 4 == 1:
        G[:, -1] = 0.0                    # a zero-gradient weight
    S = dense_f(None, G, [1e-2, 1e-5, 1e-8][seed % 3])
    w = rng.normal(size=n)
    return S, w, rng


@pytest.mark.parametrize("seed", range(30))
def test_support_form_equals_dual_form_and_definition(seed):
    S, w, rng = _instance(seed)
    B, d, shift, R_split = _split(S, w)
    assert B is not None and np.all(d > 0) and shift == pytest.approx(d.min())
    R = S - np.diag(d)
    assert np.array_equal(R_split, R)
    assert np.allclose(B.T @ B, R, atol=1e-9 * np.abs(S).max())
    assert np.linalg.eigvalsh(R)[0] >= -1e-10 * np.abs(S).max()    # S − D stays positive semidefinite
    dual, support = _oracle_from_arrays(B, d, w), _oracle_from_arrays(B, d, w, R)
    total = 0.5 * w @ S @ w
    points = [rng.uniform(size=w.size), (rng.uniform(size=w.size) < 0.3).astype(float), np.zeros(w.size),
              np.where(rng.uniform(size=w.size) < 0.5, 0.0, rng.uniform(size=w.size))]
    for z in points:
        v1, g1 = dual.cut(z)
        v2, g2 = support.cut(z)
        ref = _phi_by_definition(R, d, w, z)
        scale = max(abs(ref), 1e-6 * total)
        assert abs(v1 - ref) <= 1e-8 * scale and abs(v2 - ref) <= 1e-8 * scale
        assert np.allclose(g1, g2, rtol=1e-6, atol=1e-9 * max(np.abs(g1).max(), 1e-300))


@pytest.mark.parametrize("seed", range(12))
def test_node_tangents_never_exceed_the_true_cost(seed):
    """Every tangent of a node problem (support form) is ≤ the cost of every keep-set of the node, by enumeration."""
    rng = np.random.default_rng(50 + seed)
    p = int(rng.integers(5, 10))
    G = rng.normal(size=(int(rng.integers(2, 2 * p)), p))
    if seed % 2:
        G[:, 1:3] = G[:, [0]]
    F = dense_f(None, G, [1e-3, 1e-6, 1e-8][seed % 3])
    w = rng.normal(size=p)
    kept, pruned = np.array([0]), np.array([p - 1])
    free = np.arange(1, p - 1)
    node = NodeReducer(F, w).reduce(kept, pruned, free)
    assert node is not None and node.oracle is not None and node.oracle.R is not None
    n_more = int(rng.integers(1, free.size))
    costs = {}
    for extra in itertools.combinations(range(free.size), n_more):
        keep = np.concatenate([kept, free[list(extra)]])
        costs[extra] = update_cost(F, w, np.setdiff1d(np.arange(p), keep))
    for _ in range(5):
        zbar = rng.uniform(size=free.size)
        value, grad = node.oracle.cut(zbar)
        for extra, cost in costs.items():
            z = np.zeros(free.size)
            z[list(extra)] = 1.0
            tangent = node.c0 + value + grad @ (z - zbar)
            assert tangent <= cost + 1e-9 * max(abs(cost), 1e-12) + 1e-13 * (w @ F @ w)


def test_split_falls_back_to_eigh_when_the_factorisation_fails(monkeypatch):
    S, w, _ = _instance(4)
    B0, d0, _, _ = _split(S, w)
    monkeypatch.setattr(exact_node, "_potrf", lambda *a, **k: (None, 1))
    B, d, _, _ = _split(S, w)
    assert np.array_equal(d, d0)
    assert np.allclose(B.T @ B, S - np.diag(d), atol=1e-9 * np.abs(S).max())
