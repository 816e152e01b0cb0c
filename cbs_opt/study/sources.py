"""Instance sources: generated families, saved ``.npz`` problems, Fisher blocks of a torch model
(or of the embedded digits MLP), and size ladders sliced out of one instance.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..problem import Problem
from .spec import Instance


def generated_instances(families: Sequence[str] = ("lowrank",), sizes: Sequence[int] = (12,),
                        n_samples: int | None = None, seeds: Sequence[int] = (0,), *,
                        damping: float = 1e-3, dense: bool = False, gradient: bool = False) -> list[Instance]:
    """Instances from :func:`cbs_opt.instances.random_problem`: every family × size × seed."""
    from ..instances import random_problem

    out = []
    for family in families:
        for p in sizes:
            for seed in seeds:
                prob = random_problem(int(p), n_samples, 0, damping=damping, seed=int(seed), family=family,
                                      dense=dense, gradient=gradient)
                out.append(Instance(f"{family}-p{p}-s{seed}", prob, family,
                                    {"source": "generated", "generation_seed": int(seed)}))
    return out


def file_instances(paths: Iterable[str | os.PathLike]) -> list[Instance]:
    """Instances read from ``.npz`` files written by :meth:`Problem.save`."""
    out = []
    for path in paths:
        prob = Problem.load(path)
        out.append(Instance(Path(path).stem, prob.with_n_prune(0), "file", {"source": str(path)}))
    return out


def _spread(n: int, k: int | None) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k`` is None or ≥ n)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / max(1, k - 1))) for i in range(k)})


def model_instances(model, data, *, blocks: Any = "layer", n_samples: int = 1000, damping: float = 1e-3,
                    loss: str = "cross_entropy", seed: int = 0, max_blocks: int | None = None,
                    family: str = "model", prefix: str = "", params: Sequence[str] | None = None) -> list[Instance]:
    """Fisher blocks of a torch ``model`` on ``data`` (through :func:`cbs_opt.fisher.build_blocks`).

    ``max_blocks`` keeps that many blocks spread evenly over the network (all by default).
    """
    from ..fisher import build_blocks

    built = build_blocks(model, data, params=params, n_samples=n_samples, damping=damping, blocks=blocks,
                         loss=loss, seed=seed)
    chosen = _spread(len(built), max_blocks)
    return [Instance(f"{prefix}{_block_label(built[i])}", built[i].problem.with_n_prune(0), family,
                     {"source": "model", "block": built[i].name}) for i in chosen]


def _block_label(block) -> str:
    """``fc1.weight[48:64]`` for a contiguous slice of one parameter, else the block's own name."""
    slices = getattr(block, "param_slices", [])
    if len(slices) == 1:
        ix = np.asarray(slices[0].indices)
        if ix.size and np.array_equal(ix, np.arange(ix[0], ix[0] + ix.size)):
            return f"{slices[0].name}[{ix[0]}:{ix[0] + ix.size}]"
    return str(block.name)


def digits_instances(*, block_size: int = 16, n_samples: int = 400, damping: float = 1e-4,
                     max_blocks: int | None = 12, seed: int = 0) -> list[Instance]:
    """Fisher blocks of the embedded digits MLP (:mod:`cbs_opt.digits`), ``block_size`` weights each."""
    from ..digits import digits_model

    model, data = digits_model(seed=seed)
    return model_instances(model, data.train, blocks=block_size, n_samples=n_samples, damping=damping,
                           seed=seed, max_blocks=max_blocks, family="digits", prefix="digits/")


def sliced_instances(instance: Instance, sizes: Sequence[int], *, start: int = 0) -> list[Instance]:
    """Sub-problems made of the ``k`` weights from ``start`` of ``instance`` for each ``k`` in ``sizes``.

    The curvature restricted to those weights is exactly the Fisher of the sub-block, so the
    sizes form a clean ladder for solve-time-versus-size plots.
    """
    prob = instance.problem
    out = []
    for k in sizes:
        if not 1 <= int(k) <= prob.p - start:
            raise ValueError(f"sizes must be in [1, {prob.p - start}] for {instance.name} from {start}, got {k}")
        sl = slice(start, start + int(k))
        gradient = None if prob.gradient is None else prob.gradient[sl]
        if prob.grads is not None:
            sub = Problem(prob.weights[sl], prob.grads[:, sl], prob.damping, 0, gradient=gradient)
        else:
            sub = Problem(prob.weights[sl], hessian=prob.hessian[sl, sl], damping=prob.damping, n_prune=0,
                          gradient=gradient)
        out.append(Instance(f"{instance.name}[{sl.start}:{sl.stop}]", sub, instance.family,
                            {**instance.meta, "sliced_from": instance.name}))
    return out
