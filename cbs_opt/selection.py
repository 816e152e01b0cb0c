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

import torch
from torch import nn

from .errors import ArgumentTypeError, InvalidArgumentError
from .fisher import LossSpec, resolve_loss

__all__ = ["CalibrationScorer", "select_best", "Selection", "METRICS"]

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

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            total_loss, correct, n = 0.0, 0, self.n_samples
            for start in range(0, n, self.batch_size):
                x = self.inputs[start:start + self.batch_size]
                y = self.targets[start:start + self.batch_size]
                out = model(x)
                total_loss += float(self.loss_fn(out, y)) * x.shape[0]
                if self.metric == "accuracy":
                    correct += int((out.argmax(1) == y).sum())
        finally:
            for m, flag in modes.items():
                m.training = flag
        loss = total_loss / n
        if not math.isfinite(loss):
            loss = math.inf
        if self.metric == "loss":
            return loss
        return -100.0 * correct / n + 1e-6 * min(loss, 1e6)


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
