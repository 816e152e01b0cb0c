"""Structured budgets (issue 12): the Budget type, Problem's budget arguments, structured layer budgets, and
every backend under N:M and partition budgets against an independent brute force (tests/brute.py)."""
import io
import importlib.util
import itertools
import pickle

import numpy as np
import pytest

import brute
import solvers
from cbs_opt import Problem, solve
from cbs_opt.budget import Budget
from cbs_opt.errors import ArgumentTypeError, InvalidArgumentError, UnsupportedProblemError
from cbs_opt.structured import (check_pattern_mask, check_row_mask, pattern_budget, pattern_groups, row_budget,
                                row_groups, row_slice)


# ---------------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------------
def test_total_budget():
    b = Budget.total(6, 2)
    assert b.kind == "total" and b.n_groups == 1 and b.n_prune == 2 and b.pattern is None
    assert b.groups.tolist() == [0] * 6 and b.counts.tolist() == [2]
    assert b.is_satisfied([0, 5]) and not b.is_satisfied([0]) and not b.is_satisfied([0, 0])
    assert not b.is_satisfied([0, 6])
    with pytest.raises(InvalidArgumentError, match="prunes 3 weights, the budget is 2"):
        b.check([0, 1, 2])


def test_pattern_budget_layout_and_checks():
    b = Budget.pattern(8, "2:4")
    assert b.kind == "partition" and b.pattern == "2:4" and b.n_prune == 4 and b.n_groups == 2
    assert b.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and b.counts.tolist() == [2, 2]
    assert [m.tolist() for m in b.members] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert b.group_sizes.tolist() == [4, 4] and b.keep_counts.tolist() == [2, 2]
    assert b.is_satisfied([0, 3, 4, 5]) and not b.is_satisfied([0, 1, 2, 4])
    with pytest.raises(InvalidArgumentError, match="group 0"):
        b.check([0, 1, 2, 4])
    assert Budget.pattern(8, "1:4").counts.tolist() == [3, 3]
    assert Budget.pattern(8, "4:8").counts.tolist() == [4]
    assert Budget.pattern(8, "0:4").n_prune == 8 and Budget.pattern(8, "4:4").n_prune == 0


@pytest.mark.parametrize("p,pattern,match", [
    (6, "2:4", "divisible by M = 4"), (8, "5:4", "N \\(kept per group\\) must be <= M"),
    (8, "2:0", "M must be >= 1"), (8, "-1:4", "must look like 'N:M'"), (8, "two:four", "must look like"),
    (8, "2:4:8", "must look like"), (8, "", "must look like"),
])
def test_pattern_errors(p, pattern, match):
    with pytest.raises(InvalidArgumentError, match=match):
        Budget.pattern(p, pattern)


def test_pattern_type_error():
    with pytest.raises(ArgumentTypeError, match="pattern must be a string"):
        Budget.pattern(8, 24)


@pytest.mark.parametrize("groups,counts,error,match", [
    ([0, 0, 2, 2], [1, 1, 1], InvalidArgumentError, "id\\(s\\) 1 have no weights"),
    ([0, 0, 1, 1], [1], InvalidArgumentError, "uses ids up to 1"),
    ([0, 0, 1, 1], [1, 1, 1], InvalidArgumentError, "only uses ids 0..1"),
    ([0, -1, 1, 1], [1, 1], InvalidArgumentError, "negative"),
    ([0, 0, 1, 1], [3, 0], InvalidArgumentError, "counts\\[0\\] = 3 is outside \\[0, 2\\]"),
    ([0, 0, 1, 1], [1, -1], InvalidArgumentError, "counts\\[1\\] = -1"),
    ([0.0, 0.0, 1.0, 1.0], [1, 1], ArgumentTypeError, "groups must be integers"),
    ([True, False], [1, 1], ArgumentTypeError, "not booleans"),
    ([0, 0, 1, 1], [1.0, 1.0], ArgumentTypeError, "counts must be integers"),
    ([0, 0, 1, 1], [True, False], ArgumentTypeError, "not booleans"),
    ([[0, 1]], [1, 1], InvalidArgumentError, "1-dimensional"),
    ([], [], InvalidArgumentError, "must not be empty"),
])
def test_partition_validation(groups, counts, error, match):
    with pytest.raises(error, match=match):
        Budget.partition(groups, counts)


