"""Structured budgets for layer weights: N:M patterns and balanced (per-row) sparsity.

Hardware-accelerated sparsity constrains groups that run along the *input* dimension of a weight:

* a Linear weight ``(out, in)`` is flattened row-major, so each row (one output unit) is ``in``
  consecutive entries; N:M groups are ``M`` consecutive weights of a row;
* a Conv weight ``(out, in, kh, kw)`` (any ``(out, …)``) is flattened the same way: each output channel's
  row is the flattened ``in × kh × kw`` filter, and the N:M groups run along it.

Every function here works on the flat, row-major index ``i = row · L + j`` with ``L = prod(shape[1:])``,
the layout of ``weight.reshape(-1)`` / ``weight.flatten()``, and returns plain numpy arrays or a
:class:`~cbs_opt.budget.Budget`, so a caller can build a :class:`~cbs_opt.problem.Problem` over a whole
tensor or slice rows out of it (``row_slice``).

For whole networks, :func:`block_budget` maps a Fisher block (``fisher.Block.param_slices``) and the
parameters' shapes to the block's partition budget — multi-stage aware (``pruned_before``, ``fraction``) —
and :func:`check_masks` verifies the keep-masks written back.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np

from .budget import Budget, parse_pattern
from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["row_length", "pattern_groups", "pattern_budget", "row_groups", "row_budget", "row_slice",
           "check_pattern_mask", "check_row_mask", "block_budget", "check_masks", "fits_pattern", "BALANCED"]

#: Values of ``balanced=``: one group per output row / channel.
BALANCED = ("row",)


def _shape(shape) -> tuple[int, ...]:
    if hasattr(shape, "shape") and not isinstance(shape, tuple):
        shape = tuple(shape.shape)  # a tensor or array was passed: use its shape
    if isinstance(shape, numbers.Integral) or not isinstance(shape, Sequence):
        raise ArgumentTypeError(f"shape must be a tuple like (out, in) or (out, in, kh, kw), got {shape!r}")
    shape = tuple(shape)
    if len(shape) < 2:
        raise InvalidArgumentError(f"shape must have at least 2 dimensions (out, in, ...) for a structured "
                                   f"budget, got {shape}")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise InvalidArgumentError(f"shape must hold positive integers, got {shape}")
    return tuple(int(d) for d in shape)


def row_length(shape) -> int:
    """``L = prod(shape[1:])``: the length of one output unit's row (``in`` or ``in·kh·kw``)."""
    shape = _shape(shape)
    return int(np.prod(shape[1:]))


