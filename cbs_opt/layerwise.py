"""Layer-wise reconstruction pruning on the CBS engine (the OBC / SparseGPT / ALPS objective).

For a Linear layer with calibration inputs ``X ∈ R^{n×p_in}`` (every token / sample is a row) and
weight rows ``w_r``, pruning row ``r`` to ``x_r`` changes the layer's output on the calibration data by
``X(w_r − x_r)``; its mean squared size is

    ‖X(w_r − x_r)‖²/n = (w_r − x_r)ᵀ H (w_r − x_r),        H = XᵀX/n.

So each row is the CBS problem of DESIGN §1 with the curvature ``F = H + λI`` — one ``F`` for every row
of the layer, with ``λ = α·mean(diag H)`` by default (:class:`cbs_opt.damping.Damping`; SparseGPT's
``percdamp = 0.01`` is ``α = 0.01``). Conv2d layers use the unfolded inputs
(``torch.nn.functional.unfold``: rows of ``X`` are the ``C_in·kh·kw`` patches at every output position,
rows of ``W`` the output channels over ``C_in × kh × kw``, the same order as ``weight.reshape(C_out, −1)``).

* ``H`` is accumulated on the fly by forward hooks as ``Σ XᵀX`` (float64, ``p_in × p_in``) and a row count;
  ``X`` itself is never kept beyond the batch that produced it.
* ``F`` is built once per layer as one :class:`~cbs_opt.curvature.DenseCurvature` and shared by reference by
  every row's :class:`~cbs_opt.Problem`, so its Cholesky factor, inverse and SparseGPT factor are computed
  at most once per layer.
* Each row is solved by any registered backend (exact ``enumerate`` / ``miqp`` on small rows, ``update_swap``
  / ``obs`` / ``sparsegpt`` / ``wanda`` / ``magnitude`` on large ones). ``update="optimal"`` writes the
  CBS-U weights of the chosen mask (the exact minimiser of the damped reconstruction error given the mask);
  ``"backend"`` the backend's own weights (``info["weights"]``, e.g. SparseGPT as published); ``"none"``
  only zeroes.
* Budget: ``allocation="uniform"`` gives every row its share of ``round(sparsity · total)``;
  ``"optimal"`` splits each layer's share across its rows from the rows' cost curves
  (:func:`cbs_opt.allocation.allocate`; exact for exact solvers and fully measured curves);
  ``"global"`` (one-shot only) splits the whole budget across all rows of all layers, each layer's costs
  divided by its dense output energy ``Σ_r w_rᵀHw_r`` so that the objective is the sum of the layers'
  relative reconstruction errors.
* ``sequential=True`` (SparseGPT's order): layers are pruned in the order the forward pass reaches them,
  and each layer's ``X`` is recorded on the network whose earlier layers are already pruned.
  ``sequential=False``: every ``X`` comes from the dense network (one calibration pass).
"""
from __future__ import annotations

import copy
import numbers
import time
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import nn

import solvers
from solvers.registry import _check_options, get_backend

from .allocation import Allocation, allocate, uniform_split
from .budget import parse_pattern
from .curvature import DenseCurvature
from .damping import Damping, as_damping
from .errors import ArgumentTypeError, InvalidArgumentError, ModelNotSupportedError, UnsupportedProblemError
from .fisher import Block, ParamSlice, collect_samples, eval_mode, select_parameters
from .problem import Problem
from .prune import PruneResult, StageRecord, _check_sparsity, block_curves

__all__ = ["prune_layerwise", "LayerStats", "collect_layer_statistics", "layer_inputs", "layer_curvature",
           "layer_reconstruction", "layer_errors", "ALLOCATIONS", "UPDATES"]

ALLOCATIONS = ("uniform", "optimal", "global")
#: ``solver="auto"``: rows of at most this many weights go to the exact ``miqp`` (about a second per row of
#: 40 weights at half sparsity on MLPNet's fc2), larger ones to ``update_swap``.
AUTO_EXACT_MAX_P = 40
UPDATES = ("optimal", "backend", "none")
BudgetFn = Callable[[str, tuple], Any]


