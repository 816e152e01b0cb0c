"""Ground truth: exhaustive enumeration of all ``C(p, m)`` pruned sets, vectorised in chunks.

For the "update" objective each subset costs (DESIGN §1, with ``w̃`` the Newton point)

    cost(P) = ½ w̃_Pᵀ [(F⁻¹)_PP]⁻¹ w̃_P + c₀                         (when m ≤ p − m and F ≻ 0)
            = ½ (w̃_Pᵀ F_PP w̃_P − rᵀ F_KK⁻¹ r) + c₀,  r = F_KP w̃_P     (otherwise)

evaluated for a whole stack of subsets with one batched solve. For "selection" it is
``½ sᵀFs − ḡᵀs`` with ``s = y∘w``, a batched quadratic form.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .base import BackendResult, Deadline, SolverError, Status
from .registry import register

DEFAULT_MAX_SUBSETS = 3_000_000
CHUNK = 20_000


def _subset_chunks(p: int, m: int, chunk: int):
    combos = itertools.combinations(range(p), m)
    while True:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, chunk)),
                           dtype=np.intp)
        if flat.size == 0 and m > 0:
            return
        yield flat.reshape(-1, m) if m else np.zeros((1, 0), dtype=np.intp)
        if m == 0:
            return


def _complements(subsets: np.ndarray, p: int) -> np.ndarray:
    keep = np.ones((subsets.shape[0], p), dtype=bool)
    np.put_along_axis(keep, subsets, False, axis=1)
    return np.nonzero(keep)[1].reshape(subsets.shape[0], p - subsets.shape[1])


def _batched_psd_solve(mats: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(mats, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:  # singular kept blocks (λ = 0): the pseudo-inverse gives the same value
        return np.einsum("bij,bj->bi", np.linalg.pinv(mats, hermitian=True), rhs)


def update_costs(F: np.ndarray, Finv: np.ndarray | None, w: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Update-objective costs (without the constant) of every row of ``subsets``."""
    p, m = F.shape[0], subsets.shape[1]
    if m == 0:
        return np.zeros(subsets.shape[0])
    wP = w[subsets]                                           # (B, m)
    if Finv is not None and m <= p - m:
        block = Finv[subsets[:, :, None], subsets[:, None, :]]  # (B, m, m)
        return 0.5 * np.einsum("bi,bi->b", wP, _batched_psd_solve(block, wP))
    FPP = F[subsets[:, :, None], subsets[:, None, :]]
    full = np.einsum("bi,bij,bj->b", wP, FPP, wP)
    if m == p:
        return 0.5 * full
    kept = _complements(subsets, p)
    FKK = F[kept[:, :, None], kept[:, None, :]]
    r = np.einsum("bkj,bj->bk", F[kept[:, :, None], subsets[:, None, :]], wP)
    return 0.5 * (full - np.einsum("bk,bk->b", r, _batched_psd_solve(FKK, r)))


def selection_costs(F: np.ndarray, w: np.ndarray, gradient: np.ndarray | None,
                    subsets: np.ndarray) -> np.ndarray:
    """Selection-objective costs ``½ sᵀFs − ḡᵀs`` for every row of ``subsets``."""
    if subsets.shape[1] == 0:
        return np.zeros(subsets.shape[0])
    wP = w[subsets]
    FPP = F[subsets[:, :, None], subsets[:, None, :]]
    cost = 0.5 * np.einsum("bi,bij,bj->b", wP, FPP, wP)
    if gradient is not None:
        cost -= np.einsum("bi,bi->b", gradient[subsets], wP)
    return cost


@register("enumerate", description="exhaustive search over all C(p, m) subsets (ground-truth oracle)",
          exact=True)
def solve_enumerate(problem, *, seed: int, time_limit, progress: bool,
                    max_subsets: int = DEFAULT_MAX_SUBSETS) -> BackendResult:
    """Evaluate every pruned set of size ``m``; proven optimal (ties go to the lexicographically first).

    Refuses (``SolverError``) when ``C(p, m) > max_subsets``.
    """
    p, m = problem.p, problem.n_prune
    total = math.comb(p, m)
    if total > max_subsets:
        raise SolverError(f"enumerate refuses C({p}, {m}) = {total:,} subsets (max_subsets={max_subsets:,}); "
                          "use solver='miqp' or 'greedy_swap' for this size")
    F = problem.curvature.dense()
    deadline = Deadline(time_limit)
    if problem.objective_kind == "update":
        w = problem.effective_weights
        try:
            Finv = np.linalg.inv(np.linalg.cholesky(F))
            Finv = Finv.T @ Finv
        except np.linalg.LinAlgError:
            Finv = None
        evaluate = lambda s: update_costs(F, Finv, w, s) + problem.update_constant  # noqa: E731
    else:
        evaluate = lambda s: selection_costs(F, problem.weights, problem.gradient, s)  # noqa: E731

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="enumerate", unit="subset")
    best_value, best_set, seen, status = np.inf, None, 0, Status.OPTIMAL
    chunk = max(1, CHUNK // max(1, min(m, p - m)))
    for subsets in _subset_chunks(p, m, chunk):
        costs = evaluate(subsets)
        i = int(np.argmin(costs))
        if costs[i] < best_value:
            best_value, best_set = float(costs[i]), subsets[i].copy()
        seen += subsets.shape[0]
        if bar is not None:
            bar.update(subsets.shape[0])
        if deadline.expired() and seen < total:
            status = Status.TIME_LIMIT
            break
    if bar is not None:
        bar.close()
    return BackendResult(pruned=best_set, status=status,
                         bound=best_value if status == Status.OPTIMAL else None,
                         objective=best_value, info={"subsets_evaluated": seen, "subsets_total": total})
