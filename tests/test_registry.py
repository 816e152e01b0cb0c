"""The solver registry: lookup, options, availability, and distrust of backend claims."""
import numpy as np
import pytest

import solvers
from cbs_opt import solve
from cbs_opt.instances import random_problem
from solvers import BackendResult, Status


@pytest.fixture
def prob():
    return random_problem(6, 3, 2, seed=0)


def test_unknown_solver(prob):
    with pytest.raises(solvers.UnknownSolverError, match="unknown solver 'nope'.*registered:"):
        solve(prob, "nope")


def test_unknown_option_names_it(prob):
    with pytest.raises(TypeError, match="unknown option\\(s\\) bogus"):
        solve(prob, "enumerate", bogus=1)


@pytest.mark.parametrize("limit", [0, -1, float("nan"), "5", True])
def test_bad_time_limit(prob, limit):
    with pytest.raises((ValueError, TypeError), match="time_limit"):
        solve(prob, "magnitude", time_limit=limit)


def test_problem_type_checked():
    with pytest.raises(TypeError, match="problem must be a cbs_opt.Problem"):
        solve({"weights": [1]}, "magnitude")


def test_missing_optional_backend_is_listed_not_crashing(prob):
    @solvers.register("needs_missing", requires=("surely_not_installed_mod",),
                      install_hint="pip install surely-not")
    def _backend(problem, *, seed, time_limit, progress):  # pragma: no cover - never runs
        raise AssertionError

    try:
        assert "needs_missing" in solvers.backends()
        assert "needs_missing" not in solvers.available()
        with pytest.raises(solvers.SolverUnavailableError, match="pip install surely-not"):
            solve(prob, "needs_missing")
    finally:
        solvers.unregister("needs_missing")


def test_objective_is_recomputed_not_trusted(prob):
    @solvers.register("liar")
    def _liar(problem, *, seed, time_limit, progress):
        return BackendResult(pruned=np.arange(problem.n_prune), status=Status.FEASIBLE, objective=-123.0)

    try:
        sol = solve(prob, "liar")
        assert sol.objective == prob.objective(np.arange(2)) != -123.0
        assert sol.info["reported_objective"] == -123.0
    finally:
        solvers.unregister("liar")


@pytest.mark.parametrize("pruned", [np.arange(3), np.array([0, 0]), np.array([0, 6]), np.array([0.0, 1.0])])
def test_invalid_backend_answers_are_errors(prob, pruned):
    @solvers.register("broken")
    def _broken(problem, *, seed, time_limit, progress):
        return BackendResult(pruned=pruned)

    try:
        with pytest.raises(solvers.SolverError, match="broken"):
            solve(prob, "broken")
    finally:
        solvers.unregister("broken")


def test_duplicate_registration_refused():
    with pytest.raises(ValueError, match="already registered"):
        solvers.register("magnitude", lambda problem, **kw: None)


def test_available_core_backends():
    assert {"magnitude", "obs", "enumerate"} <= set(solvers.available())
    assert solvers.backends()["enumerate"].exact


def test_objective_kind_checked(prob):
    @solvers.register("update_only", objectives=("update",))
    def _update_only(problem, *, seed, time_limit, progress):
        return BackendResult(pruned=np.arange(problem.n_prune))

    try:
        assert solve(prob, "update_only").objective == prob.objective(np.arange(2))
        with pytest.raises(ValueError, match="does not handle objective='selection'"):
            solve(prob.with_objective("selection"), "update_only")
    finally:
        solvers.unregister("update_only")
