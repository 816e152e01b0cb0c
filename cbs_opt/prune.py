"""One-call model pruning: a torch model and data in, a pruned model out (DESIGN §2).

    result = prune(model, data, 0.9)                 # the measured defaults
    result = prune(model, data, 0.98, stages=10)     # multi-stage: the accuracy/time knob
    result.model, result.masks, result.sparsity, result.stages[-1].choice

Per stage (the loop in :func:`prune`):

1. **Samples.** ``n_samples`` for the Fisher and, when candidates are compared or BatchNorm is
   re-estimated, ``calibration`` held-out samples (:func:`_split_samples`).
2. **Fisher.** The blocks of the current network (:func:`cbs_opt.fisher.build_blocks`, pruned coordinates
   left out), computed once in eval mode; each candidate re-damps them without copying ``G``.
3. **Budget split and solves**, per candidate (:func:`_solve_stage`): a split of the stage's budget over
   the blocks, one solve per block through the registry.
4. **Selection** (:mod:`cbs_opt.selection`): each candidate's weights — CBS-U applied to the survivors
   (``update=True``) or just zeroed — are written, BatchNorm re-estimated, and scored by the true loss (or
   accuracy) on the held-out samples; the best is kept, then the damping of its CBS-U step is chosen the
   same way. All within ``select_budget`` seconds.
5. **Write** the chosen weights, re-estimate BatchNorm statistics (:mod:`cbs_opt.batchnorm`).
6. **Refit passes** (:mod:`cbs_opt.refit`, ``refits``): at the pruned weights, a fresh Fisher and a
   batched mean gradient, then the damped Newton step on the kept weights whose held-out score is best
   (or none). The masks do not change; the survivors move to where the real loss, not the model built
   before pruning, is lower.

**The damping rule** (:mod:`cbs_opt.damping`): ``λ = α · mean diag(GᵀG/N)`` of each block by default, so
that one number means the same on every block and the masks do not change when the loss is rescaled.
A plain number is an absolute ``λ``.

**Global budget over blocks.** With a block-diagonal Fisher the objective is a sum over blocks, so the
split ``m_b`` of a global budget ``M`` should minimise ``Σ_b c_b(m_b)`` where ``c_b(m)`` is block ``b``'s
cost at budget ``m`` — not a uniform ratio. Each block's cost curve is measured (at every budget for small
blocks, on a grid refined around the target ratio and interpolated otherwise, from cumulative OBS scores
for large blocks — see :func:`curve_solver_for`), then split exactly by :func:`cbs_opt.allocation.allocate`.
With full curves and an exact solver (``enumerate``, ``miqp``) this is the optimum of the block-diagonal
problem.

**Multi-stage pruning** (``stages=S``): the sparsity rises along a schedule (default: geometric in the
density, so each stage prunes the same fraction of the survivors); each stage recomputes the Fisher on
the pruned, updated network, and weights pruned earlier stay at zero (they are no longer variables).
The quadratic model is only trustworthy near the current weights; small steps keep it so.
"""
from __future__ import annotations

import contextlib
import copy
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

import solvers
from solvers.registry import _check_options, get_backend

from .allocation import Allocation, allocate, interpolate_curve, uniform_split
from .batchnorm import batchnorm_modules, has_batchnorm, recalibrate_batchnorm
from .damping import Damping, as_damping
from .executors import block_costs, executor_scope, solve_blocks
from .errors import ArgumentTypeError, InvalidArgumentError
from .fisher import (Block, _is_pair_of_tensors, build_blocks, check_device, collect_samples, eval_mode,
                     select_parameters)
from .budget import parse_pattern
from .refit import REFIT_ALPHAS, REFIT_CHUNKS, REFIT_SAMPLES_PER_ROW, block_gradients, mean_gradient, refit_pass
from .selection import CalibrationScorer, select_best
from .structured import BALANCED, block_budget, check_masks, fits_pattern

__all__ = ["prune", "PruneResult", "StageRecord", "Candidate", "sparsity_schedule", "block_curves",
           "auto_blocks", "curve_solver_for", "DEFAULT_SOLVERS", "DEFAULT_ALPHAS", "DEFAULT_CANDIDATES",
           "RECOMMENDED_STAGES"]

SCHEDULES = ("geometric", "linear", "cubic")

# -- defaults chosen by measurement (docs/benchmarks/mlpnet_mnist.md, docs/benchmarks/convnet.md) -----
DEFAULT_SOLVERS = ("obs", "magnitude", "greedy_swap")
DEFAULT_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)     # relative damping λ = α · mean diag(GᵀG/N) of each block
DEFAULT_ALPHA = 1e-2                          # the one tried first (alone when nothing is selected)
# (solver, α) in the order they are tried (the first one alone when nothing is selected)
DEFAULT_CANDIDATES = (("obs", 1e-2), ("obs", 1e-3), ("greedy_swap", 1e-1), ("magnitude", 1e-2),
                      ("obs", 1e-1), ("greedy_swap", 1.0), ("magnitude", 1e-1), ("obs", 1.0))
# the accuracy/time knob at sparsity >= 0.95: with refit passes, 10 stages reach CHITA++'s published MLPNet
# figures (5 seeds, docs/benchmarks/mlpnet_mnist.md) in ~5 min there; more stages were measured only before refits
# (0.98, seed 0: 10 / 20 / 40 stages 86.8 / 87.9 / 88.5%)
RECOMMENDED_STAGES = 10
# first-order refit passes after every stage (cbs_opt.refit) when held-out scoring is on, at most this many:
# MLPNet, 5 seeds, one stage, refits=0 → default: 92.62 → 93.73 at 0.9, 87.69 → 92.17 at 0.95, 50.30 → 83.45 at
# 0.98 (docs/benchmarks/mlpnet_mnist.md)
REFIT_PASSES = 8
REFIT_PATIENCE = 2  # a stage's passes stop after two in a row keep nothing (MLPNet 10 stages at 0.98, seed 0:
# z = 2 and one pass: 90.78%; REFIT_Z = 1.5 and two: 91.40%)
REFIT_SEED_STRIDE = 7919  # refit pass r of stage k draws its samples under seed + k + stride·(r + 1)
CHEAP_SOLVERS = ("magnitude", "obs", "greedy_swap")
EXACT_CURVE_SIZE = 20                        # curves of tiny blocks: exact (miqp) for the search solvers
SCORE_CURVE_SIZE = 512                       # curves of larger blocks: cumulative OBS scores (no solves)


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
    choice: dict = field(default_factory=dict)  # the candidate chosen and the scores of those tried


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


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ArgumentTypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise InvalidArgumentError(f"sparsity must be in [0, 1), got {sparsity}")
    return sparsity


