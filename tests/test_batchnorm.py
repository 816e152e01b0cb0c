"""cbs_opt.batchnorm: BatchNorm re-estimation changes BatchNorm buffers only, and to the right values."""
import pytest
import torch
from torch import nn

from cbs_opt.batchnorm import has_batchnorm, recalibrate_batchnorm
from cbs_opt.errors import ArgumentTypeError, InvalidArgumentError


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Dropout(0.5), nn.Flatten(), nn.Linear(3 * 5 * 5, 4), nn.BatchNorm1d(4),
                         nn.Linear(4, 2))


def data(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g) * 3 + 1, torch.randint(0, 2, (n,), generator=g)


def test_only_batchnorm_buffers_change_and_modes_are_kept():
    model = bn_net()
    model.train()
    model[3].eval()  # a mixed mode that must survive
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    momenta = [model[1].momentum, model[6].momentum]
    recalibrate_batchnorm(model, data(), n_samples=64, batch_size=16)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    bn_buffers = {f"{i}.{b}" for i in (1, 6) for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert changed == bn_buffers  # every BN buffer moved, nothing else did (no parameter, no other buffer)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert [model[1].momentum, model[6].momentum] == momenta


def test_statistics_are_the_batch_statistics_of_the_bn_inputs():
    model = bn_net(2).eval()
    x, y = data(48)
    recalibrate_batchnorm(model, (x, y), n_samples=48, batch_size=48)  # one batch: exact batch statistics
    with torch.no_grad():
        h = model[0](x)  # the input of the first BatchNorm (the conv is unchanged)
    torch.testing.assert_close(model[1].running_mean, h.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model[1].running_var, h.var(dim=(0, 2, 3), unbiased=True))
    # several batches: the cumulative average of the per-batch statistics
    recalibrate_batchnorm(model, (x, y), n_samples=48, batch_size=16)
    with torch.no_grad():
        means = torch.stack([model[0](x[s:s + 16]).mean(dim=(0, 2, 3)) for s in range(0, 48, 16)])
    torch.testing.assert_close(model[1].running_mean, means.mean(0))
    assert int(model[1].num_batches_tracked) == 3


def test_loader_input_and_errors():
    model = bn_net(3)
    x, y = data(40)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    a = recalibrate_batchnorm(bn_net(3), loader, n_samples=40, batch_size=40)
    b = recalibrate_batchnorm(bn_net(3), (x, y), n_samples=40, batch_size=40)
    torch.testing.assert_close(a[1].running_var, b[1].running_var)
    plain = nn.Sequential(nn.Linear(3, 2))
    assert not has_batchnorm(plain) and has_batchnorm(model)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    assert recalibrate_batchnorm(plain, (torch.randn(4, 3), torch.zeros(4))) is plain
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        recalibrate_batchnorm(model, (x, y), batch_size=0)
    with pytest.raises(ArgumentTypeError, match="model"):
        recalibrate_batchnorm("net", (x, y))
