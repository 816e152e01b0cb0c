"""cbs-opt: the Combinatorial Brain Surgeon as an optimization-solver-based pruning engine.

    from cbs_opt import Problem, solve, prune
"""
from .budget import Budget
from .errors import CbsOptError
from .problem import OBJECTIVES, Problem
from solvers import Solution, Status, available, solve

__version__ = "0.1.0"


# Imported eagerly (torch is loaded by the solvers anyway): the submodule cbs_opt.prune shares the
# function's name, and a lazy import would leave `cbs_opt.prune` bound to the module once anything
# imported `cbs_opt.prune` first. Binding the function after the submodule import makes it stick.
from .prune import prune  # noqa: E402


__all__ = ["Problem", "Budget", "OBJECTIVES", "CbsOptError", "solve", "prune", "available", "Solution", "Status", "__version__"]