def test_budget_is_immutable_hashable_picklable():
    b = Budget.partition([1, 0, 1, 0, 2], [1, 2, 0])
    with pytest.raises(AttributeError):
        b.kind = "total"
    with pytest.raises(ValueError):
        b.counts[0] = 5
    assert b == Budget.partition(np.array([1, 0, 1, 0, 2]), np.array([1, 2, 0]))
    assert hash(b) == hash(pickle.loads(pickle.dumps(b))) and pickle.loads(pickle.dumps(b)) == b
    assert [m.tolist() for m in b.members] == [[1, 3], [0, 2], [4]]
    assert b.with_counts([0, 1, 1]).counts.tolist() == [0, 1, 1] and b.counts.tolist() == [1, 2, 0]
    with pytest.raises(InvalidArgumentError, match="counts\\[2\\] = 2"):
        b.with_counts([0, 1, 2])
    with pytest.raises(InvalidArgumentError, match="3 entries"):
        b.with_counts([0, 1])
    assert Budget.partition([0, 0, 0], [2]).kind == "total"  # one group holding everything is a total budget
    assert Budget.total(4, 1).with_counts(3) == Budget.total(4, 3)
    # counts that leave the N:M meaning drop the pattern text
    assert Budget.pattern(8, "2:4").with_counts([1, 2]).pattern is None


# ---------------------------------------------------------------------------------------------------
# Problem
# ---------------------------------------------------------------------------------------------------
def _wg(p=8, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=p), rng.normal(size=(n, p))


def test_problem_pattern_and_groups():
    w, G = _wg()
    prob = Problem(weights=w, grads=G, damping=1e-3, pattern="2:4")
    assert prob.n_prune == 4 and prob.budget == Budget.pattern(8, "2:4") and "2:4" in repr(prob)
    prob = Problem(weights=w, grads=G, damping=1e-3, groups=[0, 0, 0, 1, 1, 2, 2, 2], n_prune=[1, 2, 0])
    assert prob.n_prune == 3 and prob.budget.counts.tolist() == [1, 2, 0]
    prob = Problem(weights=w, grads=G, damping=1e-3, groups=np.array([0, 0, 0, 0, 1, 1, 1, 1]), sparsity=0.5)
    assert prob.budget.counts.tolist() == [2, 2]
    prob = Problem(weights=w, grads=G, damping=1e-3, budget=Budget.pattern(8, "1:4"))
    assert prob.n_prune == 6
    # n_prune / sparsity that agree with the pattern are accepted
    assert Problem(weights=w, grads=G, damping=1e-3, pattern="2:4", n_prune=4).n_prune == 4
    assert Problem(weights=w, grads=G, damping=1e-3, pattern="2:4", sparsity=0.5).n_prune == 4
    # the classic budget is a total budget
    assert Problem(weights=w, grads=G, damping=1e-3, n_prune=3).budget == Budget.total(8, 3)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(pattern="2:4", n_prune=3), InvalidArgumentError, "n_prune=3 disagrees with pattern='2:4'"),
    (dict(pattern="2:4", sparsity=0.25), InvalidArgumentError, "disagrees with pattern"),
    (dict(pattern="2:3"), InvalidArgumentError, "divisible by M = 3"),
    (dict(groups=[0, 0, 0, 0, 1, 1, 1, 1], n_prune=2), InvalidArgumentError, "array of per-group prune counts"),
    (dict(groups=[0, 0, 0, 0, 1, 1, 1, 1]), InvalidArgumentError, "groups needs n_prune"),
    (dict(groups=[0, 0, 1, 1], n_prune=[1, 1]), InvalidArgumentError, "groups must have shape \\(8,\\)"),
    (dict(n_prune=[1, 2]), InvalidArgumentError, "give groups= too"),
    (dict(pattern="2:4", groups=[0] * 8, n_prune=[4]), InvalidArgumentError, "at most one of pattern, groups"),
    (dict(budget=Budget.total(9, 1)), InvalidArgumentError, "budget covers 9 weights"),
    (dict(budget=Budget.total(8, 1), n_prune=1), InvalidArgumentError, "budget or n_prune"),
    (dict(budget=(8, 1)), ArgumentTypeError, "budget must be a cbs_opt.budget.Budget"),
    (dict(), InvalidArgumentError, "n_prune \\(or sparsity, pattern, groups, budget\\) is required"),
])
def test_problem_budget_errors(kwargs, error, match):
    w, G = _wg()
    with pytest.raises(error, match=match):
        Problem(weights=w, grads=G, damping=1e-3, **kwargs)


