"""BatchNorm re-estimation: refresh the running statistics of a pruned network on calibration data.

Pruning (and the CBS-U update) changes the distribution of every pre-activation, so the running means
and variances a BatchNorm layer learned on the dense network no longer normalise its inputs. Re-estimating
them — a forward pass over calibration data with only the BatchNorm layers collecting statistics — is the
cheapest repair there is: no gradient, no weight changes.

With ``momentum=None`` a BatchNorm layer in train mode keeps the *cumulative* average over all batches
it sees, so after resetting and one pass over ``n`` samples the running statistics are the mean over the
batches of the per-batch mean and (unbiased) variance — the estimate a long training run converges to.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from .errors import ArgumentTypeError, InvalidArgumentError
from .fisher import collect_samples

__all__ = ["recalibrate_batchnorm", "has_batchnorm", "batchnorm_modules"]

_BN = nn.modules.batchnorm._BatchNorm


def batchnorm_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer with running statistics."""
    return bool(batchnorm_modules(model))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data, n_samples: int = 1000, *, batch_size: int = 100,
                          seed: int = 0, device=None) -> nn.Module:
    """Re-estimate the running mean/variance of every BatchNorm layer of ``model`` in place; returns it.

    ``data`` is a pair of tensors ``(inputs, targets)`` (a seeded subset of ``n_samples`` is drawn) or an
    iterable of ``(inputs, targets)`` batches (its first ``n_samples`` examples; the order is the
    caller's), as in :func:`cbs_opt.fisher.collect_samples`. The samples are passed through the model in
    batches of ``batch_size`` with only the BatchNorm layers in train mode (cumulative averaging,
    ``momentum=None``); every other module — Dropout included — stays in eval mode.

    Only BatchNorm buffers (``running_mean``, ``running_var``, ``num_batches_tracked``) change: the
    parameters, the other buffers and every module's ``training`` flag and ``momentum`` are as before.
    A model without BatchNorm is returned unchanged.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    layers = batchnorm_modules(model)
    if not layers:
        return model
    x, _ = collect_samples(data, n_samples, seed=seed)
    if x.shape[0] < 2:
        raise InvalidArgumentError("recalibrate_batchnorm needs at least 2 samples (a batch variance)")
    dev = device if device is not None else next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the pass
            m.train()
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size]
            if chunk.shape[0] < 2 and start > 0:  # a trailing batch of one has no variance
                break
            model(chunk.to(dev))
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        for m, flag in modes.items():
            m.training = flag
    return model
