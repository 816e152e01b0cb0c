"""Problem: objectives against independent least squares, CBS-U, validation, persistence."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import brute
from cbs_opt import Problem
from cbs_opt.instances import FAMILIES, random_problem


def _dense(prob):
    return brute.dense_f(prob.weights, prob.grads, prob.damping, prob.hessian)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_samples", [3, 9, 30])  # N < p, N ≈ p, N > p
@pytest.mark.parametrize("dense", [False, True])
def test_update_cost_equals_least_squares(family, n_samples, dense):
    p = 9
    for seed in range(3):
        prob = random_problem(p, n_samples, 4, family=family, dense=dense, seed=seed)
        F = _dense(prob)
        rng = np.random.default_rng(seed)
        for m in range(p + 1):
            pruned = np.sort(rng.choice(p, m, replace=False))
            expected = brute.update_cost(F, prob.weights, pruned)
            assert prob.update_cost(pruned) == pytest.approx(expected, rel=1e-8, abs=1e-12)
            assert prob.selection_cost(pruned) == pytest.approx(
                brute.selection_cost(F, prob.weights, pruned), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("p,N,m", [(40, 5, 2), (40, 5, 20), (40, 5, 37), (12, 50, 6), (40, 10, 39)])
def test_every_solve_regime_matches_dense(p, N, m):
    """Primal kept block, Woodbury on the kept block, and Woodbury through M − A_P A_Pᵀ."""
    prob = random_problem(p, N, m, seed=p + N + m)
    F = _dense(prob)
    pruned = np.sort(np.random.default_rng(0).choice(p, m, replace=False))
    x = prob.update(pruned)
    kept = np.setdiff1d(np.arange(p), pruned)
    # optimality: the gradient of the model vanishes on the kept coordinates
    assert np.allclose((F @ (x - prob.weights))[kept], 0, atol=1e-8)
    assert np.all(x[pruned] == 0)
    assert prob.update_cost(pruned) == pytest.approx(brute.update_cost(F, prob.weights, pruned), rel=1e-8)


def test_gradient_term_matches_kkt():
    for dense in (False, True):
        prob = random_problem(8, 5, 3, gradient=True, dense=dense, damping=0.1, seed=4)
        F = _dense(prob)
        for pruned in itertools.combinations(range(8), 3):
            pruned = np.array(pruned)
            assert prob.update_cost(pruned) == pytest.approx(
                brute.update_cost(F, prob.weights, pruned, prob.gradient), rel=1e-8, abs=1e-12)
            assert prob.selection_cost(pruned) == pytest.approx(
                brute.selection_cost(F, prob.weights, pruned, prob.gradient), rel=1e-10)
        # pruning nothing still moves to the Newton point: −½ ḡᵀF⁻¹ḡ
        assert prob.update_cost([]) == pytest.approx(-0.5 * prob.gradient @ np.linalg.solve(F, prob.gradient))


def test_singular_fisher_without_damping():
    # λ = 0 and N < p: F is singular, the update cost is still a well-defined least-squares minimum.
    prob = random_problem(10, 3, 5, damping=0.0, seed=1)
    F = _dense(prob)
    for pruned in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [0, 9]):
        assert prob.update_cost(pruned) == pytest.approx(brute.update_cost(F, prob.weights, pruned),
                                                         rel=1e-6, abs=1e-10)


def test_update_is_cbs_u_closed_form():
    prob = random_problem(10, 6, 4, damping=1e-2, seed=2)
    F = _dense(prob)
    Finv = np.linalg.inv(F)
    P = np.array([1, 4, 6, 9])
    w = prob.weights
    expected = w - Finv[:, P] @ np.linalg.solve(Finv[np.ix_(P, P)], w[P])
    assert np.allclose(prob.update(P), expected, atol=1e-9)
    assert prob.update_cost(P) == pytest.approx(0.5 * w[P] @ np.linalg.solve(Finv[np.ix_(P, P)], w[P]))


@given(seed=st.integers(0, 10_000), p=st.integers(1, 12), n=st.integers(1, 15),
       damping=st.sampled_from([0.0, 1e-3, 1.0]), data=st.data())
def test_objective_invariants(seed, p, n, damping, data):
    prob = random_problem(p, n, 0, damping=damping, seed=seed)
    m = data.draw(st.integers(0, p))
    rng = np.random.default_rng(seed)
    pruned = np.sort(rng.choice(p, m, replace=False))
    upd, sel = prob.update_cost(pruned), prob.selection_cost(pruned)
    scale = 1e-9 * max(1.0, abs(sel))
    assert upd >= -scale                       # a PSD quadratic
    assert upd <= sel + scale                  # zeroing is one feasible point of the update problem
    if m < p:                                  # pruning one more weight never lowers the update cost
        extra = rng.choice(np.setdiff1d(np.arange(p), pruned))
        assert prob.update_cost(np.append(pruned, extra)) >= upd - scale
    x = prob.update(pruned)
    assert np.all(x[pruned] == 0) and x.dtype == np.float64 and x.shape == (p,)


@given(dtype=st.sampled_from([np.float32, np.float64, np.int64]), p=st.integers(1, 6))
def test_accepts_dtypes_and_torch(dtype, p):
    w = (np.arange(p) + 1).astype(dtype)
    G = np.ones((2, p), dtype=dtype)
    a = Problem(w, G, 0.5, 1)
    b = Problem(torch.as_tensor(w), torch.as_tensor(G), 0.5, 1)
    assert a.update_cost([0]) == pytest.approx(b.update_cost([0]))
    assert a.weights.dtype == np.float64


def test_caller_arrays_untouched_and_readonly():
    rng = np.random.default_rng(0)
    w, G = rng.normal(size=6), rng.normal(size=(4, 6))
    w0, G0 = w.copy(), G.copy()
    prob = Problem(w, G, 1e-3, 3)
    prob.update([0, 1, 2])
    w[0] = 99.0  # the problem holds its own copy
    assert prob.weights[0] == w0[0]
    assert np.array_equal(G, G0)
    with pytest.raises(ValueError):
        prob.weights[0] = 1.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(weights=np.ones((2, 2)), grads=np.ones((2, 4)), n_prune=1), "weights must be 1-dimensional"),
    (dict(weights=np.ones(3), grads=np.ones((2, 4)), n_prune=1), r"grads must have shape \(N, 3\)"),
    (dict(weights=np.array([1.0, np.nan]), grads=np.ones((2, 2)), n_prune=1), "weights contains NaN"),
    (dict(weights=np.ones(2), grads=np.array([[1.0, np.inf]]), n_prune=1), "grads contains NaN or inf"),
    (dict(weights=np.ones(2), grads=np.ones((1, 2)), n_prune=3), r"n_prune must be in \[0, 2\]"),
    (dict(weights=np.ones(2), grads=np.ones((1, 2)), n_prune=-1), r"n_prune must be in \[0, 2\]"),
    (dict(weights=np.ones(2), grads=np.ones((1, 2)), n_prune=1, damping=-1.0), "damping must be"),
    (dict(weights=np.ones(2), n_prune=1), "exactly one of grads"),
    (dict(weights=np.ones(2), grads=np.ones((1, 2)), hessian=np.eye(2), n_prune=1), "exactly one of grads"),
    (dict(weights=np.ones(2), hessian=np.array([[1.0, 0.0], [0.0, -1.0]]), n_prune=1), "positive semidefinite"),
    (dict(weights=np.ones(2), hessian=np.array([[1.0, 0.5], [0.0, 1.0]]), n_prune=1), "symmetric"),
    (dict(weights=np.ones(2), hessian=np.eye(3), n_prune=1), r"hessian must have shape \(2, 2\)"),
    (dict(weights=np.ones(2), grads=np.ones((1, 2)), n_prune=1, objective="loss"), "objective must be one of"),
    (dict(weights=np.ones(2), grads=np.ones((1, 2))), "n_prune .* is required"),
    (dict(weights=np.ones(2), grads=np.ones((1, 2)), sparsity=1.5), r"sparsity must be in \[0, 1\]"),
    (dict(weights=np.ones(2), grads=np.ones((1, 2)), n_prune=1, gradient=np.ones(3)), r"gradient must have shape"),
    (dict(weights=np.ones(2), grads=np.zeros((0, 2)), n_prune=1), "at least one sample"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Problem(**kwargs)


def test_bad_pruned_sets():
    prob = random_problem(5, 3, 2)
    with pytest.raises(ValueError, match="outside"):
        prob.objective([0, 5])
    with pytest.raises(ValueError, match="repeated"):
        prob.objective([1, 1])
    with pytest.raises(TypeError, match="boolean mask"):
        prob.objective(np.array([True, False, True, False, False]))
    with pytest.raises(TypeError, match="integer indices"):
        prob.objective([0.5, 1.0])
    with pytest.raises(TypeError, match="n_prune must be an integer"):
        prob.with_n_prune(2.5)


def test_sparsity_and_with_helpers():
    prob = Problem(np.ones(10), np.ones((2, 10)), 1e-3, sparsity=0.75)
    assert prob.n_prune == 8  # round(7.5) → banker's rounding would give 8 as well
    assert prob.with_objective("selection").objective_kind == "selection"
    assert prob.objective_kind == "update"
    assert prob.with_n_prune(3).n_prune == 3 and prob.n_prune == 8


@pytest.mark.parametrize("dense,gradient", [(False, False), (True, True)])
def test_save_load_roundtrip(tmp_path, dense, gradient):
    prob = random_problem(7, 4, 3, dense=dense, gradient=gradient, objective="selection", seed=3)
    path = tmp_path / "prob.npz"
    prob.save(path)
    again = Problem.load(path)
    assert again.p == 7 and again.n_prune == 3 and again.objective_kind == "selection"
    assert again.damping == prob.damping
    for name in ("weights", "grads", "hessian", "gradient"):
        a, b = getattr(prob, name), getattr(again, name)
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
    assert again.objective([0, 2, 4]) == prob.objective([0, 2, 4])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Problem.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not a cbs-opt problem"):
        Problem.load(tmp_path / "other.npz")


@pytest.mark.parametrize("p,N,damping", [(12, 4, 1e-3), (12, 30, 1e-3), (12, 30, 0.0), (5, 5, 1e-2)])
def test_inverse_diagonal_both_sides(p, N, damping):
    """Woodbury (N < p) and the direct p × p factor (N ≥ p) both give diag(F⁻¹)."""
    prob = random_problem(p, N, 1, damping=damping, seed=p + N)
    expected = np.diag(np.linalg.inv(_dense(prob)))
    got = prob.curvature.inverse_diagonal()
    assert np.allclose(got, expected, rtol=1e-7)
    got[0] = -1.0  # a copy: the cached values stay intact
    assert np.allclose(prob.curvature.inverse_diagonal(), expected, rtol=1e-7)


# -- issue 15, item 14: persistence that a user can rely on ---------------------------------------------
def test_save_without_extension_loads_back(tmp_path, monkeypatch):
    prob = random_problem(6, 3, 2, seed=1)
    monkeypatch.chdir(tmp_path)
    prob.save("noext")                       # numpy writes noext.npz
    assert (tmp_path / "noext.npz").exists()
    again = Problem.load("noext")            # …and load finds it
    assert again.n_prune == 2 and np.array_equal(again.weights, prob.weights)


def test_save_and_load_file_objects(tmp_path):
    import io
    prob = random_problem(6, 3, 2, seed=2, gradient=True)
    buf = io.BytesIO()
    prob.save(buf)
    buf.seek(0)
    again = Problem.load(buf)
    assert np.array_equal(again.gradient, prob.gradient) and again.n_prune == 2
    with open(tmp_path / "f.npz", "wb") as fh:
        prob.save(fh)
    with open(tmp_path / "f.npz", "rb") as fh:
        assert Problem.load(fh).p == 6
    with open(tmp_path / "t.txt", "w") as fh, pytest.raises(TypeError, match="binary mode"):
        prob.save(fh)


def _corrupt_files(tmp_path):
    prob = random_problem(6, 3, 2, seed=3)
    good = tmp_path / "good.npz"
    prob.save(good)
    data = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.npz").write_text("weights = [1, 2, 3]\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04" + bytes(range(200)))
    return tmp_path


@pytest.mark.parametrize("name,why", [("truncated.npz", "truncated or corrupt"), ("text.npz", "not an .npz"),
                                      ("empty.npz", "empty file"), ("garbage.npz", "truncated or corrupt")])
def test_corrupt_files_are_problem_file_errors(tmp_path, name, why):
    from cbs_opt.errors import ProblemFileError
    path = _corrupt_files(tmp_path) / name
    with pytest.raises(ProblemFileError, match=f"not a cbs-opt problem file \\(.*{why}") as info:
        Problem.load(path)
    assert "allow_pickle" not in str(info.value) and "pickle" not in str(info.value).lower()


def test_unknown_format_version_and_missing_keys(tmp_path):
    from cbs_opt.errors import ProblemFileError
    w = np.ones(4)
    np.savez(tmp_path / "future.npz", format=np.str_("cbs-opt-problem-99"), weights=w)
    with pytest.raises(ProblemFileError, match="format version '99'.*upgrade"):
        Problem.load(tmp_path / "future.npz")
    np.savez(tmp_path / "missing.npz", format=np.str_("cbs-opt-problem-2"), weights=w, damping=0.1,
             objective=np.str_("update"))
    with pytest.raises(ProblemFileError, match="missing 'n_prune'.*'budget_kind'"):
        Problem.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "objects.npz", format=np.str_("cbs-opt-problem-1"), weights=np.array([None], dtype=object),
             damping=0.1, objective=np.str_("update"), n_prune=1)
    with pytest.raises(ProblemFileError, match="object arrays") as info:
        Problem.load(tmp_path / "objects.npz")
    assert "allow_pickle" not in str(info.value)
    # an old (version 1) file without budget entries still loads as a total budget
    np.savez(tmp_path / "v1.npz", format=np.str_("cbs-opt-problem-1"), weights=w, hessian=np.eye(4), damping=0.1,
             objective=np.str_("update"), n_prune=np.int64(2))
    assert Problem.load(tmp_path / "v1.npz").budget.kind == "total"


# -- issue 15, item 15: complex input is refused, not silently cast --------------------------------------
@pytest.mark.parametrize("name", ["weights", "grads", "hessian", "gradient"])
def test_complex_arrays_refused(name):
    import warnings
    from cbs_opt.errors import InvalidArgumentError
    kw = dict(weights=np.ones(4), damping=1e-3, n_prune=1)
    if name == "hessian":
        kw["hessian"] = np.eye(4) * (1 + 1j)
    else:
        kw["grads"] = np.ones((2, 4))
        kw[name] = kw.get(name, np.ones(4)) * (1 + 0.5j) if name != "grads" else np.ones((2, 4)) + 1j
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no ComplexWarning either: refused before any cast
        with pytest.raises(InvalidArgumentError, match=f"{name} must be real, got complex values"):
            Problem(**kw)


def test_complex_lists_and_tensors_refused():
    from cbs_opt.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="weights must be real"):
        Problem(weights=[1.0, 2j, 3.0], hessian=np.eye(3), n_prune=1)
    with pytest.raises(InvalidArgumentError, match="weights must be real"):
        Problem(weights=torch.ones(3, dtype=torch.complex64), hessian=np.eye(3), n_prune=1)