def test_with_n_prune_and_with_budget():
    w, G = _wg()
    total = Problem(weights=w, grads=G, damping=1e-3, n_prune=2)
    assert total.with_n_prune(5).n_prune == 5 and total.n_prune == 2
    nm = total.with_budget(Budget.pattern(8, "2:4"))
    assert nm.n_prune == 4 and nm.weights is total.weights and nm.curvature is total.curvature
    with pytest.raises(InvalidArgumentError, match="use problem.with_counts.*with_budget"):
        nm.with_n_prune(4)
    assert nm.with_counts([1, 3]).budget.counts.tolist() == [1, 3]
    with pytest.raises(InvalidArgumentError, match="budget covers 4 weights"):
        total.with_budget(Budget.total(4, 1))
    with pytest.raises(ArgumentTypeError):
        total.with_budget(3)


@pytest.mark.parametrize("kwargs", [dict(pattern="2:4"), dict(groups=[2, 0, 1, 1, 0, 2, 2, 0], n_prune=[1, 0, 3]),
                                    dict(n_prune=3)])
def test_save_load_keeps_the_budget(tmp_path, kwargs):
    w, G = _wg()
    prob = Problem(weights=w, grads=G, damping=1e-3, objective="selection", **kwargs)
    prob.save(tmp_path / "block.npz")
    back = Problem.load(tmp_path / "block.npz")
    assert back.budget == prob.budget and back.budget.pattern == prob.budget.pattern
    assert back.objective_kind == "selection" and np.array_equal(back.weights, prob.weights)
    buf = io.BytesIO()
    prob.save(buf)
    buf.seek(0)
    assert Problem.load(buf).budget == prob.budget


