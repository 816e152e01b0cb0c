"""Search variants at scale (issue 6): the paper's greedy swap against the update-objective searches.

Part 1 — the full MLPNet problem (p = 32,360, N = 1000 per-sample NLL gradients, damping 1e-3, one global
block) at sparsity 0.9 / 0.95 / 0.98: for magnitude, obs, greedy_swap (+ CBS-U), iht and update_swap,
the backend seconds, passes (greedy_swap passes; iht accepted steps; update_swap IHT steps + swap rounds),
swaps accepted, the selection objective ½sᵀFs, the update objective (after CBS-U) and the MNIST test
accuracy (all 10,000 images) of the pruned + updated network.

Part 2 — generated low-rank instances (family "lowrank": Gaussian gradients with log-normal column scales),
N = 1000, sparsity 0.9, p = 10⁵ and 10⁶, to show how time grows with p. They are built directly as a
float32 torch ``Aᵀ`` (p × N; 4 GB at p = 10⁶ — a float64 ``Problem`` would need 16 GB) and searched
through the tensor-level APIs (``solvers.kernels.update_moves.LowRankForm.from_tensors``,
``solvers.greedy_swap.greedy_swap_search``); objectives are computed from the same float32 A with
float64 accumulation.

    python benchmarks/greedy_scale.py                   # everything (long on a 2-core CPU)
    python benchmarks/greedy_scale.py --quick           # MLPNet at 0.9, generated p = 10⁴ only
    python benchmarks/greedy_scale.py --device cuda     # on a GPU (both parts)
    python benchmarks/greedy_scale.py --no-mlpnet --sizes 100000
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import solvers  # noqa: E402
from solvers.base import Deadline  # noqa: E402
from solvers.swap_search import SearchStats, hard_threshold_search, swap_descent  # noqa: E402
from solvers.kernels.update_moves import KeptState, LowRankForm, fit  # noqa: E402


def variants(device: str, dtype: str, kicks: int):
    """(label, solver, options) for every search variant compared."""
    torch_opts = {"device": device, "dtype": dtype}
    return [
        ("magnitude", "magnitude", {}),
        ("obs", "obs", {}),
        ("greedy_swap", "greedy_swap", dict(torch_opts)),
        ("iht", "iht", dict(torch_opts)),
        ("update_swap", "update_swap", dict(torch_opts, kicks=kicks)),
        ("update_swap(init=obs)", "update_swap", dict(torch_opts, init="obs", kicks=kicks)),
    ]


def passes_and_swaps(solver: str, info: dict) -> tuple[str, str]:
    if solver == "greedy_swap":
        return str(info.get("passes", "")), str(info.get("swaps", ""))
    if solver == "iht":
        return str(info.get("iterations", "")), str(info.get("swaps", ""))
    if solver == "update_swap":
        return (f"{info['iht_iterations']}+{info['rounds']}",
                f"{info['iht_swaps']}+{info['swaps']}")
    return "", ""


def mlpnet_part(args) -> list[str]:
    import mlpnet_common as mc

    t0 = time.perf_counter()
    base = mc.mlpnet_problem(n_samples=args.n_samples, seed=0, damping=1e-3, sparsity=0.9, objective="update",
                             directory=args.data)
    print(f"# MLPNet problem built in {time.perf_counter() - t0:.1f} s: {base}", file=sys.stderr)
    dense_acc = mc.evaluate_accuracy(base.weights, args.data)
    lines = [f"Dense test accuracy {dense_acc:.2f}%.", "",
             "| sparsity | variant | backend s | passes | swaps | selection obj | update obj | test acc % | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for sparsity in args.sparsities:
        prob = base.with_n_prune(int(round(sparsity * base.p)))
        for label, solver, opts in variants(args.device, args.dtype, args.kicks):
            if label.startswith("update_swap(init") and args.quick:
                continue
            sol = solvers.solve(prob, solver, time_limit=args.time_limit, seed=0, **opts)
            passes, swaps = passes_and_swaps(solver, sol.info)
            acc = mc.evaluate_accuracy(sol.weights, args.data)
            line = (f"| {sparsity} | {label} | {sol.seconds:.2f} | {passes} | {swaps} | "
                    f"{prob.selection_cost(sol.pruned):.6g} | {sol.objective:.6g} | {acc:.2f} | {sol.status} |")
            print(line, flush=True)
            lines.append(line)
    return lines


# -- generated instances through the tensor-level APIs --------------------------------------------------
def generated_lowrank(p: int, N: int, seed: int, device, chunk: int = 1 << 16):
    """``Aᵀ = (G/√N)ᵀ`` (p × N, float32) and ``w`` for the "lowrank" family, generated in chunks."""
    gen = torch.Generator().manual_seed(seed)
    At = torch.empty(p, N, dtype=torch.float32, device=device)
    scales = torch.exp(torch.randn(p, generator=gen, dtype=torch.float64))
    for lo in range(0, p, chunk):
        hi = min(p, lo + chunk)
        block = torch.randn(hi - lo, N, generator=gen, dtype=torch.float32) * scales[lo:hi, None].float()
        At[lo:hi] = (block / math.sqrt(N)).to(device)
    w = torch.randn(p, generator=gen, dtype=torch.float64)
    return At, w


def selection_cost(form: LowRankForm, kept: torch.Tensor) -> float:
    s = torch.where(kept, torch.zeros_like(form.w), form.w)
    return form.cost_of(form.w - s)  # ½(x − w)ᵀF(x − w) at x = w − s is ½sᵀFs


def scale_part(args) -> list[str]:
    from solvers.greedy_swap import greedy_swap_search
    from solvers.kernels.torch_lowrank import TorchCurvature

    dev = torch.device(args.device)
    lines = ["| p | N | m | variant | seconds | passes | swaps | selection obj | update obj | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for p in args.sizes:
        N, m = args.n_samples, int(round(0.9 * p))
        t0 = time.perf_counter()
        At, w = generated_lowrank(p, N, seed=0, device=dev)
        form = LowRankForm.from_tensors(At.T, 1e-3, w.to(dev))
        print(f"# generated p={p:,} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        magnitude = torch.argsort(w.abs(), stable=True)[:m].numpy()

        def kept_of(pruned):
            kept = torch.ones(p, dtype=torch.bool, device=dev)
            kept[torch.as_tensor(np.asarray(pruned), dtype=torch.long, device=dev)] = False
            return kept

        def row(label, seconds, passes, swaps, kept, status):
            upd = fit(form, kept).cost
            line = (f"| {p:,} | {N:,} | {m:,} | {label} | {seconds:.2f} | {passes} | {swaps} | "
                    f"{selection_cost(form, kept):.6g} | {upd:.6g} | {status} |")
            print(line, flush=True)
            lines.append(line)

        row("magnitude", 0.0, "", "", kept_of(magnitude), "feasible")
        # greedy_swap (the paper's Algorithm 1 on the selection objective, then CBS-U)
        op = TorchCurvature(At=At, damping=1e-3)
        start = time.perf_counter()
        res = greedy_swap_search(op, w.numpy(), magnitude, deadline=Deadline(args.time_limit))
        row("greedy_swap", time.perf_counter() - start, res.passes, res.swaps, kept_of(res.pruned), res.stopped)
        greedy_pruned = res.pruned
        del op
        # iht from magnitude, then the swap search on its result
        stats = SearchStats()
        deadline = Deadline(args.time_limit)
        start = time.perf_counter()
        result = hard_threshold_search(form, kept_of(magnitude), deadline=deadline, stats=stats)
        row("iht (from magnitude)", time.perf_counter() - start, stats.iterations, stats.swaps, result.kept,
            stats.stopped)
        for label, kept0 in (("update_swap (from iht)", result.kept),
                             ("update_swap (from greedy_swap)", kept_of(greedy_pruned))):
            swap_stats = SearchStats()
            start = time.perf_counter()
            state = KeptState(form, kept0)
            build = time.perf_counter() - start
            stopped = swap_descent(state, rho=64, deadline=Deadline(args.time_limit), stats=swap_stats)
            row(f"{label}, state build {build:.1f} s", time.perf_counter() - start, swap_stats.iterations,
                swap_stats.swaps, state.kept, stopped)
            del state
        del At, form
    return lines


def small_blocks_part(args) -> list[str]:
    """Held-out small blocks: how often each search lands within 1% of the enumerate optimum."""
    from cbs_opt.instances import FAMILIES, random_problem

    runs = [("obs", {}), ("greedy_swap", {}), ("iht", {}), ("update_swap", {}), ("update_swap", {"kicks": 10})]
    hits, total = {f"{n}{o or ''}": 0 for n, o in runs}, 0
    for family in FAMILIES:
        for p in (10, 14, 18):
            for seed in range(6):  # seeds 100-105: disjoint from the unit tests' instances
                prob = random_problem(p, None, None, sparsity=(0.5, 0.7, 0.9)[seed % 3], family=family,
                                      seed=100 + seed)
                exact = solvers.solve(prob, "enumerate").objective
                total += 1
                for name, opts in runs:
                    sol = solvers.solve(prob, name, seed=seed, **opts)
                    hits[f"{name}{opts or ''}"] += sol.objective <= exact + 0.01 * abs(exact) + 1e-12
    lines = [f"{total} blocks: families {', '.join(FAMILIES)} × p ∈ {{10, 14, 18}} × 6 seeds, N = p // 2, "
             "sparsity 0.5 / 0.7 / 0.9", "", "| search | within 1% of the optimum |", "|---|---|"]
    lines += [f"| {name} | {count} / {total} |" for name, count in hits.items()]
    print("\n".join(lines), flush=True)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="reference data folder (default $CBS_OPT_DATA or ../shared/data)")
    ap.add_argument("--quick", action="store_true", help="MLPNet at 0.9 only, generated p = 10⁴ only")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (torch device of every search)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                    help="storage dtype of A for the torch searches (N×N work is float64 regardless)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="generated p values")
    ap.add_argument("--n-samples", type=int, default=1000, help="N (gradients per instance)")
    ap.add_argument("--kicks", type=int, default=0, help="update_swap perturbation rounds")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per search")
    ap.add_argument("--no-mlpnet", action="store_true")
    ap.add_argument("--no-generated", action="store_true")
    ap.add_argument("--small-blocks", action="store_true",
                    help="also count how often each search is within 1%% of enumerate on small blocks")
    args = ap.parse_args(argv)
    if args.quick:
        args.sparsities, args.sizes = [0.9], [10_000]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# greedy_scale — {datetime.date.today()} — device {args.device} ({device_name}), "
          f"dtype {args.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.no_mlpnet:
        print("\n## MLPNet (p = 32,360, N = 1000, damping 1e-3)\n")
        mlpnet_part(args)
    if args.small_blocks:
        print("\n## Held-out small blocks against the enumerate optimum\n")
        small_blocks_part(args)
    if not args.no_generated:
        print("\n## Generated low-rank instances (N = 1000, damping 1e-3, sparsity 0.9)\n")
        scale_part(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
