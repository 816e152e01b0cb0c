"""cbs_opt.allocation: the budget split against enumeration of all splits."""
import itertools

import numpy as np
import pytest

from cbs_opt.allocation import allocate, interpolate_curve, is_convex, lower_hull, uniform_split


def brute_force(curves, total):
    best = (np.inf, None)
    for split in itertools.product(*[range(len(c)) for c in curves]):
        if sum(split) == total:
            cost = sum(c[m] for c, m in zip(curves, split))
            if cost < best[0]:
                best = (cost, split)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_dp_matches_enumeration_on_nonconvex_curves(seed):
    rng = np.random.default_rng(seed)
    curves = [np.concatenate([[0.0], np.cumsum(rng.exponential(size=rng.integers(1, 6)))]) for _ in range(4)]
    curves[1] = curves[1] + rng.normal(scale=0.5, size=curves[1].size)  # break monotonicity/convexity
    capacity = sum(c.size - 1 for c in curves)
    for total in range(capacity + 1):
        alloc = allocate(curves, total, method="dp")
        ref_cost, _ = brute_force(curves, total)
        assert alloc.counts.sum() == total and alloc.exact
        assert np.all(alloc.counts <= [c.size - 1 for c in curves])
        assert alloc.cost == pytest.approx(ref_cost, abs=1e-12)
        assert alloc.cost == pytest.approx(sum(c[m] for c, m in zip(curves, alloc.counts)))


@pytest.mark.parametrize("seed", range(4))
def test_greedy_is_exact_on_convex_curves_and_auto_uses_it(seed):
    rng = np.random.default_rng(10 + seed)
    curves = [np.concatenate([[0.0], np.cumsum(np.sort(rng.exponential(size=rng.integers(1, 7))))])
              for _ in range(4)]
    assert all(is_convex(c) for c in curves)
    for total in range(sum(c.size - 1 for c in curves) + 1):
        auto = allocate(curves, total)
        assert auto.method == "greedy" and auto.exact
        assert auto.cost == pytest.approx(brute_force(curves, total)[0], abs=1e-12)
        assert auto.cost == pytest.approx(allocate(curves, total, method="dp").cost, abs=1e-12)


def test_greedy_can_fail_on_nonconvex_and_auto_avoids_it():
    # block 0: the first weight is expensive, the next two nearly free (a concave start)
    curves = [np.array([0.0, 5.0, 5.1, 5.2]), np.array([0.0, 1.0, 2.0, 3.0])]
    greedy = allocate(curves, 3, method="greedy")
    auto = allocate(curves, 3)
    assert auto.method == "dp" and auto.cost == pytest.approx(brute_force(curves, 3)[0])
    assert auto.cost == pytest.approx(3.0) and greedy.cost > auto.cost and not greedy.exact


def test_infinite_entries_and_errors():
    curves = [np.array([0.0, np.inf, 1.0]), np.array([0.0, 2.0])]
    assert list(allocate(curves, 1).counts) == [0, 1]
    assert list(allocate(curves, 2).counts) == [2, 0]
    with pytest.raises(ValueError, match="no split"):
        allocate([np.array([0.0, np.inf])], 1)
    with pytest.raises(ValueError, match="total"):
        allocate(curves, 4)
    with pytest.raises(ValueError, match="finite"):
        allocate(curves, 1, method="greedy")
    with pytest.raises(ValueError, match=r"curves\[0\]"):
        allocate([np.array([0.0, np.nan])], 1)
    with pytest.raises(ValueError, match="method"):
        allocate(curves, 1, method="magic")


def test_hull_and_helpers():
    c = np.array([0.0, 3.0, 3.5, 4.0, 9.0])
    h = lower_hull(c)
    assert is_convex(h) and np.all(h <= c + 1e-12) and h[0] == c[0] and h[-1] == c[-1]
    np.testing.assert_allclose(h[:4], [0.0, 4 / 3, 8 / 3, 4.0])
    np.testing.assert_allclose(interpolate_curve([0, 4, 2], [0.0, 8.0, 1.0], 4), [0, 0.5, 1, 4.5, 8])
    with pytest.raises(ValueError, match="both ends"):
        interpolate_curve([0, 2], [0.0, 1.0], 4)
    counts = uniform_split([10, 5, 1], 8)
    assert list(counts) == [5, 3, 0]  # floors 5, 2, 0; the one left goes to the first largest remainder
    assert np.all(uniform_split([3, 3], 6) == [3, 3])
