"""First-order refit passes: damped Newton steps on the kept weights, chosen by the true held-out score.

CBS-U leaves the kept weights at the minimiser of the quadratic model built at the weights *before*
pruning. At the pruned weights the real loss has a gradient again — the larger the step, the larger the
gradient (at sparsity 0.98 the model is far from where it was built). A refit pass re-estimates, at the
pruned weights and on fresh samples, the Fisher ``F = GᵀG/N`` of every block (``N`` per-sample gradients;
pruned coordinates are not variables) and the mean gradient ``ḡ`` (one batched backward pass over
``refit_samples`` samples — ten times ``N`` by default: cheap, and the noise of a 1,000-sample ``ḡ``
drowned the step), and tries the damped Newton steps

    x(α) = w − (F + λ_α I)⁻¹ ḡ,        λ_α = α · mean diag(GᵀG/N)   (per block, as in cbs_opt.damping)

for each ``α`` in :data:`REFIT_ALPHAS`. A large ``α`` gives a short, gradient-descent-like step
(``≈ −ḡ/λ``); a small one approaches the empirical-Fisher Newton step, which overshoots: on the linearised
model it lowers every sample's loss by the same amount. So the true loss (or accuracy) on held-out
calibration samples chooses, and the weights stay as they are unless a step is *significantly* better: a
paired test over :data:`REFIT_CHUNKS` slices of the calibration samples, gain ≥ :data:`REFIT_Z` standard
errors (steps kept on noise drifted a conv net at sparsity 0.5 down by 0.1 points).
:func:`cbs_opt.prune.prune` stops a stage's passes at the first pass that keeps nothing. Pruned
weights stay exactly zero and the masks never change: a refit only moves the survivors.

The empirical Fisher estimates the Hessian of a log-likelihood loss (cross-entropy, NLL) only: for a
loss scaled by ``c`` the Fisher scales by ``c²`` and the Hessian by ``c``, so the step would be off by
``1/c``. :func:`cbs_opt.prune.prune` therefore refits by default for those losses only.

Each pass costs one Fisher, one batched gradient and ``len(alphas) + 1`` evaluations. Measured on MLPNet
(docs/benchmarks/mlpnet_mnist.md).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .damping import Damping
from .fisher import LossSpec, _prepare_targets, resolve_loss
from .selection import significantly_better

__all__ = ["REFIT_ALPHAS", "REFIT_SAMPLES_PER_ROW", "REFIT_CHUNKS", "REFIT_Z", "newton_point", "refit_pass",
           "mean_gradient", "block_gradients"]

# relative dampings of the refit step, shortest step last (measured on MLPNet: 1 wins at 0.98, 10 at 0.9-0.95)
REFIT_ALPHAS = (0.3, 1.0, 3.0, 10.0, 100.0)
REFIT_SAMPLES_PER_ROW = 10  # refit_samples="auto": the mean gradient over 10 × n_samples samples
REFIT_CHUNKS = 50           # slices of the calibration samples for the paired test
REFIT_Z = 1.5               # a step is kept only when its held-out loss gain is 1.5 standard errors or more


def mean_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, names: Sequence[str], *,
                  loss: LossSpec = "cross_entropy", batch_size: int = 1000, device=None) -> dict[str, torch.Tensor]:
    """``ḡ = ∇ (1/n) Σᵢ ℓ(f(xᵢ; w), yᵢ)`` for the parameters ``names``, over all ``inputs`` in batches.

    Uses :func:`torch.autograd.grad`, so the parameters' ``.grad`` fields are left as they were; the
    model is evaluated in whatever mode it is in (the caller's eval scope).
    """
    loss_fn = resolve_loss(loss)
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in chosen]
    n = int(inputs.shape[0])
    targets = _prepare_targets(loss, targets)
    for start in range(0, n, batch_size):
        x, y = inputs[start:start + batch_size], targets[start:start + batch_size]
        if device is not None:
            x, y = x.to(device), y.to(device)
        value = loss_fn(model(x), y) * (x.shape[0] / n)  # the batch's share of the mean loss
        for acc, g in zip(total, torch.autograd.grad(value, chosen)):
            acc += g.double()
    return dict(zip(names, total))


def block_gradients(blocks: Sequence, gradients: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Each block's entries of the per-parameter ``gradients`` (its ``param_slices``), as float64 vectors."""
    flat = {n: g.detach().reshape(-1).cpu().numpy() for n, g in gradients.items()}
    out = []
    for block in blocks:
        vec = np.empty(block.size)
        for s in block.param_slices:
            vec[s.start:s.stop] = flat[s.name][s.indices]
        out.append(vec)
    return out


def newton_point(block, alpha: float, gradient: np.ndarray | None = None) -> np.ndarray:
    """``w − (F + λI)⁻¹ḡ`` of one block (:class:`cbs_opt.fisher.Block`) with ``λ = α·mean diag(GᵀG/N)``;
    ``ḡ`` is ``gradient`` or, by default, the mean of the block's own gradient rows."""
    damped = block.with_damping(Damping.of_diagonal(alpha))
    g = block.mean_gradient if gradient is None else gradient
    point = damped.weights - damped.problem.curvature.solve(g)
    damped.release()  # the factorisation of GGᵀ stays shared with the block; this λ's problem can go
    return point


def refit_pass(blocks: Sequence, evaluate: Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray | None]],
               alphas: Sequence[float] = REFIT_ALPHAS, gradients: Sequence[np.ndarray] | None = None, *,
               z: float = REFIT_Z) -> tuple[list[np.ndarray] | None, dict]:
    """One refit pass over ``blocks`` (all built at the current weights), with the per-block mean
    gradients ``gradients`` (default: the means of the blocks' own gradient rows).

    ``evaluate(values)`` returns the held-out ``(losses, accuracies)`` of the model with each block's
    coordinates set to ``values[b]``, one entry per slice of the calibration samples
    (:meth:`cbs_opt.selection.CalibrationScorer.chunk_stats`; ``accuracies`` may be ``None``), and must
    leave the model as it found it. A step is a candidate only when its held-out loss is
    :func:`~cbs_opt.selection.significantly_better` (paired over the slices, ``z``) and its accuracy is not
    lower; of the candidates the highest accuracy (then the lowest loss) wins. The loss decides
    significance because it is continuous: an accuracy gain of a few samples is below any test's
    resolution, while a consistent loss decrease is not. Returns the winner's values — ``None`` when no
    step qualifies — and a record: the current mean loss and accuracy, each ``α``'s, and the chosen ``α``.
    """
    def summary(stats):
        losses, accs = stats
        return float(np.mean(losses)), (None if accs is None else float(np.mean(accs)))

    def rank(loss, acc):  # lower is better
        return (0.0 if acc is None else -acc, loss)

    per_block = list(gradients) if gradients is not None else [None] * len(blocks)
    cur = evaluate([np.asarray(b.weights) for b in blocks])
    cur_loss, cur_acc = summary(cur)
    record: dict = {"loss": cur_loss, "accuracy": cur_acc, "alpha": None, "steps": []}
    best_values, best_rank = None, None
    for alpha in alphas:
        values = [newton_point(b, float(alpha), g) for b, g in zip(blocks, per_block)]
        trial = evaluate(values)
        loss, acc = summary(trial)
        record["steps"].append((float(alpha), loss, acc))
        if not significantly_better(cur[0], trial[0], z) or (acc is not None and acc < cur_acc):
            continue
        if best_rank is None or rank(loss, acc) < best_rank:
            best_values, best_rank = values, rank(loss, acc)
            record.update(alpha=float(alpha), best_loss=loss, best_accuracy=acc)
    for b in blocks:
        b.release()
    return best_values, record
