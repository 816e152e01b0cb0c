"""A conv net that needs no download: a small ResNet20-style network trained on MNIST, pruned one-shot.

The network (:class:`ResNetMNIST`): a 3×3 stem, three stages of three basic blocks (two 3×3 convs each,
BatchNorm after every conv, 1×1-conv + BatchNorm downsample shortcuts where the shape changes), widths
``w, 2w, 4w`` (default ``w = 8``: 67,800 conv/fc weights), global average pooling, a linear classifier —
ResNet20's layout, narrowed (and with a stride-2 stem) so that training on this CPU takes about a minute. It is trained
once on MNIST from the reference data (``--data`` / ``$CBS_OPT_DATA`` / ``../shared/data``) and cached
under ``--cache`` (default ``benchmarks/results/convnet_cache``); later runs load the checkpoint.

Then every method prunes it at each sparsity, one shot, and the test accuracy, the seconds and the peak
memory (the process's resident set, sampled every 20 ms, above what it was before the run) are reported:

  magnitude               prune the smallest |w| over the whole net, survivors unchanged
  magnitude + CBS-U       the same set, survivors moved by the combinatorial OBS update
  OBS + CBS-U             single-weight OBS scores, CBS-U
  greedy_swap + CBS-U     the CBS paper's Algorithm 1, CBS-U (the previous default)
  update_swap             swaps on the exact update objective
  iht                     CHITA-style hard thresholding on the update objective
  default                 ``prune(model, data, s)`` with nothing else
  S-stage                 ``prune(model, data, s, stages=S)``

The baselines use the previous defaults: N = 1000 gradients, absolute damping 1e-3, one model-wide block,
no BatchNorm re-estimation (``--baseline-blocks`` / ``--baseline-bn`` change that).

    python benchmarks/convnet.py --quick      # 2,000 test images, sparsities 0.7 0.9, no multi-stage
    python benchmarks/convnet.py --out docs/benchmarks/convnet.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cbs_opt import prune  # noqa: E402
from cbs_opt.mnist import load_mnist  # noqa: E402

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
QUICK_SPARSITIES = (0.7, 0.9)
BASELINES = {  # label: prune() arguments on top of the baseline settings
    "magnitude": dict(solver="magnitude", update=False),
    "magnitude + CBS-U": dict(solver="magnitude"),
    "OBS + CBS-U": dict(solver="obs"),
    "greedy_swap + CBS-U": dict(solver="greedy_swap"),
    "update_swap": dict(solver="update_swap"),
    "iht": dict(solver="iht"),
}
METHODS = tuple(BASELINES) + ("default",)


# -- the network ---------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetMNIST(nn.Module):
    """ResNet20's layout (3 stages × 3 basic blocks, widths w, 2w, 4w) for 1×28×28 inputs (stride-2 stem)."""

    def __init__(self, width: int = 8, blocks_per_stage: int = 3, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, 2, 1, bias=False)  # 28×28 → 14×14: 4× less compute
        self.bn = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = x.reshape(x.shape[0], 1, 28, 28)
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layers(x)
        return self.fc(x.mean(dim=(2, 3)))


def data_dir(path) -> Path:
    candidate = Path(path or os.environ.get("CBS_OPT_DATA") or REPO.parent / "shared" / "data")
    if not (candidate / "mnist").is_dir():
        raise SystemExit(f"MNIST not found under {candidate}/mnist; pass --data")
    return candidate


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch: int, lr: float,
          seed: int) -> float:
    """SGD with momentum, one-cycle learning rate; returns the seconds."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((x.shape[0] + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for start in range(0, x.shape[0], batch):
            idx = order[start:start + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.4f}", flush=True)
    model.eval()
    return time.perf_counter() - t0


def load_or_train(args) -> ResNetMNIST:
    cache = Path(args.cache)
    path = cache / f"resnet_mnist_w{args.width}_n{args.train_samples}_e{args.epochs}_s{args.seed}.pt"
    model = ResNetMNIST(args.width)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        print(f"loaded {path}")
        return model.eval()
    x, y = load_mnist(data_dir(args.data) / "mnist", "train")
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.train_samples]
    torch.manual_seed(args.seed)
    model = ResNetMNIST(args.width)
    print(f"training ResNetMNIST(width={args.width}) on {len(idx)} images, {args.epochs} epoch(s)...", flush=True)
    seconds = train(model, x[idx], y[idx], epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed)
    print(f"trained in {seconds:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    correct = sum(int((model(x[s:s + 1000]).argmax(1) == y[s:s + 1000]).sum()) for s in range(0, x.shape[0], 1000))
    model.train(was)
    return 100.0 * correct / x.shape[0]


class PeakMemory:
    """Peak resident set size (bytes) above the level at entry, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def gigabytes(self) -> float:
        return (self.peak - self.base) / 2 ** 30


