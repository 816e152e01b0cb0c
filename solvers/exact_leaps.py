"""Depth-first "leaps and bounds" search over keep-sets for the "update" cost (private; used by ``miqp``).

The update cost of keeping the set ``S`` (``|S| = k``, everything else pruned) is

    cost(S) = ½ w̃ᵀF w̃ − ½ gain(S),        gain(S) = c_Sᵀ F_SS⁻¹ c_S,   c = F w̃,

(``x_S = F_SS⁻¹ c_S`` is the optimal update, w̃ the Newton point). So the search maximises ``gain`` over
k-subsets. ``gain`` is monotone — keeping more weights never costs more — which is the classic bound of
Furnival & Wilson's *leaps and bounds* for best-subset regression, used here in its depth-first form:

* A node keeps ``K`` and may still add ``b`` weights from an *ordered* candidate list ``u_1 … u_n``. Its
  data is the Schur complement ``S = F_UU − F_UK F_KK⁻¹ F_KU`` and ``c' = c_U − F_UK F_KK⁻¹ c_K``; then
  ``gain(K ∪ T) = gain(K) + c'_Tᵀ S_TT⁻¹ c'_T``. Adding ``u_t`` is a rank-one update of ``(S, c')``.
* Its ``t``-th child adds ``u_t`` and may afterwards add only ``u_{t+1} … u_n`` (each subset is visited
  once). Every keep-set in that subtree lies inside ``K ∪ {u_t … u_n}``, so by monotonicity its gain is at
  most ``gain(K) + c'_Vᵀ S_VV⁻¹ c'_V`` with ``V = {u_t … u_n}`` — a suffix. One Cholesky factorisation of
  the *reversed* ``S`` gives all suffix values at once (cumulative sums of the squared forward solve).
  They decrease with ``t``, so the first child whose bound cannot beat the incumbent ends the loop.
* Candidates are ordered by **greedy deletion**: position 0 holds the candidate whose removal lowers the
  gain of the whole list the most, position 1 the one whose removal then lowers the rest the most, and so on
  (with ``H = S_VV⁻¹`` and ``x = H c'_V`` over the rest ``V``, removing ``j`` costs ``x_j² / H_jj`` and
  downdates ``H`` and ``x`` by rank one). This attacks the suffix bound directly: it falls as fast as
  greedily possible, so the loop over children ends early. Ordering by single gain ``c'_j² / S_jj`` instead
  (the classic choice, used until this was measured) keeps correlated weights — every one valuable alone,
  each replaceable by the others — in the suffixes, whose bounds then stay high: on a real fc1 block at
  damping 1e-5 the tree shrinks 30.7 M → 0.42 M nodes. The greedy steps stop once a bound reaches the
  incumbent's threshold (the loop ends there; the threshold only rises); the explicit inverse only chooses
  the order — the bounds come from the Cholesky factor as before (it loses √cond(S)·ε, the inverse cond(S)·ε).
* **Duplicate weights** (compiled loop): weights ``D`` with ``F_DD = a·11ᵀ + δI`` and ``F_iD`` constant over
  ``D`` — identical gradient columns, as the always-background pixels of every fc1 block. The cost of a
  keep-set depends on ``D``'s members only through ``δ‖x_D − w_D‖²`` and the sum of ``x_D`` (pruned ``P``:
  ``x_j = 0``): for a fixed sum ``T`` over ``q ≥ 1`` kept members ``K``, the best update costs
  ``δ(Σ_P w_j² + (T − Σ_K w_j)²/q)`` there. Replacing a kept member's value ``w_i`` by a pruned one's ``v``
  (the two swap roles, ``q`` and the rest unchanged) turns this into ``−(1 − 1/q)·v² +`` (linear in ``v``) ``+``
  const, concave in ``v``: over ``w_l ≤ w_i ≤ w_u`` it is smallest at an end. So a kept member between two
  pruned ones (in the group's order by ``w``) can trade places with one of them at no loss (at the same
  ``T``, hence also after re-optimising), and **some optimal keep-set prunes one contiguous run of every
  group**. The search visits only such
  keep-sets: a child whose kept and pruned members rule that out is skipped, undecided members inside the
  pruned run are dropped from its list, and undecided members beyond a kept one (which the run can no longer
  reach) must all be kept — more of them than the budget left rules the child out. On real fc1 blocks at
  1e-5: 5.7 M nodes (unproven at 60 s) → 86 nodes on row 20 cols 0–63 (60 duplicates), 1.39 M → 76 k on
  row 0 cols 704–767 (20). Groups are found by :func:`duplicate_groups` (bit masks of up to
  ``leaps_jit.GROUP_BITS`` members; larger groups are split — any part of a group is a group).
* Nodes with two weights left evaluate every pair in closed form (vectorised); one left, every single.
* Partition budgets (``groups=(ids, keep_counts)``, exact keep counts per group — N:M, per-row): a node
  also carries the keeps each group still ``need`` s. Candidates of groups that need nothing more are
  dropped (the Schur complement restricted to the rest is its submatrix), a child is created only if the
  suffix after it still holds enough candidates of every group — once that fails it fails for every later
  child too (the suffixes shrink), which ends the loop — and the two-left level keeps only pairs the
  counts allow. The suffix bound needs nothing new: every keep-set of the subtree still lies inside
  ``K ∪ {u_t … u_n}``, extra constraints only remove sets.

* Resumable (:class:`LeapsSearch`): the recursion is a chain of generators (the last two levels are plain
  functions, so leaves pay nothing for it); once a pause is due (a time or a node count) the deepest frame
  yields before its next child, suspending the whole stack, and a later ``run`` continues there — a portfolio
  time-slices it with best-first search. Every suspended frame re-reads the incumbent when resumed (an
  incumbent offered meanwhile prunes at once). While suspended, the root's current suffix bound bounds every
  keep-set not yet enumerated (:meth:`LeapsSearch.current_bound`).

* Compiled (total budgets, numba installed): the same loop over an explicit stack of per-level arrays
  (:mod:`solvers.kernels.leaps_jit`) — the same nodes in the same order and the same answers (up to rounding
  ties), much faster on real blocks, where a node of the Python loop is ~20 numpy calls of a few µs each; it
  hands each node's inverse down to its children instead of inverting afresh (the Python loop inverts at every
  node). The clock, node limits, pauses and Ctrl-C are checked between calls of ~2 ms. Partition budgets,
  ``k ≤ 2`` and blocks whose workspace (two ``p × p`` arrays per level) exceeds ``COMPILED_MAX_BYTES`` use the
  Python loop, which does not apply the duplicate rule (its exchange argument would move keeps between
  partition groups).

This is exact (no relaxation is involved) and strongest when the kept set is small relative to the rank
of ``F`` — high sparsity, or low-rank blocks with ``k < N`` where the perspective bounds of
:mod:`solvers.exact_bnb` are only λ-sized. Pruning leaves a numerical allowance of ``1e-12·w̃ᵀF w̃`` on the
conservative side; the reported bound is the largest gain bound of any pruned or unexplored subtree.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg.lapack import dpotrf as _potrf, dtrtri as _trtri, dtrtrs as _trtrs

from .base import Deadline
from .exact_core import note_interrupt
from .kernels import leaps_jit

__all__ = ["leaps_search", "LeapsSearch", "LeapsResult", "NumericalFailure"]

# Rounding allowance (relative to the largest possible gain w̃ᵀF w̃): a subtree is pruned only when its
# bound is below the incumbent by at least this much minus the optimality tolerance.
NUMERICAL_ALLOWANCE = 1e-12
_CHECK_EVERY = 256          # nodes between progress updates (the clock is read at every node: a node at
                            # p = 400 costs ~10 ms, so counting nodes between reads broke time limits)
# Total budgets run the compiled node loop (:mod:`solvers.kernels.leaps_jit`, same nodes and answers as the
# Python one, much faster on real blocks) when numba is installed (False: the Python loop, for A/B measurement).
COMPILED = True
# It keeps two p × p arrays per level (the Schur complement and its inverse): used up to this workspace size
# (p ≈ 250 at half sparsity, as with one array and 64 MiB before).
COMPILED_MAX_BYTES = 128 * 2 ** 20
# Seconds one call into the compiled loop aims at: the clock is read between calls (the node count per call
# adapts to the measured node rate, from one node up).
COMPILED_SLICE_SECONDS = 0.002


# Duplicate weights (identical columns of F up to the diagonal — pixels that are constant over the data give
# them in every fc1 block) are searched once per distinct pattern in the compiled loop (module doc).
DUPLICATE_DOMINANCE = True


def duplicate_groups(F: np.ndarray, w: np.ndarray,
                     tol: float = NUMERICAL_ALLOWANCE) -> tuple[np.ndarray, np.ndarray]:
    """Groups of duplicate weights of ``F`` and their ranks by value: ``(group_of, rank_of)``, ``group_of[j] =
    −1`` for a weight in no group.

    Weights ``D`` are duplicates when ``F_DD = a·11ᵀ + δI`` and ``F_iD`` is constant over ``D`` for every
    other ``i`` (identical gradient columns plus a shared diagonal). Entries are compared up to
    ``tol·max|diag F|``. Ranks order each group by ``w`` (ties by index); groups larger than
    ``leaps_jit.GROUP_BITS`` are split into consecutive runs of ranks (any part of a group is a group).
    """
    p = w.size
    group_of = np.full(p, -1, dtype=np.int64)
    rank_of = np.zeros(p, dtype=np.int64)
    d = np.diag(F)
    atol = tol * max(float(np.abs(d).max()), 1e-300)
    # Candidates share a diagonal entry; then their columns must agree off the two diagonal positions. Pairs
    # with the group's first member suffice: agreeing with it makes the rest agree (and F_DD = a·11ᵀ + δI).
    order = np.argsort(d, kind="stable")
    assigned = np.zeros(p, dtype=bool)
    next_id = 0
    for a_pos, j in enumerate(order):
        if assigned[j]:
            continue
        stop = a_pos + 1 + int(np.searchsorted(d[order[a_pos + 1:]], d[j] + atol, side="right"))
        cand = order[a_pos + 1:stop]
        cand = cand[~assigned[cand]]
        if cand.size == 0:
            continue
        diff = np.abs(F[:, cand] - F[:, j:j + 1])
        diff[j, :] = 0.0
        diff[cand, np.arange(cand.size)] = 0.0
        members = np.concatenate(([j], cand[diff.max(axis=0) <= atol]))
        if members.size < 2:
            continue
        assigned[members] = True
        members = members[np.lexsort((members, w[members]))]
        for start in range(0, members.size, leaps_jit.GROUP_BITS):
            part = members[start:start + leaps_jit.GROUP_BITS]
            if part.size < 2:
                continue
            group_of[part] = next_id
            rank_of[part] = np.arange(part.size)
            next_id += 1
    return group_of, rank_of


class NumericalFailure(ArithmeticError):
    """A Schur complement stopped being numerically positive definite (caller falls back)."""


@dataclass
class LeapsResult:
    keep: np.ndarray           # bool (p,), the best keep-set found
    value: float               # its cost without the problem's offset: ½w̃ᵀFw̃ − ½gain
    bound: float               # proven lower bound on the optimum (same units)
    optimal: bool
    nodes: int = 0
    info: dict = field(default_factory=dict)


class _Search:
    """State of one depth-first search (incumbent, bounds of pruned / unexplored subtrees, counters)."""

    def __init__(self, p, total, best_keep, best_gain, deadline, node_limit, rel_gap, abs_gap, bar, ids=None):
        self.p, self.total = p, total
        self.best_keep, self.best_gain = best_keep, best_gain
        self.deadline, self.node_limit, self.bar = deadline, node_limit, bar
        self.rel_gap, self.abs_gap = rel_gap, abs_gap
        self.ids = ids
        self.allowance = NUMERICAL_ALLOWANCE * max(total, 0.0)
        self.pruned_max = -np.inf      # largest gain bound of a pruned subtree
        self.open_max = -np.inf        # largest gain bound of a subtree left unexplored at a stop
        self.nodes = 0
        self.stopped = False
        self.interrupted = False
        # Time slices (a resumable search): the generator yields at the next child once a pause is due.
        self.pause_at: float | None = None      # perf_counter() time
        self.pause_nodes: int | None = None     # node count
        self.pause_due = False
        self.root_ub = total           # the root's current suffix bound (bounds all that is not enumerated yet)
        self._pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._refresh_threshold()

    def _refresh_threshold(self) -> None:
        if not np.isfinite(self.best_gain):
            self.threshold = -np.inf
            return
        # cost = const − gain/2, so a cost tolerance δ is a gain tolerance 2δ.
        best_cost = 0.5 * (self.total - self.best_gain)
        tol = 2.0 * max(self.abs_gap, self.rel_gap * abs(best_cost))
        self.threshold = self.best_gain + tol - self.allowance

    def offer(self, gain: float, keep_idx) -> None:
        if gain > self.best_gain:
            keep = np.zeros(self.p, dtype=bool)
            keep[np.asarray(keep_idx, dtype=np.intp)] = True
            self.best_keep, self.best_gain = keep, gain
            self._refresh_threshold()

    def tick(self) -> None:
        self.nodes += 1
        if self.deadline.expired() or (self.node_limit is not None and self.nodes >= self.node_limit):
            self.stopped = True
        elif self.pause_nodes is not None and self.nodes >= self.pause_nodes or \
                self.pause_at is not None and time.perf_counter() >= self.pause_at:
            self.pause_due = True
        if self.bar is not None and self.nodes % _CHECK_EVERY == 0:
            self.bar.update(_CHECK_EVERY)
            self.bar.set_postfix(best=f"{0.5 * (self.total - self.best_gain):.6g}", refresh=False)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n not in self._pairs:
            self._pairs[n] = np.triu_indices(n, 1)
        return self._pairs[n]


def _suffix_gains(S: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``out[t] = c_Vᵀ S_VV⁻¹ c_V`` for every suffix ``V = {t, …, n−1}`` (one Cholesky of the reversed S)."""
    L, info = _potrf(S[::-1, ::-1], lower=1, clean=1)
    if info != 0:
        raise NumericalFailure("Schur complement not positive definite")
    y, info = _trtrs(L, c[::-1], lower=1)
    if info != 0:
        raise NumericalFailure("singular Cholesky factor")
    return np.cumsum(y * y)[::-1]


