"""Ground truth: exhaustive enumeration of all ``C(p, m)`` pruned sets, vectorised in chunks.

Under a partition budget (N:M, per-row, per-group counts ``m_g``) the feasible sets are the product over
groups of the ``C(n_g, m_g)`` per-group choices, enumerated the same way.

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
from .errors import InvalidArgumentError
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


def log10_count(sizes, counts) -> float:
    """``log10 Π_g C(n_g, m_g)`` through lgamma — never builds (or prints) the possibly huge integer."""
    total = 0.0
    for n, k in zip(sizes, counts):
        n, k = int(n), int(k)
        total += (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(10)
    return total


def count_subsets(sizes, counts, cap: int) -> int | None:
    """``Π_g C(n_g, m_g)`` exactly when it is at most ``cap``, else ``None`` (decided in log space first)."""
    if log10_count(sizes, counts) > math.log10(max(cap, 1)) + 1e-9:
        return None
    total = 1
    for n, k in zip(sizes, counts):
        total *= math.comb(int(n), int(k))
        if total > cap:
            return None
    return total


def _describe_count(sizes, counts) -> str:
    """``C(p, m) ≈ 1.4e+11`` (or ``10^1234``), a readable size that never formats a huge int."""
    exponent = log10_count(sizes, counts)
    if exponent < 15:
        return f"{10 ** exponent:.3g}"
    return f"about 10^{exponent:.0f}"


def _partition_chunks(budget, chunk: int):
    """Chunks of pruned sets, one per row, over the product of per-group combinations (groups whose count
    is 0 or their whole size contribute fixed indices)."""
    members, counts, sizes = budget.members, budget.counts, budget.group_sizes
    fixed = np.concatenate([members[g] for g in range(budget.n_groups) if counts[g] == sizes[g]] or
                           [np.zeros(0, np.intp)]).astype(np.intp)
    free = [g for g in range(budget.n_groups) if 0 < counts[g] < sizes[g]]
    width = int(sum(int(counts[g]) for g in free))
    combos = itertools.product(*[itertools.combinations(members[g].tolist(), int(counts[g])) for g in free])
    while True:
        rows = list(itertools.islice(combos, chunk))
        if not rows:
            return
        flat = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(r) for r in rows),
                           dtype=np.intp, count=len(rows) * width)
        block = flat.reshape(len(rows), width)
        if fixed.size:
            block = np.concatenate([np.broadcast_to(fixed, (len(rows), fixed.size)), block], axis=1)
        yield block


@register("enumerate", description="exhaustive search over all C(p, m) subsets, or the product of per-group "
                                   "combinations under a partition budget (ground-truth oracle)",
          kind="exact", budgets=("total", "partition"))
def solve_enumerate(problem, *, seed: int, time_limit, progress: bool,
                    max_subsets: int = DEFAULT_MAX_SUBSETS) -> BackendResult:
    """Evaluate every feasible pruned set; proven optimal (ties go to the first in enumeration order).

    Total budget: every set of size ``m`` (lexicographic). Partition budget: the product over groups of
    the ``C(n_g, m_g)`` choices. Refuses (``SolverError``) when the count exceeds ``max_subsets``; the
    count is compared in log space, so any block size gets this refusal, never an overflow.
    """
    if isinstance(max_subsets, bool) or not isinstance(max_subsets, (int, np.integer)) or max_subsets < 1:
        raise InvalidArgumentError(f"max_subsets must be a positive integer, got {max_subsets!r}")
    p, m = problem.p, problem.n_prune
    budget = problem.budget
    grouped = budget.n_groups > 1
    sizes, counts = (budget.group_sizes, budget.counts) if grouped else ([p], [m])
    total = count_subsets(sizes, counts, int(max_subsets))
    if total is None:
        what = (f"C({p}, {m}) = {_describe_count(sizes, counts)} subsets" if not grouped else
                f"{_describe_count(sizes, counts)} pruned sets (the product of C(n_g, m_g) over "
                f"{budget.n_groups} groups)")
        raise SolverError(f"enumerate refuses {what} (max_subsets={int(max_subsets):,}); "
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
    chunks = _partition_chunks(budget, chunk) if grouped else _subset_chunks(p, m, chunk)
    for subsets in chunks:
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
