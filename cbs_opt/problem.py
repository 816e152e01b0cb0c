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

import io
import numbers
import os
import zipfile
import zlib
from functools import cached_property
from typing import Literal

import numpy as np

from .curvature import Curvature, DenseCurvature, LowRankCurvature
from .errors import ArgumentTypeError, CbsOptError, InvalidArgumentError, ProblemFileError
from .budget import Budget
from .validation import as_float_array, as_index_set, check_count, check_nonnegative

__all__ = ["Problem", "OBJECTIVES", "make_budget"]

OBJECTIVES = ("update", "selection")
ObjectiveKind = Literal["update", "selection"]


def make_budget(p: int, *, n_prune=None, sparsity: float | None = None, pattern: str | None = None,
                groups=None, budget: Budget | None = None) -> Budget:
    """The :class:`Budget` the ``Problem`` arguments describe (validated; every message names the argument).

    * ``n_prune=m`` or ``sparsity=s`` → ``Budget.total(p, m)`` (``m = round(s·p)``);
    * ``pattern="N:M"`` → ``Budget.pattern(p, "N:M")`` (``n_prune``/``sparsity``, if given, must agree);
    * ``groups=ids, n_prune=counts`` → ``Budget.partition(ids, counts)``; ``groups=ids, sparsity=s`` →
      ``round(s·|g|)`` pruned in each group;
    * ``budget=b`` → ``b`` (over ``p`` weights; nothing else may be given).
    """
    if n_prune is not None and sparsity is not None:
        raise InvalidArgumentError("give n_prune or sparsity, not both")
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
            raise ArgumentTypeError(f"sparsity must be a real number, got {type(sparsity).__name__}")
        sparsity = float(sparsity)
        if not 0.0 <= sparsity <= 1.0:
            raise InvalidArgumentError(f"sparsity must be in [0, 1], got {sparsity}")
    given = [name for name, v in (("pattern", pattern), ("groups", groups), ("budget", budget)) if v is not None]
    if len(given) > 1:
        raise InvalidArgumentError(f"give at most one of pattern, groups and budget, got {' and '.join(given)}")
    if budget is not None:
        if not isinstance(budget, Budget):
            raise ArgumentTypeError(f"budget must be a cbs_opt.budget.Budget, got {type(budget).__name__}")
        if budget.p != p:
            raise InvalidArgumentError(f"budget covers {budget.p} weights but weights has {p}")
        if n_prune is not None or sparsity is not None:
            raise InvalidArgumentError("give budget or n_prune/sparsity, not both")
        return budget
    if pattern is not None:
        out = Budget.pattern(p, pattern)
        if sparsity is not None and int(round(sparsity * p)) != out.n_prune:
            raise InvalidArgumentError(f"sparsity={sparsity} disagrees with pattern={pattern!r}, which prunes "
                                       f"{out.n_prune} of {p} weights (sparsity {out.n_prune / p:g})")
        if n_prune is not None:
            if np.ndim(n_prune) == 0:
                if check_count("n_prune", n_prune, p) != out.n_prune:
                    raise InvalidArgumentError(f"n_prune={n_prune} disagrees with pattern={pattern!r}, which "
                                               f"prunes {out.n_prune} of {p} weights; leave n_prune out")
            elif not np.array_equal(np.asarray(n_prune), out.counts):
                raise InvalidArgumentError(f"n_prune disagrees with the per-group counts of pattern={pattern!r}; "
                                           f"leave n_prune out")
        return out
    if groups is not None:
        ids = np.asarray(groups.detach().cpu().numpy() if hasattr(groups, "detach") else groups)
        if ids.ndim != 1 or ids.size != p:
            raise InvalidArgumentError(f"groups must have shape ({p},) (one group id per weight), got {ids.shape}")
        if sparsity is not None:
            if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
                raise ArgumentTypeError(f"groups must be integer ids, got dtype {ids.dtype}")
            if ids.min() < 0:
                raise InvalidArgumentError("groups must be ids 0..G-1, got a negative id")
            sizes = np.bincount(ids)
            return Budget.partition(ids, np.rint(sparsity * sizes).astype(np.intp))
        if n_prune is None:
            raise InvalidArgumentError("groups needs n_prune (one prune count per group) or sparsity")
        if np.ndim(n_prune) == 0:
            raise InvalidArgumentError("with groups, n_prune must be an array of per-group prune counts "
                                       "(one per group id 0..G-1)")
        return Budget.partition(ids, n_prune)
    if sparsity is not None:
        n_prune = int(round(sparsity * p))
    if n_prune is None:
        raise InvalidArgumentError("n_prune (or sparsity, pattern, groups, budget) is required")
    if np.ndim(n_prune) != 0:
        raise InvalidArgumentError("n_prune is an array of per-group counts; give groups= too "
                                   "(or an int for a total budget)")
    return Budget.total(p, check_count("n_prune", n_prune, p))


