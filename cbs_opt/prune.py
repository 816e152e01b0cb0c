"""One-call model pruning: a torch model and data in, a pruned model out (DESIGN §2).

    result = prune(model, loader, 0.9, solver="greedy_swap")
    result.model, result.masks, result.sparsity

Per stage: the Fisher blocks of the current network (:func:`cbs_opt.fisher.build_blocks`, pruned
coordinates left out), a split of the stage's budget over the blocks, one solve per block through
the registry, and the selected weights written back — CBS-U applied to the survivors (``update=True``)
or just zeroed.

**Global budget over blocks.** With a block-diagonal Fisher the objective is a sum over blocks, so the
split ``m_b`` of a global budget ``M`` should minimise ``Σ_b c_b(m_b)`` where ``c_b(m)`` is block ``b``'s
cost at budget ``m`` — not a uniform ratio. Each block's cost curve is measured with the chosen solver
(at every budget for small blocks, on a grid refined around the target ratio and interpolated
otherwise), then split exactly by :func:`cbs_opt.allocation.allocate`. With full curves and an exact
solver (``enumerate``, ``miqp``) this is the optimum of the block-diagonal problem.

**Multi-stage pruning** (``stages=S``): the sparsity rises along a schedule (default: geometric in the
density, so each stage prunes the same fraction of the survivors); each stage recomputes the Fisher on
the pruned, updated network, and weights pruned earlier stay at zero (they are no longer variables).
The quadratic model is only trustworthy near the current weights; small steps keep it so.
"""
from __future__ import annotations

import copy
import numbers
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

import solvers
from solvers.registry import _check_options, get_backend

from .allocation import Allocation, allocate, interpolate_curve, uniform_split
from .fisher import Block, build_blocks, check_device, select_parameters

__all__ = ["prune", "PruneResult", "StageRecord", "sparsity_schedule", "block_curves"]

SCHEDULES = ("geometric", "linear", "cubic")


@dataclass
class StageRecord:
    """One stage: its target sparsity, the per-block budgets and solutions, the model-level objective."""

    sparsity: float
    n_pruned: int                      # pruned coordinates after the stage (all blocks)
    budgets: dict[str, int]            # newly pruned per block
    allocation: Allocation | None      # None with a single block or allocation="uniform"
    objective: float                   # Σ of the blocks' objectives (the stage's quadratic-model cost)
    solutions: list
    timings: dict[str, float]


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    model      the pruned model (a deep copy unless ``inplace=True``)
    masks      {parameter name: bool tensor, True = kept}, shaped like the parameter
    weights    {parameter name: the final (updated) values}, detached copies
    solutions  the last stage's per-block :class:`solvers.Solution` (same order as ``blocks``)
    blocks     the last stage's :class:`cbs_opt.fisher.Block` list
    stages     one :class:`StageRecord` per stage
    timings    seconds: gradients, curves, solve, write, total
    """

    model: nn.Module
    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    solutions: list
    blocks: list[Block]
    stages: list[StageRecord]
    timings: dict[str, float]
    n_pruned: int
    n_total: int

    @property
    def sparsity(self) -> float:
        """Achieved fraction of the selected weights that are pruned."""
        return self.n_pruned / self.n_total

    @property
    def objective(self) -> float:
        """The last stage's quadratic-model cost (sum over blocks)."""
        return self.stages[-1].objective if self.stages else 0.0

    def summary(self) -> str:
        lines = [f"pruned {self.n_pruned} of {self.n_total} weights (sparsity {self.sparsity:.4f}) "
                 f"in {len(self.stages)} stage(s), {self.timings.get('total', 0.0):.2f} s"]
        for k, st in enumerate(self.stages):
            lines.append(f"  stage {k + 1}: sparsity {st.sparsity:.4f}, objective {st.objective:.6g}, "
                         f"{len(st.solutions)} block(s)")
        return "\n".join(lines)


