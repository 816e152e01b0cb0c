"""cbs_opt.prune: masks vs zeros, the optimal budget split (vs enumeration), stages, inplace, errors."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import solvers
from cbs_opt import prune
from cbs_opt.fisher import build_blocks
from cbs_opt.prune import sparsity_schedule


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2, bias=False))


def dataset(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_zeros_are_masks(result):
    params = dict(result.model.named_parameters())
    for name, mask in result.masks.items():
        assert mask.dtype == torch.bool and mask.shape == params[name].shape
        assert torch.equal(params[name] != 0, mask), name
        assert torch.equal(result.weights[name], params[name].detach())


@pytest.mark.parametrize("solver", ["magnitude", "obs", "enumerate", "greedy_swap"])
def test_zeros_are_exactly_the_masks_and_input_untouched(solver):
    model = tiny()
    before = state(model)
    res = prune(model, dataset(), 0.5, solver=solver, n_samples=40, blocks="model")
    assert res.model is not model
    for k, v in model.state_dict().items():  # bit-for-bit untouched
        assert torch.equal(v, before[k])
    assert_zeros_are_masks(res)
    assert res.n_total == 12 + 6 and res.n_pruned == 9 and res.sparsity == 0.5
    # biases are not selected and not touched
    assert torch.equal(res.model[0].bias, model[0].bias)


def test_one_block_matches_direct_solve_and_update():
    model = tiny()
    x, y = dataset()
    res = prune(model, (x, y), 0.5, solver="enumerate", n_samples=40, damping=1e-3, refits=0)
    (block,) = build_blocks(model, (x, y), n_samples=40)
    ref = solvers.solve(block.problem.with_n_prune(9), solver="enumerate")
    np.testing.assert_array_equal(res.solutions[0].pruned, ref.pruned)
    assert res.objective == pytest.approx(ref.objective)
    flat = torch.cat([res.weights["0.weight"].reshape(-1), res.weights["2.weight"].reshape(-1)]).double()
    np.testing.assert_allclose(flat.numpy(), ref.weights, rtol=1e-5, atol=1e-6)  # CBS-U written (float32)
    # update=False: survivors keep their original values
    plain = prune(model, (x, y), 0.5, solver="enumerate", n_samples=40, update=False, damping=1e-3)
    for n, p in model.named_parameters():
        if n in plain.masks:
            m = plain.masks[n]
            assert torch.equal(plain.weights[n][m], p.detach()[m])
            assert not torch.equal(res.weights[n][m], p.detach()[m])


def brute_best_split(blocks, total):
    """min over all splits of Σ per-block enumerated optima (independent of the allocation module)."""
    best_per = []
    for b in blocks:
        p = b.size
        best_per.append([min(b.problem.update_cost(list(P)) for P in itertools.combinations(range(p), m))
                         if m else b.problem.update_cost([]) for m in range(p + 1)])
    best = np.inf
    for split in itertools.product(*[range(b.size + 1) for b in blocks]):
        if sum(split) == total:
            best = min(best, sum(c[m] for c, m in zip(best_per, split)))
    return best


@pytest.mark.parametrize("blocks", ["layer", "row"])
def test_budget_split_is_optimal_on_block_diagonal_fisher(blocks):
    model = tiny(3)
    data = dataset(30, seed=5)
    bl = build_blocks(model, data, n_samples=30, blocks=blocks, damping=1e-2)
    total = int(round(0.6 * 18))
    res = prune(model, data, 0.6, solver="enumerate", n_samples=30, blocks=blocks, damping=1e-2)
    ref = brute_best_split(bl, total)
    assert res.n_pruned == total
    assert res.objective == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert res.stages[0].allocation.exact
    # a uniform ratio split is clearly worse on this instance (about twice the cost)
    uni = prune(model, data, 0.6, solver="enumerate", n_samples=30, blocks=blocks, damping=1e-2,
                allocation="uniform")
    assert uni.objective > 1.5 * res.objective
    assert_zeros_are_masks(res)


def test_grid_curves_on_larger_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    x, y = torch.randn(50, 10), torch.randint(0, 3, (50,))
    res = prune(model, (x, y), 0.7, solver="obs", n_samples=50, blocks="layer", curve_points=3)
    assert res.n_pruned == round(0.7 * 104) and not res.stages[0].allocation.exact
    assert_zeros_are_masks(res)
    assert sum(res.stages[0].budgets.values()) == res.n_pruned


def test_multistage_keeps_pruned_weights_pruned():
    model = tiny(1)
    x, y = dataset(60)
    res = prune(model, (x, y), 0.8, solver="obs", n_samples=60, stages=3, schedule="linear")
    assert [round(s.sparsity, 4) for s in res.stages] == [round(0.8 / 3, 4), round(1.6 / 3, 4), 0.8]
    counts = [s.n_pruned for s in res.stages]
    assert counts == sorted(counts) and counts[-1] == round(0.8 * 18)
    assert_zeros_are_masks(res)
    # the last stage's problem is over the survivors of stage 2 only
    assert sum(b.size for b in res.blocks) == 18 - res.stages[1].n_pruned
    assert sum(b.n_fixed for b in res.blocks) == res.stages[1].n_pruned


def test_schedules():
    geo = sparsity_schedule(0.96, 2)
    assert geo == pytest.approx([0.8, 0.96])  # density 0.2, then 0.04
    assert sparsity_schedule(0.9, 1) == [0.9]
    assert sparsity_schedule(0.5, 2, "cubic") == pytest.approx([0.5 * (1 - 0.125), 0.5])
    assert sparsity_schedule(0.5, 2, [0.2, 0.5]) == [0.2, 0.5]
    with pytest.raises(ValueError, match="end at"):
        sparsity_schedule(0.5, 2, [0.2, 0.4])
    with pytest.raises(ValueError, match="schedule"):
        sparsity_schedule(0.5, 2, "exponential")


def test_inplace_and_torch_prune_attach():
    model = tiny(2)
    data = dataset()
    res = prune(model, data, 0.5, solver="obs", n_samples=40, inplace=True, attach="torch_prune")
    assert res.model is model
    assert hasattr(model[0], "weight_orig") and hasattr(model[0], "weight_mask")
    assert torch.equal(model[0].weight_mask.bool(), res.masks["0.weight"])
    assert torch.equal(model[0].weight != 0, res.masks["0.weight"])
    out = model(data[0])  # the reparametrised model runs
    assert out.shape == (40, 2)


def test_sparsity_zero_is_a_copy():
    model = tiny()
    res = prune(model, dataset(), 0.0, solver="magnitude")
    assert res.n_pruned == 0 and all(m.all() for m in res.masks.values())
    assert all(torch.equal(a, b) for a, b in zip(res.model.state_dict().values(), model.state_dict().values()))


def test_errors():
    model = tiny()
    data = dataset()
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            prune(model, data, bad, solver="magnitude")
    with pytest.raises(TypeError, match="sparsity"):
        prune(model, data, "half", solver="magnitude")
    with pytest.raises(ValueError, match="no parameters selected"):
        prune(nn.Sequential(nn.LayerNorm(4)), data, 0.5, solver="magnitude")
    with pytest.raises(ValueError, match="data is empty"):
        prune(model, [], 0.5, solver="magnitude")
    with pytest.raises(ValueError, match="data is empty"):
        prune(model, iter([]), 0.5, solver="magnitude")
    with pytest.raises(ValueError, match="device"):
        prune(model, data, 0.5, solver="magnitude", device="meta")
    with pytest.raises(solvers.UnknownSolverError):
        prune(model, data, 0.5, solver="nope")
    with pytest.raises(TypeError, match="unknown option"):
        prune(model, data, 0.5, solver="magnitude", solver_options={"rho": 3})
    with pytest.raises(ValueError, match="stages"):
        prune(model, data, 0.5, solver="magnitude", stages=0)
    with pytest.raises(ValueError, match="attach"):
        prune(model, data, 0.5, solver="magnitude", attach="hooks")
    with pytest.raises(ValueError, match="'nope'"):
        prune(model, data, 0.5, solver="magnitude", params=["nope"])


def test_dataloader_input_equals_tensor_pair():
    model = tiny(4)
    x, y = dataset(24)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    a = prune(model, loader, 0.5, solver="obs", n_samples=24, blocks="layer")
    b = prune(model, (x, y), 0.5, solver="obs", n_samples=24, blocks="layer")
    for n in a.masks:
        assert torch.equal(a.masks[n], b.masks[n]) and torch.equal(a.weights[n], b.weights[n])


def test_selection_objective_without_update_is_the_zeroed_optimum():
    model = tiny(5)
    x, y = dataset()
    res = prune(model, (x, y), 0.5, solver="enumerate", objective="selection", update=False, n_samples=40, damping=1e-3)
    (block,) = build_blocks(model, (x, y), n_samples=40, objective="selection")
    ref = solvers.solve(block.problem.with_n_prune(9), solver="enumerate")
    assert res.solutions[0].objective_kind == "selection"
    np.testing.assert_array_equal(res.solutions[0].pruned, ref.pruned)
    flat = torch.cat([res.weights["0.weight"].reshape(-1), res.weights["2.weight"].reshape(-1)]).double()
    np.testing.assert_array_equal(flat.numpy(), block.problem.zeroed(ref.pruned).astype(np.float32))


# -- issue 10: defaults, damping rule, selection, BatchNorm, modes ------------------------------------
def bn_convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


def image_data(n=80, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_batchnorm_model_left_in_train_mode_prunes_and_comes_back_in_train_mode():
    model = bn_convnet().train()
    before = state(model)
    res = prune(model, image_data(), 0.5, n_samples=40, calibration=40)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN buffers untouched
    assert res.model.training and all(m.training for m in res.model.modules())  # the caller's modes
    assert_zeros_are_masks(res)
    assert res.n_pruned == round(0.5 * (27 + 144))
    # BatchNorm statistics were re-estimated on the pruned network (on by default with BatchNorm) ...
    assert not torch.equal(res.model[1].running_var, model[1].running_var)
    # ... and can be switched off: then the buffers are the caller's
    off = prune(model, image_data(), 0.5, n_samples=40, calibration=40, recalibrate_bn=False)
    assert torch.equal(off.model[1].running_var, model[1].running_var)


def test_dropout_model_same_masks_on_two_runs_and_mode_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    data = dataset(60)
    a = prune(model, data, 0.6, solver="obs", damping="relative:1e-2", n_samples=30)
    b = prune(model, data, 0.6, solver="obs", damping="relative:1e-2", n_samples=30)
    for n in a.masks:
        assert torch.equal(a.masks[n], b.masks[n]) and torch.equal(a.weights[n], b.weights[n])
    assert model.training and a.model.training and a.model[2].training


def test_relative_damping_is_invariant_to_rescaling_the_loss():
    model = tiny(6)
    data = dataset(50, seed=3)
    ce = nn.functional.cross_entropy
    kw = dict(solver="greedy_swap", damping="relative:1e-2", n_samples=50, blocks="layer")
    a = prune(model, data, 0.6, loss=ce, **kw)
    b = prune(model, data, 0.6, loss=lambda out, y: 10.0 * ce(out, y), **kw)
    for n in a.masks:
        assert torch.equal(a.masks[n], b.masks[n])
        torch.testing.assert_close(a.weights[n], b.weights[n], rtol=1e-4, atol=1e-6)
    # each block's λ is α times its own mean Fisher diagonal, so it scales with the loss²
    for ba, bb in zip(a.blocks, b.blocks):
        assert bb.problem.damping == pytest.approx(100.0 * ba.problem.damping, rel=1e-4)
        assert ba.problem.damping == pytest.approx(1e-2 * ba.info["mean_diagonal"])


def test_selection_picks_the_lowest_calibration_score_and_none_takes_the_first():
    model = tiny(7)
    x, y = dataset(200, seed=4)
    res = prune(model, (x, y), 0.6, solver=["magnitude", "obs"], damping=[1e-3, "relative:1e-1"],
                n_samples=60, calibration=100, select="loss", select_budget=None)
    choice = res.stages[0].choice
    scores = dict(choice["scores"])
    assert len(scores) == 4 and choice["score"] == min(scores.values())
    assert choice["candidate"] == min(scores, key=scores.get)
    # the score is the true loss on the held-out samples: recompute it for the candidate taken alone
    # (its CBS-U at the chosen damping) from a fresh prune() that draws the same Fisher sample
    first = prune(model, (x, y), 0.6, solver="magnitude", damping=1e-3, n_samples=60, calibration=100,
                  select=None)
    assert first.stages[0].choice["candidate"].startswith("magnitude")
    with pytest.raises(ValueError, match="select"):
        prune(model, (x, y), 0.6, select="median")


def test_select_best_budget_and_order():
    from cbs_opt.selection import select_best
    import time
    calls = []

    def evaluate(c):
        calls.append(c)
        time.sleep(0.01)
        return {"a": 3.0, "b": 1.0, "c": 2.0}[c], c.upper()

    full = select_best(["a", "b", "c"], evaluate)
    assert (full.best, full.score, full.payload, full.skipped) == ("b", 1.0, "B", 0)
    calls.clear()
    cut = select_best(["a", "b", "c"], evaluate, budget=0.0)
    assert calls == ["a"] and cut.best == "a" and cut.skipped == 2


def test_sparsity_that_leaves_a_tensor_empty_is_refused_with_the_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16, bias=False), nn.ReLU(), nn.Linear(16, 3, bias=False))  # 208 weights
    data = (torch.randn(30, 10), torch.randint(0, 3, (30,)))
    with pytest.raises(ValueError, match=r"prunes 208 of 208 weights.*largest usable sparsity"):
        prune(model, data, 0.999, solver="magnitude")
    res = prune(model, data, 206 / 208, solver="magnitude", damping=1e-3, n_samples=30)  # two left: allowed
    assert res.n_pruned == 206


def test_shuffled_loader_order_is_the_callers_and_pairs_are_drawn_under_seed():
    model = tiny(8)
    x, y = dataset(60, seed=6)
    ds = torch.utils.data.TensorDataset(x, y)

    def loader(gen_seed):
        return torch.utils.data.DataLoader(ds, batch_size=10, shuffle=True,
                                           generator=torch.Generator().manual_seed(gen_seed))

    kw = dict(solver="obs", damping=1e-3, n_samples=20, blocks="model")
    a, b = prune(model, loader(0), 0.5, **kw), prune(model, loader(0), 0.5, **kw)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)  # same loader order: same masks
    p1, p2 = prune(model, (x, y), 0.5, seed=3, **kw), prune(model, (x, y), 0.5, seed=3, **kw)
    assert all(torch.equal(p1.masks[n], p2.masks[n]) for n in p1.masks)
    assert "loader's order" in prune.__doc__


def test_curves_of_a_search_solver_use_exact_small_block_curves_and_one_solve_per_block():
    from cbs_opt.prune import curve_solver_for
    assert curve_solver_for("update_swap", 16) == "miqp" and curve_solver_for("update_swap", 500) == "obs"
    assert curve_solver_for("greedy_swap", 16) == "greedy_swap"
    calls = []

    @solvers.register("counting_update_swap", objectives=("update",))
    def counting(problem, *, seed, time_limit, progress):
        calls.append(problem.p)
        return solvers.backends()["update_swap"].func(problem, seed=seed, time_limit=time_limit,
                                                      progress=progress)

    try:
        model = tiny(3)
        data = dataset(30, seed=5)
        res = prune(model, data, 0.6, solver="counting_update_swap", n_samples=30, blocks="row", damping=1e-2)
        assert len(calls) == len(res.blocks)  # the curves did not call the search
        bl = build_blocks(model, data, n_samples=30, blocks="row", damping=1e-2)
        ref = brute_best_split(bl, int(round(0.6 * 18)))
        assert sum(b.problem.update_cost(s.pruned) for b, s in zip(res.blocks, res.solutions)) \
            == pytest.approx(ref, rel=1e-9, abs=1e-12)  # exact curves + exact split, and the search is exact here
    finally:
        from solvers.registry import unregister
        unregister("counting_update_swap")


def test_multistage_with_batchnorm_and_default_candidates():
    model = bn_convnet(1).eval()
    res = prune(model, image_data(120), 0.7, stages=2, n_samples=40, calibration=40)
    assert len(res.stages) == 2 and res.n_pruned == round(0.7 * 171)
    assert all("candidate" in st.choice for st in res.stages)
    assert not res.model.training
    assert_zeros_are_masks(res)


def test_calibration_scorer_is_the_true_loss_or_accuracy_and_keeps_modes():
    from cbs_opt.selection import CalibrationScorer
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3)).train()
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    loss = CalibrationScorer(x, y, metric="loss", batch_size=7)(model)
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    assert loss == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5)
    acc = CalibrationScorer(x, y, metric="accuracy")(model)
    assert acc == pytest.approx(-100.0 * float((out.argmax(1) == y).float().mean()), abs=1e-4)
    assert model.training and model[1].training
    with pytest.raises(ValueError, match="metric"):
        CalibrationScorer(x, y, metric="f1")
