"""Baseline: Wanda (Sun, Liu, Bair & Kolter, 2023) — pruning by weights and activations, per row.

For a row ``w`` of a layer with calibration inputs ``X ∈ R^{n×p}`` the Wanda score of weight ``j`` is
``|w_j| · ‖X_j‖₂`` (``X_j`` the ``j``-th input feature over all calibration tokens); the ``m`` smallest
scores of each output row are pruned and nothing else moves.

Here it is read off the curvature: with the undamped ``H = XᵀX/n`` (``F = H + λI``),
``H_jj = ‖X_j‖²/n``, so ``|w_j| · √H_jj = |w_j| · ‖X_j‖/√n`` — the Wanda score up to the common factor
``1/√n``, which changes no ranking. The damping ``λ`` is removed first (``H_jj = F_jj − λ``), so the
ranking is Wanda's whatever the damping rule. On a Fisher curvature (``H = GᵀG/N``) the same formula
gives ``|w_j| · ‖G_j‖/√N``.

The registry recomputes CBS-U for the returned mask (``Solution.weights``); Wanda itself only zeroes
(``problem.zeroed(pruned)``).
"""
from __future__ import annotations

import numpy as np

from .base import BackendResult, Status
from .magnitude import smallest_for
from .registry import register

__all__ = ["wanda_scores", "solve_wanda"]


def wanda_scores(problem) -> np.ndarray:
    """``|w_j| · √H_jj`` with ``H_jj = F_jj − λ`` the undamped curvature diagonal."""
    curv = problem.curvature
    diag = np.clip(curv.diagonal() - curv.damping, 0.0, None)
    return np.abs(problem.weights) * np.sqrt(diag)


@register("wanda", description="Wanda: prune the m smallest |w_j|·||X_j|| (|w_j|·sqrt(H_jj), undamped H), per row",
          kind="baseline", budgets=("total", "partition"))
def solve_wanda(problem, *, seed: int, time_limit, progress: bool) -> BackendResult:
    """The ``m`` smallest Wanda scores (ties to the lower index); per group under a partition budget
    (N:M included, as in the Wanda paper's N:M variant)."""
    return BackendResult(pruned=smallest_for(wanda_scores(problem), problem), status=Status.FEASIBLE)
