"""miqp: proven optimal on every instance enumeration can check; engines agree; export parses."""
from __future__ import annotations

import numpy as np
import pytest

from cbs_opt import Problem
from cbs_opt.instances import FAMILIES, random_problem
from solvers import SolverUnavailableError, solve
from solvers.exact_core import make_oracle
from solvers.miqp import build_model, export_model

REL = 1e-7


def _close(a, b):
    return abs(a - b) <= REL * max(abs(b), 1e-12)


def _check_exact(prob, **options):
    ref = solve(prob, "enumerate")
    sol = solve(prob, "miqp", **options)
    assert sol.status == "optimal", (prob, sol)
    assert _close(sol.objective, ref.objective), (prob, sol.objective, ref.objective)
    assert sol.bound <= sol.objective + 1e-9 * abs(sol.objective) + 1e-15
    assert sol.bound <= ref.objective + 1e-9 * abs(ref.objective) + 1e-15
    return sol, ref


CASES = [(fam, obj, seed) for fam in FAMILIES for obj in ("update", "selection") for seed in range(6)]


@pytest.mark.parametrize("family,objective,seed", CASES)
def test_matches_enumeration(family, objective, seed):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(6, 15))
    sparsity = [0.25, 0.5, 0.75, 0.9][seed % 4]
    prob = random_problem(p, seed=seed, family=family, objective=objective, sparsity=sparsity,
                          gradient=seed % 2 == 1, n_samples=None if seed % 3 else 2 * p)
    _check_exact(prob)


@pytest.mark.parametrize("objective", ["update", "selection"])
@pytest.mark.parametrize("dense", [False, True])
def test_larger_instance_p18(objective, dense):
    _check_exact(random_problem(18, seed=3, objective=objective, sparsity=0.5, dense=dense))


@pytest.mark.parametrize("n_prune", [0, 1, 11, 12])
def test_degenerate_budgets(n_prune):
    for objective in ("update", "selection"):
        _check_exact(random_problem(12, n_prune=n_prune, seed=1, objective=objective, gradient=True))


def test_singular_undamped_falls_back_to_monotone_bound():
    rng = np.random.default_rng(0)
    prob = Problem(rng.normal(size=10), rng.normal(size=(4, 10)), damping=0.0, n_prune=5)
    sol, _ = _check_exact(prob)
    assert sol.info["bound_kind"] == "monotone"


def test_oracle_is_exact_on_binary_points_and_tangents_are_valid():
    prob = random_problem(10, seed=4, family="cancelling", gradient=True)
    oracle = make_oracle(prob)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pruned = np.sort(rng.choice(10, 5, replace=False))
        z = np.ones(10)
        z[pruned] = 0
        value, _ = oracle.cut(z)
        assert _close(value + oracle.offset, prob.objective(pruned))
        zf = rng.uniform(size=10)
        vf, gf = oracle.cut(zf)
        assert vf + gf @ (z - zf) <= value + 1e-12 * abs(value)


def test_time_limit_is_honest():
    prob = random_problem(40, seed=0, sparsity=0.75)
    sol = solve(prob, "miqp", time_limit=0.5, root_relaxation=False)
    assert sol.status in ("time_limit", "optimal")
    assert sol.seconds < 5
    assert sol.bound <= sol.objective + 1e-12
    if sol.status == "time_limit":
        assert sol.bound < sol.objective
    node = solve(prob, "miqp", node_limit=3, root_relaxation=False)
    assert node.status == "iteration_limit" and node.bound <= node.objective


def test_bad_options():
    prob = random_problem(6, seed=0)
    with pytest.raises(ValueError, match="engine"):
        solve(prob, "miqp", engine="cplex")
    with pytest.raises(ValueError, match="rel_gap"):
        solve(prob, "miqp", rel_gap=2.0)
    with pytest.raises(ValueError, match="node_limit"):
        solve(prob, "miqp", node_limit=0)
    with pytest.raises(ValueError, match="formulation"):
        build_model(prob, formulation="milp")