def pattern_groups(shape, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Group ids and per-group prune counts of N:M sparsity on a weight of ``shape``.

    Returns ``(groups, counts)``: ``groups`` (prod(shape),) np.intp with ``groups[i] = i // M`` on the
    row-major flat index (each row splits into ``L / M`` groups of ``M`` consecutive weights, never
    crossing rows) and ``counts`` (G,) np.intp, all ``M − N``. The row length ``L`` must be divisible by M.
    """
    shape = _shape(shape)
    n, m = parse_pattern(pattern)
    length = int(np.prod(shape[1:]))
    if length % m:
        what = "in_features" if len(shape) == 2 else "in_channels × kernel size"
        raise InvalidArgumentError(f"pattern {pattern!r} needs the row length ({what} = {length} for a weight "
                                   f"of shape {shape}) to be divisible by M = {m}")
    total = shape[0] * length
    groups = np.arange(total, dtype=np.intp) // m
    counts = np.full(total // m, m - n, dtype=np.intp)
    return groups, counts


def fits_pattern(shape, pattern: str) -> bool:
    """True when a weight of ``shape`` can carry N:M sparsity: at least 2 dimensions and a row length
    ``prod(shape[1:])`` divisible by M (e.g. a (10, 20) Linear cannot carry 4:8; callers may leave it dense)."""
    _, m = parse_pattern(pattern)
    try:
        shape = _shape(shape)
    except (InvalidArgumentError, ArgumentTypeError):
        return False
    return int(np.prod(shape[1:])) % m == 0


def pattern_budget(shape, pattern: str) -> Budget:
    """:class:`Budget` of N:M sparsity over a whole weight of ``shape`` (see :func:`pattern_groups`)."""
    shape = _shape(shape)
    pattern_groups(shape, pattern)  # the row-length check with its layer-aware message
    return Budget.pattern(int(np.prod(shape)), pattern)


def row_groups(shape) -> np.ndarray:
    """Group ids of balanced sparsity: ``groups[i] = i // L`` — one group per output unit / channel."""
    shape = _shape(shape)
    return np.arange(int(np.prod(shape)), dtype=np.intp) // int(np.prod(shape[1:]))


def row_budget(shape, sparsity: float) -> Budget:
    """Balanced sparsity: the same prune count ``round(sparsity · L)`` in every row of a weight of ``shape``."""
    shape = _shape(shape)
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ArgumentTypeError(f"sparsity must be a real number, got {type(sparsity).__name__}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity <= 1.0:
        raise InvalidArgumentError(f"sparsity must be in [0, 1], got {sparsity}")
    length = int(np.prod(shape[1:]))
    per_row = int(round(sparsity * length))
    return Budget.partition(row_groups(shape), np.full(shape[0], per_row, dtype=np.intp))


def row_slice(shape, row: int) -> slice:
    """The flat index range of output unit ``row`` (``weight.reshape(-1)[row_slice(shape, r)]``)."""
    shape = _shape(shape)
    if isinstance(row, bool) or not isinstance(row, numbers.Integral) or not 0 <= row < shape[0]:
        raise InvalidArgumentError(f"row must be an integer in [0, {shape[0]}), got {row!r}")
    length = int(np.prod(shape[1:]))
    return slice(int(row) * length, (int(row) + 1) * length)


def _mask_array(mask) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.dtype != bool:
        raise ArgumentTypeError(f"mask must be a boolean array (True = kept), got dtype {arr.dtype}")
    return arr


def check_pattern_mask(mask, pattern: str, *, name: str = "mask") -> None:
    """Raise :class:`InvalidArgumentError` unless the keep-mask (True = kept, shape ``(out, …)``) has at most
    ``N`` kept in every group of ``M`` consecutive weights of each row (what the hardware requires)."""
    arr = _mask_array(mask)
    n, m = parse_pattern(pattern)
    groups, _ = pattern_groups(arr.shape, pattern)
    kept = np.bincount(groups, weights=arr.reshape(-1).astype(np.float64), minlength=groups[-1] + 1)
    bad = np.flatnonzero(kept > n)
    if bad.size:
        g = int(bad[0])
        length = int(np.prod(arr.shape[1:]))
        row, col = divmod(g * m, length)
        raise InvalidArgumentError(f"{name} breaks pattern {pattern!r}: {int(kept[g])} kept in row {row}, "
                                   f"columns {col}..{col + m - 1} ({bad.size} groups violated)")


def check_row_mask(mask, per_row: int, *, name: str = "mask") -> None:
    """Raise :class:`InvalidArgumentError` unless every row of the keep-mask prunes exactly ``per_row``."""
    arr = _mask_array(mask)
    rows = arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else None
    if rows is None:
        raise InvalidArgumentError(f"{name} must have at least 2 dimensions, got shape {arr.shape}")
    pruned = (~rows).sum(axis=1)
    bad = np.flatnonzero(pruned != per_row)
    if bad.size:
        r = int(bad[0])
        raise InvalidArgumentError(f"{name} prunes {int(pruned[r])} weights in row {r}, expected {per_row} "
                                   f"in every row ({bad.size} rows differ)")



# -- whole networks: a block's budget, and the check of the written masks -----------------------------------
_SAFE_BLOCKS = ("blocks='row', 'layer' or 'model' (a chunk size that is a multiple of every row length works only "
                "while nothing is pruned: chunks count surviving weights, so after a stage they cut through rows)")


def _as_bool_flat(name: str, mask, numel: int) -> np.ndarray:
    """A keep-mask (numpy or torch, any shape) as a flat bool array of ``numel`` entries."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.dtype != bool:
        raise ArgumentTypeError(f"{name} must be a boolean keep-mask (True = kept), got dtype {arr.dtype}")
    if arr.size != numel:
        raise InvalidArgumentError(f"{name} has {arr.size} entries, the parameter has {numel}")
    return arr.reshape(-1)


def _structure(pattern, balanced, sparsity, *, where: str) -> tuple[str, int, float | None]:
    """Validate the pattern/balanced/sparsity triple → ``("pattern", M, None)`` or ``("row", 0, sparsity)``."""
    if (pattern is None) == (balanced is None):
        raise InvalidArgumentError(f"{where}: give exactly one of pattern='N:M' and balanced='row'")
    if pattern is not None:
        n, m = parse_pattern(pattern)
        if sparsity is not None:
            s = _sparsity(sparsity)
            if not math.isclose(s, (m - n) / m, abs_tol=1e-9):
                raise InvalidArgumentError(f"sparsity={sparsity} disagrees with pattern={pattern!r}, which prunes "
                                           f"{m - n} of every {m} weights (sparsity {(m - n) / m:g}); leave it out")
        return "pattern", m, None
    if balanced not in BALANCED:
        raise InvalidArgumentError(f"balanced must be one of {BALANCED}, got {balanced!r}")
    if sparsity is None:
        raise InvalidArgumentError(f"{where}: balanced={balanced!r} needs sparsity= (the fraction pruned in each row)")
    return "row", 0, _sparsity(sparsity)


def _sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ArgumentTypeError(f"sparsity must be a real number, got {type(sparsity).__name__}")
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise InvalidArgumentError(f"sparsity must be in [0, 1], got {sparsity}")
    return s


def _param_shape(name: str, shapes: Mapping[str, Any]) -> tuple[int, ...]:
    if name not in shapes:
        raise InvalidArgumentError(f"shapes has no entry for parameter {name!r} (the block has coordinates of it)")
    try:
        return _shape(shapes[name])
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"parameter {name!r}: {exc}; structured budgets apply to Linear/Conv weights "
                                   f"(select them with params=)") from None


def _group_layout(kind: str, m: int, shape: tuple[int, ...], pattern) -> tuple[int, int]:
    """``(group size, row length)`` of a parameter: N:M groups of ``M`` (the row length must divide) or rows."""
    length = int(np.prod(shape[1:]))
    if kind == "pattern":
        pattern_groups(shape, pattern)  # the row-length check with its layer-aware message
        return m, length
    return length, length


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-12))


def block_budget(block, shapes: Mapping[str, Any], *, pattern: str | None = None, balanced: str | None = None,
                 sparsity: float | None = None, pruned_before: Mapping[str, Any] | None = None,
                 fraction: float = 1.0) -> Budget:
    """The partition :class:`Budget` of one Fisher block under an N:M or balanced (per-row) pattern.

    ``block`` has ``param_slices`` (``fisher.ParamSlice``: parameter ``name``, flat ``indices`` into
    ``param.reshape(-1)``, ``start`` offset in the block); ``shapes`` maps each parameter name to its shape
    ``(out, in)`` or ``(out, in, kh, kw)``. The groups run along the input dimension of each row
    (``L = prod(shape[1:])`` consecutive flat entries per output unit):

    * ``pattern="N:M"``: every ``M`` consecutive weights of a row form a group (``L`` divisible by ``M``);
      the target is ``t = M − N`` pruned per group (``sparsity``, if given, must equal ``(M−N)/M``);
    * ``balanced="row"`` with ``sparsity=s``: one group per row, target ``t = round(s·L)`` in every row.

    Multi-stage: coordinates pruned before are not in the block (held at zero). ``pruned_before``
    ({name: bool keep-mask, True = kept}) says how many ``a_g`` of group ``g`` are already pruned, and the
    block's count for the group is ``m_g = clip(round(fraction·t) − a_g, 0, kept_g)`` — cumulative, so an
    intermediate stage may ask for ``fraction < 1`` of the final per-group count (``fraction·t`` rounded half
    up; the last stage uses ``fraction=1``). ``round(s·L)`` is Python's ``round``, as in :func:`row_budget`.
    A group that already holds more than its target gets 0 (the final masks then break the pattern, which
    :func:`check_masks` reports).

    Group ids are numbered in the order of the block's coordinates (parameter by parameter, row-major);
    the budget carries ``pattern`` text only when its groups are exactly ``[0..M), [M..2M), …`` of the block
    with ``M − N`` each. Every kept weight of a group touched by the block must be in the block: a group
    split across blocks (chunk boundaries inside a row, or a mask that disagrees with the block) raises
    :class:`InvalidArgumentError` naming the block and the choice that is always safe. ``blocks="row"``,
    ``"layer"`` and ``"model"`` always are; integer chunk sizes only in a first stage (they count the
    surviving weights, so once some are pruned the chunk boundaries fall inside rows).
    """
    kind, m, s = _structure(pattern, balanced, sparsity, where="block_budget")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) <= 1.0:
        raise InvalidArgumentError(f"fraction must be a number in (0, 1], got {fraction!r}")
    fraction = float(fraction)
    slices = list(getattr(block, "param_slices", None) or [])
    label = getattr(block, "name", "block")
    if not slices:
        raise InvalidArgumentError(f"block {label!r} has no param_slices (a fisher.Block from build_blocks is needed)")
    if not isinstance(shapes, Mapping):
        raise ArgumentTypeError(f"shapes must be a mapping {{parameter name: shape}}, got {type(shapes).__name__}")
    if pruned_before is not None and not isinstance(pruned_before, Mapping):
        raise ArgumentTypeError(f"pruned_before must be a mapping {{parameter name: bool keep-mask}}, got "
                                f"{type(pruned_before).__name__}")

    keys, counts_out, sizes_total = [], [], 0
    offset = 0  # global group numbering: parameter k's groups follow those of the parameters before it
    ordered = sorted(slices, key=lambda sl: sl.start)
    expected_start = 0
    for sl in ordered:
        if sl.start != expected_start:
            raise InvalidArgumentError(f"block {label!r}: param_slices do not tile the block (slice of "
                                       f"{sl.name!r} starts at {sl.start}, expected {expected_start})")
        expected_start = sl.start + len(sl.indices)
    size = getattr(block, "size", expected_start)
    if expected_start != size:
        raise InvalidArgumentError(f"block {label!r}: param_slices cover {expected_start} coordinates, "
                                   f"the block has {size}")

    names = [sl.name for sl in ordered]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"block {label!r} lists one parameter in several param_slices")
    for sl in ordered:
        shape = _param_shape(sl.name, shapes)
        gsize, length = _group_layout(kind, m, shape, pattern)
        numel = int(np.prod(shape))
        ix = np.asarray(sl.indices, dtype=np.intp).reshape(-1)
        if ix.size and (ix.min() < 0 or ix.max() >= numel):
            raise InvalidArgumentError(f"block {label!r}: indices of {sl.name!r} outside [0, {numel})")
        if np.unique(ix).size != ix.size:
            raise InvalidArgumentError(f"block {label!r}: repeated indices of {sl.name!r}")
        n_groups = numel // gsize
        keep = None
        if pruned_before is not None and sl.name in pruned_before:
            keep = _as_bool_flat(f"pruned_before[{sl.name!r}]", pruned_before[sl.name], numel)
            if ix.size and not keep[ix].all():
                bad = int(ix[~keep[ix]][0])
                raise InvalidArgumentError(f"block {label!r} holds {sl.name!r} entry {bad}, which "
                                           f"pruned_before marks as pruned (build the blocks with the same masks)")
        g = ix // gsize
        in_block = np.bincount(g, minlength=n_groups)
        already = (np.zeros(n_groups, np.intp) if keep is None
                   else np.bincount(np.arange(numel) // gsize, weights=~keep, minlength=n_groups).astype(np.intp))
        touched = np.flatnonzero(in_block)
        short = touched[in_block[touched] + already[touched] != gsize]
        if short.size:
            k = int(short[0])
            row, col = divmod(k * gsize, length)
            what = (f"row {row}, columns {col}..{col + gsize - 1}" if kind == "pattern" else f"row {row}")
            raise InvalidArgumentError(
                f"block {label!r} holds {int(in_block[k])} of the {gsize - int(already[k])} unpruned weights of "
                f"the group of {sl.name!r} at {what} ({short.size} such groups): a {pattern or 'balanced row'} group "
                f"must lie in one block, so use {_SAFE_BLOCKS}; in a later stage pass the masks the blocks were "
                f"built with as pruned_before")
        if kind == "pattern":
            n_keep, _ = parse_pattern(pattern)
            target = m - n_keep
        else:
            target = round(s * length)  # as row_budget
        stage_target = _round_half_up(fraction * target) if fraction < 1.0 else target
        keys.append(offset + g)
        counts_out.append(np.clip(stage_target - already[touched], 0, in_block[touched]))
        offset += n_groups
        sizes_total += ix.size

    keys = np.concatenate(keys)
    uniq, inverse = np.unique(keys, return_inverse=True)
    # Keys grow with the slices (offsets) and inside each slice (touched is ascending): the counts are
    # already in the order of ``uniq``.
    counts = np.concatenate(counts_out).astype(np.intp)
    groups = inverse.astype(np.intp)
    text = None
    if kind == "pattern":
        n_keep, _ = parse_pattern(pattern)
        if (sizes_total % m == 0 and np.array_equal(groups, np.arange(sizes_total) // m)
                and np.all(counts == m - n_keep)):
            text = f"{n_keep}:{m}"
    return Budget(groups, counts, kind="partition", pattern=text)


def check_masks(masks: Mapping[str, Any], shapes: Mapping[str, Any] | None = None, *, pattern: str | None = None,
                balanced: str | None = None, sparsity: float | None = None) -> None:
    """Verify written keep-masks ({name: bool mask, True = kept}) against a structured pattern.

    ``pattern="N:M"``: at most ``N`` kept in every group of ``M`` consecutive weights of each row (what the
    hardware needs; a weight that was already zero may make a group sparser). ``balanced="row"``: every
    row prunes the same number of weights — ``round(sparsity·L)`` when ``sparsity`` is given. ``shapes``
    ({name: shape}) gives the layout of flat masks; without it each mask's own shape is used. Raises
    :class:`InvalidArgumentError` naming the parameter, the row and the columns of the first violation.
    """
    if balanced is not None and sparsity is None and pattern is None:
        if balanced not in BALANCED:
            raise InvalidArgumentError(f"balanced must be one of {BALANCED}, got {balanced!r}")
        kind, s = "row", None  # only "the same count in every row"
    else:
        kind, _, s = _structure(pattern, balanced, sparsity, where="check_masks")
    if not isinstance(masks, Mapping) or not masks:
        raise InvalidArgumentError("masks must be a non-empty mapping {parameter name: bool keep-mask}")
    for name, mask in masks.items():
        shape = _param_shape(name, shapes) if shapes is not None else _param_shape(name, {name: _mask_shape(mask)})
        flat = _as_bool_flat(f"masks[{name!r}]", mask, int(np.prod(shape)))
        arr = flat.reshape(shape)
        try:
            if kind == "pattern":
                check_pattern_mask(arr, pattern, name=f"masks[{name!r}]")
            else:
                pruned = (~arr.reshape(shape[0], -1)).sum(axis=1)
                per_row = round(s * arr[0].size) if s is not None else int(pruned[0])
                check_row_mask(arr, per_row, name=f"masks[{name!r}]")
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"parameter {name!r}: {exc}") from None


def _mask_shape(mask) -> tuple[int, ...]:
    return tuple(mask.shape) if hasattr(mask, "shape") else np.asarray(mask).shape