def _keep_gain(F: np.ndarray, c: np.ndarray, keep: np.ndarray) -> float | None:
    """``c_Sᵀ F_SS⁻¹ c_S`` for the keep-set ``S`` (bool mask), by one Cholesky factorisation; ``None`` when
    ``F_SS`` is not numerically positive definite."""
    kk = np.flatnonzero(keep)
    L, info = _potrf(F[np.ix_(kk, kk)], lower=1)
    if info != 0:
        return None
    y, info = _trtrs(L, c[kk], lower=1)
    return float(y @ y) if info == 0 else None


def _deletion_order(S: np.ndarray, c: np.ndarray, gain: float, threshold: float,
                    last: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy deletion order of a node's candidates and its children's suffix bounds (module doc; the compiled
    loop's ``_greedy_deletions`` and ``_order_node`` step for step, with an inverse computed afresh):
    ``(order, bounds)`` with ``bounds[t] = gain + c_Vᵀ S_VV⁻¹ c_V`` over the rest ``V`` after removing
    ``order[:t]``, each removal the one that lowers it most (``x_j² / H_jj`` with ``H = S_VV⁻¹``,
    ``x = H c_V``). The steps stop once the gain left is at or below ``threshold`` or past position ``last``;
    the rest follow in index order. The bounds are the suffix gains of that order (Cholesky factor)."""
    n = c.size
    L, info = _potrf(S, lower=1, clean=1)
    if info != 0:
        raise NumericalFailure("Schur complement not positive definite")
    Linv, info = _trtri(L, lower=1)
    if info != 0:
        raise NumericalFailure("singular Cholesky factor")
    H = Linv.T @ Linv
    x = H @ c
    tot = float(c @ x)
    order = np.empty(n, dtype=np.intp)
    alive = np.ones(n, dtype=bool)
    pos = 0
    while pos <= last and gain + tot > threshold:
        h = np.diagonal(H)
        if np.any(h[alive] <= 0.0):
            raise NumericalFailure("inverse lost definiteness")
        score = np.where(alive, x * x / np.where(alive, h, 1.0), -1.0)
        j = int(np.argmax(score))
        order[pos] = j
        alive[j] = False
        pos += 1
        tot -= float(score[j])
        col = H[:, j] / H[j, j]
        x = x - col * x[j]              # x_j and row j become exactly 0 (col_j = 1), removed ones stay 0
        H = H - np.outer(col, H[j])
        H[:, j] = 0.0                   # column j only up to rounding
    order[pos:] = np.flatnonzero(alive)
    # The explicit inverse chose the order; the bounds come from the Cholesky factor of the ordered matrix
    # (backward stable: the inverse loses cond(S)·ε, the factor only √cond(S)·ε).
    return order, gain + _suffix_gains(S[order][:, order], c[order])


def _leaf(st: _Search, gain: float, S: np.ndarray, c: np.ndarray, idx: np.ndarray, b: int, kept: list,
          need: np.ndarray | None) -> None:
    """A node with one or two weights left to add: every single / pair in closed form (no recursion)."""
    st.tick()
    n = c.size
    d = S.diagonal()
    if d.min() <= 0:
        raise NumericalFailure("non-positive Schur pivot")
    if b == 1:
        single = c * c / d
        j = int(np.argmax(single))
        st.offer(gain + float(single[j]), kept + [int(idx[j])])
        return
    a, e = st.pairs(n)
    if need is not None:   # a pair inside one group only if that group needs two
        gi = st.ids[idx]
        ok = (gi[a] != gi[e]) | (need[gi[a]] >= 2)
        a, e = a[ok], e[ok]
        if a.size == 0:
            return
    ca, ce, sae = c[a], c[e], S[a, e]
    pair = (ca * ca * d[e] - 2.0 * ca * ce * sae + ce * ce * d[a]) / (d[a] * d[e] - sae * sae)
    j = int(np.argmax(pair))
    st.offer(gain + float(pair[j]), kept + [int(idx[a[j]]), int(idx[e[j]])])


def _expand(st: _Search, gain: float, S: np.ndarray, c: np.ndarray, idx: np.ndarray, b: int,
            kept: list, need: np.ndarray | None = None, root: bool = False):
    """Search the subtree "keep ``kept``, add ``b ≥ 3`` of ``idx``" (module doc); ``S``, ``c`` are conditioned
    on kept. A generator: it yields (suspending the whole depth-first stack) before a child once
    ``st.pause_due`` is set, so a portfolio can time-slice the search; resumed, it re-reads the incumbent.

    ``need``: with groups, the keeps each group still needs (``b = need.sum()``); every candidate in ``idx``
    belongs to a group that needs at least one more.
    """
    st.tick()
    n = c.size
    order, bounds = _deletion_order(S, c, gain, st.threshold, n - b)     # raises on a non-positive pivot
    S, c, idx = S[order][:, order], c[order], idx[order]
    if need is not None:
        gi = st.ids[idx]
        # after[t, g]: candidates of group g strictly after position t.
        onehot = np.zeros((n + 1, need.size), dtype=np.intp)
        onehot[np.arange(n), gi] = 1
        after = np.cumsum(onehot[::-1], axis=0)[::-1][1:]
    for t in range(n - b + 1):
        if st.pause_due and not st.stopped:
            yield      # the driver clears pause_due (and may offer a better incumbent) before resuming
        ub = float(bounds[t])
        if root:
            st.root_ub = ub
        if ub <= st.threshold:
            # Suffix bounds decrease with t: every later child is pruned too.
            st.pruned_max = max(st.pruned_max, ub)
            return
        if st.stopped:
            st.open_max = max(st.open_max, ub)
            return
        child_need = None
        if need is not None:
            child_need = need.copy()
            child_need[gi[t]] -= 1
            if np.any(child_need > after[t]):
                return     # the suffix cannot fill every group: neither can any later (shorter) one
        piv = S[t, t]
        col = S[t + 1:, t]
        S_child = S[t + 1:, t + 1:] - col[:, None] * (col / piv)[None, :]
        c_child = c[t + 1:] - col * (c[t] / piv)
        idx_child = idx[t + 1:]
        if child_need is not None and child_need[gi[t]] == 0:   # that group is full: drop its candidates
            rest = gi[t + 1:] != gi[t]
            S_child, c_child, idx_child = S_child[np.ix_(rest, rest)], c_child[rest], idx_child[rest]
        try:
            if b - 1 <= 2:
                _leaf(st, gain + float(c[t] * c[t] / piv), S_child, c_child, idx_child, b - 1,
                      kept + [int(idx[t])], child_need)
            else:
                yield from _expand(st, gain + float(c[t] * c[t] / piv), S_child, c_child, idx_child, b - 1,
                                   kept + [int(idx[t])], child_need)
        except KeyboardInterrupt:
            # Ctrl-C inside the child: its subtree is unexplored (bounded by ub); stop everywhere.
            st.interrupted = st.stopped = True
            note_interrupt(st.deadline)
            st.open_max = max(st.open_max, ub)


class LeapsSearch:
    """A resumable leaps-and-bounds search (the module doc's algorithm; :func:`leaps_search` runs one to the end).

    ``run(until=, nodes=)`` advances it until it finishes, the global ``deadline`` / ``node_limit`` stops it,
    or the slice ends (``until``: a ``time.perf_counter()`` time; ``nodes``: a number of nodes) — then it is
    suspended mid-tree and a later ``run`` continues exactly where it paused. ``offer_value`` shares another
    search's incumbent (it prunes from the next child on). ``result()`` closes it: a suspended search is
    unwound first, every subtree left on its stack contributing its suffix bound to the proven bound.
    """

    def __init__(self, F: np.ndarray, w: np.ndarray, k: int, *, incumbent: np.ndarray | None = None,
                 deadline: Deadline | None = None, node_limit: int | None = None, rel_gap: float = 1e-9,
                 abs_gap: float = 0.0, progress: bool = False, groups=None, compiled: bool | None = None,
                 dominance: bool | None = None):
        F = np.ascontiguousarray(F, dtype=float)
        w = np.asarray(w, dtype=float)
        p = w.size
        if not 1 <= k <= p:
            raise ValueError(f"k must be in [1, {p}], got {k}")
        ids = need = None
        idx0 = np.arange(p)
        if groups is not None:
            ids = np.asarray(groups[0], dtype=np.intp)
            need = np.asarray(groups[1], dtype=np.intp).copy()
            if ids.shape != (p,) or int(need.sum()) != k or np.any(need < 0) \
                    or np.any(need > np.bincount(ids, minlength=need.size)):
                raise ValueError("groups must be (ids of shape (p,), keep counts summing to k, each within its group)")
            idx0 = np.flatnonzero(need[ids] > 0)      # groups that keep nothing are decided already
        self.deadline = deadline = deadline if deadline is not None else Deadline(None)
        self.F, self.w = F, w
        c = F @ w
        self.total = total = float(w @ c)
        best_keep, best_gain = None, -np.inf
        if incumbent is None:
            # A start from the best single gains (per group): a stopped search always has a keep-set to return.
            score = c * c / np.diag(F)
            incumbent = np.zeros(p, dtype=bool)
            if ids is None:
                incumbent[np.argsort(-score, kind="stable")[:k]] = True
            else:
                for g in np.flatnonzero(need > 0):
                    members = np.flatnonzero(ids == g)
                    incumbent[members[np.argsort(-score[members], kind="stable")[:need[g]]]] = True
        start_gain = _keep_gain(F, c, incumbent)
        if start_gain is not None:
            best_keep, best_gain = incumbent.astype(bool).copy(), start_gain
        self._c = c
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(desc="miqp leaps-and-bounds", unit="node")
        self.st = _Search(p, total, best_keep, best_gain, deadline, node_limit, rel_gap, abs_gap, self.bar, ids)
        self.done = False
        self._closed = False
        self._gen = None
        self._jit = None
        self.n_duplicate_groups = 0     # groups the compiled loop searches once per pattern (module doc)
        if (COMPILED if compiled is None else compiled) and ids is None and k >= 3 and leaps_jit.AVAILABLE \
                and leaps_jit.workspace_bytes(p, k) <= COMPILED_MAX_BYTES:
            kernels = leaps_jit.compiled()      # None (with one warning) where numba cannot compile here
            if kernels is not None:
                dups = duplicate_groups(F, w) if (DUPLICATE_DOMINANCE if dominance is None else dominance) \
                    else None
                self.n_duplicate_groups = 0 if dups is None else int(dups[0].max()) + 1
                self._jit = _CompiledState(F, c, k, self.st, kernels, dups)
                return
        if k <= 2:
            self._root = lambda: _leaf(self.st, 0.0, F[np.ix_(idx0, idx0)], c[idx0], idx0, k, [], need)
        else:
            self._gen = _expand(self.st, 0.0, F[np.ix_(idx0, idx0)], c[idx0], idx0, k, [], need, root=True)

    @property
    def nodes(self) -> int:
        return self.st.nodes

    @property
    def compiled(self) -> bool:
        """Whether the compiled node loop runs this search (module constant ``COMPILED``)."""
        return self._jit is not None

    @property
    def value(self) -> float:
        """Cost of the incumbent without the problem's offset (``inf`` when there is none yet)."""
        return 0.5 * (self.total - self.st.best_gain) if np.isfinite(self.st.best_gain) else np.inf

    @property
    def keep(self) -> np.ndarray | None:
        return self.st.best_keep

    def offer_value(self, keep: np.ndarray, value: float) -> None:
        """Share an incumbent found elsewhere (``value``: its cost in the same units as :attr:`value`)."""
        gain = self.total - 2.0 * float(value)
        if gain > self.st.best_gain:
            self.st.best_keep, self.st.best_gain = np.asarray(keep, dtype=bool).copy(), gain
            self.st._refresh_threshold()
            if self._jit is not None:
                self._jit.push()

    def current_bound(self) -> float:
        """A proven lower bound now, without closing the search (cost units, offset excluded).

        Every keep-set not yet enumerated lies in the root's current child subtree or a later one, all
        bounded by the root's current suffix bound; enumerated ones are bounded by the incumbent or lie in
        pruned subtrees (``pruned_max``). Closed: the result's bound.
        """
        st = self.st
        if self.done:
            return self.result().bound
        value = 0.5 * (self.total - st.best_gain)
        return min(value, 0.5 * (self.total - max(st.best_gain, st.pruned_max, st.root_ub, st.open_max)))

    def run(self, until: float | None = None, nodes: int | None = None) -> bool:
        """Advance the search (class doc); returns whether it has ended (finished, stopped or interrupted)."""
        if self.done:
            return True
        st = self.st
        st.pause_at = until
        st.pause_nodes = None if nodes is None else st.nodes + int(nodes)
        st.pause_due = False
        if self._jit is not None:
            self.done = self._jit.run(self.deadline)
            return self.done
        try:
            if self._gen is None:
                self._root()
                self.done = True
            else:
                next(self._gen)           # returns at a pause; StopIteration at the end
        except StopIteration:
            self.done = True
        except KeyboardInterrupt:
            # Ctrl-C before the root's children ran: the root is unexplored; total gain bounds every subset.
            st.interrupted = st.stopped = True
            note_interrupt(self.deadline)
            st.open_max = max(st.open_max, self.total)
            self.done = True
        if not self.done and st.stopped:      # the global clock stopped it at a pause point: unwind now
            self._unwind()
        return self.done

    def _unwind(self) -> None:
        st = self.st
        st.stopped = True
        st.pause_due = False
        if self._jit is not None:
            self._jit.unwind()
            self.done = True
            return
        try:
            for _ in self._gen:        # every suspended frame records its open bound and returns
                pass
        except KeyboardInterrupt:
            st.interrupted = True
            note_interrupt(self.deadline)
            st.open_max = max(st.open_max, self.total)
        self.done = True

    def result(self) -> LeapsResult:
        """Close the search (unwinding a suspended one) and return its result."""
        if not self.done:
            self._unwind()
        if not self._closed:
            self._closed = True
            if self.bar is not None:
                self.bar.close()
        st = self.st
        if st.best_keep is None:      # stopped before any leaf and no incumbent: nothing to return
            raise NumericalFailure("leaps search stopped before finding a keep-set")
        best_bound_gain = max(st.best_gain, st.pruned_max, st.open_max)
        # The search sums a keep-set's gain along its path of Schur complements; the reported value is
        # recomputed from the keep-set itself (one factorisation: the sum's rounding grows with the path).
        gain = _keep_gain(self.F, self._c, st.best_keep)
        value = 0.5 * (self.total - (st.best_gain if gain is None else gain))
        bound = min(value, 0.5 * (self.total - best_bound_gain))
        # Stopping only matters if it left a subtree unexplored (a stop at the very last node proves optimality).
        return LeapsResult(st.best_keep, value, bound, optimal=st.open_max == -np.inf, nodes=st.nodes,
                           info={"search": "leaps", "interrupted": st.interrupted,
                                 "compiled": self.compiled, "duplicate_groups": self.n_duplicate_groups})


class _CompiledState:
    """The compiled node loop's arrays (:mod:`solvers.kernels.leaps_jit`) and its driver.

    The incumbent, counters and recorded bounds live in the shared :class:`_Search` ``st`` between calls:
    :meth:`push` copies them into the kernel's arrays (an incumbent offered by another search), :meth:`pull`
    back. The clock, node limits, pauses and Ctrl-C are checked between calls of ``COMPILED_SLICE_SECONDS``.
    """

    def __init__(self, F: np.ndarray, c: np.ndarray, k: int, st: _Search, kernels: dict,
                 duplicates: tuple[np.ndarray, np.ndarray] | None):
        p = c.size
        levels = k - 2
        self.dominance = leaps_jit.no_duplicates(p, levels) if duplicates is None else \
            leaps_jit.duplicate_state(duplicates[0], duplicates[1], levels, p)
        self.k, self.st = k, st
        (self.S, self.c, self.idx, self.bnd), self.ints, self.reals, self.bufs = leaps_jit.workspace(p, k)
        self.best_keep = np.zeros(k, dtype=np.int64)
        self.chunk = 1
        self.push()
        self.kernels = kernels
        if not self.kernels["enter_root"](F, c, k, self.S, self.c, self.idx, self.bnd, self.ints, self.reals,
                                          *leaps_jit.root_buffers(self.bufs)):
            raise NumericalFailure("Schur complement not positive definite")
        self.reals[leaps_jit.ROOT_UB] = st.total
        self.pull()

    def push(self) -> None:
        st, r = self.st, self.reals
        r[leaps_jit.BEST] = st.best_gain
        r[leaps_jit.THRESHOLD] = st.threshold
        r[leaps_jit.PRUNED_MAX] = max(r[leaps_jit.PRUNED_MAX], st.pruned_max)
        if st.best_keep is not None:
            self.best_keep[:] = np.flatnonzero(st.best_keep)[:self.k]

    def pull(self) -> None:
        st, r = self.st, self.reals
        st.nodes = int(self.ints[leaps_jit.NODES])
        st.pruned_max = float(r[leaps_jit.PRUNED_MAX])
        st.root_ub = float(r[leaps_jit.ROOT_UB])
        if r[leaps_jit.BEST] > st.best_gain:
            keep = np.zeros(st.p, dtype=bool)
            keep[self.best_keep] = True
            st.best_keep, st.best_gain = keep, float(r[leaps_jit.BEST])
            st._refresh_threshold()

    def run(self, deadline) -> bool:
        """Advance until the end, the pause (``st.pause_at`` / ``st.pause_nodes``), the node limit or the clock;
        returns whether the search has ended (a stop unwinds at once, recording the open bounds)."""
        st = self.st
        try:
            self.push()
            first = True        # a slice always advances (as the Python loop, which pauses after a node)
            while True:
                if deadline.expired() or st.node_limit is not None and st.nodes >= st.node_limit:
                    st.stopped = True
                    self.unwind()
                    return True
                if not first and (st.pause_nodes is not None and st.nodes >= st.pause_nodes
                                  or st.pause_at is not None and time.perf_counter() >= st.pause_at):
                    return False
                first = False
                budget = self.chunk
                for cap in (st.pause_nodes, st.node_limit):
                    if cap is not None:
                        budget = min(budget, cap - st.nodes)
                budget = max(budget, 1)
                start = time.perf_counter()
                code = self.kernels["run_nodes"](self.k, self.S, self.c, self.idx, self.bnd, self.ints, self.reals,
                                           self.best_keep, st.total, st.rel_gap, st.abs_gap, st.allowance,
                                           budget, *self.bufs, *self.dominance)
                elapsed = time.perf_counter() - start
                before = st.nodes
                self.pull()
                if st.bar is not None and st.nodes // _CHECK_EVERY > before // _CHECK_EVERY:
                    st.bar.update(st.nodes - st.bar.n)
                    st.bar.set_postfix(best=f"{0.5 * (st.total - st.best_gain):.6g}", refresh=False)
                if code == leaps_jit.NUMERICAL:
                    raise NumericalFailure("Schur complement not positive definite")
                if code == leaps_jit.DONE:
                    return True
                done = st.nodes - before
                if done >= budget:   # a full call: size the next one to the slice time
                    rate = done / max(elapsed, 1e-7)
                    self.chunk = int(min(max(1.0, rate * COMPILED_SLICE_SECONDS), 4.0 * self.chunk + 1))
        except KeyboardInterrupt:
            st.interrupted = st.stopped = True
            note_interrupt(deadline)
            self.pull()
            self.unwind()
            return True

    def unwind(self) -> None:
        """Close a stopped search: every level's next child (and so every later one, smaller suffix bounds)
        is recorded as pruned (bound below the incumbent's threshold) or open."""
        st = self.st
        self.pull()
        L = (self.ints.size - leaps_jit.LEVELS0) // 3
        depth = int(self.ints[leaps_jit.DEPTH])
        n_of = self.ints[leaps_jit.LEVELS0:leaps_jit.LEVELS0 + L]
        t_of = self.ints[leaps_jit.LEVELS0 + L:leaps_jit.LEVELS0 + 2 * L]
        for lv in range(depth):
            t, n, b = int(t_of[lv]), int(n_of[lv]), self.k - lv
            if t > n - b:
                continue
            ub = float(self.bnd[lv, t])
            if ub <= st.threshold:
                st.pruned_max = max(st.pruned_max, ub)
            else:
                st.open_max = max(st.open_max, ub)
        self.ints[leaps_jit.DEPTH] = 0


def leaps_search(F: np.ndarray, w: np.ndarray, k: int, *, incumbent: np.ndarray | None = None,
                 deadline: Deadline | None = None, node_limit: int | None = None, rel_gap: float = 1e-9,
                 abs_gap: float = 0.0, progress: bool = False, groups=None,
                 compiled: bool | None = None, dominance: bool | None = None) -> LeapsResult:
    """Maximise ``gain(S)`` over ``|S| = k`` (module doc) for a positive definite ``F`` and Newton point ``w``.

    ``incumbent``: an optional bool keep-vector to start from (prunes from the first node).
    ``groups``: ``(ids, keep_counts)`` — keep exactly ``keep_counts[g]`` weights of group ``g`` (then
    ``k = keep_counts.sum()``); ``None``: a total budget.
    Costs are reported without the problem's offset: ``½wᵀFw − ½gain``. Raises :class:`NumericalFailure` when
    a Schur complement is not numerically positive definite. ``deadline`` is read at every node; a
    ``KeyboardInterrupt`` stops the search with the incumbent and an honest bound (``info["interrupted"]``).
    """
    search = LeapsSearch(F, w, k, incumbent=incumbent, deadline=deadline, node_limit=node_limit,
                         rel_gap=rel_gap, abs_gap=abs_gap, progress=progress, groups=groups, compiled=compiled,
                         dominance=dominance)
    try:
        search.run()
    finally:
        if search.bar is not None:
            search.bar.close()
    return search.result()
