"""The embedded default: a tiny MLP on scikit-learn's 8×8 digits (ships with scikit-learn, no download).

It exists so that a new user sees the point of CBS in seconds: the network has 64·16 + 16·10 = 1,184
weights, so its Fisher blocks (chunks of 16 weights) are small enough for the exact backends, and
it is accurate enough (≈ 95 % test accuracy) that pruning visibly costs accuracy.

Everything is deterministic in ``seed``: the train/test split, the initialisation and the full-batch
training (CPU, float32, a few hundred milliseconds).

    data = load_digits_data()
    model = train_digits_mlp(data)          # or digits_model() for both, cached
    accuracy(model, data.x_test, data.y_test)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

__all__ = ["DigitsData", "DigitsMLP", "load_digits_data", "train_digits_mlp", "digits_model", "accuracy",
           "N_FEATURES", "N_CLASSES"]

N_FEATURES = 64
N_CLASSES = 10


@dataclass(frozen=True)
class DigitsData:
    """The digits split: inputs centred (pixels/16 minus the training mean), float32; labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train, self.y_train

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test, self.y_test


class DigitsMLP(nn.Module):
    """64 → hidden → 10, ReLU, no biases (every parameter is a prunable weight matrix)."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        self.hidden = hidden
        self.fc1 = nn.Linear(N_FEATURES, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, N_CLASSES, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.reshape(x.shape[0], -1))))


def load_digits_data(*, test_fraction: float = 0.3, seed: int = 0) -> DigitsData:
    """scikit-learn's 1,797 digits, split at random (``seed``) into train and test."""
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    x = x / 16.0
    x = x - x[train].mean(axis=0)  # centred with training statistics only (no biases in the net)
    as_x = lambda idx: torch.tensor(x[idx], dtype=torch.float32)  # noqa: E731
    as_y = lambda idx: torch.tensor(y[idx], dtype=torch.int64)  # noqa: E731
    return DigitsData(as_x(train), as_y(train), as_x(test), as_y(test))


def train_digits_mlp(data: DigitsData | None = None, *, hidden: int = 16, steps: int = 150, lr: float = 0.01,
                     weight_decay: float = 1e-3, seed: int = 0) -> DigitsMLP:
    """Train :class:`DigitsMLP` full-batch with AdamW on the cross-entropy (deterministic in ``seed``).

    Training stops well before the training loss reaches zero, on purpose: the empirical Fisher is
    built from per-sample gradients, which vanish on a memorised training set.
    """
    data = load_digits_data() if data is None else data
    gen_state = torch.random.get_rng_state()
    try:  # seed locally without disturbing the caller's global generator
        torch.manual_seed(seed)
        model = DigitsMLP(hidden)
    finally:
        torch.random.set_rng_state(gen_state)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(data.x_train), data.y_train)
        loss.backward()
        opt.step()
    return model.eval()


@lru_cache(maxsize=4)
def _cached(hidden: int, seed: int) -> tuple[dict, DigitsData]:
    data = load_digits_data(seed=seed)
    model = train_digits_mlp(data, hidden=hidden, seed=seed)
    return {k: v.clone() for k, v in model.state_dict().items()}, data


def digits_model(*, hidden: int = 16, seed: int = 0) -> tuple[DigitsMLP, DigitsData]:
    """The trained default network and its data (training is cached; each call gets a fresh model)."""
    state, data = _cached(hidden, seed)
    model = DigitsMLP(hidden)
    model.load_state_dict(state)
    return model.eval(), data


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    try:
        return float((model(x).argmax(dim=1) == y).float().mean())
    finally:
        model.train(was_training)
