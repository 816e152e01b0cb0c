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


# -- memory-bounded blocks ------------------------------------------------------------------------------
def test_blocks_store_float32_and_upcast_lazily_one_at_a_time():
    model = mlp(dtype=torch.float32)
    x, y = data(20, dtype=torch.float32)
    names = select_parameters(model)
    G = per_sample_gradients(model, x, y).double().numpy()  # the in-memory reference
    out = build_blocks(model, (x, y), n_samples=20, damping=0.01, blocks="layer")
    assert all(b.grads.dtype == np.float32 for b in out)
    cache = out[0]._cache
    assert not cache.items  # nothing upcast before it is asked for
    offsets = dict(zip(names, np.cumsum([0, 30, 20])))
    for b in out:
        cols = np.concatenate([offsets[s.name] + s.indices for s in b.param_slices])
        prob = b.problem
        assert prob is b.problem  # cached while in use
        np.testing.assert_array_equal(prob.grads, G[:, cols])  # float32 → float64 is exact
        assert prob.damping == 0.01 and prob.grads.dtype == np.float64
        fresh = b.make_problem()
        assert fresh is not prob and np.array_equal(fresh.grads, prob.grads)
        b.release()
        assert b._key not in cache.items
    # a bounded cache: with no room, only the block in use is kept
    cache.capacity = 0
    for b in out:
        b.problem
        assert list(cache.items) == [b._key]


def test_disk_storage_and_float64_storage_give_the_same_problems(tmp_path):
    model = mlp(dtype=torch.float32)
    x, y = data(16, dtype=torch.float32)
    ram = build_blocks(model, (x, y), n_samples=16, blocks=11, damping=1e-3)
    disk = build_blocks(model, (x, y), n_samples=16, blocks=11, damping=1e-3, gradient_storage="disk",
                        storage_dir=tmp_path)
    assert isinstance(disk[0].grads.base, np.memmap) or isinstance(disk[0].grads, np.memmap)
    assert not list(tmp_path.iterdir())  # the file is unlinked at once: nothing left behind
    for a, b in zip(ram, disk):
        np.testing.assert_array_equal(a.problem.grads, b.problem.grads)
        np.testing.assert_array_equal(a.problem.weights, b.problem.weights)
    wide = build_blocks(model, (x, y), n_samples=16, blocks=11, damping=1e-3, storage_dtype=torch.float64)
    assert wide[0].grads.dtype == np.float64
    np.testing.assert_array_equal(wide[0].problem.grads, ram[0].problem.grads)
    with pytest.raises(ValueError, match="gradient_storage"):
        build_blocks(model, (x, y), gradient_storage="cloud")


def test_memory_limit_refuses_a_block_that_cannot_fit():
    from cbs_opt.errors import MemoryLimitError
    model = mlp(dtype=torch.float32)
    x, y = data(50, dtype=torch.float32)
    # one block of 62 weights × 50 rows: 62·50·4 B of G + 62·50·16 B for its float64 problem = 62,000 B
    with pytest.raises(MemoryLimitError, match=r"'model': 62 weights × 50 rows"):
        build_blocks(model, (x, y), n_samples=50, blocks="model", memory_limit=60_000)
    with pytest.raises(MemoryLimitError, match="gradient_storage='disk'"):
        build_blocks(model, (x, y), n_samples=50, blocks="model", memory_limit=56_000)
    ok = build_blocks(model, (x, y), n_samples=50, blocks="model", memory_limit=56_000, gradient_storage="disk")
    assert ok[0].size == 62
    assert len(build_blocks(model, (x, y), n_samples=50, blocks="layer", memory_limit=62_000)) == 3
    with pytest.raises(ValueError, match="memory_limit"):
        build_blocks(model, (x, y), memory_limit=-1)
    # N ≪ p: a block too large for float64 in the room left is kept compact instead of refused
    few = build_blocks(model, (x[:8], y[:8]), n_samples=8, blocks="model", memory_limit=7_600)
    assert few[0].compact and few[0].grads.dtype == np.float32
    with pytest.raises(MemoryLimitError, match="compact float32 form"):
        build_blocks(model, (x[:8], y[:8]), n_samples=8, blocks="model", memory_limit=7_000)