# -- candidates -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One way to solve a stage: a registered solver, its options and the damping rule of the Fisher."""

    solver: str
    damping: Damping
    options: tuple = ()  # sorted (name, value) pairs of solver options

    def __str__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options)
        return f"{self.solver}{opts}, damping {self.damping}"


def _candidates(solver, damping, solver_options) -> list[Candidate]:
    """The candidate list in priority order (the first is the one used when nothing is selected)."""
    if isinstance(solver, str):
        names = list(DEFAULT_SOLVERS) if solver == "auto" else [solver]
    elif isinstance(solver, Sequence) and solver and all(isinstance(s, str) for s in solver):
        names = list(dict.fromkeys(solver))
    else:
        raise ArgumentTypeError(f"solver must be a solver name, 'auto' or a sequence of names, got {solver!r}")
    if isinstance(damping, str) and damping == "auto":
        rules = [Damping.of_diagonal(a) for a in sorted(DEFAULT_ALPHAS, key=lambda a: a != DEFAULT_ALPHA)]
    elif isinstance(damping, (list, tuple)):
        if not damping:
            raise InvalidArgumentError("damping is an empty sequence")
        rules = list(dict.fromkeys(as_damping(d) for d in damping))
    else:
        rules = [as_damping(damping)]
    if solver_options is not None and not isinstance(solver_options, dict):
        raise ArgumentTypeError(f"solver_options must be a dict, got {type(solver_options).__name__}")
    opts = dict(solver_options or {})
    per_solver = {}
    for name in names:
        backend = get_backend(name)  # UnknownSolverError before any Fisher work
        # options either apply to the one solver, or are given per solver: {"greedy_swap": {...}}
        if len(names) > 1 and opts and all(isinstance(v, dict) for v in opts.values()):
            own = dict(opts.get(name, {}))
        else:
            own = opts
        _check_options(backend, own)
        per_solver[name] = tuple(sorted(own.items()))
    if isinstance(solver, str) and solver == "auto" and isinstance(damping, str) and damping == "auto":
        order = [(s, Damping.of_diagonal(a)) for s, a in DEFAULT_CANDIDATES]
        pairs = order
    else:
        pairs = [(s, r) for r in rules for s in names]
    return [Candidate(s, r, per_solver[s]) for s, r in pairs]


# -- blocks, damping, curves ------------------------------------------------------------------------
def auto_blocks(n_weights: int, n_rows: int):
    """The block rule of ``blocks="auto"``: one model-wide block.

    Measured (docs/benchmarks/convnet.md): on the conv benchmark at sparsity 0.9 (obs, α = 1e-2, BatchNorm
    re-estimated) one block kept 88.1%, per-layer blocks 77.9% (in 18× the time); 2,000-weight chunks
    were below one block without BatchNorm re-estimation (14.0 vs 20.4%) and took 27× the time. On
    MLPNet one block is the paper's setting. ``n_weights``/``n_rows`` are kept for rules that depend on
    the size (a model whose ``N × p`` gradient matrix does not fit needs chunks; pass ``blocks=``).
    """
    return "model"


def _damped_blocks(blocks: Sequence[Block], rule: Damping) -> list[Block]:
    """The blocks under the damping ``rule`` (:meth:`cbs_opt.fisher.Block.with_damping`: a relative rule
    is resolved against each block's own mean Fisher diagonal; the gradient storage is shared)."""
    return [b.with_damping(rule) for b in blocks]


def _budget_grid(size: int, fraction: float, points: int) -> np.ndarray:
    """Budgets at which to measure a block's cost curve: all of them for a small block, else a grid
    over [0, size] refined around the target fraction (where the split will land)."""
    if size + 1 <= 2 * points + 1:
        return np.arange(size + 1)
    coarse = np.linspace(0.0, 1.0, points)
    fine = np.clip(fraction + (1.0 - fraction) * np.linspace(-3.0, 1.0, points), 0.0, 1.0)
    return np.unique(np.round(np.concatenate([coarse, fine, [fraction]]) * size).astype(np.int64))


def score_curve(problem) -> np.ndarray:
    """``c(m)`` = the update cost of pruning nothing plus the ``m`` smallest single-weight OBS scores
    ``w̃_i²/(2[F⁻¹]_ii)`` — the cost curve that ignores interactions between pruned weights (WoodFisher's
    global ranking). One ``diag(F⁻¹)`` per block, no solve: the curve of choice for large blocks."""
    from solvers.obs import obs_scores
    scores = np.sort(obs_scores(problem))
    return problem.update_constant + np.concatenate([[0.0], np.cumsum(scores)])


def curve_solver_for(solver: str, size: int) -> str:
    """The solver that measures a block's cost curve for ``solver`` (issue-15 item 16).

    A curve needs a solve at every grid budget, so it must not cost more than the solves themselves: the
    blocks of more than :data:`SCORE_CURVE_SIZE` weights use :func:`score_curve` (one ``diag(F⁻¹)``,
    no solve: measured on the conv benchmark, solver curves over 34 blocks of 2,000 weights took 300 s);
    otherwise the one-shot backends (magnitude, obs, greedy_swap) measure their own curves; for the others (searches
    with a per-call setup: update_swap, iht, relaxation, the exact ones) a block of at most
    :data:`EXACT_CURVE_SIZE` weights is measured exactly with ``miqp`` (milliseconds there, and a curve
    no heuristic beats) and a larger one with ``obs``. The final solve at the chosen budget always uses
    ``solver`` itself.
    """
    if size > SCORE_CURVE_SIZE:
        return "scores"
    if solver in CHEAP_SOLVERS:
        return solver
    if size <= EXACT_CURVE_SIZE and "miqp" in solvers.available():
        return "miqp"
    return "obs"


