"""Scale benchmark: prune ResNet-shaped networks (random weights, 32×32 inputs) one-shot and report
peak resident memory and seconds per phase (gradients, cost curves, solves, write-back).

    python benchmarks/scale.py --model resnet20 --n 1000 --blocks layer --solver magnitude
    python benchmarks/scale.py --model resnet18 --n 256 --blocks 10000 --sparsity 0.9
    python benchmarks/scale.py --model resnet20 --gradients-only --method vmap   # per-sample gradient phase alone

Each invocation is one run in a fresh process, so ``ru_maxrss`` is that run's peak. ``--json PATH``
appends the result as one JSON line. The networks:

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
import resource
import sys
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
    if pinned and not args.gradients_only:
        # prune() does not take these Fisher options: pin them for this process instead
        import importlib
        fisher = importlib.import_module("cbs_opt.fisher")
        prune_module = importlib.import_module("cbs_opt.prune")  # the module (cbs_opt.prune is also the function)
        fisher_build = fisher.build_blocks

        def build_with_options(*a, **k):
            return fisher_build(*a, **{**k, **pinned})
        prune_module.build_blocks = build_with_options
    model = make_model(args.model)
    x, y = make_data(args.n)
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    result = {"model": args.model, "weights": n_weights, "N": args.n, "blocks": args.blocks, "solver": args.solver,
              "sparsity": args.sparsity, "method": args.method, "storage": args.storage, "compact": args.compact,
              "damping": args.damping,
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
                    allocation=args.allocation, chunk_size=args.chunk, **extra)
        result.update({f"{k}_s": round(v, 2) for k, v in res.timings.items()})
        result.update(n_blocks=len(res.blocks), achieved=round(res.sparsity, 6))
        if args.masks_out:
            torch.save({k: v.cpu() for k, v in res.masks.items()}, args.masks_out)
    result["peak_rss_gb"] = round(peak_rss_gb(), 3)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
