"""Structured budgets of whole networks (issue 12 §3): cbs_opt.structured.block_budget / check_masks on the
Fisher blocks of tiny Linear and Conv models, multi-stage counts, split groups, and enumerate under a
block budget against an independent brute force over the product of per-group choices."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import brute
import solvers
from cbs_opt.errors import ArgumentTypeError, InvalidArgumentError
from cbs_opt.fisher import ParamSlice, build_blocks
from cbs_opt.structured import block_budget, check_masks, fits_pattern


class _Blk:
    """A stand-in with the two attributes block_budget reads (fisher.Block has them too)."""

    def __init__(self, name, slices):
        self.name = name
        self.param_slices = slices
        self.size = sum(len(s.indices) for s in slices)


SHAPES = {"fc.weight": (2, 8), "conv.weight": (2, 2, 2, 2), "fc.bias": (2,)}


def _whole(*names, shapes=SHAPES):
    slices, start = [], 0
    for n in names:
        size = int(np.prod(shapes[n]))
        slices.append(ParamSlice(n, np.arange(size), start))
        start += size
    return _Blk("model", slices)


# ---------------------------------------------------------------------------------------------------
# hand-checkable layouts
# ---------------------------------------------------------------------------------------------------
def test_pattern_linear_and_conv_groups_by_hand():
    b = block_budget(_whole("fc.weight", "conv.weight"), SHAPES, pattern="2:4")
    # fc (2, 8): rows of 8 → groups of 4 consecutive; conv (2, 2, 2, 2): rows of 2·2·2 = 8, same layout.
    assert b.groups.tolist() == [i // 4 for i in range(32)]
    assert b.counts.tolist() == [2] * 8 and b.n_prune == 16 and b.pattern == "2:4"
    b14 = block_budget(_whole("conv.weight"), SHAPES, pattern="1:4")
    assert b14.counts.tolist() == [3, 3, 3, 3]
    b48 = block_budget(_whole("fc.weight"), SHAPES, pattern="4:8")
    assert b48.groups.tolist() == [0] * 8 + [1] * 8 and b48.counts.tolist() == [4, 4]
    assert block_budget(_whole("fc.weight"), SHAPES, pattern="2:4", sparsity=0.5).counts.tolist() == [2] * 4


def test_balanced_rows_by_hand():
    b = block_budget(_whole("fc.weight", "conv.weight"), SHAPES, balanced="row", sparsity=0.25)
    assert b.groups.tolist() == [i // 8 for i in range(32)]
    assert b.counts.tolist() == [2, 2, 2, 2] and b.pattern is None and b.kind == "partition"
    # round(0.3·8) = round(2.4) = 2 in every row
    assert block_budget(_whole("fc.weight"), SHAPES, balanced="row", sparsity=0.3).counts.tolist() == [2, 2]


def test_row_blocks_and_chunks_that_respect_rows():
    one_row = _Blk("fc.weight[1]", [ParamSlice("fc.weight", np.arange(8, 16), 0)])
    b = block_budget(one_row, SHAPES, pattern="2:4")
    assert b.groups.tolist() == [0] * 4 + [1] * 4 and b.counts.tolist() == [2, 2]
    # one row = one group under balanced: a single group is a total budget of round(s·L)
    rb = block_budget(one_row, SHAPES, balanced="row", sparsity=0.5)
    assert rb.n_groups == 1 and rb.n_prune == 4
    # a chunk of 12 = 3 whole groups of 4, spanning a row boundary of conv? no: fc row 0 + half of row 1
    chunk = _Blk("chunk0", [ParamSlice("fc.weight", np.arange(12), 0)])
    assert block_budget(chunk, SHAPES, pattern="2:4").counts.tolist() == [2, 2, 2]
    with pytest.raises(InvalidArgumentError, match="blocks='row', 'layer' or 'model'"):
        block_budget(chunk, SHAPES, balanced="row", sparsity=0.5)  # row 1 is split


def test_split_group_is_refused_with_the_safe_choices():
    chunk = _Blk("chunk0", [ParamSlice("fc.weight", np.arange(6), 0)])
    with pytest.raises(InvalidArgumentError, match=r"chunk0.*2 of the 4 .*fc\.weight.*row 0, columns 4\.\.7"):
        block_budget(chunk, SHAPES, pattern="2:4")


def test_build_blocks_chunk_sizes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3, bias=False), nn.ReLU(), nn.Linear(3, 4, bias=False))
    model[2].weight.data = torch.randn(4, 3)
    data = (torch.randn(20, 8), torch.randint(0, 4, (20,)))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    blocks = build_blocks(model, data, n_samples=10, blocks=8, params=["0.weight"])
    assert sum(block_budget(b, shapes, pattern="2:4").n_prune for b in blocks) == 12
    blocks = build_blocks(model, data, n_samples=10, blocks=6, params=["0.weight"])
    with pytest.raises(InvalidArgumentError, match="chunk0.*columns 4..7"):
        [block_budget(b, shapes, pattern="2:4") for b in blocks]
    # row length 3 is not divisible by M = 4
    blocks = build_blocks(model, data, n_samples=10, blocks="layer", params=["2.weight"])
    with pytest.raises(InvalidArgumentError, match="divisible by M = 4"):
        block_budget(blocks[0], shapes, pattern="2:4")


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(), InvalidArgumentError, "exactly one of pattern"),
    (dict(pattern="2:4", balanced="row"), InvalidArgumentError, "exactly one of pattern"),
    (dict(balanced="row"), InvalidArgumentError, "needs sparsity"),
    (dict(balanced="col", sparsity=0.5), InvalidArgumentError, "balanced must be one of"),
    (dict(pattern="2:4", sparsity=0.75), InvalidArgumentError, "disagrees with pattern"),
    (dict(pattern="2:4", fraction=0.0), InvalidArgumentError, "fraction must be"),
    (dict(pattern="2:4", fraction=1.5), InvalidArgumentError, "fraction must be"),
    (dict(balanced="row", sparsity="half"), ArgumentTypeError, "sparsity must be a real"),
    (dict(pattern="2:4", pruned_before=[True]), ArgumentTypeError, "pruned_before must be a mapping"),
])
def test_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        block_budget(_whole("fc.weight"), SHAPES, **kwargs)


def test_bias_and_missing_shape_are_named():
    with pytest.raises(InvalidArgumentError, match="'fc.bias'.*Linear/Conv weights"):
        block_budget(_whole("fc.bias"), SHAPES, pattern="2:4")
    with pytest.raises(InvalidArgumentError, match="no entry for parameter 'fc.weight'"):
        block_budget(_whole("fc.weight"), {}, pattern="2:4")


# ---------------------------------------------------------------------------------------------------
# multi-stage
# ---------------------------------------------------------------------------------------------------
def test_multistage_counts_subtract_what_is_already_pruned():
    keep = np.ones(16, bool)
    keep[[0, 1, 5, 15]] = False  # group 0 (cols 0..3 of row 0): 2 pruned; group 1: 1; group 3: 1
    blk = _Blk("fc.weight", [ParamSlice("fc.weight", np.flatnonzero(keep), 0)])
    b = block_budget(blk, SHAPES, pattern="2:4", pruned_before={"fc.weight": keep})
    # group 0 is fully done: its 2 remaining weights form a group with count 0
    assert b.groups.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert b.counts.tolist() == [0, 1, 2, 1] and b.pattern is None
    # an intermediate stage: round(0.5·2) = 1 cumulative per group
    half = block_budget(blk, SHAPES, pattern="2:4", pruned_before={"fc.weight": keep}, fraction=0.5)
    assert half.counts.tolist() == [0, 0, 1, 0]
    # 1:4 → target 3 per group; fraction 0.5 → round half up (1.5) = 2
    assert block_budget(blk, SHAPES, pattern="1:4", pruned_before={"fc.weight": keep},
                        fraction=0.5).counts.tolist() == [0, 1, 2, 1]
    # balanced rows: row 0 has 3 pruned, row 1 has 1; target round(0.5·8) = 4
    rb = block_budget(blk, SHAPES, balanced="row", sparsity=0.5, pruned_before={"fc.weight": torch.tensor(keep)})
    assert rb.counts.tolist() == [1, 3]


def test_overpruned_group_is_clipped_at_zero_and_caught_by_check_masks():
    keep = np.ones(16, bool)
    keep[[0, 1, 2]] = False  # 3 pruned in a 2:4 group already (an earlier unstructured stage)
    blk = _Blk("fc.weight", [ParamSlice("fc.weight", np.flatnonzero(keep), 0)])
    b = block_budget(blk, SHAPES, pattern="2:4", pruned_before={"fc.weight": keep})
    assert b.counts.tolist() == [0, 2, 2, 2]
    keep2 = keep.copy()
    keep2[[4, 5, 8, 9, 12, 13]] = False
    check_masks({"fc.weight": keep2}, SHAPES, pattern="2:4")  # at most 2 kept: 1 kept in group 0 is fine
    with pytest.raises(InvalidArgumentError, match="'fc.weight'.*row 1, expected 5 in every row"):
        check_masks({"fc.weight": keep2}, SHAPES, balanced="row")  # rows prune 5 and 4


def test_pruned_coordinate_inside_the_block_is_refused():
    keep = np.ones(16, bool)
    keep[3] = False
    with pytest.raises(InvalidArgumentError, match="entry 3, which pruned_before marks as pruned"):
        block_budget(_whole("fc.weight"), SHAPES, pattern="2:4", pruned_before={"fc.weight": keep})
    # the block built without the masks misses coordinates that pruned_before does not explain
    blk = _Blk("fc.weight", [ParamSlice("fc.weight", np.flatnonzero(keep), 0)])
    with pytest.raises(InvalidArgumentError, match="pruned_before"):
        block_budget(blk, SHAPES, pattern="2:4")


# ---------------------------------------------------------------------------------------------------
# check_masks
# ---------------------------------------------------------------------------------------------------
def test_check_masks_pattern_and_rows():
    conv = np.ones((2, 2, 2, 2), bool)
    flat = conv.reshape(2, 8)
    flat[:, [0, 3, 5, 6]] = False
    check_masks({"conv.weight": conv}, pattern="2:4")
    check_masks({"conv.weight": conv}, balanced="row", sparsity=0.5)
    check_masks({"conv.weight": torch.tensor(conv).reshape(-1)}, SHAPES, pattern="2:4")
    flat[1, 5] = True  # row 1, columns 4..7 keeps 3
    with pytest.raises(InvalidArgumentError, match=r"'conv.weight'.*row 1, columns 4\.\.7"):
        check_masks({"conv.weight": conv}, pattern="2:4")
    with pytest.raises(InvalidArgumentError, match="row 1"):
        check_masks({"conv.weight": conv}, balanced="row", sparsity=0.5)
    with pytest.raises(ArgumentTypeError, match="boolean"):
        check_masks({"conv.weight": conv.astype(int)}, pattern="2:4")
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        check_masks({}, pattern="2:4")


# ---------------------------------------------------------------------------------------------------
# end to end: enumerate under block_budget = an independent brute force over per-group choices
# ---------------------------------------------------------------------------------------------------
def _hand_groups(shape, m, keep):
    """N:M groups of a conv weight written out by hand: output channel c, in-channel × kernel flattened,
    consecutive runs of m — as lists of *kept* flat indices, with how many were pruned before."""
    out, length = shape[0], int(np.prod(shape[1:]))
    groups = []
    for c in range(out):
        for j in range(0, length, m):
            idx = [c * length + j + t for t in range(m)]
            groups.append(([i for i in idx if keep[i]], sum(not keep[i] for i in idx)))
    return groups


@pytest.mark.parametrize("pattern,stage_masked", [("2:4", False), ("2:4", True), ("1:4", True), ("3:4", False)])
def test_enumerate_under_block_budget_equals_brute_force_on_a_conv(pattern, stage_masked):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 2, 2, bias=False), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    data = (torch.randn(30, 2, 3, 3), torch.randint(0, 3, (30,)))
    shape = tuple(model[0].weight.shape)  # (2, 2, 2, 2): rows of 8
    keep = np.ones(16, bool)
    if stage_masked:
        keep[[1, 6, 9, 10, 12]] = False
    blocks = build_blocks(model, data, n_samples=20, damping=1e-2, blocks="layer", params=["0.weight"],
                          masks={"0.weight": keep.reshape(shape)})
    (block,) = blocks
    budget = block_budget(block, {"0.weight": shape}, pattern=pattern,
                          pruned_before={"0.weight": keep} if stage_masked else None)
    prob = block.problem.with_budget(budget)
    sol = solvers.solve(prob, "enumerate")

    n, m = map(int, pattern.split(":"))
    coord = {int(i): k for k, i in enumerate(block.param_slices[0].indices)}  # flat index → block coordinate
    F = brute.dense_f(prob.weights, np.asarray(block.grads, float), block.damping)
    per_group = [itertools.combinations([coord[i] for i in kept], max(0, (m - n) - done))
                 for kept, done in _hand_groups(shape, m, keep) if kept]
    best, best_set, count = np.inf, None, 0
    for choice in itertools.product(*per_group):
        subset = sorted(i for part in choice for i in part)
        count += 1
        c = brute.update_cost(F, prob.weights, subset)
        if c < best - 1e-15:
            best, best_set = c, subset
    assert count > 1
    assert sol.status == "optimal"
    assert sol.objective == pytest.approx(best, rel=1e-8, abs=1e-12)
    assert sol.pruned.tolist() == best_set or prob.objective(best_set) == pytest.approx(sol.objective, rel=1e-9)
    # written back, the masks satisfy the pattern
    mask = keep.copy()
    mask[block.param_slices[0].indices[sol.pruned]] = False
    check_masks({"0.weight": mask.reshape(shape)}, pattern=pattern)


def test_fits_pattern():
    assert fits_pattern((10, 40), "4:8") and not fits_pattern((10, 20), "4:8")
    assert fits_pattern((4, 2, 3, 3), "2:6") and not fits_pattern((4, 2, 3, 3), "2:4")  # rows of 18
    assert not fits_pattern((20,), "2:4")  # a bias
    with pytest.raises(InvalidArgumentError, match="must look like"):
        fits_pattern((4, 4), "2-4")


@pytest.mark.parametrize("blocks", ["row", "layer", "model", 16])
def test_two_stage_pattern_pruning_end_to_end(blocks):
    """Stage 1 prunes round(½·2) = 1 per 2:4 group, stage 2 the rest, with the blocks rebuilt on the
    masked network (pruned coordinates left out): the final masks are exactly 2:4 in every group."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))
    data = (torch.randn(40, 8), torch.randint(0, 3, (40,)))
    params = dict(model.named_parameters())
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    keep = {n: np.ones(p.numel(), bool) for n, p in params.items()}
    for stage, fraction in enumerate((0.5, 1.0)):
        masks = None if stage == 0 else {n: k.reshape(shapes[n]) for n, k in keep.items()}
        built = build_blocks(model, data, n_samples=20, damping=1e-2, blocks=blocks, masks=masks, seed=stage)
        if stage == 1 and blocks == 16:  # chunks of surviving weights no longer align with rows
            with pytest.raises(InvalidArgumentError, match="only while nothing is pruned"):
                [block_budget(b, shapes, pattern="2:4", pruned_before=masks) for b in built]
            return
        for block in built:
            budget = block_budget(block, shapes, pattern="2:4", pruned_before=masks, fraction=fraction)
            sol = solvers.solve(block.problem.with_budget(budget), "obs")
            for s in block.param_slices:
                inside = sol.pruned[(sol.pruned >= s.start) & (sol.pruned < s.stop)] - s.start
                keep[s.name][s.indices[inside]] = False
        pruned_per_group = {n: (~k).reshape(-1, 4).sum(axis=1) for n, k in keep.items()}
        assert all(np.all(c == stage + 1) for c in pruned_per_group.values())
    check_masks({n: k.reshape(shapes[n]) for n, k in keep.items()}, pattern="2:4")