# ---------------------------------------------------------------------------------------------------
# structured layer budgets
# ---------------------------------------------------------------------------------------------------
def test_pattern_groups_linear_and_conv():
    groups, counts = pattern_groups((3, 8), "2:4")
    assert groups.tolist() == [i // 4 for i in range(24)] and counts.tolist() == [2] * 6
    # conv (out=2, in=2, 2×2): each output channel's row is the flattened in×kh×kw (8 weights), 2 groups of 4
    groups, counts = pattern_groups((2, 2, 2, 2), "1:4")
    assert groups.reshape(2, 8).tolist() == [[0] * 4 + [1] * 4, [2] * 4 + [3] * 4]
    assert counts.tolist() == [3] * 4
    with pytest.raises(InvalidArgumentError, match="in_features = 6.*divisible by M = 4"):
        pattern_groups((2, 6), "2:4")
    with pytest.raises(InvalidArgumentError, match="in_channels × kernel size = 9"):
        pattern_groups((4, 1, 3, 3), "2:4")
    with pytest.raises(InvalidArgumentError, match="at least 2 dimensions"):
        pattern_groups((8,), "2:4")
    b = pattern_budget((3, 8), "2:4")
    assert b == Budget.pattern(24, "2:4")


def test_row_budgets_and_masks():
    assert row_groups((3, 4)).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    b = row_budget((3, 2, 1, 2), 0.5)
    assert b.groups.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and b.counts.tolist() == [2, 2, 2]
    assert row_slice((3, 4), 1) == slice(4, 8)
    with pytest.raises(InvalidArgumentError, match="sparsity must be in"):
        row_budget((3, 4), 1.5)
    mask = np.array([[1, 0, 1, 0, 0, 0, 1, 1], [1, 1, 0, 0, 0, 1, 0, 1]], dtype=bool)
    check_pattern_mask(mask, "2:4")
    check_row_mask(mask, 4)
    mask[1, 2] = True
    with pytest.raises(InvalidArgumentError, match="3 kept in row 1, columns 0..3"):
        check_pattern_mask(mask, "2:4")
    with pytest.raises(InvalidArgumentError, match="prunes 3 weights in row 1"):
        check_row_mask(mask, 4)
    with pytest.raises(ArgumentTypeError, match="boolean"):
        check_pattern_mask(mask.astype(int), "2:4")


def test_structured_budget_on_a_weight_tensor_solves():
    """A whole (out, in) weight as one Problem under its N:M budget: the mask reshaped meets the pattern."""
    rng = np.random.default_rng(3)
    W = rng.normal(size=(3, 8))
    G = rng.normal(size=(10, 24))
    prob = Problem(weights=W.reshape(-1), grads=G, damping=1e-2, budget=pattern_budget(W.shape, "2:4"))
    for name in ("magnitude", "greedy_swap", "update_swap"):
        sol = solve(prob, name)
        check_pattern_mask(sol.mask.reshape(W.shape), "2:4")


# ---------------------------------------------------------------------------------------------------
# every backend under structured budgets
# ---------------------------------------------------------------------------------------------------
def _instances():
    """(label, problem) pairs: N:M, irregular partitions and the degenerate cases."""
    out = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        w = rng.normal(size=12)
        G = rng.normal(size=(5, 12))
        out.append((f"2:4 s{seed}", dict(weights=w, grads=G, damping=1e-3, pattern="2:4")))
        out.append((f"1:4 s{seed}", dict(weights=w, grads=G, damping=1e-2, pattern="1:4")))
        ids = rng.permutation(np.repeat([0, 1, 2], [5, 3, 4]))
        out.append((f"partition s{seed}", dict(weights=w, grads=G, damping=1e-3, groups=ids,
                                               n_prune=[2, 1, 3])))
        out.append((f"gradient s{seed}", dict(weights=w, grads=G, damping=1e-2, pattern="2:4",
                                              gradient=0.1 * rng.normal(size=12))))
    rng = np.random.default_rng(9)
    w = rng.normal(size=10)
    G = rng.normal(size=(4, 10))
    out += [
        ("groups of size 1", dict(weights=w, grads=G, damping=1e-3, groups=np.arange(10),
                                  n_prune=[1, 0] * 5)),
        ("counts 0 or full", dict(weights=w, grads=G, damping=1e-3, groups=np.repeat([0, 1, 2], [3, 3, 4]),
                                  n_prune=[0, 3, 2])),
        ("all zero counts", dict(weights=w, grads=G, damping=1e-3, groups=np.repeat([0, 1], 5), n_prune=[0, 0])),
        ("all full counts", dict(weights=w, grads=G, damping=1e-3, groups=np.repeat([0, 1], 5), n_prune=[5, 5])),
        ("duplicate weights", dict(weights=np.repeat([0.5, -0.5, 1.0, 0.2, 0.2], 2), grads=np.tile(G[:, :5], 2),
                                   damping=1e-3, pattern="1:2")),
        ("zero gradients", dict(weights=w[:8], grads=np.zeros((3, 8)), damping=0.5, pattern="2:4")),
        ("dense hessian", dict(weights=w[:8], hessian=G[:, :8].T @ G[:, :8] / 4, damping=1e-3, pattern="2:4")),
    ]
    return out


INSTANCES = _instances()
PARTITION_BACKENDS = ["magnitude", "obs", "enumerate", "greedy_swap", "iht", "update_swap", "miqp"]


def _dense(prob):
    return brute.dense_f(prob.weights, prob.grads, prob.damping, prob.hessian)


def test_backends_declare_budget_kinds():
    info = solvers.backends()
    for name in PARTITION_BACKENDS:
        assert "partition" in info[name].budgets and "total" in info[name].budgets, name


@pytest.mark.parametrize("kind", ["update", "selection"])
def test_every_backend_satisfies_the_budget_and_enumerate_is_exact(kind):
    for label, kw in INSTANCES:
        prob = Problem(objective=kind, **kw)
        b = prob.budget
        best, _ = brute.brute_force_partition(_dense(prob), prob.weights, b.groups, b.counts, kind, prob.gradient)
        tol = 1e-7 * max(1.0, abs(best)) if kind == "selection" else 1e-7 * abs(best) + 1e-12
        for name in PARTITION_BACKENDS:
            if kind not in solvers.backends()[name].objectives:
                continue
            sol = solve(prob, name, seed=0)
            # independent of the registry's own check: count per group from the raw ids
            got = np.bincount(np.asarray(kw.get("groups", b.groups))[sol.pruned], minlength=b.n_groups) \
                if "groups" in kw else b.pruned_counts(sol.pruned)
            assert np.array_equal(got, b.counts), (label, name)
            assert sol.objective >= best - tol, (label, name, sol.objective, best)
            if sol.bound is not None:
                assert sol.bound <= sol.objective + tol, (label, name)
            if name in ("enumerate", "miqp"):
                assert sol.status == "optimal", (label, name)
                assert sol.objective == pytest.approx(best, rel=1e-7, abs=1e-12), (label, name)


@pytest.mark.parametrize("kind", ["update", "selection"])
def test_enumerate_partition_many_seeds(kind):
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        p = int(rng.integers(4, 11))
        n_groups = int(rng.integers(1, 4))
        ids = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, p - n_groups)])
        rng.shuffle(ids)
        sizes = np.bincount(ids, minlength=n_groups)
        counts = [int(rng.integers(0, s + 1)) for s in sizes]
        w = rng.normal(size=p)
        w[rng.integers(0, p)] = w[0]  # a duplicate
        G = rng.normal(size=(int(rng.integers(1, 8)), p))
        prob = Problem(weights=w, grads=G, damping=1e-2, groups=ids, n_prune=counts, objective=kind)
        best, _ = brute.brute_force_partition(_dense(prob), w, ids, counts, kind)
        sol = solve(prob, "enumerate")
        assert sol.objective == pytest.approx(best, rel=1e-7, abs=1e-12)
        assert np.array_equal(np.bincount(ids[sol.pruned], minlength=n_groups), counts)