# -- activation statistics ----------------------------------------------------------------------------
class LayerStats:
    """Running ``Σ XᵀX`` (float64, ``p_in × p_in``) and the number of rows of one layer's inputs.

    Only these two are kept (``__slots__``): the inputs ``X`` of a batch are folded in and dropped.
    """

    __slots__ = ("xtx", "count")

    def __init__(self, p_in: int, device=None):
        self.xtx = torch.zeros(p_in, p_in, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, X: torch.Tensor) -> None:
        """Fold the rows of ``X`` (``rows × p_in``) into the statistics."""
        X = X.detach().to(torch.float64)
        self.xtx.addmm_(X.T, X)
        self.count += X.shape[0]

    def hessian(self) -> np.ndarray:
        """``H = XᵀX/n`` (numpy float64, exactly symmetric)."""
        if self.count == 0:
            raise ModelNotSupportedError("a selected layer was never called in the forward pass; "
                                         "check params=")
        H = (self.xtx / self.count).cpu().numpy()
        return 0.5 * (H + H.T)


def _conv_padding(module: nn.Conv2d):
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            return 0
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(t % 2 for t in total):
            raise ModelNotSupportedError(f"Conv2d with padding='same' and an even effective kernel pads "
                                         f"asymmetrically; not supported for layer-wise pruning ({module})")
        return tuple(t // 2 for t in total)
    return pad


def _check_module(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        return
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ModelNotSupportedError(f"{name}: grouped Conv2d (groups={module.groups}) is not supported "
                                         "by layer-wise pruning")
        if module.padding_mode != "zeros":
            raise ModelNotSupportedError(f"{name}: Conv2d padding_mode={module.padding_mode!r} is not supported "
                                         "(only 'zeros')")
        _conv_padding(module)
        return
    raise ModelNotSupportedError(f"{name} belongs to a {type(module).__name__}; layer-wise pruning handles the "
                                 "weights of Linear and Conv2d modules")


def layer_inputs(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """The rows ``X`` (``rows × p_in``) a Linear or Conv2d module multiplies its weight rows with.

    Linear: every leading index is a sample (tokens of a sequence included). Conv2d: the unfolded patches,
    one row per (image, output position), columns in ``C_in × kh × kw`` order.
    """
    if isinstance(module, nn.Linear):
        return inp.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv2d):
        if inp.ndim == 3:
            inp = inp.unsqueeze(0)
        cols = tnf.unfold(inp, module.kernel_size, dilation=module.dilation, padding=_conv_padding(module),
                          stride=module.stride)                      # (B, C·kh·kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise ModelNotSupportedError(f"no layer inputs for a {type(module).__name__}")


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has been recorded."""


def _owner(model: nn.Module, name: str) -> nn.Module:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr != "weight":
        raise ModelNotSupportedError(f"params names {name!r}: layer-wise pruning prunes the 'weight' of "
                                     "Linear/Conv2d modules")
    _check_module(name, module)
    return module


def _run(model: nn.Module, inputs: torch.Tensor, batch_size: int, device) -> None:
    for start in range(0, inputs.shape[0], batch_size):
        try:
            model(inputs[start:start + batch_size].to(device))
        except _Stop:
            pass


def _calibrate(model: nn.Module, inputs: torch.Tensor, names: Sequence[str], *, batch_size: int,
               stop_after: str | None = None) -> dict[str, LayerStats]:
    """Hooks on the owners of ``names``, a no-grad pass over ``inputs``, hooks removed → stats per name.

    ``stop_after``: end each batch's forward pass right after that layer (its only call) was recorded.
    """
    device = next(model.parameters()).device
    stats: dict[str, LayerStats] = {}
    handles = []

    def make_hook(name: str, module: nn.Module):
        def hook(mod, args, output):
            stats[name].add(layer_inputs(mod, args[0]))
            if name == stop_after:
                raise _Stop
        return hook

    try:
        for name in names:
            module = _owner(model, name)
            stats[name] = LayerStats(module.weight[0].numel(), device)
            handles.append(module.register_forward_hook(make_hook(name, module)))
        with torch.no_grad():
            _run(model, inputs, batch_size, device)
    finally:
        for h in handles:
            h.remove()
    return stats


def _forward_order(model: nn.Module, sample: torch.Tensor, names: Sequence[str]) -> tuple[list[str], dict]:
    """``names`` in the order the forward pass first reaches them, and how often each is called."""
    order: list[str] = []
    calls = {n: 0 for n in names}
    handles = []
    device = next(model.parameters()).device
    try:
        for name in names:
            def hook(mod, args, output, name=name):
                calls[name] += 1
                if name not in order:
                    order.append(name)
            handles.append(_owner(model, name).register_forward_hook(hook))
        with torch.no_grad():
            model(sample.to(device))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in order]
    if missing:
        raise ModelNotSupportedError(f"the forward pass never calls the layer(s) of {', '.join(missing)}; "
                                     "they cannot be pruned layer-wise (check params=)")
    return order, calls


def collect_layer_statistics(model: nn.Module, data, *, params: Sequence[str] | None = None,
                             n_samples: int = 128, seed: int = 0, batch_size: int = 64) -> dict[str, LayerStats]:
    """``Σ XᵀX`` and counts for every selected layer of the (unchanged) ``model`` in one calibration pass.

    Runs in eval mode under ``torch.no_grad``; the model's train/eval mode is restored afterwards.
    """
    names = select_parameters(model, params)
    inputs = _calibration_inputs(data, n_samples, seed)
    with eval_mode(model):
        return _calibrate(model, inputs, names, batch_size=batch_size)


def layer_curvature(stats: LayerStats, damping) -> DenseCurvature:
    """The layer's shared curvature ``F = XᵀX/n + λI`` with ``λ`` from the damping rule."""
    H = stats.hessian()
    lam = as_damping(damping).resolve(float(np.mean(np.diag(H))))
    return DenseCurvature(H, lam)


def layer_reconstruction(H: np.ndarray, W: np.ndarray, X: np.ndarray) -> tuple[float, float]:
    """``(Σ_r (w_r−x_r)ᵀH(w_r−x_r), Σ_r w_rᵀHw_r)`` = ``(‖X(W−X')ᵀ‖²/n, ‖XWᵀ‖²/n)``; their ratio is the
    relative reconstruction error of the layer (``W`` dense rows, ``X`` pruned rows)."""
    D = W - X
    return float(np.einsum("rp,pq,rq->", D, H, D)), float(np.einsum("rp,pq,rq->", W, H, W))


# -- helpers -------------------------------------------------------------------------------------------
def _calibration_inputs(data, n_samples: int, seed: int) -> torch.Tensor:
    """Calibration inputs: a tensor/array of inputs (a seeded subset), or ``(inputs, targets)`` data."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        if data.shape[0] == 0:
            raise InvalidArgumentError("data is empty: need at least one calibration input")
        data = (data, torch.zeros(data.shape[0]))
    x, _ = collect_samples(data, n_samples, seed=seed)
    return x


def _row_problems(name: str, W: np.ndarray, curv: DenseCurvature, counts, pattern, budget_fn) -> list[Problem]:
    """One Problem per row of ``W``, all sharing ``curv``."""
    rows = W.shape[0]
    if budget_fn is not None:
        spec = budget_fn(name, tuple(W.shape))
        if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], (list, tuple)):
            spec = [spec] * rows
        spec = list(spec)
        if len(spec) != rows:
            raise InvalidArgumentError(f"budget_fn({name!r}, {tuple(W.shape)}) must return (groups, counts) or "
                                       f"one (groups, counts) per row ({rows}), got {len(spec)} entries")
        return [Problem(weights=W[r], curvature=curv, groups=g, n_prune=c) for r, (g, c) in enumerate(spec)]
    if pattern is not None:
        return [Problem(weights=W[r], curvature=curv, pattern=pattern) for r in range(rows)]
    return [Problem(weights=W[r], curvature=curv, n_prune=int(counts[r])) for r in range(rows)]


def _solve(problem: Problem, m, solver: str, seed: int, time_limit, options: dict):
    if m is not None and m != problem.n_prune:
        problem = problem.with_n_prune(int(m))
    return solvers.solve(problem, solver=solver, seed=seed, time_limit=time_limit, **options)


def _per_layer(value, names: Sequence[str], what: str, check):
    """A per-layer setting: one value for all, or a mapping {param name: value} covering every layer."""
    if isinstance(value, Mapping) and not (what == "solver_options" and not _keyed_by(value, names)):
        missing = [n for n in names if n not in value]
        extra = [k for k in value if k not in names]
        if missing or extra:
            raise InvalidArgumentError(f"{what} as a mapping must name exactly the pruned parameters; "
                                       f"missing {missing}, unknown {extra}")
        return {n: check(value[n]) for n in names}
    return {n: check(value) for n in names}


def _keyed_by(mapping: Mapping, names: Sequence[str]) -> bool:
    return bool(mapping) and all(k in names for k in mapping) and all(isinstance(v, Mapping) for v in mapping.values())


# -- the main entry point -------------------------------------------------------------------------------
def prune_layerwise(model: nn.Module, data, sparsity: float = 0.5, *,
                    solver: str | Mapping[str, str] = "update_swap", n_samples: int = 128,
                    damping: Damping | float | str = Damping.of_diagonal(0.01), sequential: bool = True,
                    allocation: Literal["uniform", "optimal", "global"] = "uniform", seed: int = 0,
                    time_limit: float | None = None, solver_options: Mapping[str, Any] | None = None,
                    params: Sequence[str] | None = None, inplace: bool = False, progress: bool = False,
                    budget_fn: BudgetFn | None = None, pattern: str | None = None,
                    update: Literal["optimal", "backend", "none"] = "optimal", batch_size: int = 64,
                    curve_points: int = 9) -> PruneResult:
    """Prune ``model`` layer by layer, minimising each layer's reconstruction error (module docstring).

    model       Linear / Conv2d weights are pruned (``params`` to choose); copied unless ``inplace=True``;
                the caller's train/eval mode is kept (calibration runs in eval mode, under no_grad)
    data        calibration inputs: a tensor / array of model inputs, a pair ``(inputs, targets)`` (targets
                unused) or an iterable of such batches; ``n_samples`` of them (seeded subset of a tensor)
    sparsity    fraction of the selected weights to prune, ``round(sparsity · total)`` overall
    solver      a registered backend, ``{param name: backend}``, or "auto" (``miqp`` — proven optimal — on rows
                of at most :data:`AUTO_EXACT_MAX_P` weights, ``update_swap`` on larger ones);
                ``solver_options`` its options (or ``{param name: options}``); ``time_limit`` per row
    damping     ``λ`` rule for ``F = XᵀX/n + λI``: a :class:`Damping` (default ``of_diagonal(0.01)``),
                a number (absolute) or ``"relative:α"``
    sequential  record each layer's inputs on the network with the earlier layers already pruned
    allocation  "uniform", "optimal" (per layer, across rows, from cost curves) or "global" (across all rows
                and layers, one-shot only); ``curve_points`` sets the curve grid
    pattern     ``"N:M"`` (e.g. ``"2:4"``): at most N nonzeros in every M consecutive weights of every row,
                instead of ``sparsity`` (``Problem(pattern=)``; the solver must handle partition budgets)
    budget_fn   ``budget_fn(param name, weight shape (rows, p_in)) → (groups, counts)`` for every row, or a
                list of one pair per row: a structured budget through ``Problem(groups=, n_prune=counts)``
    update      "optimal" (CBS-U of each mask), "backend" (the backend's own weights, ``info["weights"]``),
                "none" (zero the pruned weights only)

    Returns a :class:`cbs_opt.prune.PruneResult` with one stage; ``blocks`` are the rows (``info`` holds the
    layer name, ``reconstruction`` = ``(w−x)ᵀH(w−x)`` and ``energy`` = ``wᵀHw`` with the undamped ``H`` of the
    inputs the layer saw), ``stages[0].budgets`` the per-row counts; :func:`layer_errors` sums them per layer.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if pattern is None:
        sparsity = _check_sparsity(sparsity)
    for flag, value in (("sequential", sequential), ("inplace", inplace), ("progress", progress)):
        if not isinstance(value, bool):
            raise ArgumentTypeError(f"{flag} must be True or False, got {value!r}")
    if allocation not in ALLOCATIONS:
        raise InvalidArgumentError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if allocation == "global" and sequential:
        raise InvalidArgumentError("allocation='global' needs sequential=False (the cost curves of later layers "
                                   "depend on how the earlier ones were pruned)")
    if update not in UPDATES:
        raise InvalidArgumentError(f"update must be one of {UPDATES}, got {update!r}")
    for arg, value, low in (("n_samples", n_samples, 1), ("batch_size", batch_size, 1),
                            ("curve_points", curve_points, 2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise InvalidArgumentError(f"{arg} must be an integer >= {low}, got {value!r}")
    if budget_fn is not None and not callable(budget_fn):
        raise ArgumentTypeError(f"budget_fn must be callable (name, shape) -> (groups, counts), "
                                f"got {type(budget_fn).__name__}")
    if budget_fn is not None and pattern is not None:
        raise InvalidArgumentError("give pattern or budget_fn, not both")
    if (budget_fn is not None or pattern is not None) and allocation != "uniform":
        raise InvalidArgumentError("structured budgets (pattern / budget_fn) fix every row's count; "
                                   "use allocation='uniform'")
    damping = as_damping(damping)
    names = select_parameters(model, params)
    for n in names:
        _owner(model, n)
    if solver_options is not None and not isinstance(solver_options, Mapping):
        raise ArgumentTypeError(f"solver_options must be a dict, got {type(solver_options).__name__}")

    def check_solver(s):
        if not isinstance(s, str):
            raise ArgumentTypeError(f"solver must be a backend name or {{param name: backend name}}, got {s!r}")
        if s != "auto":
            get_backend(s)
        return s

    layer_solver = _per_layer(solver, names, "solver", check_solver)
    named = dict(model.named_parameters())
    for n in names:  # "auto": exact on small rows (total budgets), the update-objective swap search otherwise
        if layer_solver[n] == "auto":
            small = named[n][0].numel() <= AUTO_EXACT_MAX_P and pattern is None and budget_fn is None
            layer_solver[n] = "miqp" if small and "miqp" in solvers.available() else "update_swap"
    layer_options = _per_layer(solver_options or {}, names, "solver_options", lambda o: dict(o or {}))
    for n in names:
        _check_options(get_backend(layer_solver[n]), layer_options[n])  # fail before any calibration work
    pat = parse_pattern(pattern) if pattern is not None else None
    if pattern is not None or budget_fn is not None:
        for n in names:
            info = get_backend(layer_solver[n])
            if "partition" not in getattr(info, "budgets", ("total",)):
                raise UnsupportedProblemError(f"solver {info.name!r} does not handle the structured budgets of "
                                              "pattern= / budget_fn= (partition budgets)")

    start_all = time.perf_counter()
    inputs = _calibration_inputs(data, int(n_samples), seed)
    target = model if inplace else copy.deepcopy(model)
    timings = {"statistics": 0.0, "curves": 0.0, "solve": 0.0, "write": 0.0}
    with eval_mode(target):
        order, calls = _forward_order(target, inputs[:1], names)
        tensors = dict(target.named_parameters())
        shapes = {n: (tensors[n].shape[0], tensors[n][0].numel()) for n in order}
        n_total = sum(r * c for r, c in shapes.values())

        # budgets: uniform over all rows (structured budgets fix their own)
        row_sizes = np.concatenate([np.full(shapes[n][0], shapes[n][1]) for n in order])
        if pat is not None:
            for n in order:
                if shapes[n][1] % pat[1]:
                    raise InvalidArgumentError(f"pattern {pattern!r}: {n} has rows of {shapes[n][1]} weights, "
                                               f"not a multiple of {pat[1]}")
            uniform = row_sizes // pat[1] * (pat[1] - pat[0])   # "N:M" keeps N of every M
        else:
            uniform = uniform_split(row_sizes, int(round(sparsity * n_total)))
        offsets = dict(zip(order, np.cumsum([0] + [shapes[n][0] for n in order])[:-1].tolist()))

        one_shot_stats = None
        if not sequential:
            t0 = time.perf_counter()
            one_shot_stats = _calibrate(target, inputs, order, batch_size=batch_size)
            timings["statistics"] += time.perf_counter() - t0

        layers = []  # (name, curvature, H, W, problems)

        def build(name: str):
            t0 = time.perf_counter()
            if one_shot_stats is not None:
                stats = one_shot_stats.pop(name)
            else:
                stop = name if calls[name] == 1 else None
                stats = _calibrate(target, inputs, [name], batch_size=batch_size, stop_after=stop)[name]
            curv = layer_curvature(stats, damping)
            del stats
            W = tensors[name].detach().reshape(shapes[name][0], -1).double().cpu().numpy()
            counts = uniform[offsets[name]:offsets[name] + shapes[name][0]]
            problems = _row_problems(name, W, curv, counts, pattern, budget_fn)
            timings["statistics"] += time.perf_counter() - t0
            return curv, W, problems

        def write(name: str, W: np.ndarray, problems, sols) -> list[Block]:
            t0 = time.perf_counter()
            rows = []
            for r, (prob, sol) in enumerate(zip(problems, sols)):
                if update == "optimal":
                    x = sol.weights
                elif update == "backend":
                    if "weights" not in sol.info:
                        raise UnsupportedProblemError(f"update='backend' but solver {sol.solver!r} returns no "
                                                      "weights of its own (info['weights'])")
                    x = np.asarray(sol.info["weights"], dtype=np.float64)
                else:
                    x = prob.zeroed(sol.pruned)
                rows.append(x)
            X = np.stack(rows)
            with torch.no_grad():
                p = tensors[name]
                p.copy_(torch.as_tensor(X, dtype=p.dtype).reshape(p.shape).to(p.device))
            H0 = problems[0].curvature.hessian
            blocks = []
            for r, (prob, sol, x) in enumerate(zip(problems, sols, X)):
                d = W[r] - x
                blocks.append(Block(f"{name}[{r}]", prob,
                                    [ParamSlice(name, np.arange(r * W.shape[1], (r + 1) * W.shape[1]), 0)],
                                    info={"layer": name, "row": r, "reconstruction": float(d @ H0 @ d),
                                          "energy": float(W[r] @ H0 @ W[r])}))
            timings["write"] += time.perf_counter() - t0
            return blocks

        all_blocks: list[Block] = []
        all_sols: list = []
        budgets: dict[str, int] = {}
        allocations: list[Allocation] = []

        def solve_rows(name, problems, counts, cache):
            t0 = time.perf_counter()
            sols = []
            for r, prob in enumerate(problems):
                m = None if counts is None else int(counts[r])
                sol = cache.get((r, m)) if m is not None else None
                if sol is None:
                    sol = _solve(prob, m, layer_solver[name], seed, time_limit, layer_options[name])
                sols.append(sol)
            timings["solve"] += time.perf_counter() - t0
            return sols

        structured = pat is not None or budget_fn is not None
        items = order
        if progress:
            from tqdm.auto import tqdm
            items = tqdm(order, desc="layers", unit="layer")
        if allocation == "global":
            built = {n: build(n) for n in items}
            t0 = time.perf_counter()
            curves, caches, owners = [], {}, []
            for n in order:
                curv, W, problems = built[n]
                energy = max(sum(float(w @ curv.hessian @ w) for w in W), 1e-300)
                blocks = [Block(f"{n}[{r}]", prob, []) for r, prob in enumerate(problems)]
                cs, cache, _ = block_curves(blocks, int(uniform[offsets[n]:offsets[n] + len(problems)].sum()),
                                            layer_solver[n], seed=seed, time_limit=time_limit,
                                            options=layer_options[n], points=int(curve_points))
                curves += [c / energy for c in cs]
                caches[n] = cache
                owners += [n] * len(problems)
            alloc = allocate(curves, int(uniform.sum()))
            allocations.append(alloc)
            timings["curves"] += time.perf_counter() - t0
            for n in order:
                curv, W, problems = built[n]
                counts = alloc.counts[offsets[n]:offsets[n] + len(problems)]
                sols = solve_rows(n, problems, counts, caches[n])
                all_blocks += write(n, W, problems, sols)
                all_sols += sols
                budgets.update({f"{n}[{r}]": int(c) for r, c in enumerate(counts)})
        else:
            for n in items:
                curv, W, problems = build(n)
                counts = None if structured else uniform[offsets[n]:offsets[n] + len(problems)]
                cache: dict = {}
                if allocation == "optimal" and len(problems) > 1:
                    t0 = time.perf_counter()
                    blocks = [Block(f"{n}[{r}]", prob, []) for r, prob in enumerate(problems)]
                    curves, cache, full = block_curves(blocks, int(counts.sum()), layer_solver[n], seed=seed,
                                                       time_limit=time_limit, options=layer_options[n],
                                                       points=int(curve_points))
                    alloc = allocate(curves, int(counts.sum()))
                    alloc.exact = alloc.exact and full
                    allocations.append(alloc)
                    counts = alloc.counts
                    timings["curves"] += time.perf_counter() - t0
                sols = solve_rows(n, problems, counts, cache)
                all_blocks += write(n, W, problems, sols)
                all_sols += sols
                budgets.update({f"{n}[{r}]": int(s.pruned.size) for r, s in enumerate(sols)})

    masks, weights = {}, {}
    for n in order:
        p = tensors[n]
        keep = np.ones(p.numel(), dtype=bool)
        for b, sol in zip(all_blocks, all_sols):
            if b.info["layer"] == n:
                keep[b.param_slices[0].indices[sol.pruned]] = False
        masks[n] = torch.as_tensor(keep.reshape(p.shape), device=p.device)
        weights[n] = p.detach().clone()
    n_pruned = sum(int((~m).sum()) for m in masks.values())
    timings["total"] = time.perf_counter() - start_all
    record = StageRecord(sparsity=n_pruned / n_total, n_pruned=n_pruned, budgets=budgets,
                         allocation=allocations[0] if len(allocations) == 1 else None,
                         objective=float(sum(s.objective for s in all_sols)), solutions=all_sols,
                         timings=dict(timings))
    return PruneResult(model=target, masks=masks, weights=weights, solutions=all_sols, blocks=all_blocks,
                       stages=[record], timings=timings, n_pruned=n_pruned, n_total=n_total)


def layer_errors(result: PruneResult) -> dict[str, float]:
    """Relative reconstruction error ``‖X(W−W')ᵀ‖²/‖XWᵀ‖²`` of every layer of a :func:`prune_layerwise`
    result (``X`` the inputs that layer saw during pruning, undamped)."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for b in result.blocks:
        layer = b.info.get("layer")
        if layer is None:
            raise InvalidArgumentError("result does not come from prune_layerwise (blocks carry no layer info)")
        num[layer] = num.get(layer, 0.0) + b.info["reconstruction"]
        den[layer] = den.get(layer, 0.0) + b.info["energy"]
    return {k: num[k] / den[k] if den[k] > 0 else 0.0 for k in num}

