"""What a study is made of: instances, solver specs, tolerances, the study grid and its checks.

:class:`Study` is the grid (instances × solvers × settings), :class:`NetworkStudy` its optional
whole-network part; :meth:`Study.check` validates every setting and solver before any work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..problem import OBJECTIVES, Problem


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
