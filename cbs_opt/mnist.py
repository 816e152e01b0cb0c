"""MNIST IDX files and the MLPNet architecture of the CBS / WoodFisher / CHITA benchmark.

Nothing here downloads anything: the IDX files (gzip or plain) and checkpoints come from the user.
Normalisation ``x = (pixels/255 − 0.1307)/0.3081`` as in those papers.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["MLPNet", "read_idx", "find_idx", "load_mnist", "MEAN", "STD"]

MEAN, STD = 0.1307, 0.3081


class MLPNet(nn.Module):
    """784 → 40 → 20 → 10, ReLU, no biases; the output is read as logits."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 40, bias=False)
        self.fc2 = nn.Linear(40, 20, bias=False)
        self.fc3 = nn.Linear(20, 10, bias=False)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The uint8 array of an MNIST IDX file (``.gz`` or plain); ``ValueError`` if it is not one."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 8:
        raise ValueError(f"{path} is not an IDX file")
    magic, = struct.unpack(">I", raw[:4])
    if magic not in (2049, 2051):
        raise ValueError(f"{path} is not an MNIST IDX file (magic {magic})")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_idx(directory: str | os.PathLike, stem: str) -> Path:
    """``stem[.gz]`` in ``directory`` or its ``mnist/`` subfolder."""
    directory = Path(directory)
    for candidate in (directory / f"{stem}.gz", directory / stem, directory / "mnist" / f"{stem}.gz",
                      directory / "mnist" / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"MNIST file {stem}[.gz] not found in {directory}")


def load_mnist(directory: str | os.PathLike, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images ``(n, 784)`` float32 and int64 labels of ``split`` ∈ {"train", "test"}."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(find_idx(directory, f"{prefix}-images-idx3-ubyte")).reshape(-1, 784)
    labels = read_idx(find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
    x = (torch.tensor(images, dtype=torch.float32) / 255.0 - MEAN) / STD
    return x, torch.tensor(labels, dtype=torch.int64)
