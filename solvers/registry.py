"""The solver registry: one name → one backend function, plus availability and install hints.

A backend is a function ``backend(problem, *, seed, time_limit, progress, **options) → BackendResult``.
The registry validates what it returns, recomputes the objective from ``pruned`` and wraps it
in a :class:`Solution`, so no backend is ever trusted on its own numbers.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .base import (BackendResult, Solution, SolverError, SolverUnavailableError, Status,
                   UnknownSolverError)
from .errors import ArgumentTypeError, InvalidArgumentError, UnsupportedProblemError

__all__ = ["register", "solve", "available", "backends", "BackendInfo", "check_options", "budget_kind",
           "RUN_SETTINGS", "BACKEND_KINDS", "BUDGET_KINDS", "register_engine", "engines", "EngineInfo"]

#: Run settings every backend receives from ``solve()`` itself; never backend options.
RUN_SETTINGS = ("seed", "time_limit", "progress")
#: What a backend's answer is worth: proves optimality / proves a lower bound / a search / a one-shot rule.
BACKEND_KINDS = ("exact", "bound", "heuristic", "baseline")
#: Budget kinds a backend may declare (see ``cbs_opt.budget.Budget.kind``).
BUDGET_KINDS = ("total", "partition")


@dataclass
class BackendInfo:
    name: str
    func: Callable[..., BackendResult]
    description: str
    kind: str                    # one of BACKEND_KINDS
    requires: tuple[str, ...]    # importable modules it needs
    install_hint: str
    objectives: tuple[str, ...] = ("update", "selection")  # objective kinds it accepts
    budgets: tuple[str, ...] = ("total",)                  # budget kinds it accepts

    @property
    def exact(self) -> bool:
        """True for backends that prove optimality (kind "exact"); kept for callers that read a flag."""
        return self.kind == "exact"

    def is_available(self) -> bool:
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)

    def options(self) -> list[str]:
        sig = inspect.signature(self.func)
        return [n for n, p in sig.parameters.items()
                if p.kind == p.KEYWORD_ONLY and n not in RUN_SETTINGS]


_REGISTRY: dict[str, BackendInfo] = {}


def register(name: str, func: Callable | None = None, *, description: str = "", exact: bool = False,
             kind: str | None = None, requires: tuple[str, ...] = (), install_hint: str = "",
             replace: bool = False, objectives: tuple[str, ...] = ("update", "selection"),
             budgets: tuple[str, ...] = ("total",)):
    """Register a backend under ``name`` (usable as a decorator).

    ``kind`` says what its answers are worth (``"exact"``, ``"bound"``, ``"heuristic"`` or ``"baseline"``;
    default ``"exact"`` if ``exact=True`` else ``"heuristic"``). ``requires`` lists modules that must be
    importable for the backend to be available; ``install_hint`` is shown when they are not;
    ``objectives`` the objective kinds and ``budgets`` the budget kinds (``"total"``, ``"partition"``) it
    accepts. Every backend takes the run settings ``seed``, ``time_limit`` and ``progress`` as keywords;
    its other keyword-only parameters are its options.
    """
    if kind is None:
        kind = "exact" if exact else "heuristic"
    elif exact and kind != "exact":
        raise InvalidArgumentError(f"register({name!r}): exact=True contradicts kind={kind!r}")
    if kind not in BACKEND_KINDS:
        raise InvalidArgumentError(f"register({name!r}): kind must be one of {BACKEND_KINDS}, got {kind!r}")
    bad = [b for b in budgets if b not in BUDGET_KINDS]
    if bad or not budgets:
        raise InvalidArgumentError(f"register({name!r}): budgets must be a non-empty subset of {BUDGET_KINDS}, "
                                   f"got {tuple(budgets)!r}")

    def decorator(f: Callable) -> Callable:
        if name in _REGISTRY and not replace:
            raise ValueError(f"a solver named {name!r} is already registered (pass replace=True)")
        doc = description or (inspect.getdoc(f) or "").split("\n")[0]
        _REGISTRY[name] = BackendInfo(name, f, doc, kind, tuple(requires), install_hint, tuple(objectives),
                                      tuple(budgets))
        return f

    return decorator(func) if func is not None else decorator


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
    _ENGINES.pop(name, None)


# -- engines: the external programs a backend can drive (its ``engine=`` option) ----------------------------
@dataclass(frozen=True)
class EngineInfo:
    """One engine of a backend (``solve(problem, backend, engine=name)``), with its own availability.

    ``requires``: modules that must be importable; ``probe``: an optional deeper check (a licence, a
    working binary) returning ``None`` when usable or the reason it is not — run by :meth:`check` only,
    never at import time; ``default``: the engine the backend uses when ``engine`` is not given.
    """

    backend: str
    name: str
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    probe: Callable[[], str | None] | None = None
    default: bool = False

    def missing(self) -> list[str]:
        """Required modules that are not installed here."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def is_available(self) -> bool:
        """Its modules are importable (cheap; :meth:`check` also runs the probe)."""
        return not self.missing()

    def check(self) -> str | None:
        """``None`` when the engine is usable here, else why not (missing modules first, then the probe)."""
        missing = self.missing()
        if missing:
            hint = f"; install it with: {self.install_hint}" if self.install_hint else ""
            return f"needs {', '.join(missing)}, which is not installed{hint}"
        if self.probe is None:
            return None
        try:
            return self.probe()
        except Exception as exc:  # noqa: BLE001 — a probe failing is a reason, not a crash
            return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


