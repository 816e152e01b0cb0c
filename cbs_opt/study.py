"""Solver-comparison and exact-vs-heuristic validation studies.

A study is a grid: **instances** (generated families, saved ``.npz`` problems, Fisher blocks of a
torch model) × **solvers** (registry names with options, e.g. an MIQP engine) × **settings**
(sparsities, objective kinds, dampings, time limits, seeds). Every cell is one independent run,
executed through a ``concurrent.futures``-style executor (a process pool by default; anything with
``submit`` — a thread pool, a Dask ``Client`` — works), and becomes one tidy :class:`Record`.

Runs on the same instance, sparsity, objective and damping form a *group*. Inside a group:

* the **reference** is the proven optimum (the objective of any exact backend that reports
  ``status="optimal"``), else the best objective any run found; ``gap = (objective − ref)/|ref|``;
* three **cross-checks** flag validation failures, never averaged away:

  - ``false_optimal``: a run claims ``"optimal"`` yet another run found a lower objective;
  - ``bound_above_objective``: a claimed lower bound exceeds an objective someone reached;
  - ``reported_objective_mismatch``: what the backend said its objective was differs from the
    engine's recomputation (``Solution.info["reported_objective"]`` vs ``Solution.objective``).

A :class:`NetworkStudy` adds the model-level question: prune a whole network with each solver at
each sparsity (through :func:`cbs_opt.prune.prune`) and measure its accuracy.

    from cbs_opt.study import Study, SolverSpec, generated_instances, run_study
    study = Study(generated_instances(sizes=(12, 16)), [SolverSpec("obs"), SolverSpec("enumerate")],
                  sparsities=(0.5, 0.75))
    result = run_study(study, jobs=2)
    result.ok, result.failures, result.save("out/")
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import time
from collections import defaultdict
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .problem import OBJECTIVES, Problem

__all__ = ["Instance", "SolverSpec", "Tolerances", "Study", "NetworkStudy", "Record", "NetworkRecord",
           "ValidationFailure", "StudyResult", "run_study", "validate", "generated_instances",
           "file_instances", "model_instances", "digits_instances", "sliced_instances",
           "digits_network_study", "default_study", "study_from_dict", "parse_solver_spec",
           "default_solver_specs", "RECORD_FIELDS"]


# ---------------------------------------------------------------------------------------------
# What a study is made of
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instance:
    """One base problem of a study; each run sets its budget ``m`` and objective kind.

    ``family`` groups instances in tables and plots (``"lowrank"``, ``"file"``, ``"digits"``, …);
    ``meta`` holds anything descriptive (layer name, source path) and is copied to the records.
    """

    name: str
    problem: Problem
    family: str = "custom"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.problem, Problem):
            raise TypeError(f"Instance.problem must be a cbs_opt.Problem, got {type(self.problem).__name__}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("Instance.name must be a non-empty string")


@dataclass(frozen=True)
class SolverSpec:
    """A registry backend plus its options, under a label (``"miqp[scip]"``).

    ``max_p`` skips instances with more than ``max_p`` weights (e.g. exhaustive enumeration on
    blocks it would refuse); skipped runs produce no record. ``time_limit`` caps the study's time
    limit for this solver alone (a slow engine in a quick study).
    """

    solver: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None
    max_p: int | None = None
    time_limit: float | None = None

    def limit(self, study_limit: float | None) -> float | None:
        """The time limit this solver runs under, given the study's."""
        if self.time_limit is None:
            return study_limit
        return self.time_limit if study_limit is None else min(self.time_limit, study_limit)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if not self.options:
            return self.solver
        if set(self.options) == {"engine"}:
            return f"{self.solver}[{self.options['engine']}]"
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.solver}[{inner}]"

    @property
    def engine(self) -> str:
        return str(self.options.get("engine", ""))

    def info(self):
        """The registry entry (raises UnknownSolverError / SolverUnavailableError)."""
        from solvers.registry import get_backend
        return get_backend(self.solver)


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_solver_spec(text: str) -> SolverSpec:
    """``"name"`` or ``"name:key=value,key=value"`` → :class:`SolverSpec` (values parsed as int/float/bool)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"solver spec must be a non-empty string, got {text!r}")
    name, _, rest = text.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"solver option {item!r} in {text!r} is not key=value")
        options[key.strip()] = _parse_value(value)
    return SolverSpec(name.strip(), options)


@dataclass(frozen=True)
class Tolerances:
    """Cross-check tolerances: two values differ when ``|a − b| > rtol·max(|a|, |b|) + atol``.

    ``reported_rtol`` is looser because a backend's own objective comes from its solver's
    continuous variables, within the MIP engine's feasibility and integrality tolerances (Gurobi's
    default ``IntFeasTol`` is 1e-5: a "pruned" weight may keep ~1e-5·M), while the engine recomputes
    the cost of the returned set exactly. Measured on digits blocks: Gurobi 1.4e-5 and SCIP 3e-6
    (relative) below the recomputed cost, with the right (optimal) pruned set. A backend
    that says it computed in float32 (``Solution.info["dtype"]``) is held to ``reported_rtol_float32``.
    """

    rtol: float = 1e-7
    atol: float = 1e-12
    reported_rtol: float = 1e-4
    reported_rtol_float32: float = 1e-3

    def above(self, a: float, b: float, rtol: float | None = None) -> bool:
        """``a`` exceeds ``b`` by more than the tolerance."""
        rtol = self.rtol if rtol is None else rtol
        return a - b > rtol * max(abs(a), abs(b)) + self.atol

    def differ(self, a: float, b: float, rtol: float | None = None) -> bool:
        return self.above(a, b, rtol) or self.above(b, a, rtol)


@dataclass
class NetworkStudy:
    """Prune a whole network with each solver at each sparsity and measure it.

    ``make_model`` builds a fresh trained model (picklable: a top-level function or a
    ``functools.partial``), ``data`` is the ``(inputs, targets)`` the Fisher is estimated on, or a
    picklable function returning them (so that no tensor has to travel to the workers),
    ``evaluate(model) → float`` scores the pruned model (accuracy). ``prune_options`` go to
    :func:`cbs_opt.prune.prune` (``blocks``, ``n_samples``, ``damping``, ``objective``, …).
    """

    name: str
    make_model: Callable[[], Any]
    data: Any
    evaluate: Callable[[Any], float]
    solvers: Sequence[SolverSpec]
    sparsities: Sequence[float] = (0.25, 0.5, 0.75, 0.9)
    seeds: Sequence[int] = (0,)
    time_limit: float | None = None
    metric: str = "accuracy"
    prune_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    """The grid: every instance × solver × sparsity × objective × damping × time limit × seed.

    ``dampings`` entries of ``None`` keep each instance's own damping; a number rebuilds the
    instance with that ``λ``. ``time_limits`` entries of ``None`` mean no limit.
    """

    instances: Sequence[Instance]
    solvers: Sequence[SolverSpec]
    sparsities: Sequence[float] = (0.5,)
    objectives: Sequence[str] = ("update",)
    dampings: Sequence[float | None] = (None,)
    time_limits: Sequence[float | None] = (None,)
    seeds: Sequence[int] = (0,)
    tolerances: Tolerances = field(default_factory=Tolerances)
    measure_memory: bool = True
    network: NetworkStudy | None = None
    title: str = "cbs-opt study"
    description: str = ""

    def check(self) -> None:
        """Validate the settings and every solver up front (clear errors before any work)."""
        if not self.instances:
            raise ValueError("a study needs at least one instance")
        if not self.solvers:
            raise ValueError("a study needs at least one solver")
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"instance names must be unique; repeated: {', '.join(dup)}")
        _check_sparsities("sparsities", self.sparsities)
        for obj in self.objectives:
            if obj not in OBJECTIVES:
                raise ValueError(f"objectives must be in {OBJECTIVES}, got {obj!r}")
        for d in self.dampings:
            if d is not None and (not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0):
                raise ValueError(f"dampings must be non-negative numbers or None, got {d!r}")
        for t in self.time_limits:
            if t is not None and (not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0):
                raise ValueError(f"time_limits must be positive numbers of seconds or None, got {t!r}")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
                raise ValueError(f"seeds must be integers, got {s!r}")
        _check_solver_specs("solvers", self.solvers)
        if self.network is not None:
            _check_sparsities("network.sparsities", self.network.sparsities)
            _check_solver_specs("network.solvers", self.network.solvers)


def _check_sparsities(what: str, values: Sequence[float]) -> None:
    if not len(values):
        raise ValueError(f"{what} must not be empty")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
            raise ValueError(f"{what} must be numbers in [0, 1], got {s!r}")


def _check_solver_specs(what: str, specs: Sequence[SolverSpec]) -> None:
    from solvers.registry import _check_options

    labels = [s.name for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{what}: solver labels must be unique, got {labels} (give a label=)")
    for spec in specs:
        if not isinstance(spec, SolverSpec):
            raise TypeError(f"{what} must hold SolverSpec objects, got {type(spec).__name__}")
        _check_options(spec.info(), dict(spec.options))  # unknown/unavailable solver, bad options


# ---------------------------------------------------------------------------------------------
# Instance sources
# ---------------------------------------------------------------------------------------------
def generated_instances(families: Sequence[str] = ("lowrank",), sizes: Sequence[int] = (12,),
                        n_samples: int | None = None, seeds: Sequence[int] = (0,), *,
                        damping: float = 1e-3, dense: bool = False, gradient: bool = False) -> list[Instance]:
    """Instances from :func:`cbs_opt.instances.random_problem`: every family × size × seed."""
    from .instances import random_problem

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
    from .fisher import build_blocks

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
    from .digits import digits_model

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


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
@dataclass
class Record:
    """One run: an instance at one budget under one solver and setting (one row of ``records.csv``)."""

    run_id: int
    instance: str
    family: str
    p: int
    N: int | None
    m: int
    sparsity: float
    damping: float
    objective_kind: str
    solver: str
    backend: str
    engine: str
    options: str
    exact: bool
    seed: int
    time_limit: float | None
    status: str
    objective: float | None = None
    bound: float | None = None
    reported_objective: float | None = None
    reference: float | None = None
    reference_kind: str = ""
    gap: float | None = None
    bound_gap: float | None = None
    seconds: float | None = None
    wall_seconds: float | None = None
    peak_memory_mb: float | None = None
    precision: str = ""
    valid: bool = True
    flags: str = ""
    error: str = ""

    def group(self) -> tuple:
        return (self.instance, self.m, self.objective_kind, self.damping)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECORD_FIELDS = [f.name for f in dataclasses.fields(Record)]


@dataclass
class NetworkRecord:
    """One pruned network: a solver at a sparsity (one row of ``network.csv``)."""

    network: str
    solver: str
    backend: str
    engine: str
    sparsity: float
    seed: int
    metric: str
    value: float | None
    dense_value: float | None
    total_objective: float | None
    n_blocks: int
    statuses: str
    seconds: float | None
    valid: bool = True
    flags: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ValidationFailure:
    """A cross-check that failed: which check, where, and the numbers."""

    check: str
    instance: str
    m: int
    objective_kind: str
    solver: str
    seed: int
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.instance} (m={self.m}, {self.objective_kind}) {self.solver}: {self.message}"


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    run_id: int
    instance: str
    family: str
    sparsity: float
    objective_kind: str
    damping: float
    spec: SolverSpec
    exact: bool
    seed: int
    time_limit: float | None
    measure_memory: bool


def _with_damping(prob: Problem, damping: float | None) -> Problem:
    if damping is None or damping == prob.damping:
        return prob
    if prob.grads is not None:
        return Problem(prob.weights, prob.grads, damping, prob.n_prune, objective=prob.objective_kind,
                       gradient=prob.gradient)
    return Problem(prob.weights, hessian=prob.hessian, damping=damping, n_prune=prob.n_prune,
                   objective=prob.objective_kind, gradient=prob.gradient)


def _execute(task: _Task, problem: Problem) -> Record:
    """Worker: one solve, timed and memory-traced; solver errors become an ``"error"`` record."""
    import tracemalloc

    import solvers

    rec = Record(run_id=task.run_id, instance=task.instance, family=task.family, p=problem.p,
                 N=problem.n_samples, m=problem.n_prune, sparsity=task.sparsity, damping=problem.damping,
                 objective_kind=task.objective_kind, solver=task.spec.name, backend=task.spec.solver,
                 engine=task.spec.engine, options=json.dumps(dict(task.spec.options), sort_keys=True),
                 exact=task.exact, seed=task.seed, time_limit=task.time_limit, status="error")
    tracing = task.measure_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        sol = solvers.solve(problem, task.spec.solver, time_limit=task.time_limit, seed=task.seed,
                            **dict(task.spec.options))
    except Exception as exc:  # a failing backend is a result of the study, not a crash of it
        rec.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        rec.valid = False
        rec.flags = "error"
        return rec
    finally:
        rec.wall_seconds = time.perf_counter() - start
        if tracing:
            rec.peak_memory_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    rec.status = str(sol.status)
    rec.objective = float(sol.objective)
    rec.bound = sol.bound
    rec.reported_objective = sol.info.get("reported_objective")
    rec.bound_gap = sol.gap
    rec.seconds = sol.seconds
    rec.precision = _precision(sol)
    return rec


def _precision(sol) -> str:
    """The floating-point type a backend says it computed in (``info["dtype"]``), e.g. ``"float32"``."""
    dtype = sol.info.get("dtype")
    return str(dtype).replace("torch.", "") if dtype is not None else ""


def _init_worker(n: int | None) -> None:
    """Process-pool initializer: quiet stdout (native solver banners), ``n`` BLAS/torch threads."""
    try:  # results travel back as records; what a worker prints to stdout is noise in the report
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
    except OSError:  # pragma: no cover
        pass
    _limit_threads(n)


def _limit_threads(n: int | None) -> None:
    """``n`` BLAS/torch threads in this process (the pool is the parallelism)."""
    if n is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    import torch
    torch.set_num_threads(n)


@contextlib.contextmanager
def _thread_limits(n: int | None):
    """``n`` BLAS/torch threads inside the block, restored afterwards (for runs in this process).

    Small solves on many threads lose badly to thread start-up and, on a busy machine, to
    oversubscription (measured 10–50× slower on a loaded 2-core box), so studies default to one.
    """
    if n is None:
        yield
        return
    import torch
    before = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(n)
    except ImportError:  # pragma: no cover
        limiter = None
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if limiter is not None:
            limiter.restore_original_limits()


class _InlineFuture:
    """A finished 'future' for work run in the calling process (jobs=1)."""

    def __init__(self, fn, *args):
        try:
            self._value, self._exc = fn(*args), None
        except BaseException as exc:  # re-raised by result(), like a real future
            self._value, self._exc = None, exc

    def result(self, timeout=None):
        if self._exc is not None:
            raise self._exc
        return self._value


class _InlineExecutor:
    def submit(self, fn, *args):
        return _InlineFuture(fn, *args)


def _gather(futures: list, bar) -> list:
    """Results in submission order; progress advances as they finish (any future type)."""
    if futures and all(isinstance(f, Future) for f in futures):
        for f in as_completed(futures):
            if f.exception() is not None:  # a crashed worker (not a solver error): fail fast
                raise f.exception()
            if bar is not None:
                bar.update(1)
        return [f.result() for f in futures]
    out = []
    for f in futures:  # Dask & co.: their futures have .result() but not the stdlib protocol
        out.append(f.result())
        if bar is not None:
            bar.update(1)
    return out


def _tasks(study: Study, registry_exact: Mapping[str, bool]) -> list[tuple[_Task, Problem]]:
    tasks = []
    for inst in study.instances:
        for damping in study.dampings:
            base = _with_damping(inst.problem, damping)
            for sparsity in study.sparsities:
                m = int(round(float(sparsity) * base.p))
                for kind in study.objectives:
                    prob = base.with_n_prune(m).with_objective(kind)
                    for spec in study.solvers:
                        if spec.max_p is not None and base.p > spec.max_p:
                            continue
                        for time_limit in study.time_limits:
                            for seed in study.seeds:
                                task = _Task(len(tasks), inst.name, inst.family, float(sparsity), kind,
                                             base.damping, spec, registry_exact[spec.solver], int(seed),
                                             spec.limit(time_limit), study.measure_memory)
                                tasks.append((task, prob))
    return tasks


def _network_run(net: NetworkStudy, spec: SolverSpec, sparsity: float, seed: int,
                 exact: bool) -> tuple[NetworkRecord, list[Record]]:
    """Worker: prune the whole network once, evaluate it, and keep one record per block."""
    from .prune import prune

    model = net.make_model()
    rec = NetworkRecord(network=net.name, solver=spec.name, backend=spec.solver, engine=spec.engine,
                        sparsity=float(sparsity), seed=int(seed), metric=net.metric, value=None,
                        dense_value=None, total_objective=None, n_blocks=0, statuses="", seconds=None)
    rec.dense_value = float(net.evaluate(model))
    start = time.perf_counter()
    try:
        data = net.data() if callable(net.data) else net.data
        result = prune(model, data, float(sparsity), solver=spec.solver, seed=int(seed),
                       solver_options=dict(spec.options), time_limit=spec.limit(net.time_limit),
                       **dict(net.prune_options))
    except Exception as exc:
        rec.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        rec.valid, rec.flags = False, "error"
        return rec, []
    rec.seconds = time.perf_counter() - start
    rec.value = float(net.evaluate(result.model))
    rec.n_blocks = len(result.solutions)
    rec.total_objective = float(sum(s.objective for s in result.solutions))
    counts: dict[str, int] = defaultdict(int)
    block_records = []
    for block, sol in zip(result.blocks, result.solutions):
        counts[str(sol.status)] += 1
        prob = block.problem
        block_records.append(Record(
            run_id=-1, instance=f"{net.name}/{_block_label(block)}", family=net.name, p=prob.p,
            N=prob.n_samples, m=int(sol.pruned.size), sparsity=float(sparsity), damping=prob.damping,
            objective_kind=sol.objective_kind, solver=spec.name, backend=spec.solver, engine=spec.engine,
            options=json.dumps(dict(spec.options), sort_keys=True), exact=exact, seed=int(seed),
            time_limit=net.time_limit, status=str(sol.status), objective=float(sol.objective), bound=sol.bound,
            reported_objective=sol.info.get("reported_objective"), bound_gap=sol.gap, seconds=sol.seconds,
            precision=_precision(sol)))
    rec.statuses = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return rec, block_records


@dataclass
class StudyResult:
    """Everything a study produced: run records, network records, validation failures, metadata."""

    records: list[Record]
    failures: list[ValidationFailure]
    network: list[NetworkRecord] = field(default_factory=list)
    network_blocks: list[Record] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Record | NetworkRecord]:
        """Runs whose backend raised (also counted as failures of the study)."""
        return [r for r in (*self.records, *self.network) if r.error]

    @property
    def ok(self) -> bool:
        """No validation failure and no failed run."""
        return not self.failures and not self.errors

    def save(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write ``records.csv``, ``records.json`` (and ``network.csv`` when there is one)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"records.csv": out / "records.csv", "records.json": out / "records.json"}
        _write_csv(paths["records.csv"], [r.as_dict() for r in self.records], RECORD_FIELDS)
        payload = {"meta": self.meta, "records": [r.as_dict() for r in self.records],
                   "failures": [dataclasses.asdict(f) for f in self.failures],
                   "network": [r.as_dict() for r in self.network]}
        paths["records.json"].write_text(json.dumps(payload, indent=1, default=_json_default, allow_nan=False))
        if self.network:
            paths["network.csv"] = out / "network.csv"
            _write_csv(paths["network.csv"], [r.as_dict() for r in self.network],
                       [f.name for f in dataclasses.fields(NetworkRecord)])
        if self.network_blocks:
            paths["network_blocks.csv"] = out / "network_blocks.csv"
            _write_csv(paths["network_blocks.csv"], [r.as_dict() for r in self.network_blocks], RECORD_FIELDS)
        return paths


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def _clean_floats(records: Iterable[Record]) -> None:
    # JSON has no NaN/inf: an infinite bound (a backend with no information) is stored as None.
    for r in records:
        for name in ("objective", "bound", "reported_objective", "bound_gap"):
            v = getattr(r, name)
            if v is not None and not math.isfinite(v):
                setattr(r, name, None)


def run_study(study: Study, *, executor: Executor | Any | None = None, jobs: int | None = None,
              progress: bool = False, threads: int | None = 1) -> StudyResult:
    """Run every cell of ``study`` and cross-check the results → :class:`StudyResult`.

    ``executor``: anything with ``submit(fn, *args)`` returning a future with ``result()``
    (``ProcessPoolExecutor``, ``ThreadPoolExecutor``, a Dask ``Client``). Without one, ``jobs``
    worker processes are used (default: the CPU count); ``jobs=1`` runs in this process.
    Backends registered at run time reach process-pool workers only with the ``fork`` start
    method (Linux); use ``jobs=1`` or a thread pool for those. ``threads``: BLAS/torch threads per
    run in the default pool or in this process (``None``: leave the libraries' defaults).
    """
    from solvers import backends

    study.check()
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    registry = backends()
    exact = {name: info.exact for name, info in registry.items()}
    tasks = _tasks(study, exact)
    net_cells = []
    if study.network is not None:
        net = study.network
        net_cells = [(spec, s, seed) for spec in net.solvers for s in net.sparsities for seed in net.seeds]

    own_pool, inline = None, False
    if executor is None:
        n_work = len(tasks) + len(net_cells)
        jobs = jobs if jobs is not None else (os.cpu_count() or 1)
        if jobs == 1 or n_work <= 1:
            executor, inline = _InlineExecutor(), True
        else:
            executor = own_pool = ProcessPoolExecutor(max_workers=min(jobs, n_work), initializer=_init_worker,
                                                      initargs=(threads,))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tasks) + len(net_cells), desc=study.title, unit="run")
    start = time.perf_counter()
    try:
        with _thread_limits(threads) if inline else contextlib.nullcontext():
            # Network cells are the long ones: submit them first so they overlap the many small runs.
            net_futures = [executor.submit(_network_run, study.network, spec, s, seed, exact[spec.solver])
                           for spec, s, seed in net_cells]
            futures = [executor.submit(_execute, task, prob) for task, prob in tasks]
            net_results = _gather(net_futures, bar)
            records = _gather(futures, bar)
    finally:
        if bar is not None:
            bar.close()
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
    elapsed = time.perf_counter() - start

    network = [r for r, _ in net_results]
    network_blocks = [b for _, blocks in net_results for b in blocks]
    _clean_floats(records)
    _clean_floats(network_blocks)
    failures = validate(records, study.tolerances)
    block_failures = validate(network_blocks, study.tolerances)
    failures += block_failures
    bad = {(f.instance, f.solver) for f in block_failures}
    for r in network:  # a network assembled from a failing block fails too
        if any(inst.startswith(f"{r.network}/") and solver == r.solver for inst, solver in bad):
            r.valid = False
            r.flags = ";".join(filter(None, [r.flags, "block_validation"]))
    meta = {"title": study.title, "description": study.description, "runs": len(records), "network_runs": len(network),
            "seconds": elapsed, "jobs": jobs if own_pool is not None else None,
            "executor": type(executor).__name__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "sparsities": list(study.sparsities), "objectives": list(study.objectives),
            "dampings": list(study.dampings), "time_limits": list(study.time_limits),
            "seeds": list(study.seeds), "solvers": [s.name for s in study.solvers],
            "instances": [i.name for i in study.instances],
            "tolerances": dataclasses.asdict(study.tolerances)}
    return StudyResult(records, failures, network, network_blocks, meta)


# ---------------------------------------------------------------------------------------------
# Cross-checks
# ---------------------------------------------------------------------------------------------
def validate(records: Sequence[Record], tol: Tolerances = Tolerances()) -> list[ValidationFailure]:
    """Fill ``reference``/``gap`` of every record and return the failed cross-checks (see module doc).

    Failing records get ``valid=False`` and the check names in ``flags``.
    """
    failures: list[ValidationFailure] = []

    def fail(rec: Record, check: str, message: str) -> None:
        rec.valid = False
        rec.flags = ";".join(filter(None, [rec.flags, check]))
        failures.append(ValidationFailure(check, rec.instance, rec.m, rec.objective_kind, rec.solver, rec.seed,
                                          message))

    groups: dict[tuple, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.group()].append(rec)
    for group in groups.values():
        done = [r for r in group if r.objective is not None]
        for r in done:
            rtol = tol.reported_rtol_float32 if r.precision == "float32" else tol.reported_rtol
            if r.reported_objective is not None and tol.differ(r.reported_objective, r.objective, rtol):
                fail(r, "reported_objective_mismatch",
                     f"backend reported {r.reported_objective:.10g}, recomputed objective is {r.objective:.10g}")
        if not done:
            continue
        best = min(done, key=lambda r: r.objective)
        for r in done:
            if r.status == "optimal" and tol.above(r.objective, best.objective):
                fail(r, "false_optimal", f"claims optimal at {r.objective:.10g}, but {best.solver} "
                                         f"(seed {best.seed}) found {best.objective:.10g}")
        for r in group:
            if r.bound is not None and tol.above(r.bound, best.objective):
                fail(r, "bound_above_objective", f"lower bound {r.bound:.10g} exceeds the objective "
                                                 f"{best.objective:.10g} found by {best.solver}")
        proven = [r for r in done if r.status == "optimal" and r.exact and "false_optimal" not in r.flags]
        ref, kind = (min(r.objective for r in proven), "optimum") if proven else (best.objective, "best_known")
        for r in group:
            r.reference, r.reference_kind = ref, kind
            if r.objective is not None:
                diff = r.objective - ref
                # Differences within tolerance are ties: report them as a zero gap, not rounding noise.
                r.gap = 0.0 if not tol.differ(r.objective, ref) else diff / max(abs(ref), tol.atol)
    return failures


# ---------------------------------------------------------------------------------------------
# The embedded default and spec files
# ---------------------------------------------------------------------------------------------
def default_solver_specs(*, probe: bool = True) -> list[SolverSpec]:
    """Every backend available here, one spec per usable engine for backends with an ``engine`` option.

    ``probe`` solves a 6-weight problem with each engine first and leaves out those that fail here
    (a solver whose licence is missing, say). Engines in :data:`OPT_IN` are left out (too slow for a
    default); enumeration gets a ``max_p``.
    """
    from solvers import backends

    specs = []
    for name, info in backends().items():
        if not info.is_available():
            continue
        engines = [e for e in engines_of(name, probe=False) if (name, e) not in OPT_IN]
        if probe:
            engines = [e for e in engines if probe_engine(name, e) is None]
        if engines:
            specs += [SolverSpec(name, {"engine": e}, **_SLOW.get((name, e), {})) for e in engines]
        else:
            specs.append(SolverSpec(name, **_SLOW.get((name, None), {})))
    return specs


# Exhaustive enumeration: C(20, 10) ≈ 1.8e5 subsets take ~0.1 s, C(24, 12) ≈ 2.7e6 already seconds
# (and it refuses beyond 3e6); the MIQP carries the larger blocks.
_SLOW = {("enumerate", None): {"max_p": 20}}
# Left out of the default study (ask for them with SolverSpec / --solver miqp:engine=scip): SCIP on the
# MIQP needed more than 20 s for a 16-weight digits block at half sparsity (HiGHS B&B: 0.07 s), and it
# hung once inside a forked worker (Pyomo's output capture blocked on a pipe).
OPT_IN = {("miqp", "scip")}


def engines_of(name: str, *, probe: bool = False) -> list[str]:
    """Engines of backend ``name`` usable here: the default of its ``engine`` option plus the keys of
    its module's ``ENGINES`` table whose module is importable; ``probe`` also test-solves each one."""
    import importlib.util
    import inspect

    from solvers import backends

    info = backends()[name]
    params = inspect.signature(info.func).parameters
    if "engine" not in params:
        return []
    engines = []
    if isinstance(params["engine"].default, str):
        engines.append(params["engine"].default)
    module = __import__(info.func.__module__, fromlist=["_"])
    table = getattr(module, "ENGINES", {}) or {}
    for key, value in dict(table).items():
        needs = value[1] if isinstance(value, tuple) and len(value) > 1 else None
        if key not in engines and (needs is None or importlib.util.find_spec(needs) is not None):
            engines.append(key)
    if probe:
        engines = [e for e in engines if probe_engine(name, e) is None]
    return engines


@functools.lru_cache(maxsize=None)
def probe_engine(name: str, engine: str) -> str | None:
    """``None`` when ``name`` with ``engine`` solves a tiny problem here, else the reason it cannot."""
    import contextlib as _cl
    import io

    import solvers

    from .instances import random_problem

    try:
        with _cl.redirect_stdout(io.StringIO()), _silence_fd(1):  # engines print banners, some from C
            solvers.solve(random_problem(6, 4, 3, seed=0), name, engine=engine, time_limit=10)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    return None


@contextlib.contextmanager
def _silence_fd(fd: int):
    """Send what native code writes to file descriptor ``fd`` to /dev/null for the block."""
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor (embedded interpreters): nothing to silence
        yield
        return
    try:
        import sys
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # pragma: no cover
                pass
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _digits_model_only(hidden: int = 16, seed: int = 0):
    from .digits import digits_model
    return digits_model(hidden=hidden, seed=seed)[0]


def _digits_train(seed: int = 0):
    from .digits import digits_model
    return digits_model(seed=seed)[1].train


def _digits_evaluate(model, seed: int = 0) -> float:
    from .digits import accuracy, digits_model
    data = digits_model(seed=seed)[1]
    return accuracy(model, data.x_test, data.y_test)


def digits_network_study(solvers: Sequence[SolverSpec], sparsities: Sequence[float] = (0.3, 0.5, 0.7, 0.8, 0.9),
                         *, block_size: int = 16, n_samples: int = 400, damping: float = 1e-4,
                         objective: str = "update", seed: int = 0,
                         time_limit: float | None = None) -> NetworkStudy:
    """Prune the embedded digits MLP with each solver at each sparsity; metric = test accuracy."""
    return NetworkStudy(name="digits", make_model=functools.partial(_digits_model_only, 16, seed),
                        data=functools.partial(_digits_train, seed), evaluate=functools.partial(_digits_evaluate, seed=seed),
                        solvers=list(solvers), sparsities=tuple(sparsities), seeds=(seed,), time_limit=time_limit,
                        prune_options={"blocks": block_size, "n_samples": n_samples, "damping": damping,
                                       "objective": objective, "allocation": "uniform"})


def default_study(*, quick: bool = False, time_limit: float | None = 20.0, seed: int = 0,
                  solvers: Sequence[SolverSpec] | None = None) -> Study:
    """The embedded default: Fisher blocks of the digits MLP, every available solver, plus a size
    ladder for timing and the accuracy of the whole pruned network.

    ``quick`` shrinks it to a smoke test (a few seconds).
    """
    specs = list(solvers) if solvers is not None else default_solver_specs()
    blocks = digits_instances(max_blocks=4 if quick else 12, seed=seed)
    rows = digits_instances(block_size=64, max_blocks=1, seed=seed)  # one whole fc1 row: 64 weights
    # Weights 16..48 of the row: the centre of the image (its border pixels are constant, their
    # Fisher columns zero), cut into a ladder of sizes for the time-vs-size plot.
    ladder = [dataclasses.replace(inst, family="digits-ladder")
              for inst in sliced_instances(rows[0], (8, 12) if quick else (8, 12, 16, 20, 24, 32), start=16)]
    sparsities = (0.5, 0.75) if quick else (0.25, 0.5, 0.75, 0.9)
    net_specs = [s for s in specs if s.solver != "miqp"] if not quick else \
        [s for s in specs if s.solver in ("magnitude", "obs", "greedy_swap", "enumerate")]
    network = digits_network_study(net_specs, (0.5, 0.8) if quick else (0.3, 0.5, 0.7, 0.8, 0.9), seed=seed)
    exact = ", ".join(s.name for s in specs if _is_exact(s.solver)) or "none available"
    description = (
        f"The embedded default. A 64-16-10 MLP trained on scikit-learn's 8x8 digits; its empirical Fisher "
        f"(N=400 training samples, damping 1e-4) cut into 16-weight blocks. Solver comparison: {len(blocks)} "
        f"blocks spread over both layers at sparsities {', '.join(f'{x:g}' for x in sparsities)}. Timing: a "
        f"ladder of {', '.join(str(i.problem.p) for i in ladder)} weights cut from the centre of one fc1 row. "
        f"Accuracy: the whole network ({len(net_specs)} solvers, every block at the same sparsity). "
        f"Exact references: {exact}.")
    return Study(instances=blocks + ladder, solvers=specs, sparsities=sparsities,
                 time_limits=(time_limit,), seeds=(seed,), network=network,
                 title="cbs-opt study: digits MLP" + (" (quick)" if quick else ""), description=description)


def _is_exact(name: str) -> bool:
    from solvers import backends
    info = backends().get(name)
    return bool(info and info.exact)


def study_from_dict(spec: Mapping[str, Any], *, base_dir: str | os.PathLike = ".") -> Study:
    """Build a :class:`Study` from a parsed TOML spec (see ``docs/study.md`` for the format)::

        [study]                       # settings (all optional)
        title = "my study"; sparsities = [0.5, 0.75]; objectives = ["update"]
        dampings = [1e-3]; time_limits = [10]; seeds = [0, 1]
        [[solvers]]                   # omit for every available backend
        name = "miqp"; options = { engine = "scip" }; label = "miqp[scip]"; max_p = 40
        [[instances]]                 # one table per source
        kind = "generated"; families = ["lowrank"]; sizes = [12, 16]; seeds = [0]; n_samples = 20
        [[instances]]
        kind = "file"; paths = ["block.npz"]
        [[instances]]
        kind = "digits"; block_size = 16; max_blocks = 6
        [network]                     # optional: prune the digits MLP whole, measure accuracy
        sparsities = [0.5, 0.8]; solvers = ["magnitude", "greedy_swap"]
    """
    if not isinstance(spec, Mapping):
        raise TypeError("a study spec must be a table/dict")
    unknown = set(spec) - {"study", "solvers", "instances", "network"}
    if unknown:
        raise ValueError(f"unknown top-level spec key(s): {', '.join(sorted(unknown))}")
    settings = dict(spec.get("study", {}))
    seed = int(settings.get("seed", 0))
    solver_specs = [_solver_from_spec(s) for s in spec.get("solvers", [])] or default_solver_specs()
    instances: list[Instance] = []
    for src in spec.get("instances", [{"kind": "digits"}]):
        instances += _instances_from_spec(dict(src), Path(base_dir), seed)
    network = None
    if "network" in spec:
        net = dict(spec["network"])
        net_solvers = [_solver_from_spec(s) for s in net.pop("solvers", [])] or \
            [s for s in solver_specs if s.solver != "miqp"]
        network = digits_network_study(net_solvers, tuple(net.pop("sparsities", (0.3, 0.5, 0.7, 0.8, 0.9))),
                                       seed=seed, **net)
    allowed = {"title", "sparsities", "objectives", "dampings", "time_limits", "seeds", "seed",
               "measure_memory", "rtol", "atol", "reported_rtol", "reported_rtol_float32"}
    extra = set(settings) - allowed
    if extra:
        raise ValueError(f"unknown [study] key(s): {', '.join(sorted(extra))}")
    tol = Tolerances(**{k: float(settings[k]) for k in ("rtol", "atol", "reported_rtol", "reported_rtol_float32")
                        if k in settings})
    kwargs = {k: tuple(settings[k]) for k in ("sparsities", "objectives", "dampings", "time_limits", "seeds")
              if k in settings}
    return Study(instances=instances, solvers=solver_specs, tolerances=tol, network=network,
                 measure_memory=bool(settings.get("measure_memory", True)),
                 title=str(settings.get("title", "cbs-opt study")), **kwargs)


def _solver_from_spec(entry: Any) -> SolverSpec:
    if isinstance(entry, str):
        return parse_solver_spec(entry)
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ValueError(f"a [[solvers]] entry needs a name, got {entry!r}")
    extra = set(entry) - {"name", "options", "label", "max_p"}
    if extra:
        raise ValueError(f"unknown [[solvers]] key(s): {', '.join(sorted(extra))}")
    return SolverSpec(str(entry["name"]), dict(entry.get("options", {})), entry.get("label"), entry.get("max_p"))


def _instances_from_spec(src: dict, base_dir: Path, seed: int) -> list[Instance]:
    kind = src.pop("kind", None)
    if kind == "generated":
        return generated_instances(**src)
    if kind == "file":
        paths = src.pop("paths", None)
        if not paths or src:
            raise ValueError("a kind='file' instance source needs paths = [...] and nothing else")
        return file_instances([p if Path(p).is_absolute() else base_dir / p for p in paths])
    if kind == "digits":
        src.setdefault("seed", seed)
        return digits_instances(**src)
    raise ValueError(f"instance source kind must be 'generated', 'file' or 'digits', got {kind!r}")
