"""Per-sample gradients of Linear / Conv2d weights from one batched forward and backward pass.

For a layer ``z = W a + b`` applied to sample ``n`` (at ``T`` positions: tokens, or the ``L`` spatial
positions of a convolution after ``unfold``), the gradient of that sample's own loss ``ℓ_n`` is

    ∇_W ℓ_n = Σ_t δ_{n,t} a_{n,t}ᵀ,      ∇_b ℓ_n = Σ_t δ_{n,t},      δ_{n,t} = ∂ℓ_n / ∂z_{n,t}

When the samples of a batch do not interact (eval mode: BatchNorm uses its running statistics),
``∂(Σ_k ℓ_k)/∂z_n = ∂ℓ_n/∂z_n``, so one backward pass of the summed per-sample losses gives every
``δ_n`` at once; forward hooks keep the layer inputs ``a`` and the outputs ``z`` whose gradients are
taken. This is the activations × output-gradients construction of Opacus / BackPACK, written here from
the formula above (for Conv2d, as one grouped convolution backward over the batch); it avoids ``vmap``
over the whole model and streams one layer at a time.

Only the weight and bias of ``nn.Linear`` and ``nn.Conv2d`` (zero padding, any stride / dilation /
groups) are covered; :func:`hook_plan` says why a model is not, and :mod:`cbs_opt.fisher` then
falls back to ``vmap``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import vmap

__all__ = ["hook_plan", "hooked_gradients", "HookUnsupported"]


class HookUnsupported(Exception):
    """The hook path cannot compute these gradients (internal: the caller falls back to vmap)."""


def _is_plain(module: nn.Module) -> bool:
    # Subclasses that override forward may do anything; only the stock forward is understood.
    if type(module).forward is nn.Linear.forward and isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward:
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


def hook_plan(model: nn.Module, names: list[str]) -> dict[str, dict[str, str]]:
    """``{module path: {"weight"|"bias": parameter name}}`` for the selected ``names``.

    Raises :class:`HookUnsupported` (with the reason) when a selected parameter is not the weight or
    bias of a plain ``Linear`` / zero-padded ``Conv2d``, or is shared by several modules.
    """
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    params = dict(model.named_parameters())
    plan: dict[str, dict[str, str]] = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if attr not in ("weight", "bias") or not _is_plain(module):
            raise HookUnsupported(f"{name} belongs to a {type(module).__name__}")
        if owners.get(id(params[name]), 0) > 1:
            raise HookUnsupported(f"{name} is shared by several modules")
        plan.setdefault(module_name, {})[attr] = name
    return plan


def _per_sample_losses(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``ℓ_n = loss_fn(out[n:n+1], y[n:n+1])`` for every row, as a vector (vmap, a loop if it fails)."""
    try:
        return vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(out, y)
    except Exception:  # a loss that vmap cannot batch: one call per row, the same definition
        return torch.stack([loss_fn(out[n:n + 1], y[n:n + 1]) for n in range(out.shape[0])])


def hooked_gradients(model: nn.Module, plan: dict[str, dict[str, str]], x: torch.Tensor, y: torch.Tensor,
                     loss_fn: Callable, sink: Callable[[str, torch.Tensor], None]) -> None:
    """Per-sample gradients of the planned parameters for the batch ``(x, y)``, handed to ``sink``.

    ``sink(name, rows)`` receives, one parameter at a time, a ``(B, numel)`` tensor whose row ``n`` is
    ``∇ ℓ_n`` flattened like the parameter. The model must be in a mode where samples do not interact
    (eval); its parameters and their ``.grad`` are left untouched (gradients are taken with respect to
    the layer outputs only).
    """
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []

    def make_hook(path: str):
        def hook(module, inputs, output):
            if path in captured:
                raise HookUnsupported(f"module {path or '(root)'} is called more than once per forward")
            captured[path] = (inputs[0].detach(), output)
        return hook

    for path in plan:
        module = model.get_submodule(path) if path else model
        handles.append(module.register_forward_hook(make_hook(path)))
    try:
        with torch.enable_grad():
            xin = x.detach().requires_grad_(True)  # so every layer output is part of the graph
            out = model(xin)
            missing = [p for p in plan if p not in captured]
            if missing:
                raise HookUnsupported(f"module {missing[0]} was not called in the forward pass")
            total = _per_sample_losses(loss_fn, out, y).sum()
            paths = list(plan)
            outputs = [captured[p][1] for p in paths]
            deltas = torch.autograd.grad(total, outputs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    B = x.shape[0]
    for path, delta in zip(paths, deltas):
        a, z = captured.pop(path)
        module = model.get_submodule(path) if path else model
        if delta is None:
            delta = torch.zeros_like(z)
        delta = delta.detach()
        names = plan[path]
        if isinstance(module, nn.Linear):
            a3, d3 = a.reshape(B, -1, a.shape[-1]), delta.reshape(B, -1, delta.shape[-1])
            if "weight" in names:
                sink(names["weight"], torch.einsum("bto,bti->boi", d3, a3).reshape(B, -1))
            if "bias" in names:
                sink(names["bias"], d3.sum(1))
        else:  # Conv2d: ∇_W ℓ_n is the weight-gradient of sample n's own convolution. Stacking the batch
            # into the channel axis and using B·groups groups computes all of them in one grouped
            # convolution backward (much faster on CPU than unfold + einsum, and no unfolded copy).
            groups = module.groups
            d = delta.reshape(B, module.out_channels, -1)                         # (B, C_out, L)
            if "weight" in names:
                c_in, h, w = a.shape[1:]
                size = (B * module.out_channels, c_in // groups, *module.kernel_size)
                gw = torch.nn.grad.conv2d_weight(a.reshape(1, B * c_in, h, w), size,
                                                 delta.reshape(1, B * module.out_channels, *delta.shape[2:]),
                                                 module.stride, module.padding, module.dilation, B * groups)
                sink(names["weight"], gw.reshape(B, -1))
            if "bias" in names:
                sink(names["bias"], d.sum(-1))
        del a, z, delta
