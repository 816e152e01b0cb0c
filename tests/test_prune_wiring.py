"""prune() with structured budgets, the layer-wise curvature and executors: the masks a user gets."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from cbs_opt import prune
from cbs_opt.errors import InvalidArgumentError


class TinyNet(nn.Module):
    """A conv (in×kh×kw = 2·2·2 = 8 per output channel), then two Linear layers (rows of 32 and 12)."""

    def __init__(self, odd: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 2)
        self.fc1 = nn.Linear(4 * 3 * 3, 12)
        self.fc2 = nn.Linear(12, 3 if not odd else 3)
        self.head = nn.Linear(3, 3) if odd else None  # rows of 3: do not divide into groups of 4

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        out = self.fc2(torch.relu(self.fc1(h)))
        return self.head(out) if self.head is not None else out


def data(n=160):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, 4, 4, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1, 0, 0] > 0).long()
    return x, y


def groups_of(mask: torch.Tensor, m: int) -> np.ndarray:
    return (~mask.reshape(mask.shape[0], -1).numpy()).reshape(mask.shape[0], -1, m).sum(axis=2)


@pytest.mark.parametrize("pattern, stages, blocks", [("2:4", 1, "model"), ("1:4", 2, "row"), ("2:4", 2, "layer")])
def test_pattern_masks_are_exact_n_m(pattern, stages, blocks):
    n, m = map(int, pattern.split(":"))
    res = prune(TinyNet(), data(), pattern=pattern, solver="obs", damping=1e-3, blocks=blocks, stages=stages,
                n_samples=80, select=None)
    assert res.sparsity == pytest.approx((m - n) / m)
    for name, mask in res.masks.items():
        assert np.all(groups_of(mask, m) == m - n), name  # exactly M−N pruned in every group of M
        assert torch.all(res.weights[name][~mask] == 0)


def test_pattern_and_a_disagreeing_sparsity_are_refused():
    with pytest.raises(InvalidArgumentError, match="implies sparsity 0.5"):
        prune(TinyNet(), data(), 0.3, pattern="2:4", solver="obs")
    with pytest.raises(InvalidArgumentError, match="sparsity is required"):
        prune(TinyNet(), data(), solver="obs")
    with pytest.raises(InvalidArgumentError, match="not both"):
        prune(TinyNet(), data(), pattern="2:4", balanced="row", solver="obs")


def test_layers_that_do_not_fit_the_pattern_stay_dense_with_a_warning_or_are_refused_when_named():
    model = TinyNet(odd=True)
    with pytest.warns(UserWarning, match="leaving head.weight dense"):
        res = prune(model, data(), pattern="2:4", solver="magnitude", n_samples=60, select=None)
    assert "head.weight" not in res.masks
    with pytest.raises(InvalidArgumentError, match="params names head.weight"):
        prune(model, data(), pattern="2:4", solver="magnitude", params=["fc1.weight", "head.weight"])


def test_balanced_rows_prune_the_same_count_in_every_row():
    res = prune(TinyNet(), data(), 0.5, balanced="row", solver="greedy_swap", damping=1e-3, blocks="row",
                n_samples=80, select=None)
    for name, mask in res.masks.items():
        rows = (~mask.reshape(mask.shape[0], -1)).sum(dim=1)
        assert torch.all(rows == round(0.5 * mask[0].numel())), name


def test_exact_row_solves_under_2_4_match_enumeration():
    kwargs = dict(pattern="2:4", blocks="row", damping=1e-3, n_samples=60, select=None, params=["conv.weight"])
    exact = prune(TinyNet(), data(), solver="miqp", **kwargs)
    brute = prune(TinyNet(), data(), solver="enumerate", **kwargs)
    assert all(s.status == "optimal" for s in exact.solutions)
    assert exact.objective == pytest.approx(brute.objective, rel=1e-9, abs=1e-15)


def test_activation_curvature_path():
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = prune(model, data(), 0.5, curvature="activations", n_samples=100)
    assert res.sparsity == pytest.approx(0.5, abs=0.02)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the caller's model is untouched
    nm = prune(model, data(), curvature="activations", pattern="2:4", n_samples=100)
    assert np.all(groups_of(nm.masks["fc1.weight"], 4) == 2)
    with pytest.raises(InvalidArgumentError, match="stages > 1"):
        prune(model, data(), 0.5, curvature="activations", stages=2)
    with pytest.raises(InvalidArgumentError, match="curvature must be"):
        prune(model, data(), 0.5, curvature="hessian")


def test_an_executor_gives_the_same_masks_as_this_process():
    kwargs = dict(solver="update_swap", damping=1e-3, blocks="row", n_samples=80, select=None)
    local = prune(TinyNet(), data(), 0.6, **kwargs)
    with ThreadPoolExecutor(2) as pool:
        threaded = prune(TinyNet(), data(), 0.6, executor=pool, **kwargs)
    pooled = prune(TinyNet(), data(), 0.6, jobs=2, **kwargs)
    for name in local.masks:
        assert torch.equal(local.masks[name], threaded.masks[name])
        assert torch.equal(local.masks[name], pooled.masks[name])
    with pytest.raises(InvalidArgumentError, match="at most one of executor, jobs and scheduler"):
        prune(TinyNet(), data(), 0.6, jobs=2, scheduler="tcp://127.0.0.1:1", **kwargs)
