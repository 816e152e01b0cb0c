"""Layer-wise reconstruction pruning: magnitude, Wanda, SparseGPT and our searches side by side.

For every network, sparsity and method it reports the per-layer relative reconstruction error
``‖X(W − W')ᵀ‖²/‖XWᵀ‖²`` (``X`` the calibration inputs the layer saw — in sequential mode those of the
network whose earlier layers are already pruned), the end metric (test accuracy or perplexity), the
seconds and how many rows were proven optimal.

Methods (all sequential, as SparseGPT; damping ``λ = 0.01·mean(diag H)``, SparseGPT's ``percdamp``):

* ``magnitude``        smallest ``|w|`` per row, zeroed (as published)
* ``wanda``            smallest ``|w_j|·‖X_j‖`` per row, zeroed (as published)
* ``sparsegpt``        SparseGPT as published: one threshold per 128-column block over the whole layer,
                       its own column-sweep update (:func:`solvers.sparsegpt.sparsegpt_sweep`, ``selection="layer"``)
* ``sparsegpt-row``    the per-row SparseGPT backend (exact per-row quota), its own update
* ``sparsegpt+cbsu``   the per-row SparseGPT mask, then the exact CBS-U update of that mask
* ``obs+cbsu``         single-weight OBS scores per row, then CBS-U
* ``ours``             ``miqp`` (proven optimal per row, within ``--time-limit``) on rows of at most
                       ``--exact-max-p`` weights, ``update_swap`` on larger rows; CBS-U

Run (MLPNet; data from ``--data`` / ``$CBS_OPT_DATA`` / ``../shared/data``):

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/layerwise.py mlpnet --out docs/benchmarks/layerwise_mlpnet.json

``convnet`` loads ``benchmarks/convnet.py``'s ResNet20-style MNIST net (trained and cached there on first use),
prunes all its Conv2d (through unfold) and Linear weights at 50 %, 70 % and 2:4 (the stem, whose rows of 9 weights
cannot take 2:4, stays dense at N:M) and reports the test accuracy without and with BatchNorm re-estimation:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/layerwise.py convnet --n-samples 512 --test-samples 2000

``lm`` trains (once, cached under ``--cache``) a small character-level transformer on the standard library's
own ``.py`` files (split by file) and prunes its Linear layers at 50 %, 70 % and 2:4 (perplexity).
:func:`benchmark_network` is the entry point for any other network (e.g. the conv benchmark).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    # one BLAS thread: on a shared 2-core machine a threaded 784×784 Cholesky took 2 s instead of 14 ms
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cbs_opt.damping import Damping  # noqa: E402
from cbs_opt.fisher import select_parameters  # noqa: E402
from cbs_opt.layerwise import (collect_layer_statistics, layer_curvature, layer_errors,  # noqa: E402
                               layer_reconstruction, prune_layerwise)
from solvers.sparsegpt import sparsegpt_sweep  # noqa: E402

DAMPING = Damping.of_diagonal(0.01)
METHODS = ("magnitude", "wanda", "sparsegpt", "sparsegpt-row", "sparsegpt+cbsu", "obs+cbsu", "ours")


def sparsegpt_published(model: nn.Module, calib, sparsity: float | None = None, *, pattern: str | None = None,
                        n_samples: int, params: Sequence[str] | None = None, blocksize: int = 128,
                        damping=DAMPING) -> tuple[nn.Module, dict[str, float]]:
    """SparseGPT as in the paper, sequentially over the layers: one mask threshold per block over all rows
    of the layer (or N:M), its own update. Returns the pruned copy and the per-layer relative errors."""
    target = copy.deepcopy(model).eval()
    names = select_parameters(target, params)
    params_ = dict(target.named_parameters())
    # the forward order, so each layer's inputs come from the already-pruned earlier layers
    order = _forward_order(target, calib, names)
    errors = {}
    for name in order:
        stats = collect_layer_statistics(target, calib, params=[name], n_samples=n_samples)[name]
        curv = layer_curvature(stats, damping)
        p = params_[name]
        W = p.detach().reshape(p.shape[0], -1).double().numpy()
        if pattern is not None:
            n_keep, m = (int(v) for v in pattern.split(":"))
            Wn, _ = sparsegpt_sweep(W, curv.inverse_upper_factor(), pattern=(n_keep, m),
                                    blocksize=max(m, blocksize - blocksize % m))
        else:
            Wn, _ = sparsegpt_sweep(W, curv.inverse_upper_factor(), n_prune=int(round(sparsity * W.size)),
                                    blocksize=blocksize, selection="layer")
        with torch.no_grad():
            p.copy_(torch.as_tensor(Wn, dtype=p.dtype).reshape(p.shape))
        num, den = layer_reconstruction(curv.hessian, W, Wn)
        errors[name] = num / den if den > 0 else 0.0
    return target, errors


def _forward_order(model: nn.Module, calib, names) -> list[str]:
    order = []
    hooks = [model.get_submodule(n.rpartition(".")[0]).register_forward_hook(
        lambda mod, a, o, n=n: order.append(n) if n not in order else None) for n in names]
    x = calib[0] if isinstance(calib, (tuple, list)) else calib
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return order


def _ours_solver(model: nn.Module, params, exact_max_p: int) -> dict[str, str]:
    named = dict(model.named_parameters())
    return {n: ("miqp" if named[n][0].numel() <= exact_max_p else "update_swap")
            for n in select_parameters(model, params)}


def run_method(method: str, model: nn.Module, calib, *, sparsity: float | None, pattern: str | None,
               n_samples: int, params=None, exact_max_p: int = 48, time_limit: float | None = 30.0,
               seed: int = 0) -> tuple[nn.Module, dict[str, float], dict]:
    """One method → (pruned model, per-layer relative errors, extra info)."""
    if method == "sparsegpt":
        pruned, errors = sparsegpt_published(model, calib, sparsity, pattern=pattern, n_samples=n_samples,
                                             params=params)
        return pruned, errors, {}
    common = dict(n_samples=n_samples, damping=DAMPING, sequential=True, params=params, seed=seed,
                  pattern=pattern)
    if pattern is None:
        common["sparsity"] = sparsity
    if method in ("magnitude", "wanda"):
        res = prune_layerwise(model, calib, solver=method, update="none", **common)
    elif method == "sparsegpt-row":
        res = prune_layerwise(model, calib, solver="sparsegpt", update="backend", **common)
    elif method == "sparsegpt+cbsu":
        res = prune_layerwise(model, calib, solver="sparsegpt", **common)
    elif method == "obs+cbsu":
        res = prune_layerwise(model, calib, solver="obs", **common)
    elif method == "ours":
        solver = _ours_solver(model, params, exact_max_p)
        if pattern is not None:  # structured budgets: the exact searches take total budgets only here
            solver = {n: "update_swap" for n in solver}
        res = prune_layerwise(model, calib, solver=solver, time_limit=time_limit, **common)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    proven = sum(s.status == "optimal" for s in res.solutions)
    return res.model, layer_errors(res), {"rows": len(res.solutions), "proven_optimal": proven,
                                          "sparsity": res.sparsity}


def benchmark_network(name: str, model: nn.Module, calib, evaluate: Callable[[nn.Module], float], *,
                      metric: str, sparsities: Sequence[float] = (0.5, 0.7), patterns: Sequence[str] = (),
                      methods: Sequence[str] = METHODS, n_samples: int = 128, params=None, exact_max_p: int = 48,
                      time_limit: float | None = 30.0, pattern_params=None,
                      extra_metrics: dict[str, Callable[[nn.Module], float]] | None = None,
                      log=None) -> list[dict]:
    """Every method at every budget on one network → one record per (budget, method).

    ``calib``: calibration inputs for :func:`cbs_opt.layerwise.prune_layerwise`; ``evaluate(model)`` the end
    metric (``metric`` names it: "accuracy" higher is better, "perplexity" lower is better).
    ``pattern_params``: the pruned parameters at the N:M budgets (default ``params``; e.g. without a layer
    whose rows are not a multiple of M). ``extra_metrics``: further end metrics ``{key: fn(model)}``
    recorded under ``key`` (dense value under ``"dense_" + key``), e.g. the accuracy after BatchNorm
    re-estimation; every function gets the pruned model and must not change it.
    """
    log = log or (lambda line: print(line, flush=True))
    extra_metrics = dict(extra_metrics or {})
    records = []
    dense = evaluate(model)
    dense_extra = {f"dense_{k}": fn(model) for k, fn in extra_metrics.items()}
    log(f"{name}: dense {metric} {dense:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in dense_extra.items()))
    budgets = [(s, None) for s in sparsities] + [(None, p) for p in patterns]
    for sparsity, pattern in budgets:
        label = pattern or f"{sparsity:.2f}"
        chosen = params if pattern is None or pattern_params is None else pattern_params
        for method in methods:
            t0 = time.perf_counter()
            pruned, errors, info = run_method(method, model, calib, sparsity=sparsity, pattern=pattern,
                                              n_samples=n_samples, params=chosen, exact_max_p=exact_max_p,
                                              time_limit=time_limit)
            seconds = time.perf_counter() - t0
            value = evaluate(pruned)
            extra = {k: fn(pruned) for k, fn in extra_metrics.items()}
            rec = {"network": name, "budget": label, "method": method, metric: value, "dense": dense,
                   "seconds": seconds, "layer_errors": errors, **extra, **dense_extra, **info}
            records.append(rec)
            errs = " ".join(f"{k}={v:.5f}" for k, v in errors.items())
            more = "".join(f"  {k} {v:9.4f}" for k, v in extra.items())
            log(f"  {label:>5} {method:<15} {metric} {value:9.4f}{more}  {seconds:7.1f} s  {errs}")
    return records


def _short(layer: str) -> str:
    return layer[:-len(".weight")] if layer.endswith(".weight") else layer


def markdown(records: list[dict], metric: str, extra: Sequence[str] = (), layer_columns: bool = True) -> str:
    """One table per network: rows = (budget, method), columns = metric (and the ``extra`` metrics), seconds,
    rows proven and (``layer_columns``) the per-layer errors; a layer not pruned at a budget shows "–"."""
    out = []
    for net in dict.fromkeys(r["network"] for r in records):
        recs = [r for r in records if r["network"] == net]
        layers = list(dict.fromkeys(l for r in recs for l in r["layer_errors"])) if layer_columns else []
        dense = f"dense {metric}: {recs[0]['dense']:.2f}" + "".join(
            f", dense {k}: {recs[0]['dense_' + k]:.2f}" for k in extra if "dense_" + k in recs[0])
        out.append(f"**{net}** ({dense})\n")
        out.append("| budget | method | " + metric + " | " + "".join(f"{k} | " for k in extra)
                   + "seconds | rows proven |" + "".join(f" rel. err. {_short(l)} |" for l in layers))
        out.append("|---|---|---:|" + "---:|" * len(extra) + "---:|---:|" + "---:|" * len(layers))
        for r in recs:
            proven = f"{r['proven_optimal']}/{r['rows']}" if "rows" in r else "-"
            errs = [f"{r['layer_errors'][l]:.5f}" if l in r["layer_errors"] else "–" for l in layers]
            out.append(f"| {r['budget']} | {r['method']} | {r[metric]:.2f} | "
                       + "".join(f"{r[k]:.2f} | " for k in extra)
                       + f"{r['seconds']:.1f} | {proven} |" + "".join(f" {e} |" for e in errs))
        out.append("")
    return "\n".join(out)


def markdown_layers(records: list[dict], budget: str, methods: Sequence[str] | None = None) -> str:
    """Per-layer relative errors at one budget, transposed (rows = layers, columns = methods): readable for
    networks with many layers. Bold: the smallest error of the row."""
    recs = {r["method"]: r for r in records if r["budget"] == budget}
    methods = [m for m in (methods or recs) if m in recs]
    layers = list(dict.fromkeys(l for m in methods for l in recs[m]["layer_errors"]))
    out = ["| layer | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for l in layers:
        vals = [recs[m]["layer_errors"].get(l) for m in methods]
        best = min(v for v in vals if v is not None)
        cells = ["–" if v is None else (f"**{v:.5f}**" if v == best else f"{v:.5f}") for v in vals]
        out.append(f"| {_short(l)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def check_targets(records: list[dict], metric: str, higher_is_better: bool = True,
                  errors: bool = True) -> list[str]:
    """The issue's acceptance targets, one line each: ours ≤ SparseGPT per layer (``errors``); ours ≥ the
    baselines on ``metric``."""
    lines = []
    for net in dict.fromkeys(r["network"] for r in records):
        for budget in dict.fromkeys(r["budget"] for r in records if r["network"] == net):
            by = {r["method"]: r for r in records if r["network"] == net and r["budget"] == budget}
            if "ours" not in by:
                continue
            ours = by["ours"]
            for ref in ("sparsegpt", "sparsegpt-row"):
                if ref in by and errors:
                    worse = [l for l, e in ours["layer_errors"].items() if e > by[ref]["layer_errors"][l]]
                    lines.append(f"{net} {budget}: per-layer error ours <= {ref} on every layer: "
                                 f"{'yes' if not worse else 'NO (' + ', '.join(worse) + ')'}")
            for ref in ("sparsegpt", "wanda", "magnitude"):
                if ref in by:
                    a, b = ours[metric], by[ref][metric]
                    ok = a >= b if higher_is_better else a <= b
                    lines.append(f"{net} {budget}: {metric} ours {a:.3f} vs {ref} {b:.3f}: {'yes' if ok else 'NO'}")
    return lines


# -- MLPNet ------------------------------------------------------------------------------------------------
def mlpnet(args) -> list[dict]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from mlpnet_common import accuracy, load_mlpnet, load_mnist

    model = load_mlpnet(args.data)
    x, y = load_mnist(args.data, "train")
    idx = torch.as_tensor(np.sort(np.random.default_rng(args.seed).choice(x.shape[0], args.n_samples,
                                                                          replace=False)))
    calib = x[idx]
    return benchmark_network("MLPNet", model, calib, lambda m: accuracy(m, args.data), metric="accuracy",
                             sparsities=args.sparsities, patterns=args.patterns, methods=args.methods,
                             n_samples=args.n_samples, exact_max_p=args.exact_max_p, time_limit=args.time_limit)


# -- the conv benchmark (benchmarks/convnet.py's ResNet20-style net on MNIST) ---------------------------
def convnet(args) -> list[dict]:
    """The cached ResNetMNIST(width=8) of ``benchmarks/convnet.py`` (trained there if not cached), all its
    Conv2d (through unfold) and Linear weights; calibration: ``--n-samples`` seeded training images; metric:
    test accuracy on the first ``--test-samples`` test images, without and with BatchNorm re-estimation
    on the calibration images (the same for every method)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import convnet as cn
    from cbs_opt.batchnorm import recalibrate_batchnorm
    from cbs_opt.mnist import load_mnist

    spec = argparse.Namespace(cache=args.convnet_cache, width=8, train_samples=60000, epochs=2, seed=0,
                              data=args.data, batch=128, lr=0.1)   # convnet.py's defaults: its cached net
    model = cn.load_or_train(spec)
    root = cn.data_dir(args.data) / "mnist"
    x, y = load_mnist(root, "train")
    xt, yt = load_mnist(root, "test")
    xt, yt = xt[:args.test_samples], yt[:args.test_samples]
    idx = torch.as_tensor(np.sort(np.random.default_rng(args.seed).choice(x.shape[0], args.n_samples,
                                                                          replace=False)))
    calib, calib_y = x[idx], y[idx]

    def accuracy(m: nn.Module) -> float:
        return cn.accuracy(m, xt, yt)

    def accuracy_bn(m: nn.Module) -> float:
        # BatchNorm re-estimated on the calibration images (a copy: the pruned model stays as it is)
        m = recalibrate_batchnorm(copy.deepcopy(m), (calib, calib_y), n_samples=calib.shape[0], seed=args.seed)
        return cn.accuracy(m, xt, yt)

    names = select_parameters(model)
    # N:M needs rows that are a multiple of M: the stem's rows have 1·3·3 = 9 weights, so it stays dense
    # at the N:M budgets (as is usual for the first layer)
    named = dict(model.named_parameters())
    nm = [n for n in names if all(named[n][0].numel() % int(p.split(":")[1]) == 0 for p in args.patterns)]
    return benchmark_network("ResNetMNIST (conv)", model, calib, accuracy, metric="accuracy",
                             sparsities=args.sparsities, patterns=args.patterns, methods=args.methods,
                             n_samples=args.n_samples, params=names, pattern_params=nm,
                             exact_max_p=args.exact_max_p, time_limit=args.time_limit,
                             extra_metrics={"accuracy_bn": accuracy_bn})


