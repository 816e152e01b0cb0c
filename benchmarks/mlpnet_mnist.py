"""Reproduce the CBS paper's MLPNet / MNIST one-shot study on the real pretrained network.

The pretrained MLPNet (784-40-20-10, 32,360 weights) and MNIST from the reference data
(``--data`` / ``$CBS_OPT_DATA`` / ``../shared/data``). Per seed: N per-sample NLL gradients on seeded
training images, damping λ, one Fisher block over all weights; then for each global sparsity the test
accuracy (all 10,000 test images) and the seconds of each method:

  magnitude                 prune the smallest |w|, survivors unchanged
  magnitude + CBS-U         the same set, survivors moved optimally (combinatorial OBS update)
  OBS                       single-weight OBS (WoodFisher) scores w²/(2[F⁻¹]_ii), no update
  OBS + WF update           ... with WoodFisher's update (sum of the single-weight OBS updates)
  OBS + CBS-U               ... with the exact joint update
  CBS-S                     greedy swap (the paper's Algorithm 1, magnitude start), no update
  CBS (greedy swap + CBS-U) the paper's CBS
  best one-stage            greedy swap from magnitude, OBS and RMP starts plus RMP draws without swaps,
                            the (start, pass) chosen on training images (accuracy by default, the paper
                            used the loss) with CBS-U weights, then the CBS-U step's damping chosen the
                            same way (see best_one_stage)
  default                   cbs_opt.prune(model, train, s, n_samples=N, seed=seed): every other argument at
                            its default (candidates chosen on held-out training images)
  S-stage                   cbs_opt.prune(model, train, s, stages=S, n_samples=N, seed=seed): the default per
                            stage, the Fisher recomputed on the pruned network each stage

Averaged over ``--seeds`` Fisher samples (the paper uses 5). Prints Markdown tables.

    python benchmarks/mlpnet_mnist.py --quick          # 1 seed, sparsities 0.7 0.9 0.98
    python benchmarks/mlpnet_mnist.py                  # the full study (5 seeds, 7 sparsities)
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlpnet_common as mc  # noqa: E402

import solvers  # noqa: E402
from cbs_opt import Problem, prune  # noqa: E402
from cbs_opt.curvature import LowRankCurvature  # noqa: E402
from solvers.greedy_swap import initial_pruned, rmp_candidates  # noqa: E402
from solvers.magnitude import smallest  # noqa: E402

SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
QUICK_SPARSITIES = (0.7, 0.9, 0.98)
DENSE_REFERENCE = 93.97


# -- updates and selection --------------------------------------------------------------------------
_INV_DIAG: dict[int, np.ndarray] = {}


def inverse_diagonal(problem: Problem) -> np.ndarray:
    """diag(F⁻¹), computed once per Fisher (problems from ``with_n_prune`` share their curvature)."""
    key = id(problem.curvature)
    if key not in _INV_DIAG:
        _INV_DIAG.clear()
        _INV_DIAG[key] = problem.curvature.inverse_diagonal()
    return _INV_DIAG[key]


def obs_start(problem: Problem) -> np.ndarray:
    """The OBS selection (smallest w²/(2[F⁻¹]_ii)), as the ``obs`` backend computes it."""
    w = problem.weights
    return smallest(w * w / (2.0 * inverse_diagonal(problem)), problem.n_prune)


def woodfisher_update(problem: Problem, pruned: np.ndarray) -> np.ndarray:
    """WoodFisher's multi-weight update: the sum of the single-weight OBS updates, then exact zeros.

    δ = −F⁻¹ Σ_{i∈P} e_i w_i / [F⁻¹]_ii  (interactions between pruned weights ignored).
    """
    w = problem.weights
    coef = np.zeros(problem.p)
    coef[pruned] = w[pruned] / inverse_diagonal(problem)[pruned]
    x = w - problem.curvature.solve(coef)
    x[pruned] = 0.0
    return x


class TrainingLoss:
    """A score to minimise for the MLPNet with given flat weights, on a fixed seeded set of *training* images.

    ``criterion="loss"``: the mean NLL (the paper's choice). ``"accuracy"``: minus the top-1 accuracy (%),
    ties broken by the NLL — at 98% sparsity the NLL ranks candidates against their accuracy (see the
    benchmark notes), the training accuracy tracks the test accuracy.
    """

    def __init__(self, directory, n: int, seed: int, criterion: str = "accuracy"):
        if criterion not in ("loss", "accuracy"):
            raise ValueError(f"criterion must be 'loss' or 'accuracy', got {criterion!r}")
        x, y = mc.load_mnist(directory, "train")
        idx = torch.as_tensor(mc.sample_indices(n, seed))
        self.x, self.y = x[idx], y[idx]
        self.model = mc.MLPNet().eval()
        self.criterion = criterion

    @torch.no_grad()
    def __call__(self, weights: np.ndarray) -> float:
        start = 0
        for name in mc.PARAM_NAMES:
            param = dict(self.model.named_parameters())[name]
            chunk = np.array(weights[start:start + param.numel()], dtype=np.float32)  # a writable copy
            param.copy_(torch.from_numpy(chunk).reshape(param.shape))
            start += param.numel()
        out = self.model(self.x)
        nll = float(torch.nn.functional.cross_entropy(out, self.y))
        if self.criterion == "loss":
            return nll
        return -100.0 * float((out.argmax(1) == self.y).float().mean()) + 1e-6 * nll


def _checkpoints(n_passes: int) -> list[int]:
    """Pass ends at which a trajectory is scored: the start, the first pass, half-way and the last."""
    return sorted({0, min(1, n_passes), n_passes // 2, n_passes})


def cbs_update(problem: Problem, pruned: np.ndarray, damping: float) -> np.ndarray:
    """CBS-U of ``pruned`` under the Fisher of ``problem`` re-damped with ``damping``."""
    if damping == problem.damping:
        return problem.update(pruned)
    curv = LowRankCurvature(problem.grads, damping)
    x = problem.weights + curv.constrained_step(np.asarray(pruned, dtype=np.intp), problem.weights)
    x[pruned] = 0.0
    return x


def best_one_stage(problem: Problem, loss: TrainingLoss, *, seed: int, rmp_draws: int = 3,
                   rmp_extra: int = 16, update_dampings=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                   time_limit: float | None = None) -> tuple[np.ndarray, dict]:
    """cbs-opt's best one-stage configuration, every choice made on *training* images (never the test set).

    Greedy swap (the paper's Algorithm 1) from the magnitude, OBS and ``rmp_draws`` RMP starts; each
    trajectory is scored at a few pass ends (start, first pass, half-way, last) by ``loss`` (training
    NLL or accuracy, see :class:`TrainingLoss`) of its CBS-U weights, and the best (start, pass) is kept —
    the paper's protocol. ``rmp_extra`` further RMP draws are scored as they are (CBS-U, no swaps: at high
    sparsity the swaps, which optimise the selection objective, can move away from sets that the update
    repairs well). Then the strength of the CBS-U step is chosen the same way: the damping of the update
    (not of the selection) among ``update_dampings``. Returns the new weights and the choices made.
    """
    m = problem.n_prune
    starts = [("magnitude", initial_pruned(problem, "magnitude")[0]), ("obs", obs_start(problem))]
    starts += [(f"rmp{k}", c) for k, c in enumerate(rmp_candidates(problem.weights, m, rmp_draws, seed))]
    best = (np.inf, None, None)
    for label, start in starts:
        events: list[dict] = []
        sol = solvers.solve(problem, "greedy_swap", seed=seed, time_limit=time_limit, init=start,
                            trace=events.append)
        pruned_mask = np.zeros(problem.p, dtype=bool)
        pruned_mask[start] = True
        passes = int(sol.info.get("passes", 0))
        wanted = set(_checkpoints(passes))
        by_pass: dict[int, list[dict]] = {}
        for e in events:
            by_pass.setdefault(int(e["pass"]), []).append(e)
        for p in range(0, passes + 1):
            for e in by_pass.get(p, []):  # replay the pass's accepted swaps
                pruned_mask[e["out"]] = False
                pruned_mask[e["into"]] = True
            if p in wanted:
                pruned = np.flatnonzero(pruned_mask)
                value = loss(sol.weights if p == passes else problem.update(pruned))
                if value < best[0]:
                    best = (value, pruned, f"{label}, pass {p}")
        if not np.array_equal(np.flatnonzero(pruned_mask), sol.pruned):
            raise RuntimeError("trace replay disagrees with greedy_swap's answer")
    for k, cand in enumerate(rmp_candidates(problem.weights, m, rmp_extra, seed + 100) if rmp_extra else []):
        value = loss(problem.update(cand))
        if value < best[0]:
            best = (value, cand, f"rmp extra draw {k}, no swaps")
    _, pruned, choice = best
    scored = [(loss(x), lam, x) for lam in update_dampings for x in [cbs_update(problem, pruned, lam)]]
    value, lam, x = min(scored, key=lambda t: t[0])
    return x, {"choice": f"{choice}, update damping {lam:g}", "train_score": value}


# -- the study ------------------------------------------------------------------------------------
METHODS = ("magnitude", "magnitude + CBS-U", "OBS", "OBS + WF update", "OBS + CBS-U", "CBS-S (greedy swap)",
           "CBS (greedy swap + CBS-U)", "best one-stage", "default")


def run_one_stage(problem: Problem, sparsity: float, loss: TrainingLoss, seed: int, methods,
                  rmp_extra: int = 16, args=None) -> dict:
    """{method: (accuracy %, seconds)} for one Fisher sample and one sparsity."""
    P = problem.with_n_prune(int(round(sparsity * problem.p)))
    out = {}

    def selected(solver):
        sol = solvers.solve(P, solver, seed=seed)
        return sol.pruned, sol.seconds  # the backend's own time (the registry also computes CBS-U)

    def timed(fn):
        t0 = time.perf_counter()
        x = fn()
        return x, time.perf_counter() - t0

    cache = {}
    for method in methods:
        if method in ("magnitude", "magnitude + CBS-U"):
            if "mag" not in cache:
                cache["mag"] = selected("magnitude")
            pruned, t_sel = cache["mag"]
        elif method.startswith("OBS"):
            if "obs" not in cache:
                cache["obs"] = timed(lambda: obs_start(P))  # = the obs backend, with diag(F⁻¹) cached
                assert np.array_equal(cache["obs"][0], solvers.solve(P, "obs").pruned)
            pruned, t_sel = cache["obs"]
        elif method in ("CBS-S (greedy swap)", "CBS (greedy swap + CBS-U)"):
            if "cbs" not in cache:
                cache["cbs"] = selected("greedy_swap")
            pruned, t_sel = cache["cbs"]
        elif method == "default":
            model, train = mc.load_mlpnet(args.data), mc.load_mnist(args.data, "train")
            t0 = time.perf_counter()
            res = prune(model, train, sparsity, n_samples=args.n_samples, seed=seed)
            t = time.perf_counter() - t0
            ch = res.stages[-1].choice
            note = ch.get("candidate", "") + (f" → update {ch['update_damping']}" if "update_damping" in ch else "")
            out[method] = (mc.accuracy(res.model, args.data), t, note)
            continue
        elif method == "best one-stage":
            (x, info), t = timed(lambda: best_one_stage(P, loss, seed=seed, rmp_extra=rmp_extra))
            out[method] = (mc.evaluate_accuracy(x), t, info["choice"])
            continue
        else:
            raise ValueError(method)
        if method.endswith("CBS-U") or method == "CBS (greedy swap + CBS-U)":
            x, t_up = timed(lambda: P.update(pruned))
        elif method.endswith("WF update"):
            x, t_up = timed(lambda: woodfisher_update(P, pruned))
        else:
            x, t_up = P.zeroed(pruned), 0.0
        out[method] = (mc.evaluate_accuracy(x), t_sel + t_up, "")
    return out


def run_multistage(model, train, sparsity: float, stages: int, seed: int, args) -> tuple[float, float]:
    """``prune(model, train, sparsity, stages=S)`` with every other argument at its default (N excepted)."""
    t0 = time.perf_counter()
    res = prune(model, train, sparsity, stages=stages, n_samples=args.n_samples, seed=seed)
    seconds = time.perf_counter() - t0
    return mc.accuracy(res.model, args.data), seconds


def fmt(values) -> str:
    values = np.asarray(values, dtype=float)
    if values.size == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="reference data folder (default: $CBS_OPT_DATA or ../shared/data)")
    ap.add_argument("--seeds", type=int, default=5, help="number of Fisher samples (seeds 0..S-1); default 5")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="start the seeds here (seeds F..F+S-1), to split a study over runs")
    ap.add_argument("--sparsities", type=str, default=None,
                    help="comma-separated global sparsities (default 0.5,0.6,0.7,0.8,0.9,0.95,0.98)")
    ap.add_argument("--n-samples", type=int, default=1000, help="per-sample gradients N (default 1000)")
    ap.add_argument("--damping", type=float, default=1e-3, help="Fisher damping λ (default 1e-3)")
    ap.add_argument("--stages", type=str, default="10",
                    help="comma-separated stage counts of the multi-stage rows, prune(..., stages=S) with the "
                         "other arguments at their defaults ('' for none; default 10)")
    ap.add_argument("--stage-sparsities", type=str, default=None,
                    help="comma-separated sparsities at which the multi-stage rows run (default: all)")
    ap.add_argument("--loss-samples", type=int, default=10000,
                    help="training images scoring the candidates of 'best one-stage' (default 10000)")
    ap.add_argument("--select-by", choices=("accuracy", "loss"), default="accuracy",
                    help="how 'best one-stage' scores candidates on the training images (default accuracy; "
                         "the paper used the loss)")
    ap.add_argument("--rmp-extra", type=int, default=16,
                    help="extra RMP draws scored without swaps in 'best one-stage' (default 16)")
    ap.add_argument("--methods", type=str, default=None, help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--quick", action="store_true", help="1 seed, sparsities 0.7,0.9,0.98")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine more threads run slower)")
    ap.add_argument("--out", type=str, default=None, help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    if args.sparsities:
        sparsities = [float(s) for s in args.sparsities.split(",")]
    else:
        sparsities = list(QUICK_SPARSITIES if args.quick else SPARSITIES)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    stage_counts = [int(s) for s in args.stages.split(",") if s.strip()]

    model = mc.load_mlpnet(args.data)
    dense = mc.accuracy(model, args.data)
    print(f"dense test accuracy: {dense:.2f}% (reference {DENSE_REFERENCE}%)", flush=True)
    if abs(dense - DENSE_REFERENCE) > 0.005:
        print("WARNING: the dense accuracy does not reproduce the reference: check the data path / normalisation")
    train = mc.load_mnist(args.data, "train")

    acc = {m: {s: [] for s in sparsities} for m in methods}
    sec = {m: {s: [] for s in sparsities} for m in methods}
    notes: dict = {}
    multi = [f"{S}-stage (default otherwise)" for S in stage_counts]
    for name in multi:
        acc[name] = {s: [] for s in sparsities}
        sec[name] = {s: [] for s in sparsities}
    fisher_seconds = []
    for seed in seeds:
        t0 = time.perf_counter()
        problem = mc.mlpnet_problem(args.n_samples, seed, args.damping, sparsities[0], "update", args.data)
        fisher_seconds.append(time.perf_counter() - t0)
        loss = TrainingLoss(args.data, args.loss_samples, seed + 10_000, args.select_by)
        for s in sparsities:
            res = run_one_stage(problem, s, loss, seed, methods, args.rmp_extra, args)
            for m, (a, t, note) in res.items():
                acc[m][s].append(a)
                sec[m][s].append(t)
                if note:
                    notes.setdefault(m, []).append(f"seed {seed}, {s}: {note}")
            for S, name in zip(stage_counts, multi):
                if args.stage_sparsities and s not in [float(v) for v in args.stage_sparsities.split(",")]:
                    continue
                a, t = run_multistage(model, train, s, S, seed, args)
                acc[name][s].append(a)
                sec[name][s].append(t)
            line = ", ".join(f"{m}: {acc[m][s][-1]:.2f}" for m in acc if acc[m][s])
            print(f"[seed {seed}, sparsity {s}] {line}", flush=True)

    header = "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |"
    rule = "|---|" + "---|" * len(sparsities)
    lines = [f"MLPNet / MNIST, N={args.n_samples}, damping={args.damping:g}, seeds={len(seeds)}, "
             f"dense accuracy {dense:.2f}%, Fisher (gradients + problem) {np.mean(fisher_seconds):.1f} s per seed",
             "", "Test accuracy (%), mean ± std over seeds:", "", header, rule]
    for m in acc:
        lines.append(f"| {m} | " + " | ".join(fmt(acc[m][s]) if acc[m][s] else "–" for s in sparsities) + " |")
    lines += ["", "Seconds per run (mean over seeds; Fisher excluded for the one-stage rows, included for "
              "the multi-stage rows):", "", header, rule]
    for m in sec:
        lines.append(f"| {m} | " + " | ".join(f"{np.mean(sec[m][s]):.1f}" if sec[m][s] else "–"
                                              for s in sparsities) + " |")
    if notes.get("best one-stage"):
        lines += ["", f"Choices of 'best one-stage' (training {args.select_by} on {args.loss_samples} images):", ""]
        lines += [f"- {n}" for n in notes.get("best one-stage", [])]
    if notes.get("default"):
        lines += ["", "Candidates chosen by the default (held-out calibration accuracy):", ""]
        lines += [f"- {n}" for n in notes["default"]]
    stamp = (f"\n_{datetime.date.today()}, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; command: "
             f"python benchmarks/mlpnet_mnist.py {' '.join(sys.argv[1:] if argv is None else argv)}_")
    text = "\n".join(lines) + "\n" + stamp
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