def n_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="reference data folder (default: $CBS_OPT_DATA or ../shared/data)")
    ap.add_argument("--cache", default=str(REPO / "benchmarks" / "results" / "convnet_cache"),
                    help="where the trained checkpoint is cached")
    ap.add_argument("--width", type=int, default=8, help="channels of the first stage (default 8)")
    ap.add_argument("--train-samples", type=int, default=60000, help="training images (default all 60,000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0, help="training seed and the pruning seed")
    ap.add_argument("--sparsities", default=None, help="comma-separated (default 0.5,0.7,0.8,0.9,0.95)")
    ap.add_argument("--methods", default=None, help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--stages", default="10", help="comma-separated stage counts of the multi-stage rows ('' for none)")
    ap.add_argument("--stage-sparsities", default="0.9,0.95",
                    help="sparsities at which the multi-stage rows run (default 0.9,0.95; 'all' for every one)")
    ap.add_argument("--n-samples", type=int, default=1000, help="Fisher samples N of the baselines (default 1000)")
    ap.add_argument("--baseline-damping", type=float, default=1e-3)
    ap.add_argument("--baseline-blocks", default="model", help="blocks of the baselines (default model)")
    ap.add_argument("--baseline-bn", action="store_true", help="re-estimate BatchNorm in the baselines too")
    ap.add_argument("--test-samples", type=int, default=10000)
    ap.add_argument("--extra", action="append", default=[],
                    help="an extra row: 'label:key=value,key=value' of prune() arguments (values as Python literals)")
    ap.add_argument("--quick", action="store_true", help="2,000 test images, sparsities 0.7,0.9, no multi-stage")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine more threads run slower)")
    ap.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.test_samples = min(args.test_samples, 2000)
        if args.stages == "10":
            args.stages = ""
    sparsities = [float(s) for s in args.sparsities.split(",")] if args.sparsities else \
        list(QUICK_SPARSITIES if args.quick else SPARSITIES)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    stage_counts = [int(s) for s in args.stages.split(",") if s.strip()]
    stage_sparsities = None if args.stage_sparsities == "all" else \
        [float(s) for s in args.stage_sparsities.split(",") if s.strip()]
    import ast
    extras = {}
    for spec in args.extra:
        label, _, kv = spec.partition(":")
        extras[label] = {k.strip(): ast.literal_eval(v.strip()) for k, v in
                         (item.split("=", 1) for item in kv.split(";") if item.strip())}

    model = load_or_train(args)
    root = data_dir(args.data) / "mnist"
    train_x, train_y = load_mnist(root, "train")
    test_x, test_y = load_mnist(root, "test")
    test_x, test_y = test_x[:args.test_samples], test_y[:args.test_samples]
    dense = accuracy(model, test_x, test_y)
    print(f"dense test accuracy {dense:.2f}% on {test_x.shape[0]} images; {n_weights(model):,} conv/fc weights",
          flush=True)
    data = (train_x, train_y)

    rows = {}
    for m in methods:
        if m == "default":
            rows[m] = {}
        else:
            rows[m] = dict(n_samples=args.n_samples, damping=args.baseline_damping, select=None,
                           blocks=int(args.baseline_blocks) if args.baseline_blocks.isdigit() else args.baseline_blocks,
                           recalibrate_bn=args.baseline_bn, **BASELINES[m])
    for label, kw in extras.items():
        rows[label] = kw
    for S in stage_counts:
        rows[f"{S}-stage (default otherwise)"] = {"stages": S}

    results = {label: {} for label in rows}
    for s in sparsities:
        for label, kw in rows.items():
            if "stages" in kw and stage_sparsities is not None and s not in stage_sparsities:
                continue
            t0 = time.perf_counter()
            with PeakMemory() as mem:
                res = prune(model, data, s, seed=args.seed, **kw)
            seconds = time.perf_counter() - t0
            acc = accuracy(res.model, test_x, test_y)
            choice = "; ".join(st.choice.get("candidate", "") + (f" → update {st.choice['update_damping']}"
                               if "update_damping" in st.choice else "") for st in res.stages[-1:])
            results[label][s] = (acc, seconds, mem.gigabytes, choice)
            print(f"[{s}] {label}: {acc:.2f}% {seconds:.1f}s {mem.gigabytes:.2f}GB {choice}", flush=True)
            del res

    header = "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |"
    rule = "|---|" + "---|" * len(sparsities)
    lines = [f"ResNetMNIST(width={args.width}), {n_weights(model):,} conv/fc weights, dense test accuracy "
             f"{dense:.2f}% on {test_x.shape[0]:,} test images. Baselines: N={args.n_samples}, damping "
             f"{args.baseline_damping:g}, blocks={args.baseline_blocks}, BatchNorm re-estimation "
             f"{'on' if args.baseline_bn else 'off'}.", "",
             "Test accuracy % / seconds / peak extra memory GB:", "", header, rule]
    for label, by_s in results.items():
        lines.append(f"| {label} | " + " | ".join(
            "–" if s not in by_s else "{:.2f} / {:.0f} / {:.2f}".format(*by_s[s][:3]) for s in sparsities) + " |")
    notes = [(label, s, by_s[s][3]) for label, by_s in results.items() for s in sparsities
             if s in by_s and by_s[s][3] and label not in BASELINES]
    if notes:
        lines += ["", "Candidates chosen on held-out calibration data (last stage):", ""]
        lines += [f"- {label}, {s:g}: {c}" for label, s, c in notes]
    stamp = (f"\n_{datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; command: python benchmarks/convnet.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}_")
    text = "\n".join(lines) + "\n" + stamp
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