@pytest.mark.parametrize("gradient", [False, True])
def test_compact_blocks_solve_like_float64_blocks(gradient):
    """A compact block (float32 factor A = G/√N, chunked float64 arithmetic) gives the same solutions."""
    import solvers
    import cbs_opt.curvature as curvature
    model = mlp(dtype=torch.float32)
    x, y = data(12, dtype=torch.float32)
    full = build_blocks(model, (x, y), n_samples=12, blocks="layer", damping="relative:0.05", gradient=gradient)
    comp = build_blocks(model, (x, y), n_samples=12, blocks="layer", damping="relative:0.05", gradient=gradient,
                        compact=True)
    old = curvature._COLUMN_CHUNK_BYTES
    curvature._COLUMN_CHUNK_BYTES = 8 * 12 * 4  # four columns per chunk: every product is chunked
    try:
        for a, b in zip(full, comp):
            assert b.compact and not a.compact and b.grads.dtype == np.float32
            assert b.damping == pytest.approx(a.damping, rel=1e-6)
            pa, pb = a.problem, b.with_damping(a.damping).problem
            # re-damped copies of a compact block share its damping-free AAᵀ (computed once)
            assert b.problem.curvature.gram is b.with_damping(1e-2).problem.curvature.gram
            # torch backends get Aᵀ without a copy: the stored column-major factor is already (p, N) float32
            assert np.shares_memory(pb.curvature.torch_view(dtype=torch.float32, transposed=True).numpy(), b.grads)
            assert pb.n_samples == 12 and np.allclose(np.asarray(pb.grads), pa.grads, rtol=1e-6, atol=1e-9)
            for solver in ("magnitude", "obs", "greedy_swap"):
                m = a.size // 2
                sa, sb = solvers.solve(pa.with_n_prune(m), solver), solvers.solve(pb.with_n_prune(m), solver)
                assert np.array_equal(sa.pruned, sb.pruned), solver
                assert sb.objective == pytest.approx(sa.objective, rel=1e-5)
                np.testing.assert_allclose(sb.weights, sa.weights, rtol=1e-4, atol=1e-7)
    finally:
        curvature._COLUMN_CHUNK_BYTES = old


def test_relative_damping_per_block_and_loss_scale_invariance():
    from cbs_opt.damping import Damping
    model = mlp()
    x, y = data(15)
    G = per_sample_gradients(model, x, y).numpy()
    out = build_blocks(model, (x, y), n_samples=15, blocks="layer", damping="relative:0.1")
    start = 0
    for b in out:
        Gb = G[:, start:start + b.size]
        start += b.size
        assert b.damping == pytest.approx(0.1 * np.mean(np.sum(Gb ** 2, axis=0) / 15), rel=1e-12)
        assert b.problem.damping == b.damping
    scaled = build_blocks(model, (x, y), n_samples=15, blocks="layer", damping=Damping.of_diagonal(0.1),
                          loss=lambda o, t: 10.0 * nn.functional.cross_entropy(o, t))
    for a, b in zip(out, scaled):
        assert b.damping == pytest.approx(100.0 * a.damping, rel=1e-10)
    # re-damping stays lazy and shares the stored gradients
    again = out[0].with_damping(1e-4)
    assert again.grads is out[0].grads and again.damping == 1e-4 and again.problem.damping == 1e-4
    assert out[0].with_damping("relative:0.1").damping == out[0].damping


# -- issue 15 items 9-11: models the Fisher must handle or refuse clearly ---------------------------------
class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


