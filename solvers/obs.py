"""Baseline: single-weight Optimal Brain Surgeon (WoodFisher) scores, pruned in one shot."""
from __future__ import annotations

import numpy as np

from .base import BackendResult, Status
from .magnitude import smallest_for
from .registry import register


def obs_scores(problem) -> np.ndarray:
    """``ρ_i = w̃_i² / (2 (F⁻¹)_ii)``: the update cost of pruning weight ``i`` alone.

    ``w̃`` is the Newton point (``= w`` without a gradient term).
    """
    w = problem.effective_weights
    return w * w / (2.0 * problem.curvature.inverse_diagonal())


@register("obs", description="single-weight OBS / WoodFisher scores w_i^2 / (2 [F^-1]_ii), one shot",
          kind="baseline", budgets=("total", "partition"))
def solve_obs(problem, *, seed: int, time_limit, progress: bool) -> BackendResult:
    """Prune the ``m`` weights with the smallest single-weight OBS scores (ignores interactions);
    under a partition budget the ``m_g`` smallest inside each group ``g``."""
    return BackendResult(pruned=smallest_for(obs_scores(problem), problem), status=Status.FEASIBLE)
