"""Layer-wise reconstruction pruning (cbs_opt.layerwise): brute force, shared curvature, statistics,
sequential inputs, conv via unfold, and the caller's model left alone. Small and fast."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as tnf
from torch import nn

from cbs_opt.curvature import DenseCurvature
from cbs_opt.damping import Damping
from cbs_opt.errors import InvalidArgumentError, ModelNotSupportedError, UnsupportedProblemError
from cbs_opt.layerwise import (LayerStats, collect_layer_statistics, layer_errors, layer_inputs,
                               prune_layerwise)

import brute
import solvers


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _inputs(n=120, p=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g) * torch.linspace(0.3, 2.0, p)


def _layer_blocks(result, layer):
    return [b for b in result.blocks if b.info["layer"] == layer]


def test_exact_backend_equals_brute_force_under_the_activation_curvature():
    model, x = _mlp(), _inputs()
    result = prune_layerwise(model, x, 0.5, solver="enumerate", n_samples=120, sequential=False,
                             damping=Damping.of_diagonal(0.01))
    X = x.double().numpy()                                   # the first layer's inputs, all 120 samples
    H = X.T @ X / X.shape[0]
    lam = 0.01 * np.mean(np.diag(H))
    F = H + lam * np.eye(7)
    W = model[0].weight.detach().double().numpy()
    blocks = _layer_blocks(result, "0.weight")
    sols = [s for b, s in zip(result.blocks, result.solutions) if b.info["layer"] == "0.weight"]
    for r, (block, sol) in enumerate(zip(blocks, sols)):
        assert np.allclose(block.problem.curvature.H, F, rtol=1e-10, atol=1e-12)
        m = sol.pruned.size
        best_cost, best_set = brute.brute_force(F, W[r], m, "update")
        assert sol.objective == pytest.approx(best_cost, rel=1e-8, abs=1e-12)
        # the row written into the model is CBS-U of the optimal set
        got = result.model[0].weight.detach().double().numpy()[r]
        assert np.allclose(got, block.problem.update(sol.pruned), atol=1e-6)
        assert np.all(got[sol.pruned] == 0)


def test_one_curvature_per_layer_shared_and_factorised_once():
    model, x = _mlp(), _inputs()
    result = prune_layerwise(model, x, 0.5, solver="obs", n_samples=120)
    for layer in ("0.weight", "2.weight", "4.weight"):
        curvs = {id(b.problem.curvature) for b in _layer_blocks(result, layer)}
        assert len(curvs) == 1                                  # shared by identity across the rows
        curv = _layer_blocks(result, layer)[0].problem.curvature
        assert isinstance(curv, DenseCurvature)
        assert curv.n_factorizations == 1                       # every row's OBS scores and CBS-U reused it
    assert len({id(b.problem.curvature) for b in result.blocks}) == 3


def test_dense_curvature_caches_its_factorisations():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 9))
    curv = DenseCurvature(A.T @ A / 30, 1e-3)
    w = rng.normal(size=9)
    Finv = np.linalg.inv(curv.H)

    def check_steps():
        for pruned in ([2], [0, 4, 5, 8], [0, 1, 2, 3, 4, 5, 6]):
            d = curv.constrained_step(np.array(pruned), w)
            kept = np.setdiff1d(np.arange(9), pruned)
            expect = np.linalg.solve(curv.H[np.ix_(kept, kept)], curv.H[np.ix_(kept, pruned)] @ w[pruned])
            assert np.allclose(d[kept], expect, atol=1e-12) and np.allclose(d[pruned], -w[pruned])

    check_steps()                                  # kept-block solves
    assert curv.n_factorizations == 0
    assert np.allclose(curv.solve(w), Finv @ w)
    assert np.allclose(curv.inverse_diagonal(), np.diag(Finv))
    check_steps()                                  # now through the cached inverse when fewer are pruned
    U = curv.inverse_upper_factor()
    assert np.allclose(U.T @ U, Finv) and np.allclose(U, np.triu(U))
    assert curv.n_factorizations == 1
    singular = DenseCurvature(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="singular"):
        singular.inverse_diagonal()
    assert np.allclose(singular.constrained_step(np.array([0]), np.ones(3)), [-1, 0, 0])


def test_statistics_hold_only_xtx_and_count():
    model, x = _mlp(), _inputs(n=96)
    seen_rows = []
    original_add = LayerStats.add

    def spy(self, X):
        seen_rows.append(X.shape[0])
        original_add(self, X)

    LayerStats.add = spy
    try:
        stats = collect_layer_statistics(model, x, n_samples=96, batch_size=32)
    finally:
        LayerStats.add = original_add
    assert seen_rows == [32] * 9                                 # 3 layers × 3 batches, folded in one by one
    for name, p_in in (("0.weight", 7), ("2.weight", 6), ("4.weight", 5)):
        s = stats[name]
        assert not hasattr(s, "__dict__") and set(LayerStats.__slots__) == {"xtx", "count"}
        assert tuple(s.xtx.shape) == (p_in, p_in) and s.xtx.dtype == torch.float64 and s.count == 96
    X = x.double()
    assert torch.allclose(stats["0.weight"].xtx, X.T @ X)
    with torch.no_grad():
        h1 = torch.relu(model[0](x)).double()
    assert torch.allclose(stats["2.weight"].xtx, h1.T @ h1, rtol=1e-5, atol=1e-6)


def test_sequential_uses_pruned_inputs_and_differs_from_one_shot():
    model, x = _mlp(seed=3), _inputs(seed=4)
    seq = prune_layerwise(model, x, 0.6, solver="obs", n_samples=120, sequential=True)
    one = prune_layerwise(model, x, 0.6, solver="obs", n_samples=120, sequential=False)
    with torch.no_grad():
        h_pruned = torch.relu(seq.model[0](x)).double().numpy()   # layer 2's inputs after layer 1 was pruned
        h_dense = torch.relu(model[0](x)).double().numpy()
    H_seq = _layer_blocks(seq, "2.weight")[0].problem.curvature.hessian
    H_one = _layer_blocks(one, "2.weight")[0].problem.curvature.hessian
    assert np.allclose(H_seq, h_pruned.T @ h_pruned / 120, rtol=1e-5, atol=1e-7)
    assert np.allclose(H_one, h_dense.T @ h_dense / 120, rtol=1e-5, atol=1e-7)
    assert not np.allclose(H_seq, H_one, rtol=1e-3)
    # the first layer sees the same inputs either way
    assert torch.equal(seq.masks["0.weight"], one.masks["0.weight"])
    assert not torch.allclose(seq.weights["2.weight"], one.weights["2.weight"])


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(2, 4, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_conv_via_unfold_equals_direct_reconstruction_error():
    model = _ConvNet()
    x = torch.randn(40, 2, 6, 6, generator=torch.Generator().manual_seed(6))
    result = prune_layerwise(model, x, 0.5, solver="obs", n_samples=40, sequential=False)
    W = model.conv.weight.detach().double()
    Wp = result.model.conv.weight.detach().double()
    assert int((Wp == 0).sum()) == int((~result.masks["conv.weight"]).sum())
    y = tnf.conv2d(x.double(), W, stride=2, padding=1)                 # no bias: the rows' outputs only
    yp = tnf.conv2d(x.double(), Wp, stride=2, padding=1)
    direct = float(((y - yp) ** 2).sum() / (y ** 2).sum())
    assert layer_errors(result)["conv.weight"] == pytest.approx(direct, rel=1e-9)
    # the unfolded rows: X·w_r over patches reproduces the convolution output of channel r
    X = layer_inputs(model.conv, x.double())
    assert X.shape == (40 * 9, 2 * 9)
    out = (X @ W.reshape(4, -1).T).reshape(40, 9, 4).permute(0, 2, 1).reshape(40, 4, 3, 3)
    assert torch.allclose(out, y, atol=1e-10)


class _WithModes(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.fc1 = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.bn(self.drop(torch.relu(self.fc1(x)))))


def test_model_and_its_modes_are_untouched():
    model = _WithModes()
    model.train()
    model.bn.eval()                                   # a mixed mode must come back exactly
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(8))
    result = prune_layerwise(model, x, 0.5, solver="update_swap", n_samples=64)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())   # incl. BN running stats
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: m.training for n, m in result.model.named_modules()} == modes
    assert result.model is not model
    # eval mode during calibration: dropout off, so a rerun gives the same statistics and masks
    again = prune_layerwise(model, x, 0.5, solver="update_swap", n_samples=64)
    assert all(torch.equal(result.masks[k], again.masks[k]) for k in result.masks)
    # inplace changes the weights of the given model but still restores its modes
    inplace = prune_layerwise(model, x, 0.5, solver="obs", n_samples=64, inplace=True)
    assert inplace.model is model and {n: m.training for n, m in model.named_modules()} == modes
    assert int((model.fc1.weight == 0).sum()) == int((~inplace.masks["fc1.weight"]).sum())


def test_budgets_uniform_optimal_global():
    model, x = _mlp(seed=9), _inputs(seed=10)
    total = 42 + 30 + 15
    uni = prune_layerwise(model, x, 0.5, solver="enumerate", n_samples=120, sequential=False)
    assert uni.n_pruned == round(0.5 * total) and uni.n_total == total
    counts = [uni.stages[0].budgets[f"0.weight[{r}]"] for r in range(6)]
    assert max(counts) - min(counts) <= 1
    opt = prune_layerwise(model, x, 0.5, solver="enumerate", n_samples=120, sequential=False,
                          allocation="optimal")
    assert opt.n_pruned == uni.n_pruned
    for layer, rows in (("0.weight", 6), ("2.weight", 5), ("4.weight", 3)):
        u = sum(s.objective for b, s in zip(uni.blocks, uni.solutions) if b.info["layer"] == layer)
        o = sum(s.objective for b, s in zip(opt.blocks, opt.solutions) if b.info["layer"] == layer)
        assert o <= u + 1e-12                                      # exact curves, exact split per layer
        assert sum(opt.stages[0].budgets[f"{layer}[{r}]"] for r in range(rows)) == \
            sum(uni.stages[0].budgets[f"{layer}[{r}]"] for r in range(rows))
    glob = prune_layerwise(model, x, 0.5, solver="enumerate", n_samples=120, sequential=False,
                           allocation="global")
    assert glob.n_pruned == uni.n_pruned
    rel = lambda res: sum(layer_errors(res).values())           # noqa: E731 — what "global" minimises
    assert rel(glob) <= rel(uni) * (1 + 1e-6) + 1e-9
    with pytest.raises(InvalidArgumentError, match="sequential=False"):
        prune_layerwise(model, x, 0.5, allocation="global")


def test_sparsegpt_as_published_versus_its_mask_with_cbs_u():
    model, x = _mlp(seed=11), _inputs(seed=12)
    own = prune_layerwise(model, x, 0.5, solver="sparsegpt", n_samples=120, sequential=False, update="backend")
    cbs = prune_layerwise(model, x, 0.5, solver="sparsegpt", n_samples=120, sequential=False)
    ex = prune_layerwise(model, x, 0.5, solver="enumerate", n_samples=120, sequential=False)
    # the damped objective ½(w−x)ᵀF(w−x) each solve minimises (the undamped error in layer_errors may order
    # them differently: the optimum of the damped problem is not the optimum of the undamped one)
    def damped(res, layer, own_weights=False):
        return sum(s.info["own_objective"] if own_weights else s.objective
                   for b, s in zip(res.blocks, res.solutions) if b.info["layer"] == layer)

    for layer in own.masks:
        assert torch.equal(own.masks[layer], cbs.masks[layer])
        assert damped(own, layer, True) >= damped(cbs, layer) - 1e-12 >= damped(ex, layer) - 2e-12
    assert layer_errors(own)["0.weight"] != layer_errors(cbs)["0.weight"]   # different weights were written
    with pytest.raises(UnsupportedProblemError, match="info"):
        prune_layerwise(model, x, 0.5, solver="obs", update="backend", n_samples=120)


def test_structured_budgets_pattern_and_budget_fn():
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(14))
    for solver in ("sparsegpt", "wanda", "update_swap"):
        res = prune_layerwise(model, x, solver=solver, pattern="2:4", n_samples=50)
        for name, mask in res.masks.items():
            assert torch.all(mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2), (solver, name)

    def halves(name, shape):  # prune 1 weight in the first half of each row and all but one in the second
        rows, p = shape
        groups = np.repeat([0, 1], p // 2)
        return groups, np.array([1, p // 2 - 1])

    res = prune_layerwise(model, x, solver="obs", budget_fn=halves, n_samples=50)
    kept = res.masks["0.weight"]
    assert torch.all((~kept[:, :4]).sum(1) == 1) and torch.all((~kept[:, 4:]).sum(1) == 3)
    solvers.register("total_only_test", lambda problem, *, seed, time_limit, progress: None,
                     budgets=("total",))
    try:
        with pytest.raises(UnsupportedProblemError, match="partition"):   # refused before any calibration
            prune_layerwise(model, x, solver="total_only_test", pattern="2:4", n_samples=50)
    finally:
        solvers.unregister("total_only_test")


def test_exact_on_small_rows_heuristic_on_large_by_layer():
    model, x = _mlp(seed=15), _inputs(seed=16)
    res = prune_layerwise(model, x, 0.5, n_samples=120,
                          solver={"0.weight": "update_swap", "2.weight": "miqp", "4.weight": "enumerate"})
    used = {b.info["layer"]: s.solver for b, s in zip(res.blocks, res.solutions)}
    assert used == {"0.weight": "update_swap", "2.weight": "miqp", "4.weight": "enumerate"}
    assert all(s.status == "optimal" for b, s in zip(res.blocks, res.solutions) if b.info["layer"] != "0.weight")
    auto = prune_layerwise(model, x, 0.5, n_samples=120, solver="auto")   # every row here is small: miqp
    assert {s.solver for s in auto.solutions} == {"miqp"} and all(s.status == "optimal" for s in auto.solutions)
    # the exact rows agree with the enumeration on the same (sequentially pruned) inputs
    assert [s.objective for s in auto.solutions[6:]] == pytest.approx([s.objective for s in res.solutions[6:]],
                                                                      rel=1e-7, abs=1e-12)


def test_bad_arguments():
    model, x = _mlp(), _inputs()
    with pytest.raises(InvalidArgumentError, match="allocation"):
        prune_layerwise(model, x, 0.5, allocation="best")
    with pytest.raises(InvalidArgumentError, match="update"):
        prune_layerwise(model, x, 0.5, update="sometimes")
    with pytest.raises(ValueError, match="sparsity"):
        prune_layerwise(model, x, 1.5)
    with pytest.raises(InvalidArgumentError, match="solver"):
        prune_layerwise(model, x, 0.5, solver={"0.weight": "obs"})
    emb = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2))
    with pytest.raises(ModelNotSupportedError, match="Embedding"):
        prune_layerwise(emb, torch.zeros(3, dtype=torch.long), 0.5, params=["0.weight"])
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ModelNotSupportedError, match="groups"):
        prune_layerwise(grouped, torch.randn(2, 4, 5, 5), 0.5)
    with pytest.raises(TypeError, match="model"):
        prune_layerwise("model", x, 0.5)


def test_data_as_tensor_pair_or_loader_gives_the_same_statistics():
    model, x = _mlp(), _inputs(n=48)
    y = torch.zeros(48, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    a = collect_layer_statistics(model, x, n_samples=48)
    b = collect_layer_statistics(model, (x, y), n_samples=48)
    c = collect_layer_statistics(model, loader, n_samples=48, batch_size=7)
    for name in a:
        assert a[name].count == b[name].count == c[name].count == 48
        assert torch.allclose(a[name].xtx, b[name].xtx) and torch.allclose(a[name].xtx, c[name].xtx)


def test_rows_of_a_layer_share_one_eigendecomposition_for_the_swap_search():
    model, x = _mlp(seed=17), _inputs(seed=18)
    res = prune_layerwise(model, x, 0.5, solver="update_swap", n_samples=120, sequential=False,
                          params=["0.weight"])
    curv = res.blocks[0].problem.curvature
    e, V = curv.eigh()
    assert np.allclose((V * e) @ V.T, curv.H) and curv.eigh()[0] is e        # cached, one per layer
    exact = prune_layerwise(model, x, 0.5, solver="enumerate", n_samples=120, sequential=False,
                            params=["0.weight"])
    for s, t in zip(res.solutions, exact.solutions):                          # 7-weight rows: swaps find the optimum
        assert s.objective == pytest.approx(t.objective, rel=1e-9, abs=1e-12)


def _benchmark_module():
    """benchmarks/layerwise.py by path (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "layerwise.py"
    spec = importlib.util.spec_from_file_location("_layerwise_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _ConvBN(nn.Module):
    """A stem whose rows (1·3·3 = 9 weights) are not a multiple of 4, BatchNorm, a conv, a classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x.reshape(-1, 1, 6, 6))))
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_benchmark_network_conv_with_nm_params_and_extra_metrics():
    lw = _benchmark_module()
    model = _ConvBN().eval()
    x = torch.randn(40, 36, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def out_norm(m):
        with torch.no_grad():
            return float(m(x).norm())

    def count(m):
        calls.append(m)
        return float(len(calls))

    nm = ["conv.weight", "fc.weight"]   # the stem's rows (9 weights) cannot take 2:4
    recs = lw.benchmark_network("tiny", model, x, out_norm, metric="norm", sparsities=(0.5,), patterns=("2:4",),
                                methods=("magnitude", "sparsegpt", "ours"), n_samples=40, pattern_params=nm,
                                extra_metrics={"calls": count}, log=lambda line: None)
    assert [(r["budget"], r["method"]) for r in recs] == [(b, m) for b in ("0.50", "2:4")
                                                          for m in ("magnitude", "sparsegpt", "ours")]
    assert all(set(r["layer_errors"]) == {"stem.weight", "conv.weight", "fc.weight"} for r in recs[:3])
    assert all(set(r["layer_errors"]) == set(nm) for r in recs[3:])
    assert recs[0]["dense_calls"] == 1.0 and [r["calls"] for r in recs] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # every pruned model handed to the metric is a copy: the caller's model is unchanged
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(m is not model for m in calls[1:])
    # ours: every row (9, 36 and 36 weights <= exact_max_p = 48) goes to miqp and is proven optimal at 0.5;
    # at 2:4 the swap search (no proof) and the stem's 4 rows are not pruned
    assert recs[2]["proven_optimal"] == recs[2]["rows"] == 4 + 4 + 3
    assert recs[5]["proven_optimal"] == 0 and recs[5]["rows"] == 4 + 3
    table = lw.markdown(recs, "norm", ["calls"])
    assert "| rel. err. stem |" in table and "| 2:4 | ours |" in table
    assert all(line.count("–") == 1 for line in table.splitlines() if line.startswith("| 2:4"))
    layers = lw.markdown_layers(recs, "2:4")
    assert "stem" not in layers and layers.count("**") == 2 * 2
    lines = lw.check_targets(recs, "norm", errors=False)
    assert len(lines) == 2 * 2 and not any("per-layer" in line for line in lines)
