"""Baseline: prune the ``m`` weights of smallest magnitude ``|w_i|``."""
from __future__ import annotations

import numpy as np

from .base import BackendResult, Status
from .registry import register


def smallest(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` smallest scores; ties go to the lower index (stable, deterministic)."""
    return np.sort(np.argsort(scores, kind="stable")[:m])


@register("magnitude", description="prune the m smallest |w_i| (baseline)")
def solve_magnitude(problem, *, seed: int, time_limit, progress: bool) -> BackendResult:
    """Magnitude pruning: ``P`` = the ``m`` smallest ``|w_i|``."""
    return BackendResult(pruned=smallest(np.abs(problem.weights), problem.n_prune), status=Status.FEASIBLE)
