"""How the heuristics scale: magnitude, obs and greedy_swap on generated low-rank instances
(p = 1k, 10k, 100k; N = 1000; sparsity 0.9) and on the full MLPNet problem (p = 32,360).

Prints a Markdown table: backend seconds (``Solution.seconds``: the backend alone, without the
engine's CBS-U of the answer), the selection objective (CBS-S, what greedy_swap optimises), the
update objective (after CBS-U) and, for MLPNet, MNIST test accuracy with the pruned weights
zeroed ("no update") and after CBS-U.

    python benchmarks/heuristics_scale.py                  # the full table
    python benchmarks/heuristics_scale.py --quick          # p = 1k, 10k, N = 200, MLPNet skipped
    python benchmarks/heuristics_scale.py --no-mlpnet --sizes 1000 10000
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import solvers  # noqa: E402
from cbs_opt.instances import random_problem  # noqa: E402

SOLVERS = ("magnitude", "obs", "greedy_swap")


def run_one(prob, solver, options, accuracy=None):
    start = time.perf_counter()
    sol = solvers.solve(prob, solver, **options)
    wall = time.perf_counter() - start
    row = {"solver": solver, "seconds": sol.seconds, "wall": wall,
           "selection": prob.selection_cost(sol.pruned), "update": sol.objective,
           "passes": sol.info.get("passes", ""), "swaps": sol.info.get("swaps", ""),
           "status": str(sol.status), "pruned": sol.pruned}
    if accuracy is not None:
        row["acc_zeroed"] = accuracy(prob.zeroed(sol.pruned))
        row["acc_update"] = accuracy(sol.weights)
    return row


def fmt(row, name, p, N, m, with_acc):
    cells = [name, f"{p:,}", f"{N:,}", f"{m:,}", row["solver"] + row.get("variant", ""),
             f"{row['seconds']:.3f}", f"{row['wall']:.2f}", f"{row['selection']:.6g}", f"{row['update']:.6g}",
             str(row["passes"]), str(row["swaps"])]
    if with_acc:
        cells += [f"{row['acc_zeroed']:.2f}", f"{row['acc_update']:.2f}"]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="values of p")
    ap.add_argument("--n-samples", type=int, default=1000, help="N for the generated instances")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="greedy_swap device: cpu | cuda | auto")
    ap.add_argument("--dtype", default="float32", help="greedy_swap storage dtype")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads during greedy_swap (0: leave torch's setting)")
    ap.add_argument("--repeat", type=int, default=2, help="greedy_swap runs per instance; the fastest is shown")
    ap.add_argument("--no-mlpnet", action="store_true", help="skip the MLPNet problem")
    ap.add_argument("--mlpnet-only", action="store_true", help="only the MLPNet problem")
    ap.add_argument("--data", default=None, help="reference-data folder (default $CBS_OPT_DATA or ../shared/data)")
    ap.add_argument("--quick", action="store_true", help="p = 1k, 10k with N = 200; no MLPNet")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.n_samples, args.no_mlpnet, args.repeat = [1000, 10000], 200, True, 1

    gs_options = {"device": args.device, "dtype": args.dtype, "threads": args.threads or None}
    header = ("| instance | p | N | m | solver | backend s | solve s (incl. CBS-U) | selection obj | "
              "update obj | passes | swaps |")
    lines = []
    print(f"# heuristics_scale — {datetime.date.today()} — {platform.node()} "
          f"({torch.get_num_threads()} torch threads, greedy_swap {args.device}/{args.dtype}, "
          f"threads={args.threads or 'torch default'})\n")

    def greedy_rows(prob, accuracy=None):
        best, cold = None, None
        for _ in range(max(1, args.repeat)):   # the first run also converts G to torch; later runs reuse it
            row = run_one(prob, "greedy_swap", gs_options, accuracy)
            cold = row["seconds"] if cold is None else cold
            if best is None or row["seconds"] < best["seconds"]:
                best = row
        best["cold"] = cold
        return best

    if not args.mlpnet_only:
        print(header)
        print("|" + "---|" * 11)
        for p in args.sizes:
            t0 = time.perf_counter()
            prob = random_problem(p, args.n_samples, sparsity=args.sparsity, seed=args.seed, family="lowrank")
            gen = time.perf_counter() - t0
            rows = [run_one(prob, s, {}) for s in SOLVERS[:2]] + [greedy_rows(prob)]
            for row in rows:
                line = fmt(row, "lowrank", p, args.n_samples, prob.n_prune, False)
                lines.append(line)
                print(line, flush=True)
            print(f"<!-- p={p}: generating the instance took {gen:.1f} s; greedy_swap's first (cold) run, "
                  f"including the conversion of G to torch: {rows[-1]['cold']:.3f} s -->", flush=True)
            del prob

    if not args.no_mlpnet:
        from mlpnet_common import evaluate_accuracy, mlpnet_problem
        t0 = time.perf_counter()
        prob = mlpnet_problem(n_samples=1000, seed=0, damping=1e-3, sparsity=args.sparsity,
                              objective="update", directory=args.data)
        build = time.perf_counter() - t0
        acc = lambda x: evaluate_accuracy(x, args.data)  # noqa: E731
        print(f"\nMLPNet global problem built in {build:.1f} s (Fisher from 1000 training images); "
              f"dense accuracy {acc(prob.weights):.2f}%\n")
        print(header + " acc no update % | acc CBS-U % |")
        print("|" + "---|" * 13)
        rows = [run_one(prob, s, {}, acc) for s in SOLVERS[:2]] + [greedy_rows(prob, acc)]
        other = "float64" if args.dtype == "float32" else "float32"
        variant = run_one(prob, "greedy_swap", {**gs_options, "dtype": other}, acc)
        variant["variant"] = f" ({other})"
        rmp = run_one(prob, "greedy_swap", {**gs_options, "init": "rmp"}, acc)
        rmp["variant"] = " (init=rmp)"
        rows += [variant, rmp]
        for row in rows:
            print(fmt(row, "MLPNet", prob.p, 1000, prob.n_prune, True), flush=True)
        print(f"\ngreedy_swap's first (cold) run on MLPNet, including the conversion of G to torch: "
              f"{rows[2]['cold']:.3f} s (backend)")
        same = np.array_equal(rows[2]["pruned"], variant["pruned"])
        print(f"\ngreedy_swap {args.dtype} and {other} select the same set on MLPNet: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
