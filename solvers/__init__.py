"""Pluggable backends for the CBS problem, behind one call.

    import solvers
    sol = solvers.solve(problem, solver="greedy_swap", time_limit=60, seed=0)
    solvers.available()          # names usable here
    solvers.register("mine")     # decorator for your own backend

Each backend lives in its own module and registers itself on import.
"""
from .base import (BackendResult, Deadline, Solution, SolverError, SolverUnavailableError, Status,
                   UnknownSolverError)
from .errors import (ArgumentTypeError, CbsOptError, EngineError, InvalidArgumentError,  # noqa: F401
                     MemoryLimitError, ModelNotSupportedError, ProblemFileError, UnsupportedProblemError)
from .registry import available, backends, register, solve, unregister

# Importing the backend modules registers them (optional engines inside them are probed lazily).
from . import (magnitude, obs, enumerate as _enumerate, greedy_swap, swap_search,  # noqa: E402,F401
               miqp, relaxation)

__all__ = ["solve", "available", "backends", "register", "unregister", "Solution", "Status",
           "BackendResult", "SolverError", "SolverUnavailableError", "UnknownSolverError", "Deadline"]