def test_unavailable_engine_names_extra(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gurobipy" else real(name, *a))
    with pytest.raises(SolverUnavailableError, match=r"cbs-opt\[gurobi\]"):
        solve(random_problem(6, seed=0), "miqp", engine="gurobi")


@pytest.mark.parametrize("engine", ["gurobi", "scip"])
@pytest.mark.parametrize("objective,formulation", [("update", "auto"), ("update", "dense"),
                                                   ("selection", "auto"), ("selection", "milp")])
def test_engines_agree_with_highs(engine, objective, formulation):
    pytest.importorskip({"gurobi": "gurobipy", "scip": "pyscipopt"}[engine])
    for seed in range(2):
        prob = random_problem(10, seed=seed, objective=objective, gradient=seed == 1)
        ours = solve(prob, "miqp")
        theirs = solve(prob, "miqp", engine=engine, formulation=formulation, time_limit=30)
        assert theirs.status == "optimal"
        # the engines solve the big-M model to their own tolerances (1e-6 feasibility)
        assert abs(theirs.objective - ours.objective) <= 1e-6 * max(abs(ours.objective), 1e-9)
        assert theirs.bound <= ours.objective + 1e-6 * abs(ours.objective)


@pytest.mark.parametrize("suffix", [".lp", ".mps"])
@pytest.mark.parametrize("objective", ["update", "selection"])
def test_export_parses_in_highs(tmp_path, suffix, objective):
    import highspy
    prob = random_problem(8, n_samples=3, seed=2, objective=objective)
    path = export_model(prob, tmp_path / f"model{suffix}")
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    assert h.readModel(str(path)) == highspy.HighsStatus.kOk
    lp = h.getLp()
    # update: x, z (p each) + r (N);  selection: y (p) + r (N)
    expected = 2 * 8 + 3 if objective == "update" else 8 + 3
    names = [n for n in lp.col_names_ if "ONE_VAR_CONSTANT" not in n]
    assert len(names) == expected
    assert sum(1 for t in lp.integrality_ if t == highspy.HighsVarType.kInteger) == 8


def test_export_nl_and_bad_suffix(tmp_path):
    prob = random_problem(6, seed=0, objective="selection")
    path = export_model(prob, tmp_path / "m.nl", formulation="milp")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match=r"\.lp"):
        export_model(prob, tmp_path / "m.txt")


def test_model_build_is_linear_in_nonzeros():
    """The low-rank model has N·p coefficients in r = B(x − w̃), no p² objective terms."""
    prob = random_problem(60, n_samples=5, seed=0)
    model = build_model(prob)
    from pyomo.repn import generate_standard_repn
    repn = generate_standard_repn(model.obj.expr, compute_values=True)
    assert len(repn.quadratic_vars) <= 5 + 60  # r_j² and the damping diagonal only
    assert len(model.r_def) == 5


@pytest.mark.parametrize("dense,gradient", [(False, False), (False, True), (True, False)])
def test_node_reduction_is_exact_and_its_tangents_bound_the_subtree(dense, gradient):
    """c0 + φ_node equals the global cost on every binary point of the node; node tangents stay below it."""
    from solvers.exact_node import NodeReducer
    prob = random_problem(14, seed=2, sparsity=0.5, gradient=gradient, dense=dense)
    oracle = make_oracle(prob)
    reducer = NodeReducer(prob.curvature.dense(), prob.effective_weights)
    rng = np.random.default_rng(1)
    for _ in range(6):
        perm = rng.permutation(14)
        kept, pruned, free = np.sort(perm[:2]), np.sort(perm[2:6]), np.sort(perm[6:])
        node = reducer.reduce(kept, pruned, free)
        n_more = prob.n_keep - kept.size
        zf = rng.uniform(size=free.size)
        vf, gf = node.oracle.cut(zf)
        for _ in range(5):
            zu = np.zeros(free.size)
            zu[rng.choice(free.size, n_more, replace=False)] = 1.0
            z = np.zeros(14)
            z[kept], z[free] = 1.0, zu
            exact = prob.objective(np.flatnonzero(z == 0))
            assert _close(node.c0 + node.oracle.cut(zu)[0] + oracle.offset, exact)
            assert node.c0 + vf + gf @ (zu - zf) + oracle.offset <= exact + 1e-10 * abs(exact)
        assert node.shift >= 0


