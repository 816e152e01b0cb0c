"""Baseline: prune the ``m`` weights of smallest magnitude ``|w_i|`` (per group under a partition budget)."""
from __future__ import annotations

import numpy as np

from .base import BackendResult, Status
from .registry import register

__all__ = ["smallest", "smallest_per_group", "smallest_for", "solve_magnitude"]


def smallest(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` smallest scores; ties go to the lower index (stable, deterministic)."""
    return np.sort(np.argsort(scores, kind="stable")[:m])


def smallest_per_group(scores: np.ndarray, groups: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sorted indices of the ``counts[g]`` smallest scores inside each group ``g`` (ties: lower index).

    ``groups`` (p,) ids 0..G−1, ``counts`` (G,). One lexicographic sort: by group, then score, then index.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.intp)
    counts = np.asarray(counts, dtype=np.intp)
    p = scores.size
    order = np.lexsort((np.arange(p), scores, groups))
    sizes = np.bincount(groups, minlength=counts.size)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sorted_groups = groups[order]
    rank = np.arange(p) - starts[sorted_groups]          # position of each weight inside its group's order
    return np.sort(order[rank < counts[sorted_groups]]).astype(np.intp)


def smallest_for(scores: np.ndarray, problem) -> np.ndarray:
    """The budget-feasible pruned set of smallest ``scores``: ``smallest`` for a total budget, else per group."""
    budget = getattr(problem, "budget", None)
    if budget is None or budget.n_groups == 1:
        return smallest(scores, problem.n_prune)
    return smallest_per_group(scores, budget.groups, budget.counts)


@register("magnitude", description="prune the m smallest |w_i| (per group under a partition budget; baseline)",
          kind="baseline", budgets=("total", "partition"))
def solve_magnitude(problem, *, seed: int, time_limit, progress: bool) -> BackendResult:
    """Magnitude pruning: ``P`` = the ``m`` smallest ``|w_i|`` (the ``m_g`` smallest in each group ``g``)."""
    return BackendResult(pruned=smallest_for(np.abs(problem.weights), problem), status=Status.FEASIBLE)
