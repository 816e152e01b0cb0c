"""Capacity benchmark: time to proven optimality, miqp's own engine ("highs") vs Gurobi vs SCIP.

Instances: generated low-rank blocks (N = p/2, damping 1e-3) and real MLPNet blocks (rows of fc2 and fc3,
a 40-weight chunk of an fc1 row; N = 1000 per-sample NLL gradients; damping 1e-3), at sparsity 0.5/0.75/0.9,
"update" objective (``--objective selection`` for the paper's CBS-S cost). Every engine runs on one thread with
the same time limit; Gurobi and SCIP get the same Pyomo model (low-rank big-M MIQP, or the low-rank binary QP
for "selection"). Prints a Markdown table: seconds (or the gap left at the limit).

    python benchmarks/miqp_capacity.py --quick
    python benchmarks/miqp_capacity.py --time-limit 60 --sizes 20 30 40
    python benchmarks/miqp_capacity.py --engines highs highs:best_first highs:leaps --no-real
    python benchmarks/miqp_capacity.py --objective selection --engines highs highs:best_first highs:milp gurobi
    python benchmarks/miqp_capacity.py --grid --dampings 1e-3 1e-4 1e-5 --time-limit 60     # issue 14's grid
    python benchmarks/miqp_capacity.py --grid --blocks "fc2 rows 0-1" --dampings 1e-3 --engines highs
    python benchmarks/miqp_capacity.py --grid --pattern 2:4 --engines highs gurobi           # N:M budgets
    python benchmarks/miqp_capacity.py --grid --blocks "fc2 rows 0-1" --dampings 1e-5 --engines highs gurobi:dense scip
    python benchmarks/miqp_capacity.py --grid --dampings 1e-5 --engines highs \
        --blocks "fc1 row 0, cols 0-63" "fc1 row 5, cols 200-263"                          # any fc1 chunk

``miqp/highs`` is the default ``search="auto"`` (leaps-and-bounds or best-first by the measured rule).

``--grid`` (issue 14): real MLPNet blocks only — fc3 row 0 (p = 20), fc2 row 0 (p = 40), fc2 rows 0–1
(p = 80), fc1 row 0 chunks of 64 / 96 / 128 weights from column 392 — at every damping of ``--dampings``
and every sparsity, then a summary: per damping and engine the largest p proven at every sparsity, and the
gap left where nothing proves. ``--blocks`` picks blocks by name (from the grid, or any "fc1 row R, cols A-B",
"fc2 row R", "fc2 rows R-S"), in the order given; ``--pattern N:M`` solves N:M budgets instead of a total
sparsity. ``highs:portfolio`` forces the time-sliced leaps + best-first search ("auto" uses it above 48 weights).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# One BLAS thread, set before numpy loads OpenBLAS: on small blocks a multi-threaded BLAS under load made
# single Cholesky calls take seconds and inflated every miqp/highs time.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from cbs_opt import Problem  # noqa: E402
from cbs_opt.instances import random_problem  # noqa: E402
from solvers import solve  # noqa: E402


def real_blocks(data: str | None, n_samples: int, damping: float, quick: bool):
    """(name, weights, grads) for MLPNet blocks: fc3 row 0, fc2 row 0, fc1 row 0 weights 392:432."""
    import mlpnet_common as mc
    model = mc.load_mlpnet(data)
    w = mc.flat_weights(model)
    G = mc.mlpnet_gradients(n_samples, 0, data)
    fc2_off, fc3_off = 784 * 40, 784 * 40 + 40 * 20
    blocks = [("fc3 row 0 (p=20)", np.arange(fc3_off, fc3_off + 20)),
              ("fc2 row 0 (p=40)", np.arange(fc2_off, fc2_off + 40))]
    if not quick:
        blocks += [("fc3 row 5 (p=20)", np.arange(fc3_off + 100, fc3_off + 120)),
                   ("fc2 row 7 (p=40)", np.arange(fc2_off + 280, fc2_off + 320))]
    blocks.append(("fc1 row 0, cols 392-431 (p=40)", np.arange(392, 432)))
    return [(name, w[idx], G[:, idx]) for name, idx in blocks]


GRID_BLOCKS = {  # name → flat indices in MLPNet's weight vector (fc1 40×784, fc2 20×40, fc3 10×20)
    "fc3 row 0": np.arange(784 * 40 + 800, 784 * 40 + 820),
    "fc2 row 0": np.arange(784 * 40, 784 * 40 + 40),
    "fc2 rows 0-1": np.arange(784 * 40, 784 * 40 + 80),
    "fc1 row 0, cols 392-455": np.arange(392, 456),
    "fc1 row 0, cols 392-487": np.arange(392, 488),
    "fc1 row 0, cols 392-519": np.arange(392, 520),
}


_LAYERS = {"fc1": (0, 784, 40), "fc2": (784 * 40, 40, 20), "fc3": (784 * 40 + 800, 20, 10)}  # offset, cols, rows


def block_indices(name: str) -> np.ndarray | None:
    """Flat indices of a named block: a ``GRID_BLOCKS`` name, or any "fcL row R", "fcL rows R-S" or
    "fcL row R, cols A-B" (inclusive ranges; e.g. "fc1 row 5, cols 200-263"); ``None`` if not a block."""
    import re
    if name in GRID_BLOCKS:
        return GRID_BLOCKS[name]
    m = re.fullmatch(r"(fc[123]) rows? (\d+)(?:-(\d+))?(?:, cols (\d+)-(\d+))?", name.strip())
    if m is None:
        return None
    off, ncols, nrows = _LAYERS[m[1]]
    r0, r1 = int(m[2]), int(m[3] or m[2])
    c0, c1 = (int(m[4]), int(m[5])) if m[4] else (0, ncols - 1)
    if not (0 <= r0 <= r1 < nrows and 0 <= c0 <= c1 < ncols) or (m[3] and m[4]):
        return None
    return np.concatenate([off + r * ncols + np.arange(c0, c1 + 1) for r in range(r0, r1 + 1)])


def grid_blocks(data: str | None, n_samples: int, names: list[str] | None):
    """(name, weights, grads) for the issue-14 grid (or the ``names`` picked from it / parsed by
    :func:`block_indices`)."""
    import mlpnet_common as mc
    unknown = sorted(n for n in names or () if block_indices(n) is None)
    if unknown:
        raise SystemExit(f"unknown block(s) {unknown}; choose from {sorted(GRID_BLOCKS)} or name one as "
                         f"'fc1 row R, cols A-B' / 'fc2 row R' / 'fc2 rows R-S'")
    model = mc.load_mlpnet(data)
    w = mc.flat_weights(model)
    G = mc.mlpnet_gradients(n_samples, 0, data)
    picked = [(n, block_indices(n)) for n in names] if names else list(GRID_BLOCKS.items())
    return [(name, w[idx], G[:, idx]) for name, idx in picked]


def run(prob: Problem, engine: str, time_limit: float):
    """One solve; ``engine`` is an engine name, ``highs:<search>`` to force the highs engine's search, or
    ``gurobi:<formulation>`` / ``scip:<formulation>`` to pick the Pyomo model (``gurobi:dense`` has 2p
    variables and fits Gurobi's size-limited pip licence up to p ≈ 100, where the low-rank model does not)."""
    engine, _, variant = engine.partition(":")
    options = {("search" if engine == "highs" else "formulation"): variant} if variant else {}
    t = time.perf_counter()
    try:
        sol = solve(prob, "miqp", engine=engine, time_limit=time_limit, **options)
    except Exception as exc:  # an engine refusing (licence size) is a result, not a crash
        return {"text": f"error: {type(exc).__name__}", "obj": None, "proven": False, "gap": None}
    secs = time.perf_counter() - t
    if sol.status == "optimal":
        return {"text": f"{secs:.2f} s", "obj": sol.objective, "proven": True, "gap": 0.0}
    gap = sol.gap if sol.gap is not None else float("nan")
    return {"text": f"limit, gap {100 * gap:.1f}%", "obj": sol.objective, "proven": False, "gap": gap}


def grid(args, limit: float) -> None:
    """The issue-14 grid: real blocks × dampings × sparsities (or an N:M pattern), engines side by side."""
    blocks = grid_blocks(args.data, 1000, args.blocks)
    budgets = [("pattern", args.pattern)] if args.pattern else [("sparsity", s) for s in args.sparsities]
    print(f"time to proven optimality, {args.objective!r} objective, limit {limit:g} s, one thread each, "
          f"MLPNet blocks, N = 1000\n")
    print("| block | p | damping | budget | " + " | ".join(f"miqp/{e}" for e in args.engines) + " | same optimum |")
    print("|" + "---|" * (len(args.engines) + 5))
    results = []   # (name, p, damping, budget, {engine: result})
    for damping in args.dampings:
        for name, w, G in blocks:
            for kind, value in budgets:
                prob = Problem(w, G, damping=damping, objective=args.objective, **{kind: value})
                res = {e: run(prob, e, limit) for e in args.engines}
                objs = [r["obj"] for r in res.values() if r["obj"] is not None]
                same = "yes" if objs and max(objs) - min(objs) <= 1e-6 * max(abs(min(objs)), 1e-12) else "no"
                print(f"| {name} | {w.size} | {damping:g} | {value} | "
                      + " | ".join(r["text"] for r in res.values()) + f" | {same} |", flush=True)
                results.append((name, w.size, damping, value, res))
    print("\nlargest p proven at every budget of the run, per damping and engine:\n")
    print("| damping | " + " | ".join(args.engines) + " |")
    print("|" + "---|" * (len(args.engines) + 1))
    for damping in args.dampings:
        cells = []
        for e in args.engines:
            proven = {}
            for name, p, d, _, res in results:
                if d == damping:
                    proven[(name, p)] = proven.get((name, p), True) and res[e]["proven"]
            ps = [p for (name, p), ok in proven.items() if ok]
            cells.append(str(max(ps)) if ps else "none")
        print(f"| {damping:g} | " + " | ".join(cells) + " |")
    open_rows = [(name, p, d, v, res) for name, p, d, v, res in results
                 if not any(r["proven"] for r in res.values())]
    if open_rows:
        print("\nwhere nothing proves, the gap each engine leaves:\n")
        for name, p, d, v, res in open_rows:
            gaps = ", ".join(f"{e} {100 * r['gap']:.1f}%" if r["gap"] is not None else f"{e} error"
                             for e, r in res.items())
            print(f"* {name} (p={p}), damping {d:g}, {v}: {gaps}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grid, 20 s limit")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds per solve (default 60; quick 20)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="generated block sizes p")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    ap.add_argument("--engines", nargs="+", default=["highs", "gurobi", "scip"],
                    help="engines; highs:leaps / highs:best_first / highs:portfolio force the highs engine's search")
    ap.add_argument("--no-real", action="store_true", help="skip the MLPNet blocks")
    ap.add_argument("--data", default=None, help="reference data folder (default $CBS_OPT_DATA or ../shared/data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objective", choices=["update", "selection"], default="update")
    ap.add_argument("--grid", action="store_true", help="issue 14's grid of real blocks (see the module doc)")
    ap.add_argument("--dampings", type=float, nargs="+", default=[1e-3], help="--grid: dampings")
    ap.add_argument("--blocks", nargs="+", default=None, help=f"--grid: block names, from {sorted(GRID_BLOCKS)}")
    ap.add_argument("--pattern", default=None, help="--grid: an N:M budget (e.g. 2:4) instead of sparsities")
    args = ap.parse_args(argv)
    limit = args.time_limit or (20.0 if args.quick else 60.0)
    if args.grid:
        grid(args, limit)
        return
    sizes = args.sizes or ([20, 30, 40] if args.quick else [20, 30, 40, 50])

    rows = []
    for p in sizes:
        for s in args.sparsities:
            rows.append((f"generated low-rank p={p}, N={p // 2}", s,
                         random_problem(p, sparsity=s, seed=args.seed, damping=1e-3, objective=args.objective)))
    if not args.no_real:
        for name, w, G in real_blocks(args.data, 1000, 1e-3, args.quick):
            for s in args.sparsities:
                rows.append((f"MLPNet {name}, N=1000", s, Problem(w, G, damping=1e-3, sparsity=s,
                                                                   objective=args.objective)))

    head = "| block | sparsity | " + " | ".join(f"miqp/{e}" for e in args.engines) + " | same optimum |"
    print(f"time to proven optimality, {args.objective!r} objective, limit {limit:g} s, one thread each\n")
    print(head)
    print("|" + "---|" * (len(args.engines) + 3))
    for name, s, prob in rows:
        res = [run(prob, e, limit) for e in args.engines]
        objs = [r["obj"] for r in res if r["obj"] is not None]
        same = "yes" if objs and max(objs) - min(objs) <= 1e-6 * max(abs(min(objs)), 1e-12) else "no"
        print(f"| {name} | {s:g} | " + " | ".join(r["text"] for r in res) + f" | {same} |", flush=True)


if __name__ == "__main__":
    main()
