"""Compiled node loop of leaps-and-bounds (numba; private kernel of :mod:`solvers.exact_leaps`).

The same depth-first search as :func:`solvers.exact_leaps._expand` — candidates ordered by single gain
``c_j²/S_jj``, suffix bounds ``gain(K) + c_Vᵀ S_VV⁻¹ c_V`` from one Cholesky factorisation of the reversed
Schur complement, children by a rank-one update, the last two levels in closed form — with the recursion
replaced by an explicit stack of preallocated per-level arrays, so that a node costs its flops and not
~20 numpy calls (measured in ``docs/benchmarks/miqp_capacity.md``). Total budgets only; partition budgets
stay on the Python search.

State (all numpy arrays, owned by :class:`solvers.exact_leaps.LeapsSearch`; ``L = k − 2`` levels):

* ``S_ws (L, p, p)``, ``c_ws (L, p)``, ``idx_ws (L, p)``: the ordered Schur complement, conditioned
  target and weight indices of the node on each level; ``bnd_ws (L, p)``: its children's suffix bounds;
* ``ints``: ``[nodes, depth, n_0 … n_{L−1}, t_0 … t_{L−1}, kept_0 … kept_{L−1}]`` — ``t_l`` is the next
  child of level ``l`` not yet started (a paused search resumes there), ``kept_l`` the weight level ``l``
  added for the level below;
* ``reals``: ``[best_gain, threshold, pruned_max, root_ub, gain_0 … gain_{L−1}]``;
* ``best_keep (k,)``: the incumbent's indices;
* scratch, overwritten at every node: ``Sbuf (p, p)``, ``cbuf (p)``, ``ibuf (p, int)`` (an unordered child),
  ``Lbuf (p, p)``, ``ybuf (p)`` (the factorisation; a leaf's conditioned diagonal), ``key (p)`` (sort keys; a
  leaf's pivot column), ``obuf (p, int)`` (the sort order).

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


def workspace_bytes(p: int, k: int) -> int:
    """Bytes of the per-level workspace for a block of ``p`` weights keeping ``k``."""
    levels = max(k - 2, 1)
    return 8 * (levels * p * p + 4 * levels * p + 3 * p * p)


_COMPILED: dict | None = None


def compiled() -> dict | None:
    """The compiled kernels by name (``enter_root``, ``run_nodes``), compiled on first use; ``None`` (after
    one warning, and ``AVAILABLE`` turned off) where numba is installed but cannot compile them here — the
    searches then keep the Python loop instead of failing.

    The helpers are rebound to their compiled versions in this module's globals first: numba resolves the
    callees of ``run_nodes`` by global name when it compiles it."""
    global _COMPILED, AVAILABLE
    if _COMPILED is None and AVAILABLE:
        names = ("_order_into", "_suffix_bounds", "_refresh_threshold", "_offer", "enter_root", "run_nodes")
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
    # Compile now (numba compiles lazily, at the first call), so that a failure shows here and not mid-search.
    p = 4
    S = np.eye(p) * 2.0 + 0.5
    ws = (np.empty((2, p, p)), np.empty((2, p)), np.empty((2, p), dtype=np.int64), np.empty((2, p)))
    ints = np.zeros(LEVELS0 + 6, dtype=np.int64)
    reals = np.zeros(GAIN0 + 2)
    reals[PRUNED_MAX] = -np.inf
    bufs = (np.empty((p, p)), np.empty(p), np.empty(p, dtype=np.int64), np.empty((p, p)), np.empty(p),
            np.empty(p), np.empty(p, dtype=np.int64))
    enter_root(S, np.ones(p), *ws, ints, reals, bufs[3], bufs[4], bufs[5], bufs[6])
    run_nodes(4, *ws, ints, reals, np.zeros(4, dtype=np.int64), 1.0, 0.0, 0.0, 0.0, 1, *bufs)
    return {"enter_root": enter_root, "run_nodes": run_nodes}


def _order_into(src_S, src_c, src_idx, n, S_out, c_out, idx_out, scratch_key, order):
    """Copy ``(src_S, src_c, src_idx)[:n]`` into the outputs ordered by single gain, largest first (stable).

    Returns False when a diagonal entry is not positive (the Schur complement lost definiteness)."""
    for i in range(n):
        dii = src_S[i, i]
        if not dii > 0.0:
            return False
        scratch_key[i] = -(src_c[i] * src_c[i] / dii)
    # Stable insertion sort into a preallocated buffer: n ≤ a few hundred, and no allocation per node.
    for i in range(n):
        kv = scratch_key[i]
        j = i - 1
        while j >= 0 and scratch_key[order[j]] > kv:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = i
    for a in range(n):
        oa = order[a]
        c_out[a] = src_c[oa]
        idx_out[a] = src_idx[oa]
        for b in range(n):
            S_out[a, b] = src_S[oa, order[b]]
    return True


def _suffix_bounds(S, c, n, gain, L, y, out):
    """``out[t] = gain + c_Vᵀ S_VV⁻¹ c_V`` for every suffix ``V = {t … n−1}`` of the (ordered) ``S``.

    Cholesky factorisation of the reversed matrix (row ``i`` of ``L`` ↔ position ``n−1−i``), then a
    forward solve; the suffix values are cumulative sums of ``y²``. False when a pivot is not positive."""
    for i in range(n):
        ri = n - 1 - i
        for j in range(i + 1):
            rj = n - 1 - j
            s = S[ri, rj]
            for m in range(j):
                s -= L[i, m] * L[j, m]
            if i == j:
                if not s > 0.0:
                    return False
                L[i, i] = np.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
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


def enter_root(F, c, S_ws, c_ws, idx_ws, bnd_ws, ints, reals, Lbuf, ybuf, key, obuf):
    """Set up level 0 from the full ``F`` and ``c`` (one node counted). False on a non-positive pivot."""
    p = c.size
    L = (ints.size - LEVELS0) // 3
    idx = np.arange(p)
    if not _order_into(F, c, idx, p, S_ws[0], c_ws[0], idx_ws[0], key, obuf):
        return False
    if not _suffix_bounds(S_ws[0], c_ws[0], p, 0.0, Lbuf, ybuf, bnd_ws[0]):
        return False
    ints[NODES] += 1
    ints[DEPTH] = 1
    ints[LEVELS0] = p              # n_0
    ints[LEVELS0 + L] = 0          # t_0
    reals[GAIN0] = 0.0
    return True


def run_nodes(k, S_ws, c_ws, idx_ws, bnd_ws, ints, reals, best_keep, total, rel_gap, abs_gap, allowance,
              node_budget, Sbuf, cbuf, ibuf, Lbuf, ybuf, key, obuf):
    """Advance the search (module doc) by at most ``node_budget`` nodes; returns DONE, PAUSED or NUMERICAL."""
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
        t_of[lv] = t + 1
        S = S_ws[lv]
        c = c_ws[lv]
        idx = idx_ws[lv]
        piv = S[t, t]
        ct = c[t]
        child_gain = gain_of[lv] + ct * ct / piv
        kept_of[lv] = idx[t]
        m = n - t - 1
        ints[NODES] += 1
        bc = b - 1
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
            best_v = -np.inf
            ba = -1
            bb = -1
            if bc == 1:
                for i in range(m):
                    v = cbuf[i] * cbuf[i] / ybuf[i]
                    if v > best_v:
                        best_v = v
                        ba = i
            else:
                for a in range(m):
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
                            best_v = v
                            ba = a
                            bb = e
            if ba >= 0:
                _offer(reals, ints, best_keep, depth, child_gain + best_v, idx[t + 1 + ba],
                       idx[t + 1 + bb] if bb >= 0 else -1, total, rel_gap, abs_gap, allowance)
            continue
        # The child: Schur complement of S on the suffix after t, conditioned on keeping position t.
        for i in range(m):
            si = S[t, t + 1 + i]
            f = si / piv
            cbuf[i] = c[t + 1 + i] - si * (ct / piv)
            ibuf[i] = idx[t + 1 + i]
            for j in range(i + 1):
                v = S[t + 1 + i, t + 1 + j] - f * S[t, t + 1 + j]
                Sbuf[i, j] = v
                Sbuf[j, i] = v
        nl = lv + 1
        if not _order_into(Sbuf, cbuf, ibuf, m, S_ws[nl], c_ws[nl], idx_ws[nl], key, obuf):
            return NUMERICAL
        if not _suffix_bounds(S_ws[nl], c_ws[nl], m, child_gain, Lbuf, ybuf, bnd_ws[nl]):
            return NUMERICAL
        n_of[nl] = m
        t_of[nl] = 0
        gain_of[nl] = child_gain
        ints[DEPTH] = depth + 1
