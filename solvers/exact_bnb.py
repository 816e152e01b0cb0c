"""Exact search over keep-sets for the CBS costs (private; used by ``miqp`` and ``relaxation``).

Pieces (the math is in :mod:`solvers.exact_core`):

* :func:`relax_node` — the continuous relaxation ``min φ(z)`` over a node's ``{z ∈ [0,1]ᵖ, fixings, Σz = k}``
  by Frank–Wolfe with line search. Every iterate's tangent is a *global* cut, and
  ``φ(z̄) + min_{z ∈ node} ∇φ(z̄)ᵀ(z − z̄)`` (a sort) is a proven bound for the node at every step,
  so the bound never depends on the relaxation being solved to optimality.
* :class:`CutPool` — all tangents seen so far; a node's pool bound is the best of them (one partial sort).
* :class:`BestFirst` / :func:`branch_and_bound` — best-first search with those bounds, swap-search
  incumbents and an exact leaf cost. Without a perspective split (``damping = 0`` with a singular ``F``) it
  falls back to the monotone bound ``cost(P) ≥ cost(pruned-so-far)`` (keeping more weights never costs more).
* Reduced-cost fixing: a tangent valid in a node's subtree, ``base + gᵀz``, bounds both children of every
  free weight at once (:func:`child_bounds`, a sort). A weight whose "keep" child is bounded at or above
  the cutoff is pruned in every set of the subtree that could still improve the incumbent (and vice
  versa), so it is fixed before branching — measured 5–90x fewer nodes on real blocks.
* Partition budgets (``groups=``): the linear steps become per-group sorts, leaves and children respect the
  per-group counts; every bound above stays valid, because it is a minimum over a superset.
* Re-entrant (:class:`BestFirst`): ``run(until=, nodes=)`` expands nodes for one time slice and returns
  with queue, cut pool and incumbent intact (the miqp portfolio alternates it with leaps-and-bounds);
  ``offer`` takes an incumbent found elsewhere, ``bound`` is the smallest open key at any moment.
* Clock and Ctrl-C: every phase checks the deadline (and whether the next oracle call still fits);
  ``KeyboardInterrupt`` inside a node returns the incumbent and the bound of the open nodes.
"""
from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from .base import Deadline
from .exact_core import affords, grouped_smallest, linear_min, local_search, note_interrupt, smallest

__all__ = ["CutPool", "relax_node", "branch_and_bound", "BestFirst", "SearchResult", "initial_incumbent", "root_bound",
           "top_keep"]


# Fix free weights by the node tangent's child bounds (reduced-cost fixing; measured in
# docs/benchmarks/miqp_capacity.md).
REDUCED_COST_FIXING = True
# Memory the cut pool may use: its capacity shrinks with p so that large blocks never hold 4000 dense cuts.
POOL_BYTES = 256 * 2 ** 20


