"""The study harness: records, cross-checks (including deliberately lying backends), parallel runs,
persistence, spec files and the report."""
from __future__ import annotations

import csv
import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import solvers
from solvers import BackendResult, Status
from cbs_opt import Problem
from cbs_opt.instances import random_problem
from cbs_opt.study import (RECORD_FIELDS, Instance, Record, SolverSpec, Study, Tolerances, file_instances,
                           generated_instances, parse_solver_spec, run_study, sliced_instances,
                           study_from_dict, validate)

BASIC = [SolverSpec("magnitude"), SolverSpec("obs"), SolverSpec("greedy_swap"), SolverSpec("enumerate")]


def brute_force(problem: Problem) -> float:
    """The optimum by evaluating every pruned set with the problem's own objective (independent of
    the enumerate backend's vectorised formulas)."""
    return min(problem.objective(list(c)) for c in itertools.combinations(range(problem.p), problem.n_prune))


@pytest.fixture(scope="module")
def tiny_result():
    instances = generated_instances(("lowrank", "cancelling"), sizes=(7, 9), n_samples=5)
    study = Study(instances, BASIC, sparsities=(0.3, 0.6), objectives=("update", "selection"))
    return study, run_study(study, jobs=1)


def test_tiny_study_yields_one_record_per_cell(tiny_result):
    study, result = tiny_result
    assert len(result.records) == 4 * 4 * 2 * 2
    assert result.ok and not result.failures and not result.errors
    cells = {(r.instance, r.solver, r.sparsity, r.objective_kind) for r in result.records}
    assert len(cells) == len(result.records)
    for r in result.records:
        assert set(r.as_dict()) == set(RECORD_FIELDS)
        assert r.m == int(round(r.sparsity * r.p)) and r.N == 5
        assert r.objective is not None and r.seconds is not None and r.seconds >= 0
        assert r.peak_memory_mb is not None and r.peak_memory_mb > 0
        assert r.gap is not None and r.gap >= 0.0
        assert r.reference_kind == "optimum" and r.valid and r.flags == ""


def test_exact_rows_are_optimal_and_match_brute_force(tiny_result):
    study, result = tiny_result
    problems = {i.name: i.problem for i in study.instances}
    for r in result.records:
        if r.solver != "enumerate":
            continue
        assert r.exact and r.status == "optimal" and r.gap == 0.0
        prob = problems[r.instance].with_n_prune(r.m).with_objective(r.objective_kind)
        assert r.objective == pytest.approx(brute_force(prob), rel=1e-9, abs=1e-12)
        assert r.reference == pytest.approx(r.objective, rel=1e-12)
    # a heuristic's gap is exactly its distance to the proven optimum
    by_cell = {(r.instance, r.sparsity, r.objective_kind, r.solver): r for r in result.records}
    for (inst, s, kind, name), r in by_cell.items():
        opt = by_cell[(inst, s, kind, "enumerate")].objective
        assert r.objective >= opt - 1e-12 * max(1.0, abs(opt))
        if r.gap > 0:
            assert r.gap == pytest.approx((r.objective - opt) / abs(opt), rel=1e-9)


def test_cancelling_family_shows_a_heuristic_gap(tiny_result):
    # the cancelling pairs defeat one-at-a-time scoring: the study must expose a positive gap somewhere
    _, result = tiny_result
    gaps = [r.gap for r in result.records if r.family == "cancelling" and r.solver in ("magnitude", "obs")]
    assert max(gaps) > 0.01


def test_process_pool_and_any_executor_give_the_same_records(tiny_result):
    study, serial = tiny_result
    small = Study(study.instances[:2], BASIC, sparsities=(0.3, 0.6), objectives=("update", "selection"))
    pooled = run_study(small, jobs=2)
    with ThreadPoolExecutor(2) as pool:
        threaded = run_study(small, executor=pool)
    expected = {(r.instance, r.solver, r.sparsity, r.objective_kind): r.objective for r in serial.records
                if r.instance in {i.name for i in small.instances}}
    for result in (pooled, threaded):
        assert result.ok
        assert [r.run_id for r in result.records] == list(range(len(expected)))  # submission order
        got = {(r.instance, r.solver, r.sparsity, r.objective_kind): r.objective for r in result.records}
        assert got == expected
    assert pooled.meta["executor"] == "ProcessPoolExecutor"


