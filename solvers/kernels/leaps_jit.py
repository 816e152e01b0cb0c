"""Compiled node loop of leaps-and-bounds (numba; private kernel of :mod:`solvers.exact_leaps`).

The same depth-first search as :func:`solvers.exact_leaps._expand` — candidates ordered by greedy deletion,
suffix bounds ``gain(K) + c_Vᵀ S_VV⁻¹ c_V`` from one Cholesky factorisation of the reversed ordered Schur
complement, children by a rank-one update, the last two levels in closed form, plus the duplicate-group rule
(:mod:`solvers.exact_leaps` module doc) — with the recursion
replaced by an explicit stack of preallocated per-level arrays, so that a node costs its flops and not
~20 numpy calls (measured in ``docs/benchmarks/miqp_capacity.md``). Total budgets only; partition budgets
stay on the Python search.

State (all numpy arrays, owned by :class:`solvers.exact_leaps.LeapsSearch`; ``L = k − 2`` levels):

* ``S_ws (L, p, p)``, ``c_ws (L, p)``, ``idx_ws (L, p)``: the ordered Schur complement, conditioned
  target and weight indices of the node on each level; ``bnd_ws (L, p)``: its children's suffix bounds;
* ``H_ws (L, p, p)``, ``hpos (L)``: each level's inverse of its ordered ``S`` on positions ``hpos … n−1``
  (−1: not kept). A child's inverse is a block of it (keeping position ``t``, the inverse of the Schur
  complement on the rest is the rest's block of the inverse on ``t … n−1``), and dropping a skipped position
  is a rank-one downdate — so a node's greedy deletion order costs O(n²) instead of a fresh O(n³) inverse
  (measured: half the time of the search). Only the order depends on it; a drifted inverse is recomputed;
* ``ints``: ``[nodes, depth, n_0 … n_{L−1}, t_0 … t_{L−1}, kept_0 … kept_{L−1}]`` — ``t_l`` is the next
  child of level ``l`` not yet started (a paused search resumes there), ``kept_l`` the weight level ``l``
  added for the level below;
* ``reals``: ``[best_gain, threshold, pruned_max, root_ub, gain_0 … gain_{L−1}]``;
* ``best_keep (k,)``: the incumbent's indices;
* scratch, overwritten at every node: ``Sbuf (p, p)``, ``cbuf (p)``, ``ibuf (p, int)`` (an unordered child),
  ``Lbuf (p, p)``, ``ybuf (p)`` (the factorisations; a leaf's conditioned diagonal), ``key (p)`` (a leaf's
  pivot column), ``obuf (p, int)`` (the order), ``Hbuf (p, p)`` (the inverse the greedy deletion downdates),
  ``rbuf (p, int)`` (removed flags);
* duplicate groups (:func:`duplicate_state`; no groups: empty arrays, the checks cost nothing): each
  weight's group and rank, the groups' full masks, per level the kept and pruned members as bit masks by
  rank (the pruned mask grows as the level's loop skips candidates), scratch for a child's masks and its
  forced-pruned members, and ``mark (p, int)`` (a leaf's skipped candidates; a child's surviving positions).

:func:`run_nodes` advances until the search ends or ``node_budget`` nodes have been counted (then it stops
*before* a child, the same pause point as the Python search); the caller reads the clock between calls.
Return codes: ``DONE``, ``PAUSED``, ``NUMERICAL`` (a pivot was not positive: the caller falls back).
"""
from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["AVAILABLE", "DONE", "PAUSED", "NUMERICAL", "compiled", "workspace_bytes"]

# numba is a dependency, but a platform without its wheels keeps the (slower) Python search. It is imported
# (and the loop compiled, or loaded from numba's on-disk cache) only when a search first needs it, so that
# importing cbs_opt stays fast.
AVAILABLE = importlib.util.find_spec("numba") is not None
DONE, PAUSED, NUMERICAL = 0, 1, 2