# -- a small character-level transformer on the standard library's own source ---------------------------
class CharLM(nn.Module):
    """A pre-norm decoder-only transformer (causal self-attention + MLP), tied-free, learned positions."""

    def __init__(self, vocab: int, d: int = 128, layers: int = 2, heads: int = 4, ctx: int = 128):
        super().__init__()
        self.ctx, self.heads = ctx, heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d),
                "ln2": nn.LayerNorm(d), "fc1": nn.Linear(d, 4 * d), "fc2": nn.Linear(4 * d, d)}))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        h = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](h)).chunk(3, dim=-1)
            split = lambda t: t.reshape(B, T, self.heads, -1).transpose(1, 2)  # noqa: E731
            a = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
            h = h + blk["proj"](a.transpose(1, 2).reshape(B, T, -1))
            h = h + blk["fc2"](torch.relu(blk["fc1"](blk["ln2"](h))))
        return self.head(self.ln(h))


def stdlib_corpus(max_chars: int = 3_000_000) -> tuple[str, str]:
    """Train / test text: the standard library's ``.py`` files (sorted), every 10th file to the test split."""
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))
    train, test = [], []
    for k, path in enumerate(files):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        (test if k % 10 == 0 else train).append(text)
    return "\n".join(train)[:max_chars], "\n".join(test)[:max_chars // 5]


def lm(args) -> list[dict]:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    train_text, test_text = stdlib_corpus()
    chars = sorted(set(train_text) | set(test_text))
    stoi = {c: i for i, c in enumerate(chars)}
    enc = lambda s: torch.tensor([stoi[c] for c in s], dtype=torch.long)  # noqa: E731
    train, test = enc(train_text), enc(test_text)
    ctx = 128
    torch.manual_seed(args.seed)
    model = CharLM(len(chars), ctx=ctx)
    ckpt = cache / f"charlm_v{len(chars)}_s{args.seed}_{args.lm_steps}.pt"
    if ckpt.exists():
        model.load_state_dict(torch.load(ckpt, weights_only=True))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=args.lm_steps)
        g = torch.Generator().manual_seed(args.seed)
        model.train()
        t0 = time.perf_counter()
        for step in range(args.lm_steps):
            starts = torch.randint(0, train.numel() - ctx - 1, (32,), generator=g)
            xb = torch.stack([train[s:s + ctx] for s in starts])
            yb = torch.stack([train[s + 1:s + ctx + 1] for s in starts])
            loss = nn.functional.cross_entropy(model(xb).reshape(-1, len(chars)), yb.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 200 == 0:
                print(f"  lm step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        torch.save(model.state_dict(), ckpt)
    model.eval()
    n_eval = (min(test.numel() - 1, 200_000) // ctx) * ctx
    xt, yt = test[:n_eval].reshape(-1, ctx), test[1:n_eval + 1].reshape(-1, ctx)

    @torch.no_grad()
    def perplexity(m: nn.Module) -> float:
        m.eval()
        nll = sum(float(nn.functional.cross_entropy(m(xt[i:i + 64]).reshape(-1, len(chars)), yt[i:i + 64].reshape(-1),
                                                    reduction="sum")) for i in range(0, xt.shape[0], 64))
        return math.exp(nll / yt.numel())

    g = torch.Generator().manual_seed(args.seed + 1)
    starts = torch.randint(0, train.numel() - ctx, (args.lm_calib,), generator=g)
    calib = torch.stack([train[s:s + ctx] for s in starts])
    params = [n for n, _ in model.named_parameters() if n.startswith("blocks.") and n.endswith("weight")
              and any(k in n for k in ("qkv", "proj", "fc1", "fc2"))]
    return benchmark_network("CharLM (stdlib)", model, calib, perplexity, metric="perplexity",
                             sparsities=args.sparsities, patterns=args.patterns, methods=args.methods,
                             n_samples=args.lm_calib, params=params, exact_max_p=args.exact_max_p,
                             time_limit=args.time_limit)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("network", choices=("mlpnet", "convnet", "lm"))
    ap.add_argument("--sparsities", type=float, nargs="*", default=[0.5, 0.7])
    ap.add_argument("--patterns", nargs="*", default=None,
                    help="N:M budgets (default: none for mlpnet, 2:4 for convnet and lm)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--n-samples", type=int, default=None,
                    help="calibration images (default 1000 for mlpnet, 512 for convnet)")
    ap.add_argument("--test-samples", type=int, default=2000, help="convnet: the first this many test images")
    ap.add_argument("--exact-max-p", type=int, default=48, help="rows up to this many weights go to miqp")
    ap.add_argument("--time-limit", type=float, default=30.0, help="seconds per row for the searches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="reference data folder (MLPNet, MNIST)")
    ap.add_argument("--convnet-cache", default=str(REPO / "benchmarks" / "results" / "convnet_cache"),
                    help="benchmarks/convnet.py's checkpoint cache")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "cbs_opt"), help="LM checkpoint cache")
    ap.add_argument("--lm-steps", type=int, default=1000)
    ap.add_argument("--lm-calib", type=int, default=64, help="LM calibration sequences (128 characters each)")
    ap.add_argument("--out", default=None, help="write the records as JSON here")
    args = ap.parse_args(argv)
    if args.patterns is None:
        args.patterns = [] if args.network == "mlpnet" else ["2:4"]
    if args.n_samples is None:
        args.n_samples = 512 if args.network == "convnet" else 1000
    runner = {"mlpnet": mlpnet, "convnet": convnet, "lm": lm}[args.network]
    records = runner(args)
    metric = "perplexity" if args.network == "lm" else "accuracy"
    extra = ["accuracy_bn"] if args.network == "convnet" else []
    print()
    print(markdown(records, metric, extra))
    if args.network == "convnet":
        for budget in dict.fromkeys(r["budget"] for r in records):
            print(f"\nPer-layer relative reconstruction error at {budget}:\n")
            print(markdown_layers(records, budget))
    print()
    for line in check_targets(records, metric, higher_is_better=metric == "accuracy"):
        print(line)
    for k in extra:
        for line in check_targets(records, k, errors=False):
            print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
