"""Scale benchmark: prune ResNet-shaped networks (random weights, 32×32 inputs) one-shot and report
peak resident memory and seconds per phase (gradients, cost curves, solves, write-back).

    python benchmarks/scale.py --model resnet20 --n 1000 --blocks layer --solver magnitude
    python benchmarks/scale.py --model resnet18 --n 256 --blocks 10000 --sparsity 0.9
    python benchmarks/scale.py --model resnet50 --n 256 --blocks layer --solver magnitude --damping 1e-3 \
        --sparsity 0.9 --storage disk                   # issue 11's 25 M-weight acceptance run (~15 min)
    python benchmarks/scale.py --model resnet20 --gradients-only --method vmap   # per-sample gradient phase alone

Each invocation is one run in a fresh process, so ``ru_maxrss`` is that run's peak; the peak of each phase
is sampled (``phase_peak_rss_gb``) and the load average is recorded at the start and the end. ``--json PATH``
appends the result as one JSON line. ``--storage disk`` keeps G in a memory-mapped temporary file
(``--storage-dir``, default the system temp folder). The networks:

* ``resnet20``  — CIFAR ResNet20 (3 stages × 3 basic blocks, 16/32/64 channels, 1×1 downsample
  shortcuts with BatchNorm): 270,896 conv/fc weights;
* ``resnet18``  — ImageNet ResNet-18 layout with a 3×3 stem for 32×32 inputs: ≈ 11.2 M;
* ``resnet50``  — ResNet-50 bottleneck layout, 3×3 stem: ≈ 23.5 M.

BatchNorm statistics are randomised (the network is in eval mode for the Fisher), so the gradients are
those of a generic, not a trained, network; the point is memory and time, not accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

import torch
from torch import nn


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, block, counts, widths, stem: int, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        layers, cin = [], stem
        for k, (n, w) in enumerate(zip(counts, widths)):
            for j in range(n):
                b = block(cin, w, 2 if (j == 0 and k > 0) else 1)
                layers.append(b)
                cin = w * block.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_model(name: str, seed: int = 0) -> nn.Module:
    """A ResNet-shaped network with random weights and randomised BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    if name == "resnet20":
        model = ResNet(Basic, [3, 3, 3], [16, 32, 64], 16)
    elif name == "resnet18":
        model = ResNet(Basic, [2, 2, 2, 2], [64, 128, 256, 512], 64)
    elif name == "resnet50":
        model = ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], 64)
    else:
        raise ValueError(f"unknown model {name!r}")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_data(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def current_rss_gb() -> float:
    """Resident set size now (``VmRSS``, Linux), in GiB; 0 where /proc is unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


class PhaseRss:
    """Peak resident memory per phase, sampled every ``interval`` seconds by a daemon thread.

    The phase is set by wrappers around prune's steps (build_blocks → ``gradients``, block_curves →
    ``curves``, the block solves → ``solve``, _write → ``write``). Sampling can miss a spike shorter
    than the interval; the exact whole-run peak is ``ru_maxrss`` (and ``/usr/bin/time -v``).
    """

    def __init__(self, interval: float = 0.05):
        self.phase, self.peaks, self.interval = "setup", {}, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self):
        rss = current_rss_gb()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def enter(self, phase: str):
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> dict:
        self.sample()
        self._stop.set()
        self._thread.join()
        return {k: round(v, 3) for k, v in self.peaks.items()}


def wrap_phases(prune_module, fisher_module, tracker: PhaseRss, pinned: dict) -> None:
    """Wrap the steps of ``cbs_opt.prune`` to mark the phases (and pass the pinned Fisher options)."""
    build, curves, write = fisher_module.build_blocks, prune_module.block_curves, prune_module._write

    def build_blocks(*a, **k):
        tracker.enter("gradients")
        try:
            return build(*a, **{**k, **pinned})
        finally:
            tracker.enter("curves")  # what follows build_blocks: the cost curves (or the solves of one block)

    def block_curves(*a, **k):
        tracker.enter("curves")
        try:
            return curves(*a, **k)
        finally:
            tracker.enter("solve")

    def write_values(*a, **k):
        tracker.enter("write")
        try:
            return write(*a, **k)
        finally:
            tracker.enter("after")

    prune_module.build_blocks, prune_module.block_curves, prune_module._write = build_blocks, block_curves, write_values


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "resnet18", "resnet50"])
    ap.add_argument("--n", type=int, default=256, help="gradient rows N")
    ap.add_argument("--blocks", default="auto", help="'auto', 'model', 'layer', 'row' or a chunk size")
    ap.add_argument("--solver", default="magnitude")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--allocation", default="optimal", choices=["optimal", "uniform"])
    ap.add_argument("--damping", default=None, help="prune's damping (a number or 'relative:α'); default: prune's")
    ap.add_argument("--method", default="auto", choices=["auto", "hooks", "vmap", "loop"])
    ap.add_argument("--storage", default="memory", choices=["memory", "disk"])
    ap.add_argument("--storage-dir", default=None, help="folder of the memory-mapped G (--storage disk)")
    ap.add_argument("--compact", default="auto", choices=["auto", "on", "off"],
                    help="float32-factor blocks (auto: blocks whose float64 problem would exceed 256 MiB)")
    ap.add_argument("--memory-limit-gb", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=256, help="samples per gradient chunk (chunk_size)")
    ap.add_argument("--gradients-only", action="store_true", help="time the per-sample gradient phase only")
    ap.add_argument("--masks-out", default=None, help="save the keep-masks (.pt) to compare runs")
    ap.add_argument("--json", default=None, help="append the result as a JSON line to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = int(args.blocks) if args.blocks.isdigit() else args.blocks
    pinned = {}
    if args.method != "auto":
        pinned["method"] = args.method
    if args.compact != "auto":
        pinned["compact"] = args.compact == "on"
    if args.storage != "memory":
        pinned["gradient_storage"] = args.storage
        if args.storage_dir:
            pinned["storage_dir"] = args.storage_dir
    tracker = PhaseRss()
    if not args.gradients_only:
        # prune() does not take these Fisher options: pin them for this process instead, and mark the phases
        import importlib
        fisher = importlib.import_module("cbs_opt.fisher")
        prune_module = importlib.import_module("cbs_opt.prune")  # the module (cbs_opt.prune is also the function)
        wrap_phases(prune_module, fisher, tracker, pinned)
    model = make_model(args.model)
    x, y = make_data(args.n)
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    result = {"model": args.model, "weights": n_weights, "N": args.n, "blocks": args.blocks, "solver": args.solver,
              "sparsity": args.sparsity, "method": args.method, "storage": args.storage, "compact": args.compact,
              "damping": args.damping, "allocation": args.allocation,
              "load_start": [round(v, 2) for v in os.getloadavg()],
              "rss_after_setup_gb": round(peak_rss_gb(), 3)}
    limit = None if args.memory_limit_gb is None else int(args.memory_limit_gb * 2**30)
    start = time.perf_counter()
    if args.gradients_only:
        from cbs_opt.fisher import build_blocks
        bl = build_blocks(model, (x, y), n_samples=args.n, blocks=blocks, chunk_size=args.chunk, memory_limit=limit,
                          **pinned)
        result.update(gradients_s=round(time.perf_counter() - start, 2), n_blocks=len(bl),
                      gradient_method=bl[0].info["gradient_method"])
    else:
        from cbs_opt.prune import prune
        extra = {}
        if args.damping is not None:
            extra["damping"] = float(args.damping) if args.damping[0].isdigit() else args.damping
        res = prune(model, (x, y), args.sparsity, solver=args.solver, n_samples=args.n, blocks=blocks,
                    allocation=args.allocation, chunk_size=args.chunk, select=None, **extra)  # no refits:
        # this benchmark measures the Fisher pipeline's memory and time, as recorded
        result.update({f"{k}_s": round(v, 2) for k, v in res.timings.items()})
        result.update(n_blocks=len(res.blocks), achieved=round(res.sparsity, 6))
        if args.masks_out:
            torch.save({k: v.cpu() for k, v in res.masks.items()}, args.masks_out)
    result["phase_peak_rss_gb"] = tracker.stop()
    result["load_end"] = [round(v, 2) for v in os.getloadavg()]
    result["peak_rss_gb"] = round(peak_rss_gb(), 3)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