# reals[] slots
BEST, THRESHOLD, PRUNED_MAX, ROOT_UB, GAIN0 = 0, 1, 2, 3, 4
# ints[] slots (then three blocks of L entries: n, t, kept)
NODES, DEPTH, LEVELS0 = 0, 1, 2


def workspace(p: int, k: int) -> tuple:
    """A search's arrays for a block of ``p`` weights keeping ``k`` (module doc; ``workspace_bytes`` sizes
    them): ``((S_ws, c_ws, idx_ws, bnd_ws), ints, reals, bufs)`` with ``bufs = (Sbuf, cbuf, ibuf, Lbuf, ybuf,
    key, obuf, Hbuf, rbuf, H_ws, hpos)`` in :func:`run_nodes`' order; ``reals`` starts with no pruned bound."""
    levels = max(k - 2, 1)
    per_level = (np.empty((levels, p, p)), np.empty((levels, p)), np.empty((levels, p), dtype=np.int64),
                 np.empty((levels, p)))
    ints = np.zeros(LEVELS0 + 3 * levels, dtype=np.int64)
    reals = np.zeros(GAIN0 + levels)
    reals[PRUNED_MAX] = -np.inf
    bufs = (np.empty((p, p)), np.empty(p), np.empty(p, dtype=np.int64), np.empty((p, p)), np.empty(p),
            np.empty(p), np.empty(p, dtype=np.int64), np.empty((p, p)), np.empty(p, dtype=np.int64),
            np.empty((levels, p, p)), np.zeros(levels, dtype=np.int64))
    return per_level, ints, reals, bufs


def root_buffers(bufs: tuple) -> tuple:
    """The part of :func:`workspace`'s ``bufs`` that :func:`enter_root` takes."""
    Sbuf, cbuf, ibuf, Lbuf, ybuf, key, obuf, Hbuf, rbuf, H_ws, hpos = bufs
    return Lbuf, ybuf, obuf, Hbuf, rbuf, H_ws, hpos


def workspace_bytes(p: int, k: int) -> int:
    """Bytes of the per-level workspace for a block of ``p`` weights keeping ``k``."""
    levels = max(k - 2, 1)
    return 8 * (2 * levels * p * p + 4 * levels * p + 4 * p * p)


_COMPILED: dict | None = None


def compiled() -> dict | None:
    """The compiled kernels by name (``enter_root``, ``run_nodes``), compiled on first use; ``None`` (after
    one warning, and ``AVAILABLE`` turned off) where numba is installed but cannot compile them here — the
    searches then keep the Python loop instead of failing.

    The helpers are rebound to their compiled versions in this module's globals first: numba resolves the
    callees of ``run_nodes`` by global name when it compiles it."""
    global _COMPILED, AVAILABLE
    if _COMPILED is None and AVAILABLE:
        names = ("_cholesky_into", "_suffix_bounds", "_inverse_into", "_greedy_deletions", "_order_node",
                 "_drop_leading", "_refresh_threshold", "_offer", "_low_bit", "_high_bit", "_bit_count",
                 "_dominance_allows", "enter_root", "run_nodes")
        plain = {name: globals()[name] for name in names}
        try:
            _COMPILED = _compile(plain)
        except Exception as exc:  # an unsupported numpy/numba pair, no compiler back end, ...
            globals().update(plain)
            AVAILABLE = False
            import warnings
            warnings.warn(f"the compiled leaps-and-bounds loop is unavailable ({type(exc).__name__}: {exc}); "
                          "the exact search uses its Python loop (slower, same answers)", RuntimeWarning,
                          stacklevel=2)
    return _COMPILED


