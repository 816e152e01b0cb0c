"""Regression tests for the new-user trial (issue 15) through the CLI entry point and the README:
each failed before its fix."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import solvers
from cbs_opt.cli import main
from cbs_opt.instances import random_problem

README = Path(__file__).resolve().parents[1] / "README.md"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("cbs-opt: error: ") and "Traceback" not in err[0]
    return err[0]


# ---- item 1: --time-limit is a run setting, not a solver option -----------------------------------
@pytest.mark.parametrize("solver, blocks", [("greedy_swap", "layer"), ("obs", "layer"), ("miqp", "8"),
                                            ("update_swap", "model")])
def test_prune_time_limit_works_for_every_solver(solver, blocks, tmp_path, capsys):
    code = main(["prune", "--model", "digits", "--sparsity", "0.5", "--solver", solver, "--time-limit", "10",
                 "--n-samples", "50", "--blocks", blocks, "-q"])
    assert code == 0, capsys.readouterr().err
    assert "sparsity 0.5000" in capsys.readouterr().out


# ---- item 6: a file that is not a problem is one line and exit 2 ----------------------------------
def test_solve_truncated_npz_is_one_line_exit_2(tmp_path, capsys):
    good = tmp_path / "block.npz"
    random_problem(10, 6, 4, seed=3).save(good)
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert main(["solve", str(bad)]) == 2
    line = one_line_error(capsys)
    assert "not a cbs-opt problem file" in line


def test_solve_text_file_never_suggests_pickle(tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("hello, I am not an array file\n")
    assert main(["solve", str(text)]) == 2
    line = one_line_error(capsys)
    assert "not a cbs-opt problem file" in line and "pickle" not in line.lower()


def test_solve_names_a_missing_key(tmp_path, capsys):
    path = tmp_path / "nokey.npz"
    np.savez(path, weights=np.ones(4), format=np.str_("cbs-opt-problem-1"))
    assert main(["solve", str(path)]) == 2
    line = one_line_error(capsys)
    assert "not a cbs-opt problem file" in line and "n_prune" in line or "damping" in line


# ---- item 17: the user's own architecture and data by import path ---------------------------------
FACTORY = '''
import torch
from torch import nn

def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3))

def make_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return {"train": (x[:80], y[:80]), "test": (x[80:], y[80:])}

def make_train_only():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 8, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    import sys
    sys.modules.pop("mynet", None)


def test_prune_a_model_factory_with_checkpoint(factory_module, capsys):
    import mynet  # noqa: F401  (the test's own module, importable from the cwd)

    model = mynet.make_model()
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # a checkpoint that differs from the factory's initial weights
    torch.save(model.state_dict(), factory_module / "ckpt.pt")
    out = factory_module / "out"
    assert main(["prune", "--model", "mynet:make_model", "--checkpoint", "ckpt.pt", "--data", "mynet:make_data",
                 "--sparsity", "0.5", "--solver", "obs", "--n-samples", "40", "--blocks", "layer",
                 "--out", str(out), "-q"]) == 0
    state = torch.load(out / "pruned.pt", weights_only=True)
    masks = torch.load(out / "masks.pt", weights_only=True)
    assert set(masks) == {"0.weight", "2.weight"}
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * (96 + 36))
    # the checkpoint's weights were pruned (kept ones moved by CBS-U, so compare the pruned positions only)
    assert torch.all(state["0.weight"][~masks["0.weight"]] == 0)
    summary = json.loads((out / "prune_summary.json").read_text())
    assert summary["dense_accuracy"] is not None and 0 <= summary["pruned_accuracy"] <= 1


def test_prune_a_file_factory_without_test_data(factory_module, capsys):
    assert main(["prune", "--model", "mynet.py:make_model", "--data", "mynet.py:make_train_only",
                 "--sparsity", "0.3", "--solver", "magnitude", "--n-samples", "30", "-q"]) == 0
    assert "n/a (no test data)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["--model", "mynet:nothing", "--data", "mynet:make_data"], "has no attribute 'nothing'"),
    (["--model", "nomodule_xyz:make", "--data", "mynet:make_data"], "cannot import module 'nomodule_xyz'"),
    (["--model", "mynet:make_model"], "needs --data"),
    (["--model", "mynet:make_data", "--data", "mynet:make_data"], "not a torch.nn.Module"),
    (["--model", "resnet"], "unknown --model 'resnet'"),
    (["--model", "mynet:make_model", "--data", "mynet:make_data", "--checkpoint", "nope.pt"], "checkpoint not found"),
])
def test_factory_bad_input_is_one_line(factory_module, capsys, argv, fragment):
    assert main(["prune", *argv, "--sparsity", "0.5", "-q"]) == 2
    assert fragment in one_line_error(capsys)


# ---- item 2: the README's TOML spec runs as written and passes ------------------------------------
def test_readme_toml_spec_runs_and_passes(tmp_path, monkeypatch, capsys):
    spec = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(spec) == 1, "README.md should hold exactly one TOML study spec"
    assert "scip" not in re.sub(r"#.*", "", spec[0]), "keep SCIP out of the documented example"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocks").mkdir()
    random_problem(12, 6, sparsity=0.5, seed=1).save("blocks/fc1_0.npz")
    (tmp_path / "study.toml").write_text(spec[0])
    code = main(["study", "--spec", "study.toml", "--out", "spec_report", "--jobs", "1", "-q"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "spec_report" / "report.md").exists()


# ---- item 2: a run that fails two cross-checks is listed once ------------------------------------
def test_a_failing_run_is_listed_once(tmp_path, capsys):
    def liar(problem, *, seed, time_limit, progress):  # wrong objective AND a false optimality claim
        pruned = np.arange(problem.n_prune)
        return BackendResultCls(pruned, solvers.Status.OPTIMAL, objective=0.5 * problem.objective(pruned))

    BackendResultCls = solvers.BackendResult
    solvers.register("cli_double_liar", liar, exact=True)
    try:
        code = main(["study", "--family", "lowrank", "--size", "8", "--sparsity", "0.5", "--solver", "enumerate",
                     "--solver", "cli_double_liar", "--jobs", "1", "-q"])
    finally:
        solvers.unregister("cli_double_liar")
    assert code == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "cli_double_liar" in ln]
    assert lines, "the failing run must be listed"
    keys = [re.search(r"\] (\S+ \(m=\d+, \w+\))", ln).group(1) for ln in lines]
    assert len(keys) == len(set(keys)), lines  # one line per failing run
    assert any("false_optimal" in ln and "reported_objective_mismatch" in ln for ln in lines)


# ---- item 5: the README never links outside the repository ----------------------------------------
def test_readme_links_stay_inside_the_repository():
    root = README.parent.resolve()
    for target in re.findall(r"\]\(([^)#\s]+)", README.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (root / target).resolve()
        assert resolved.is_relative_to(root), target
        assert resolved.exists(), target
