"""The one exception hierarchy of cbs-opt (engine and solvers alike).

Every error the library raises on purpose derives from :class:`CbsOptError`. Argument mistakes keep
the built-in type users already catch (``ValueError`` / ``TypeError`` / ``ImportError``) as a second
base, so ``except ValueError`` keeps working while ``except CbsOptError`` catches them all. The same
mistake raises the same type everywhere.

It lives in ``solvers`` because the engine (``cbs_opt``) imports the solvers and never the other
way round; ``cbs_opt.errors`` re-exports it.
"""
from __future__ import annotations

__all__ = ["CbsOptError", "InvalidArgumentError", "ArgumentTypeError", "UnknownSolverError",
           "SolverUnavailableError", "UnsupportedProblemError", "SolverError", "EngineError",
           "ProblemFileError", "ModelNotSupportedError", "MemoryLimitError"]


class CbsOptError(Exception):
    """Base of every error cbs-opt raises on purpose."""


class InvalidArgumentError(CbsOptError, ValueError):
    """An argument has the right type but a wrong value (shape, range, NaN, impossible budget…).
    The message names the argument."""


class ArgumentTypeError(CbsOptError, TypeError):
    """An argument has the wrong type. The message names the argument."""


class UnknownSolverError(InvalidArgumentError):
    """``solver=`` (or an engine name) names nothing registered."""


class SolverUnavailableError(CbsOptError, ImportError):
    """The backend or engine exists but its optional dependency is missing here (message: how to install)."""


class UnsupportedProblemError(InvalidArgumentError):
    """The backend does not handle this problem's objective kind or budget kind."""


class SolverError(CbsOptError, RuntimeError):
    """A backend failed or returned something invalid."""


class EngineError(SolverError):
    """An external engine (Gurobi, SCIP, HiGHS…) failed; the message names the engine and what to do."""

    def __init__(self, engine: str, message: str, hint: str = ""):
        self.engine = engine
        self.hint = hint
        super().__init__(f"engine {engine!r} failed: {message}" + (f"; {hint}" if hint else ""))


class ProblemFileError(InvalidArgumentError):
    """A file is not a readable cbs-opt problem file (truncated, wrong format, missing key…)."""


class ModelNotSupportedError(InvalidArgumentError):
    """The Fisher cannot be computed for this model (an unsupported layer, a loss that gives no signal…)."""


class MemoryLimitError(InvalidArgumentError, MemoryError):
    """The requested size cannot fit in memory; refused before any work is done."""