def _compile(plain: dict) -> dict:
    import numba
    jit = numba.njit(cache=True, nogil=True)
    for name, fn in plain.items():
        globals()[name] = jit(fn)
    # Compile now (numba compiles lazily, at the first call), so that a failure shows here and not mid-search:
    # once without and once with a duplicate group (the dominance branches).
    p, k = 4, 4
    S = np.eye(p) * 2.0 + 0.5
    one_pair = duplicate_state(np.array([0, 0, -1, -1]), np.array([0, 1, 0, 0]), k - 2, p)
    for dom in (no_duplicates(p, k - 2), one_pair):
        ws, ints, reals, bufs = workspace(p, k)
        enter_root(S, np.ones(p), k, *ws, ints, reals, *root_buffers(bufs))
        run_nodes(k, *ws, ints, reals, np.zeros(k, dtype=np.int64), 1.0, 0.0, 0.0, 0.0, 1, *bufs, *dom)
    return {"enter_root": enter_root, "run_nodes": run_nodes}


# Largest duplicate group one bit mask holds (larger groups are split; any part of a group is a group).
GROUP_BITS = 62


def duplicate_state(group_of, rank_of, levels: int, p: int) -> tuple:
    """The kernel's dominance arrays for duplicate groups (``group_of[j]``: group of weight ``j`` or −1;
    ``rank_of[j]``: its rank in the group, < ``GROUP_BITS``): ``(group_of, rank_of, full masks, kept masks
    per level, pruned masks per level, scratch (3, groups), mark (p,))``."""
    group_of = np.ascontiguousarray(group_of, dtype=np.int64)
    rank_of = np.ascontiguousarray(rank_of, dtype=np.int64)
    ng = int(group_of.max()) + 1 if group_of.size and group_of.max() >= 0 else 0
    full = np.zeros(ng, dtype=np.int64)
    for g in range(ng):
        size = int(np.count_nonzero(group_of == g))
        full[g] = (1 << size) - 1
    levels = max(levels, 1)
    return (group_of, rank_of, full, np.zeros((levels, ng), dtype=np.int64),
            np.zeros((levels, ng), dtype=np.int64), np.zeros((3, ng), dtype=np.int64),
            np.zeros(p, dtype=np.int64))


def no_duplicates(p: int, levels: int) -> tuple:
    """Dominance arrays for a search without duplicate groups (the checks cost nothing)."""
    return duplicate_state(np.full(p, -1), np.zeros(p), levels, p)


def _cholesky_into(S, n, L, reverse):
    """``L Lᵀ = S[:n, :n]`` (``reverse``: of ``S[:n, :n]`` with rows and columns in reverse order, row ``i`` of
    ``L`` ↔ position ``n−1−i``). False when a pivot is not positive."""
    for i in range(n):
        ri = n - 1 - i if reverse else i
        for j in range(i + 1):
            rj = n - 1 - j if reverse else j
            s = S[ri, rj]
            for m in range(j):
                s -= L[i, m] * L[j, m]
            if i == j:
                if not s > 0.0:
                    return False
                L[i, i] = np.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
    return True


def _inverse_into(S, n, L, H):
    """``H = S[:n, :n]⁻¹`` through its Cholesky factor ``S = L Lᵀ``; ``L`` is overwritten with ``M = L⁻ᵀ``
    (upper triangular). Every inner loop runs along rows (contiguous). False when a pivot is not positive."""
    if not _cholesky_into(S, n, L, False):
        return False
    # Row j of M = L⁻ᵀ solves L mᵀ = e_j (forward substitution; m_i = 0 for i < j). Rows are produced from the
    # last up, so that L's lower triangle (read) and M's upper one (written) share the array: row j of M reads
    # L's rows i > j below the diagonal and lands above it; diagonals are replaced by their reciprocals.
    for j in range(n - 1, -1, -1):
        djj = 1.0 / L[j, j]
        for i in range(j + 1, n):
            s = L[i, j] * djj
            for m in range(j + 1, i):
                s += L[i, m] * L[j, m]
            L[j, i] = -s * L[i, i]          # L[i, i] (i > j) already holds the reciprocal 1 / L_ii
        L[j, j] = djj
    # H = M Mᵀ: H[a, b] = Σ_{i ≥ max(a, b)} M[a, i] M[b, i]
    for a in range(n):
        for b in range(a + 1):
            s = 0.0
            for i in range(a, n):
                s += L[a, i] * L[b, i]
            H[a, b] = s
            H[b, a] = s
    return True


