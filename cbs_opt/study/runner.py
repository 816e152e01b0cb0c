"""Running a study: one task per grid cell, executed through any ``submit``-style executor (a
process pool by default, this process for ``jobs=1``) under BLAS/torch thread limits, then
cross-checked into a :class:`StudyResult` that writes ``records.csv``/``records.json``.

Everything a worker process runs (``_execute``, ``_network_run``, ``_init_worker``) is a
module-level function, so that process pools can pickle it.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time
from collections import defaultdict
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..executors import (InlineExecutor, ensure_backend, is_dask_client, limit_threads, portable_backend,
                         resolve_executor)
from ..problem import Problem
from .checks import validate
from .records import RECORD_FIELDS, NetworkRecord, Record, ValidationFailure
from .sources import _block_label
from .spec import NetworkStudy, SolverSpec, Study


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
    backend: Any = None  # the BackendInfo of a backend registered at run time (shipped to workers)


def _with_damping(prob: Problem, damping: float | None) -> Problem:
    if damping is None or damping == prob.damping:
        return prob
    if prob.grads is not None:
        return Problem(prob.weights, prob.grads, damping, prob.n_prune, objective=prob.objective_kind,
                       gradient=prob.gradient)
    return Problem(prob.weights, hessian=prob.hessian, damping=damping, n_prune=prob.n_prune,
                   objective=prob.objective_kind, gradient=prob.gradient)


def _task_record(task: _Task, problem: Problem) -> Record:
    """The record of one task before it runs (status "error" until a solution fills it in)."""
    return Record(run_id=task.run_id, instance=task.instance, family=task.family, p=problem.p,
                  N=problem.n_samples, m=problem.n_prune, sparsity=task.sparsity, damping=problem.damping,
                  objective_kind=task.objective_kind, solver=task.spec.name, backend=task.spec.solver,
                  engine=task.spec.engine, options=json.dumps(dict(task.spec.options), sort_keys=True),
                  exact=task.exact, seed=task.seed, time_limit=task.time_limit, status="error")


def _execute(task: _Task, problem: Problem) -> Record:
    """Worker: one solve, timed and memory-traced; solver errors become an ``"error"`` record."""
    import tracemalloc

    import solvers

    rec = _task_record(task, problem)
    tracing = task.measure_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        ensure_backend(task.backend)
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
    limit_threads(n)


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


def _submit(executor, fn, *args):
    if is_dask_client(executor):  # each call its own task: no hashing of the (large) arguments
        return executor.submit(fn, *args, pure=False)
    return executor.submit(fn, *args)


def _unshippable(study: Study) -> dict[str, str]:
    """Backends registered at run time that a process pool cannot send (pickle goes by reference):
    ``{solver: why}``. Their runs become error records instead of crashing the pool."""
    import pickle
    out = {}
    for spec in study.solvers:
        info = portable_backend(spec.solver)
        if info is None or spec.solver in out:
            continue
        try:
            pickle.dumps(info)
        except Exception as exc:
            out[spec.solver] = (f"backend {spec.solver!r} was registered at run time and cannot be sent to "
                                f"process-pool workers ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                                f"define it at module level in an importable module, or run with jobs=1, "
                                f"a thread pool or a Dask client")
    return out


def _refuse(task: _Task, why: str):
    from ..executors import BackendTransportError
    raise BackendTransportError(why)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


def _gather(futures: list, bar, on_error: Callable[[int, BaseException], Any]) -> list:
    """Results in submission order; progress advances as they finish (any future type).

    A call that raised instead of returning a record — a worker that crashed, a task or backend that
    could not be sent to the worker — becomes ``on_error(index, exception)``: an error record, so it is
    counted and reported in ``result.failures`` instead of aborting the whole study.
    """
    out = []
    if futures and all(isinstance(f, Future) for f in futures):
        for f in as_completed(futures):
            if bar is not None:
                bar.update(1)
        for i, f in enumerate(futures):
            exc = f.exception()
            out.append(on_error(i, exc) if exc is not None else f.result())
        return out
    for i, f in enumerate(futures):  # Dask & co.: their futures have .result() but not the stdlib protocol
        try:
            out.append(f.result())
        except Exception as exc:
            out.append(on_error(i, exc))
        if bar is not None:
            bar.update(1)
    return out


def _tasks(study: Study, registry_exact: Mapping[str, bool]) -> list[tuple[_Task, Problem]]:
    shipped = {spec.solver: portable_backend(spec.solver) for spec in study.solvers}
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
                                             spec.limit(time_limit), study.measure_memory,
                                             shipped[spec.solver])
                                tasks.append((task, prob))
    return tasks


def _network_record(net: NetworkStudy, spec: SolverSpec, sparsity: float, seed: int) -> NetworkRecord:
    return NetworkRecord(network=net.name, solver=spec.name, backend=spec.solver, engine=spec.engine,
                         sparsity=float(sparsity), seed=int(seed), metric=net.metric, value=None,
                         dense_value=None, total_objective=None, n_blocks=0, statuses="", seconds=None)


def _network_run(net: NetworkStudy, spec: SolverSpec, sparsity: float, seed: int,
                 exact: bool, backend=None) -> tuple[NetworkRecord, list[Record]]:
    """Worker: prune the whole network once, evaluate it, and keep one record per block."""
    from ..prune import prune

    rec = _network_record(net, spec, sparsity, seed)
    try:
        ensure_backend(backend)
    except Exception as exc:
        rec.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        rec.valid, rec.flags = False, "error"
        return rec, []
    model = net.make_model()
    rec.dense_value = float(net.evaluate(model))
    start = time.perf_counter()
    try:
        data = net.data() if callable(net.data) else net.data
        # A solver study compares what each solver prunes (and CBS-U): no refit passes unless asked for,
        # since they move every solver's survivors by the same data-driven steps and blur the comparison.
        options = {"refits": 0, **dict(net.prune_options)}
        result = prune(model, data, float(sparsity), solver=spec.solver, seed=int(seed),
                       solver_options=dict(spec.options), time_limit=spec.limit(net.time_limit), **options)
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
    def failed_checks(self) -> list[ValidationFailure]:
        """The failed cross-checks alone (``failures`` also lists every failed run, as check ``"error"``)."""
        return [f for f in self.failures if f.check != "error"]

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
              progress: bool = False, threads: int | None = 1, scheduler: str | None = None) -> StudyResult:
    """Run every cell of ``study`` and cross-check the results → :class:`StudyResult`.

    ``executor``: anything with ``submit(fn, *args)`` returning a future with ``result()``
    (``ProcessPoolExecutor``, ``ThreadPoolExecutor``, a Dask ``Client``). ``scheduler``: the address of
    a Dask scheduler to connect to instead (see :func:`cbs_opt.executors.resolve_executor`). Without
    either, ``jobs`` worker processes are used (default: the CPU count); ``jobs=1`` runs in this process.
    Backends registered at run time travel with each task (:mod:`cbs_opt.executors`: by reference
    through a process pool, by value through Dask); one that cannot reach a worker gives error records,
    listed in ``result.failures``. ``threads``: BLAS/torch threads per run in the default pool or in
    this process (``None``: leave the libraries' defaults).
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
    if scheduler is not None:
        if executor is not None:
            raise ValueError("give executor or scheduler, not both")
        executor, _ = resolve_executor(scheduler=scheduler)
        own_pool = executor
    elif executor is None:
        n_work = len(tasks) + len(net_cells)
        jobs = jobs if jobs is not None else (os.cpu_count() or 1)
        if jobs == 1 or n_work <= 1:
            executor, inline = InlineExecutor(), True
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
            net_futures = [_submit(executor, _network_run, study.network, spec, s, seed, exact[spec.solver],
                                   portable_backend(spec.solver)) for spec, s, seed in net_cells]
            # a process pool pickles by reference: a backend it cannot send is reported, not submitted
            stuck = _unshippable(study) if isinstance(executor, ProcessPoolExecutor) else {}
            futures = [InlineExecutor().submit(_refuse, task, stuck[task.spec.solver]) if task.spec.solver in stuck
                       else _submit(executor, _execute, task, prob) for task, prob in tasks]

            def net_error(i: int, exc: BaseException):
                spec, s, seed = net_cells[i]
                rec = _network_record(study.network, spec, s, seed)
                rec.error, rec.valid, rec.flags = _error_text(exc), False, "error"
                return rec, []

            def task_error(i: int, exc: BaseException) -> Record:
                task, prob = tasks[i]
                rec = _task_record(task, prob)
                rec.error, rec.valid, rec.flags = _error_text(exc), False, "error"
                return rec

            net_results = _gather(net_futures, bar, net_error)
            records = _gather(futures, bar, task_error)
    finally:
        if bar is not None:
            bar.close()
        if own_pool is not None:
            if is_dask_client(own_pool):
                own_pool.close()
            else:
                own_pool.shutdown(cancel_futures=True)
    elapsed = time.perf_counter() - start

    network = [r for r, _ in net_results]
    network_blocks = [b for _, blocks in net_results for b in blocks]
    _clean_floats(records)
    _clean_floats(network_blocks)
    failures = validate(records, study.tolerances)
    block_failures = validate(network_blocks, study.tolerances)
    failures += block_failures
    # A run that raised is a failure of the study too: listed once, with its error line.
    failures += [ValidationFailure("error", r.instance, r.m, r.objective_kind, r.solver, r.seed, r.error)
                 for r in (*records, *network_blocks) if r.error]
    failures += [ValidationFailure("error", f"{r.network} (network)", -1, "", r.solver, r.seed, r.error)
                 for r in network if r.error]
    bad = {(f.instance, f.solver) for f in block_failures}
    for r in network:  # a network assembled from a failing block fails too
        if any(inst.startswith(f"{r.network}/") and solver == r.solver for inst, solver in bad):
            r.valid = False
            r.flags = ";".join(filter(None, [r.flags, "block_validation"]))
    meta = {"title": study.title, "description": study.description, "runs": len(records), "network_runs": len(network),
            "seconds": elapsed, "jobs": jobs if own_pool is not None and scheduler is None else None,
            "executor": type(executor).__name__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "sparsities": list(study.sparsities), "objectives": list(study.objectives),
            "dampings": list(study.dampings), "time_limits": list(study.time_limits),
            "seeds": list(study.seeds), "solvers": [s.name for s in study.solvers],
            "instances": [i.name for i in study.instances],
            "tolerances": dataclasses.asdict(study.tolerances)}
    return StudyResult(records, failures, network, network_blocks, meta)
