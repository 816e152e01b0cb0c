"""Wanda and SparseGPT backends against direct computations and brute force (small, fast)."""
from __future__ import annotations

import numpy as np
import pytest

from cbs_opt import Problem, solve
from cbs_opt.curvature import DenseCurvature
from solvers.errors import InvalidArgumentError, UnsupportedProblemError
from solvers.sparsegpt import inverse_upper_factor, parse_pattern, sparsegpt_sweep


def _layer(p=10, n=40, rows=3, lam_frac=0.01, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * rng.lognormal(0.0, 0.7, size=p)   # features of different scales
    X[:, 1] += 0.8 * X[:, 0]                                        # and correlated ones
    H = X.T @ X / n
    lam = lam_frac * float(np.mean(np.diag(H)))
    W = rng.normal(size=(rows, p))
    return X, H, lam, W


def _naive_sparsegpt(w, F, pruned_mask):
    """Column by column: zero each pruned weight, re-optimise only the columns to its right."""
    x = w.astype(float).copy()
    p = x.size
    for j in range(p):
        if not pruned_mask[j]:
            continue
        rest = np.arange(j + 1, p)
        d = np.zeros(p)
        d[j] = -x[j]
        if rest.size:
            d[rest] = np.linalg.solve(F[np.ix_(rest, rest)], F[rest, j] * x[j])
        x = x + d
        x[j] = 0.0
    return x


def test_wanda_is_per_row_sort_of_weight_times_activation_norm():
    X, H, lam, W = _layer(p=12, n=30, rows=4, seed=1)
    curv = DenseCurvature(H, lam)
    for row in W:
        prob = Problem(weights=row, curvature=curv, n_prune=5)
        sol = solve(prob, "wanda")
        score = np.abs(row) * np.linalg.norm(X, axis=0)     # the Wanda score |w_j|·‖X_j‖
        assert np.array_equal(sol.pruned, np.sort(np.argsort(score)[:5]))
        assert np.allclose(sol.weights, prob.update(sol.pruned))   # the registry's CBS-U of the mask


def test_sparsegpt_lazy_blocks_equal_column_by_column_obs_sweep():
    X, H, lam, W = _layer(p=11, seed=2)
    F = H + lam * np.eye(11)
    U = inverse_upper_factor(F)
    assert np.allclose(U.T @ U, np.linalg.inv(F))
    rng = np.random.default_rng(0)
    mask = rng.random(W.shape) < 0.5
    ref = np.stack([_naive_sparsegpt(W[r], F, mask[r]) for r in range(W.shape[0])])
    for bs in (1, 3, 4, 11, 64):
        x, pruned = sparsegpt_sweep(W, U, mask=mask, blocksize=bs)
        assert np.array_equal(pruned, mask)
        assert np.allclose(x, ref, atol=1e-10), bs
        assert np.all(x[mask] == 0)


def test_sparsegpt_one_weight_in_first_column_is_obs():
    _, H, lam, W = _layer(p=9, seed=3)
    curv = DenseCurvature(H, lam)
    w = W[0].copy()
    w[0] = 1e-3  # the smallest score w²/U_jj² by far: SparseGPT prunes column 0, where nothing is frozen
    prob = Problem(weights=w, curvature=curv, n_prune=1)
    sol = solve(prob, "sparsegpt", blocksize=9)   # one block: the mask is chosen on the whole row
    assert list(sol.pruned) == [0]
    obs = solve(prob, "obs")
    assert list(obs.pruned) == [0]
    # single-weight OBS: x = w − w_0 F⁻¹e_0/(F⁻¹)_00, the optimal update
    Finv = np.linalg.inv(curv.H)
    expect = w - w[0] * Finv[:, 0] / Finv[0, 0]
    assert np.allclose(sol.info["weights"], expect, atol=1e-12)
    assert np.allclose(sol.weights, expect, atol=1e-12)
    assert np.allclose(obs.weights, expect, atol=1e-12)


def test_sparsegpt_one_weight_mid_row_is_obs_with_earlier_columns_frozen():
    _, H, lam, W = _layer(p=8, seed=4)
    F = H + lam * np.eye(8)
    U = inverse_upper_factor(F)
    w = W[1]
    x, pruned = sparsegpt_sweep(w, U, n_prune=1, blocksize=8)
    j = int(np.argmin(w * w / np.diag(U) ** 2))
    assert np.flatnonzero(pruned[0]).tolist() == [j]
    # brute force: minimise (x−w)ᵀF(x−w) with x_j = 0 and x_i = w_i for i < j
    free = np.arange(j + 1, 8)
    expect = w.copy()
    expect[j] = 0.0
    if free.size:
        expect[free] = w[free] + np.linalg.solve(F[np.ix_(free, free)], F[free, j] * w[j])
    assert np.allclose(x[0], expect, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_sparsegpt_error_is_at_least_its_cbs_u_which_is_at_least_the_optimum(seed):
    _, H, lam, W = _layer(p=10, rows=2, seed=10 + seed)
    curv = DenseCurvature(H, lam)
    for row in W:
        for m in (3, 5, 7):
            prob = Problem(weights=row, curvature=curv, n_prune=m)
            sg = solve(prob, "sparsegpt", blocksize=4)
            best = solve(prob, "enumerate")
            own = sg.info["weights"]
            assert np.all(own[sg.pruned] == 0) and sg.pruned.size == m
            assert sg.info["own_objective"] == pytest.approx(prob.loss_change(own))
            assert sg.info["own_objective"] >= sg.objective - 1e-12       # CBS-U is optimal for the mask
            assert sg.objective >= best.objective - 1e-12                 # the exact optimum is below both
            wanda = solve(prob, "wanda")
            assert wanda.objective >= best.objective - 1e-12


def test_sparsegpt_row_quota_and_layer_selection_counts():
    _, H, lam, W = _layer(p=13, rows=5, seed=5)
    U = inverse_upper_factor(H + lam * np.eye(13))
    counts = np.array([0, 3, 6, 9, 13])
    _, pruned = sparsegpt_sweep(W, U, n_prune=counts, blocksize=4)
    assert pruned.sum(axis=1).tolist() == counts.tolist()
    _, pruned = sparsegpt_sweep(W, U, n_prune=30, blocksize=4, selection="layer")
    assert int(pruned.sum()) == 30
    before = W.copy()
    sparsegpt_sweep(W, U, n_prune=3)
    assert np.array_equal(W, before)  # the input is not modified


def test_sparsegpt_mask_rule_in_one_block_is_a_threshold_on_the_score():
    _, H, lam, W = _layer(p=10, rows=4, seed=8)
    U = inverse_upper_factor(H + lam * np.eye(10))
    score = W * W / np.diag(U) ** 2
    _, pruned = sparsegpt_sweep(W, U, n_prune=17, blocksize=10, selection="layer")   # the paper: whole layer
    assert int(pruned.sum()) == 17 and score[pruned].max() <= score[~pruned].min()
    _, pruned = sparsegpt_sweep(W, U, n_prune=4, blocksize=10)                       # per row
    for r in range(4):
        assert pruned[r].sum() == 4 and score[r, pruned[r]].max() <= score[r, ~pruned[r]].min()


def test_sparsegpt_n_m_pattern():
    _, H, lam, W = _layer(p=12, rows=3, seed=6)
    curv = DenseCurvature(H, lam)
    U = curv.inverse_upper_factor()
    x, pruned = sparsegpt_sweep(W, U, pattern="2:4", blocksize=8)
    assert np.all(pruned.reshape(3, 3, 4).sum(axis=2) == 2)
    assert np.all(x[pruned] == 0)
    _, pruned = sparsegpt_sweep(W, U, pattern="1:4", blocksize=4)     # keep 1 of 4: prune 3
    assert np.all(pruned.reshape(3, 3, 4).sum(axis=2) == 3)
    prob = Problem(weights=W[0], curvature=curv, pattern="2:4")
    sol = solve(prob, "sparsegpt", blocksize=6)   # blocksize rounded down to a multiple of 4
    assert sol.info["pattern"] == "2:4"
    assert np.all(sol.mask.reshape(3, 4).sum(axis=1) == 2)
    # the first group is chosen on the original weights: its 2 smallest scores w²/U_jj²
    first = np.argsort(W[0, :4] ** 2 / np.diag(U)[:4] ** 2, kind="stable")[:2]
    assert set(np.flatnonzero(~sol.mask[:4])) == set(first)
    # later groups see the weights updated by the earlier pruning: compare with the sweep on a given mask
    own, _ = sparsegpt_sweep(W[0], U, mask=~sol.mask[None, :], blocksize=4)
    assert np.allclose(sol.info["weights"], own[0])
    wanda = solve(prob, "wanda")                  # Wanda's N:M variant: per group of 4
    assert np.all(wanda.mask.reshape(3, 4).sum(axis=1) == 2)
    general = Problem(weights=W[0], curvature=curv, groups=np.repeat([0, 1], 6), n_prune=np.array([2, 3]))
    with pytest.raises(UnsupportedProblemError, match="partition"):
        solve(general, "sparsegpt")


def test_bad_arguments_raise_clear_errors():
    _, H, lam, W = _layer(p=6, seed=7)
    U = inverse_upper_factor(H + lam * np.eye(6))
    with pytest.raises(InvalidArgumentError, match="pattern"):
        parse_pattern("2-4")
    with pytest.raises(InvalidArgumentError, match="pattern"):
        parse_pattern((3, 2))
    with pytest.raises(InvalidArgumentError, match="blocksize"):
        sparsegpt_sweep(W, U, n_prune=2, blocksize=0)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        sparsegpt_sweep(W, U)
    with pytest.raises(InvalidArgumentError, match="multiples"):
        sparsegpt_sweep(W, U, pattern="2:4")
    with pytest.raises(InvalidArgumentError, match="positive definite"):
        inverse_upper_factor(np.zeros((3, 3)))
