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


# -- issue 15 item 4: what a backend's answer is worth, consistent with the README table -----------------
def test_backend_kinds_match_the_readme_table():
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| (exact|bound|heuristic|baseline) \|", readme, flags=re.M))
    info = solvers.backends()
    assert {"magnitude", "obs", "enumerate", "miqp", "relaxation", "greedy_swap"} <= set(table)
    for name, kind in table.items():
        assert info[name].kind == kind, name
    assert info["relaxation"].kind == "bound" and not info["relaxation"].exact
    assert info["miqp"].exact and info["enumerate"].exact and not info["greedy_swap"].exact


def test_cli_solvers_does_not_call_relaxation_a_heuristic(capsys):
    from cbs_opt.cli import main
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("relaxation "))
    assert "bound" in line.split() and "heuristic" not in line.split()
    assert "baseline" in next(row for row in out.splitlines() if row.startswith("magnitude ")).split()


def test_register_kind_defaults_and_conflicts():
    @solvers.register("kind_default")
    def _plain(problem, *, seed, time_limit, progress):  # pragma: no cover - never runs
        raise AssertionError

    @solvers.register("kind_exact", exact=True)
    def _exact(problem, *, seed, time_limit, progress):  # pragma: no cover - never runs
        raise AssertionError

    try:
        assert solvers.backends()["kind_default"].kind == "heuristic"
        assert solvers.backends()["kind_default"].budgets == ("total",)
        assert solvers.backends()["kind_exact"].kind == "exact"
        with pytest.raises(solvers.InvalidArgumentError, match="contradicts"):
            solvers.register("kind_conflict", _plain, exact=True, kind="bound")
    finally:
        solvers.unregister("kind_default")
        solvers.unregister("kind_exact")


# -- issue 12 item 4: run settings are not backend options --------------------------------------------------
@pytest.mark.parametrize("name", ["time_limit", "seed", "progress"])
def test_reserved_name_passed_as_an_option(prob, name):
    from solvers.registry import check_options
    with pytest.raises(solvers.ArgumentTypeError, match=f"{name} is a run setting of solve\\(\\), not an option "
                                                        f"of solver 'greedy_swap'"):
        check_options("greedy_swap", {name: 1, "rho": 5})
    # the same mistake through solve(): options=dict(...) holding a run setting
    with pytest.raises(solvers.ArgumentTypeError, match=f"{name} is a run setting"):
        solve(prob, "greedy_swap", options={name: 1})
    check_options("greedy_swap", {"rho": 5})   # genuine options pass


def test_prune_time_limit_with_solver_options_regression():
    """`--time-limit` once failed for every solver with "got multiple values for keyword argument
    'time_limit'": a run setting inside the solver options must get the clear error, a real time limit work."""
    import torch
    from cbs_opt import prune
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    res = prune(model, (x, y), sparsity=0.5, solver="greedy_swap", time_limit=10, n_samples=16)
    assert 0.4 <= res.sparsity <= 0.6
    with pytest.raises(TypeError, match="time_limit is a run setting"):
        prune(model, (x, y), sparsity=0.5, solver="greedy_swap", solver_options={"time_limit": 10}, n_samples=16)


def test_unknown_option_is_argument_type_error(prob):
    with pytest.raises(solvers.ArgumentTypeError, match="unknown option\\(s\\) bogus.*accepted: max_subsets"):
        solve(prob, "enumerate", bogus=1)


def test_cli_solve_time_limit_and_reserved_option(tmp_path, capsys):
    """`cbs-opt solve --time-limit` works; `--option time_limit=…` is one line on stderr with exit 2."""
    from cbs_opt.cli import main
    path = tmp_path / "block.npz"
    random_problem(8, 4, 3, seed=0).save(path)
    assert main(["solve", str(path), "--solver", "greedy_swap", "--time-limit", "10"]) == 0
    capsys.readouterr()
    assert main(["solve", str(path), "--solver", "greedy_swap", "--option", "time_limit=10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "time_limit is a run setting" in err[0] and "Traceback" not in err[0]


def test_solvers_import_no_cbs_opt_and_nothing_private_from_it():
    """Layering (DESIGN §2): importing solvers loads no cbs_opt module, and no solvers module imports a
    private name (``_x``) or a module other than the public package API from cbs_opt."""
    import ast
    import pathlib
    import subprocess
    import sys

    code = "import sys, solvers; bad = [m for m in sys.modules if m.split('.')[0] == 'cbs_opt']; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    root = pathlib.Path(solvers.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cbs_opt":
                names = [a.name for a in node.names]
                if node.module != "cbs_opt" or any(n.startswith("_") for n in names):
                    offenders.append(f"{path.name}: from {node.module} import {', '.join(names)}")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "cbs_opt" for a in node.names):
                offenders.append(f"{path.name}: import {', '.join(a.name for a in node.names)}")
    assert offenders == []


def test_engines_are_registry_entries_with_their_own_availability():
    miqp = solvers.engines("miqp")
    names = [e.name for e in miqp]
    assert names[0] == "highs" and miqp[0].default and {"gurobi", "scip"} <= set(names)
    assert all(isinstance(e, solvers.EngineInfo) and e.backend == "miqp" for e in miqp)
    assert all(e.install_hint for e in miqp)
    assert solvers.engines("magnitude") == []
    with pytest.raises(solvers.UnknownSolverError):
        solvers.engines("no_such_solver")


def test_register_engine_availability_probe_and_errors():
    @solvers.register("engine_demo", kind="baseline")
    def demo(problem, *, seed, time_limit, progress, engine="a"):
        return BackendResult(pruned=np.arange(problem.n_prune), status=Status.FEASIBLE)

    try:
        ok = solvers.register_engine("engine_demo", "a", default=True)
        gone = solvers.register_engine("engine_demo", "b", requires=("no_such_module_xyz",), install_hint="pip install b")
        broken = solvers.register_engine("engine_demo", "c", probe=lambda: 1 / 0)
        picky = solvers.register_engine("engine_demo", "d", probe=lambda: "no licence")
        assert [e.name for e in solvers.engines("engine_demo")] == ["a", "b", "c", "d"]
        assert ok.is_available() and ok.check() is None
        assert not gone.is_available() and gone.check() == ("needs no_such_module_xyz, which is not installed; "
                                                            "install it with: pip install b")
        assert broken.is_available() and broken.check().startswith("ZeroDivisionError")
        assert picky.check() == "no licence"
        prob = random_problem(6, 4, 3, seed=0)
        assert solvers.solve(prob, "engine_demo", engine="c").pruned.size == prob.n_prune  # the probe is not run
        with pytest.raises(solvers.InvalidArgumentError, match=r"engine must be one of \('a', 'b', 'c', 'd'\)"):
            solvers.solve(prob, "engine_demo", engine="z")
        with pytest.raises(solvers.SolverUnavailableError, match="needs no_such_module_xyz.*pip install b"):
            solvers.solve(prob, "engine_demo", engine="b")
        with pytest.raises(solvers.InvalidArgumentError, match="already registered"):
            solvers.register_engine("engine_demo", "a")
        with pytest.raises(solvers.InvalidArgumentError, match="no engine option"):
            solvers.register_engine("magnitude", "x")
        with pytest.raises(solvers.InvalidArgumentError, match="no backend named"):
            solvers.register_engine("nope", "x")
        from cbs_opt.study import engines_of
        assert engines_of("engine_demo") == ["a", "c", "d"]  # importable ones; probe=True would test-solve
    finally:
        solvers.unregister("engine_demo")
    assert "engine_demo" not in solvers.backends()