def test_gru_falls_back_to_a_per_sample_loop():
    torch.manual_seed(0)
    model = GRUNet().double()
    x, y = torch.randn(9, 5, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    names = ["gru.weight_ih_l0", "fc.weight"]
    G = per_sample_gradients(model, x, y, params=names)
    torch.testing.assert_close(G, naive(model, x, y, names, nn.functional.cross_entropy), rtol=1e-12, atol=1e-12)
    from cbs_opt.errors import ModelNotSupportedError
    with pytest.raises(ModelNotSupportedError, match="method='loop'"):
        per_sample_gradients(model, x, y, params=names, method="vmap")
    from cbs_opt import prune
    res = prune(model, (x, y), 0.5, solver="magnitude", damping=1e-3, n_samples=9, params=names)
    assert res.blocks[0].info["gradient_method"] == "loop"
    assert res.n_pruned == 45 and res.n_total == 72 + 18
    # with the default selection (the Linear head) the batched hook path is exact and is used
    res = prune(model, (x, y), 0.5, solver="magnitude", damping=1e-3, n_samples=9)
    assert res.blocks[0].info["gradient_method"] == "hooks" and res.n_pruned == 9


def test_one_output_under_cross_entropy_is_refused_with_the_reason():
    from cbs_opt import prune
    from cbs_opt.errors import ModelNotSupportedError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1))
    x, y = data(12, classes=1)
    with pytest.raises(ModelNotSupportedError, match="zero gradients for every sample.*one output"):
        per_sample_gradients(model.double(), x, y)
    with pytest.raises(ModelNotSupportedError, match="one output"):
        prune(model, (x, y), 0.5, solver="magnitude", damping=1e-3, n_samples=12)
    # with a loss that has a signal, the same model is fine
    bce = lambda o, t: nn.functional.binary_cross_entropy_with_logits(o.squeeze(-1), t.double())  # noqa: E731
    assert per_sample_gradients(model, x, y, loss=bce).abs().max() > 0


def test_non_finite_gradients_are_refused():
    from cbs_opt.errors import ModelNotSupportedError
    model = mlp()
    x, y = data(6)
    x[3, 2] = float("nan")
    with pytest.raises(ModelNotSupportedError, match=r"NaN or infinite \(row 3\)"):
        per_sample_gradients(model, x, y)


def test_fisher_in_eval_mode_and_modes_restored():
    from cbs_opt import prune
    torch.manual_seed(0)
    drop = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
    x, y = data(20)
    drop.train()
    drop[3].eval()  # a mixed state, restored exactly
    G1 = per_sample_gradients(drop, x, y)
    G2 = per_sample_gradients(drop, x, y)
    assert torch.equal(G1, G2)
    assert [m.training for m in drop.modules()] == [True, True, True, True, False]
    ref = naive(drop.eval(), x, y, select_parameters(drop), nn.functional.cross_entropy)
    torch.testing.assert_close(G1, ref, rtol=1e-12, atol=1e-12)  # the eval-mode gradients
    drop.train()
    masks = [prune(drop, (x, y), 0.6, solver="obs", damping=1e-3, n_samples=20, seed=0).masks for _ in range(2)]
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert drop.training
    # BatchNorm left in train mode: no crash inside torch.func, buffers untouched, mode kept
    bn = convnet().train()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    xc, yc = data(7, shape=(2, 7, 7))
    Gb = per_sample_gradients(bn, xc, yc, method="vmap")
    assert bn.training and all(m.training for m in bn.modules())
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())
    torch.testing.assert_close(Gb, naive(bn.eval(), xc, yc, select_parameters(bn), nn.functional.cross_entropy),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int16])
def test_integer_labels_of_any_width(label_dtype):
    model = mlp()
    x, y = data(8)
    ref = per_sample_gradients(model, x, y)
    torch.testing.assert_close(per_sample_gradients(model, x, y.to(label_dtype)), ref, rtol=0, atol=0)
    torch.testing.assert_close(per_sample_gradients(model, x, y.to(label_dtype).numpy(), loss="nll"),
                               per_sample_gradients(model, x, y, loss="nll"), rtol=0, atol=0)