ENGINES = [e for e, mod in (("gurobi", "gurobipy"), ("scip", "pyscipopt")) if importlib.util.find_spec(mod)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["update", "selection"])
def test_miqp_engines_under_partition_budgets(engine, kind):
    if not ENGINES:
        pytest.skip("neither gurobipy nor pyscipopt is installed")
    optimal = 0
    cases = INSTANCES[:6] + INSTANCES[-5:]
    for label, kw in cases:
        prob = Problem(objective=kind, **kw)
        b = prob.budget
        best, _ = brute.brute_force_partition(_dense(prob), prob.weights, b.groups, b.counts, kind, prob.gradient)
        # SCIP can need minutes on some update instances: a time limit, then an honest check either way
        sol = solve(prob, "miqp", engine=engine, time_limit=3)
        tol = 1e-6 * max(1e-9, abs(best))
        assert b.is_satisfied(sol.pruned)
        assert sol.objective >= best - tol, (label, engine)
        if sol.bound is not None:
            assert sol.bound <= best + tol, (label, engine)
        if sol.status == "optimal":
            optimal += 1
            assert sol.objective == pytest.approx(best, rel=1e-6, abs=1e-10), (label, engine)
    assert optimal >= len(cases) - 2


@pytest.mark.parametrize("search", ["leaps", "best_first"])
def test_miqp_searches_under_partition_budgets(search):
    for label, kw in INSTANCES[:8]:
        prob = Problem(**kw)
        b = prob.budget
        best, _ = brute.brute_force_partition(_dense(prob), prob.weights, b.groups, b.counts, "update",
                                              prob.gradient)
        sol = solve(prob, "miqp", search=search)
        assert b.is_satisfied(sol.pruned) and sol.status == "optimal"
        assert sol.objective == pytest.approx(best, rel=1e-7, abs=1e-12), label
        assert sol.bound <= sol.objective + 1e-9 * abs(sol.objective)


def test_miqp_selection_milp_under_partition_budgets():
    for label, kw in INSTANCES[:8]:
        prob = Problem(objective="selection", **kw)
        b = prob.budget
        best, _ = brute.brute_force_partition(_dense(prob), prob.weights, b.groups, b.counts, "selection",
                                              prob.gradient)
        sol = solve(prob, "miqp", search="milp")
        assert b.is_satisfied(sol.pruned) and sol.status == "optimal"
        assert sol.objective == pytest.approx(best, rel=1e-7, abs=1e-12), label
        assert sol.bound <= sol.objective + 1e-7 * max(1.0, abs(sol.objective))