_ENGINES: dict[str, dict[str, EngineInfo]] = {}


def register_engine(backend: str, name: str, *, requires: tuple[str, ...] = (), install_hint: str = "",
                    probe: Callable[[], str | None] | None = None, default: bool = False,
                    replace: bool = False) -> EngineInfo:
    """Declare that ``backend`` accepts ``engine=name`` (Gurobi, SCIP, HiGHS, …) and how to tell whether
    it can run here. The backend itself must be registered first."""
    if backend not in _REGISTRY:
        raise InvalidArgumentError(f"register_engine: no backend named {backend!r} is registered")
    if not isinstance(name, str) or not name:
        raise ArgumentTypeError(f"register_engine({backend!r}): name must be a non-empty string, got {name!r}")
    table = _ENGINES.setdefault(backend, {})
    if name in table and not replace:
        raise InvalidArgumentError(f"engine {name!r} of {backend!r} is already registered (pass replace=True)")
    if "engine" not in inspect.signature(_REGISTRY[backend].func).parameters:
        raise InvalidArgumentError(f"register_engine: backend {backend!r} has no engine option")
    info = EngineInfo(backend, name, tuple(requires), install_hint, probe, bool(default))
    table[name] = info
    return info


def engines(backend: str) -> list[EngineInfo]:
    """Every engine registered for ``backend`` (usable here or not), the default first; ``[]`` if none."""
    if not isinstance(backend, str) or backend not in _REGISTRY:
        raise UnknownSolverError(f"unknown solver {backend!r}; registered: {', '.join(sorted(_REGISTRY))}")
    table = list(_ENGINES.get(backend, {}).values())
    return sorted(table, key=lambda e: not e.default)


def backends() -> dict[str, BackendInfo]:
    """Every registered backend, available here or not."""
    return dict(_REGISTRY)


def available() -> list[str]:
    """Names of the backends usable on this machine."""
    return [name for name, info in _REGISTRY.items() if info.is_available()]


