"""The exception hierarchy of cbs-opt (defined once in :mod:`solvers.errors`, re-exported here)."""
from solvers.errors import *  # noqa: F401,F403
from solvers.errors import __all__  # noqa: F401