def test_progress_bar_on_the_gradient_phase(capsys):
    model = mlp()
    x, y = data(10)
    per_sample_gradients(model, x, y, progress=True, chunk_size=4)
    assert "per-sample gradients" in capsys.readouterr().err


def _rss_file_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise AssertionError("no RssFile line in /proc/self/status")


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc/self/status")
def test_dropping_the_pages_of_disk_storage_keeps_the_data_and_frees_the_rss(tmp_path):
    """Disk-backed G: written pages leave the resident set (madvise) without losing a value."""
    from cbs_opt.fisher import _drop_pages, _gradient_storage, _mapped_nbytes
    n = 16 << 20  # 64 MiB of float32
    buf = _gradient_storage(n, np.dtype(np.float32), "disk", tmp_path)
    buf[:] = np.arange(n, dtype=np.float32)
    assert _mapped_nbytes(buf) == 4 * n and _mapped_nbytes(buf[10:20]) == 40
    assert _mapped_nbytes(np.zeros(3)) == 0
    before = _rss_file_kib()
    _drop_pages(buf)
    after = _rss_file_kib()
    assert before - after > 48 << 10, (before, after)  # ≥ 48 of the 64 MiB left the resident set
    np.testing.assert_array_equal(buf[::4099], np.arange(0, n, 4099, dtype=np.float32))  # read back from the file
    _drop_pages(np.zeros(3))  # RAM arrays: nothing to do, no error
    _drop_pages(buf[5:6])     # an unaligned sliver: widened to its page


def test_disk_blocks_are_row_major_solve_like_ram_and_drop_pages_when_evicted(tmp_path, monkeypatch):
    """On disk every block is row-major (a chunk of rows is one contiguous write); compact or not, the
    problems equal the in-RAM ones, and a block's file pages are handed back when its problem leaves
    the cache (so at most about one block of G is resident)."""
    import solvers
    import cbs_opt.fisher as fisher
    dropped = []
    real = fisher._drop_pages
    monkeypatch.setattr(fisher, "_drop_pages", lambda arr: (dropped.append(arr), real(arr)))
    model = convnet(dtype=torch.float32)
    x, y = data(10, shape=(2, 7, 7), dtype=torch.float32)
    for compact in (False, True):
        ram = build_blocks(model, (x, y), n_samples=10, blocks="layer", damping=1e-3, compact=compact)
        disk = build_blocks(model, (x, y), n_samples=10, blocks="layer", damping=1e-3, compact=compact,
                            gradient_storage="disk", storage_dir=tmp_path)
        assert dropped  # the gradient rows were handed back as they were written
        for a, b in zip(ram, disk):
            assert b.grads.flags.c_contiguous and b.compact == compact
            if compact:
                assert not a.grads.flags.c_contiguous  # in RAM a compact block is column-major
            np.testing.assert_array_equal(np.asarray(a.grads), np.asarray(b.grads))
            for solver in ("magnitude", "obs"):
                m = a.size // 2
                sa, sb = solvers.solve(a.problem.with_n_prune(m), solver), solvers.solve(b.problem.with_n_prune(m), solver)
                assert np.array_equal(sa.pruned, sb.pruned)
                np.testing.assert_allclose(sb.weights, sa.weights, rtol=1e-10, atol=1e-12)
        # the cache keeps one disk problem at a time here: the previous block's pages are dropped
        disk[0]._cache.capacity = 0
        disk[0]._cache.clear()
        dropped.clear()
        disk[0].problem
        # a compact problem reads the file itself (its pages stay while it is in use); a float64 one
        # has its own copy, so the file pages go at once
        assert any(arr is disk[0].grads for arr in dropped) == (not compact)
        disk[1].problem
        assert any(arr is disk[0].grads for arr in dropped)
        dropped.clear()
        disk[1].release()
        assert any(arr is disk[1].grads for arr in dropped)