def test_child_bounds_match_brute_force():
    from solvers.exact_bnb import child_bounds
    rng = np.random.default_rng(0)
    for _ in range(100):
        u = int(rng.integers(2, 9))
        n = int(rng.integers(1, u))
        g = np.round(rng.normal(size=u), 1)  # ties included
        keep, prune = child_bounds(0.5, g, n)
        for j in range(u):
            rest = np.sort(np.delete(g, j))
            assert keep[j] == pytest.approx(0.5 + g[j] + rest[:n - 1].sum())
            assert prune[j] == pytest.approx(0.5 + rest[:n].sum())


@pytest.mark.parametrize("options", [{"node_shift": False}, {"root_relaxation": True}])
def test_option_paths_stay_exact(options):
    for seed in range(3):
        _check_exact(random_problem(13, seed=seed, sparsity=0.75, gradient=seed == 1), **options)


LOW_DAMPING = [(fam, damping, obj, seed) for fam in FAMILIES for damping in (1e-5, 1e-8)
               for obj in ("update", "selection") for seed in range(2)]


@pytest.mark.parametrize("family,damping,objective,seed", LOW_DAMPING)
def test_reduced_cost_fixing_stays_exact_at_low_damping(family, damping, objective, seed):
    """Reduced-cost fixing (issue 14) with tiny dampings, where bounds and costs are differences of nearly
    equal numbers: best-first (with and without node reductions) still equals enumeration, bounds ≤ optimum."""
    import solvers.exact_bnb as eb
    assert eb.REDUCED_COST_FIXING
    p = 11 + seed
    prob = random_problem(p, seed=seed, family=family, objective=objective, damping=damping,
                          sparsity=[0.5, 0.75][seed], gradient=seed == 1, n_samples=None if seed else p // 2)
    for node_shift in (True, False):
        _check_exact(prob, search="best_first", node_shift=node_shift)


# -- the portfolio (leaps-and-bounds and best-first time-sliced, one incumbent) ----------------------------

@pytest.fixture
def tiny_slices(monkeypatch):
    """Slices of about one node each, so every instance switches searches many times."""
    import solvers.miqp as miqp_module
    monkeypatch.setattr(miqp_module, "PORTFOLIO_FIRST_SLICE", 1e-6)
    monkeypatch.setattr(miqp_module, "PORTFOLIO_GROWTH", 1.0)


def _degenerate(seed, p, damping):
    """Identical gradient columns (fc1 background pixels), zero weights, or both; N below or above p."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 2 * p))
    G = rng.normal(size=(n, p))
    w = rng.normal(size=p)
    kind = seed % 3
    if kind in (0, 2):
        G[:, : p // 3] = G[:, [0]] * rng.choice([1.0, -0.5], size=p // 3)   # identical (or scaled) columns
    if kind in (1, 2):
        w[rng.choice(p, size=p // 4, replace=False)] = 0.0
    return Problem(w, G, damping=damping, sparsity=[0.5, 0.75, 0.9, 0.25][seed % 4])


PORTFOLIO_CASES = [(seed, damping) for seed in range(8) for damping in (1e-3, 1e-5, 1e-8)]


@pytest.mark.parametrize("seed,damping", PORTFOLIO_CASES)
def test_portfolio_matches_enumeration_on_degenerate_blocks(tiny_slices, seed, damping):
    rng = np.random.default_rng(100 + seed)
    prob = _degenerate(seed, int(rng.integers(8, 15)), damping)
    sol, _ = _check_exact(prob, search="portfolio")
    assert sol.info["search"] == "portfolio" and sol.info["winner"] in ("leaps", "best_first", "combined")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(3))
def test_portfolio_matches_enumeration_on_random_blocks(tiny_slices, family, seed):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(8, 15))
    prob = random_problem(p, seed=seed, family=family, sparsity=[0.5, 0.75, 0.9][seed],
                          gradient=seed == 1, damping=[1e-3, 1e-5, 1e-8][seed])
    _check_exact(prob, search="portfolio")


def test_portfolio_stopped_early_is_honest(tiny_slices):
    """Node and time limits: the incumbent is a real set, the bound ≤ the optimum, the status says why."""
    prob = _degenerate(8, 14, 1e-5)
    ref = solve(prob, "enumerate")
    for options, status in (({"node_limit": 2}, "iteration_limit"), ({"time_limit": 1e-9}, "time_limit")):
        sol = solve(prob, "miqp", search="portfolio", **options)
        assert sol.status == status, (options, sol)
        assert sol.bound <= ref.objective * (1 + 1e-9) + 1e-15 and sol.objective >= ref.objective * (1 - 1e-9)


def test_portfolio_with_long_slices_proves_and_counts_both_searches(monkeypatch):
    """With slices longer than the whole search, the first search to settle proves the optimum."""
    import solvers.miqp as miqp_module
    monkeypatch.setattr(miqp_module, "PORTFOLIO_FIRST_SLICE", 1e-4)
    prob = random_problem(16, seed=5, sparsity=0.75, n_samples=40, damping=1e-5)
    ref = solve(prob, "enumerate")
    sol = solve(prob, "miqp", search="portfolio")
    assert sol.status == "optimal" and _close(sol.objective, ref.objective)
    assert sol.info["nodes"] == sol.info["leaps_nodes"] + sol.info["bf_nodes"]


@pytest.mark.parametrize("seed", range(3))
def test_best_first_resumed_in_slices_equals_one_run(seed):
    """BestFirst.run(nodes=1) repeated visits the same nodes and proves the same optimum as one run; its bound
    while paused is ≤ the optimum and never decreases; an offered optimal incumbent is kept."""
    from solvers.base import Deadline
    from solvers.exact_bnb import BestFirst, branch_and_bound, initial_incumbent
    prob = random_problem(14, seed=seed, sparsity=0.5, n_samples=7, damping=[1e-3, 1e-5, 1e-8][seed])
    oracle = make_oracle(prob, Deadline(None))
    z0, v0 = initial_incumbent(prob, oracle, np.abs(prob.weights), max_evals=0)
    one = branch_and_bound(prob, oracle, z0, v0, deadline=Deadline(None))
    ref = solve(prob, "enumerate")
    opt = ref.objective - oracle.offset
    assert one.optimal and abs(one.value - opt) <= 1e-7 * abs(opt) + 1e-15
    search = BestFirst(prob, oracle, z0, v0, deadline=Deadline(None))
    last, pauses = -np.inf, 0
    while not search.run(nodes=1):
        pauses += 1
        assert last - 1e-15 <= search.bound() <= opt + 1e-9 * abs(opt) + 1e-15
        last = search.bound()
    res = search.result()
    assert res.optimal and res.nodes == one.nodes and (pauses >= 1 or one.nodes <= 1)
    assert np.array_equal(res.keep, one.keep)
    offered = BestFirst(prob, oracle, z0, v0, deadline=Deadline(None))
    offered.offer(ref.mask, opt)
    offered.offer(~ref.mask, opt + 1.0)       # a worse one changes nothing
    offered.run()
    got = offered.result()
    assert got.optimal and got.value <= opt + 1e-12 and np.array_equal(got.keep, ref.mask)
