"""Searches on the true *update* objective, beyond the paper's single swaps on the selection objective.

Two backends, both working from the low-rank form ``F = AᵀA + λI`` in torch (CPU or CUDA, float32 or
float64) through the exact moves of :mod:`solvers.kernels.update_moves`, never forming ``F``:

``iht``          hard-thresholding pursuit in the style of CHITA (Benbaki et al., ICML 2023): from the
                 current kept set K with its exact refit ``x`` (CBS-U) and residual gradient
                 ``r = F(w − x)``, score pruned weights by ``r_i²/F_ii`` (what entering would gain,
                 diagonally scaled) and kept weights by ``F_jj x_j²`` (what leaving would cost), swap the
                 best ``t`` of each, refit exactly and accept only if the update objective dropped;
                 ``t`` backtracks by halving (a line search over how far to move) and grows by doubling.
                 Each step costs one refit, ``O(N²·min(k, m) + N³ + Np)``.
``update_swap``  best-improvement swap local search on the update objective itself: each round scores
                 the ``rho`` best entering × ``rho`` best leaving candidates with the *exact* swap delta
                 (pair interactions through ``U_ij = a_iᵀS⁻¹a_j`` included) and applies the best swap by
                 rank-one updates; many swaps are applied exactly inside one round on the candidate
                 set and flushed to all p weights with one product (``O(Np)`` a round, ``O(N·rho)`` a
                 swap). Runs from ``init`` (greedy_swap's answer by default; optionally then
                 ``iht_iter`` hard-thresholding steps);
                 optional perturbation ``kicks`` (iterated local search: a few random swaps among the
                 top candidates, descend again, keep if better) escape single-swap local optima.

Under a partition budget (``problem.budget`` with several groups: N:M, per-row…) both stay feasible:
``iht`` projects group-wise (:func:`group_pairs`: inside each group the r-th best entering weight swaps
with the r-th best leaving one, the most profitable pairs first) and ``update_swap`` scores only
same-group pairs, its candidates picked per group (:func:`_group_candidates`).

Both are monotone: every accepted step lowers the update objective (the refit / the exact delta), so the
answer is never worse than the initialisation. Both optimise the update objective only: a problem with
``objective="selection"`` is refused (use ``greedy_swap``). A first-order term is supported (the search
runs on the Newton point ``w − F⁻¹ḡ``, which shifts the cost by a constant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .base import BackendResult, Deadline, Status
from .magnitude import smallest_for
from .obs import obs_scores
from .registry import register
from .kernels.update_moves import KeptState, LowRankForm, fit, resolve_device, resolve_dtype

__all__ = ["hard_threshold_search", "swap_descent", "group_pairs", "SearchStats", "solve_iht", "solve_update_swap"]

INITS = ("magnitude", "obs", "greedy_swap")
SCALINGS = ("none", "diagonal")


@dataclass
class SearchStats:
    """Counters reported in ``Solution.info``."""

    iterations: int = 0        # iht: accepted threshold steps; update_swap: descent rounds
    refits: int = 0            # exact refits (iht)
    swaps: int = 0             # single swaps accepted (iht counts every weight moved in)
    kicks_accepted: int = 0
    stopped: str = "converged"  # "converged" | "time_limit" | "iteration_limit"
    trace: list = field(default_factory=list)


# -- option checking ---------------------------------------------------------------------------------
def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_epsilon(epsilon, dtype: torch.dtype) -> float:
    if epsilon is None:  # below float64 noise, above float32 noise of the deltas
        return 1e-10 if dtype == torch.float64 else 1e-6
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) \
            or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    return float(epsilon)


def _initial_pruned(problem, init, *, seed: int, deadline: Deadline, allowed: tuple[str, ...]) -> np.ndarray:
    """The starting pruned set: a named heuristic or an explicit index array of length m."""
    m = problem.n_prune
    if isinstance(init, str):
        if init not in allowed:
            raise ValueError(f"init must be one of {allowed} or an array of {m} indices, got {init!r}")
        if init == "magnitude":
            return smallest_for(np.abs(problem.weights), problem)
        if init == "obs":
            return smallest_for(obs_scores(problem), problem)
        from .registry import solve  # greedy_swap is another backend: go through the registry
        remaining = deadline.remaining()
        return solve(problem, "greedy_swap", seed=seed,
                     time_limit=None if math.isinf(remaining) else max(remaining, 1e-3)).pruned
    arr = np.asarray(init)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"init must be a name in {allowed} or a 1-d integer array of {m} indices")
    uniq = np.unique(arr)
    if uniq.size != arr.size or arr.size != m or (m and (uniq[0] < 0 or uniq[-1] >= problem.p)):
        raise ValueError(f"init must hold {m} distinct indices in [0, {problem.p}), got {arr.size} entries")
    problem.budget.check(uniq, name="init")
    return uniq.astype(np.intp)


def _group_tensor(problem, device) -> torch.Tensor | None:
    """Group ids of a partition budget (more than one group) on ``device``, else None."""
    budget = problem.budget
    if budget.n_groups == 1:
        return None
    return torch.as_tensor(budget.groups.astype(np.int64), device=device)


def _rank_in_group(score: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The rank (0 = best, by ``score`` descending) of each valid weight inside its group; −1 elsewhere."""
    p = score.numel()
    s = torch.where(valid, score, torch.full_like(score, -math.inf)).double().cpu().numpy()
    g = groups.cpu().numpy()
    order = np.lexsort((np.arange(p), -s, g))
    sizes = np.bincount(g, minlength=int(g.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(p, dtype=np.int64)
    rank[order] = np.arange(p) - starts[g[order]]
    rank[~valid.cpu().numpy()] = -1
    return torch.as_tensor(rank, device=score.device)


def group_pairs(score_in: torch.Tensor, score_out: torch.Tensor, kept: torch.Tensor,
                groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The group-wise projection of a hard-thresholding step: inside each group the ``r``-th best entering
    weight (pruned, ``score_in`` descending) is paired with the ``r``-th best leaving one (kept,
    ``score_out`` ascending). Returns ``(into, out, profit)`` over all groups, sorted by
    ``profit = score_in − score_out`` descending; swapping any prefix keeps every group's count.
    """
    rank_in = _rank_in_group(score_in, groups, ~kept)
    rank_out = _rank_in_group(-score_out, groups, kept)
    p = score_in.numel()
    key_in = torch.where(rank_in >= 0, groups * p + rank_in, torch.full_like(rank_in, -1))
    key_out = torch.where(rank_out >= 0, groups * p + rank_out, torch.full_like(rank_out, -2))
    ins = torch.nonzero(key_in >= 0).flatten()
    outs = torch.nonzero(key_out >= 0).flatten()
    ki, ko = key_in[ins], key_out[outs]
    si, so = torch.sort(ki), torch.sort(ko)
    ins, ki = ins[si.indices], si.values
    outs, ko = outs[so.indices], so.values
    common, ia, ib = np.intersect1d(ki.cpu().numpy(), ko.cpu().numpy(), assume_unique=True, return_indices=True)
    into = ins[torch.as_tensor(ia, device=ins.device, dtype=torch.long)]
    out = outs[torch.as_tensor(ib, device=outs.device, dtype=torch.long)]
    profit = score_in[into] - score_out[out]
    order = torch.argsort(-profit, stable=True)
    return into[order], out[order], profit[order]


def _kept_mask(pruned: np.ndarray, p: int, device) -> torch.Tensor:
    kept = torch.ones(p, dtype=torch.bool, device=device)
    kept[torch.as_tensor(pruned, dtype=torch.long, device=device)] = False
    return kept


def _bar(progress: bool, desc: str):
    return tqdm(desc=desc, unit="step", disable=not progress, leave=False)


def _trivial(problem) -> BackendResult | None:
    """One feasible set (every group prunes none or all of its weights; ``m = 0`` or ``m = p``): optimal."""
    budget = problem.budget
    full = budget.counts == budget.group_sizes
    if np.all((budget.counts == 0) | full):
        pruned = np.flatnonzero(full[budget.groups])
        return BackendResult(pruned=pruned, status=Status.OPTIMAL, objective=problem.update_cost(pruned))
    return None


# -- the two searches ---------------------------------------------------------------------------------
def hard_threshold_search(form: LowRankForm, kept: torch.Tensor, *, max_iter: int = 100,
                          epsilon: float = 1e-10, scaling: str = "none", deadline: Deadline | None = None,
                          bar=None, stats: SearchStats | None = None, groups: torch.Tensor | None = None):
    """CHITA-style hard-thresholding pursuit with exact refits; returns the final :class:`Fit`.

    Each step swaps the ``t`` best entering and leaving weights, refits and keeps the result only if
    ``cost`` fell by more than ``epsilon·cost``. Scores: ``scaling="none"`` (CHITA's plain gradient step
    ``x + ηr`` thresholded by magnitude) ranks entering weights by ``|r_i|`` and leaving ones by ``|x_j|``;
    ``scaling="diagonal"`` (a Jacobi-preconditioned step) by ``r_i²/F_ii`` and ``F_jj x_j²``. The step
    length η only decides how many weights cross, so it is searched as ``t``: the first ``t`` is the
    number of crossings at η = 1, then ``t`` halves on failure and doubles after a success; the search
    ends when even ``t = 1`` fails.

    ``groups`` (a partition budget): the projection is group-wise — the ``t`` swaps are the most profitable
    pairs of :func:`group_pairs` (inside each group the r-th best entering weight with the r-th best
    leaving one), so every group keeps its count.
    """
    deadline = deadline or Deadline(None)
    stats = stats if stats is not None else SearchStats()
    current = fit(form, kept)
    stats.refits += 1
    stats.trace.append(current.cost)
    n_kept = int(current.kept.sum())
    width = min(n_kept, form.p - n_kept)
    if width == 0:
        return current
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    D = form.diagonal if scaling == "diagonal" else torch.ones_like(form.w)
    t_last = None
    while True:
        if stats.iterations >= max_iter:
            stats.stopped = "iteration_limit"
            break
        if deadline.expired():
            stats.stopped = "time_limit"
            break
        score_in = torch.where(current.kept, torch.full_like(D, -math.inf), current.r ** 2 / D)
        score_out = torch.where(current.kept, D * current.x ** 2, torch.full_like(D, math.inf))
        if groups is None:
            top_in = torch.topk(score_in, width).indices
            top_out = torch.topk(-score_out, width).indices
            profitable = int((score_in[top_in] > score_out[top_out]).sum())
        else:
            top_in, top_out, profit = group_pairs(score_in, score_out, current.kept, groups)
            width = int(top_in.numel())
            if width == 0:
                break
            profitable = int((profit > 0).sum())
        t = max(1, profitable) if t_last is None else min(2 * t_last, width)
        accepted = None
        while t >= 1:
            if deadline.expired():
                break
            candidate = current.kept.clone()
            candidate[top_in[:t]] = True
            candidate[top_out[:t]] = False
            trial = fit(form, candidate)
            stats.refits += 1
            if trial.cost < current.cost - epsilon * abs(current.cost):
                accepted = trial
                break
            t //= 2
        if accepted is None:
            if deadline.expired():
                stats.stopped = "time_limit"
            break
        current, t_last = accepted, t
        stats.iterations += 1
        stats.swaps += t
        stats.trace.append(current.cost)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cost=f"{current.cost:.6g}", t=t)
    return current


def _group_candidates(state: KeptState, groups: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates under a partition budget: the ``n`` pruned weights whose best same-group partner looks
    most profitable (``h_min(group) − g_i``, interactions ignored) and likewise the ``n`` kept ones
    (``h_j − g_max(group)``) — so that the exact round scores pairs that can actually swap."""
    gains, costs = state.gains(), state.removal_costs()
    n_groups = int(groups.max()) + 1
    g_max = torch.full((n_groups,), -math.inf, dtype=gains.dtype, device=gains.device)
    g_max = g_max.scatter_reduce(0, groups, gains, reduce="amax")
    h_min = torch.full((n_groups,), math.inf, dtype=costs.dtype, device=costs.device)
    h_min = h_min.scatter_reduce(0, groups, costs, reduce="amin")
    est_in = torch.where(state.kept, torch.full_like(gains, math.inf), h_min[groups] - gains)
    est_out = torch.where(state.kept, costs - g_max[groups], torch.full_like(costs, math.inf))
    n_in = min(n, int((~state.kept).sum()))
    n_out = min(n, int(state.kept.sum()))
    into = torch.topk(-est_in, n_in).indices
    out = torch.topk(-est_out, n_out).indices
    return into[torch.isfinite(est_in[into])], out[torch.isfinite(est_out[out])]


def swap_descent(state: KeptState, *, rho: int = 64, epsilon: float = 1e-10, max_swaps: int = 100_000,
                 refresh: int = 256, inner: int = 64, deadline: Deadline | None = None, bar=None,
                 stats: SearchStats | None = None, on_swap=None, groups: torch.Tensor | None = None) -> str:
    """Best-improvement single swaps on the exact update objective until none of the ``rho × rho``
    candidate pairs improves by more than ``epsilon·cost``. Returns why it stopped.

    Each round takes the ``rho`` best entering (gain ``g_i``) and leaving (removal cost ``h_j``) candidates
    and applies up to ``inner`` exact best-improvement swaps among them (:meth:`KeptState.local_round`)
    before rescoring all weights. ``on_swap(i, j, delta)`` sees every accepted swap (tests use it).
    ``groups`` (a partition budget): candidates by :func:`_group_candidates`, swaps inside a group only.
    """
    deadline = deadline or Deadline(None)
    stats = stats if stats is not None else SearchStats()
    n_kept = state.n_kept
    n_in, n_out = min(rho, state.form.p - n_kept), min(rho, n_kept)
    if n_in == 0 or n_out == 0:
        return "converged"
    since_refresh = 0
    while True:
        if stats.swaps >= max_swaps:
            return "iteration_limit"
        if deadline.expired():
            return "time_limit"
        if groups is None:
            into = torch.topk(state.gains(), n_in).indices
            out = torch.topk(-state.removal_costs(), n_out).indices
        else:
            into, out = _group_candidates(state, groups, rho)
            if into.numel() == 0 or out.numel() == 0:
                return "converged"
        done = state.local_round(into, out, max_swaps=min(inner, max_swaps - stats.swaps), epsilon=epsilon,
                                 on_swap=on_swap, groups=groups)
        if done == 0:
            return "converged"
        stats.swaps += done
        stats.iterations += 1
        since_refresh += done
        if since_refresh >= refresh:  # wash out the rounding drift of the rank-one updates
            state.refresh()
            since_refresh = 0
        if bar is not None:
            bar.update(done)
            bar.set_postfix(cost=f"{state.cost:.6g}")


def _kick(state: KeptState, size: int, pool: int, rng: np.random.Generator,
          groups: torch.Tensor | None = None) -> None:
    """Random swaps among the ``pool`` best entering / leaving candidates (a perturbation); under a
    partition budget each random entering weight leaves with a random kept weight of its own group."""
    for _ in range(size):
        if groups is not None:
            into, _ = _group_candidates(state, groups, pool)
            if into.numel() == 0:
                return
            i = int(rng.choice(into.cpu().numpy()))
            partners = torch.nonzero(state.kept & (groups == groups[i])).flatten().cpu().numpy()
            if partners.size == 0:
                continue
            state.swap(i, int(rng.choice(partners)))
            continue
        n_kept = state.n_kept
        n_in, n_out = min(pool, state.form.p - n_kept), min(pool, n_kept)
        into = torch.topk(state.gains(), n_in).indices.cpu().numpy()
        out = torch.topk(-state.removal_costs(), n_out).indices.cpu().numpy()
        state.swap(int(rng.choice(into)), int(rng.choice(out)))


def _status(stopped: str) -> Status:
    return {"time_limit": Status.TIME_LIMIT, "iteration_limit": Status.ITERATION_LIMIT}.get(
        stopped, Status.FEASIBLE)


# -- backends -----------------------------------------------------------------------------------------

def _setup(problem, device, dtype, epsilon, time_limit):
    """Common start of both backends → the trivial answer (m = 0 or p), or
    ``(device, dtype, epsilon, deadline, form)``."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    epsilon = _check_epsilon(epsilon, dt)
    deadline = Deadline(time_limit)
    trivial = _trivial(problem)
    if trivial is not None:
        return trivial
    # Built before the initial set: it refuses a singular F clearly.
    return dev, dt, epsilon, deadline, LowRankForm.from_problem(problem, dev, dt)

@register("iht", description="CHITA-style hard-thresholding pursuit on the update objective "
                             "(exact low-rank refits, torch CPU/CUDA; group-wise projection under a partition "
                             "budget)", objectives=("update",), kind="heuristic", budgets=("total", "partition"))
def solve_iht(problem, *, seed: int, time_limit: float | None, progress: bool, init="obs",
              max_iter: int = 100, scaling: str = "none", epsilon: float | None = None, device="cpu",
              dtype="float64") -> BackendResult:
    """Hard-thresholding pursuit on the update objective (see the module docstring).

    init      "obs" (default), "magnitude", "greedy_swap", or an array of m indices
    max_iter  accepted threshold steps at most;  epsilon  minimum relative improvement
    scaling   "none" (CHITA's plain step, default) or "diagonal" (Jacobi-scaled scores)
    device    "cpu" / "cuda";  dtype  "float64" / "float32" (products with A; N×N work stays float64)
    """
    max_iter = _check_int("max_iter", max_iter, 0)
    _check_choice("scaling", scaling, SCALINGS)
    setup = _setup(problem, device, dtype, epsilon, time_limit)
    if isinstance(setup, BackendResult):
        return setup
    dev, dt, epsilon, deadline, form = setup
    pruned0 = _initial_pruned(problem, init, seed=seed, deadline=deadline, allowed=INITS)
    stats = SearchStats()
    with _bar(progress, "iht") as bar:
        result = hard_threshold_search(form, _kept_mask(pruned0, problem.p, dev), max_iter=max_iter,
                                       epsilon=epsilon, scaling=scaling, deadline=deadline, bar=bar,
                                       stats=stats, groups=_group_tensor(problem, dev))
    pruned = torch.nonzero(~result.kept).flatten().cpu().numpy()
    return BackendResult(pruned=pruned, status=_status(stats.stopped), objective=result.cost + form.constant,
                         info={"iterations": stats.iterations, "refits": stats.refits,
                               "swaps": stats.swaps, "init_objective": stats.trace[0] + form.constant,
                               "device": str(dev), "dtype": str(dt).replace("torch.", "")})


@register("update_swap", description="swap local search on the exact update objective (incremental "
                                     "low-rank updates, IHT start, optional kicks; torch CPU/CUDA)",
          objectives=("update",), kind="heuristic", budgets=("total", "partition"))
def solve_update_swap(problem, *, seed: int, time_limit: float | None, progress: bool, init="auto",
                      rho: int = 64, epsilon: float | None = None, max_swaps: int = 100_000,
                      kicks: int = 0, kick_size: int = 2, refresh: int = 256, iht_iter: int = 0,
                      device="cpu", dtype="float64") -> BackendResult:
    """Best-improvement swaps on the update objective (see the module docstring).

    init       the start set: "auto" (default: "greedy_swap" when that backend is available, else
               "obs"), "obs", "magnitude", "greedy_swap", or an array of m indices
    iht_iter   accepted steps of a hard-thresholding phase run on the start set before the swaps
               (default 0: measured, the swaps from greedy_swap did better and faster without it)
    rho        entering and leaving candidates scored exactly per round (rho² pairs)
    epsilon    minimum relative improvement of an accepted swap
    max_swaps  accepted swaps at most (descent and kicks together)
    kicks      perturbation rounds after the first local optimum (iterated local search);
               kick_size random swaps each, among the 4·rho best candidates; seeded by ``seed``
    refresh    recompute the state from scratch every this many swaps
    device     "cpu" / "cuda";  dtype  "float64" / "float32"
    """
    rho = _check_int("rho", rho, 1)
    max_swaps = _check_int("max_swaps", max_swaps, 0)
    kicks = _check_int("kicks", kicks, 0)
    kick_size = _check_int("kick_size", kick_size, 1)
    refresh = _check_int("refresh", refresh, 1)
    iht_iter = _check_int("iht_iter", iht_iter, 0)
    setup = _setup(problem, device, dtype, epsilon, time_limit)
    if isinstance(setup, BackendResult):
        return setup
    dev, dt, epsilon, deadline, form = setup
    if isinstance(init, str) and init == "auto":
        from .registry import available
        init = "greedy_swap" if "greedy_swap" in available() else "obs"
    pruned0 = _initial_pruned(problem, init, seed=seed, deadline=deadline, allowed=INITS)
    stats = SearchStats()
    kept = _kept_mask(pruned0, problem.p, dev)
    groups = _group_tensor(problem, dev)
    with _bar(progress, "update_swap") as bar:
        start_cost = None
        if iht_iter > 0:
            start = hard_threshold_search(form, kept, max_iter=iht_iter, epsilon=epsilon, scaling="none",
                                          deadline=deadline, bar=bar, stats=stats, groups=groups)
            kept, start_cost = start.kept, start.cost
        iht_steps, iht_swaps = stats.iterations, stats.swaps
        stats.swaps = stats.iterations = 0
        state = KeptState(form, kept)
        start_cost = state.cost if start_cost is None else min(start_cost, state.cost)
        # an iteration cap of the IHT phase still leaves the swap phase to run; a time limit does not
        stopped = "time_limit" if deadline.expired() else swap_descent(
            state, rho=rho, epsilon=epsilon, max_swaps=max_swaps, refresh=refresh, deadline=deadline,
            bar=bar, stats=stats, groups=groups)
        best_kept, best_cost = state.kept.clone(), state.cost
        rng = np.random.default_rng(seed)
        for _ in range(kicks if stopped == "converged" else 0):
            _kick(state, kick_size, 4 * rho, rng, groups)
            stopped = swap_descent(state, rho=rho, epsilon=epsilon, max_swaps=max_swaps, refresh=refresh,
                                   deadline=deadline, bar=bar, stats=stats, groups=groups)
            if state.cost < best_cost - epsilon * abs(best_cost):
                best_kept, best_cost = state.kept.clone(), state.cost
                stats.kicks_accepted += 1
            else:
                state.refresh(best_kept)
            if stopped != "converged":
                break
    # Monotone by construction; a fresh refit guards the answer against rounding in the tracked cost.
    final_cost = fit(form, best_kept).cost
    final_kept = best_kept if final_cost <= start_cost else kept
    final_cost = min(final_cost, start_cost)
    pruned = torch.nonzero(~final_kept).flatten().cpu().numpy()
    return BackendResult(pruned=pruned, status=_status(stopped), objective=final_cost + form.constant,
                         info={"iht_iterations": iht_steps, "iht_swaps": iht_swaps, "swaps": stats.swaps,
                               "rounds": stats.iterations, "kicks_accepted": stats.kicks_accepted,
                               "refits": stats.refits,
                               "start_objective": start_cost + form.constant,
                               "device": str(dev), "dtype": str(dt).replace("torch.", "")})