def block_curves(blocks: Sequence[Block], total: int, solver: str, *, seed: int = 0, time_limit=None,
                 options: dict | None = None, points: int = 9, progress: bool = False,
                 curve_solver: str = "auto", executor=None):
    """Per-block cost curves ``c_b(0..p_b)`` (see :func:`_budget_grid`).

    ``curve_solver="auto"`` measures them with :func:`curve_solver_for` (``solver`` itself when it is a
    one-shot backend on a block of at most :data:`SCORE_CURVE_SIZE` weights), ``"scores"`` with
    :func:`score_curve`, or with the named backend. Measured curves run through ``executor``
    (:mod:`cbs_opt.executors`: this process when ``None``, a process pool, a Dask client), one task per
    block. Returns ``(curves, cache, exact)``: the dense curves, the solutions of ``solver`` itself
    computed on the way ({(b, m): Solution}) and whether every curve was measured at every budget (no
    interpolation).
    """
    options = dict(options or {})
    sizes = [b.size for b in blocks]
    fraction = total / max(1, sum(sizes))
    usings = [curve_solver_for(solver, b.size) if curve_solver == "auto" else curve_solver for b in blocks]
    measured = [b for b, u in enumerate(usings) if u != "scores"]
    grids = {b: _budget_grid(blocks[b].size, fraction, points) for b in measured}
    costs, cache = block_costs([blocks[b] for b in measured], [grids[b] for b in measured],
                               [usings[b] for b in measured], executor=executor, seed=seed, time_limit=time_limit,
                               options=[options if usings[b] == solver else {} for b in measured],
                               keep=[usings[b] == solver for b in measured], progress=progress)
    by_block = dict(zip(measured, costs))
    curves, exact = [], True
    for b, block in enumerate(blocks):
        if usings[b] == "scores":
            curves.append(score_curve(block.problem))
            exact = False
            continue
        exact &= grids[b].size == block.size + 1
        curves.append(interpolate_curve(grids[b], by_block[b], block.size))
    # block_costs numbers the blocks it was given; map back to the caller's block indices
    cache = {(measured[i], m): sol for (i, m), sol in cache.items()}
    return curves, cache, exact


# -- data -------------------------------------------------------------------------------------------
def _split_samples(data, n_fisher: int, n_calib: int, seed: int):
    """``(fisher_data, (calib_x, calib_y))`` drawn from ``data`` for one stage.

    A pair of tensors: a seeded random draw of ``n_fisher + n_calib`` distinct samples, the first
    ``n_fisher`` for the Fisher and the rest held out. An iterable of batches: its first
    ``n_fisher + n_calib`` samples in the loader's order (the order is the caller's: a shuffled loader
    gives other samples on each run unless its generator is seeded). With fewer samples than that,
    the calibration samples are the Fisher samples.
    """
    if _is_pair_of_tensors(data):
        x, y = data
        x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        y = torch.from_numpy(y) if isinstance(y, np.ndarray) else y
        n = int(x.shape[0])
        if n >= n_fisher + n_calib:
            idx = torch.as_tensor(np.random.default_rng(seed).choice(n, size=n_fisher + n_calib, replace=False))
            fi, ci = torch.sort(idx[:n_fisher]).values, torch.sort(idx[n_fisher:]).values
            return (x[fi], y[fi]), (x[ci], y[ci])
        fx, fy = collect_samples(data, n_fisher, seed=seed)
        return (fx, fy), (fx, fy)
    with warnings.catch_warnings():  # warn below about the Fisher samples, not the sum asked for here
        warnings.simplefilter("ignore")
        x, y = collect_samples(data, n_fisher + n_calib, seed=seed)
    if x.shape[0] < n_fisher:
        warnings.warn(f"data holds only {x.shape[0]} samples, fewer than n_samples={n_fisher}; using them all",
                      stacklevel=4)
    if x.shape[0] >= n_fisher + n_calib:
        return (x[:n_fisher], y[:n_fisher]), (x[n_fisher:], y[n_fisher:])
    return (x[:n_fisher], y[:n_fisher]), (x[:n_fisher], y[:n_fisher])


def _refit_samples(data, n_fisher: int, n_calib: int, n_grad: int, seed: int):
    """``(fisher_data, calib, grad_data)`` of a refit pass: as :func:`_split_samples`, plus ``n_grad``
    samples for the mean gradient that are disjoint from the calibration samples (they score the step, so
    the step must not have seen them): the Fisher samples first, then others. ``grad_data`` is ``None``
    when ``n_grad`` is 0 (the mean of the Fisher rows is used). With too few samples for disjoint sets the
    calibration samples are the Fisher samples (as in :func:`_split_samples`) and the gradient takes all.
    """
    if _is_pair_of_tensors(data):
        x, y = data
        x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        y = torch.from_numpy(y) if isinstance(y, np.ndarray) else y
        n = int(x.shape[0])
        perm = np.random.default_rng(seed).permutation(n)
        fi = perm[:min(n, n_fisher)]
        if n >= n_fisher + n_calib:
            ci = perm[n_fisher:n_fisher + n_calib]
            gi = np.concatenate([fi, perm[n_fisher + n_calib:]])[:n_grad]
        else:
            ci, gi = fi, perm[:n_grad]

        def take(idx):
            idx = torch.as_tensor(np.sort(idx))
            return x[idx], y[idx]
        return take(fi), take(ci), (take(gi) if n_grad else None)
    with warnings.catch_warnings():  # the Fisher's own call warns about too few samples, not this one
        warnings.simplefilter("ignore")
        x, y = collect_samples(data, n_fisher + n_calib + n_grad, seed=seed)
    n = int(x.shape[0])
    fisher = (x[:n_fisher], y[:n_fisher])
    if n >= n_fisher + n_calib:
        calib = (x[n_fisher:n_fisher + n_calib], y[n_fisher:n_fisher + n_calib])
        gx = torch.cat([x[:n_fisher], x[n_fisher + n_calib:]])[:n_grad]
        gy = torch.cat([y[:n_fisher], y[n_fisher + n_calib:]])[:n_grad]
    else:
        calib, gx, gy = fisher, x[:n_grad], y[:n_grad]
    return fisher, calib, ((gx, gy) if n_grad else None)


