"""cbs_opt.fisher: per-sample gradients against a naive backward() loop, blocks, errors."""
import numpy as np
import pytest
import torch
from torch import nn

from cbs_opt.fisher import (Block, batch_gradients, build_blocks, collect_samples, per_sample_gradients,
                            select_parameters)


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4, bias=False), nn.ReLU(),
                         nn.Linear(4, 3)).to(dtype)


def convnet(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 2, bias=False),
                         nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(dtype).eval()


def naive(model, x, y, names, loss, group=1):
    """One backward() per sample (or per group of `group` samples)."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(0, x.shape[0], group):
        model.zero_grad()
        loss(model(x[i:i + group]), y[i:i + group]).backward()
        rows.append(torch.cat([params[n].grad.reshape(-1).clone() for n in names]))
    model.zero_grad()
    return torch.stack(rows)


def data(n, shape=(6,), classes=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def test_select_parameters_default_and_named():
    model = mlp()
    assert select_parameters(model) == ["0.weight", "2.weight", "4.weight"]
    assert select_parameters(model, ["4.bias", "0.weight"]) == ["4.bias", "0.weight"]
    conv = convnet()
    assert select_parameters(conv) == ["0.weight", "3.weight", "5.weight"]  # BatchNorm excluded
    with pytest.raises(ValueError, match="'nope'"):
        select_parameters(model, ["0.weight", "nope"])
    with pytest.raises(ValueError, match="twice"):
        select_parameters(model, ["0.weight", "0.weight"])
    with pytest.raises(ValueError, match="no parameters selected"):
        select_parameters(nn.Sequential(nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="empty"):
        select_parameters(model, [])


def test_tied_weights_selected_once():
    a = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(a, nn.ReLU(), a)
    assert select_parameters(model) == ["0.weight"]


@pytest.mark.parametrize("loss", ["cross_entropy", "nll_callable"])
def test_per_sample_matches_naive_loop_linear(loss):
    model = mlp()
    x, y = data(23)
    names = ["0.weight", "2.weight", "4.bias"]
    if loss == "nll_callable":
        loss_fn = lambda out, t: nn.functional.nll_loss(torch.log_softmax(out, -1), t, reduction="sum")  # noqa
    else:
        loss_fn = nn.functional.cross_entropy
    G = per_sample_gradients(model, x, y, loss=loss_fn if loss != "cross_entropy" else loss, params=names,
                             chunk_size=5)
    assert G.shape == (23, 30 + 20 + 3) and G.dtype == torch.float64
    torch.testing.assert_close(G, naive(model, x, y, names, loss_fn), rtol=1e-12, atol=1e-12)


def test_per_sample_matches_naive_loop_conv():
    model = convnet()
    x, y = data(9, shape=(2, 7, 7))
    names = select_parameters(model)
    G = per_sample_gradients(model, x, y, chunk_size=4)
    torch.testing.assert_close(G, naive(model, x, y, names, nn.functional.cross_entropy), rtol=1e-12, atol=1e-12)


def test_mse_and_float32_to_float64():
    model = mlp(dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(7, 6)
    y = torch.randn(7, 3)
    G = per_sample_gradients(model, x, y, loss="mse", dtype=torch.float64)
    assert G.dtype == torch.float64
    ref = naive(mlp(dtype=torch.float64), x.double(), y.double(), select_parameters(model), nn.functional.mse_loss)
    torch.testing.assert_close(G, ref, rtol=1e-10, atol=1e-12)
    for k, v in model.state_dict().items():  # the model is untouched (still float32, same values)
        assert v.dtype == torch.float32 and torch.equal(v, before[k])


def test_batch_gradients_are_minibatch_means():
    model = mlp()
    x, y = data(12)
    names = select_parameters(model)
    G = batch_gradients(model, x, y, batch_size=4, chunk_size=5)
    assert G.shape[0] == 3
    torch.testing.assert_close(G, naive(model, x, y, names, nn.functional.cross_entropy, group=4),
                               rtol=1e-12, atol=1e-12)
    # the mean of per-sample rows over a group equals that group's row (mean loss)
    P = per_sample_gradients(model, x, y)
    torch.testing.assert_close(P.reshape(3, 4, -1).mean(1), G, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        batch_gradients(model, x[:10], y[:10], batch_size=4)


def test_gradient_errors():
    model = mlp()
    x, y = data(4)
    with pytest.raises(ValueError, match="same number of samples"):
        per_sample_gradients(model, x, y[:3])
    with pytest.raises(ValueError, match="loss"):
        per_sample_gradients(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="device"):
        per_sample_gradients(model, x, y, device="meta")
    with pytest.raises(ValueError, match="inputs is empty"):
        per_sample_gradients(model, x[:0], y[:0])


def test_collect_samples_pair_and_loader():
    x, y = data(50)
    xs, ys = collect_samples((x, y), 10, seed=3)
    assert xs.shape == (10, 6)
    xs2, _ = collect_samples((x, y), 10, seed=3)
    assert torch.equal(xs, xs2)  # seeded
    assert not torch.equal(xs, collect_samples((x, y), 10, seed=4)[0])
    # rows are real rows of x with their own labels
    for xi, yi in zip(xs, ys):
        j = int(torch.nonzero((x == xi).all(1))[0])
        assert y[j] == yi
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    lx, ly = collect_samples(loader, 20)
    assert torch.equal(lx, x[:20]) and torch.equal(ly, y[:20])
    with pytest.warns(UserWarning, match="only 50"):
        assert collect_samples(loader, 80)[0].shape[0] == 50
    with pytest.raises(ValueError, match="data is empty"):
        collect_samples([], 5)
    with pytest.raises(ValueError, match="n_samples"):
        collect_samples(loader, 0)


@pytest.mark.parametrize("blocks", ["model", "layer", "row", 7])
def test_blocks_partition_and_match_fisher(blocks):
    model = mlp()
    x, y = data(15)
    names = select_parameters(model)
    G = naive(model, x, y, names, nn.functional.cross_entropy).numpy()
    w = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names]).numpy()
    out = build_blocks(model, (x, y), n_samples=15, damping=0.01, blocks=blocks)
    assert all(isinstance(b, Block) and b.problem.n_prune == 0 for b in out)
    expected = {"model": 1, "layer": 3, "row": 5 + 4 + 3, 7: int(np.ceil((30 + 20 + 12) / 7))}[blocks]
    assert len(out) == expected
    offsets = dict(zip(names, np.cumsum([0, 30, 20])))
    seen = []
    for b in out:
        cols = np.concatenate([offsets[s.name] + s.indices for s in b.param_slices])
        seen.append(cols)
        np.testing.assert_allclose(b.problem.weights, w[cols])
        F_ref = G[:, cols].T @ G[:, cols] / 15 + 0.01 * np.eye(cols.size)
        np.testing.assert_allclose(b.problem.curvature.dense(), F_ref, rtol=1e-10, atol=1e-14)
    seen = np.concatenate(seen)
    assert np.array_equal(np.sort(seen), np.arange(62))  # every coordinate exactly once


def test_blocks_respect_masks_and_roundtrip():
    model = mlp()
    x, y = data(10)
    params = dict(model.named_parameters())
    masks = {"0.weight": torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) > 0.3,
             "4.weight": torch.zeros(3, 4, dtype=torch.bool)}
    out = build_blocks(model, (x, y), n_samples=10, blocks="layer", masks=masks, gradient=True)
    assert [b.name for b in out] == ["0.weight", "2.weight"]  # 4.weight fully pruned: omitted
    b0 = out[0]
    assert b0.size == int(masks["0.weight"].sum()) and b0.n_fixed == 30 - b0.size
    assert np.array_equal(b0.param_slices[0].indices, np.flatnonzero(masks["0.weight"].numpy().reshape(-1)))
    assert b0.problem.gradient is not None
    # gather/scatter round trip through a copy of the tensors
    tensors = {n: p.detach().clone() for n, p in params.items()}
    np.testing.assert_allclose(b0.gather(tensors), b0.problem.weights)
    b0.scatter(np.zeros(b0.size), tensors)
    assert int((tensors["0.weight"] != 0).sum()) == 30 - b0.size
    with pytest.raises(ValueError, match="masks\\['0.weight'\\]"):
        build_blocks(model, (x, y), masks={"0.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="blocks"):
        build_blocks(model, (x, y), blocks="column")
    with pytest.raises(ValueError, match="data is empty"):
        build_blocks(model, [], n_samples=4)
