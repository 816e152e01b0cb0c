"""The ``cbs-opt`` command: every subcommand through ``cbs_opt.cli.main``, bad input as one-line errors
with a non-zero exit, and the installed console script once through a subprocess."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import solvers
from solvers import BackendResult, Status
from cbs_opt.cli import main
from cbs_opt.instances import random_problem


@pytest.fixture
def saved_problem(tmp_path) -> Path:
    path = tmp_path / "block.npz"
    random_problem(10, 6, 4, seed=3, family="cancelling").save(path)
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("cbs-opt: error: ")
    return err[0]


# ---- solve ----------------------------------------------------------------------------------------
def test_solve_prints_the_solution_and_saves_it(saved_problem, tmp_path, capsys):
    out = tmp_path / "sol.npz"
    assert main(["solve", str(saved_problem), "--solver", "enumerate", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "status     optimal" in text and "pruned     4 of 10" in text
    from cbs_opt import Problem
    prob = Problem.load(saved_problem)
    with np.load(out) as sol:
        assert sol["pruned"].size == 4 and sol["mask"].sum() == 6
        assert float(sol["objective"]) == pytest.approx(prob.objective(sol["pruned"]), rel=1e-12)
        assert float(sol["objective"]) == pytest.approx(solvers.solve(prob, "enumerate").objective, rel=1e-12)


def test_solve_overrides_budget_objective_and_passes_options(saved_problem, capsys):
    assert main(["solve", str(saved_problem), "--solver", "greedy_swap", "--sparsity", "0.5", "--objective",
                 "selection", "--option", "init=magnitude", "--seed", "2", "--time-limit", "30", "-q"]) == 0
    text = capsys.readouterr().out
    assert "pruned     5 of 10" in text and "(selection)" in text


@pytest.mark.parametrize("argv, fragment", [
    (["solve", "{p}", "--solver", "nope"], "unknown solver 'nope'"),
    (["solve", "missing.npz"], "not found"),
    (["solve", "{p}", "--sparsity", "1.5"], "sparsity must be in [0, 1]"),
    (["solve", "{p}", "--n-prune", "11"], "--n-prune must be in [0, 10]"),
    (["solve", "{p}", "--solver", "enumerate", "--option", "bogus=1"], "unknown option(s) bogus"),
    (["solve", "{p}", "--option", "noequals"], "key=value"),
    (["solve", "{p}", "--time-limit", "-1"], "positive number"),
])
def test_solve_bad_input_is_a_one_line_error(saved_problem, capsys, argv, fragment):
    argv = [a.replace("{p}", str(saved_problem)) for a in argv]
    assert main(argv) == 2
    assert fragment in one_line_error(capsys)


def test_a_file_that_is_not_a_problem(tmp_path, capsys):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    assert main(["solve", str(tmp_path / "other.npz")]) == 2
    assert "not a cbs-opt problem file" in one_line_error(capsys)


# ---- study ----------------------------------------------------------------------------------------
def test_study_from_flags_writes_the_report(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["study", "--family", "cancelling", "--size", "8", "--size", "10", "--n-samples", "5",
                 "--solver", "obs", "--solver", "enumerate", "--solver", "miqp:engine=highs",
                 "--sparsity", "0.5", "--jobs", "1", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    for name in ("report.md", "report.html", "records.csv", "records.json", "objective_vs_sparsity.png",
                 "optimality_gap.png", "time_vs_size.png"):
        assert (out / name).exists(), name
    records = json.loads((out / "records.json").read_text())["records"]
    assert len(records) == 2 * 3
    assert {r["solver"] for r in records} == {"obs", "enumerate", "miqp[highs]"}
    assert all(r["status"] == "optimal" for r in records if r["solver"] != "obs")


def test_study_from_a_toml_spec(tmp_path, capsys):
    random_problem(8, 4, 0, seed=5).save(tmp_path / "b.npz")
    (tmp_path / "s.toml").write_text(
        '[study]\nsparsities = [0.25, 0.5]\n\n[[solvers]]\nname = "enumerate"\n\n[[solvers]]\nname = "magnitude"\n'
        '\n[[instances]]\nkind = "file"\npaths = ["b.npz"]\n')
    assert main(["study", "--spec", str(tmp_path / "s.toml"), "--jobs", "1", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "| enumerate | yes | 2 |" in out and "validation passed: 4 runs" in out


def test_study_with_a_lying_backend_exits_1(tmp_path, capsys):
    def liar(problem, *, seed, time_limit, progress):
        pruned = np.arange(problem.n_prune)
        return BackendResult(pruned, Status.OPTIMAL, objective=problem.objective(pruned))

    solvers.register("cli_liar", liar, exact=True)
    try:
        code = main(["study", "--family", "lowrank", "--size", "8", "--solver", "enumerate", "--solver",
                     "cli_liar", "--jobs", "1", "--out", str(tmp_path), "-q"])
    finally:
        solvers.unregister("cli_liar")
    assert code == 1
    err = capsys.readouterr().err
    assert "false_optimal" in err and "cbs-opt: error: study failed validation" in err
    assert "FAILED" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("argv, fragment", [
    (["study", "--family", "lowrank", "--solver", "nope"], "unknown solver 'nope'"),
    (["study", "--family", "lowrank", "--sparsity", "2"], "sparsity must be in [0, 1]"),
    (["study", "--spec", "missing.toml"], "study spec not found"),
    (["study", "--problem", "missing.npz"], "not found"),
    (["study", "--family", "nofamily"], "family must be one of"),
    (["study", "--jobs", "0"], "positive integer"),
    (["study", "--solver", "miqp:engine=cplex", "--family", "lowrank", "--size", "6", "-q", "--jobs", "1"],
     "engine must be one of"),
])
def test_study_bad_input_is_a_one_line_error(capsys, argv, fragment):
    code = main(argv)
    if "cplex" in " ".join(argv):  # a bad option value surfaces when the backend runs: a failed run
        assert code == 1
        assert fragment in capsys.readouterr().err
        return
    assert code == 2
    assert fragment in one_line_error(capsys)


def test_bad_toml_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("[study\nsparsities = ")
    assert main(["study", "--spec", str(tmp_path / "bad.toml")]) == 2
    assert "not valid TOML" in one_line_error(capsys)


# ---- prune ----------------------------------------------------------------------------------------
def test_prune_digits_checkpoint(tmp_path, capsys):
    from cbs_opt.digits import digits_model, accuracy

    model, data = digits_model()
    torch.save(model.state_dict(), tmp_path / "digits.pt")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "digits", "--checkpoint", str(tmp_path / "digits.pt"), "--sparsity", "0.5",
                 "--solver", "obs", "--n-samples", "100", "--blocks", "row", "--out", str(out), "-q"]) == 0
    assert "sparsity 0.5000" in capsys.readouterr().out
    state = torch.load(out / "pruned.pt", weights_only=True)
    masks = torch.load(out / "masks.pt", weights_only=True)
    assert set(state) == {"fc1.weight", "fc2.weight"}
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == 1184 - 592
    for name, mask in masks.items():
        assert torch.all(state[name][~mask] == 0)
    summary = json.loads((out / "prune_summary.json").read_text())
    model.load_state_dict(state)
    assert summary["pruned_accuracy"] == pytest.approx(accuracy(model, data.x_test, data.y_test))
    assert summary["pruned_accuracy"] > 0.8  # CBS-U at 50 % keeps the net working
    assert "test accuracy" in (out / "prune_report.md").read_text()


def test_prune_mlpnet_on_tiny_idx_files(tmp_path, capsys):
    """The MLPNet path end to end on a synthetic 64-image IDX set (no reference data needed)."""
    import gzip
    import struct

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=64, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 2051, 64, 28, 28) + images.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">II", 2049, 64) + labels.tobytes())
    torch.manual_seed(0)
    state = {"fc1.weight": 0.05 * torch.randn(40, 784), "fc2.weight": 0.2 * torch.randn(20, 40),
             "fc3.weight": 0.2 * torch.randn(10, 20)}
    torch.save(state, tmp_path / "mlp.pt")
    out = tmp_path / "out"
    assert main(["prune", "--model", "mlpnet", "--checkpoint", str(tmp_path / "mlp.pt"), "--data", str(tmp_path),
                 "--sparsity", "0.9", "--solver", "magnitude", "--blocks", "layer", "--n-samples", "32",
                 "--out", str(out), "-q"]) == 0
    masks = torch.load(out / "masks.pt", weights_only=True)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.9 * 32360)


@pytest.mark.parametrize("argv, fragment", [
    (["prune", "--sparsity", "1.2"], "sparsity must be in [0, 1]"),
    (["prune", "--model", "mlpnet", "--sparsity", "0.5"], "needs --checkpoint"),
    (["prune", "--checkpoint", "missing.pt", "--sparsity", "0.5"], "checkpoint not found"),
    (["prune", "--sparsity", "0.5", "--solver", "nope"], "unknown solver 'nope'"),
    (["prune", "--sparsity", "0.5", "--blocks", "rows"], "--blocks must be"),
    (["prune", "--model", "resnet", "--sparsity", "0.5"], "unknown --model 'resnet'"),
])
def test_prune_bad_input_is_a_one_line_error(capsys, argv, fragment):
    assert main(argv) == 2
    assert fragment in one_line_error(capsys)


def test_prune_checkpoint_of_another_architecture(tmp_path, capsys):
    torch.save({"fc1.weight": torch.zeros(3, 3)}, tmp_path / "odd.pt")
    assert main(["prune", "--checkpoint", str(tmp_path / "odd.pt"), "--sparsity", "0.5"]) == 2
    assert "does not fit the architecture" in one_line_error(capsys)


# ---- solvers, help, entry point -------------------------------------------------------------------
def test_solvers_lists_backends_and_engines(capsys):
    assert main(["solvers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(solvers.backends()) == set(rows)
    assert rows["enumerate"]["exact"] and rows["enumerate"]["available"]
    assert not rows["magnitude"]["exact"] and rows["magnitude"]["engines"] == []
    engines = {e["engine"]: e for e in rows["miqp"]["engines"]}
    assert engines["highs"]["available"]
    assert {"gurobi", "scip"} <= set(engines)  # listed whether usable here or not, with an install hint
    assert all(e["available"] or e["install"] for e in engines.values())
    assert main(["solvers"]) == 0
    assert "miqp" in capsys.readouterr().out


def test_unavailable_backend_is_listed_with_its_hint(capsys, saved_problem):
    solvers.register("needs_missing", lambda problem, *, seed, time_limit, progress: None,
                     requires=("surely_not_a_module_xyz",), install_hint="pip install xyz")
    try:
        assert main(["solvers"]) == 0
        assert "install: pip install xyz" in capsys.readouterr().out
        capsys.readouterr()
        assert main(["solve", str(saved_problem), "--solver", "needs_missing", "-q"]) == 2
        assert "pip install xyz" in one_line_error(capsys)
    finally:
        solvers.unregister("needs_missing")


def test_help_and_no_command(capsys):
    assert main(["--help"]) == 0
    assert "study" in capsys.readouterr().out
    for sub in ("study", "solve", "prune", "solvers"):
        assert main([sub, "--help"]) == 0
        assert "--" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in one_line_error(capsys)


def test_installed_console_script(tmp_path, saved_problem):
    exe = shutil.which("cbs-opt") or str(Path(sys.executable).with_name("cbs-opt"))
    if not Path(exe).exists():
        pytest.fail("the cbs-opt console script is not installed (pip install -e .)")
    ok = subprocess.run([exe, "solve", str(saved_problem), "--solver", "obs", "-q"], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and "solver     obs" in ok.stdout
    for argv, fragment in [(["solve", str(saved_problem), "--solver", "nope"], "unknown solver"),
                           (["solve", str(saved_problem), "--sparsity", "3"], "sparsity must be in [0, 1]")]:
        bad = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cbs-opt: error:") and fragment in lines[0], bad.stderr
        assert "Traceback" not in bad.stderr