class Problem:
    """One block of the combinatorial OBS problem.

    Parameters
    ----------
    weights : (p,) array — the current weights ``w`` (copied; the caller's array is never changed).
    grads : (N, p) array — per-sample gradients ``G``; ``F = GᵀG/N + damping·I``. Or give
    hessian : (p, p) symmetric PSD array — a dense ``F`` (``damping`` is added to it, default 0).
    damping : float ≥ 0 — ``λ``.
    n_prune : int in [0, p] — ``m``, how many weights to prune (a total budget). With ``groups``: a
        (G,) array of per-group prune counts. Or give
    sparsity : float in [0, 1] — then ``m = round(sparsity · p)`` (with ``groups``: ``round(sparsity·|g|)``
        in each group).
    pattern : "N:M", optional — N:M sparsity: consecutive groups of M weights, M − N pruned in each;
        ``n_prune`` is implied (if also given it must agree).
    groups : (p,) int array, optional — group ids 0..G−1 of a partition budget; ``n_prune`` then holds
        the G per-group counts.
    budget : a prebuilt :class:`~cbs_opt.budget.Budget` instead of n_prune/sparsity/pattern/groups.
    curvature : a prebuilt :class:`~cbs_opt.curvature.Curvature` instead of grads/hessian — shared by
        reference between problems (e.g. every row of a layer), so its factorisations are computed once.
    objective : "update" (default) or "selection".
    gradient : (p,) array, optional — the first-order term ``ḡ`` (mean gradient).
    """

    def __init__(self, weights, grads=None, damping: float = 0.0, n_prune: int | None = None, *,
                 hessian=None, objective: ObjectiveKind = "update", gradient=None,
                 sparsity: float | None = None, curvature: Curvature | None = None,
                 pattern: str | None = None, groups=None, budget: Budget | None = None):
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
        self._init_budget(p, objective, n_prune, sparsity, gradient, pattern, groups, budget)

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

    def _init_budget(self, p: int, objective, n_prune, sparsity, gradient, pattern, groups, budget) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective_kind: ObjectiveKind = objective
        self.budget: Budget = make_budget(p, n_prune=n_prune, sparsity=sparsity, pattern=pattern,
                                          groups=groups, budget=budget)
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
    def n_prune(self) -> int:
        """``m``: the total number of weights to prune (``budget.n_prune``; per group: ``budget.counts``)."""
        return self.budget.n_prune

    @property
    def n_keep(self) -> int:
        return self.p - self.n_prune

    def __repr__(self) -> str:
        curv = f"N={self.n_samples}" if self.grads is not None else "dense hessian"
        budget = "" if self.budget.kind == "total" else f", budget={self.budget!r}"
        return (f"Problem(p={self.p}, {curv}, damping={self.damping:g}, n_prune={self.n_prune}{budget}, "
                f"objective={self.objective_kind!r}{', gradient' if self.gradient is not None else ''})")

    def with_objective(self, objective: ObjectiveKind) -> "Problem":
        """The same instance with another objective kind (arrays are shared, read-only)."""
        return self._replace(objective=objective)

    def with_n_prune(self, n_prune: int) -> "Problem":
        """The same instance with another total budget ``m`` (total budgets only)."""
        if self.budget.kind != "total":
            raise InvalidArgumentError(
                f"with_n_prune changes a total budget, but this problem has a {self.budget.kind} budget "
                f"({self.budget!r}); use problem.with_counts(per_group_counts) or problem.with_budget(budget)")
        return self._replace(budget=Budget.total(self.p, check_count("n_prune", n_prune, self.p)))

    def with_budget(self, budget: Budget) -> "Problem":
        """The same instance (arrays shared) with another :class:`~cbs_opt.budget.Budget` over its p weights."""
        if not isinstance(budget, Budget):
            raise ArgumentTypeError(f"budget must be a cbs_opt.budget.Budget, got {type(budget).__name__}")
        if budget.p != self.p:
            raise InvalidArgumentError(f"budget covers {budget.p} weights but the problem has {self.p}")
        return self._replace(budget=budget)

    def with_counts(self, counts) -> "Problem":
        """The same groups with other per-group prune counts (``budget.with_counts``)."""
        return self._replace(budget=self.budget.with_counts(counts))

    def _replace(self, **changes) -> "Problem":
        clone = object.__new__(Problem)
        clone.__dict__.update({k: v for k, v in self.__dict__.items()})
        if "objective" in changes:
            if changes["objective"] not in OBJECTIVES:
                raise ValueError(f"objective must be one of {OBJECTIVES}, got {changes['objective']!r}")
            clone.objective_kind = changes["objective"]
        if "budget" in changes:
            clone.budget = changes["budget"]
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
    def save(self, path) -> None:
        """Write the instance to a ``.npz`` file (arrays, scalars and the budget; no pickled objects).

        ``path`` is a file name (``.npz`` is appended when missing, as numpy does) or a binary file object.
        """
        arrays = {"weights": self.weights, "damping": np.float64(self.damping),
                  "n_prune": np.int64(self.n_prune), "objective": np.str_(self.objective_kind),
                  "format": np.str_(FORMAT_PREFIX + str(FORMAT_VERSION)),
                  "budget_kind": np.str_(self.budget.kind),
                  "budget_groups": self.budget.groups.astype(np.int64),
                  "budget_counts": self.budget.counts.astype(np.int64),
                  "budget_pattern": np.str_(self.budget.pattern or "")}
        for name in ("grads", "hessian", "gradient"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        if hasattr(path, "write"):
            if isinstance(path, io.TextIOBase):
                raise ArgumentTypeError("path must be a file name or a file object opened in binary mode "
                                        "('wb'), got a text-mode file")
            np.savez_compressed(path, **arrays)
            return
        path = _check_path("path", path)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path) -> "Problem":
        """Read an instance written by :meth:`save` (a file name, with or without ``.npz``, or a binary file
        object). Anything else raises :class:`ProblemFileError` saying why; nothing is ever unpickled."""
        if hasattr(path, "read"):
            source, label = path, getattr(path, "name", "<file object>")
            if isinstance(path, io.TextIOBase):
                raise ArgumentTypeError("path must be a file name or a file object opened in binary mode "
                                        "('rb'), got a text-mode file")
        else:
            path = _check_path("path", path)
            source = label = path
            if not os.path.exists(path) and not path.endswith(".npz") and os.path.exists(path + ".npz"):
                source = label = path + ".npz"  # save("x") wrote x.npz, as numpy does
            if not os.path.exists(source):
                raise FileNotFoundError(f"problem file not found: {path}")
            if os.path.isdir(source):
                raise ProblemFileError(f"not a cbs-opt problem file ({label} is a directory)")
        try:
            if hasattr(source, "read"):
                head = source.read(4)
                source.seek(-len(head), io.SEEK_CUR)
            else:
                with open(source, "rb") as fh:
                    head = fh.read(4)
        except OSError as exc:
            raise ProblemFileError(f"not a cbs-opt problem file ({label}: {exc})") from exc
        if head != b"PK\x03\x04" and head != b"PK\x05\x06":
            why = "empty file" if not head else "not an .npz (zip) archive"
            raise ProblemFileError(f"not a cbs-opt problem file ({label}: {why})")
        try:
            if hasattr(source, "read"):
                with np.load(source, allow_pickle=False) as data:
                    return cls._from_npz(data, label)
            # Our own handle: np.load leaves the file it opened unclosed when the archive is corrupt.
            with open(source, "rb") as fh, np.load(fh, allow_pickle=False) as data:
                return cls._from_npz(data, label)
        except ProblemFileError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, zlib.error) as exc:
            # truncated or corrupt archives, or members that are not plain arrays
            why = str(exc).split("\n")[0] or type(exc).__name__
            if isinstance(exc, (zipfile.BadZipFile, EOFError, zlib.error)):
                why = f"truncated or corrupt .npz archive: {why}"
            if "pickle" in why.lower():
                why = "it holds object arrays, which cbs-opt never writes"
            raise ProblemFileError(f"not a cbs-opt problem file ({label}: {why})") from exc

    @classmethod
    def _from_npz(cls, data, label: str) -> "Problem":
        if "format" not in data.files:
            raise ProblemFileError(f"not a cbs-opt problem file ({label}: no 'format' entry)")
        fmt = str(data["format"])
        if not fmt.startswith(FORMAT_PREFIX):
            raise ProblemFileError(f"not a cbs-opt problem file ({label}: format {fmt!r})")
        version = fmt[len(FORMAT_PREFIX):]
        if version not in {str(v) for v in SUPPORTED_VERSIONS}:
            raise ProblemFileError(f"{label} is a cbs-opt problem file of format version {version!r}, which this "
                                   f"version of cbs-opt cannot read (it reads versions "
                                   f"{', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade cbs-opt")
        required = ["weights", "damping", "n_prune", "objective"]
        if version != "1":
            required += ["budget_kind", "budget_groups", "budget_counts", "budget_pattern"]
        missing = [k for k in required if k not in data.files]
        if missing:
            raise ProblemFileError(f"not a complete cbs-opt problem file ({label}: missing "
                                   f"{', '.join(repr(k) for k in missing)})")
        get = lambda k: data[k] if k in data.files else None  # noqa: E731
        budget = None
        n_prune = int(data["n_prune"])
        if version != "1":
            kind = str(data["budget_kind"])
            pattern = str(data["budget_pattern"]) or None
            try:
                if kind == "total":
                    budget = Budget.total(int(data["weights"].size), int(data["budget_counts"].sum()))
                else:
                    budget = Budget(data["budget_groups"], data["budget_counts"], kind="partition",
                                    pattern=pattern)
            except CbsOptError as exc:
                raise ProblemFileError(f"not a valid cbs-opt problem file ({label}: budget: {exc})") from exc
            if budget.n_prune != n_prune:
                raise ProblemFileError(f"not a valid cbs-opt problem file ({label}: n_prune {n_prune} disagrees "
                                       f"with the budget's {budget.n_prune})")
            n_prune = None
        try:
            return cls(weights=data["weights"], grads=get("grads"), hessian=get("hessian"),
                       damping=float(data["damping"]), n_prune=n_prune, budget=budget,
                       objective=str(data["objective"]), gradient=get("gradient"))
        except ProblemFileError:
            raise
        except CbsOptError as exc:
            raise ProblemFileError(f"not a valid cbs-opt problem file ({label}: {exc})") from exc


FORMAT_PREFIX = "cbs-opt-problem-"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)


def _check_path(name: str, path) -> str:
    if isinstance(path, (bytes, bytearray)):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a file name or a binary file object, got {type(path).__name__}")
    return os.fspath(path)
