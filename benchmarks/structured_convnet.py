"""The conv net of the accuracy benchmark (benchmarks/convnet.py) at an N:M pattern (issue 12; results in
docs/benchmarks/structured.md).

Every row is one ``cbs_opt.prune(model, data, pattern=…, …)`` call on the cached ResNetMNIST(width=8)
(``convnet.load_or_train`` with convnet.py's defaults, so its cache is reused): N = 1000 per-sample
gradients, ``select=None`` (the named method only), run once without and once with BatchNorm re-estimation
(``recalibrate_bn=False`` / ``True``; 5,000 held-out calibration images). Then the test accuracy on all
10,000 MNIST test images and the wall seconds of the prune() call (Fisher included). Every written mask of a
pruned layer is checked with ``structured.check_masks`` and the pruned weights are checked to be zero.
Layers whose rows do not divide into groups of M (the stem conv: 1×3×3 = 9 per output channel) stay dense.

  magnitude            solver="magnitude", update=False
  magnitude + CBS-U    solver="magnitude"
  OBS + CBS-U          solver="obs"
  greedy_swap + CBS-U  solver="greedy_swap" (magnitude start), swaps inside a group, --swap-time limit
  update_swap + CBS-U  solver="update_swap" (OBS start), swaps inside a group, --swap-time limit
  miqp per row         solver="miqp", blocks="row", --row-time s per row; rows proven optimal are counted
  default              prune(model, data, pattern=…) with nothing else (BatchNorm re-estimation on)

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/structured_convnet.py --pattern 2:4 --damping relative:1e-5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convnet  # noqa: E402

from cbs_opt import prune  # noqa: E402
from cbs_opt.mnist import load_mnist  # noqa: E402
from cbs_opt.structured import check_masks  # noqa: E402

METHODS = ("magnitude", "magnitude + CBS-U", "OBS + CBS-U", "greedy_swap + CBS-U", "update_swap + CBS-U",
           "miqp per row", "default")


def method_kwargs(method: str, args) -> dict:
    return {
        "magnitude": dict(solver="magnitude", update=False),
        "magnitude + CBS-U": dict(solver="magnitude"),
        "OBS + CBS-U": dict(solver="obs"),
        "greedy_swap + CBS-U": dict(solver="greedy_swap", solver_options={"init": "magnitude"},
                                    time_limit=args.swap_time),
        "update_swap + CBS-U": dict(solver="update_swap", solver_options={"init": "obs"}, time_limit=args.swap_time),
        "miqp per row": dict(solver="miqp", blocks="row", time_limit=args.row_time),
    }[method]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--damping", default="relative:1e-5", help="damping rule of the named methods")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    ap.add_argument("--bn", default="off,on", help="BatchNorm re-estimation settings to run: off, on or off,on")
    ap.add_argument("--swap-time", type=float, default=30.0)
    ap.add_argument("--row-time", type=float, default=1.0, help="time limit of each per-row miqp solve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append records (JSON lines) to this file")
    args = ap.parse_args(argv)
    damping = args.damping if args.damping.startswith("relative") else float(args.damping)
    m = int(args.pattern.split(":")[1])

    model = convnet.load_or_train(argparse.Namespace(  # convnet.py's defaults: its cache
        cache=str(convnet.REPO / "benchmarks" / "results" / "convnet_cache"), width=8, train_samples=60000,
        epochs=2, seed=0, data=None, batch=128, lr=0.1))
    root = convnet.data_dir(None) / "mnist"
    data = load_mnist(root, "train")
    test_x, test_y = load_mnist(root, "test")
    print(f"dense test accuracy {convnet.accuracy(model, test_x, test_y):.2f}%", flush=True)
    for method in (s.strip() for s in args.methods.split(",")):
        settings = [None] if method == "default" else [b.strip() == "on" for b in args.bn.split(",")]
        for bn in settings:
            kw = {} if method == "default" else dict(method_kwargs(method, args), damping=damping, select=None,
                                                      recalibrate_bn=bn, n_samples=1000)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = prune(model, data, pattern=args.pattern, seed=args.seed, **kw)
            seconds = time.perf_counter() - t0
            # the layers the pattern applies to (rows a multiple of M); the others must be left dense
            named = dict(res.model.named_parameters())
            dense = [n for n, t in named.items() if t.dim() > 1 and n not in res.masks]  # left dense
            assert all(named[n][0].numel() % m != 0 for n in dense), dense
            check_masks({n: k.reshape(k.shape[0], -1) for n, k in res.masks.items()}, pattern=args.pattern)
            for n, k in res.masks.items():
                assert not torch.any(named[n].detach()[~k] != 0), n
            for n in dense:  # untouched
                assert torch.equal(named[n], dict(model.named_parameters())[n]), n
            rec = {"pattern": args.pattern, "method": method, "damping": str(kw.get("damping", "default")),
                   "recalibrate_bn": bn, "accuracy": round(convnet.accuracy(res.model, test_x, test_y), 2),
                   "seconds": round(seconds, 1), "n_pruned": res.n_pruned, "n_total": res.n_total,
                   "left_dense": dense, "warnings": sorted({str(w.message)[:120] for w in caught})}
            if method == "miqp per row":
                rec["rows_proven"] = f"{sum(s.status == 'optimal' for s in res.solutions)}/{len(res.solutions)}"
                by_layer: dict[str, list[int]] = {}
                for block, sol in zip(res.blocks, res.solutions):
                    counts = by_layer.setdefault(block.param_slices[0].name, [0, 0])
                    counts[0] += sol.status == "optimal"
                    counts[1] += 1
                rec["rows_proven_by_layer"] = {n: f"{a}/{b}" for n, (a, b) in by_layer.items()}
            if method == "default":
                rec["choice"] = {k: str(v) for k, v in res.stages[-1].choice.items()} if res.stages else {}
            print(json.dumps(rec), flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
            del res


if __name__ == "__main__":
    main()
