"""The paper's greedy swap local search (CBS, Yu et al. 2022, Algorithm 1), vectorised in torch.

It works on the **selection objective** (DESIGN §1)

    f(P) = ½ sᵀFs − ḡᵀs,     s = w on the pruned set P, 0 elsewhere,

also for problems whose objective is "update" (as the paper does: select on f, then apply CBS-U;
the registry reports the update cost of the selected set).

Swap algebra. Swapping a pruned ``i`` with a kept ``j`` moves ``s`` by ``d = w_j e_j − w_i e_i`` and
changes the objective by ``Δ = dᵀFs + ½dᵀFd − ḡᵀd``, i.e.

    Δ_ij = ½(−α_i + β_j − γ_ij) + ḡ_i w_i − ḡ_j w_j,
    α_i = 2w_i(Fs)_i − w_i²F_ii,   β_j = 2w_j(Fs)_j + w_j²F_jj,   γ_ij = 2w_iF_ijw_j.

(The paper's objective has no ½; its α, β, γ are the same.) With ``α̂_i = α_i − 2ḡ_iw_i`` and
``β̂_j = β_j − 2ḡ_jw_j`` this is ``Δ_ij = ½(β̂_j − α̂_i − γ_ij)``. A batch of swaps ``d = Σ …`` changes it
by exactly ``dᵀ(Fs) + ½dᵀFd − ḡᵀd``, which needs only ``(Fs)_X`` and the small block ``F[X][:, X]``
of the weights ``X`` involved — this is how every accepted batch is verified.

Semantics (pinned down from the authors' public code, ``yuxwind/CBS`` ``greedy_alg/greedy.py``):

* **pass** — at the start of a pass, rank the pruned weights by ``α̂`` descending (the most costly
  first) and the kept ones by ``β̂_j − γ_{j,P₀}`` ascending (``P₀`` the top-ranked pruned weight,
  so kept rank 0 is its best partner). Ranks stay fixed for the pass.
* the **top pair** (pruned rank 0, kept rank 0) is tried first; if it does not improve by at least ε
  the search has **converged** and stops (the authors' stopping rule).
* then each pruned rank ``r = 1, 2, …`` in order is tried against the unused kept ranks
  ``max(1, r−ρ) ≤ t < r+ρ`` (**ρ, the candidate range**), in rank order, and swapped with the
  *first* one that improves the current objective by at least **ε** (first improvement). Every test
  is exact: it accounts for all swaps already accepted in the pass. A swapped-in kept weight is not
  reused in the pass; a swapped-out pruned weight is not a candidate again until the next pass.
* a pruned rank that finds no partner is a **failed attempt**; the pass ends once more than **τ**
  attempts have failed (the failures need not be consecutive), or when all pruned ranks are done.
* at most ``max_passes`` passes (the authors' ``max_iter``).
* ``stop_rule="no_swap"`` (an option, not the paper's rule): the top pair failing is an ordinary failed
  attempt, kept rank 0 is open to every pruned rank, and the search has converged when a whole pass
  swaps nothing — with ρ and τ covering everything that is a 1-swap local optimum.

ε is in the units of this package's objective (with the ½): the authors' threshold ``t`` on ``sᵀFs``
is ``ε = t/2``; the defaults ``epsilon=5e-5, rho=100, tau=20, max_passes=100`` are the authors'
defaults (``threshold=1e-4, range=100, max_no_match=20, max_iter=100``). A swap must also improve by
more than a rounding floor (``1e-12`` of the initial objective's scale), so ``epsilon=0`` cannot
cycle on exact ties.

Vectorisation. Pruned ranks are processed in blocks of ``block_size``. For a block ``I`` and the
union ``J`` of its candidate ranges, one float64 Gram block ``F[X][:, X]`` (``X = I ∪ J``, gathered
columns of ``A`` up-cast to float64) and ``(Fs)_X`` (from the tracked ``u = As``) give every
candidate ``Δ_ij`` of the block as one vector per pruned rank; accepting a swap updates the block's
``α̂, β̂`` exactly with two columns of that block. The block's accepted swaps form a **batch**: its
exact change ``dᵀ(Fs)_X + ½dᵀF_XXd − ḡ_Xᵀd`` must equal the sum of the accepted ``Δ``s (it does,
up to rounding) and be negative, or the batch is refused; then ``u`` (or ``Fs``) gets one
rank-``|batch|`` update. Per pass, ``Fs`` over all weights costs one sweep ``Aᵀu`` and the kept
ordering one column ``F[:, P₀]`` — ``O(Np)`` each, never forming ``F``.

Initialisations: ``"magnitude"`` (smallest ``|w|``), ``"obs"`` (smallest single-weight OBS scores),
``"rmp"`` (random magnitude perturbation: the indices are shuffled into ``min(√p, 1000)`` chunks
and magnitude pruning is applied inside each chunk with the keep budget spread over the chunks;
``rmp_trials`` such seeded draws plus plain magnitude are scored on the selection objective and the
best one starts the search), or an explicit array of ``m`` indices.

Partition budgets (N:M, per-row, per-group counts; ``problem.budget``): the start is chosen per group
(magnitude / OBS inside each group; RMP perturbs the magnitudes, :func:`rmp_group_candidates`) and
:func:`grouped_swap_search` only swaps a pruned weight with a kept one *of the same group*, so every
group's count is kept. There each pruned weight (ranked by ``α̂`` as above) takes its best improving
partner among the ``rho`` cheapest kept weights of its group (pruned weights taken group by group);
every pass scans all pruned weights, and
the search has converged when a pass swaps nothing (τ and the top-pair rule belong to the ranked range
scan and do not apply).

On CPU the search runs with ``threads`` torch threads (default 1, restored afterwards): its many
small block operations pay more for thread synchronisation than they gain (measured 2–4× on the
2-core development VM). ``threads=None`` leaves torch's setting alone.

``trace`` (a callable) receives a dict after every accepted batch: ``pass``, ``out`` (pruned
weights swapped out, in order), ``into`` (kept weights swapped in), ``deltas`` (each swap's predicted
``Δ`` given the earlier ones), ``predicted`` (their sum), ``batch_delta`` (the exact batch change
from the block), ``objective_before`` / ``objective_after`` (tracked) — the tests replay it against
:meth:`Problem.selection_cost`. :func:`swap_delta` and :func:`batch_delta` give the formulas as pure
numpy functions of a problem.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ._checks import as_index_set
from .base import BackendResult, Deadline, Status
from .magnitude import smallest, smallest_for, smallest_per_group
from .registry import register
from .kernels.torch_lowrank import TorchCurvature, resolve_device, resolve_dtype

__all__ = ["greedy_swap_search", "grouped_swap_search", "STOP_RULES", "SearchResult", "initial_pruned",
           "rmp_candidates", "rmp_group_candidates", "swap_delta", "batch_delta", "INITS", "solve_greedy_swap"]

INITS = ("magnitude", "rmp", "obs")
STOP_RULES = ("top_pair", "no_swap")


# ---------------------------------------------------------------------------------------------------
# the formulas as pure functions (numpy, float64) — the reference the tests check the search against
# ---------------------------------------------------------------------------------------------------
def swap_delta(problem, pruned, i: int, j: int) -> float:
    """``Δ_ij = ½(−α_i + β_j − γ_ij) + ḡ_iw_i − ḡ_jw_j``: the change of the selection objective when
    pruned ``i`` and kept ``j`` trade places (from ``α, β, γ`` — not by recomputing the objective)."""
    pruned = np.asarray(pruned, dtype=np.intp)
    w = problem.weights
    s = np.zeros(problem.p)
    s[pruned] = w[pruned]
    fs_ij = problem.curvature.matvec(s)[[i, j]]
    F = problem.curvature.block(np.array([i, j]), np.array([i, j]))
    alpha = 2 * w[i] * fs_ij[0] - w[i] ** 2 * F[0, 0]
    beta = 2 * w[j] * fs_ij[1] + w[j] ** 2 * F[1, 1]
    gamma = 2 * w[i] * F[0, 1] * w[j]
    delta = 0.5 * (-alpha + beta - gamma)
    if problem.gradient is not None:
        delta += problem.gradient[i] * w[i] - problem.gradient[j] * w[j]
    return float(delta)


def batch_delta(problem, pruned, out, into) -> float:
    """The exact change ``dᵀFs + ½dᵀFd − ḡᵀd`` when the pruned weights ``out`` are restored and the
    kept weights ``into`` are pruned (``d = w_J e_J − w_I e_I``), from ``(Fs)_X`` and ``F[X][:, X]``."""
    pruned = np.asarray(pruned, dtype=np.intp)
    out, into = np.asarray(out, dtype=np.intp), np.asarray(into, dtype=np.intp)
    w = problem.weights
    s = np.zeros(problem.p)
    s[pruned] = w[pruned]
    X = np.concatenate([out, into])
    d = np.concatenate([-w[out], w[into]])
    fs = problem.curvature.matvec(s)[X]
    value = float(d @ fs + 0.5 * d @ problem.curvature.block(X, X) @ d)
    if problem.gradient is not None:
        value -= float(problem.gradient[X] @ d)
    return value


# ---------------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------------
def rmp_candidates(weights: np.ndarray, n_prune: int, n_draws: int, seed: int) -> list[np.ndarray]:
    """``n_draws`` random-magnitude-perturbation pruned sets (sorted index arrays of size ``m``).

    Each draw shuffles the indices into ``min(⌊√p⌋, 1000)`` chunks, spreads the keep budget
    ``p − m`` over the chunks in proportion to their sizes (largest remainders get the rest) and
    keeps the largest ``|w|`` inside each chunk. Deterministic in ``seed``.
    """
    absw = np.abs(np.asarray(weights, dtype=np.float64))
    p = absw.size
    n_keep = p - n_prune
    n_chunks = max(1, min(int(math.isqrt(p)), 1000))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_draws):
        perm = rng.permutation(p)
        chunk_of = np.arange(p) * n_chunks // p        # chunk id of each shuffled position
        sizes = np.bincount(chunk_of, minlength=n_chunks)
        exact = sizes * (n_keep / p)
        quota = np.floor(exact).astype(np.int64)
        short = n_keep - int(quota.sum())
        if short:
            quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
        # sort by chunk, then by |w| descending (ties: lower shuffled position first)
        order = np.lexsort((np.arange(p), -absw[perm], chunk_of))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank_in_chunk = np.arange(p) - starts[chunk_of[order]]
        kept_pos = order[rank_in_chunk < quota[chunk_of[order]]]
        mask = np.ones(p, dtype=bool)
        mask[perm[kept_pos]] = False
        out.append(np.flatnonzero(mask))
    return out


def _selection_value(op: TorchCurvature, weights: torch.Tensor, gradient: torch.Tensor | None,
                     pruned: np.ndarray) -> float:
    s = torch.zeros_like(weights)
    idx = torch.as_tensor(pruned, device=weights.device, dtype=torch.long)
    s[idx] = weights[idx]
    value = 0.5 * op.quad(s)
    if gradient is not None:
        value -= float(gradient @ s)
    return value


def initial_pruned(problem, init, *, seed: int = 0, rmp_trials: int = 8,
                   op: TorchCurvature | None = None) -> tuple[np.ndarray, str]:
    """The starting pruned set for ``init`` ∈ :data:`INITS` or an explicit index array → (set, label)."""
    m = problem.n_prune
    grouped = _groups_of(problem) is not None
    if isinstance(init, str):
        if init == "magnitude":
            return smallest_for(np.abs(problem.weights), problem), "magnitude"
        if init == "obs":
            from .obs import obs_scores
            return smallest_for(obs_scores(problem), problem), "obs"
        if init == "rmp":
            if op is None:
                op = TorchCurvature.from_problem(problem, "cpu", "float64")
            w = op._vec(problem.weights)
            g = None if problem.gradient is None else op._vec(problem.gradient)
            candidates = [smallest_for(np.abs(problem.weights), problem)]
            if grouped:
                candidates += rmp_group_candidates(problem.weights, problem.budget, rmp_trials, seed)
            else:
                candidates += rmp_candidates(problem.weights, m, rmp_trials, seed)
            values = [_selection_value(op, w, g, c) for c in candidates]
            best = int(np.argmin(values))
            return candidates[best], ("magnitude" if best == 0 else f"rmp (draw {best} of {rmp_trials})")
        raise ValueError(f"init must be one of {INITS} or an array of {m} indices, got {init!r}")
    pruned = as_index_set("init", init, problem.p)
    if pruned.size != m:
        raise ValueError(f"init must hold exactly n_prune = {m} indices, got {pruned.size}")
    if grouped:
        problem.budget.check(pruned, name="init")
    return pruned, "given"


def _groups_of(problem) -> np.ndarray | None:
    """The group ids of a partition budget with more than one group, else None (a plain cardinality)."""
    budget = getattr(problem, "budget", None)
    if budget is None or budget.n_groups == 1:
        return None
    return budget.groups


RMP_GROUP_SIGMA = 0.25


def rmp_group_candidates(weights: np.ndarray, budget, n_draws: int, seed: int) -> list[np.ndarray]:
    """RMP under a partition budget: each draw prunes, inside every group ``g``, the ``m_g`` smallest
    perturbed magnitudes ``|w_i|·exp(σ ξ_i)`` (``ξ`` standard normal, ``σ`` = RMP_GROUP_SIGMA).

    Chunking across the whole block (plain RMP) would break the per-group counts; perturbing the
    magnitudes keeps the draws budget-feasible and close to magnitude pruning. Deterministic in ``seed``.
    """
    absw = np.abs(np.asarray(weights, dtype=np.float64))
    rng = np.random.default_rng(seed)
    return [smallest_per_group(absw * np.exp(RMP_GROUP_SIGMA * rng.standard_normal(absw.size)),
                               budget.groups, budget.counts) for _ in range(n_draws)]


# ---------------------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """What :func:`greedy_swap_search` returns."""

    pruned: np.ndarray
    stopped: str                       # "converged" | "max_passes" | "time_limit" | "trivial" | "refused_batch"
    passes: int
    swaps: int
    initial_objective: float
    objective: float
    history: list[dict[str, Any]] = field(default_factory=list)
    batches: int = 0
    refused_batches: int = 0


def _verify_batch(n: int, out_pos, in_pos, deltas, wX, fsX, C, gX):
    """Recompute a batch of swaps exactly on the candidate set: ``d`` removes ``w`` at ``out_pos`` and restores
    it at ``in_pos``; the selection objective changes by ``dᵀ(F s) + ½ dᵀCd − gᵀd``. The batch is accepted
    only when that change is negative and matches the sum of the predicted swap deltas (rounding guard).
    Returns ``(d, exact change, predicted change, accepted)``."""
    d = np.zeros(n)
    d[out_pos] = -wX[out_pos]
    d[in_pos] = wX[in_pos]
    exact = float(d @ fsX + 0.5 * d @ C @ d)
    if gX is not None:
        exact -= float(gX @ d)
    predicted = float(np.sum(deltas))
    tol = 1e-8 * (abs(predicted) + float(np.abs(d) @ np.abs(fsX)) + float(np.abs(d) @ np.abs(C) @ np.abs(d)))
    return d, exact, predicted, exact < 0 and abs(exact - predicted) <= tol


def greedy_swap_search(op: TorchCurvature, weights, pruned, gradient=None, *, epsilon: float = 5e-5,
                       rho: int = 100, tau: int = 20, max_passes: int = 100, block_size: int = 64,
                       stop_rule: str = "top_pair", deadline: Deadline | None = None,
                       progress: bool = False, trace: Callable[[dict], None] | None = None) -> SearchResult:
    """Algorithm 1 (semantics in the module docstring) from the pruned set ``pruned`` on operator ``op``.

    ``weights`` and ``gradient`` are ``(p,)`` arrays; ``pruned`` holds the ``m`` starting indices.
    """
    deadline = deadline or Deadline(None)
    if stop_rule not in STOP_RULES:
        raise ValueError(f"stop_rule must be one of {STOP_RULES}, got {stop_rule!r}")
    lo_floor = 1 if stop_rule == "top_pair" else 0   # kept rank 0 is reserved for the top pair
    dev = op.device
    w = op._vec(weights)
    g = None if gradient is None else op._vec(gradient)
    p = op.p
    mask = torch.zeros(p, dtype=torch.bool, device=dev)
    mask[torch.as_tensor(np.asarray(pruned, dtype=np.int64), device=dev)] = True
    m = int(mask.sum())
    k = p - m
    tracker = op.tracker(torch.where(mask, w, torch.zeros_like(w)))

    def objective() -> float:
        value = 0.5 * tracker.quad()
        return value - float(g @ tracker.s) if g is not None else value

    diag = op.diagonal()
    q = w * w * diag                                     # w_x² F_xx
    h = 2 * w * g if g is not None else torch.zeros_like(w)   # 2 ḡ_x w_x
    start_obj = objective()
    # rounding floor for "improves": a tie must never count as an improvement
    floor = 1e-12 * max(abs(start_obj), float(q.max()) if p else 0.0, 1e-300)
    threshold = max(float(epsilon), floor)
    result = SearchResult(pruned=np.asarray(pruned), stopped="trivial", passes=0, swaps=0,
                          initial_objective=start_obj, objective=start_obj)
    if m == 0 or k == 0:
        result.pruned = torch.nonzero(mask).flatten().cpu().numpy()
        return result

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_passes, desc="greedy_swap", unit="pass")
    stopped = "max_passes"
    current = start_obj
    for pass_no in range(1, max_passes + 1):
        if deadline.expired():
            stopped = "time_limit"
            break
        t0 = time.perf_counter()
        fs = tracker.full()
        P = torch.nonzero(mask).flatten()
        K = torch.nonzero(~mask).flatten()
        alpha = 2 * w[P] * fs[P] - q[P] - h[P]
        P_sorted = P[torch.sort(-alpha, stable=True).indices]
        top = int(P_sorted[0])
        col = op.column(top, K)
        key = 2 * w[K] * fs[K] + q[K] - h[K] - 2 * w[K] * col * w[top]
        K_sorted = K[torch.sort(key, stable=True).indices]
        del fs, alpha, col, key

        used = np.zeros(k, dtype=bool)
        failures, pass_swaps, r, converged, refused = 0, 0, 0, False, False
        scanned = 0
        while r < m and failures <= tau:
            if r > 0 and deadline.expired():
                stopped = "time_limit"
                break
            r1 = 1 if r == 0 else min(m, r + block_size)
            b0 = 0 if r == 0 else max(lo_floor, r - rho)
            b1 = 1 if r == 0 else min(k, r1 - 1 + rho)
            b1 = max(b0, b1)
            I_idx = P_sorted[r:r1]
            J_idx = K_sorted[b0:b1]
            X = torch.cat([I_idx, J_idx])
            nI = r1 - r
            C = op.block(X, X)
            fsX_t = tracker.values(X)
            wX = w[X].cpu().numpy()
            gX = None if g is None else g[X].cpu().numpy()
            C = C.cpu().numpy()
            fsX = fsX_t.cpu().numpy()
            qX = wX * wX * np.diag(C)
            hX = 2 * wX * gX if gX is not None else np.zeros_like(wX)
            Gam = 2.0 * C * wX[:, None] * wX[None, :]     # γ for every pair of the block
            ab = 2.0 * wX * fsX                          # 2 w_x (Fs)_x, updated after each swap
            kept_side = qX - hX                          # β̂ = ab + kept_side
            pruned_side = qX + hX                        # −α̂ = −ab + pruned_side
            acc_a, acc_j, acc_delta = [], [], []
            for a in range(nI):
                rank = r + a
                scanned += 1
                lo = 0 if rank == 0 else max(lo_floor, rank - rho)
                hi = 1 if rank == 0 else min(k, rank + rho)
                found = False
                if lo < hi:
                    seg = slice(nI + lo - b0, nI + hi - b0)
                    delta = 0.5 * (ab[seg] + kept_side[seg] - ab[a] + pruned_side[a] - Gam[a, seg])
                    ok = (delta <= -threshold) & ~used[lo:hi]
                    t = int(np.argmax(ok))
                    if ok[t]:
                        jx = nI + lo - b0 + t
                        ab += Gam[:, jx] - Gam[:, a]
                        used[lo + t] = True
                        acc_a.append(a)
                        acc_j.append(jx)
                        acc_delta.append(float(delta[t]))
                        found = True
                if not found:
                    if rank == 0 and stop_rule == "top_pair":
                        converged = True
                        break
                    failures += 1
                    if failures > tau:
                        break
            r = r1
            if acc_a:
                d, exact, predicted, verified = _verify_batch(X.numel(), acc_a, acc_j, acc_delta, wX, fsX, C, gX)
                if not verified:
                    refused = True                       # never expected: rounding broke the algebra
                    result.refused_batches += 1
                    break
                changed = np.array(acc_a + acc_j)
                X_np = X.cpu().numpy()
                tracker.add(X_np[changed], d[changed])
                out_idx, in_idx = X_np[acc_a], X_np[acc_j]
                mask[torch.as_tensor(out_idx, device=dev)] = False
                mask[torch.as_tensor(in_idx, device=dev)] = True
                before = current
                current = objective()
                pass_swaps += len(acc_a)
                result.batches += 1
                if trace is not None:
                    trace({"pass": pass_no, "out": out_idx.copy(), "into": in_idx.copy(),
                           "deltas": np.array(acc_delta), "predicted": predicted, "batch_delta": exact,
                           "objective_before": before, "objective_after": current})
            if converged:
                break
        result.swaps += pass_swaps
        result.passes = pass_no
        result.history.append({"pass": pass_no, "swaps": pass_swaps, "failures": failures,
                               "ranks_scanned": scanned, "objective": current,
                               "seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objective=f"{current:.6g}", swaps=result.swaps)
        if stop_rule == "no_swap" and pass_swaps == 0 and stopped != "time_limit" and not refused:
            converged = True
        if converged:
            stopped = "converged"
            break
        if refused:
            stopped = "refused_batch"
            break
        if stopped == "time_limit":
            break
    if bar is not None:
        bar.close()
    result.stopped = stopped
    result.objective = current
    result.pruned = torch.nonzero(mask).flatten().cpu().numpy()
    return result


def grouped_swap_search(op: TorchCurvature, weights, pruned, groups, gradient=None, *, epsilon: float = 5e-5,
                        rho: int = 100, max_passes: int = 100, block_size: int = 64, max_block: int = 1024,
                        deadline: Deadline | None = None, progress: bool = False,
                        trace: Callable[[dict], None] | None = None) -> SearchResult:
    """Algorithm 1's swaps restricted to a partition budget: a pruned ``i`` only trades places with a kept
    ``j`` of the same group, so every per-group prune count is preserved.

    Per pass the pruned weights are ranked by ``α̂`` descending (the most costly first, as in the paper), group
    by group (groups in the order of their most costly pruned weight, so that one Gram block serves a group's
    pruned weights together) and every one of them is tried against the ``rho`` kept weights of its group
    with the smallest ``β̂`` (the cheapest to prune), taking the *best* improving partner (groups are small, so best improvement costs no
    more than first improvement). The paper's τ and top-pair rule do not apply: a pass scans every pruned
    weight and the search has converged when a pass swaps nothing. Blocks of at most ``block_size`` pruned
    weights (and ``max_block`` weights in all) share one Gram block ``F[X][:, X]``; every accepted batch is
    verified exactly as in :func:`greedy_swap_search`.
    """
    deadline = deadline or Deadline(None)
    dev = op.device
    w = op._vec(weights)
    g = None if gradient is None else op._vec(gradient)
    p = op.p
    groups = np.asarray(groups, dtype=np.intp)
    mask = torch.zeros(p, dtype=torch.bool, device=dev)
    mask[torch.as_tensor(np.asarray(pruned, dtype=np.int64), device=dev)] = True
    m = int(mask.sum())
    tracker = op.tracker(torch.where(mask, w, torch.zeros_like(w)))

    def objective() -> float:
        value = 0.5 * tracker.quad()
        return value - float(g @ tracker.s) if g is not None else value

    diag = op.diagonal()
    q = w * w * diag
    h = 2 * w * g if g is not None else torch.zeros_like(w)
    start_obj = objective()
    floor = 1e-12 * max(abs(start_obj), float(q.max()) if p else 0.0, 1e-300)
    threshold = max(float(epsilon), floor)
    result = SearchResult(pruned=np.asarray(pruned), stopped="trivial", passes=0, swaps=0,
                          initial_objective=start_obj, objective=start_obj)
    if m == 0 or m == p:
        result.pruned = torch.nonzero(mask).flatten().cpu().numpy()
        return result
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_passes, desc="greedy_swap (grouped)", unit="pass")
    stopped, current = "max_passes", start_obj
    w_np = w.cpu().numpy()
    g_np = None if g is None else g.cpu().numpy()
    for pass_no in range(1, max_passes + 1):
        if deadline.expired():
            stopped = "time_limit"
            break
        t0 = time.perf_counter()
        fs = tracker.full().cpu().numpy()
        q_np, h_np = q.cpu().numpy(), h.cpu().numpy()
        pruned_now = mask.cpu().numpy()
        P = np.flatnonzero(pruned_now)
        K = np.flatnonzero(~pruned_now)
        alpha = 2 * w_np[P] * fs[P] - q_np[P] - h_np[P]
        # Groups in the order of their most costly pruned weight, and inside a group by α̂ descending: the
        # pruned weights of one group are consecutive, so a block shares its groups' candidates (small X).
        gP = groups[P]
        group_top = np.full(int(groups.max()) + 1, -np.inf)
        np.maximum.at(group_top, gP, alpha)
        P_sorted = P[np.lexsort((np.arange(P.size), -alpha, gP, -group_top[gP]))]
        beta = 2 * w_np[K] * fs[K] + q_np[K] - h_np[K]
        order = np.lexsort((beta, groups[K]))            # kept weights by group, cheapest to prune first
        K_by_group = K[order]
        gk = groups[K_by_group]
        starts = np.searchsorted(gk, np.arange(groups.max() + 1), side="left")
        ends = np.searchsorted(gk, np.arange(groups.max() + 1), side="right")
        touched = np.zeros(p, dtype=bool)                # swapped in this pass: not a candidate again
        pass_swaps, scanned, r = 0, 0, 0
        while r < m:
            if r > 0 and deadline.expired():
                stopped = "time_limit"
                break
            # a block: pruned weights in rank order and the candidates of their groups
            I_list, J_set, J_list = [], set(), []
            while r < m and len(I_list) < block_size:
                i = int(P_sorted[r])
                grp = int(groups[i])
                cand = K_by_group[starts[grp]:ends[grp]][:rho]
                new = [int(j) for j in cand if j not in J_set]
                if I_list and len(I_list) + len(J_list) + 1 + len(new) > max_block:
                    break
                I_list.append(i)
                J_set.update(new)
                J_list.extend(new)
                r += 1
            I_np = np.array(I_list, dtype=np.int64)
            J_np = np.array(J_list, dtype=np.int64)
            X_np = np.concatenate([I_np, J_np])
            nI = I_np.size
            X = torch.as_tensor(X_np, device=dev)
            C = op.block(X, X).cpu().numpy()
            fsX = tracker.values(X).cpu().numpy()
            wX = w_np[X_np]
            gX = None if g_np is None else g_np[X_np]
            qX = wX * wX * np.diag(C)
            hX = 2 * wX * gX if gX is not None else np.zeros_like(wX)
            Gam = 2.0 * C * wX[:, None] * wX[None, :]
            ab = 2.0 * wX * fsX
            kept_side, pruned_side = qX - hX, qX + hX
            grpX = groups[X_np]
            avail = np.zeros(X_np.size, dtype=bool)
            avail[nI:] = ~touched[J_np]
            acc_a, acc_j, acc_delta = [], [], []
            for a in range(nI):
                scanned += 1
                seg = np.flatnonzero(avail & (grpX == grpX[a]))
                if seg.size == 0:
                    continue
                delta = 0.5 * (ab[seg] + kept_side[seg] - ab[a] + pruned_side[a] - Gam[a, seg])
                t = int(np.argmin(delta))
                if delta[t] <= -threshold:
                    jx = int(seg[t])
                    ab += Gam[:, jx] - Gam[:, a]
                    avail[jx] = False
                    acc_a.append(a)
                    acc_j.append(jx)
                    acc_delta.append(float(delta[t]))
            if acc_a:
                d, exact, predicted, verified = _verify_batch(X_np.size, acc_a, acc_j, acc_delta, wX, fsX, C, gX)
                if not verified:
                    result.refused_batches += 1
                    stopped = "refused_batch"
                    break
                changed = np.array(acc_a + acc_j)
                tracker.add(X_np[changed], d[changed])
                out_idx, in_idx = X_np[acc_a], X_np[acc_j]
                mask[torch.as_tensor(out_idx, device=dev)] = False
                mask[torch.as_tensor(in_idx, device=dev)] = True
                touched[out_idx] = True
                touched[in_idx] = True
                before, current = current, objective()
                pass_swaps += len(acc_a)
                result.batches += 1
                if trace is not None:
                    trace({"pass": pass_no, "out": out_idx.copy(), "into": in_idx.copy(),
                           "deltas": np.array(acc_delta), "predicted": predicted, "batch_delta": exact,
                           "objective_before": before, "objective_after": current})
        result.swaps += pass_swaps
        result.passes = pass_no
        result.history.append({"pass": pass_no, "swaps": pass_swaps, "failures": 0, "ranks_scanned": scanned,
                               "objective": current, "seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objective=f"{current:.6g}", swaps=result.swaps)
        if stopped in ("time_limit", "refused_batch"):
            break
        if pass_swaps == 0:
            stopped = "converged"
            break
    if bar is not None:
        bar.close()
    result.stopped = stopped
    result.objective = current
    result.pruned = torch.nonzero(mask).flatten().cpu().numpy()
    return result


# ---------------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------------
def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


@register("greedy_swap", description="the paper's greedy swap local search (Algorithm 1) on the selection "
                                     "objective; vectorised torch, CPU or CUDA; swaps inside groups under a "
                                     "partition budget", kind="heuristic", budgets=("total", "partition"))
def solve_greedy_swap(problem, *, seed: int, time_limit: float | None, progress: bool,
                      init="magnitude", epsilon: float = 5e-5, rho: int = 100, tau: int = 20,
                      max_passes: int = 100, rmp_trials: int = 8, block_size: int = 64,
                      stop_rule: str = "top_pair", device="cpu", dtype="float32", threads: int | None = 1,
                      trace: Callable[[dict], None] | None = None) -> BackendResult:
    """Greedy swap (CBS Algorithm 1): ε = ``epsilon``, ρ = ``rho``, τ = ``tau``, ``max_passes``.

    ``init``: "magnitude" | "rmp" | "obs" | an array of m indices. ``device``: "cpu" | "cuda" |
    "cuda:N" | "auto"; ``dtype``: storage "float32" | "float64" (decisions accumulate in float64).
    Selects on the selection objective whatever the problem's objective kind. Under a partition budget
    (N:M, per-row…) swaps stay inside a group (:func:`grouped_swap_search`; τ and ``stop_rule`` do not
    apply there) and the initial set is chosen per group.
    """
    deadline = Deadline(time_limit)
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) \
            or not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    rho = _check_int("rho", rho, 1)
    tau = _check_int("tau", tau, 0)
    max_passes = _check_int("max_passes", max_passes, 0)
    rmp_trials = _check_int("rmp_trials", rmp_trials, 1)
    block_size = _check_int("block_size", block_size, 1)
    if trace is not None and not callable(trace):
        raise TypeError(f"trace must be callable, got {type(trace).__name__}")
    if stop_rule not in STOP_RULES:
        raise ValueError(f"stop_rule must be one of {STOP_RULES}, got {stop_rule!r}")
    if threads is not None:
        threads = _check_int("threads", threads, 1)
    if isinstance(init, str) and init not in INITS:
        raise ValueError(f"init must be one of {INITS} or an array of n_prune indices, got {init!r}")
    dev, dt = resolve_device(device), resolve_dtype(dtype)

    saved_threads = torch.get_num_threads()
    if threads is not None and dev.type == "cpu":
        torch.set_num_threads(threads)
    try:
        op = TorchCurvature.from_problem(problem, dev, dt)
        pruned0, init_label = initial_pruned(problem, init, seed=seed, rmp_trials=rmp_trials, op=op)
        groups = _groups_of(problem)
        if groups is None:
            res = greedy_swap_search(op, problem.weights, pruned0, problem.gradient, epsilon=float(epsilon),
                                     rho=rho, tau=tau, max_passes=max_passes, block_size=block_size,
                                     stop_rule=stop_rule, deadline=deadline, progress=progress, trace=trace)
        else:
            res = grouped_swap_search(op, problem.weights, pruned0, groups, problem.gradient,
                                      epsilon=float(epsilon), rho=rho, max_passes=max_passes,
                                      block_size=block_size, deadline=deadline, progress=progress, trace=trace)
    finally:
        torch.set_num_threads(saved_threads)
    status = {"time_limit": Status.TIME_LIMIT, "max_passes": Status.ITERATION_LIMIT}.get(res.stopped,
                                                                                          Status.FEASIBLE)
    if res.stopped == "max_passes" and max_passes == 0:
        status = Status.FEASIBLE
    info = {"passes": res.passes, "swaps": res.swaps, "stopped": res.stopped, "init": init_label,
            "initial_selection_objective": res.initial_objective,
            "selection_objective": res.objective, "batches": res.batches,
            "refused_batches": res.refused_batches, "history": res.history,
            "device": str(dev), "dtype": str(dt).replace("torch.", "")}
    objective = res.objective if problem.objective_kind == "selection" else None
    return BackendResult(pruned=np.sort(res.pruned), status=status, objective=objective, info=info)