def sparsity_schedule(sparsity: float, stages: int, kind: str | Sequence[float] = "geometric") -> list[float]:
    """Increasing per-stage target sparsities ending at ``sparsity``.

    ``geometric``: density ``(1−s)^(k/S)`` (each stage prunes the same fraction of the survivors);
    ``linear``: ``s·k/S``; ``cubic``: ``s·(1 − (1 − k/S)³)`` (front-loaded, as in gradual pruning);
    or an explicit increasing sequence whose last entry is ``sparsity``.
    """
    if not isinstance(kind, str):
        seq = [float(v) for v in kind]
        if len(seq) != stages:
            raise ValueError(f"schedule has {len(seq)} entries but stages={stages}")
        if any(b < a for a, b in zip(seq, seq[1:])) or not all(0 <= v < 1 for v in seq):
            raise ValueError(f"schedule must be nondecreasing sparsities in [0, 1), got {seq}")
        if abs(seq[-1] - sparsity) > 1e-12:
            raise ValueError(f"schedule must end at sparsity={sparsity}, got {seq[-1]}")
        return seq
    k = np.arange(1, stages + 1) / stages
    if kind == "geometric":
        out = 1.0 - (1.0 - sparsity) ** k
    elif kind == "linear":
        out = sparsity * k
    elif kind == "cubic":
        out = sparsity * (1.0 - (1.0 - k) ** 3)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES} or a sequence of sparsities, got {kind!r}")
    out[-1] = sparsity
    return [float(v) for v in out]


def _budget_grid(size: int, fraction: float, points: int) -> np.ndarray:
    """Budgets at which to measure a block's cost curve: all of them for a small block, else a grid
    over [0, size] refined around the target fraction (where the split will land)."""
    if size + 1 <= 2 * points + 1:
        return np.arange(size + 1)
    coarse = np.linspace(0.0, 1.0, points)
    fine = np.clip(fraction + (1.0 - fraction) * np.linspace(-3.0, 1.0, points), 0.0, 1.0)
    return np.unique(np.round(np.concatenate([coarse, fine, [fraction]]) * size).astype(np.int64))


def _solve(problem, m: int, solver: str, seed: int, time_limit, options: dict):
    return solvers.solve(problem.with_n_prune(int(m)), solver=solver, seed=seed, time_limit=time_limit,
                         **options)


def block_curves(blocks: Sequence[Block], total: int, solver: str, *, seed: int = 0, time_limit=None,
                 options: dict | None = None, points: int = 9, progress: bool = False):
    """Per-block cost curves ``c_b(0..p_b)`` measured with ``solver`` (see :func:`_budget_grid`).

    Returns ``(curves, cache, exact)``: the dense curves, the solutions computed ({(b, m): Solution}) and
    whether every curve was measured at every budget (no interpolation).
    """
    options = dict(options or {})
    sizes = [b.size for b in blocks]
    fraction = total / max(1, sum(sizes))
    curves, cache, exact = [], {}, True
    items = list(enumerate(blocks))
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc="cost curves", unit="block")
    for b, block in items:
        grid = _budget_grid(block.size, fraction, points)
        exact &= grid.size == block.size + 1
        costs = []
        for m in grid:
            if m == 0:  # nothing pruned: no solve needed
                costs.append(block.problem.with_n_prune(0).objective(np.zeros(0, dtype=np.intp)))
                continue
            sol = _solve(block.problem, m, solver, seed, time_limit, options)
            cache[(b, int(m))] = sol
            costs.append(sol.objective)
        curves.append(interpolate_curve(grid, costs, block.size))
    return curves, cache, exact


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return sparsity


