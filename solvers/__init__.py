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
from .registry import (EngineInfo, available, backends, engines, register, register_engine,  # noqa: F401
                       solve, unregister)

# Importing the backend modules registers them (optional engines inside them are probed lazily).
from . import (magnitude, obs, enumerate as _enumerate, greedy_swap, swap_search,  # noqa: E402,F401
               miqp, relaxation, wanda, sparsegpt)


def _register_builtin_engines() -> None:
    """miqp's engines: its own HiGHS-based search (default) and Gurobi / SCIP through Pyomo."""
    from .kernels.pyomo_model import ENGINES, probe_engine

    register_engine("miqp", "highs", requires=("highspy",), install_hint="pip install highspy", default=True)
    for name, (_, module, hint) in ENGINES.items():
        register_engine("miqp", name, requires=("pyomo", module), install_hint=hint,
                        probe=lambda name=name: probe_engine(name))


_register_builtin_engines()

__all__ = ["solve", "available", "backends", "register", "unregister", "engines", "register_engine",
           "EngineInfo", "Solution", "Status",
           "BackendResult", "SolverError", "SolverUnavailableError", "UnknownSolverError", "Deadline"]
