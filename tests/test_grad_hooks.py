"""cbs_opt.grad_hooks: hook-based per-sample gradients (activations × output gradients) against vmap."""
import pytest
import torch
from torch import nn

from cbs_opt.errors import ModelNotSupportedError
from cbs_opt.fisher import build_blocks, per_sample_gradients, select_parameters
from cbs_opt.grad_hooks import HookUnsupported, hook_plan


def _data(n, shape, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


class Tokens(nn.Module):
    """A Linear over a sequence dimension (rows summed over positions)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x.reshape(x.shape[0], 3, 4))).mean(1))


def conv_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 4, 1, groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("case", ["mlp", "tokens", "conv"])
def test_hooks_equal_vmap_float32(case):
    if case == "mlp":
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        x, y = _data(21, (6,))
    elif case == "tokens":
        torch.manual_seed(0)
        model = Tokens()
        x, y = _data(13, (12,))
    else:
        model = conv_model()
        _randomise_bn(model)
        x, y = _data(11, (3, 8, 8))
    # weights and biases (BatchNorm affine parameters are not hookable: only Linear/Conv ones here)
    names = [n for n, _ in model.named_parameters()
             if isinstance(model.get_submodule(n.rpartition(".")[0]), (nn.Linear, nn.Conv2d))]
    hooks = per_sample_gradients(model, x, y, params=names, method="hooks", chunk_size=4)
    ref = per_sample_gradients(model, x, y, params=names, method="vmap", chunk_size=4)
    assert hooks.dtype == torch.float32 and hooks.shape == ref.shape
    assert float(ref.abs().max()) > 1e-3  # a real signal, not zeros
    torch.testing.assert_close(hooks, ref, rtol=1e-5, atol=1e-6)
    auto = per_sample_gradients(model, x, y, params=names)  # auto picks hooks here and agrees too
    torch.testing.assert_close(auto, ref, rtol=1e-5, atol=1e-6)


def test_hook_plan_refuses_other_layers_and_auto_falls_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    x, y = _data(9, (6,))
    names = ["0.weight", "1.weight", "2.weight"]
    with pytest.raises(HookUnsupported, match="LayerNorm"):
        hook_plan(model, names)
    with pytest.raises(ModelNotSupportedError, match="LayerNorm"):
        per_sample_gradients(model, x, y, params=names, method="hooks")
    auto = per_sample_gradients(model, x, y, params=names)
    loop = per_sample_gradients(model, x, y, params=names, method="loop")
    torch.testing.assert_close(auto, loop, rtol=1e-5, atol=1e-6)
    # a shared (tied) weight is not hookable either
    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    tied[2].weight = tied[0].weight
    with pytest.raises(HookUnsupported, match="shared"):
        hook_plan(tied, select_parameters(tied))


class Reuse(nn.Module):
    """Calls the same Linear twice: hooks would see it twice per forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


class BatchCentred(nn.Module):
    """Samples interact (the batch mean is subtracted): hook rows would be wrong."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(h - h.mean(0, keepdim=True) + 0.3))


@pytest.mark.parametrize("cls", [Reuse, BatchCentred])
def test_auto_detects_what_hooks_cannot_do(cls):
    torch.manual_seed(0)
    model = cls()
    x, y = _data(8, (4,))
    auto = per_sample_gradients(model, x, y)
    loop = per_sample_gradients(model, x, y, method="loop")
    torch.testing.assert_close(auto, loop, rtol=1e-5, atol=1e-6)
    blocks = build_blocks(model, (x, y), n_samples=8, blocks="layer")
    assert blocks[0].info["gradient_method"] == "vmap"


def test_hooks_leave_model_and_grads_untouched():
    model = conv_model().train()
    _randomise_bn(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(6, (3, 8, 8))
    per_sample_gradients(model, x, y, method="hooks")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
