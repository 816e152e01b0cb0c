"""The pruning problem: weights, curvature, budget and objective kind (DESIGN §1).

For a block ``w ∈ Rᵖ`` with curvature ``F`` (``GᵀG/N + λI`` or a dense ``H``) and an optional mean
gradient ``ḡ``, the local loss model of moving the weights to ``x`` is

    J(x) = ḡᵀ(x − w) + ½ (x − w)ᵀ F (x − w).

Pruning the index set ``P`` (``|P| = m``) costs

* ``"update"`` (combinatorial OBS): ``min_x J(x)`` s.t. ``x_P = 0`` — the rest moves optimally (CBS-U);
* ``"selection"`` (the paper's CBS-S): ``J(w with w_P set to 0)`` — nothing else moves.

With a gradient the update cost is the classic formula applied to the Newton point
``w̃ = w − F⁻¹ḡ``:  ``cost(P) = ½ w̃_Pᵀ[(F⁻¹)_PP]⁻¹w̃_P − ½ḡᵀF⁻¹ḡ``; without one ``w̃ = w``.
"""
from __future__ import annotations

import os
from functools import cached_property
from typing import Literal

import numpy as np

from .curvature import Curvature, DenseCurvature, LowRankCurvature
from .errors import ArgumentTypeError, InvalidArgumentError
from .validation import as_float_array, as_index_set, check_count, check_nonnegative

__all__ = ["Problem", "OBJECTIVES"]

OBJECTIVES = ("update", "selection")
ObjectiveKind = Literal["update", "selection"]


