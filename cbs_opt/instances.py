"""Generated problem families, for tests, benchmarks and studies (no data files needed).

Every generator is deterministic in ``seed`` and returns a :class:`Problem` in the low-rank form
``F = GᵀG/N + λI`` (or a dense hessian with ``dense=True``).

Families
--------
``lowrank``     Gaussian gradients with log-normal column scales (a Fisher-like, ill-conditioned
                spectrum) and Gaussian weights.
``cancelling``  weights come in pairs whose gradient columns are (nearly) the same and whose weights
                are (nearly) opposite: removing both costs little, removing either alone costs a lot —
                the structure CBS exists to find and single swaps get stuck on.
``identity``    ``G = 0``: ``F = λI``, every objective is ``½λ‖w_P‖²`` (a degenerate, tie-rich case).
``duplicates``  repeated weights and repeated gradient columns (ties everywhere).
"""
from __future__ import annotations

import numpy as np

from .problem import Problem

__all__ = ["random_problem", "FAMILIES"]

FAMILIES = ("lowrank", "cancelling", "identity", "duplicates")


def _lowrank(rng, p, N):
    scales = np.exp(rng.normal(0.0, 1.0, size=p))
    G = rng.normal(size=(N, p)) * scales
    w = rng.normal(size=p)
    return w, G


def _cancelling(rng, p, N):
    w, G = _lowrank(rng, p, N)
    n_pairs = p // 2
    idx = rng.permutation(p)
    a, b = idx[:n_pairs], idx[n_pairs:2 * n_pairs]
    G[:, b] = G[:, a] + 0.05 * rng.normal(size=(N, n_pairs)) * np.abs(G[:, a]).mean(0)
    w[b] = -w[a] * (1.0 + 0.05 * rng.normal(size=n_pairs))
    return w, G


def _identity(rng, p, N):
    return rng.normal(size=p), np.zeros((N, p))


def _duplicates(rng, p, N):
    base_w = np.round(rng.normal(size=max(1, p // 3)), 1)
    base_g = rng.normal(size=(N, max(1, p // 3)))
    pick = rng.integers(0, base_w.size, size=p)
    return base_w[pick].copy(), base_g[:, pick].copy()


_GENERATORS = {"lowrank": _lowrank, "cancelling": _cancelling, "identity": _identity,
               "duplicates": _duplicates}


def random_problem(p: int, n_samples: int | None = None, n_prune: int | None = None, *,
                   sparsity: float = 0.5, damping: float = 1e-3, seed: int = 0,
                   family: str = "lowrank", objective: str = "update", dense: bool = False,
                   gradient: bool = False) -> Problem:
    """A generated instance.

    p          number of weights;  n_samples  N (default ``max(1, p // 2)``)
    n_prune    m (default ``round(sparsity · p)``)
    family     one of :data:`FAMILIES`
    dense      give the curvature as a dense ``hessian`` (``GᵀG/N``) instead of ``grads``
    gradient   add a first-order term ``ḡ`` (small, random)
    """
    if family not in _GENERATORS:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
        raise ValueError(f"p must be a positive integer, got {p!r}")
    N = max(1, p // 2) if n_samples is None else int(n_samples)
    if N < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rng = np.random.default_rng(seed)
    w, G = _GENERATORS[family](rng, int(p), N)
    g = 0.1 * rng.normal(size=p) * np.abs(G).mean(0) if gradient else None
    if n_prune is None:
        n_prune = int(round(sparsity * p))
    if dense:
        return Problem(weights=w, hessian=G.T @ G / N, damping=damping, n_prune=n_prune,
                       objective=objective, gradient=g)
    return Problem(weights=w, grads=G, damping=damping, n_prune=n_prune, objective=objective, gradient=g)