def prune(model: nn.Module, data, sparsity: float, solver: str = "greedy_swap", objective: str = "update",
          update: bool = True, n_samples: int = 1000, damping: float = 1e-3,
          blocks: Literal["model", "layer", "row"] | int = "model", loss="cross_entropy", device=None,
          seed: int = 0, inplace: bool = False, stages: int = 1, solver_options: dict[str, Any] | None = None,
          attach: Literal["direct", "torch_prune"] = "direct", progress: bool = False, *,
          params: Sequence[str] | None = None, batch_size: int = 1, time_limit: float | None = None,
          schedule: str | Sequence[float] = "geometric", allocation: Literal["optimal", "uniform"] = "optimal",
          curve_points: int = 9, gradient: bool = False, chunk_size: int = 256,
          fisher_dtype: torch.dtype | None = None) -> PruneResult:
    """Prune ``sparsity`` of the selected weights of ``model`` (one global budget) → :class:`PruneResult`.

    model       a ``torch.nn.Module``; copied first unless ``inplace=True`` (then changed in place)
    data        an iterable of ``(inputs, targets)`` batches (a DataLoader; its first ``n_samples``
                examples are used) or a pair of tensors ``(inputs, targets)`` (a seeded random subset)
    sparsity    target fraction in [0, 1) of the selected weights (``params``; default: Linear/Conv
                weights) to prune, counted over all of them together
    solver      any registered backend (``solvers.available()``); ``solver_options`` are its options;
                ``time_limit`` applies to each solve
    objective   "update" (combinatorial OBS) or "selection" (the paper's CBS-S) — what the solver minimises
    update      True: apply CBS-U to the surviving weights; False: only zero the pruned ones
    n_samples, damping, loss, batch_size, gradient
                the Fisher ``F = GᵀG/N + damping·I`` from ``n_samples`` gradient rows
                (see :func:`cbs_opt.fisher.build_blocks`)
    blocks      "model" (one block, the paper's setting), "layer", "row", or a chunk size
    allocation  "optimal" (per-block cost curves + exact split, see the module docstring) or "uniform";
                ``curve_points`` sets the curve grid for large blocks
    stages, schedule
                multi-stage pruning along :func:`sparsity_schedule`; stage ``k`` samples with ``seed + k``
    attach      "direct" (write zeros into the weights) or "torch_prune" (also register
                ``torch.nn.utils.prune`` masks: ``weight_orig`` / ``weight_mask``)
    device      where to compute; the model must already be there (default: where it is)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparsity = _check_sparsity(sparsity)
    if isinstance(stages, bool) or not isinstance(stages, numbers.Integral) or stages < 1:
        raise ValueError(f"stages must be a positive integer, got {stages!r}")
    if attach not in ("direct", "torch_prune"):
        raise ValueError(f"attach must be 'direct' or 'torch_prune', got {attach!r}")
    if allocation not in ("optimal", "uniform"):
        raise ValueError(f"allocation must be 'optimal' or 'uniform', got {allocation!r}")
    if isinstance(curve_points, bool) or not isinstance(curve_points, numbers.Integral) or curve_points < 2:
        raise ValueError(f"curve_points must be an integer >= 2, got {curve_points!r}")
    if objective not in ("update", "selection"):
        raise ValueError(f"objective must be 'update' or 'selection', got {objective!r}")
    if solver_options is not None and not isinstance(solver_options, dict):
        raise TypeError(f"solver_options must be a dict, got {type(solver_options).__name__}")
    options = dict(solver_options or {})
    _check_options(get_backend(solver), options)  # fail before the Fisher work, not after
    if hasattr(data, "__len__") and len(data) == 0:
        raise ValueError("data is empty: need at least one (inputs, targets) batch")
    names = select_parameters(model, params)
    check_device(model, device)
    schedule_values = sparsity_schedule(sparsity, int(stages), schedule)

    start_all = time.perf_counter()
    target = model if inplace else copy.deepcopy(model)
    tensors = dict(target.named_parameters())
    keep = {n: np.ones(tensors[n].numel(), dtype=bool) for n in names}
    n_total = sum(k.size for k in keep.values())
    timings = {"gradients": 0.0, "curves": 0.0, "solve": 0.0, "write": 0.0}
    records: list[StageRecord] = []
    last_blocks: list[Block] = []
    last_solutions: list = []

    stage_iter = list(enumerate(schedule_values))
    if progress and stages > 1:
        from tqdm.auto import tqdm
        stage_iter = tqdm(stage_iter, desc="stages", unit="stage")
    for k, stage_sparsity in stage_iter:
        n_pruned = sum(int((~m).sum()) for m in keep.values())
        m_new = max(0, int(round(stage_sparsity * n_total)) - n_pruned)
        if m_new == 0:
            continue
        st = {"gradients": 0.0, "curves": 0.0, "solve": 0.0, "write": 0.0}
        t0 = time.perf_counter()
        bl = build_blocks(target, data, params=names, n_samples=n_samples, damping=damping, blocks=blocks,
                          loss=loss, seed=seed + k, device=device, objective=objective, batch_size=batch_size,
                          masks=keep, gradient=gradient, chunk_size=chunk_size, dtype=fisher_dtype,
                          progress=progress)
        st["gradients"] = time.perf_counter() - t0

        # split the stage's budget over the blocks
        t0 = time.perf_counter()
        cache: dict = {}
        alloc = None
        if len(bl) == 1:
            budgets = np.array([m_new])
        elif allocation == "uniform":
            budgets = uniform_split([b.size for b in bl], m_new)
        else:
            curves, cache, full = block_curves(bl, m_new, solver, seed=seed, time_limit=time_limit,
                                               options=options, points=int(curve_points), progress=progress)
            alloc = allocate(curves, m_new)
            alloc.exact = alloc.exact and full  # exact for the measured curves only when not interpolated
            budgets = alloc.counts
        st["curves"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        sols = []
        items = list(zip(range(len(bl)), bl, budgets))
        if progress and len(bl) > 1:
            from tqdm.auto import tqdm
            items = tqdm(items, desc=f"stage {k + 1} blocks", unit="block")
        for b, block, m in items:
            sol = cache.get((b, int(m)))
            if sol is None:
                sol = _solve(block.problem, int(m), solver, seed, time_limit, options)
            sols.append(sol)
        st["solve"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with torch.no_grad():
            for block, sol in zip(bl, sols):
                values = sol.weights if update else block.problem.zeroed(sol.pruned)
                block.scatter(values, {n: tensors[n].data for n in names})
                for s in block.param_slices:
                    inside = sol.pruned[(sol.pruned >= s.start) & (sol.pruned < s.stop)] - s.start
                    keep[s.name][s.indices[inside]] = False
        st["write"] = time.perf_counter() - t0
        for key in timings:
            timings[key] += st[key]
        records.append(StageRecord(
            sparsity=stage_sparsity, n_pruned=sum(int((~m).sum()) for m in keep.values()),
            budgets={b.name: int(m) for b, m in zip(bl, budgets)}, allocation=alloc,
            objective=float(sum(s.objective for s in sols)), solutions=sols, timings=st))
        last_blocks, last_solutions = bl, sols

    masks = {n: torch.as_tensor(keep[n].reshape(tensors[n].shape), device=tensors[n].device) for n in names}
    if attach == "torch_prune":
        from torch.nn.utils import prune as torch_prune
        for n in names:
            module_name, _, attr = n.rpartition(".")
            torch_prune.custom_from_mask(target.get_submodule(module_name), attr, masks[n])
    final = dict(target.named_parameters())
    weights = {}
    for n in names:
        module_name, _, attr = n.rpartition(".")
        value = getattr(target.get_submodule(module_name), attr) if attach == "torch_prune" else final[n]
        weights[n] = value.detach().clone()
    timings["total"] = time.perf_counter() - start_all
    return PruneResult(model=target, masks=masks, weights=weights, solutions=last_solutions, blocks=last_blocks,
                       stages=records, timings=timings, n_pruned=sum(int((~m).sum()) for m in keep.values()),
                       n_total=n_total)