def get_backend(name: str) -> BackendInfo:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownSolverError(f"unknown solver {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    info = _REGISTRY[name]
    if not info.is_available():
        missing = [m for m in info.requires if importlib.util.find_spec(m) is None]
        raise SolverUnavailableError(f"solver {name!r} needs {', '.join(missing)}, which is not installed"
                                     + (f"; install it with: {info.install_hint}" if info.install_hint else ""))
    return info


def check_options(solver: str, options: dict[str, Any]) -> None:
    """Refuse backend ``options`` that ``solve(problem, solver, **options)`` would not accept.

    The run settings (:data:`RUN_SETTINGS`: seed, time_limit, progress) are arguments of ``solve()``
    itself, never options: a caller that forwards user options (``prune(solver_options=…)``, the CLI's
    ``--option``) should call this first, so that ``{"time_limit": 10}`` gets a clear
    :class:`ArgumentTypeError` instead of Python's "got multiple values for keyword argument".
    Unknown option names are refused the same way.
    """
    if not isinstance(options, dict):
        raise ArgumentTypeError(f"solver options must be a dict, got {type(options).__name__}")
    _check_options(get_backend(solver), options)


def _check_options(info: BackendInfo, options: dict[str, Any]) -> None:
    reserved = sorted(set(options) & set(RUN_SETTINGS))
    nested = options.get("options")
    if isinstance(nested, dict) and "options" not in inspect.signature(info.func).parameters:
        reserved = reserved or sorted(set(nested) & set(RUN_SETTINGS))
        if not reserved:
            raise ArgumentTypeError(f"solver {info.name!r} got options=dict(...); pass backend options as "
                                    f"keywords: solve(problem, {info.name!r}, **options)")
    if reserved:
        what = "is a run setting" if len(reserved) == 1 else "are run settings"
        raise ArgumentTypeError(f"{', '.join(reserved)} {what} of solve(), not an option of solver {info.name!r}: pass "
                                f"{', '.join(f'{n}=...' for n in reserved)} to solve() itself "
                                f"(not inside the solver options)")
    sig = inspect.signature(info.func)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    unknown = sorted(set(options) - set(sig.parameters))
    if unknown:
        accepted = ", ".join(info.options()) or "none"
        raise ArgumentTypeError(f"solver {info.name!r} got unknown option(s) {', '.join(unknown)}; "
                                f"accepted: {accepted}")


def _check_engine(solver: str, engine) -> None:
    """An ``engine=`` option must name a registered engine of ``solver`` whose modules are installed."""
    table = _ENGINES.get(solver)
    if not table or engine is None:
        return
    if not isinstance(engine, str) or engine not in table:
        raise InvalidArgumentError(f"engine must be one of {tuple(table)} for solver {solver!r}, got {engine!r}")
    missing = table[engine].missing()
    if missing:
        hint = table[engine].install_hint
        raise SolverUnavailableError(f"engine {engine!r} of solver {solver!r} needs {', '.join(missing)}, which is "
                                     f"not installed" + (f"; install it with: {hint}" if hint else ""))


def _check_pruned(name: str, pruned, problem) -> np.ndarray:
    arr = np.asarray(pruned)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise SolverError(f"solver {name!r} returned pruned of dtype {arr.dtype}, shape {arr.shape}")
    raw = arr.size
    arr = np.sort(arr.astype(np.intp))  # distinct sorted indices (sort + neighbour test, faster than np.unique)
    if arr.size > 1:
        arr = arr[np.concatenate(([True], arr[1:] != arr[:-1]))]
    if raw != arr.size or arr.size != problem.n_prune or (arr.size and (arr[0] < 0 or arr[-1] >= problem.p)):
        raise SolverError(f"solver {name!r} returned {arr.size} valid distinct indices, "
                          f"expected {problem.n_prune} in [0, {problem.p})")
    budget = problem.budget
    if not budget.is_satisfied(arr):
        got = budget.pruned_counts(arr)
        k = int(np.flatnonzero(got != budget.counts)[0])
        raise SolverError(f"solver {name!r} returned a pruned set that violates the budget {budget!r}: "
                          f"{int(got[k])} pruned in group {k}, expected {int(budget.counts[k])}")
    return arr


def budget_kind(problem) -> str:
    """The budget kind a backend must support for ``problem`` (a one-group partition counts as total)."""
    budget = problem.budget
    return "total" if budget.n_groups == 1 else budget.kind


def solve(problem, solver: str = "greedy_swap", *, time_limit: float | None = None, seed: int = 0,
          progress: bool = False, **options) -> Solution:
    """Solve ``problem`` with the backend ``solver`` → :class:`Solution`.

    ``time_limit`` (seconds) is honoured by every backend that can run long: it then returns its
    best incumbent with status ``"time_limit"``. ``seed`` makes every backend deterministic.
    Backend-specific ``options`` are checked against the backend's signature.
    """
    from cbs_opt import Problem  # the engine's public type; imported at call time (cbs_opt imports solvers)

    if not isinstance(problem, Problem):
        raise ArgumentTypeError(f"problem must be a cbs_opt.Problem, got {type(problem).__name__}")
    info = get_backend(solver)
    if time_limit is not None:
        if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float, np.integer, np.floating)):
            raise ArgumentTypeError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
        if not math.isfinite(time_limit) or time_limit <= 0:
            raise InvalidArgumentError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
        time_limit = float(time_limit)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ArgumentTypeError(f"seed must be an integer, got {type(seed).__name__}")
    _check_options(info, options)
    _check_engine(solver, options.get("engine"))
    if problem.objective_kind not in info.objectives:
        raise UnsupportedProblemError(f"solver {solver!r} does not handle objective={problem.objective_kind!r} "
                                      f"(it accepts {', '.join(info.objectives)}); use problem.with_objective(...)")
    if budget_kind(problem) not in info.budgets:
        supporting = sorted(n for n, b in _REGISTRY.items() if budget_kind(problem) in b.budgets)
        raise UnsupportedProblemError(
            f"solver {solver!r} does not handle {budget_kind(problem)} budgets ({problem.budget!r}); it supports "
            f"{', '.join(info.budgets)} budgets. Solvers that handle this budget: {', '.join(supporting) or 'none'}")

    start = time.perf_counter()
    result = info.func(problem, seed=int(seed), time_limit=time_limit, progress=progress, **options)
    seconds = time.perf_counter() - start
    if not isinstance(result, BackendResult):
        raise SolverError(f"solver {solver!r} returned {type(result).__name__}, not a BackendResult")

    pruned = _check_pruned(solver, result.pruned, problem)
    weights = problem.update(pruned)
    # The objective is recomputed here, never taken from the backend.
    if problem.objective_kind == "update":
        objective = problem.loss_change(weights)
    else:
        objective = problem.selection_cost(pruned)
    status = Status(result.status)
    bound = None if result.bound is None else float(result.bound)
    info_dict = dict(result.info)
    if result.objective is not None:
        info_dict["reported_objective"] = float(result.objective)
    return Solution(pruned=pruned, mask=problem.mask(pruned), weights=weights, objective=float(objective),
                    bound=bound, status=status, seconds=seconds, solver=solver,
                    objective_kind=problem.objective_kind, info=info_dict)
