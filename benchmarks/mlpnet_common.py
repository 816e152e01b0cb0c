"""Shared loaders for the MLPNet / MNIST benchmarks (reads the reference data; tests never import this).

The data folder is ``--data`` / ``$CBS_OPT_DATA`` / ``<repo>/../shared/data`` (in that order).
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks run as scripts from a checkout
    sys.path.insert(0, str(REPO))

from cbs_opt import Problem  # noqa: E402
from cbs_opt.mnist import MLPNet, load_mnist as _load_mnist_idx  # noqa: E402
from cbs_opt.fisher import per_sample_gradients  # noqa: E402

PARAM_NAMES = ("fc1.weight", "fc2.weight", "fc3.weight")


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The reference-data folder (argument, then ``$CBS_OPT_DATA``, then ``../shared/data``)."""
    candidate = Path(path or os.environ.get("CBS_OPT_DATA") or REPO.parent / "shared" / "data")
    if not (candidate / "mnist").is_dir() or not (candidate / "checkpoints").is_dir():
        raise FileNotFoundError(f"reference data not found at {candidate} (expected mnist/ and checkpoints/); "
                                "pass --data or set CBS_OPT_DATA")
    return candidate


@lru_cache(maxsize=4)
def load_mnist(directory: str | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised MNIST images ``(n, 784)`` float32 and int64 labels for ``split`` ∈ {train, test}."""
    return _load_mnist_idx(data_dir(directory) / "mnist", split)


def load_mlpnet(directory: str | None = None) -> MLPNet:
    """The pretrained MLPNet in eval mode."""
    model = MLPNet()
    state = torch.load(data_dir(directory) / "checkpoints" / "mlpnet_mnist.pt", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def flat_weights(model: nn.Module) -> np.ndarray:
    """The 32,360 weights in the order fc1, fc2, fc3 (row-major), float64."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in PARAM_NAMES]).double().numpy()


def with_flat_weights(weights: np.ndarray, directory: str | None = None) -> MLPNet:
    """A fresh MLPNet carrying ``weights`` (flat, in :func:`flat_weights` order)."""
    model = MLPNet()
    state, start = {}, 0
    for name in PARAM_NAMES:
        shape = getattr(model, name.split(".")[0]).weight.shape
        size = shape[0] * shape[1]
        state[name] = torch.tensor(np.asarray(weights[start:start + size]), dtype=torch.float32).reshape(shape)
        start += size
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, directory: str | None = None) -> float:
    """Top-1 accuracy (%) on all 10,000 MNIST test images."""
    x, y = load_mnist(directory, "test")
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


def evaluate_accuracy(weights: np.ndarray, directory: str | None = None) -> float:
    """Test accuracy (%) of the MLPNet with the given flat weights."""
    return accuracy(with_flat_weights(weights, directory), directory)


def sample_indices(n_samples: int, seed: int, n_total: int = 60_000) -> np.ndarray:
    """The seeded training images used for the Fisher (the paper samples them at random)."""
    return np.random.default_rng(seed).choice(n_total, size=n_samples, replace=False)


def mlpnet_gradients(n_samples: int = 1000, seed: int = 0, directory: str | None = None) -> np.ndarray:
    """Per-sample NLL gradients ``(N, 32360)`` (float64) on seeded training images."""
    model = load_mlpnet(directory)
    x, y = load_mnist(directory, "train")
    idx = torch.as_tensor(sample_indices(n_samples, seed))
    grads = per_sample_gradients(model, x[idx], y[idx], loss="cross_entropy", params=list(PARAM_NAMES))
    return grads.double().numpy()


def mlpnet_problem(n_samples: int = 1000, seed: int = 0, damping: float = 1e-3, sparsity: float = 0.9,
                   objective: str = "update", directory: str | None = None) -> Problem:
    """The paper's global MLPNet problem: one block over all 32,360 weights."""
    w = flat_weights(load_mlpnet(directory))
    G = mlpnet_gradients(n_samples, seed, directory)
    return Problem(weights=w, grads=G, damping=damping, sparsity=sparsity, objective=objective)