# ---- deliberately broken backends ----------------------------------------------------------------
@pytest.fixture
def liars():
    names = []

    def add(name, exact=False):
        def deco(func):
            solvers.register(name, func, description="deliberately broken (test)", exact=exact)
            names.append(name)
            return func
        return deco

    @add("liar_objective")
    def _lie_objective(problem, *, seed, time_limit, progress):
        pruned = np.arange(problem.n_prune)
        return BackendResult(pruned, Status.FEASIBLE, objective=0.5 * problem.objective(pruned))

    @add("liar_bound")
    def _lie_bound(problem, *, seed, time_limit, progress):
        pruned = np.argsort(np.abs(problem.weights), kind="stable")[:problem.n_prune]
        value = problem.objective(pruned)
        return BackendResult(pruned, Status.FEASIBLE, bound=2.0 * value + 1.0, objective=value)

    @add("liar_optimal", exact=True)
    def _lie_optimal(problem, *, seed, time_limit, progress):
        # the *largest* weights, claimed optimal
        pruned = np.argsort(-np.abs(problem.weights), kind="stable")[:problem.n_prune]
        return BackendResult(pruned, Status.OPTIMAL, objective=problem.objective(pruned))

    @add("crasher")
    def _crash(problem, *, seed, time_limit, progress):
        raise RuntimeError("backend exploded")

    yield add
    for name in names:
        solvers.unregister(name)


def _liar_study(*names):
    instances = generated_instances(("lowrank",), sizes=(8,), n_samples=6, seeds=(0, 1))
    specs = [SolverSpec("enumerate")] + [SolverSpec(n) for n in names]
    return Study(instances, specs, sparsities=(0.5,))


@pytest.mark.parametrize("liar, check", [("liar_objective", "reported_objective_mismatch"),
                                         ("liar_bound", "bound_above_objective"),
                                         ("liar_optimal", "false_optimal")])
def test_a_lying_backend_is_caught(liars, liar, check):
    result = run_study(_liar_study("obs", liar), jobs=1)
    assert not result.ok
    caught = [f for f in result.failures if f.solver == liar]
    assert caught and {f.check for f in caught} == {check}
    assert len(caught) == 2  # once per instance: never averaged away
    for r in result.records:
        assert r.valid == (r.solver != liar), r
        if r.solver == liar:
            assert check in r.flags
    # the lie does not move the reference: the gaps stay measured against the true optimum
    assert all(r.reference_kind == "optimum" for r in result.records)
    assert all(r.gap == 0.0 for r in result.records if r.solver == "enumerate")


def test_a_crashing_backend_is_a_failed_run_not_a_crash(liars):
    result = run_study(_liar_study("crasher"), jobs=1)
    assert not result.ok
    bad = [r for r in result.records if r.solver == "crasher"]
    assert len(result.errors) == len(bad) == 2
    assert all(r.status == "error" and "backend exploded" in r.error and not r.valid for r in bad)
    # every failed run is listed in failures, once, with its error line (never an empty list when not ok)
    assert [f.check for f in result.failures] == ["error", "error"]
    assert {f.instance for f in result.failures} == {r.instance for r in bad}
    assert all(f.solver == "crasher" and "backend exploded" in f.message for f in result.failures)
    assert result.failed_checks == []
    from cbs_opt.report import failure_lines
    assert len(failure_lines(result)) == 2  # each failed run once, not once per list


