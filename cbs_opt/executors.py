"""Where independent work runs: this process, a local process pool, or a Dask cluster.

Every piece of parallel work in cbs-opt (study runs, block solves, per-block cost curves) is a
module-level function applied to picklable items, submitted through anything with the
``concurrent.futures`` shape — ``submit(fn, *args) → future`` with ``future.result()``:

    executor = resolve_executor(jobs=4)                      # a local process pool (owned: close it)
    executor = resolve_executor(scheduler="tcp://host:8786") # a distributed.Client on a Dask cluster
    with executor_scope(jobs=4) as ex:                       # … closed on exit when we created it
        sols = solve_blocks(blocks, budgets, "greedy_swap", executor=ex)

**Backends registered at run time** (``solvers.register``) exist only in the process that registered
them. Each task therefore carries the :class:`solvers.registry.BackendInfo` of any backend that is not
one of the built-in ``solvers.*`` modules, and the worker registers it before solving
(:func:`ensure_backend`). The function travels by reference (its module must be importable on the
worker) through a process pool, and by value (cloudpickle) through Dask; a backend that cannot travel
fails with a :class:`BackendTransportError` naming it, which studies report in ``result.failures``.

**Memory.** Blocks from :func:`cbs_opt.fisher.build_blocks` travel as their float32 gradient slice and
build their float64 problem on the worker; :func:`map_blocks` keeps at most ``max_in_flight`` tasks
submitted at once, so a cluster does not receive every block's data at the same time.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import ArgumentTypeError, CbsOptError, InvalidArgumentError, SolverUnavailableError

__all__ = ["resolve_executor", "executor_scope", "map_blocks", "solve_blocks", "block_costs", "solve_task",
           "curve_task", "ensure_backend", "portable_backend", "InlineExecutor", "BackendTransportError",
           "is_dask_client"]


class BackendTransportError(CbsOptError, RuntimeError):
    """A backend registered at run time could not be sent to (or registered on) a worker."""


# -- executors ---------------------------------------------------------------------------------------
class _InlineFuture:
    """A finished 'future' for work run in the calling process."""

    def __init__(self, fn, *args):
        try:
            self._value, self._exc = fn(*args), None
        except BaseException as exc:  # re-raised by result(), like a real future
            self._value, self._exc = None, exc

    def result(self, timeout=None):
        if self._exc is not None:
            raise self._exc
        return self._value

    def exception(self, timeout=None):
        return self._exc

    def done(self) -> bool:
        return True


class InlineExecutor:
    """Runs each submitted call at once, in this process (``jobs=1``)."""

    def submit(self, fn, *args):
        return _InlineFuture(fn, *args)

    def shutdown(self, wait: bool = True, **kwargs) -> None:
        pass


def is_dask_client(executor) -> bool:
    """True for a ``distributed.Client`` (duck-typed by module, so dask need not be installed)."""
    return type(executor).__module__.split(".")[0] == "distributed"


def _init_worker(threads: int | None) -> None:
    """Process-pool initializer: ``threads`` BLAS/torch threads per worker (the pool is the parallelism)."""
    limit_threads(threads)


def limit_threads(threads: int | None) -> None:
    """``threads`` BLAS/OpenMP/torch threads in this process (``None``: leave the libraries' defaults)."""
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    import torch
    torch.set_num_threads(threads)


def resolve_executor(executor=None, jobs: int | None = None, scheduler: str | None = None, *,
                     threads: int | None = 1):
    """A ``submit``-style executor from the user's choice, and whether the caller owns it.

    Returns ``(executor, owned)``. At most one of the three may be given:

    * ``executor`` — used as is (a ``concurrent.futures`` executor, a Dask ``Client``, …); not owned;
    * ``scheduler`` — the address of a Dask scheduler (``"tcp://host:8786"``): a new
      ``distributed.Client`` (needs ``pip install "cbs-opt[dask]"``); owned;
    * ``jobs`` — ``1`` (or nothing at all): :class:`InlineExecutor`, this process; ``N > 1``: a process
      pool of ``N`` workers with ``threads`` BLAS/torch threads each; owned.

    Close an owned executor with ``shutdown()`` (a pool) or ``close()`` (a Client), or use
    :func:`executor_scope`, which does it.
    """
    given = [name for name, v in (("executor", executor), ("jobs", jobs), ("scheduler", scheduler)) if v is not None]
    if len(given) > 1:
        raise InvalidArgumentError(f"give at most one of executor, jobs and scheduler, got {', '.join(given)}")
    if executor is not None:
        if not callable(getattr(executor, "submit", None)):
            raise ArgumentTypeError(f"executor must have a submit(fn, *args) method (a concurrent.futures "
                                    f"executor or a dask Client), got {type(executor).__name__}")
        return executor, False
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise InvalidArgumentError(f"scheduler must be a Dask scheduler address such as "
                                       f"'tcp://127.0.0.1:8786', got {scheduler!r}")
        try:
            from distributed import Client
        except ImportError as exc:
            raise SolverUnavailableError("scheduler= needs Dask's distributed package: "
                                         "pip install 'cbs-opt[dask]'") from exc
        try:
            return Client(scheduler, timeout="10s"), True
        except (OSError, TimeoutError) as exc:
            raise InvalidArgumentError(f"cannot connect to the Dask scheduler at {scheduler!r}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs < 1):
        raise InvalidArgumentError(f"jobs must be a positive integer, got {jobs!r}")
    if jobs is None or int(jobs) == 1:
        return InlineExecutor(), False
    return ProcessPoolExecutor(max_workers=int(jobs), initializer=_init_worker, initargs=(threads,)), True


@contextlib.contextmanager
def executor_scope(executor=None, jobs: int | None = None, scheduler: str | None = None, *,
                   threads: int | None = 1):
    """:func:`resolve_executor` as a context manager that closes what it created."""
    ex, owned = resolve_executor(executor, jobs, scheduler, threads=threads)
    try:
        yield ex
    finally:
        if owned:
            if is_dask_client(ex):
                ex.close()
            else:
                ex.shutdown(cancel_futures=True)


def _n_workers(executor) -> int:
    if isinstance(executor, InlineExecutor):
        return 1
    if is_dask_client(executor):
        try:
            return max(1, sum(executor.nthreads().values()))
        except Exception:  # pragma: no cover - a client that cannot tell
            return 4
    return max(1, int(getattr(executor, "_max_workers", 0) or os.cpu_count() or 1))


def _submit(executor, fn, *args):
    if is_dask_client(executor):
        # pure=False: every call is its own task (no hashing of large arrays to deduplicate them)
        return executor.submit(fn, *args, pure=False)
    return executor.submit(fn, *args)


def map_blocks(executor, fn: Callable, items: Iterable, *, max_in_flight: int | None = None,
               progress: bool = False, desc: str = "blocks") -> list:
    """``[fn(*item) for item in items]`` through ``executor``, results in order.

    Each item is a tuple of arguments (a non-tuple item is passed as the single argument). At most
    ``max_in_flight`` calls are submitted at a time (default: twice the workers), so the data of every
    block is not shipped at once. The first exception raised by a call is re-raised here.
    ``executor=None`` runs in this process.
    """
    executor = executor if executor is not None else InlineExecutor()
    items = [it if isinstance(it, tuple) else (it,) for it in items]
    window = max_in_flight or 2 * _n_workers(executor)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(items), desc=desc, unit="block")
    results: list = [None] * len(items)
    pending: list = []
    try:
        for k, args in enumerate(items):
            pending.append((k, _submit(executor, fn, *args)))
            while len(pending) >= window:
                j, fut = pending.pop(0)
                results[j] = fut.result()
                if bar is not None:
                    bar.update(1)
        for j, fut in pending:
            results[j] = fut.result()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results


# -- backends on workers -----------------------------------------------------------------------------
def portable_backend(name: str):
    """The :class:`BackendInfo` to ship with a task for ``name`` — ``None`` for a built-in backend
    (every worker imports ``solvers`` and has it)."""
    from solvers.registry import get_backend
    info = get_backend(name)
    module = getattr(info.func, "__module__", "") or ""
    return None if module == "solvers" or module.startswith("solvers.") else info


def ensure_backend(info) -> None:
    """Register a shipped backend on this worker, unless the very same function is registered already."""
    if info is None:
        return
    from solvers import registry
    have = registry._REGISTRY.get(info.name)
    if have is not None and have.func is info.func:
        return
    try:
        registry.register(info.name, info.func, description=info.description, kind=info.kind,
                          requires=info.requires, install_hint=info.install_hint, replace=True,
                          objectives=info.objectives, budgets=info.budgets)
    except Exception as exc:
        raise BackendTransportError(f"backend {info.name!r} could not be registered on the worker: "
                                    f"{type(exc).__name__}: {exc}") from exc


# -- block solves and cost curves --------------------------------------------------------------------
def _problem_of(block):
    """A float64 problem for a block (built here, in the worker) or a ready problem."""
    from .problem import Problem
    if isinstance(block, Problem):
        return block
    return block.make_problem()


def at_budget(problem, budget):
    """``problem`` at ``budget``: a prune count (total budget) or a :class:`~cbs_opt.budget.Budget`
    (structured: N:M, per row)."""
    if hasattr(budget, "counts") and hasattr(budget, "groups"):
        return problem.with_budget(budget)
    return problem.with_n_prune(int(budget))


def _key(budget):
    """Cache key of a budget: the count, or the (hashable) Budget itself."""
    return budget if hasattr(budget, "counts") else int(budget)


def solve_task(block, m, solver: str, seed: int, time_limit: float | None, options: dict, backend=None):
    """Worker: solve ``block`` (a :class:`~cbs_opt.fisher.Block` or a :class:`Problem`) at budget ``m``
    (a count or a :class:`~cbs_opt.budget.Budget`)."""
    import solvers
    ensure_backend(backend)
    problem = _problem_of(block)
    return solvers.solve(at_budget(problem, m), solver=solver, seed=seed, time_limit=time_limit,
                         **dict(options or {}))


def curve_task(block, grid: Sequence[int], solver: str, seed: int, time_limit: float | None, options: dict,
               backend=None, keep: bool = True):
    """Worker: a block's cost ``c(m)`` at every budget of ``grid`` → ``(costs, {m: Solution})``.

    ``m = 0`` costs the objective of pruning nothing (no solve). The problem is built once for the
    whole grid, so its factorisations are shared by the solves. ``keep=False`` returns no solutions.
    """
    import solvers
    ensure_backend(backend)
    problem = _problem_of(block)
    costs, sols = [], {}
    for m in grid:
        m = int(m)
        if m == 0:
            costs.append(float(problem.with_n_prune(0).objective(np.zeros(0, dtype=np.intp))))
            continue
        sol = solvers.solve(problem.with_n_prune(m), solver=solver, seed=seed, time_limit=time_limit,
                            **dict(options or {}))
        costs.append(float(sol.objective))
        if keep:
            sols[m] = sol
    return costs, sols


def _local(executor) -> bool:
    return executor is None or isinstance(executor, InlineExecutor)


def solve_blocks(blocks: Sequence, budgets: Sequence[int], solver: str, *, executor=None, seed: int = 0,
                 time_limit: float | None = None, options: dict | None = None, progress: bool = False,
                 cache: dict | None = None, release: bool = True) -> list:
    """One solve per block, ``blocks[b]`` at budget ``budgets[b]`` (a prune count, or a
    :class:`~cbs_opt.budget.Budget` for structured sparsity) → the :class:`Solution` list, in order.

    ``cache`` ({(b, m): Solution}, e.g. from :func:`block_costs`) answers solves already done. In this
    process (``executor=None``) each block's float64 problem is built, solved and — with ``release`` —
    freed before the next, so only one block is upcast at a time; through an executor each worker builds
    its block's problem from the float32 slice it receives.
    """
    if len(blocks) != len(budgets):
        raise InvalidArgumentError(f"blocks and budgets differ in length ({len(blocks)} vs {len(budgets)})")
    cache = cache or {}
    options = dict(options or {})
    backend = portable_backend(solver)
    todo = [b for b in range(len(blocks)) if (b, _key(budgets[b])) not in cache]
    out = {b: cache[(b, _key(budgets[b]))] for b in range(len(blocks)) if b not in todo}
    if _local(executor):
        items = todo
        if progress and len(todo) > 1:
            from tqdm.auto import tqdm
            items = tqdm(todo, desc="block solves", unit="block")
        for b in items:
            block = blocks[b]
            problem = block.problem if hasattr(block, "problem") else block
            import solvers
            out[b] = solvers.solve(at_budget(problem, budgets[b]), solver=solver, seed=seed,
                                   time_limit=time_limit, **options)
            if release and hasattr(block, "release"):
                block.release()
    else:
        sols = map_blocks(executor, solve_task, [(blocks[b], _key(budgets[b]), solver, seed, time_limit, options,
                                                 backend) for b in todo], progress=progress, desc="block solves")
        out.update(zip(todo, sols))
    return [out[b] for b in range(len(blocks))]


def block_costs(blocks: Sequence, grids: Sequence[Sequence[int]], solvers_used: Sequence[str] | str, *,
                executor=None, seed: int = 0, time_limit: float | None = None,
                options: Sequence[dict] | dict | None = None, keep: Sequence[bool] | bool = True,
                progress: bool = False, release: bool = True) -> tuple[list[list[float]], dict]:
    """The measured points of every block's cost curve → ``(costs, cache)``.

    ``costs[b][i]`` is block ``b``'s cost at budget ``grids[b][i]``, measured with ``solvers_used[b]``
    (one name for all, or one per block) and ``options`` (one dict, or one per block); ``cache`` maps
    ``(b, m)`` to the solutions of the blocks whose ``keep[b]`` is true (for :func:`solve_blocks`).
    The interpolation to a dense curve and the budget split stay with the caller
    (:func:`cbs_opt.allocation.interpolate_curve`, :func:`cbs_opt.allocation.allocate`).
    """
    n = len(blocks)
    if len(grids) != n:
        raise InvalidArgumentError(f"blocks and grids differ in length ({n} vs {len(grids)})")
    names = [solvers_used] * n if isinstance(solvers_used, str) else list(solvers_used)
    opts = [dict(options or {})] * n if options is None or isinstance(options, dict) else [dict(o) for o in options]
    keeps = [bool(keep)] * n if isinstance(keep, bool) else [bool(k) for k in keep]
    backends = {s: portable_backend(s) for s in set(names)}
    args = [(blocks[b], [int(m) for m in grids[b]], names[b], seed, time_limit, opts[b], backends[names[b]], keeps[b])
            for b in range(n)]
    if _local(executor):
        results = []
        items = range(n)
        if progress and n > 1:
            from tqdm.auto import tqdm
            items = tqdm(items, desc="cost curves", unit="block")
        for b in items:
            block = blocks[b]
            problem = block.problem if hasattr(block, "problem") else block
            results.append(curve_task(problem, *args[b][1:]))
            if release and hasattr(block, "release"):
                block.release()
    else:
        results = map_blocks(executor, curve_task, args, progress=progress, desc="cost curves")
    costs = [r[0] for r in results]
    cache = {(b, m): sol for b, r in enumerate(results) for m, sol in r[1].items()}
    return costs, cache