def _greedy_deletions(H, c, n, gain, threshold, last, x, removed, order):
    """The greedy deletion order of a node's candidates (module doc of :mod:`solvers.exact_leaps`), on ``H``
    (``S⁻¹``, destroyed). With ``x = H c`` over the rest ``V``, removing ``j`` lowers ``c_Vᵀ S_VV⁻¹ c_V`` by
    ``x_j² / H_jj`` and downdates ``H ← H − H_{:j} H_{j:} / H_jj``, ``x ← x − H_{:j} x_j / H_jj``. The steps stop
    once the gain left is at or below ``threshold`` (the loop over children ends there: the threshold only
    rises) or past position ``last``; the rest follow in index order. False when ``H`` is not positive (or no
    score is finite)."""
    tot = 0.0
    for i in range(n):
        s = 0.0
        for m in range(n):
            s += H[i, m] * c[m]
        x[i] = s
        tot += c[i] * s
        removed[i] = 0
    if not np.isfinite(tot):
        return False
    pos = 0
    while pos <= last and gain + tot > threshold:
        best = -1.0
        j = -1
        for i in range(n):
            if removed[i] == 0:
                h = H[i, i]
                if not h > 0.0:
                    return False
                v = x[i] * x[i] / h
                if v > best:
                    best = v
                    j = i
        if j < 0:               # no finite score: the inverse has drifted
            return False
        order[pos] = j
        removed[j] = 1
        pos += 1
        tot -= best
        hj = H[j, j]
        xj = x[j] / hj
        for i in range(n):
            if removed[i] == 0:
                x[i] -= H[i, j] * xj
        for i in range(n):
            if removed[i] == 0:
                f = H[i, j] / hj
                for m in range(n):
                    H[i, m] -= f * H[j, m]
    for i in range(n):
        if removed[i] == 0:
            order[pos] = i
            pos += 1
    return True


def _order_node(src_S, src_c, src_idx, n, gain, threshold, last, S_out, c_out, idx_out, bnd_out, H_out, known,
                L, Hw, x, removed, order):
    """Set up a node: its candidates in greedy deletion order, its children's suffix bounds, and its inverse.

    ``H_out[:n, :n]`` holds ``src_S⁻¹`` when ``known`` (handed down by the parent: the inverse of a Schur
    complement is a block of the parent's inverse), else it is computed here; on return it holds the inverse
    in the new order. The inverse only chooses the order — the bounds come from the Cholesky factor of the
    ordered matrix (backward stable: an inverse loses cond(S)·ε, the factor √cond(S)·ε), and a handed-down
    inverse that has drifted to a non-positive pivot is recomputed. False when ``src_S`` is not numerically
    positive definite."""
    for _ in range(2):
        if not known:
            if not _inverse_into(src_S, n, L, H_out):
                return False
        for i in range(n):
            for m in range(n):
                Hw[i, m] = H_out[i, m]
        if _greedy_deletions(Hw, src_c, n, gain, threshold, last, x, removed, order):
            break
        if not known:
            return False
        known = False
    for i in range(n):
        oi = order[i]
        c_out[i] = src_c[oi]
        idx_out[i] = src_idx[oi]
        for m in range(n):
            S_out[i, m] = src_S[oi, order[m]]
            Hw[i, m] = H_out[oi, order[m]]
    for i in range(n):
        for m in range(n):
            H_out[i, m] = Hw[i, m]
    return _suffix_bounds(S_out, c_out, n, gain, L, x, bnd_out)


