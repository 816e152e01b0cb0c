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

__all__ = ["register", "solve", "available", "backends", "BackendInfo"]


@dataclass
class BackendInfo:
    name: str
    func: Callable[..., BackendResult]
    description: str
    exact: bool                  # proves optimality (returns bounds)
    requires: tuple[str, ...]    # importable modules it needs
    install_hint: str
    objectives: tuple[str, ...] = ("update", "selection")  # objective kinds it accepts

    def is_available(self) -> bool:
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)

    def options(self) -> list[str]:
        sig = inspect.signature(self.func)
        return [n for n, p in sig.parameters.items()
                if p.kind == p.KEYWORD_ONLY and n not in ("seed", "time_limit", "progress")]


_REGISTRY: dict[str, BackendInfo] = {}


def register(name: str, func: Callable | None = None, *, description: str = "", exact: bool = False,
             requires: tuple[str, ...] = (), install_hint: str = "", replace: bool = False,
             objectives: tuple[str, ...] = ("update", "selection")):
    """Register a backend under ``name`` (usable as a decorator).

    ``requires`` lists modules that must be importable for the backend to be available;
    ``install_hint`` is shown when they are not; ``objectives`` the objective kinds it accepts.
    """
    def decorator(f: Callable) -> Callable:
        if name in _REGISTRY and not replace:
            raise ValueError(f"a solver named {name!r} is already registered (pass replace=True)")
        doc = description or (inspect.getdoc(f) or "").split("\n")[0]
        _REGISTRY[name] = BackendInfo(name, f, doc, exact, tuple(requires), install_hint, tuple(objectives))
        return f

    return decorator(func) if func is not None else decorator


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


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


def _check_options(info: BackendInfo, options: dict[str, Any]) -> None:
    sig = inspect.signature(info.func)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    unknown = sorted(set(options) - set(sig.parameters))
    if unknown:
        accepted = ", ".join(info.options()) or "none"
        raise TypeError(f"solver {info.name!r} got unknown option(s) {', '.join(unknown)}; "
                        f"accepted: {accepted}")


def _check_pruned(name: str, pruned, problem) -> np.ndarray:
    arr = np.asarray(pruned)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise SolverError(f"solver {name!r} returned pruned of dtype {arr.dtype}, shape {arr.shape}")
    arr = np.unique(arr.astype(np.intp))
    if arr.size != problem.n_prune or (arr.size and (arr[0] < 0 or arr[-1] >= problem.p)):
        raise SolverError(f"solver {name!r} returned {arr.size} valid distinct indices, "
                          f"expected {problem.n_prune} in [0, {problem.p})")
    return arr


def solve(problem, solver: str = "greedy_swap", *, time_limit: float | None = None, seed: int = 0,
          progress: bool = False, **options) -> Solution:
    """Solve ``problem`` with the backend ``solver`` → :class:`Solution`.

    ``time_limit`` (seconds) is honoured by every backend that can run long: it then returns its
    best incumbent with status ``"time_limit"``. ``seed`` makes every backend deterministic.
    Backend-specific ``options`` are checked against the backend's signature.
    """
    from cbs_opt.problem import Problem  # the engine's type; imported late to keep layers apart

    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a cbs_opt.Problem, got {type(problem).__name__}")
    info = get_backend(solver)
    if time_limit is not None:
        if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) \
                or not math.isfinite(time_limit) or time_limit <= 0:
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    _check_options(info, options)
    if problem.objective_kind not in info.objectives:
        raise ValueError(f"solver {solver!r} does not handle objective={problem.objective_kind!r} "
                         f"(it accepts {', '.join(info.objectives)}); use problem.with_objective(...)")

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
