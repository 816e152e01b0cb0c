"""Issue 15 item 8: failures of the external engines (Gurobi, SCIP) reach the caller as EngineError, naming the
engine and what to do — simulated by replacing the Pyomo solver the engine path uses."""
import importlib.util
import types

import pytest

import solvers
import solvers.kernels.pyomo_model as pm
from cbs_opt import solve
from cbs_opt.instances import random_problem
from solvers import EngineError


class _FailingSolver:
    def __init__(self, exc):
        self.exc = exc

    def available(self):
        return True

    def solve(self, model, **kwargs):
        raise self.exc


@pytest.fixture
def prob():
    return random_problem(6, 3, 3, seed=0)


@pytest.mark.parametrize("engine,exc,hint", [
    ("gurobi", Exception("Model too large for size-limited license; visit https://gurobi.com/unrestricted"),
     "full licence"),
    ("scip", Exception("SCIP: error in LP solver!"), "larger damping"),
    ("gurobi", RuntimeError("something odd"), "engine='highs'"),
])
def test_engine_failure_is_engine_error(prob, monkeypatch, engine, exc, hint):
    monkeypatch.setattr(pm, "_engine", lambda name: _FailingSolver(exc))
    monkeypatch.setattr(pm, "_solve_without_fd_capture", lambda opt, model, kwargs: opt.solve(model, **kwargs))
    with pytest.raises(EngineError) as info:
        solve(prob, "miqp", engine=engine)
    err = info.value
    assert err.engine == engine and isinstance(err, solvers.SolverError) and isinstance(err, solvers.CbsOptError)
    text = str(err)
    assert text.startswith(f"engine {engine!r} failed:") and str(exc) in text
    assert hint in text and "engine='highs'" in text


def test_engine_without_solution_is_engine_error(prob, monkeypatch):
    class _NoSolution(_FailingSolver):
        def solve(self, model, **kwargs):
            return types.SimpleNamespace(incumbent_objective=None, termination_condition="error")

    monkeypatch.setattr(pm, "_engine", lambda name: _NoSolution(None))
    with pytest.raises(EngineError, match="'gurobi' failed: returned no solution.*licence.*engine='highs'"):
        solve(prob, "miqp", engine="gurobi")


def test_engine_availability_probe_failure_is_engine_error(prob, monkeypatch):
    pytest.importorskip("pyomo")

    class _Broken:
        def available(self):
            raise Exception("license check crashed")

    import pyomo.contrib.solver.common.factory as factory
    monkeypatch.setattr(factory, "SolverFactory", lambda name: _Broken())
    real_find_spec = importlib.util.find_spec
    # pretend pyscipopt is installed (the probe, not the package, is what fails here)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "pyscipopt" else real_find_spec(name, *a))
    with pytest.raises(EngineError, match="'scip' failed: Exception: license check crashed"):
        solve(prob, "miqp", engine="scip")


def test_keyboard_interrupt_is_not_wrapped(prob, monkeypatch):
    monkeypatch.setattr(pm, "_engine", lambda name: _FailingSolver(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        solve(prob, "miqp", engine="gurobi")