def test_lying_backend_in_the_report(liars, tmp_path):
    from cbs_opt.report import write_report

    result = run_study(_liar_study("liar_objective"), jobs=1)
    write_report(result, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Validation **FAILED**" in text and "reported_objective_mismatch" in text
    assert "FAILED" in (tmp_path / "report.html").read_text()


# ---- validate() on hand-made records ---------------------------------------------------------------
def _rec(solver, objective, *, status="feasible", bound=None, reported=None, exact=False):
    return Record(run_id=0, instance="x", family="f", p=4, N=2, m=2, sparsity=0.5, damping=0.1,
                  objective_kind="update", solver=solver, backend=solver, engine="", options="{}", exact=exact,
                  seed=0, time_limit=None, status=status, objective=objective, bound=bound,
                  reported_objective=reported)


def test_validate_tolerates_rounding_but_not_real_differences():
    tol = Tolerances()
    recs = [_rec("exact", 1.0, status="optimal", bound=1.0 + 1e-13, exact=True), _rec("h", 1.0 - 1e-12),
            _rec("r", 1.0 + 1e-9, reported=1.0 + 2e-9)]
    assert validate(recs, tol) == []
    assert [r.gap for r in recs] == [0.0, 0.0, 0.0]
    recs = [_rec("exact", 1.0, status="optimal", exact=True), _rec("h", 1.0 - 1e-6)]
    failures = validate(recs, tol)
    assert [f.check for f in failures] == ["false_optimal"]
    assert recs[0].reference_kind == "best_known"  # a refuted optimum is no reference
    assert recs[0].gap == pytest.approx(1e-6, rel=1e-3)


def test_validate_uses_the_lowest_proven_optimum_as_reference():
    recs = [_rec("a", 2.0, status="optimal", exact=True), _rec("b", 3.0), _rec("c", 2.0, status="time_limit",
                                                                              bound=1.5, exact=True)]
    assert validate(recs) == []
    assert all(r.reference == 2.0 and r.reference_kind == "optimum" for r in recs)
    assert recs[1].gap == pytest.approx(0.5)


# ---- inputs, sources, persistence -------------------------------------------------------------------
def test_study_rejects_bad_settings_before_running():
    inst = generated_instances(sizes=(6,))
    with pytest.raises(solvers.UnknownSolverError, match="nope"):
        run_study(Study(inst, [SolverSpec("nope")]), jobs=1)
    with pytest.raises(TypeError, match="bogus"):
        run_study(Study(inst, [SolverSpec("enumerate", {"bogus": 1})]), jobs=1)
    with pytest.raises(ValueError, match="sparsities"):
        run_study(Study(inst, BASIC, sparsities=(1.5,)), jobs=1)
    with pytest.raises(ValueError, match="unique"):
        run_study(Study(inst, [SolverSpec("obs"), SolverSpec("obs")]), jobs=1)
    with pytest.raises(ValueError, match="jobs"):
        run_study(Study(inst, BASIC), jobs=0)
    with pytest.raises(ValueError, match="objectives"):
        run_study(Study(inst, BASIC, objectives=("loss",)), jobs=1)


def test_parse_solver_spec():
    spec = parse_solver_spec("miqp:engine=scip,node_limit=10,root_relaxation=false")
    assert spec.solver == "miqp" and spec.options == {"engine": "scip", "node_limit": 10, "root_relaxation": False}
    assert parse_solver_spec("miqp:engine=gurobi").name == "miqp[gurobi]"
    assert parse_solver_spec("obs").name == "obs"
    with pytest.raises(ValueError, match="key=value"):
        parse_solver_spec("miqp:engine")


def test_settings_grid_dampings_time_limits_max_p():
    inst = generated_instances(sizes=(6, 10), n_samples=4)
    study = Study(inst, [SolverSpec("obs"), SolverSpec("enumerate", max_p=6, label="enum-small")],
                  sparsities=(0.5,), dampings=(None, 0.5), time_limits=(None, 30.0), seeds=(0, 3))
    result = run_study(study, jobs=1)
    # obs: 2 instances × 2 dampings × 2 limits × 2 seeds; enumerate only on p=6
    assert sum(r.solver == "obs" for r in result.records) == 16
    assert {r.p for r in result.records if r.solver == "enum-small"} == {6}
    assert {r.damping for r in result.records} == {1e-3, 0.5}
    assert {r.time_limit for r in result.records} == {None, 30.0} and {r.seed for r in result.records} == {0, 3}
    # a larger damping changes the instance, so the optimum changes with it
    opt = {r.damping: r.objective for r in result.records
           if r.solver == "enum-small" and r.seed == 0 and r.time_limit is None}
    assert opt[0.5] > opt[1e-3]
    assert result.ok


def test_file_and_sliced_instances(tmp_path):
    prob = random_problem(10, 6, 3, seed=4)
    prob.save(tmp_path / "block.npz")
    (inst,) = file_instances([tmp_path / "block.npz"])
    assert inst.name == "block" and inst.family == "file" and inst.problem.p == 10
    sliced = sliced_instances(inst, (4, 6), start=2)
    assert [s.problem.p for s in sliced] == [4, 6]
    np.testing.assert_array_equal(sliced[0].problem.weights, prob.weights[2:6])
    sub = sliced[1].problem.with_n_prune(2)
    full_F = prob.curvature.dense()[2:8, 2:8]
    np.testing.assert_allclose(sub.curvature.dense(), full_F, rtol=1e-12)
    with pytest.raises(ValueError, match="sizes"):
        sliced_instances(inst, (11,))
    with pytest.raises(TypeError):
        Instance("x", "not a problem")


def test_save_writes_csv_and_json(tiny_result, tmp_path):
    _, result = tiny_result
    paths = result.save(tmp_path)
    with open(paths["records.csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.records) and list(rows[0]) == RECORD_FIELDS
    assert float(rows[0]["objective"]) == pytest.approx(result.records[0].objective)
    payload = json.loads(paths["records.json"].read_text())
    assert len(payload["records"]) == len(result.records) and payload["failures"] == []
    assert payload["meta"]["runs"] == len(result.records)


def test_spec_dict_builds_the_same_grid(tmp_path):
    random_problem(8, 5, 0, seed=1).save(tmp_path / "saved.npz")
    spec = {"study": {"title": "t", "sparsities": [0.25, 0.5], "objectives": ["selection"], "seeds": [2],
                      "reported_rtol": 1e-4},
            "solvers": [{"name": "enumerate"}, "obs", {"name": "miqp", "options": {"engine": "highs"},
                                                      "label": "bnb"}],
            "instances": [{"kind": "generated", "families": ["identity"], "sizes": [6]},
                          {"kind": "file", "paths": ["saved.npz"]}]}
    study = study_from_dict(spec, base_dir=tmp_path)
    assert [s.name for s in study.solvers] == ["enumerate", "obs", "bnb"]
    assert [i.name for i in study.instances] == ["identity-p6-s0", "saved"]
    assert study.tolerances.reported_rtol == 1e-4 and study.seeds == (2,)
    result = run_study(study, jobs=1)
    assert len(result.records) == 2 * 3 * 2 and result.ok
    assert all(r.status == "optimal" for r in result.records if r.solver in ("enumerate", "bnb"))
    for bad, match in [({"oops": {}}, "top-level"), ({"study": {"sparsity": [0.5]}}, r"\[study\]"),
                       ({"instances": [{"kind": "zoo"}]}, "kind"),
                       ({"solvers": [{"label": "x"}]}, "name")]:
        with pytest.raises(ValueError, match=match):
            study_from_dict(bad)


def test_report_writes_tables_and_plots(tmp_path):
    from cbs_opt.report import write_report

    base = generated_instances(("cancelling",), sizes=(12,), n_samples=6)[0]
    ladder = [Instance(i.name, i.problem, "cancelling-ladder") for i in sliced_instances(base, (6, 8, 10))]
    study = Study(generated_instances(("lowrank", "cancelling"), sizes=(8,), n_samples=5) + ladder,
                  BASIC + [SolverSpec("relaxation")], sparsities=(0.25, 0.5, 0.75))
    result = run_study(study, jobs=1)
    assert result.ok, result.failures
    paths = write_report(result, tmp_path, command="cbs-opt study (test)")
    for name in ("report.md", "report.html", "records.csv", "records.json", "objective_vs_sparsity.png",
                 "optimality_gap.png", "time_vs_size.png"):
        assert (tmp_path / name).exists() and (tmp_path / name).stat().st_size > 0, name
    assert "accuracy_vs_sparsity.png" not in paths  # no network part in this study
    assert (tmp_path / "objective_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report.md").read_text()
    assert "Validation **PASSED**" in text and "| greedy_swap |" in text and "![time_vs_size.png]" in text
    html = (tmp_path / "report.html").read_text()
    assert "<img src='optimality_gap.png'" in html and "<table>" in html


def test_network_study_prunes_the_digits_net_and_cross_checks_its_blocks():
    from cbs_opt.study import digits_network_study

    net = digits_network_study([SolverSpec("magnitude"), SolverSpec("enumerate")], (0.5,), n_samples=100)
    study = Study(generated_instances(sizes=(6,)), [SolverSpec("obs")], network=net)
    result = run_study(study, jobs=1)
    assert result.ok, result.failures
    by_solver = {r.solver: r for r in result.network}
    assert set(by_solver) == {"magnitude", "enumerate"}
    for r in by_solver.values():
        assert r.n_blocks == 74 and r.statuses.startswith("feasible" if r.solver == "magnitude" else "optimal")
        assert 0.9 < r.dense_value <= 1.0 and 0.0 <= r.value <= r.dense_value + 0.02
    # block by block the exact solver is the reference: gap 0 for it, >= 0 for magnitude
    blocks = [b for b in result.network_blocks if b.solver == "enumerate"]
    assert len(blocks) == 74 and all(b.gap == 0.0 and b.reference_kind == "optimum" for b in blocks)
    assert sum(b.gap > 0 for b in result.network_blocks if b.solver == "magnitude") > 10
    assert by_solver["enumerate"].total_objective < by_solver["magnitude"].total_objective
    assert by_solver["enumerate"].value > by_solver["magnitude"].value  # and it shows in the accuracy
