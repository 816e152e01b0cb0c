"""cbs-opt: the Combinatorial Brain Surgeon as an optimization-solver-based pruning engine.

    from cbs_opt import Problem, solve, prune
"""
from .problem import OBJECTIVES, Problem
from solvers import Solution, Status, available, solve

__version__ = "0.1.0"


def __getattr__(name):
    # prune pulls in torch; load it only when asked for.
    if name == "prune":
        from .prune import prune
        return prune
    raise AttributeError(f"module 'cbs_opt' has no attribute {name!r}")


__all__ = ["Problem", "OBJECTIVES", "solve", "prune", "available", "Solution", "Status", "__version__"]
