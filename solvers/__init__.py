"""Pluggable backends for the CBS problem, behind one call.

    import solvers
    sol = solvers.solve(problem, solver="greedy_swap", time_limit=60, seed=0)
    solvers.available()          # names usable here
    solvers.register("mine")     # decorator for your own backend

Each backend lives in its own module and registers itself on import.
"""
from .base import (BackendResult, Deadline, Solution, SolverError, SolverUnavailableError, Status,
                   UnknownSolverError)
from .registry import available, backends, register, solve, unregister

# Importing the backend modules registers them.
from . import magnitude, obs, enumerate as _enumerate  # noqa: E402,F401

for _optional in ("greedy_swap", "miqp", "relaxation", "swap_search"):
    try:  # modules added by later work; a missing one must not break the import
        __import__(f"{__name__}.{_optional}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_optional}":
            raise

__all__ = ["solve", "available", "backends", "register", "unregister", "Solution", "Status",
           "BackendResult", "SolverError", "SolverUnavailableError", "UnknownSolverError", "Deadline"]
