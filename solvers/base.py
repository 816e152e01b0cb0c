"""What every backend returns, and the errors the registry raises."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SolverError, SolverUnavailableError, UnknownSolverError  # noqa: F401 (re-exported)

__all__ = ["Status", "Solution", "BackendResult", "SolverError", "SolverUnavailableError",
           "UnknownSolverError", "Deadline"]


class Status(str, enum.Enum):
    """How a solve ended. ``str`` subclass, so ``sol.status == "optimal"`` works."""

    OPTIMAL = "optimal"          # proven optimal (bound closes the gap within tolerance)
    FEASIBLE = "feasible"        # a valid answer with no optimality claim (heuristics)
    TIME_LIMIT = "time_limit"    # stopped by time_limit: best incumbent so far, bound if any
    ITERATION_LIMIT = "iteration_limit"
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C (KeyboardInterrupt): best incumbent so far, bound if any

    def __str__(self) -> str:
        return self.value


@dataclass
class BackendResult:
    """What a backend hands back to the registry.

    ``objective`` is what the backend *believes* the cost is; the registry recomputes it from
    ``pruned`` and keeps the claim only as ``Solution.info["reported_objective"]`` for validation.
    """

    pruned: np.ndarray
    status: Status = Status.FEASIBLE
    bound: float | None = None
    objective: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Solution:
    """The answer of one solve (DESIGN §3).

    pruned     sorted int array of length m        mask     bool array, True = kept
    weights    CBS-U of ``pruned`` (the optimal update of the kept weights)
    objective  ``problem.objective(pruned)``, recomputed by the engine
    bound      proven lower bound on the optimum, or None
    status     a :class:`Status`                  seconds  wall time of the backend
    """

    pruned: np.ndarray
    mask: np.ndarray
    weights: np.ndarray
    objective: float
    bound: float | None
    status: Status
    seconds: float
    solver: str
    objective_kind: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """Relative optimality gap ``(objective − bound)/max(|objective|, tiny)``, if a bound exists."""
        if self.bound is None:
            return None
        return max(0.0, self.objective - self.bound) / max(abs(self.objective), 1e-12)

    def __repr__(self) -> str:
        bound = "None" if self.bound is None else f"{self.bound:.6g}"
        return (f"Solution(solver={self.solver!r}, status={self.status.value!r}, "
                f"objective={self.objective:.6g} ({self.objective_kind}), bound={bound}, "
                f"m={self.pruned.size}, seconds={self.seconds:.3f})")

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"solver     {self.solver}", f"status     {self.status.value}",
                 f"objective  {self.objective:.10g}  ({self.objective_kind})",
                 f"bound      {'-' if self.bound is None else f'{self.bound:.10g}'}",
                 f"gap        {'-' if self.gap is None else f'{100 * self.gap:.4g}%'}",
                 f"pruned     {self.pruned.size} of {self.mask.size}",
                 f"seconds    {self.seconds:.4f}"]
        for key, value in self.info.items():
            if isinstance(value, (int, float, str, bool)) and key != "reported_objective":
                lines.append(f"{key:<10} {value}")
        return "\n".join(lines)


class Deadline:
    """Wall-clock budget helper: ``Deadline(None)`` never expires."""

    def __init__(self, seconds: float | None):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return float("inf") if self.seconds is None else self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds
