"""The damping rule: how ``λ`` in ``F = GᵀG/N + λI`` is chosen for each block.

An absolute ``λ`` means different things for layers whose Fisher scales differ by orders of magnitude,
so the rule may instead be *relative*: ``λ = α · mean(diag(GᵀG/N))`` over the block's own coordinates.
The relative rule is invariant to rescaling the loss: multiplying the loss by ``c`` multiplies ``G`` by
``c``, the Fisher and ``λ`` by ``c²``, and leaves every argmin (and the CBS-U update) unchanged.

    Damping.absolute(1e-3)      λ = 1e-3 for every block
    Damping.of_diagonal(1e-2)   λ = 1e-2 · (mean Fisher diagonal of the block)
    as_damping(1e-3)            a plain number is absolute (the historical meaning)
    as_damping("relative:1e-2") the same as Damping.of_diagonal(1e-2)
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["Damping", "as_damping"]


@dataclass(frozen=True)
class Damping:
    """``λ = value`` (absolute) or ``λ = value · mean(diag F₀)`` (relative), ``F₀`` the undamped curvature."""

    value: float
    relative: bool = False

    def __post_init__(self):
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real) \
                or not np.isfinite(self.value) or self.value < 0:
            raise InvalidArgumentError(f"damping must be a finite number >= 0, got {self.value!r}")

    @classmethod
    def absolute(cls, value: float) -> "Damping":
        return cls(float(value), False)

    @classmethod
    def of_diagonal(cls, fraction: float) -> "Damping":
        """The relative rule ``λ = fraction · mean(diag F₀)``."""
        return cls(float(fraction), True)

    def resolve(self, mean_diagonal: float) -> float:
        """The absolute ``λ`` for a block whose undamped curvature has mean diagonal ``mean_diagonal``.

        A relative rule on an all-zero block (no curvature at all) falls back to ``value`` itself, so the
        problem stays positive definite instead of becoming singular.
        """
        if not self.relative:
            return self.value
        mean_diagonal = float(mean_diagonal)
        if not np.isfinite(mean_diagonal) or mean_diagonal < 0:
            raise InvalidArgumentError(f"mean curvature diagonal must be finite and >= 0, got {mean_diagonal}")
        return self.value * mean_diagonal if mean_diagonal > 0 else self.value

    def resolve_for_grads(self, grads) -> float:
        """``resolve`` for a block given by its per-sample gradients ``G`` (``diag(GᵀG/N)`` from column norms)."""
        if not self.relative:
            return self.value
        g = np.asarray(grads)
        mean_diag = float(np.einsum("np,np->", g, g, dtype=np.float64)) / (g.shape[0] * max(1, g.shape[1]))
        return self.resolve(mean_diag)

    def __str__(self) -> str:
        return f"relative:{self.value:g}" if self.relative else f"{self.value:g}"


def as_damping(spec) -> Damping:
    """A :class:`Damping` from a number (absolute), ``"relative:α"`` / ``"absolute:λ"``, or a Damping."""
    if isinstance(spec, Damping):
        return spec
    if isinstance(spec, str):
        kind, sep, value = spec.partition(":")
        if sep and kind in ("relative", "absolute"):
            try:
                number = float(value)
            except ValueError:
                raise InvalidArgumentError(f"damping {spec!r}: {value!r} is not a number") from None
            return Damping(number, kind == "relative")
        raise InvalidArgumentError(f"damping must be a number, 'relative:α', 'absolute:λ' or a Damping, got {spec!r}")
    if isinstance(spec, bool) or not isinstance(spec, numbers.Real):
        raise ArgumentTypeError(f"damping must be a number, 'relative:α' or a Damping, got {type(spec).__name__}")
    return Damping(float(spec), False)
