"""Index-set checks on large pruned sets: sorted, distinct, repeats refused (sort-based, not np.unique)."""
import numpy as np
import pytest

from cbs_opt.budget import Budget
from solvers._checks import as_index_set
from solvers.errors import InvalidArgumentError


def test_as_index_set_sorts_copies_and_refuses_repeats():
    raw = np.array([5, 1, 3, 0], dtype=np.int32)
    out = as_index_set("pruned", raw, 6)
    assert out.dtype == np.intp and out.tolist() == [0, 1, 3, 5]
    assert raw.tolist() == [5, 1, 3, 0]  # the caller's array is not sorted in place
    with pytest.raises(InvalidArgumentError, match="pruned has repeated indices"):
        as_index_set("pruned", [2, 4, 2], 6)
    big = np.random.default_rng(0).permutation(1_000_000)[:900_000]
    np.testing.assert_array_equal(as_index_set("pruned", big, 1_000_000), np.sort(big))


def test_budget_is_satisfied_refuses_repeats_and_counts_groups():
    b = Budget.partition([0, 0, 1, 1, 1], [1, 2])
    assert b.is_satisfied(np.array([1, 4, 2]))
    assert not b.is_satisfied(np.array([1, 4, 4]))   # a repeat, although the counts would match
    assert not b.is_satisfied(np.array([0, 1, 2]))   # wrong per-group counts
    assert not b.is_satisfied(np.array([1, 4, 5]))   # out of range


def test_registry_refuses_a_backend_returning_repeated_indices():
    import solvers
    from solvers.base import BackendResult, Status
    from solvers.errors import SolverError
    from solvers.registry import register, unregister
    from cbs_opt.problem import Problem

    @register("test_repeats_backend", description="returns a repeated index (test)", kind="baseline")
    def _bad(problem, *, seed, time_limit, progress):
        return BackendResult(pruned=np.array([0, 0], dtype=np.intp), status=Status.FEASIBLE)

    try:
        prob = Problem(weights=np.array([1.0, 2.0, 3.0]), grads=np.eye(3), damping=0.1, n_prune=2)
        with pytest.raises(SolverError, match="2 valid distinct indices|1 valid distinct indices"):
            solvers.solve(prob, "test_repeats_backend")
        assert solvers.solve(prob, "magnitude").pruned.tolist() == [0, 1]
    finally:
        unregister("test_repeats_backend")
