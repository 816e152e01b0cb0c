"""Baseline: SparseGPT (Frantar & Alistarh, 2023) — the OBS column sweep with lazy batched updates.

Written from the paper's description (no code copied). For a row ``w ∈ Rᵖ`` and the layer curvature
``F = XᵀX/n + λI`` (a damped ``H``), the reconstruction objective is ``½(x − w)ᵀF(x − w)``. Let
``F⁻¹ = UᵀU`` with ``U`` upper triangular (the Cholesky factor of the *inverse*). Then ``U_jj² =
[(F_{j:,j:})⁻¹]_{00}`` is the inverse-curvature diagonal of weight ``j`` once the weights before ``j`` are
frozen, and ``U_{j,j:}/U_jj`` is the OBS update of the weights ``j..p−1`` when weight ``j`` is forced to
a new value with the earlier ones frozen. The sweep:

* columns are visited left to right in blocks of ``blocksize``;
* **mask selection** at the start of each block, on the *current* (already updated) weights, by the
  score ``x_j² / U_jj²`` — smallest scores pruned. The paper picks one threshold per block over all
  the rows of a layer; a :class:`cbs_opt.Problem` is one row with an exact budget ``m``, so here each row
  prunes a cumulative quota ``round(m · end/p)`` by the end of each block (``selection="row"``,
  the per-row variant). :func:`sparsegpt_sweep` with ``selection="layer"`` is the paper's rule
  over a matrix of rows (one quota per block for the whole layer);
* for N:M (``pattern="n:m"``: at most ``n`` nonzeros in every ``m`` consecutive weights, the convention of
  :class:`cbs_opt.budget.Budget`) the ``m − n`` smallest scores of each group of ``m`` columns are pruned,
  the group chosen when the sweep reaches its first column (the paper's N:M rule);
* **column step** ``j``: ``q = 0`` if pruned else ``x_j``; ``e = (x_j − q)/U_jj``;
  ``x_{j:} −= e · U_{j, j:}`` (only inside the block: lazy);
* after a block the block's errors ``E`` update the rest at once: ``x_{end:} −= E · U_{block, end:}``
  (the lazy batched update — one matrix product per block, the same numbers as column by column).

SparseGPT's update is *not* the optimal CBS-U update of its mask: each pruning step re-optimises only the
columns to its right (those to its left are frozen). The registry recomputes the CBS-U weights of the
returned mask (``Solution.weights``); SparseGPT's own weights are kept in ``Solution.info["weights"]``
(and their objective in ``info["own_objective"]``), so a study can compare "SparseGPT as published"
with "SparseGPT's mask + exact CBS-U".
"""
from __future__ import annotations

import numpy as np

from .base import BackendResult, Status
from .errors import InvalidArgumentError, UnsupportedProblemError
from .registry import register

__all__ = ["sparsegpt_sweep", "inverse_upper_factor", "parse_pattern", "solve_sparsegpt"]


def parse_pattern(pattern) -> tuple[int, int] | None:
    """``"n:m"`` / ``(n, m)`` → ``(n, m)``: keep at most ``n`` of every ``m`` consecutive weights (prune
    ``m − n``), as :func:`cbs_opt.budget.parse_pattern`; ``None`` stays ``None``."""
    if pattern is None:
        return None
    if isinstance(pattern, str):
        head, sep, tail = pattern.partition(":")
        try:
            n, m = int(head), int(tail)
        except ValueError:
            raise InvalidArgumentError(f"pattern must look like 'n:m' (e.g. '2:4'), got {pattern!r}") from None
        if not sep:
            raise InvalidArgumentError(f"pattern must look like 'n:m' (e.g. '2:4'), got {pattern!r}")
    else:
        try:
            n, m = (int(v) for v in pattern)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"pattern must be 'n:m' or a pair (n, m), got {pattern!r}") from None
    if not 0 <= n <= m or m < 1:
        raise InvalidArgumentError(f"pattern n:m needs 0 <= n <= m and m >= 1, got {n}:{m}")
    return n, m