class CutPool:
    """Tangent cuts ``φ(z) ≥ a_t + g_tᵀz`` (``a_t = φ(z_t) − g_tᵀz_t``), kept in growable arrays.

    ``ids``: group ids of a partition budget (bounds then minimise over per-group counts).
    """

    def __init__(self, p: int, capacity: int = 4000, ids: np.ndarray | None = None):
        self.p, self.capacity, self.ids = p, int(min(capacity, max(16, POOL_BYTES // (16 * p)))), ids
        self.a = np.empty(0)
        self.g = np.empty((0, p))
        self._buf_a: list[float] = []
        self._buf_g: list[np.ndarray] = []

    def add(self, value: float, grad: np.ndarray, z: np.ndarray) -> None:
        self._buf_a.append(value - float(grad @ z))
        self._buf_g.append(grad)

    def _flush(self) -> None:
        if self._buf_a:
            self.a = np.concatenate([self.a, self._buf_a])
            self.g = np.vstack([self.g, np.asarray(self._buf_g)])
            self._buf_a, self._buf_g = [], []
            if self.a.size > self.capacity:  # keep the newest cuts: they are the ones near the search
                self.a, self.g = self.a[-self.capacity:], self.g[-self.capacity:]

    def __len__(self) -> int:
        return self.a.size + len(self._buf_a)

    def bound(self, kept: np.ndarray, free: np.ndarray, n_more: int) -> float:
        self._flush()
        if self.a.size == 0:
            return -np.inf
        return float(np.max(self.a + linear_min(self.g, kept, free, n_more, self.ids)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        return self.a, self.g


def _lmo(grad: np.ndarray, kept: np.ndarray, free: np.ndarray, n_more, p: int, ids=None) -> np.ndarray:
    """The node vertex minimising ``gradᵀz`` (the Frank–Wolfe linear step); per group with ``ids``."""
    s = np.zeros(p)
    s[kept] = 1.0
    if ids is not None:
        s[free[grouped_smallest(grad[free], ids[free], n_more)[1][0]]] = 1.0
    elif n_more > 0:
        s[free[smallest(grad[free], n_more)]] = 1.0
    return s


def relax_node(oracle, kept, free, n_more, z0, *, pool: CutPool | None = None, cutoff: float = np.inf,
               max_iter: int = 40, rel_tol: float = 1e-6, line_evals: int = 6, deadline=None,
               ids: np.ndarray | None = None) -> tuple[float, np.ndarray, float]:
    """Frank–Wolfe on the node relaxation. Returns ``(best proven bound, last z, φ(z))``.

    Stops early once the bound reaches ``cutoff`` (the node can be pruned), the duality gap of the
    relaxation is below ``rel_tol`` or ``deadline`` expires — the bound is proven at every step. With group
    ids ``ids`` the node is ``{n_more[g]`` ones among the free weights of group ``g}``.
    """
    p = oracle.p
    z = z0.copy()
    value, grad = oracle.cut(z)
    best = -np.inf
    for _ in range(max_iter):
        if not affords(deadline, 2.0 * getattr(oracle, "seconds", 0.0)):
            break
        if pool is not None:
            pool.add(value, grad, z)
        s = _lmo(grad, kept, free, n_more, p, ids)
        direction = s - z
        slope = float(grad @ direction)          # ≤ 0: the Frank–Wolfe gap is −slope
        best = max(best, value + slope)
        if best >= cutoff or -slope <= rel_tol * max(abs(value), 1e-300):
            break
        # Line search on the convex 1-D function γ ↦ φ(z + γ·direction): secant on its derivative.
        lo, hi, d_lo = 0.0, 1.0, slope
        v1, g1 = oracle.cut(s)
        d_hi = float(g1 @ direction)
        if pool is not None:
            pool.add(v1, g1, s)
        if d_hi <= 0:  # the vertex itself is the best point on the segment
            z, value, grad = s, v1, g1
            continue
        gamma_v, gamma_g, gamma = v1, g1, 1.0
        for _ in range(line_evals):
            if not affords(deadline, getattr(oracle, "seconds", 0.0)):
                break
            gamma = lo - d_lo * (hi - lo) / (d_hi - d_lo)
            gamma = min(max(gamma, lo + 0.05 * (hi - lo)), hi - 0.05 * (hi - lo))
            gamma_v, gamma_g = oracle.cut(z + gamma * direction)
            d_mid = float(gamma_g @ direction)
            if d_mid < 0:
                lo, d_lo = gamma, d_mid
            else:
                hi, d_hi = gamma, d_mid
            if abs(d_mid) <= 1e-3 * -slope:
                break
        z = z + gamma * direction
        value, grad = gamma_v, gamma_g
    if pool is not None:
        pool.add(value, grad, z)
    s = _lmo(grad, kept, free, n_more, p, ids)
    best = max(best, value + float(grad @ (s - z)))
    return best, z, value


@dataclass
class SearchResult:
    keep: np.ndarray                # best binary keep-vector found
    value: float                    # its cost (oracle units, without the oracle's offset)
    bound: float                    # proven lower bound (same units)
    optimal: bool
    nodes: int = 0
    info: dict = field(default_factory=dict)


def top_keep(scores: np.ndarray, k: int, groups=None) -> np.ndarray:
    """Keep-vector of the ``k`` largest ``scores`` (per group: the ``keep_counts[g]`` largest of group ``g``)."""
    p = scores.size
    z = np.zeros(p, dtype=bool)
    if groups is None:
        z[smallest(-scores, k)] = True
        return z
    ids, keep = groups
    z[grouped_smallest(-scores, ids, keep)[1][0]] = True
    return z


def initial_incumbent(problem, oracle, scores: np.ndarray, *, max_evals: int = 3000, deadline=None,
                      groups=None, with_bound: bool = False):
    """Keep the ``k`` largest ``scores``, then improve by swaps until ``deadline``. Returns ``(keep, cost)``
    (``(keep, cost, bound)`` with ``with_bound``: the better of the proven tangent bounds at the start point,
    which costs no extra oracle call, and at "keep everything" (:func:`root_bound`, one call when it fits the
    clock) — a bound for callers whose clock runs out before the root).

    ``groups``: ``(ids, keep_counts)`` of a partition budget — the start keeps the best of every group and
    the swaps stay inside groups. A ``KeyboardInterrupt`` returns the best point so far.
    """
    p, k = problem.p, problem.n_keep
    z = top_keep(scores, k, groups)
    last = {}   # one oracle call gives both the cost and the gradient: the swap search asks for both at a z

    def cut(zz):
        if "z" not in last or not np.array_equal(last["z"], zz):
            last["z"], (last["v"], last["g"]) = zz.copy(), oracle.cut(zz.astype(float))
        return last["v"], last["g"]

    bound = -np.inf
    if with_bound:
        v, g = cut(z)
        if np.any(g):   # the monotone oracle has no tangents
            ids = None if groups is None else groups[0]
            n_more = k if groups is None else groups[1]
            bound = float(v + linear_min(g, np.zeros(0, dtype=np.intp), np.arange(p), n_more, ids)[0]
                          - g @ z.astype(float))
            # The root's own bound (tangent at "keep everything"), taken now while the clock is young, so a
            # search stopped before its first node still has it.
            if affords(deadline, 2.0 * getattr(oracle, "seconds", 0.0)):
                bound = max(bound, root_bound(oracle, k, groups=groups))
    z, value, _ = local_search(lambda zz: cut(zz)[0], z, lambda zz: cut(zz)[1], max_evals=max_evals,
                               deadline=deadline, ids=None if groups is None else groups[0])
    return (z, value, bound) if with_bound else (z, value)


def root_bound(oracle, k: int, *, groups=None, tangents: bool = True) -> float:
    """A proven bound over the whole problem from one oracle call at "keep everything" (``z = 1``).

    With tangents: ``φ(1) + min_{z feasible} ∇φ(1)ᵀ(z − 1)`` (dominates the monotone bound); without
    (monotone mode): ``φ(1)``, the cost of keeping every weight.
    """
    p = oracle.p
    ones = np.ones(p)
    value, grad = oracle.cut(ones)
    if not tangents:
        return float(value)
    ids = None if groups is None else groups[0]
    n_more = k if groups is None else groups[1]
    return float(value + linear_min(grad, np.zeros(0, dtype=np.intp), np.arange(p), n_more, ids)[0]
                 - grad.sum())


class _Groups:
    """Per-group bookkeeping of a partition budget inside the best-first search (``None``: total budget)."""

    def __init__(self, groups, k: int):
        self.ids = None if groups is None else groups[0]
        self.keep = None if groups is None else groups[1]
        self.k = k

    def n_more(self, kept: np.ndarray):
        if self.ids is None:
            return self.k - kept.size
        return self.keep - np.bincount(self.ids[kept], minlength=self.keep.size)

    def free_counts(self, free: np.ndarray):
        if self.ids is None:
            return free.size
        return np.bincount(self.ids[free], minlength=self.keep.size)

    def feasible(self, free: np.ndarray, n_more) -> bool:
        return bool(np.all(n_more >= 0) and np.all(n_more <= self.free_counts(free)))

    def leaf(self, free: np.ndarray, n_more) -> np.ndarray | None:
        """At a leaf (every group must keep none or all of its free weights): the free weights to keep."""
        fc = self.free_counts(free)
        if self.ids is None:
            if n_more == 0:
                return free[:0]
            return free if n_more == fc else None
        if np.all((n_more == 0) | (n_more == fc)):
            return free[n_more[self.ids[free]] > 0]
        return None


class BestFirst:
    """A re-entrant best-first search (:func:`branch_and_bound` runs one to the end; arguments as there).

    ``run(until=, nodes=)`` expands nodes until the queue is settled, the global ``deadline`` /
    ``node_limit`` stops it, or the slice ends (``until``: a ``time.perf_counter()`` time, checked between
    nodes; ``nodes``: a number of nodes); a later ``run`` continues with the same queue, cut pool and
    incumbent. ``offer`` shares an incumbent found elsewhere; ``bound()`` is the proven bound of everything
    still open (the smallest key in the queue, or the incumbent's value once settled).
    """

    def __init__(self, problem, oracle, incumbent: np.ndarray, incumbent_value: float, *,
                 deadline: Deadline, rel_gap: float = 1e-9, abs_gap: float = 0.0,
                 progress: bool = False, node_limit: int | None = None,
                 pool: CutPool | None = None, fw_iter: int = 5, line_evals: int = 2,
                 tangents: bool = True, reducer=None, groups=None, root_key: float = -np.inf):
        p, k = problem.p, problem.n_keep
        self.p, self.k, self.oracle, self.deadline = p, k, oracle, deadline
        self.rel_gap, self.abs_gap, self.node_limit = rel_gap, abs_gap, node_limit
        self.fw_iter, self.line_evals, self.tangents, self.reducer = fw_iter, line_evals, tangents, reducer
        self.grp = grp = _Groups(groups, k)
        self.pool = pool = pool if pool is not None else CutPool(p, ids=grp.ids)
        pool.ids = grp.ids
        self.best_z, self.best_v = incumbent.astype(bool).copy(), float(incumbent_value)
        self.counter = itertools.count()
        self.interrupted = False
        self.nodes = 0
        self.done = False       # queue settled (optimal) or stopped for good (clock, node limit, Ctrl-C)
        self.stopped = False    # stopped with nodes still open
        # state: 1 = fixed kept, 0 = fixed pruned, -1 = free.
        root = np.full(p, -1, dtype=np.int8)
        z_root = _feasible_start(np.full(p, k / p), np.zeros(0, dtype=np.intp), np.arange(p),
                                 grp.n_more(root[:0]), p, grp.ids)
        # Oracle units are ≥ 0 for the update cost (φ is a minimum of a PSD quadratic plus perspective terms).
        floor = 0.0 if getattr(oracle, "kind", None) == "update" else -np.inf
        root_key = max(floor, root_key)
        try:
            if root_key <= floor and affords(deadline, getattr(oracle, "seconds", 0.0)):
                root_key = max(root_key, root_bound(oracle, k, groups=groups, tangents=tangents))
        except KeyboardInterrupt:
            note_interrupt(deadline)
            self.interrupted = self.stopped = self.done = True
        self.heap = [(min(root_key, self.best_v), next(self.counter), root, z_root)]
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(desc="miqp branch-and-bound", unit="node")

    def tol(self) -> float:
        return max(self.abs_gap, self.rel_gap * abs(self.best_v))

    def offer(self, keep: np.ndarray, value: float) -> None:
        """Share an incumbent found elsewhere (``value`` in oracle units, offset excluded)."""
        if value < self.best_v:
            self.best_z, self.best_v = np.asarray(keep, dtype=bool).copy(), float(value)

    def bound(self) -> float:
        """The proven lower bound now: every open node's key bounds its subtree; closed ones are ≥ ``best_v``."""
        return min([self.best_v] + [b for b, *_ in self.heap]) if self.heap else self.best_v

    def _node_sets(self, state):
        kept = np.flatnonzero(state == 1)
        free = np.flatnonzero(state == -1)
        return kept, free, self.grp.n_more(kept)

    def run(self, until: float | None = None, nodes: int | None = None) -> bool:
        """Expand nodes (class doc); returns whether the search has ended for good."""
        if self.done:
            return True
        heap, counter, deadline = self.heap, self.counter, self.deadline
        exact = lambda zz: self.oracle.cut(zz.astype(float))[0]  # noqa: E731
        stop_nodes = None if nodes is None else self.nodes + int(nodes)
        first = self.nodes
        while heap:
            bound, _, state, z_warm = heapq.heappop(heap)
            if bound >= self.best_v - self.tol():
                heap.clear()
                break
            if deadline.expired() or (self.node_limit is not None and self.nodes >= self.node_limit):
                heapq.heappush(heap, (bound, next(counter), state, z_warm))
                self.stopped = self.done = True
                break
            # A slice always expands at least one node (so slices shorter than a node still make progress).
            if self.nodes > first and ((until is not None and time.perf_counter() >= until)
                                       or (stop_nodes is not None and self.nodes >= stop_nodes)):
                heapq.heappush(heap, (bound, next(counter), state, z_warm))   # the slice is over: pause
                return False
            self.nodes += 1
            nb = bound
            try:
                nb, requeue = _expand_node(self.oracle, self.pool, self.reducer, self.grp, state, z_warm, bound,
                                           self._node_sets, exact, self.best_v - self.tol(), self.tangents,
                                           self.fw_iter, self.line_evals, deadline, heap, counter, self.p)
            except KeyboardInterrupt:
                note_interrupt(deadline)
                self.interrupted, requeue = True, True
            else:
                if isinstance(nb, tuple):   # a new incumbent: (bound, z, value)
                    nb, zr, value = nb
                    if value < self.best_v:
                        self.best_z, self.best_v = zr, value
            if requeue:   # cut short by the clock or Ctrl-C: the node goes back with the bound it reached
                heapq.heappush(heap, (max(bound, nb) if np.isfinite(nb) else bound, next(counter), state, z_warm))
                self.stopped = self.done = True
                break
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(best=f"{self.best_v:.4g}", bound=f"{nb:.4g}", open=len(heap), refresh=False)
        self.done = True
        return True

    def result(self) -> SearchResult:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        lower = self.bound()
        optimal = self.done and not self.stopped and lower >= self.best_v - self.tol()
        return SearchResult(self.best_z, self.best_v, lower, optimal, self.nodes,
                            {"cuts": len(self.pool), "interrupted": self.interrupted})


def branch_and_bound(problem, oracle, incumbent: np.ndarray, incumbent_value: float, *,
                     deadline: Deadline, rel_gap: float = 1e-9, abs_gap: float = 0.0,
                     progress: bool = False, node_limit: int | None = None,
                     pool: CutPool | None = None, fw_iter: int = 5, line_evals: int = 2,
                     tangents: bool = True, reducer=None, groups=None,
                     root_key: float = -np.inf) -> SearchResult:
    """Best-first branch-and-bound over keep-sets with perspective / shifted-QP bounds (module doc).

    ``tangents=False``: the oracle's gradients are not global under-estimators (monotone mode) — the only
    bound used is the oracle's value at "keep every free weight".
    ``reducer``: a :class:`solvers.exact_node.NodeReducer` — node relaxations then run on the node's reduced
    problem with its own eigenvalue shift (much tighter deep in the tree) instead of the global ``φ``.
    ``groups``: ``(ids, keep_counts)`` of a partition budget: every bound, rounding and branch respects the
    per-group counts (linear steps are per-group sorts; infeasible children are never queued).
    ``root_key``: a proven bound the caller already has (oracle units), used with the root's own.

    The root is keyed by :func:`root_bound`, so a search stopped before its first node still returns a
    finite proven bound. ``deadline`` is checked at every node and inside node relaxations (a node cut short
    goes back to the queue with the bound it had reached); a ``KeyboardInterrupt`` does the same and sets
    ``info["interrupted"]`` (and marks a :class:`~solvers.exact_core.Clock` deadline).
    """
    search = BestFirst(problem, oracle, incumbent, incumbent_value, deadline=deadline, rel_gap=rel_gap,
                       abs_gap=abs_gap, progress=progress, node_limit=node_limit, pool=pool, fw_iter=fw_iter,
                       line_evals=line_evals, tangents=tangents, reducer=reducer, groups=groups,
                       root_key=root_key)
    search.run()
    return search.result()


def _expand_node(oracle, pool, reducer, grp, state, z_warm, bound, node_sets, exact, cutoff, tangents,
                 fw_iter, line_evals, deadline, heap, counter, p):
    """Bound, round and branch one node. Returns ``(nb, requeue)``; ``nb`` is ``(nb, z, value)`` when the
    node found a better keep-set than the cutoff's incumbent. ``requeue``: the clock cut the node short."""
    ids = grp.ids
    kept, free, n_more = node_sets(state)
    leaf = grp.leaf(free, n_more)
    if leaf is not None:  # the node holds one keep-set
        z = np.zeros(p, dtype=bool)
        z[kept] = True
        z[leaf] = True
        value = exact(z)
        return ((bound, z, value) if value < np.inf else bound), False
    if not tangents:
        nb = oracle.cut((state != 0).astype(float))[0]
        if nb >= cutoff:
            return nb, False
        j = int(free[0])
        for val in (1, 0):
            child = state.copy()
            child[j] = val
            ck, cf, cm = node_sets(child)
            if grp.feasible(cf, cm):
                heapq.heappush(heap, (nb, next(counter), child, z_warm))
        return nb, False
    nb = max(bound, pool.bound(kept, free, n_more))
    if nb >= cutoff:
        return nb, False
    if not affords(deadline, 2.0 * oracle.seconds):   # the next oracle calls would overrun the clock
        return nb, True
    # The tangent at "keep every free weight" dominates the monotone bound cost(K ∪ U).
    z_mono = (state != 0).astype(float)
    vm, gm = oracle.cut(z_mono)
    pool.add(vm, gm, z_mono)
    nb = max(nb, vm + float(linear_min(gm, kept, free, n_more, ids)[0] - gm @ z_mono))
    if nb >= cutoff:
        return nb, False
    child_cut = None
    node = None
    if reducer is not None and reducer.affordable(deadline):   # its eigendecompositions cannot be interrupted
        node = reducer.reduce(kept, np.flatnonzero(state == 0), free)
    ids_u = None if ids is None else ids[free]
    if node is not None and node.oracle is not None:
        # The node's own perspective relaxation (module exact_node): bound = c0 + its FW bound.
        none = np.zeros(0, dtype=np.intp)
        every = np.arange(free.size)
        zu0 = _feasible_start(z_warm[free], none, every, n_more, free.size, ids_u)
        rb, zu, _ = relax_node(node.oracle, none, every, n_more, zu0, cutoff=cutoff - node.c0,
                               max_iter=fw_iter, line_evals=line_evals, deadline=deadline, ids=ids_u)
        nb = max(nb, node.c0 + rb)
        if nb >= cutoff:
            return nb, False
        z = np.zeros(p)
        z[kept] = 1.0
        z[free] = zu
        vu, gu = node.oracle.cut(zu)
        child_cut = (node.c0 + vu - float(gu @ zu), gu)
    else:
        rb, z, _ = relax_node(oracle, kept, free, n_more, z_warm, pool=pool, cutoff=cutoff,
                              max_iter=fw_iter, line_evals=line_evals, deadline=deadline, ids=ids)
        nb = max(nb, rb)
        if nb >= cutoff:
            return nb, False
        if REDUCED_COST_FIXING and affords(deadline, oracle.seconds):
            # The global tangent at the relaxation's point, restricted to the node, for child bounds and
            # reduced-cost fixing (the reducer's node tangent plays this part on the other path).
            vz, gz = oracle.cut(z)
            child_cut = (vz - float(gz @ z) + float(gz[kept].sum()), gz[free])
    if deadline.expired():
        return nb, True
    # Heuristic: round the relaxation (largest z among the free, per group) and polish by swaps.
    zr = np.zeros(p, dtype=bool)
    zr[kept] = True
    if ids is None:
        zr[free[smallest(-z[free], n_more)]] = True
    else:
        zr[free[grouped_smallest(-z[free], ids_u, n_more)[1][0]]] = True
    value = exact(zr)
    pool.add(*oracle.cut(zr.astype(float)), zr.astype(float))
    found = None
    if value < cutoff:
        zr, value, _ = local_search(exact, zr, max_evals=200, deadline=deadline, ids=ids)
        found = (zr, value)
        cutoff = min(cutoff, value)  # the caller's tolerance is tiny; the new incumbent prunes at once
        if nb >= cutoff:
            return (nb, *found), False
    # Branch on the most fractional free variable; with the node's tangent both children get their own
    # bound (one sort for all candidates), which prunes many of them before they are pushed.
    frac = z[free]
    if child_cut is not None:
        base, gu = child_cut
        b_keep, b_prune = (child_bounds(base, gu, n_more) if ids is None
                           else child_bounds_grouped(base, gu, n_more, ids_u))
        if REDUCED_COST_FIXING:
            # Reduced-cost fixing: the node's tangent bounds its whole subtree, so a weight whose "keep" child
            # is bounded above the cutoff is pruned in every improving set of the subtree (and vice versa).
            to_prune, to_keep = b_keep >= cutoff, b_prune >= cutoff
            if np.any(to_prune & to_keep):
                return max(nb, float(np.max(np.minimum(b_keep, b_prune)))), False
            if np.any(to_prune | to_keep):
                state = state.copy()
                state[free[to_prune]] = 0
                state[free[to_keep]] = 1
                kept, free_new, n_more = node_sets(state)
                if not grp.feasible(free_new, n_more):
                    return max(nb, cutoff), False
                rest = ~(to_prune | to_keep)
                frac, b_keep, b_prune, free = frac[rest], b_keep[rest], b_prune[rest], free_new
                z = z.copy()
                z[state == 0], z[state == 1] = 0.0, 1.0
                if free.size == 0 or grp.leaf(free, n_more) is not None:
                    heapq.heappush(heap, (nb, next(counter), state, z))   # one keep-set left: a leaf
                    return ((nb, *found) if found is not None else nb), False
    # Most fractional. (Measured: choosing j by the tangent's child bounds — max-min, max or product —
    # grew the trees 1.1–2x on generated blocks, so those bounds only prune children.)
    jj = int(np.argmin(np.abs(frac - 0.5)))
    j = int(free[jj])
    for val in (1, 0):
        child = state.copy()
        child[j] = val
        zc = z.copy()
        zc[j] = float(val)
        ck, cf, cm = node_sets(child)
        if not grp.feasible(cf, cm):
            continue
        cb = nb
        if child_cut is not None:  # the node's tangent is valid in its subtree
            cb = max(cb, float(b_keep[jj] if val else b_prune[jj]))
            if cb >= cutoff:
                continue
        zc = _feasible_start(zc, ck, cf, cm, p, ids)
        heapq.heappush(heap, (cb, next(counter), child, zc))
    return ((nb, *found) if found is not None else nb), False


def child_bounds(base: float, g: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of both children of every free variable from one tangent ``base + gᵀz`` over ``{Σz = n}``.

    ``keep[j] = base + g_j + (sum of the n−1 smallest g without j)``,
    ``prune[j] = base + (sum of the n smallest g without j)`` — O(u log u) for all j together.
    """
    u = g.size
    order = np.argsort(g, kind="stable")
    rank = np.empty(u, dtype=np.intp)
    rank[order] = np.arange(u)
    csum = np.concatenate([[0.0], np.cumsum(g[order])])
    s_nm1 = csum[max(n - 1, 0)]
    s_n = csum[min(n, u)]
    s_np1 = csum[min(n + 1, u)]
    keep = np.where(rank >= n - 1, s_nm1, s_n - g) + g if n >= 1 else np.full(u, np.inf)
    prune = np.where(rank >= n, s_n, s_np1 - g) if n <= u - 1 else np.full(u, np.inf)
    return base + keep, base + prune


def child_bounds_grouped(base: float, g: np.ndarray, n_more: np.ndarray,
                         ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`child_bounds` over ``{n_more[h]`` ones in every group ``h}``: a variable's children change only
    its own group's term; the other groups contribute their unconstrained per-group minimum."""
    u = g.size
    keep, prune = np.full(u, np.inf), np.full(u, np.inf)
    mins = np.zeros(n_more.size)
    members = []
    for h in range(n_more.size):
        idx = np.flatnonzero(ids == h)
        members.append(idx)
        if idx.size:
            mins[h] = np.sort(g[idx])[:n_more[h]].sum()
    total = float(mins.sum())
    for h, idx in enumerate(members):
        if idx.size:
            bk, bp = child_bounds(total - mins[h], g[idx], int(n_more[h]))
            keep[idx], prune[idx] = bk, bp
    return base + keep, base + prune


def _feasible_start(z: np.ndarray, kept, free, n_more, p, ids=None) -> np.ndarray:
    """Project a warm start onto the node: fixings exact, free entries rescaled to sum to ``n_more``
    (per group with ``ids``)."""
    out = np.zeros(p)
    out[kept] = 1.0
    if ids is None:
        if n_more and free.size:
            out[free] = _rescale(z[free], n_more)
        return out
    gid = ids[free]
    for h in np.flatnonzero(np.asarray(n_more) > 0):
        sel = free[gid == h]
        if sel.size:
            out[sel] = _rescale(z[sel], int(n_more[h]))
    return out


def _rescale(f: np.ndarray, n: int) -> np.ndarray:
    """Entries in [0, 1] summing to ``n`` close to ``f`` (a few passes of capped rescaling)."""
    f = np.clip(f, 1e-9, 1.0)
    for _ in range(20):
        f = np.minimum(f * (n / f.sum()), 1.0)
        if abs(f.sum() - n) < 1e-9:
            break
    if abs(f.sum() - n) >= 1e-9:
        f = np.full(f.size, n / f.size)
    return f
