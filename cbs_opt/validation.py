"""Argument checks shared by the engine: every message names the offending argument.

The checks live in :mod:`solvers._checks` so that backends can use them without importing ``cbs_opt``
(the engine imports the solvers, never the other way round); this module re-exports them.
"""
from __future__ import annotations

from solvers._checks import as_float_array, as_index_set, check_count, check_nonnegative

__all__ = ["as_float_array", "as_index_set", "check_nonnegative", "check_count"]
