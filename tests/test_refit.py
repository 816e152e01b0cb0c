"""First-order refit passes (cbs_opt.refit, prune(refits=)): the step, the choice, and what never changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cbs_opt import prune
from cbs_opt.errors import InvalidArgumentError
from cbs_opt.prune import REFIT_PASSES, REFIT_PATIENCE
from cbs_opt.fisher import build_blocks
from cbs_opt.refit import REFIT_ALPHAS, newton_point, refit_pass


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def data(n=600, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return x, y


def trained() -> SmallNet:
    """A few epochs of training, so that the pruned network is hurt and the gradient has work to do."""
    model = SmallNet()
    x, y = data(seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_newton_point_is_the_damped_newton_step_of_the_block():
    """``w − (GᵀG/N + λI)⁻¹ḡ`` with ``λ = α·mean diag(GᵀG/N)``, against a dense solve."""
    model = trained()
    x, y = data(80)
    (block,) = build_blocks(model, (x, y), n_samples=80, damping=1e-3, blocks="model")
    g = np.asarray(block.grads, dtype=np.float64)
    if block.compact:
        g = g * np.sqrt(g.shape[0])
    fisher = g.T @ g / g.shape[0]
    gbar = g.mean(axis=0)
    for alpha in (0.3, 10.0):
        lam = alpha * np.mean(np.diag(fisher))
        expected = block.weights - np.linalg.solve(fisher + lam * np.eye(block.size), gbar)
        np.testing.assert_allclose(newton_point(block, alpha), expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(block.mean_gradient, gbar, rtol=1e-6, atol=1e-10)


def test_refit_pass_keeps_the_weights_when_no_step_scores_better_and_takes_the_best_otherwise():
    model = trained()
    (block,) = build_blocks(model, data(80), n_samples=80, damping=1e-3, blocks="model")
    w = np.asarray(block.weights).copy()
    slices = np.linspace(1.0, 2.0, 20)  # 20 slices whose losses differ but move together

    values, record = refit_pass([block], lambda v: (slices + float(np.sum((v[0] - w) ** 2)), None))
    assert values is None and record["alpha"] is None  # the current weights win
    assert len(record["steps"]) == len(REFIT_ALPHAS)

    target = newton_point(block, 3.0)  # a loss that the α = 3 step minimises exactly
    values, record = refit_pass([block], lambda v: (slices + float(np.sum((v[0] - target) ** 2)), None))
    assert record["alpha"] == 3.0
    np.testing.assert_allclose(values[0], target)
    assert record["best_loss"] == min(s[1] for s in record["steps"]) < record["loss"]


def test_accuracy_ranks_the_qualifying_steps_and_a_step_losing_accuracy_is_refused():
    model = trained()
    (block,) = build_blocks(model, data(80), n_samples=80, damping=1e-3, blocks="model")
    w = np.asarray(block.weights).copy()
    points = {newton_point(block, a).tobytes(): a for a in REFIT_ALPHAS}
    slices = np.linspace(1.0, 2.0, 20)
    # every step lowers the loss consistently; accuracy: α = 10 best, α = 100 below the current weights
    acc = {0.3: 0.80, 1.0: 0.81, 3.0: 0.82, 10.0: 0.85, 100.0: 0.70}

    def evaluate(values):
        if np.array_equal(values[0], w):
            return slices, np.full(20, 0.80)
        a = points[values[0].tobytes()]
        return slices - 0.1 - 0.01 * a, np.full(20, acc[a])

    values, record = refit_pass([block], evaluate)
    assert record["alpha"] == 10.0 and record["best_accuracy"] == pytest.approx(0.85)
    acc.update({10.0: 0.75, 3.0: 0.79, 1.0: 0.79, 0.3: 0.79})  # now every step is below 0.80
    values, record = refit_pass([block], evaluate)
    assert values is None  # lower losses, but every step loses accuracy


def test_a_step_better_only_by_noise_is_not_kept():
    """A step that wins on the mean loss but not consistently across the slices (paired test) is refused."""
    model = trained()
    (block,) = build_blocks(model, data(80), n_samples=80, damping=1e-3, blocks="model")
    w = np.asarray(block.weights).copy()
    rng = np.random.default_rng(0)
    noise = {}

    def evaluate(values):  # the current weights: 1.0 on every slice; any step: 0.99 on average, noisy
        if np.array_equal(values[0], w):
            return np.ones(50), None
        key = values[0].tobytes()
        noise.setdefault(key, 0.99 + rng.normal(0.0, 0.2, 50))
        return noise[key], None

    values, record = refit_pass([block], evaluate)
    assert values is None and record["alpha"] is None
    assert min(s[1] for s in record["steps"]) < record["loss"]  # better on the mean, yet not kept

    values, record = refit_pass([block], evaluate, z=0.0)  # no significance asked: the best mean wins
    assert record["alpha"] is not None


def test_significantly_better_is_a_paired_test():
    from cbs_opt.selection import significantly_better
    base = np.linspace(-95, -90, 50)
    assert significantly_better(base, base - 0.1, 2.0)  # consistently better on every slice
    assert not significantly_better(base, base, 2.0) and not significantly_better(base, base + 0.1, 2.0)
    shifts = np.tile([1.0, -0.9], 25)  # better on the mean by 0.05, sd 0.95: t ≈ 0.37
    assert not significantly_better(base, base - shifts, 2.0)
    assert significantly_better(base, base - shifts, 0.3)
    assert significantly_better(np.full(5, np.inf), np.zeros(5), 2.0)  # a finite score beats a diverged one
    assert not significantly_better(np.zeros(5), np.full(5, np.inf), 2.0)


def test_chunk_scores_average_to_the_score():
    from cbs_opt.selection import CalibrationScorer
    model = trained()
    x, y = data(300)
    sizes = np.diff(np.linspace(0, 300, 8).round())
    for metric in ("loss", "accuracy"):
        scorer = CalibrationScorer(x, y, metric=metric, batch_size=64)
        chunks = scorer.chunk_scores(model, 7)
        assert chunks.shape == (7,)
        assert np.average(chunks, weights=sizes) == pytest.approx(scorer(model), rel=1e-6)
        losses, accs = scorer.chunk_stats(model, 7)
        with torch.no_grad():
            out = model.eval()(x)
        assert np.average(losses, weights=sizes) == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5)
        if metric == "accuracy":
            assert np.average(accs, weights=sizes) == pytest.approx(float((out.argmax(1) == y).float().mean()))
        else:
            assert accs is None


def test_a_refit_pass_never_raises_the_held_out_loss_and_never_changes_the_masks():
    model = trained()
    x, y = data(600)
    res0 = prune(model, (x, y), 0.8, solver="magnitude", damping=1e-3, refits=0, select="loss",
                 n_samples=100, calibration=400, seed=3)
    res = prune(model, (x, y), 0.8, solver="magnitude", damping=1e-3, refits=2, select="loss",
                n_samples=100, calibration=400, seed=3)
    for name in res0.masks:
        assert torch.equal(res.masks[name], res0.masks[name])  # the pruned set is the solver's
        assert torch.all(res.weights[name][~res.masks[name]] == 0)
    records = res.stages[0].choice["refits"]
    assert 1 <= len(records) <= 2
    for rec in records:  # each pass: a kept step has a lower held-out loss than the weights it started from
        if rec["alpha"] is not None:
            assert rec["best_loss"] < rec["loss"]
    assert res.timings["refit"] > 0
    assert "refits" not in res0.stages[0].choice


def test_refits_default_on_with_held_out_scoring_and_off_without():
    model = trained()
    res = prune(model, data(), 0.7, solver="obs", damping=1e-3, n_samples=100, calibration=300)
    passes = res.stages[0].choice["refits"]  # on even with a single candidate
    assert 1 <= len(passes) <= REFIT_PASSES
    kept_nothing = [p["alpha"] is None for p in passes]
    # it stops once REFIT_PATIENCE passes in a row keep nothing, or after REFIT_PASSES passes
    assert len(passes) == REFIT_PASSES or (len(passes) >= REFIT_PATIENCE and all(kept_nothing[-REFIT_PATIENCE:]))
    for r in range(REFIT_PATIENCE, len(passes)):
        assert not all(kept_nothing[r - REFIT_PATIENCE:r])  # ... and not earlier
    res = prune(model, data(), 0.7, solver="obs", damping=1e-3, n_samples=100, select=None)
    assert "refits" not in res.stages[0].choice
    res = prune(model, data(), 0.7, solver="obs", damping=1e-3, n_samples=100, update=False)
    assert "refits" not in res.stages[0].choice


def test_model_and_its_mode_are_untouched_and_the_result_is_reproducible():
    model = trained().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = prune(model, data(), 0.7, solver="obs", damping=1e-3, n_samples=100, calibration=300, refits=2, seed=4)
    b = prune(model, data(), 0.7, solver="obs", damping=1e-3, n_samples=100, calibration=300, refits=2, seed=4)
    assert model.training and a.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for name in a.weights:
        assert torch.equal(a.weights[name], b.weights[name])


@pytest.mark.parametrize("kwargs, match", [
    (dict(refits=-1), "refits must be"), (dict(refits=1.5), "refits must be"), (dict(refits=True), "refits must be"),
    (dict(refits=2, select=None), "select=None"), (dict(refits=1, update=False), "update=False")])
def test_bad_refits_are_refused_naming_the_argument(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        prune(trained(), data(), 0.5, solver="obs", damping=1e-3, n_samples=50, **kwargs)


def test_refit_samples_keep_the_step_away_from_the_samples_that_score_it():
    """Fisher and gradient samples are disjoint from the calibration samples (tensors: a seeded draw; a
    loader: in its order), and the fallback with too few samples is the documented one."""
    from cbs_opt.prune import _refit_samples
    x, y = data(600)
    x = x.clone()
    x[:, 5] = torch.arange(600, dtype=x.dtype)  # a tag column: which samples were drawn
    (fx, _), (cx, _), (gx, _) = _refit_samples((x, y), 100, 300, 150, seed=7)
    f, c, g = (set(t[:, 5].tolist()) for t in (fx, cx, gx))
    assert len(f) == 100 and len(c) == 300 and len(g) == 150
    assert f.isdisjoint(c) and g.isdisjoint(c) and f <= g  # the Fisher samples first, then others
    loader = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 600, 50)]
    (fx, _), (cx, _), (gx, _) = _refit_samples(loader, 100, 300, 150, seed=7)
    assert fx[:, 5].tolist() == list(range(100)) and cx[:, 5].tolist() == list(range(100, 400))
    assert gx[:, 5].tolist() == list(range(100)) + list(range(400, 450))
    (fx, _), (cx, _), grad = _refit_samples((x, y), 100, 300, 0, seed=7)
    assert grad is None
    (fx, _), (cx, _), (gx, _) = _refit_samples((x[:200], y[:200]), 100, 300, 1000, seed=7)
    assert torch.equal(fx, cx) and gx.shape[0] == 200


def test_mean_gradient_is_the_batch_gradient_and_leaves_grad_fields_alone():
    from cbs_opt.refit import block_gradients, mean_gradient
    model = trained()
    x, y = data(250)
    names = ["fc1.weight", "fc2.weight"]
    before = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    grads = mean_gradient(model, x, y, names, batch_size=100)  # three uneven batches
    for n, p in model.named_parameters():
        assert (p.grad is None and before[n] is None) or torch.equal(p.grad, before[n])
    loss = nn.functional.cross_entropy(model(x), y)
    ref = torch.autograd.grad(loss, [dict(model.named_parameters())[n] for n in names])
    for n, r in zip(names, ref):
        torch.testing.assert_close(grads[n], r.double(), rtol=1e-5, atol=1e-8)
    (block,) = build_blocks(model, (x, y), n_samples=250, damping=1e-3, blocks="model")
    (vec,) = block_gradients([block], grads)  # the block's coordinates, in its order
    # the per-sample rows of the same samples average to the same gradient
    np.testing.assert_allclose(vec, block.mean_gradient, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("value", [-1, 2.5, True, "many"])
def test_bad_refit_samples_are_refused(value):
    with pytest.raises(InvalidArgumentError, match="refit_samples"):
        prune(trained(), data(), 0.5, solver="obs", damping=1e-3, n_samples=50, refit_samples=value)


def test_refits_default_off_for_losses_whose_hessian_the_fisher_does_not_estimate():
    """For a loss scaled by c the Fisher scales by c² but the Hessian by c: the Newton step would be off by
    1/c, so refits are on by default only for cross_entropy / nll (and on request otherwise)."""
    model = trained()
    ce = nn.functional.cross_entropy
    res = prune(model, data(), 0.7, solver="obs", damping=1e-3, n_samples=100, loss=lambda o, t: 10 * ce(o, t))
    assert "refits" not in res.stages[0].choice
    res = prune(model, data(), 0.7, solver="obs", damping=1e-3, n_samples=100, loss=lambda o, t: ce(o, t), refits=1)
    assert len(res.stages[0].choice["refits"]) == 1


def test_cli_refits_option(capsys):
    from cbs_opt.cli import main
    assert main(["prune", "--model", "digits", "--sparsity", "0.5", "--solver", "obs", "--n-samples", "50",
                 "--refits", "1", "-q"]) == 0, capsys.readouterr().err
    assert "sparsity 0.5000" in capsys.readouterr().out
    assert main(["prune", "--model", "digits", "--sparsity", "0.5", "--refits", "-1", "-q"]) == 2
    assert "--refits" in capsys.readouterr().err


def test_progress_reports_each_refit_pass(capsys):
    prune(trained(), data(), 0.7, solver="obs", damping=1e-3, n_samples=100, calibration=300, refits=1,
          progress=True)
    assert "stage 1, refit pass 1: held-out loss" in capsys.readouterr().out
