"""cbs_opt.executors: studies, block solves and cost curves through a real Dask LocalCluster (2 worker
processes on the loopback interface) and a process pool give exactly the in-process results; backends
registered at run time reach the workers or are reported in ``result.failures``."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

import solvers
from solvers import BackendResult, Status
from cbs_opt.errors import InvalidArgumentError
from cbs_opt.executors import (InlineExecutor, block_costs, executor_scope, map_blocks, resolve_executor,
                               solve_blocks)
from cbs_opt.fisher import build_blocks
from cbs_opt.study import SolverSpec, Study, generated_instances, run_study

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as lc:
        yield lc


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster) as c:
        yield c


def _study(*extra: str) -> Study:
    instances = generated_instances(("lowrank",), sizes=(8,), n_samples=6, seeds=(0, 1))
    specs = [SolverSpec("enumerate"), SolverSpec("greedy_swap"), SolverSpec("magnitude")]
    return Study(instances, specs + [SolverSpec(n) for n in extra], sparsities=(0.25, 0.5))


def _key(records):
    return sorted((r.instance, r.solver, r.m, r.objective_kind, r.seed, r.status, r.objective, r.bound, r.gap)
                  for r in records)


def test_study_through_dask_equals_in_process(client, cluster):
    study = _study()
    local = run_study(study, jobs=1)
    remote = run_study(study, executor=client)
    assert local.ok and remote.ok
    assert len(remote.records) == 2 * 3 * 2
    assert _key(remote.records) == _key(local.records)
    # the same through a scheduler address (a Client the runner opens and closes itself)
    by_address = run_study(study, scheduler=cluster.scheduler_address)
    assert _key(by_address.records) == _key(local.records)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))


def _data(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_block_solves_and_curves_through_dask_equal_in_process(client):
    blocks = build_blocks(_mlp(), _data(), n_samples=40, blocks="layer", damping="relative:0.01")
    budgets = [b.size // 2 for b in blocks]
    local = solve_blocks(blocks, budgets, "greedy_swap", seed=3)
    remote = solve_blocks(blocks, budgets, "greedy_swap", executor=client, seed=3)
    for a, b, block in zip(local, remote, blocks):
        assert np.array_equal(a.pruned, b.pruned) and np.array_equal(a.weights, b.weights)
        assert a.objective == b.objective
        # the worker built the same float64 problem from the float32 slice it received
        assert a.objective == pytest.approx(block.problem.with_n_prune(a.pruned.size).objective(a.pruned), rel=1e-12)
    grids = [np.arange(b.size + 1) for b in blocks]
    costs_l, cache_l = block_costs(blocks, grids, "obs")
    costs_r, cache_r = block_costs(blocks, grids, "obs", executor=client)
    assert costs_l == costs_r and set(cache_l) == set(cache_r)
    assert all(c[0] == 0.0 for c in costs_l)  # pruning nothing costs nothing
    # a cached solution is reused, not recomputed
    again = solve_blocks(blocks, [len(g) - 1 for g in grids], "obs", cache={}, executor=client)
    assert all(s.pruned.size == b.size for s, b in zip(again, blocks))


def _flip(problem, *, seed, time_limit, progress):
    """Prunes the largest weights (a deliberately bad, deterministic rule)."""
    pruned = np.argsort(-np.abs(problem.weights), kind="stable")[:problem.n_prune]
    return BackendResult(np.sort(pruned), Status.FEASIBLE)


def test_runtime_backend_reaches_dask_workers_or_is_reported(client):
    # defined inside the test: a process pool cannot pickle it by reference, Dask sends it by value
    def largest(problem, *, seed, time_limit, progress):
        order = np.argsort(-np.abs(problem.weights), kind="stable")
        return BackendResult(np.sort(order[:problem.n_prune]), Status.FEASIBLE)

    solvers.register("test_largest", largest, description="largest weights (test)", replace=True)
    try:
        study = _study("test_largest")
        local = run_study(study, jobs=1)
        assert local.ok
        remote = run_study(study, executor=client)
        assert remote.ok, remote.failures
        assert _key(remote.records) == _key(local.records)
        assert sum(r.solver == "test_largest" and r.objective is not None for r in remote.records) == 4
        with ThreadPoolExecutor(max_workers=2) as threads:  # threads share the registry: it just works
            threaded = run_study(study, executor=threads)
        assert threaded.ok and _key(threaded.records) == _key(local.records)
        # a process pool cannot receive it: its runs fail, each listed once in failures, with the reason
        pooled = run_study(study, jobs=2)
        assert not pooled.ok
        assert len(pooled.failures) == 2 * 2  # one per run of that backend; the built-in ones ran fine
        assert all(f.check == "error" and f.solver == "test_largest" for f in pooled.failures)
        assert all("registered at run time" in f.message and "'test_largest'" in f.message for f in pooled.failures)
    finally:
        solvers.unregister("test_largest")


def test_module_level_runtime_backend_through_a_process_pool():
    solvers.register("test_flip", _flip, description="largest weights (test)", replace=True)
    try:
        study = _study("test_flip")
        local = run_study(study, jobs=1)
        pooled = run_study(study, jobs=2)
        assert pooled.ok, pooled.failures
        assert _key(pooled.records) == _key(local.records)
    finally:
        solvers.unregister("test_flip")


def test_resolve_executor_and_map_blocks():
    ex, owned = resolve_executor()
    assert isinstance(ex, InlineExecutor) and not owned
    ex, owned = resolve_executor(jobs=1)
    assert isinstance(ex, InlineExecutor) and not owned
    with executor_scope(jobs=2) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
        assert map_blocks(pool, pow, [(2, k) for k in range(7)], max_in_flight=2) == [2 ** k for k in range(7)]
        # blocks travel to pool workers as their float32 slices (compact ones column-major) and solve the same
        for compact in (False, True):
            blocks = build_blocks(_mlp(), _data(), n_samples=40, blocks=16, compact=compact)
            budgets = [b.size // 3 for b in blocks]
            here = solve_blocks(blocks, budgets, "obs")
            there = solve_blocks(blocks, budgets, "obs", executor=pool)
            assert all(np.array_equal(a.pruned, b.pruned) and np.array_equal(a.weights, b.weights)
                       for a, b in zip(here, there))
    assert map_blocks(None, abs, [-1, 2, -3]) == [1, 2, 3]
    with pytest.raises(InvalidArgumentError, match="at most one"):
        resolve_executor(jobs=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(InvalidArgumentError, match="jobs"):
        resolve_executor(jobs=0)
    with pytest.raises(TypeError, match="submit"):
        resolve_executor(executor=object())
    with pytest.raises(ZeroDivisionError):  # a failing call surfaces as itself
        map_blocks(InlineExecutor(), lambda a: 1 / a, [1, 0])


# ---- prune() and the CLI through a cluster ---------------------------------------------------------
def _digits():
    from cbs_opt.digits import digits_model
    model, data = digits_model()
    return model, (data.x_train, data.y_train)


def test_prune_through_dask_equals_in_process(client):
    from cbs_opt import prune

    model, data = _digits()
    kwargs = dict(solver="update_swap", damping=1e-4, blocks="row", n_samples=120, select=None, seed=0)
    local = prune(model, data, 0.6, **kwargs)
    remote = prune(model, data, 0.6, executor=client, **kwargs)
    for name in local.masks:
        assert torch.equal(local.masks[name], remote.masks[name])
        assert torch.allclose(local.weights[name], remote.weights[name], atol=1e-12, rtol=0)
    assert remote.sparsity == local.sparsity


def test_cli_scheduler_runs_prune_and_study(cluster, tmp_path, capsys):
    from cbs_opt.cli import main

    address = cluster.scheduler_address
    assert main(["prune", "--model", "digits", "--sparsity", "0.5", "--solver", "obs", "--blocks", "layer",
                 "--n-samples", "80", "--scheduler", address, "-q"]) == 0
    assert "sparsity 0.5000" in capsys.readouterr().out
    assert main(["study", "--family", "lowrank", "--size", "8", "--solver", "enumerate", "--solver", "greedy_swap",
                 "--sparsity", "0.5", "--scheduler", address, "-q"]) == 0
    assert main(["prune", "--model", "digits", "--sparsity", "0.5", "--jobs", "2", "--scheduler", address]) == 2
    assert "not allowed with" in capsys.readouterr().err