def _drop_leading(H, first, stop, n):
    """``H`` is the inverse of a node's ordered ``S`` on positions ``first … n−1``; make it the inverse on
    ``stop … n−1`` (a Schur complement of ``H`` per dropped position). False on a non-positive pivot (drift)."""
    for r in range(first, stop):
        piv = H[r, r]
        if not piv > 0.0:
            return False
        for i in range(r + 1, n):
            f = H[i, r] / piv
            if f != 0.0:
                for m in range(r + 1, n):
                    H[i, m] -= f * H[r, m]
    return True


def _suffix_bounds(S, c, n, gain, L, y, out):
    """``out[t] = gain + c_Vᵀ S_VV⁻¹ c_V`` for every suffix ``V = {t … n−1}`` of the (ordered) ``S``.

    Cholesky factorisation of the reversed matrix (row ``i`` of ``L`` ↔ position ``n−1−i``), then a
    forward solve; the suffix values are cumulative sums of ``y²``. False when a pivot is not positive."""
    if not _cholesky_into(S, n, L, True):
        return False
    acc = 0.0
    for i in range(n):
        s = c[n - 1 - i]
        for m in range(i):
            s -= L[i, m] * y[m]
        y[i] = s / L[i, i]
        acc += y[i] * y[i]
        out[n - 1 - i] = gain + acc
    return True


def _refresh_threshold(reals, total, rel_gap, abs_gap, allowance):
    best = reals[BEST]
    cost = 0.5 * (total - best)
    tol = 2.0 * max(abs_gap, rel_gap * abs(cost))
    reals[THRESHOLD] = best + tol - allowance


def _offer(reals, ints, best_keep, depth, gain, last_a, last_b, total, rel_gap, abs_gap, allowance):
    """A leaf's keep-set: the levels' kept weights, then ``last_a`` (and ``last_b`` when ≥ 0)."""
    if gain <= reals[BEST]:
        return
    L = (ints.size - LEVELS0) // 3
    kept = ints[LEVELS0 + 2 * L:]
    for l in range(depth):
        best_keep[l] = kept[l]
    best_keep[depth] = last_a
    if last_b >= 0:
        best_keep[depth + 1] = last_b
    reals[BEST] = gain
    _refresh_threshold(reals, total, rel_gap, abs_gap, allowance)


def enter_root(F, c, k, S_ws, c_ws, idx_ws, bnd_ws, ints, reals, Lbuf, ybuf, obuf, Hbuf, rbuf, H_ws, hpos):
    """Set up level 0 from the full ``F`` and ``c`` (one node counted). False on a non-positive pivot."""
    p = c.size
    L = (ints.size - LEVELS0) // 3
    idx = np.arange(p)
    if not _order_node(F, c, idx, p, 0.0, reals[THRESHOLD], p - k, S_ws[0], c_ws[0], idx_ws[0], bnd_ws[0],
                       H_ws[0], False, Lbuf, Hbuf, ybuf, rbuf, obuf):
        return False
    hpos[0] = 0
    ints[NODES] += 1
    ints[DEPTH] = 1
    ints[LEVELS0] = p              # n_0
    ints[LEVELS0 + L] = 0          # t_0
    reals[GAIN0] = 0.0
    return True


def _low_bit(x):
    """Index of the lowest set bit of ``x > 0``."""
    i = 0
    while (x >> i) & 1 == 0:
        i += 1
    return i


def _high_bit(x):
    """Index of the highest set bit of ``x > 0``."""
    i = 0
    while x >> (i + 1) != 0:
        i += 1
    return i


def _bit_count(x):
    n = 0
    while x != 0:
        x &= x - 1
        n += 1
    return n