def test_larger_nm_block_heuristics_stay_feasible_and_improve_on_magnitude():
    """A 2:4 block of 400 weights: the searches keep the pattern and are never worse than their start."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=400)
    G = rng.normal(size=(60, 400))
    prob = Problem(weights=w, grads=G, damping=1e-2, pattern="2:4")
    obs = solve(prob, "obs").objective
    for name in ("iht", "update_swap"):   # both start from OBS-like sets and only accept improvements
        sol = solve(prob, name, seed=0, init="obs")
        assert prob.budget.is_satisfied(sol.pruned)
        assert sol.objective <= obs * (1 + 1e-9), name
    selection = prob.with_objective("selection")
    mag = solve(selection, "magnitude").objective
    for init in ("magnitude", "rmp", "obs"):
        sol = solve(selection, "greedy_swap", seed=0, init=init)   # monotone on the selection cost
        assert selection.budget.is_satisfied(sol.pruned)
        assert sol.objective <= sol.info["initial_selection_objective"] * (1 + 1e-9)
        assert sol.objective == pytest.approx(sol.info["selection_objective"], rel=1e-6)  # float32 storage
    assert solve(selection, "greedy_swap", init="magnitude").objective < mag


# ---------------------------------------------------------------------------------------------------
# the registry refuses budgets a backend does not declare
# ---------------------------------------------------------------------------------------------------
def test_registry_refuses_undeclared_budget_kind():
    @solvers.register("total_only_backend")
    def _total_only(problem, *, seed, time_limit, progress):
        return solvers.BackendResult(pruned=np.arange(problem.n_prune))

    try:
        w, G = _wg()
        prob = Problem(weights=w, grads=G, damping=1e-3, pattern="2:4")
        with pytest.raises(UnsupportedProblemError, match="'total_only_backend' does not handle partition budgets"
                                                          ".*supports total.*magnitude"):
            solve(prob, "total_only_backend")
        # a one-group partition is a total budget: accepted
        one = Problem(weights=w[:4], grads=G[:, :4], damping=1e-3, pattern="2:4")
        assert solve(one, "total_only_backend").pruned.tolist() == [0, 1]
    finally:
        solvers.unregister("total_only_backend")


def test_registry_checks_the_answer_against_the_budget():
    @solvers.register("ignores_groups", budgets=("total", "partition"))
    def _ignores(problem, *, seed, time_limit, progress):
        return solvers.BackendResult(pruned=np.arange(problem.n_prune))   # all in the first groups

    try:
        w, G = _wg()
        prob = Problem(weights=w, grads=G, damping=1e-3, pattern="2:4")
        with pytest.raises(solvers.SolverError, match="'ignores_groups'.*violates the budget.*group 0"):
            solve(prob, "ignores_groups")
    finally:
        solvers.unregister("ignores_groups")


def test_register_validates_kinds():
    with pytest.raises(InvalidArgumentError, match="budgets must be"):
        solvers.register("bad_budget", lambda problem, **kw: None, budgets=("rows",))
    with pytest.raises(InvalidArgumentError, match="kind must be one of"):
        solvers.register("bad_kind", lambda problem, **kw: None, kind="oracle")
    assert "bad_budget" not in solvers.backends() and "bad_kind" not in solvers.backends()


def test_explicit_init_must_meet_the_budget():
    w, G = _wg()
    prob = Problem(weights=w, grads=G, damping=1e-3, pattern="2:4")
    with pytest.raises(InvalidArgumentError, match="init prunes 3 weights in group 0"):
        solve(prob, "greedy_swap", init=np.array([0, 1, 2, 4]))
    with pytest.raises(InvalidArgumentError, match="init prunes 3 weights in group 0"):
        solve(prob, "update_swap", init=np.array([0, 1, 2, 4]))
    good = solve(prob, "update_swap", init=np.array([0, 1, 4, 5]))
    assert prob.budget.is_satisfied(good.pruned)


def test_greedy_swap_grouped_trace_replays_exactly():
    """Every accepted batch of the grouped search: swaps inside a group, exact deltas, monotone."""
    rng = np.random.default_rng(4)
    prob = Problem(weights=rng.normal(size=40), grads=rng.normal(size=(12, 40)), damping=1e-3, pattern="2:4",
                   objective="selection")
    events = []
    sol = solve(prob, "greedy_swap", init="magnitude", trace=events.append, epsilon=0.0, dtype="float64")
    groups = prob.budget.groups
    current = set(solve(prob, "magnitude").pruned.tolist())
    assert events, "magnitude is not a swap-local optimum here; the search must move"
    for ev in events:
        assert sorted(groups[ev["out"]].tolist()) == sorted(groups[ev["into"]].tolist())
        before = prob.selection_cost(np.array(sorted(current)))
        current = (current - set(ev["out"].tolist())) | set(ev["into"].tolist())
        after = prob.selection_cost(np.array(sorted(current)))
        assert after - before == pytest.approx(ev["batch_delta"], rel=1e-6, abs=1e-12) and after < before
    assert sorted(current) == sol.pruned.tolist()