class Problem:
    """One block of the combinatorial OBS problem.

    Parameters
    ----------
    weights : (p,) array — the current weights ``w`` (copied; the caller's array is never changed).
    grads : (N, p) array — per-sample gradients ``G``; ``F = GᵀG/N + damping·I``. Or give
    hessian : (p, p) symmetric PSD array — a dense ``F`` (``damping`` is added to it, default 0).
    damping : float ≥ 0 — ``λ``.
    n_prune : int in [0, p] — ``m``, how many weights to prune. Or give
    sparsity : float in [0, 1] — then ``m = round(sparsity · p)``.
    curvature : a prebuilt :class:`~cbs_opt.curvature.Curvature` instead of grads/hessian — shared by
        reference between problems (e.g. every row of a layer), so its factorisations are computed once.
    objective : "update" (default) or "selection".
    gradient : (p,) array, optional — the first-order term ``ḡ`` (mean gradient).
    """

    def __init__(self, weights, grads=None, damping: float = 0.0, n_prune: int | None = None, *,
                 hessian=None, objective: ObjectiveKind = "update", gradient=None,
                 sparsity: float | None = None, curvature: Curvature | None = None):
        self.weights = as_float_array("weights", weights, 1)
        p = self.weights.size
        if p == 0:
            raise ValueError("weights must not be empty")
        if curvature is not None:
            # A curvature built once and shared by reference (the rows of a layer, the blocks of a study):
            # validated when it was built, never copied here.
            if grads is not None or hessian is not None:
                raise InvalidArgumentError("give one of grads, hessian or curvature, not several")
            if not isinstance(curvature, Curvature):
                raise ArgumentTypeError(f"curvature must be a cbs_opt.curvature.Curvature, "
                                        f"got {type(curvature).__name__}")
            if curvature.p != p:
                raise InvalidArgumentError(f"curvature is over {curvature.p} weights but weights has {p}")
            if damping:
                raise InvalidArgumentError("damping belongs to the shared curvature; build it with the damping")
            self.damping = float(curvature.damping)
            self.curvature: Curvature = curvature
            self.grads = getattr(curvature, "grads", None) if curvature.is_low_rank else None
            self.hessian = None if curvature.is_low_rank else curvature.hessian
        else:
            self._init_curvature(p, grads, hessian, damping)
        self._init_budget(p, objective, n_prune, sparsity, gradient)

    def _init_curvature(self, p: int, grads, hessian, damping) -> None:
        self.damping = check_nonnegative("damping", damping)
        if (grads is None) == (hessian is None):
            raise InvalidArgumentError("give exactly one of grads (per-sample gradients), hessian (dense F) "
                                       "or curvature (a shared Curvature)")
        if grads is not None:
            self.grads = as_float_array("grads", grads, 2)
            if self.grads.shape[1] != p:
                raise ValueError(f"grads must have shape (N, {p}) to match weights, got {self.grads.shape}")
            if self.grads.shape[0] == 0:
                raise ValueError("grads must hold at least one sample (N >= 1)")
            self.hessian = None
            self.curvature: Curvature = LowRankCurvature(self.grads, self.damping)
        else:
            self.hessian = as_float_array("hessian", hessian, 2)
            if self.hessian.shape != (p, p):
                raise ValueError(f"hessian must have shape ({p}, {p}) to match weights, got {self.hessian.shape}")
            scale = max(1.0, float(np.abs(self.hessian).max()))
            if not np.allclose(self.hessian, self.hessian.T, rtol=1e-10, atol=1e-12 * scale):
                raise ValueError("hessian must be symmetric")
            self.hessian = 0.5 * (self.hessian + self.hessian.T)
            lowest = float(np.linalg.eigvalsh(self.hessian)[0])
            if lowest < -1e-10 * scale * p:
                raise ValueError(f"hessian must be positive semidefinite (smallest eigenvalue {lowest:.3g})")
            self.grads = None
            self.curvature = DenseCurvature(self.hessian, self.damping)

    def _init_budget(self, p: int, objective, n_prune, sparsity, gradient) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective_kind: ObjectiveKind = objective
        if n_prune is not None and sparsity is not None:
            raise ValueError("give n_prune or sparsity, not both")
        if sparsity is not None:
            sparsity = float(sparsity)
            if not 0.0 <= sparsity <= 1.0:
                raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
            n_prune = int(round(sparsity * p))
        if n_prune is None:
            raise ValueError("n_prune (or sparsity) is required")
        self.n_prune = check_count("n_prune", n_prune, p)
        self.gradient = None if gradient is None else as_float_array("gradient", gradient, 1)
        if self.gradient is not None and self.gradient.size != p:
            raise ValueError(f"gradient must have shape ({p},), got {self.gradient.shape}")
        for arr in (self.weights, self.grads, self.hessian, self.gradient):
            if arr is not None and arr.flags.owndata:
                arr.flags.writeable = False

    # -- sizes -----------------------------------------------------------------------------------
    @property
    def p(self) -> int:
        """Number of weights in the block."""
        return self.weights.size

    @property
    def n_samples(self) -> int | None:
        """``N`` for the low-rank form, ``None`` for a dense hessian."""
        return None if self.grads is None else self.grads.shape[0]

    @property
    def n_keep(self) -> int:
        return self.p - self.n_prune

    def __repr__(self) -> str:
        curv = f"N={self.n_samples}" if self.grads is not None else "dense hessian"
        return (f"Problem(p={self.p}, {curv}, damping={self.damping:g}, n_prune={self.n_prune}, "
                f"objective={self.objective_kind!r}{', gradient' if self.gradient is not None else ''})")

    def with_objective(self, objective: ObjectiveKind) -> "Problem":
        """The same instance with another objective kind (arrays are shared, read-only)."""
        return self._replace(objective=objective)

    def with_n_prune(self, n_prune: int) -> "Problem":
        """The same instance with another budget ``m``."""
        return self._replace(n_prune=n_prune)

    def _replace(self, **changes) -> "Problem":
        clone = object.__new__(Problem)
        clone.__dict__.update({k: v for k, v in self.__dict__.items()})
        if "objective" in changes:
            if changes["objective"] not in OBJECTIVES:
                raise ValueError(f"objective must be one of {OBJECTIVES}, got {changes['objective']!r}")
            clone.objective_kind = changes["objective"]
        if "n_prune" in changes:
            clone.n_prune = check_count("n_prune", changes["n_prune"], self.p)
        return clone

    # -- the loss model ----------------------------------------------------------------------------
    def loss_change(self, x) -> float:
        """``J(x) = ḡᵀ(x−w) + ½(x−w)ᵀF(x−w)`` — the quadratic model of the loss change at ``x``."""
        x = as_float_array("x", x, 1, copy=False)
        if x.size != self.p:
            raise ValueError(f"x must have shape ({self.p},), got {x.shape}")
        d = x - self.weights
        value = 0.5 * self.curvature.quad(d)
        if self.gradient is not None:
            value += float(self.gradient @ d)
        return value

    @cached_property
    def newton_shift(self) -> np.ndarray:
        """``F⁻¹ḡ`` (zero without a gradient)."""
        if self.gradient is None:
            return np.zeros(self.p)
        return self.curvature.solve(self.gradient)

    @property
    def effective_weights(self) -> np.ndarray:
        """``w̃ = w − F⁻¹ḡ``: the weights the update objective prunes (``w`` without a gradient)."""
        return self.weights - self.newton_shift

    @property
    def update_constant(self) -> float:
        """``−½ ḡᵀF⁻¹ḡ``: the update cost of pruning nothing (0 without a gradient)."""
        if self.gradient is None:
            return 0.0
        return -0.5 * float(self.gradient @ self.newton_shift)

    # -- objectives --------------------------------------------------------------------------------
    def _pruned(self, pruned) -> np.ndarray:
        return as_index_set("pruned", pruned, self.p)

    def update(self, pruned) -> np.ndarray:
        """CBS-U: the minimiser of ``J(x)`` subject to ``x_P = 0`` (exact zeros at ``pruned``).

        ``x = w̃ + d`` with ``d_P = −w̃_P`` and ``d_K = F_KK⁻¹ F_KP w̃_P``.
        """
        pruned = self._pruned(pruned)
        w_eff = self.effective_weights
        x = w_eff + self.curvature.constrained_step(pruned, w_eff)
        x[pruned] = 0.0
        return x

    def zeroed(self, pruned) -> np.ndarray:
        """``w`` with the entries at ``pruned`` set to zero (the selection objective's point)."""
        x = self.weights.copy()
        x[self._pruned(pruned)] = 0.0
        return x

    def update_cost(self, pruned) -> float:
        """Cost under the "update" objective: ``J(update(pruned))``."""
        return self.loss_change(self.update(pruned))

    def selection_cost(self, pruned) -> float:
        """Cost under the "selection" objective: ``½ sᵀFs − ḡᵀs`` with ``s = w`` on ``pruned``, 0 elsewhere."""
        return self.loss_change(self.zeroed(pruned))

    def objective(self, pruned) -> float:
        """Cost of pruning ``pruned`` under this problem's objective kind."""
        if self.objective_kind == "update":
            return self.update_cost(pruned)
        return self.selection_cost(pruned)

    def mask(self, pruned) -> np.ndarray:
        """Boolean keep-mask (True = kept) for an index set."""
        mask = np.ones(self.p, dtype=bool)
        mask[self._pruned(pruned)] = False
        return mask

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the instance to a ``.npz`` file (arrays plus scalars)."""
        arrays = {"weights": self.weights, "damping": np.float64(self.damping),
                  "n_prune": np.int64(self.n_prune), "objective": np.str_(self.objective_kind),
                  "format": np.str_("cbs-opt-problem-1")}
        for name in ("grads", "hessian", "gradient"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Problem":
        """Read an instance written by :meth:`save`."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"problem file not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data or not str(data["format"]).startswith("cbs-opt-problem"):
                raise ValueError(f"{path} is not a cbs-opt problem file")
            get = lambda k: data[k] if k in data else None  # noqa: E731
            return cls(weights=data["weights"], grads=get("grads"), hessian=get("hessian"),
                       damping=float(data["damping"]), n_prune=int(data["n_prune"]),
                       objective=str(data["objective"]), gradient=get("gradient"))
