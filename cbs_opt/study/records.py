"""Records: one row per run (:class:`Record`), per pruned network (:class:`NetworkRecord`), and
the failed cross-checks (:class:`ValidationFailure`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


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
