"""Choosing between pruning candidates by the true loss on held-out calibration data.

The quadratic model ``½ δᵀFδ`` that every solver minimises is only a local model of the loss: at high
sparsity the step ``δ`` is large, and two candidates (solvers, dampings, passes of a search) can rank one
way under the model and the other way under the network's real loss. A cheap and honest arbiter is the
loss itself, measured on calibration samples that were *not* used to estimate the Fisher:

    score(candidate) = mean ℓ(f(x; w_candidate), y)  over held-out (x, y)      (``metric="loss"``)
    score(candidate) = −accuracy(f(x; w_candidate), y) (ties: by the loss)      (``metric="accuracy"``)

:func:`select_best` evaluates candidates in the order given (the most promising first) until a time
budget is spent, always at least the first, and returns the lowest score.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from .errors import ArgumentTypeError, InvalidArgumentError
from .fisher import LossSpec, resolve_loss

__all__ = ["CalibrationScorer", "select_best", "Selection", "METRICS", "significantly_better"]

METRICS = ("loss", "accuracy")
T = TypeVar("T")


class CalibrationScorer:
    """``scorer(model) → float`` (lower is better): the loss or minus the accuracy on fixed held-out data.

    ``inputs``/``targets`` are the calibration samples (kept on ``device``); ``loss`` a name in
    :data:`cbs_opt.fisher.LOSSES` or a callable ``(outputs, targets) → mean loss``. The model is evaluated
    in eval mode (its modes are restored afterwards) under ``torch.no_grad()``, in batches of
    ``batch_size``. ``metric="accuracy"`` needs class-index targets and logits; it returns
    ``−accuracy + 1e-6·loss`` so that equal accuracies are ordered by the loss.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, *, loss: LossSpec = "cross_entropy",
                 metric: str = "loss", batch_size: int = 1000, device=None):
        if metric not in METRICS:
            raise InvalidArgumentError(f"metric must be one of {METRICS}, got {metric!r}")
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise ArgumentTypeError("calibration inputs and targets must be torch tensors")
        if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
            raise InvalidArgumentError(f"calibration data needs matching, non-empty inputs and targets, "
                                       f"got {inputs.shape[0]} and {targets.shape[0]}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.inputs = inputs if device is None else inputs.to(device)
        self.targets = targets if device is None else targets.to(device)
        self.loss_fn = resolve_loss(loss)
        self.metric = metric
        self.batch_size = int(batch_size)

    @property
    def n_samples(self) -> int:
        return int(self.inputs.shape[0])

    def __call__(self, model: nn.Module) -> float:
        return float(self.chunk_scores(model, 1)[0])

    def chunk_scores(self, model: nn.Module, chunks: int) -> np.ndarray:
        """The score of each of ``chunks`` consecutive, (nearly) equal slices of the calibration samples:
        same definition as the call, per slice — independent replicates of the score, so that two models
        can be compared by a paired test over the slices (:func:`significantly_better`)."""
        losses, accuracies = self.chunk_stats(model, chunks)
        if self.metric == "loss":
            return losses
        return -100.0 * accuracies + 1e-6 * np.minimum(losses, 1e6)

    @torch.no_grad()
    def chunk_stats(self, model: nn.Module, chunks: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Per slice (see :meth:`chunk_scores`): the mean loss (``inf`` when not finite) and, with
        ``metric="accuracy"``, the fraction classified correctly (else ``None``)."""
        modes = {m: m.training for m in model.modules()}
        model.eval()
        n = self.n_samples
        edges = np.linspace(0, n, min(int(chunks), n) + 1).round().astype(int)
        losses = np.empty(edges.size - 1)
        accuracies = np.empty(edges.size - 1) if self.metric == "accuracy" else None
        try:
            for c, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
                total_loss, correct = 0.0, 0
                for start in range(lo, hi, self.batch_size):
                    stop = min(hi, start + self.batch_size)
                    x, y = self.inputs[start:stop], self.targets[start:stop]
                    out = model(x)
                    total_loss += float(self.loss_fn(out, y)) * x.shape[0]
                    if accuracies is not None:
                        correct += int((out.argmax(1) == y).sum())
                loss = total_loss / (hi - lo)
                losses[c] = loss if math.isfinite(loss) else math.inf
                if accuracies is not None:
                    accuracies[c] = correct / (hi - lo)
        finally:
            for m, flag in modes.items():
                m.training = flag
        return losses, accuracies


def significantly_better(current: np.ndarray, trial: np.ndarray, z: float) -> bool:
    """Whether ``trial`` scores lower than ``current`` by more than noise: a paired test over the slices,
    ``mean(d) ≥ z · sd(d)/√k`` with ``d = current − trial`` (``k`` slices), and ``mean(d) > 0``.

    A held-out improvement of a few samples is often noise; a step kept on noise is a random walk that,
    repeated over passes, drifts the network away from where it generalises.
    """
    d = np.asarray(current, dtype=float) - np.asarray(trial, dtype=float)
    if not np.all(np.isfinite(d)):
        return bool(np.all(np.isfinite(trial)) and not np.all(np.isfinite(current)))
    mean = float(d.mean())
    if mean <= 0:
        return False
    if d.size < 2:
        return True
    return mean >= z * float(d.std(ddof=1)) / math.sqrt(d.size)


@dataclass
class Selection:
    """What :func:`select_best` found: the best candidate, its score and payload, and every score tried."""

    best: Any
    score: float
    payload: Any
    scores: list[tuple[Any, float]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0  # candidates not evaluated because the budget ran out


def select_best(candidates: Iterable[T], evaluate: Callable[[T], tuple[float, Any]], *,
                budget: float | None = None) -> Selection:
    """The candidate with the lowest ``evaluate(c)[0]``; ``evaluate`` returns ``(score, payload)``.

    Candidates are evaluated in order; once ``budget`` seconds have passed (counted from the call) no
    further candidate is started — the first is always evaluated, so the budget bounds the *extra* time
    that selection costs beyond one candidate. Ties keep the earlier candidate. ``score`` may be ``inf``
    (a candidate that failed); NaN counts as ``inf``.
    """
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not budget >= 0:
            raise InvalidArgumentError(f"select_budget must be a number of seconds >= 0 or None, got {budget!r}")
    items: Sequence[T] = list(candidates)
    if not items:
        raise InvalidArgumentError("no candidates to select from")
    start = time.perf_counter()
    best, best_score, best_payload, scores = None, math.inf, None, []
    skipped = 0
    for k, cand in enumerate(items):
        if k > 0 and budget is not None and time.perf_counter() - start > budget:
            skipped = len(items) - k
            break
        score, payload = evaluate(cand)
        score = float(score)
        if not math.isfinite(score):
            score = math.inf
        scores.append((cand, score))
        if best is None or score < best_score:
            best, best_score, best_payload = cand, score, payload
    return Selection(best=best, score=best_score, payload=best_payload, scores=scores,
                     seconds=time.perf_counter() - start, skipped=skipped)