class _ModelState:
    """Snapshot of the pruned parameters and the BatchNorm buffers, to undo a trial write."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        params = dict(model.named_parameters())
        self.params = {n: params[n].detach().clone() for n in names}
        self.live = {n: params[n] for n in names}
        self.buffers = {}
        for layer in batchnorm_modules(model):
            for key, buf in layer.named_buffers(recurse=False):
                self.buffers[(layer, key)] = (buf, buf.detach().clone())

    @torch.no_grad()
    def restore(self) -> None:
        for n, value in self.params.items():
            self.live[n].data.copy_(value)
        for (layer, key), (buf, value) in self.buffers.items():
            buf.copy_(value)


# -- one stage ---------------------------------------------------------------------------------------
def _solve_stage(bl: list[Block], m_new: int, cand: Candidate, *, allocation: str, seed: int, time_limit,
                 curve_points: int, curve_solver: str, progress: bool, label: str, executor=None,
                 structured: Sequence | None = None):
    """Split the stage budget over the (damped) blocks and solve each: ``(budgets, alloc, solutions, t)``.

    ``structured`` (one :class:`~cbs_opt.budget.Budget` per block, N:M or per row) fixes every block's
    budget: nothing to split. Solves (and measured cost curves) run through ``executor``.
    """
    options = dict(cand.options)
    t0 = time.perf_counter()
    cache: dict = {}
    alloc = None
    if structured is not None:
        budgets = list(structured)
    elif len(bl) == 1:
        budgets = np.array([m_new])
    elif allocation == "uniform":
        budgets = uniform_split([b.size for b in bl], m_new)
    else:
        curves, cache, full = block_curves(bl, m_new, cand.solver, seed=seed, time_limit=time_limit,
                                           options=options, points=curve_points, progress=progress,
                                           curve_solver=curve_solver, executor=executor)
        alloc = allocate(curves, m_new)
        alloc.exact = alloc.exact and full  # exact for the measured curves only when not interpolated
        budgets = alloc.counts
    t_curves = time.perf_counter() - t0
    t0 = time.perf_counter()
    sols = solve_blocks(bl, budgets, cand.solver, executor=executor, seed=seed, time_limit=time_limit,
                        options=options, cache=cache, progress=progress and len(bl) > 1, release=False)
    if structured is not None:
        budgets = np.array([b.n_prune for b in structured])
    return budgets, alloc, sols, {"curves": t_curves, "solve": time.perf_counter() - t0}


def _write(bl: Sequence[Block], values: Sequence[np.ndarray], tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for block, vals in zip(bl, values):
            block.scatter(vals, tensors)


def _values(bl, sols, update: bool, rule: Damping | None = None):
    """The new block vectors: CBS-U of each solution (optionally re-damped with ``rule``) or zeros."""
    if not update:
        return [b.problem.zeroed(s.pruned) for b, s in zip(bl, sols)]
    if rule is None:
        return [s.weights for s in sols]
    return [b.problem.update(s.pruned) for b, s in zip(_damped_blocks(bl, rule), sols)]


def prune(model: nn.Module, data, sparsity: float | None = None, solver: str | Sequence[str] = "auto",
          objective: str = "update",
          update: bool = True, n_samples: int = 1000, damping="auto",
          blocks: Literal["auto", "model", "layer", "row"] | int = "auto", loss="cross_entropy", device=None,
          seed: int = 0, inplace: bool = False, stages: int = 1, solver_options: dict[str, Any] | None = None,
          attach: Literal["direct", "torch_prune"] = "direct", progress: bool = False, *,
          params: Sequence[str] | None = None, batch_size: int = 1, time_limit: float | None = None,
          schedule: str | Sequence[float] = "geometric",
          allocation: Literal["optimal", "uniform"] | None = None,
          curve_points: int = 9, curve_solver: str = "auto", gradient: bool = False, chunk_size: int = 256,
          fisher_dtype: torch.dtype | None = None, select: str | bool | None = "auto",
          select_budget: float | None = 120.0, calibration: int = 5000,
          recalibrate_bn: bool | None = None, pattern: str | None = None, balanced: str | None = None,
          curvature: Literal["fisher", "activations"] = "fisher", executor=None, jobs: int | None = None,
          scheduler: str | None = None, memory_limit: int | None = None,
          gradient_storage: Literal["memory", "disk"] = "memory", storage_dir: str | None = None,
          fisher_method: str = "auto", refits: int | Literal["auto"] = "auto",
          refit_samples: int | Literal["auto"] = "auto") -> PruneResult:
    """Prune ``sparsity`` of the selected weights of ``model`` (one global budget) → :class:`PruneResult`.

    ``prune(model, data, sparsity)`` with nothing else uses the defaults chosen by measurement
    (docs/benchmarks/mlpnet_mnist.md, docs/benchmarks/convnet.md): the candidates
    :data:`DEFAULT_CANDIDATES` (solver × relative damping), the true loss on held-out calibration samples
    choosing between them, blocks by :func:`auto_blocks`, BatchNorm statistics re-estimated when the
    model has BatchNorm. ``stages`` is the accuracy/time knob (:data:`RECOMMENDED_STAGES` for high sparsity).

    model       a ``torch.nn.Module``; copied first unless ``inplace=True`` (then changed in place). Its
                train/eval modes are kept: the Fisher and every evaluation run in eval mode, and each
                submodule's ``training`` flag is restored on the result
    data        a pair of tensors ``(inputs, targets)`` — a random subset is drawn under ``seed`` (stage
                ``k`` under ``seed + k``) — or an iterable of ``(inputs, targets)`` batches (a DataLoader),
                of which the first samples are used *in the loader's order*: the order is the caller's, so
                a shuffled loader gives the same masks for the same ``seed`` only if its generator is
                seeded too (``DataLoader(..., generator=torch.Generator().manual_seed(0))``)
    sparsity    target fraction in [0, 1) of the selected weights (``params``; default: Linear/Conv
                weights) to prune, counted over all of them together. A sparsity that would leave fewer
                weights than there are selected tensors is refused (``InvalidArgumentError`` giving the
                effective count): a network with a tensor pruned away entirely computes nothing
    solver      a registered backend (``solvers.available()``), a sequence of them (candidates), or
                "auto" (:data:`DEFAULT_SOLVERS`); ``solver_options`` are the solver's options (with several
                solvers: ``{solver: {option: value}}``); ``time_limit`` applies to each solve
    damping     ``λ`` of ``F = GᵀG/N + λI`` per block (:mod:`cbs_opt.damping`): a number (absolute), a
                ``Damping`` / ``"relative:α"`` (``λ = α·mean diag(GᵀG/N)`` of each block, invariant to
                rescaling the loss), a sequence of rules (candidates), or "auto" (relative,
                α ∈ :data:`DEFAULT_ALPHAS`)
    select      how candidates (solver × damping rule, then the damping of the CBS-U step) are chosen:
                "loss" / "accuracy" — the lowest mean loss / highest accuracy on ``calibration`` held-out
                samples (:mod:`cbs_opt.selection`), trying candidates in priority order while
                ``select_budget`` seconds last (in all, split evenly over the stages; the first candidate
                is always tried, so the budget bounds the time selection adds); ``None``/``False`` —
                the first candidate; "auto" — "accuracy" for the classification losses
                ("cross_entropy", "nll"), else "loss", when there is more than one candidate
    calibration the number of held-out samples that score candidates and re-estimate BatchNorm, drawn
                with the Fisher samples but disjoint from them (a loader: the samples after the first
                ``n_samples``); data with fewer than ``n_samples + calibration`` samples reuses the
                Fisher samples for calibration
    objective   "update" (combinatorial OBS) or "selection" (the paper's CBS-S) — what the solver minimises
    update      True: apply CBS-U to the surviving weights; False: only zero the pruned ones
    n_samples, loss, batch_size, gradient
                the Fisher from ``n_samples`` gradient rows (see :func:`cbs_opt.fisher.build_blocks`);
                ``gradient=True`` adds the mean gradient as the first-order term
    blocks      "auto" (:func:`auto_blocks`), "model" (one block), "layer", "row", or a chunk size
    allocation  "optimal" (per-block cost curves + exact split, see the module docstring; the default) or
                "uniform" (the default of ``curvature="activations"``);
                ``curve_points`` sets the curve grid for large blocks, ``curve_solver`` the backend that
                measures the curves (see :func:`curve_solver_for`)
    stages, schedule
                multi-stage pruning along :func:`sparsity_schedule`; each stage re-estimates the Fisher on
                the pruned network (stage ``k`` samples with ``seed + k``)
    refits, refit_samples
                first-order refit passes after every stage (:mod:`cbs_opt.refit`): ``"auto"`` is
                :data:`REFIT_PASSES` when held-out scoring is on (``select``), ``update=True`` and the loss is
                "cross_entropy" or "nll" (whose Hessian the empirical Fisher estimates), else 0; a number
                asks for that many (``0`` turns them off). Each pass computes ``n_samples`` per-sample
                gradients and the mean gradient over ``refit_samples`` further samples (``"auto"``:
                ``10 × n_samples``; ``0``: the mean of the Fisher rows), disjoint from the ``calibration``
                samples that choose the step
    recalibrate_bn
                re-estimate BatchNorm running statistics on the calibration samples after each stage
                (:func:`cbs_opt.batchnorm.recalibrate_batchnorm`); ``None``: on when the model has BatchNorm
    attach      "direct" (write zeros into the weights) or "torch_prune" (also register
                ``torch.nn.utils.prune`` masks: ``weight_orig`` / ``weight_mask``)
    device      where to compute; the model must already be there (default: where it is)
    pattern, balanced
                structured sparsity (:mod:`cbs_opt.structured`): ``pattern="N:M"`` prunes ``M − N`` of every
                ``M`` consecutive weights along the input dimension of each row (Linear: a row; Conv: the
                flattened in×kh×kw of an output channel) — ``sparsity`` is implied and, if given, must
                agree; ``balanced="row"`` prunes ``round(sparsity·L)`` of every row. Every block then has a
                per-group budget (no split across blocks) and the written masks are checked. Layers whose
                rows do not divide into groups of ``M`` are left dense with a warning (or refused when
                named in ``params``)
    curvature   "fisher" (default): the empirical Fisher of the loss; "activations": layer-wise
                reconstruction, every row under its layer's ``XᵀX/n + λI`` from calibration inputs
                (:func:`cbs_opt.layerwise.prune_layerwise`, one stage, sequential)
    executor, jobs, scheduler
                where the block solves and cost curves run (:mod:`cbs_opt.executors`): any object with
                ``submit`` (a ``concurrent.futures`` executor, a Dask ``Client``), ``jobs=N`` local
                processes, or ``scheduler="tcp://…"`` a Dask cluster; default this process
    memory_limit, gradient_storage, storage_dir, fisher_method
                the gradient phase (:func:`cbs_opt.fisher.build_blocks`): a byte budget refused up front
                with ``MemoryLimitError``, ``"disk"`` for a memory-mapped ``G`` (in ``storage_dir``, default
                the system's temporary folder; 25 M weights at N = 256 peak at 4.2 GiB), and ``"auto"`` / ``"hooks"``
                / ``"vmap"`` / ``"loop"`` per-sample gradients
    """
    if curvature not in ("fisher", "activations"):
        raise InvalidArgumentError(f"curvature must be 'fisher' or 'activations', got {curvature!r}")
    sparsity, structure = _structure_target(sparsity, pattern, balanced)
    if curvature == "activations":
        return _prune_activations(
            model, data, sparsity, pattern=pattern, balanced=balanced, solver=solver, damping=damping,
            n_samples=n_samples, stages=stages, objective=objective, update=update, seed=seed, inplace=inplace,
            params=params, time_limit=time_limit, solver_options=solver_options, allocation=allocation,
            curve_points=curve_points, progress=progress, executor=executor, jobs=jobs, scheduler=scheduler)
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparsity = _check_sparsity(sparsity)
    if not _is_count(stages, 1):
        raise InvalidArgumentError(f"stages must be a positive integer, got {stages!r}")
    if attach not in ("direct", "torch_prune"):
        raise InvalidArgumentError(f"attach must be 'direct' or 'torch_prune', got {attach!r}")
    if allocation is None:
        allocation = "optimal"
    if allocation not in ("optimal", "uniform"):
        raise InvalidArgumentError(f"allocation must be 'optimal' or 'uniform', got {allocation!r}")
    if not _is_count(curve_points, 2):
        raise InvalidArgumentError(f"curve_points must be an integer >= 2, got {curve_points!r}")
    if objective not in ("update", "selection"):
        raise InvalidArgumentError(f"objective must be 'update' or 'selection', got {objective!r}")
    if select not in ("auto", "loss", "accuracy", None, False):
        raise InvalidArgumentError(f"select must be 'auto', 'loss', 'accuracy' or None, got {select!r}")
    if not _is_count(calibration, 1):
        raise InvalidArgumentError(f"calibration must be a positive number of samples, got {calibration!r}")
    if recalibrate_bn not in (None, True, False):
        raise InvalidArgumentError(f"recalibrate_bn must be None, True or False, got {recalibrate_bn!r}")
    if curve_solver not in ("auto", "scores"):
        get_backend(curve_solver)
    if not _is_count(n_samples, 1):
        raise InvalidArgumentError(f"n_samples must be a positive integer, got {n_samples!r}")
    cands = _candidates(solver, damping, solver_options)
    if hasattr(data, "__len__") and len(data) == 0:
        raise InvalidArgumentError("data is empty: need at least one (inputs, targets) batch")
    names = select_parameters(model, params)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in names}
    if pattern is not None:
        names = _pattern_parameters(names, shapes, pattern, explicit=params is not None)
    check_device(model, device)
    schedule_values = sparsity_schedule(sparsity, int(stages), schedule)
    sizes = {n: p.numel() for n, p in model.named_parameters() if n in names}
    n_total = sum(sizes.values())
    m_total = int(round(sparsity * n_total))
    if m_total > n_total - len(names):
        raise InvalidArgumentError(
            f"sparsity={sparsity} prunes {m_total} of {n_total} weights, leaving {n_total - m_total}, fewer than "
            f"one per selected tensor ({len(names)}); the largest usable sparsity here is "
            f"{(n_total - len(names)) / n_total:.6g}")

    # log-likelihood losses: accuracy is meaningful, and the empirical Fisher estimates their Hessian
    likelihood = isinstance(loss, str) and loss in ("cross_entropy", "nll")
    metric = None  # how held-out samples score the model: candidates and refit steps
    if select not in (None, False):
        if select == "auto":
            metric = "accuracy" if likelihood else "loss"
        else:
            metric = select
    choose = metric is not None and len(cands) > 1
    if not update or not choose:
        update_rules: list[Damping] = []
    else:
        update_rules = list(dict.fromkeys(c.damping for c in cands))
    n_refits = _check_refits(refits, metric=metric, update=update, likelihood=likelihood)
    if isinstance(refit_samples, str) and refit_samples == "auto":
        n_refit_samples = REFIT_SAMPLES_PER_ROW * int(n_samples) * batch_size
    elif not _is_count(refit_samples, 0):
        raise InvalidArgumentError(f"refit_samples must be 'auto' or a number of samples >= 0, got {refit_samples!r}")
    else:
        n_refit_samples = int(refit_samples)  # 0: the mean of the Fisher's own gradient rows
    use_bn = has_batchnorm(model) if recalibrate_bn is None else bool(recalibrate_bn)
    # the selection budget is for the whole call: split evenly over the stages
    stage_budget = None if select_budget is None else float(select_budget) / len(schedule_values)
    need_calib = choose or n_refits > 0 or use_bn

    start_all = time.perf_counter()
    target = model if inplace else copy.deepcopy(model)
    tensors = dict(target.named_parameters())
    live = {n: tensors[n].data for n in names}
    keep = {n: np.ones(sizes[n], dtype=bool) for n in names}
    timings = {"gradients": 0.0, "curves": 0.0, "solve": 0.0, "select": 0.0, "write": 0.0, "refit": 0.0}
    records: list[StageRecord] = []
    last_blocks: list[Block] = []
    last_solutions: list = []

    def fisher_blocks(fisher_data, stage_blocks, fisher_seed: int, kind: str, with_gradient: bool):
        """The Fisher blocks of the current (pruned) weights on ``fisher_data``, under the first candidate's
        damping (re-damped per candidate / per refit step)."""
        return build_blocks(target, fisher_data, params=names, n_samples=n_samples, damping=cands[0].damping,
                            blocks=stage_blocks, loss=loss, seed=fisher_seed, device=device, objective=kind,
                            batch_size=batch_size, masks=keep, gradient=with_gradient, chunk_size=chunk_size,
                            dtype=fisher_dtype, progress=progress, method=fisher_method,
                            memory_limit=memory_limit, gradient_storage=gradient_storage, storage_dir=storage_dir)

    def put(bl, values, calib) -> None:
        """Write the block ``values`` into the model, then re-estimate BatchNorm statistics on ``calib`` (if on)."""
        _write(bl, values, live)
        if use_bn:
            recalibrate_batchnorm(target, calib, n_samples=calib[0].shape[0], device=device)

    def trial(bl, values, calib, snapshot: _ModelState, measure):
        """``measure(model)`` with ``values`` written (and BatchNorm re-estimated), the model then restored."""
        put(bl, values, calib)
        try:
            return measure(target)
        finally:
            snapshot.restore()

    def refit(k: int, r: int, stage_blocks) -> dict:
        """Refit pass ``r`` after stage ``k`` (:mod:`cbs_opt.refit`): a Fisher at the pruned weights on
        fresh samples, then the best damped Newton step on the kept weights (or none)."""
        rseed = seed + k + REFIT_SEED_STRIDE * (r + 1)
        fisher_data, calib, grad_data = _refit_samples(data, int(n_samples) * batch_size, int(calibration),
                                                       n_refit_samples, rseed)
        bl = fisher_blocks(fisher_data, stage_blocks, rseed, "update", False)
        scorer = CalibrationScorer(calib[0], calib[1], loss=loss, metric=metric, device=device)
        snapshot = _ModelState(target, names)

        def evaluate(values):
            return trial(bl, values, calib, snapshot, lambda model: scorer.chunk_stats(model, REFIT_CHUNKS))

        gradients = None
        if grad_data is not None:
            gradients = block_gradients(bl, mean_gradient(target, *grad_data, names, loss=loss, device=device))
        values, record = refit_pass(bl, evaluate, REFIT_ALPHAS, gradients)
        if progress:  # one line per pass: long conv-net runs spend minutes here
            kept = "no step kept" if record["alpha"] is None else f"step α = {record['alpha']:g} kept"
            print(f"stage {k + 1}, refit pass {r + 1}: held-out loss {record['loss']:.4g}, {kept}", flush=True)
        if values is not None:
            put(bl, values, calib)
        return record

    stage_iter = list(enumerate(schedule_values))
    if progress and stages > 1:
        from tqdm.auto import tqdm
        stage_iter = tqdm(stage_iter, desc="stages", unit="stage")
    scope = contextlib.ExitStack()  # closes an executor prune() created, whatever happens in the stages
    pool = scope.enter_context(executor_scope(executor, jobs, scheduler))
    # Fisher and evaluations in eval mode (no dropout draws, BatchNorm running stats); every submodule's
    # own train/eval flag comes back when the scope closes
    scope.enter_context(eval_mode(target))
    try:
        for k, stage_sparsity in stage_iter:
            n_pruned = sum(int((~m).sum()) for m in keep.values())
            m_new = max(0, int(round(stage_sparsity * n_total)) - n_pruned)
            if m_new == 0:
                continue
            st = dict.fromkeys(timings, 0.0)
            t0 = time.perf_counter()
            if need_calib:
                fisher_data, calib = _split_samples(data, int(n_samples) * batch_size, int(calibration), seed + k)
            else:
                fisher_data, calib = data, None
            if blocks == "auto":  # the rule needs N, the number of gradient rows
                n_rows = min(int(n_samples), _count(fisher_data, int(n_samples) * batch_size) // batch_size)
                stage_blocks = auto_blocks(n_total - n_pruned, max(1, n_rows))
            else:
                stage_blocks = blocks
            # the Fisher once per stage, under the first candidate's damping (re-damped per candidate below)
            last_blocks = []  # let the previous stage's gradients go before this stage's are computed
            bl = fisher_blocks(fisher_data, stage_blocks, seed + k, objective, gradient)
            st["gradients"] = time.perf_counter() - t0
            structured = None
            if structure is not None:  # per-group counts of every block: this stage's share of the final ones
                flat_keep = {n: keep[n] for n in names}
                structured = [block_budget(b, shapes, pattern=pattern, balanced=balanced, sparsity=sparsity,
                                           pruned_before=flat_keep, fraction=stage_sparsity / sparsity)
                              for b in bl]
                m_new = sum(b.n_prune for b in structured)
                if m_new == 0:
                    continue

            scorer = None
            if choose:
                scorer = CalibrationScorer(calib[0], calib[1], loss=loss, metric=metric, device=device)
            snapshot = _ModelState(target, names) if scorer is not None else None
            label = f"stage {k + 1}"

            def run(cand: Candidate):
                damped = _damped_blocks(bl, cand.damping)
                budgets, alloc, sols, t = _solve_stage(
                    damped, m_new, cand, allocation=allocation, seed=seed, time_limit=time_limit,
                    curve_points=int(curve_points), curve_solver=curve_solver, progress=progress, label=label,
                    executor=pool, structured=structured)
                st["curves"] += t["curves"]
                st["solve"] += t["solve"]
                return damped, budgets, alloc, sols

            def score(values) -> float:
                return trial(bl, values, calib, snapshot, scorer)

            def evaluate(cand: Candidate):
                out = run(cand)
                return score(_values(out[0], out[3], update)), out

            t_sel = time.perf_counter()
            if scorer is None:
                best, (damped, budgets, alloc, sols) = cands[0], run(cands[0])
                values = _values(damped, sols, update)
                choice = {"candidate": str(best)}
            else:
                chosen_sel = select_best(cands, evaluate, budget=stage_budget)
                best, (damped, budgets, alloc, sols) = chosen_sel.best, chosen_sel.payload
                values = _values(damped, sols, update)
                choice = {"candidate": str(best), "score": chosen_sel.score,
                          "scores": [(str(c), s) for c, s in chosen_sel.scores], "skipped": chosen_sel.skipped}
                # the strength of the CBS-U step: the same pruned sets, updated under the other rules
                left = None if stage_budget is None else max(0.0, stage_budget - (time.perf_counter() - t_sel))
                others = [r for r in update_rules if r != best.damping] + (["zeroed"] if update_rules else [])
                if others and (left is None or left > 0):
                    def evaluate_update(rule):
                        if rule == best.damping:
                            return chosen_sel.score, values
                        v = _values(damped, sols, False) if rule == "zeroed" else _values(damped, sols, True, rule)
                        return score(v), v

                    up = select_best([best.damping] + others, evaluate_update, budget=left)
                    values = up.payload
                    choice["update_damping"] = str(up.best)
                    choice["update_scores"] = [(str(r), s) for r, s in up.scores]
            st["select"] = max(0.0, time.perf_counter() - t_sel - st["curves"] - st["solve"])

            t0 = time.perf_counter()
            put(damped, values, calib)
            for block, sol in zip(damped, sols):
                for s in block.param_slices:
                    inside = sol.pruned[(sol.pruned >= s.start) & (sol.pruned < s.stop)] - s.start
                    keep[s.name][s.indices[inside]] = False
            st["write"] = time.perf_counter() - t0
            del bl, snapshot
            t0 = time.perf_counter()
            if n_refits:
                choice["refits"] = []
                for r in range(n_refits):  # until REFIT_PATIENCE passes in a row keep nothing
                    choice["refits"].append(refit(k, r, stage_blocks))
                    if all(rec["alpha"] is None for rec in choice["refits"][-REFIT_PATIENCE:]) \
                            and len(choice["refits"]) >= REFIT_PATIENCE:
                        break
            st["refit"] = time.perf_counter() - t0
            for key in timings:
                timings[key] += st[key]
            records.append(StageRecord(
                sparsity=stage_sparsity, n_pruned=sum(int((~m).sum()) for m in keep.values()),
                budgets={b.name: int(m) for b, m in zip(damped, budgets)}, allocation=alloc,
                objective=float(sum(s.objective for s in sols)), solutions=sols, timings=st, choice=choice))
            last_blocks, last_solutions = damped, sols
    finally:
        scope.close()

    masks = {n: torch.as_tensor(keep[n].reshape(tensors[n].shape), device=tensors[n].device) for n in names}
    if structure is not None:  # the hardware pattern is a promise: verify what was written
        check_masks({n: keep[n] for n in names}, shapes, pattern=pattern, balanced=balanced, sparsity=sparsity)
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


def _is_count(value, low: int) -> bool:
    """Whether ``value`` is an integer (not a bool) ``>= low``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low


def _check_refits(refits, *, metric, update: bool, likelihood: bool) -> int:
    """The number of refit passes per stage: ``"auto"`` → :data:`REFIT_PASSES` when held-out scoring is on,
    the survivors are updated and the loss is a log-likelihood (cross_entropy, nll: the losses whose
    Hessian the empirical Fisher estimates, so that its Newton step has the right length — for a loss
    scaled by ``c`` the Fisher scales by ``c²`` but the Hessian by ``c``), else 0. An explicit count needs
    held-out scoring (a ``select``) and ``update=True``."""
    if isinstance(refits, str) and refits == "auto":
        return REFIT_PASSES if metric is not None and update and likelihood else 0
    if not _is_count(refits, 0):
        raise InvalidArgumentError(f"refits must be 'auto' or a number of passes >= 0, got {refits!r}")
    if refits and metric is None:
        raise InvalidArgumentError(f"refits={refits} needs held-out scoring to choose its steps; "
                                   "it cannot be used with select=None")
    if refits and not update:
        raise InvalidArgumentError(f"refits={refits} moves the kept weights, which update=False forbids")
    return int(refits)


def _structure_target(sparsity, pattern, balanced) -> tuple[float, str | None]:
    """The target sparsity and the structure kind ("pattern", "balanced" or None) of a prune() call."""
    if pattern is not None and balanced is not None:
        raise InvalidArgumentError("give pattern= or balanced=, not both")
    if pattern is not None:
        n, m = parse_pattern(pattern, "pattern")
        implied = (m - n) / m
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-12:
            raise InvalidArgumentError(f"pattern={pattern!r} implies sparsity {implied:g}, but sparsity={sparsity} "
                                       "was given; leave sparsity out")
        return implied, "pattern"
    if balanced is not None:
        if balanced not in BALANCED:
            raise InvalidArgumentError(f"balanced must be one of {BALANCED}, got {balanced!r}")
        if sparsity is None:
            raise InvalidArgumentError("balanced='row' needs sparsity= (the fraction pruned in every row)")
        return sparsity, "balanced"
    if sparsity is None:
        raise InvalidArgumentError("sparsity is required (or give pattern='N:M')")
    return sparsity, None


def _pattern_parameters(names: list[str], shapes: dict, pattern: str, *, explicit: bool) -> list[str]:
    """The parameters an N:M pattern applies to: rows that divide into groups of M. Others are left dense
    with a warning — or refused when the caller named them in ``params``."""
    misfits = [n for n in names if not fits_pattern(shapes[n], pattern)]
    if misfits and explicit:
        raise InvalidArgumentError(f"pattern={pattern!r} needs rows divisible by its group size; "
                                   f"params names {', '.join(misfits)} whose rows are not "
                                   f"({', '.join(str(shapes[n]) for n in misfits)})")
    if misfits:
        warnings.warn(f"pattern={pattern!r}: leaving {', '.join(misfits)} dense (rows of "
                      f"{', '.join(str(int(np.prod(shapes[n][1:]))) for n in misfits)} weights do not divide into "
                      "groups); pass params= to choose the layers yourself", stacklevel=3)
    kept = [n for n in names if n not in misfits]
    if not kept:
        raise InvalidArgumentError(f"pattern={pattern!r} fits none of the selected weights (row lengths "
                                   f"{sorted({int(np.prod(shapes[n][1:])) for n in names})})")
    return kept


def _prune_activations(model, data, sparsity, *, pattern, balanced, solver, damping, n_samples, stages, objective,
                       update, seed, inplace, params, time_limit, solver_options, allocation, curve_points,
                       progress, executor, jobs, scheduler) -> PruneResult:
    """``prune(..., curvature="activations")``: the layer-wise path (:func:`cbs_opt.layerwise.prune_layerwise`)."""
    from .layerwise import prune_layerwise

    unsupported = [name for name, bad in (("stages > 1", stages != 1), ("objective='selection'", objective != "update"),
                                          ("balanced=", balanced is not None),
                                          ("executor/jobs/scheduler", any(v is not None for v in (executor, jobs, scheduler))))
                   if bad]
    if unsupported:
        raise InvalidArgumentError(f"curvature='activations' does not take {', '.join(unsupported)} "
                                   "(it prunes layer by layer in one sequential pass)")
    if isinstance(solver, (list, tuple)):
        raise InvalidArgumentError("curvature='activations' takes one solver (or 'auto'), not a list")
    if damping == "auto":
        damping = Damping.of_diagonal(0.01)  # SparseGPT's percdamp; measured in docs/benchmarks/layerwise.md
    return prune_layerwise(model, data, sparsity, solver=solver, n_samples=n_samples, damping=damping,
                           allocation=allocation or "uniform", seed=seed, time_limit=time_limit,
                           solver_options=solver_options, params=params, inplace=inplace, progress=progress,
                           pattern=pattern, update="optimal" if update else "none", curve_points=curve_points)


def _count(data, limit: int) -> int:
    """How many samples ``data`` offers, up to ``limit`` (a pair of tensors: its length)."""
    if _is_pair_of_tensors(data):
        return min(limit, int(data[0].shape[0]))
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        return min(limit, int(data[0].shape[0]))
    return limit
