"""Structured (N:M) pruning of the pretrained MLPNet on MNIST (issue 12, docs/benchmarks/structured.md).

For each pattern (2:4, 1:4, 4:8 by default) and damping rule: N = 1000 per-sample NLL gradients, the
groups of ``cbs_opt.structured.block_budget`` (M consecutive weights along each row's input dimension,
M − N pruned in each), then per method the test accuracy on all 10,000 MNIST test images and the seconds
(Fisher excluded for one-stage rows; everything included for multi-stage rows):

  magnitude            smallest |w| per group, survivors unchanged
  magnitude + CBS-U    same mask, CBS-U of the survivors (one Fisher block over all weights)
  OBS + CBS-U          smallest single-weight OBS score per group, CBS-U
  greedy_swap + CBS-U  the paper's swap search, swaps inside a group (magnitude start), CBS-U
  update_swap + CBS-U  swaps on the exact update objective inside a group (OBS start), CBS-U
  miqp per row         blocks="row" (one Fisher block per output row), exact MIQP per row with a time limit
                       per row: rows proven optimal are counted; the others keep the best incumbent; CBS-U per row
  OBS + CBS-U, k stages  fraction 1/k, 2/k, …, 1 of each group's count per stage (block_budget(fraction=)),
                       Fisher re-estimated on the pruned network each stage, pruned weights held at zero

  CBS-U, chosen on training loss  magnitude and OBS masks × CBS-U dampings (--select-dampings) on one
                       Fisher block; the lowest mean NLL on 5,000 held-out *training* images wins (never the test set)

The one-stage rows run ``fisher.build_blocks`` + ``structured.block_budget`` + ``solvers.solve`` +
``Block.scatter`` (the path prune() takes), so the numbers do not depend on prune()'s other defaults;
``--path prune`` sends them through ``cbs_opt.prune(model, data, pattern=…, select=None)`` instead (it
reproduces the block path: OBS + CBS-U at 2:4, relative:1e-5 gives 93.26% either way). Every written mask is checked with ``structured.check_masks``.

    nice -n 10 python benchmarks/structured.py --patterns 2:4 --dampings 1e-5,relative:1e-5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlpnet_common import PARAM_NAMES, accuracy, load_mlpnet, load_mnist  # noqa: E402

import solvers  # noqa: E402
from cbs_opt.fisher import build_blocks  # noqa: E402
from cbs_opt.structured import block_budget, check_masks  # noqa: E402

METHODS = ("magnitude", "magnitude + CBS-U", "OBS + CBS-U", "greedy_swap + CBS-U", "update_swap + CBS-U",
           "miqp per row", "OBS + CBS-U, 2 stages", "CBS-U, chosen on training loss")


def _params(model, pattern: str) -> dict[str, torch.Tensor]:
    """The weights an N:M pattern can apply to: those whose row length is a multiple of M (4:8 leaves
    fc3, rows of 20, dense — as hardware sparsity tools skip such layers)."""
    m = int(pattern.split(":")[1])
    named = dict(model.named_parameters())
    return {n: named[n] for n in PARAM_NAMES if named[n][0].numel() % m == 0}


def _shapes(model, pattern: str) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in _params(model, pattern).items()}


def _fresh(model):
    out = load_mlpnet()
    out.load_state_dict(model.state_dict())
    return out.eval()


def one_stage(model, train, pattern: str, damping, *, solver: str, update: bool, blocks="model",
              n_samples: int = 1000, seed: int = 0, masks=None, fraction: float = 1.0,
              solver_options: dict | None = None, time_limit: float | None = None):
    """One stage on the block path: (pruned model, keep-masks, seconds of the solves+updates, info)."""
    shapes = _shapes(model, pattern)
    built = build_blocks(model, train, params=list(shapes), n_samples=n_samples, damping=damping,
                         blocks=blocks, seed=seed, masks=masks)
    out = _fresh(model)
    params = _params(out, pattern)
    keep = {n: (np.ones(int(np.prod(s)), bool) if masks is None else np.asarray(masks[n]).reshape(-1).copy())
            for n, s in shapes.items()}
    seconds, proven, statuses, by_param = 0.0, 0, [], {}
    with torch.no_grad():
        tensors = {n: t.data for n, t in params.items()}
        for n in shapes:  # held at zero: coordinates pruned before
            tensors[n].view(-1)[torch.as_tensor(~keep[n])] = 0.0
        for block in built:
            budget = block_budget(block, shapes, pattern=pattern, pruned_before=masks, fraction=fraction)
            prob = block.problem.with_budget(budget)
            start = time.perf_counter()
            sol = solvers.solve(prob, solver, seed=seed, time_limit=time_limit, **(solver_options or {}))
            vec = sol.weights if update else prob.zeroed(sol.pruned)
            seconds += time.perf_counter() - start
            statuses.append(str(sol.status))
            proven += sol.status == "optimal"
            owner = block.param_slices[0].name.split(".")[0]
            done, total = by_param.get(owner, (0, 0))
            by_param[owner] = (done + (sol.status == "optimal"), total + 1)
            block.scatter(vec, tensors)
            for s in block.param_slices:
                keep[s.name][s.indices[sol.pruned[(sol.pruned >= s.start) & (sol.pruned < s.stop)] - s.start]] = False
            block.release()
    return out, keep, seconds, {"blocks": len(built), "proven": proven, "statuses": statuses,
                                "proven_by_param": {k: f"{a}/{b}" for k, (a, b) in by_param.items()}}


def _blocks(text: str):
    return int(text) if text.isdigit() else text


@torch.no_grad()
def _heldout_loss(model, train, n: int, seed: int) -> float:
    """Mean NLL on ``n`` seeded training images (a different draw from the Fisher's; never the test set)."""
    x, y = train
    idx = torch.as_tensor(np.random.default_rng(10_000 + seed).choice(x.shape[0], size=n, replace=False))
    return float(torch.nn.functional.cross_entropy(model(x[idx]), y[idx]))


def select_on_training(model, train, pattern: str, dampings, args):
    """magnitude / OBS masks × CBS-U dampings on one Fisher block; the candidate with the lowest held-out
    *training* loss wins (the test set is never looked at). → (model, keep, seconds, info)"""
    shapes = _shapes(model, pattern)
    (base,) = build_blocks(model, train, params=list(shapes), n_samples=1000, damping=dampings[0],
                           blocks="model", seed=args.seed)
    budget = block_budget(base, shapes, pattern=pattern)
    best, seconds, tried = None, 0.0, []
    for solver in ("magnitude", "obs"):
        for d in dampings:
            block = base.with_damping(d)
            prob = block.problem.with_budget(budget)
            start = time.perf_counter()
            sol = solvers.solve(prob, solver, seed=args.seed)
            seconds += time.perf_counter() - start
            out = _fresh(model)
            with torch.no_grad():
                block.scatter(sol.weights, {n: t.data for n, t in _params(out, pattern).items()})
            loss = _heldout_loss(out, train, args.select_samples, args.seed)
            tried.append((solver, str(d), round(loss, 5)))
            if best is None or loss < best[0]:
                best = (loss, solver, str(d), out, sol.pruned)
            block.release()
    loss, solver, d, out, pruned = best
    keep = {n: np.ones(int(np.prod(sh)), bool) for n, sh in shapes.items()}
    for sl in base.param_slices:
        keep[sl.name][sl.indices[pruned[(pruned >= sl.start) & (pruned < sl.stop)] - sl.start]] = False
    return out, keep, seconds, {"chosen": f"{solver} @ {d}", "tried": tried}


def via_prune(model, train, pattern: str, damping, *, solver: str, update: bool, blocks, seed: int,
              solver_options: dict | None, time_limit: float | None, stages: int = 1):
    """The same stage(s) through ``cbs_opt.prune(pattern=...)`` (``--path prune``).
    → (model, keep, seconds of everything, info)"""
    import inspect

    import cbs_opt

    if "pattern" not in inspect.signature(cbs_opt.prune).parameters:
        raise SystemExit("--path prune: this cbs_opt.prune() has no pattern= argument yet; use --path blocks")
    t0 = time.perf_counter()
    res = cbs_opt.prune(model, train, pattern=pattern, solver=solver, update=update, blocks=blocks,
                        damping=damping, n_samples=1000, seed=seed, stages=stages, params=list(_shapes(model, pattern)),
                        solver_options=solver_options, time_limit=time_limit, select=None)
    keep = {n: res.masks[n].detach().cpu().numpy().reshape(-1) for n in _shapes(model, pattern)}
    return res.model.eval(), keep, time.perf_counter() - t0, {"path": "prune"}


def run_method(method: str, model, train, pattern: str, damping, args) -> dict:
    n, m = map(int, pattern.split(":"))
    t0 = time.perf_counter()
    info: dict = {}
    if method == "CBS-U, chosen on training loss":
        pruned, keep, seconds, info = select_on_training(model, train, pattern, args.select_dampings, args)
        info["candidates"] = len(info["tried"])
    elif method.endswith("stages"):
        stages = int(method.rsplit(",", 1)[1].split()[0])
        solver = "obs" if method.startswith("OBS") else "update_swap"
        opts = {} if solver == "obs" else {"init": "obs"}
        current, masks, solve_s = model, None, 0.0
        for k in range(1, stages + 1):
            current, keep, s, _ = one_stage(current, train, pattern, damping, solver=solver, update=True,
                                            blocks=_blocks(args.blocks), seed=args.seed + k - 1, masks=masks, fraction=k / stages,
                                            solver_options=opts, time_limit=args.swap_time)
            masks = {nm: keep[nm].reshape(sh) for nm, sh in _shapes(model, pattern).items()}
            solve_s += s
        seconds = time.perf_counter() - t0  # everything, Fisher included
        pruned = current
        info["solve_seconds"] = round(solve_s, 2)
    else:
        solver, update, blocks, opts, limit = {
            "magnitude": ("magnitude", False, "model", {}, None),
            "magnitude + CBS-U": ("magnitude", True, _blocks(args.blocks), {}, None),
            "OBS + CBS-U": ("obs", True, _blocks(args.blocks), {}, None),
            "greedy_swap + CBS-U": ("greedy_swap", True, _blocks(args.blocks), {"init": "magnitude"}, args.swap_time),
            "update_swap + CBS-U": ("update_swap", True, _blocks(args.blocks), {"init": "obs"}, args.swap_time),
            "miqp per row": ("miqp", True, "row", {}, args.row_time),
        }[method]
        stage = via_prune if args.path == "prune" else one_stage
        pruned, keep, seconds, stage_info = stage(model, train, pattern, damping, solver=solver, update=update,
                                                  blocks=blocks, seed=args.seed, solver_options=opts,
                                                  time_limit=limit)
        info.update({k: v for k, v in stage_info.items() if k == "path"})
        if method == "miqp per row" and "proven" in stage_info:
            info["rows_proven"] = f"{stage_info['proven']}/{stage_info['blocks']}"
            info["rows_proven_by_layer"] = stage_info["proven_by_param"]
    masks = {nm: torch.as_tensor(keep[nm].reshape(sh)) for nm, sh in _shapes(model, pattern).items()}
    check_masks(masks, pattern=pattern)  # every written mask honours N:M
    # the weights written agree with the masks (pruned coordinates are zero)
    for nm, t in _params(pruned, pattern).items():
        assert not torch.any(t.detach()[~masks[nm]] != 0), nm
    info["wall_seconds"] = round(time.perf_counter() - t0, 2)  # Fisher and everything included
    info["pruned_params"] = ",".join(n.split(".")[0] for n in masks)
    acc = accuracy(pruned)
    blocks = ("row" if method == "miqp per row" else
              "model" if method in ("magnitude", "CBS-U, chosen on training loss") else args.blocks)
    return {"pattern": pattern, "damping": str(damping), "blocks": blocks, "method": method, "accuracy": round(acc, 2),
            "seconds": round(seconds, 2), **info}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patterns", default="2:4,1:4,4:8")
    ap.add_argument("--dampings", default="1e-5,relative:1e-5", help="comma-separated damping rules")
    ap.add_argument("--methods", default=",".join(m.replace(",", ";") for m in METHODS),
                    help="comma-separated; a ',' inside a name is written ';'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--path", choices=("blocks", "prune"), default="blocks",
                    help="one-stage rows: build_blocks + block_budget + solvers.solve + Block.scatter (default, what "
                         "the recorded numbers used), or cbs_opt.prune(pattern=..., select=None)")
    ap.add_argument("--blocks", default="model", help="Fisher blocks of the non-row methods: model, layer, row "
                                                      "or a chunk size (a multiple of every row length)")
    ap.add_argument("--swap-time", type=float, default=60.0, help="time limit of greedy_swap / update_swap")
    ap.add_argument("--row-time", type=float, default=2.0, help="time limit of each per-row miqp solve")
    ap.add_argument("--select-dampings", default="relative:1e-3,relative:1e-4,relative:1e-5,relative:1e-6",
                    help="CBS-U dampings tried by 'CBS-U, chosen on training loss'")
    ap.add_argument("--select-samples", type=int, default=5000, help="held-out training images scoring them")
    ap.add_argument("--json", default=None, help="append records (JSON lines) to this file")
    args = ap.parse_args(argv)
    args.select_dampings = [float(d) if not d.startswith("relative") else d for d in args.select_dampings.split(",")]
    torch.manual_seed(args.seed)
    model = load_mlpnet()
    x, y = load_mnist(None, "train")
    train = (x, y)
    print(f"dense accuracy {accuracy(model):.2f}%", flush=True)
    for pattern in args.patterns.split(","):
        for damping in args.dampings.split(","):
            damping = float(damping) if not damping.startswith("relative") else damping
            for method in args.methods.split(","):
                method = method.replace(";", ",").strip()
                rec = run_method(method, model, train, pattern, damping, args)
                print(json.dumps(rec), flush=True)
                if args.json:
                    with open(args.json, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