def inverse_upper_factor(F: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``F⁻¹ = UᵀU`` for a positive definite ``F``."""
    try:
        L = np.linalg.cholesky(F)
        Linv = np.linalg.solve(L, np.eye(F.shape[0]))
        inv = Linv.T @ Linv
        return np.linalg.cholesky(0.5 * (inv + inv.T)).T
    except np.linalg.LinAlgError as exc:
        raise InvalidArgumentError("sparsegpt needs the curvature positive definite (add damping)") from exc


def _smallest_per_row(score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Boolean (r, c): the ``counts[i]`` smallest entries of row ``i`` (ties to the lower column)."""
    rank = np.argsort(np.argsort(score, axis=1, kind="stable"), axis=1, kind="stable")
    return rank < counts[:, None]


def sparsegpt_sweep(W, U, *, n_prune=None, pattern=None, blocksize: int = 128, mask=None,
                    selection: str = "row") -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT on the rows of ``W`` (``r × p``) sharing one curvature → ``(new weights, pruned mask)``.

    U          upper Cholesky factor of ``F⁻¹`` (``F⁻¹ = UᵀU``), see :func:`inverse_upper_factor`
    n_prune    per-row counts (int or ``(r,)``) with ``selection="row"``; the layer total with
               ``selection="layer"`` (one quota per block over all rows, as in the paper)
    pattern    ``"n:m"``/``(n, m)``: keep ``n`` of every ``m`` (prune ``m − n``) instead of ``n_prune``
               (``p`` and ``blocksize`` multiples of ``m``)
    mask       a given pruned mask (bool ``r × p``, True = pruned): only the sweep's weight update is run
    Returns float64 weights with exact zeros at the pruned entries, and the pruned mask.
    """
    W = np.array(W, dtype=np.float64, ndmin=2, copy=True)
    r, p = W.shape
    U = np.asarray(U, dtype=np.float64)
    if U.shape != (p, p):
        raise InvalidArgumentError(f"U must have shape ({p}, {p}), got {U.shape}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or blocksize < 1:
        raise InvalidArgumentError(f"blocksize must be a positive integer, got {blocksize!r}")
    if selection not in ("row", "layer"):
        raise InvalidArgumentError(f"selection must be 'row' or 'layer', got {selection!r}")
    pattern = parse_pattern(pattern)
    given = mask is not None
    if sum(x is not None for x in (n_prune, pattern, mask)) != 1:
        raise InvalidArgumentError("give exactly one of n_prune, pattern or mask")
    if given:
        pruned = np.array(mask, dtype=bool, ndmin=2)
        if pruned.shape != (r, p):
            raise InvalidArgumentError(f"mask must have shape ({r}, {p}), got {pruned.shape}")
    else:
        pruned = np.zeros((r, p), dtype=bool)
    if pattern is not None:
        pn, pm = pattern
        if p % pm or blocksize % pm:
            raise InvalidArgumentError(f"pattern {pn}:{pm} needs p ({p}) and blocksize ({blocksize}) "
                                       f"to be multiples of {pm}")
    elif n_prune is not None:
        if selection == "row":
            counts = np.broadcast_to(np.asarray(n_prune, dtype=np.int64), (r,)).copy()
            if np.any(counts < 0) or np.any(counts > p):
                raise InvalidArgumentError(f"n_prune must be in [0, {p}] per row, got {n_prune!r}")
        else:
            total = int(n_prune)
            if not 0 <= total <= r * p:
                raise InvalidArgumentError(f"n_prune must be in [0, {r * p}] for the layer, got {n_prune!r}")
        done = np.zeros(r, dtype=np.int64)
        done_total = 0
    d2 = np.diag(U) ** 2
    for i1 in range(0, p, blocksize):
        i2 = min(i1 + blocksize, p)
        W1 = W[:, i1:i2].copy()
        U1 = U[i1:i2, i1:i2]
        E1 = np.zeros_like(W1)
        if not given and pattern is None:
            score = W1 * W1 / d2[i1:i2]
            if selection == "row":
                # cumulative quota: every row reaches exactly its count at the last column
                take = np.clip(np.rint(counts * (i2 / p)).astype(np.int64) - done, 0, i2 - i1)
                pruned[:, i1:i2] = _smallest_per_row(score, take)
                done += take
            else:
                take = min(int(np.rint(total * (i2 / p))) - done_total, score.size)
                flat = np.zeros(score.size, dtype=bool)
                flat[np.argsort(score, axis=None, kind="stable")[:max(0, take)]] = True
                pruned[:, i1:i2] = flat.reshape(score.shape)
                done_total += max(0, take)
        for j in range(i2 - i1):
            if pattern is not None and j % pattern[1] == 0:
                group = slice(j, j + pattern[1])
                score = W1[:, group] ** 2 / d2[i1 + j:i1 + j + pattern[1]]
                pruned[:, i1 + j:i1 + j + pattern[1]] = _smallest_per_row(score, np.full(r, pattern[1] - pattern[0]))
            col = W1[:, j]
            err = np.where(pruned[:, i1 + j], col, 0.0) / U1[j, j]
            W1[:, j:] -= err[:, None] * U1[j, j:][None, :]
            E1[:, j] = err
        W[:, i1:i2] = W1
        if i2 < p:
            W[:, i2:] -= E1 @ U[i1:i2, i2:]   # the lazy batched update of the columns to the right
    W[pruned] = 0.0  # exact zeros (the column step leaves rounding-level values)
    return W, pruned


def _upper_factor_of(problem) -> np.ndarray:
    curv = problem.curvature
    if hasattr(curv, "inverse_upper_factor"):  # a shared dense curvature caches it (one per layer)
        try:
            return curv.inverse_upper_factor()
        except ValueError as exc:
            raise InvalidArgumentError(f"sparsegpt: {exc}") from exc
    return inverse_upper_factor(curv.dense())


@register("sparsegpt", description="SparseGPT: OBS column sweep with lazy batched updates, w^2/[U]_jj^2 "
                                   "mask per block (unstructured or N:M); own weights in info['weights']",
          kind="baseline", budgets=("total", "partition"))
def solve_sparsegpt(problem, *, seed: int, time_limit, progress: bool, blocksize: int = 128) -> BackendResult:
    """SparseGPT's mask for one row (see the module docstring).

    A total budget prunes ``problem.n_prune`` weights (per-row cumulative quota per block); an N:M budget
    (``Problem(pattern="2:4")``) uses the paper's N:M rule (the block size is rounded down to a multiple of
    M). Other partition budgets are not supported. With a first-order term the sweep runs on the Newton
    point ``w̃ = w − F⁻¹ḡ`` (the update objective is the reconstruction around it).
    ``info["weights"]`` holds SparseGPT's own updated weights; the registry's ``Solution.weights`` is CBS-U
    of the mask.
    """
    budget = getattr(problem, "budget", None)
    pat = None
    if budget is not None and budget.n_groups > 1:
        if budget.pattern is None:
            raise UnsupportedProblemError("sparsegpt handles total and N:M budgets, not a general partition "
                                          f"({budget!r})")
        pat = parse_pattern(budget.pattern)
    w = problem.effective_weights
    U = _upper_factor_of(problem)
    if pat is not None:
        bs = max(pat[1], blocksize - blocksize % pat[1])
        x, pruned = sparsegpt_sweep(w[None, :], U, pattern=pat, blocksize=bs)
    else:
        x, pruned = sparsegpt_sweep(w[None, :], U, n_prune=problem.n_prune, blocksize=blocksize)
    x = x[0]
    x.flags.writeable = False
    return BackendResult(pruned=np.flatnonzero(pruned[0]), status=Status.FEASIBLE,
                         info={"weights": x, "own_objective": problem.loss_change(x), "blocksize": blocksize,
                               "pattern": None if pat is None else f"{pat[0]}:{pat[1]}"})