def _dominance_allows(kept, pruned, full, budget, forced):
    """Whether a node whose duplicate-group members are ``kept`` / ``pruned`` (bit masks by rank, one per
    group) may still reach a keep-set in which every group prunes one contiguous run of ranks, adding at most
    ``budget`` more weights. ``forced[g]`` receives the undecided members that such a keep-set must prune
    (those between the lowest and highest pruned rank).

    A kept member between two pruned ones rules the node out; so do more must-keep members than ``budget``:
    once a member is kept beside a pruned run, the run cannot pass it, so every undecided member beyond it
    must be kept."""
    one = np.int64(1)
    need = 0
    for g in range(full.size):
        forced[g] = 0
        pg = pruned[g]
        if pg == 0:
            continue
        kg = kept[g]
        lo = _low_bit(pg)
        hi = _high_bit(pg)
        between = ((one << hi) - one) & ~((one << (lo + 1)) - one)
        if kg & between != 0:
            return False
        undecided = full[g] & ~kg & ~pg
        forced[g] = undecided & between
        below = kg & ((one << lo) - one)
        if below != 0:
            need += _bit_count(undecided & ((one << _high_bit(below)) - one))
        above = kg >> (hi + 1)
        if above != 0:
            need += _bit_count(undecided >> (hi + 2 + _low_bit(above)))
    return need <= budget


def run_nodes(k, S_ws, c_ws, idx_ws, bnd_ws, ints, reals, best_keep, total, rel_gap, abs_gap, allowance,
              node_budget, Sbuf, cbuf, ibuf, Lbuf, ybuf, key, obuf, Hbuf, rbuf, H_ws, hpos, group_of, rank_of,
              full, kept_m, pruned_m, gscr, mark):
    """Advance the search (module doc) by at most ``node_budget`` nodes; returns DONE, PAUSED or NUMERICAL."""
    ng = full.size
    L = (ints.size - LEVELS0) // 3
    n_of = ints[LEVELS0:LEVELS0 + L]
    t_of = ints[LEVELS0 + L:LEVELS0 + 2 * L]
    kept_of = ints[LEVELS0 + 2 * L:]
    gain_of = reals[GAIN0:]
    stop_at = ints[NODES] + node_budget
    while True:
        depth = ints[DEPTH]
        if depth == 0:
            return DONE
        lv = depth - 1
        n = n_of[lv]
        b = k - lv
        t = t_of[lv]
        if t > n - b:                      # children exhausted
            ints[DEPTH] = depth - 1
            continue
        if ints[NODES] >= stop_at:
            return PAUSED
        ub = bnd_ws[lv, t]
        if lv == 0:
            reals[ROOT_UB] = ub
        if ub <= reals[THRESHOLD]:         # suffix bounds decrease with t: every later child is pruned too
            if ub > reals[PRUNED_MAX]:
                reals[PRUNED_MAX] = ub
            ints[DEPTH] = depth - 1
            continue
        if ng > 0 and not _dominance_allows(kept_m[lv], pruned_m[lv], full, b, gscr[2]):
            # The candidates skipped so far (pruned in every later child) already rule out every later child.
            ints[DEPTH] = depth - 1
            continue
        t_of[lv] = t + 1
        S = S_ws[lv]
        c = c_ws[lv]
        idx = idx_ws[lv]
        bc = b - 1
        if ng > 0:
            # The child keeps idx[t]; later siblings prune it. A dominated child is skipped (not counted).
            for g in range(ng):
                gscr[0, g] = kept_m[lv, g]
                gscr[1, g] = pruned_m[lv, g]
            gu = group_of[idx[t]]
            if gu >= 0:
                bit = np.int64(1) << rank_of[idx[t]]
                gscr[0, gu] |= bit
                pruned_m[lv, gu] |= bit
            if not _dominance_allows(gscr[0], gscr[1], full, bc, gscr[2]):
                continue
        piv = S[t, t]
        ct = c[t]
        child_gain = gain_of[lv] + ct * ct / piv
        kept_of[lv] = idx[t]
        m = n - t - 1
        ints[NODES] += 1
        if bc <= 2:
            # Leaf: every single / pair in closed form, on the conditioned entries computed on the fly (the
            # child's Schur complement is never stored: half the memory traffic of a leaf).
            for i in range(m):
                si = S[t, t + 1 + i]
                cbuf[i] = c[t + 1 + i] - si * (ct / piv)
                dii = S[t + 1 + i, t + 1 + i] - si * (si / piv)
                if not dii > 0.0:
                    return NUMERICAL
                ybuf[i] = dii
                key[i] = si / piv
                mark[i] = 0
                if ng > 0:      # members the child must prune (dominance) are not tried
                    g = group_of[idx[t + 1 + i]]
                    if g >= 0 and (gscr[2, g] >> rank_of[idx[t + 1 + i]]) & 1 != 0:
                        mark[i] = 1
            best_v = -np.inf
            ba = -1
            bb = -1
            if bc == 1:
                for i in range(m):
                    v = cbuf[i] * cbuf[i] / ybuf[i]
                    if v > best_v and mark[i] == 0:
                        best_v = v
                        ba = i
            else:
                for a in range(m):
                    if mark[a] != 0:
                        continue
                    ca = cbuf[a]
                    da = ybuf[a]
                    fa = key[a]
                    row = t + 1 + a
                    for e in range(a + 1, m):
                        ce = cbuf[e]
                        de = ybuf[e]
                        sae = S[row, t + 1 + e] - fa * S[t, t + 1 + e]     # S is symmetric: row t
                        v = (ca * ca * de - 2.0 * ca * ce * sae + ce * ce * da) / (da * de - sae * sae)
                        if v > best_v:
                            if mark[e] != 0:
                                continue
                            best_v = v
                            ba = a
                            bb = e
            if ba >= 0:
                _offer(reals, ints, best_keep, depth, child_gain + best_v, idx[t + 1 + ba],
                       idx[t + 1 + bb] if bb >= 0 else -1, total, rel_gap, abs_gap, allowance)
            continue
        # The child: Schur complement of S on the suffix after t, conditioned on keeping position t, without
        # the members it must prune (dominance; the Schur complement of the rest is its submatrix).
        mm = 0
        for i in range(m):
            if ng > 0:
                g = group_of[idx[t + 1 + i]]
                if g >= 0 and (gscr[2, g] >> rank_of[idx[t + 1 + i]]) & 1 != 0:
                    continue
            mark[mm] = t + 1 + i
            mm += 1
        if mm < bc:
            continue
        for i in range(mm):
            pi = mark[i]
            si = S[t, pi]
            f = si / piv
            cbuf[i] = c[pi] - si * (ct / piv)
            ibuf[i] = idx[pi]
            for j in range(i + 1):
                v = S[pi, mark[j]] - f * S[t, mark[j]]
                Sbuf[i, j] = v
                Sbuf[j, i] = v
        nl = lv + 1
        if ng > 0:
            for g in range(ng):
                kept_m[nl, g] = gscr[0, g]
                pruned_m[nl, g] = gscr[1, g] | gscr[2, g]
        # The child's inverse is a block of this level's inverse on positions t … n−1 (kept current lazily:
        # skipped and pruned children are dropped here, when a child next needs it). With dropped members the
        # child's matrix is a submatrix, whose inverse is not a block: computed afresh.
        known = False
        if hpos[lv] >= 0 and mm == m:
            if hpos[lv] < t:
                hpos[lv] = t if _drop_leading(H_ws[lv], hpos[lv], t, n) else -1
            if hpos[lv] == t:
                Hp = H_ws[lv]
                Hc = H_ws[nl]
                for i in range(mm):
                    pi = mark[i]
                    for j in range(mm):
                        Hc[i, j] = Hp[pi, mark[j]]
                known = True
        m = mm
        if not _order_node(Sbuf, cbuf, ibuf, m, child_gain, reals[THRESHOLD], m - bc, S_ws[nl], c_ws[nl],
                           idx_ws[nl], bnd_ws[nl], H_ws[nl], known, Lbuf, Hbuf, ybuf, rbuf, obuf):
            return NUMERICAL
        hpos[nl] = 0
        n_of[nl] = m
        t_of[nl] = 0
        gain_of[nl] = child_gain
        ints[DEPTH] = depth + 1
