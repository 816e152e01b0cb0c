"""The curvature ``F`` as a torch operator on CPU or CUDA, for the large-scale searches.

Two forms, one interface (:class:`TorchCurvature`):

* low rank — ``F = AᵀA + λI`` with ``A = G/√N``. ``F`` is never formed; ``A`` is stored transposed,
  ``At = Aᵀ`` of shape ``(p, N)``, so that gathering the columns ``A[:, X]`` of a few weights is a
  contiguous row gather ``At[X]``.
* dense — a given ``F = H + λI`` (``p × p``), for problems built from a dense hessian.

Precision: the big array (``At`` or ``H``) is stored in ``dtype`` (float32 halves memory and time);
everything that decides or reports something is accumulated in float64 — small blocks
``F[X][:, Y]`` and the products that feed them are computed from float64 up-casts of the gathered
rows, and :class:`FsTracker` keeps ``A s`` (or ``F s``) in float64. Only full sweeps over all ``p``
weights (used for orderings) run in the storage dtype. Temporaries are bounded by processing rows
in chunks of ``chunk_rows``.

Main names: :func:`resolve_device`, :func:`resolve_dtype`, :class:`TorchCurvature`
(``from_problem``, ``matvec``, ``diagonal``, ``block``, ``rows``, ``column``, ``quad``, ``tracker``)
and :class:`FsTracker` (``values``, ``full``, ``add``, ``quad``, ``refresh``).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["TorchCurvature", "FsTracker", "resolve_device", "resolve_dtype", "DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Bound on the bytes of one float64 temporary when sweeping rows in chunks: cache-sized on CPU,
# larger on GPUs (fewer kernel launches).
CHUNK_BYTES = 64 * 2 ** 20
CPU_CHUNK_BYTES = 4 * 2 ** 20



def resolve_device(device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA when available) or a ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', or a torch.device; "
                        f"got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine "
                             "(torch.cuda.is_available() is False); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return dev


def resolve_dtype(dtype) -> torch.dtype:
    """``"float32"`` / ``"float64"`` (or the torch dtypes) → the storage dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def _as_index(idx, device) -> torch.Tensor:
    if isinstance(idx, torch.Tensor):
        return idx.to(device=device, dtype=torch.long)
    return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=device)


class TorchCurvature:
    """``F`` on a torch device: low rank (``At = Aᵀ``, ``λ``) or dense (``H`` with ``λ`` folded in).

    Build it with :meth:`from_problem`. All results are float64 tensors on :attr:`device`.
    """

    def __init__(self, *, At: torch.Tensor | None = None, H: torch.Tensor | None = None,
                 damping: float = 0.0, chunk_rows: int | None = None):
        if (At is None) == (H is None):
            raise ValueError("give exactly one of At (low rank) or H (dense)")
        self.At, self.H = At, H
        big = At if At is not None else H
        self.p = int(big.shape[0])
        self.n_samples = int(At.shape[1]) if At is not None else None
        self.damping = float(damping)
        self.device, self.dtype = big.device, big.dtype
        width = max(1, big.shape[1])
        budget = CPU_CHUNK_BYTES if self.device.type == "cpu" else CHUNK_BYTES
        self.chunk_rows = int(chunk_rows) if chunk_rows else max(1, budget // (8 * width))
        self._diag: torch.Tensor | None = None

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_problem(cls, problem, device="cpu", dtype="float32", *, cache: bool = True,
                     chunk_rows: int | None = None) -> "TorchCurvature":
        """The operator of ``problem.curvature`` on ``device`` in storage ``dtype``.

        With ``cache=True`` the big tensor comes from ``problem.curvature.torch_view(...)``, which the
        curvature object caches per (device, dtype, layout): repeated solves of the same problem, its
        ``with_objective``/``with_budget`` variants and every problem sharing the curvature (the rows of a
        layer) convert it once. ``cache=False`` converts a private copy.
        """
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        curv = problem.curvature
        view = getattr(curv, "torch_view", None) if cache else None
        with warnings.catch_warnings():  # the problem's arrays are read-only; they are only read here
            warnings.simplefilter("ignore", UserWarning)
            if curv.is_low_rank:
                if view is not None:
                    At = view(dev, dt, transposed=True)
                else:
                    A_t = torch.from_numpy(curv.A).T                  # (p, N) strided view of A = G/√N
                    At = torch.empty(A_t.shape, dtype=dt, device=dev)
                    step = max(1, CHUNK_BYTES // (8 * max(1, A_t.shape[1])))
                    for lo in range(0, A_t.shape[0], step):           # chunked transpose-cast-copy
                        At[lo:lo + step] = A_t[lo:lo + step].to(device=dev, dtype=dt)
                op = cls(At=At, damping=curv.damping, chunk_rows=chunk_rows)
            else:
                H = view(dev, dt) if view is not None else torch.from_numpy(curv.dense()).to(device=dev, dtype=dt)
                op = cls(H=H, damping=curv.damping, chunk_rows=chunk_rows)
            # diag(F) in float64 from the problem's own float64 arrays
            op._diag = torch.from_numpy(np.asarray(curv.diagonal(), dtype=np.float64)).to(dev)
        return op

    @property
    def is_low_rank(self) -> bool:
        return self.At is not None

    def _vec(self, v) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            v = torch.tensor(np.asarray(v, dtype=np.float64))
        return v.to(device=self.device, dtype=torch.float64)

    # -- rows, columns, blocks (float64) ------------------------------------------------------------
    def rows(self, idx) -> torch.Tensor:
        """Low rank: ``A[:, idx]ᵀ`` as float64 ``(|idx|, N)``; dense: ``H[idx]`` as ``(|idx|, p)``."""
        idx = _as_index(idx, self.device)
        big = self.At if self.is_low_rank else self.H
        return big.index_select(0, idx).to(torch.float64)

    def block(self, rows, cols) -> torch.Tensor:
        """The dense sub-matrix ``F[rows][:, cols]`` (float64)."""
        rows, cols = _as_index(rows, self.device), _as_index(cols, self.device)
        if self.is_low_rank:
            out = self.rows(rows) @ self.rows(cols).T
            if self.damping:
                out = out + self.damping * (rows[:, None] == cols[None, :]).to(torch.float64)
            return out
        return self.H.index_select(0, rows).index_select(1, cols).to(torch.float64)

    def diagonal(self) -> torch.Tensor:
        """``diag(F)`` (float64, computed once in chunks)."""
        if self._diag is None:
            out = torch.empty(self.p, dtype=torch.float64, device=self.device)
            for lo in range(0, self.p, self.chunk_rows):
                hi = min(self.p, lo + self.chunk_rows)
                if self.is_low_rank:
                    chunk = self.At[lo:hi].to(torch.float64)
                    out[lo:hi] = (chunk * chunk).sum(1) + self.damping
                else:
                    out[lo:hi] = torch.diagonal(self.H[lo:hi, lo:hi]).to(torch.float64)
            self._diag = out
        return self._diag

    def column(self, j: int, rows=None) -> torch.Tensor:
        """``F[:, j]`` (or ``F[rows, j]``) as float64; one sweep in the storage dtype.

        With ``rows`` covering less than a third of the weights only those rows are read.
        """
        j = int(j)
        if rows is not None:
            rows = _as_index(rows, self.device)
            if 3 * rows.numel() >= self.p:
                return self.column(j)[rows]
            big = self.At if self.is_low_rank else self.H
            out = (big.index_select(0, rows) @ big[j]).to(torch.float64) if self.is_low_rank \
                else big.index_select(0, rows)[:, j].to(torch.float64)
            if self.is_low_rank and self.damping:
                out = out + self.damping * (rows == j).to(torch.float64)
            return out
        if self.is_low_rank:
            out = (self.At @ self.At[j]).to(torch.float64)
            out[j] += self.damping
            return out
        return self.H[:, j].to(torch.float64)

    # -- products ---------------------------------------------------------------------------------------
    def sketch(self, v) -> torch.Tensor:
        """Low rank only: ``A v`` (``(N,)`` or ``(N, k)``), float64, accumulated over row chunks."""
        if not self.is_low_rank:
            raise TypeError("sketch() needs the low-rank form")
        v = self._vec(v)
        out = torch.zeros((self.n_samples,) + tuple(v.shape[1:]), dtype=torch.float64, device=self.device)
        for lo in range(0, self.p, self.chunk_rows):
            hi = min(self.p, lo + self.chunk_rows)
            out += self.At[lo:hi].to(torch.float64).T @ v[lo:hi]
        return out

    def unsketch(self, u, precise: bool = False) -> torch.Tensor:
        """Low rank only: ``Aᵀ u`` for ``u`` of shape ``(N,)`` or ``(N, k)``, float64.

        ``precise=False`` multiplies in the storage dtype (one fast sweep; fine for orderings),
        ``precise=True`` up-casts row chunks to float64.
        """
        if not self.is_low_rank:
            raise TypeError("unsketch() needs the low-rank form")
        u = self._vec(u)
        if not precise:
            return (self.At @ u.to(self.dtype)).to(torch.float64)
        out = torch.empty((self.p,) + tuple(u.shape[1:]), dtype=torch.float64, device=self.device)
        for lo in range(0, self.p, self.chunk_rows):
            hi = min(self.p, lo + self.chunk_rows)
            out[lo:hi] = self.At[lo:hi].to(torch.float64) @ u
        return out

    def matvec(self, v, precise: bool = True) -> torch.Tensor:
        """``F v`` for ``v`` of shape ``(p,)`` or ``(p, k)`` (float64)."""
        v = self._vec(v)
        if self.is_low_rank:
            return self.unsketch(self.sketch(v), precise=precise) + self.damping * v
        if not precise:
            return (self.H @ v.to(self.dtype)).to(torch.float64)
        out = torch.empty_like(v)
        for lo in range(0, self.p, self.chunk_rows):
            hi = min(self.p, lo + self.chunk_rows)
            out[lo:hi] = self.H[lo:hi].to(torch.float64) @ v
        return out

    def quad(self, d) -> float:
        """``dᵀ F d`` (float64)."""
        d = self._vec(d)
        if self.is_low_rank:
            ad = self.sketch(d)
            return float(ad @ ad + self.damping * (d @ d))
        return float(d @ self.matvec(d))

    def tracker(self, s) -> "FsTracker":
        """An :class:`FsTracker` for the vector ``s``."""
        return FsTracker(self, s)


class FsTracker:
    """Keeps ``F s`` available while ``s`` changes in a few entries at a time.

    Low rank: stores ``u = A s`` (float64, ``N``); ``(F s)_X = A_Xᵀ u + λ s_X`` costs ``O(N|X|)`` and
    a change of ``k`` entries of ``s`` is a rank-``k`` update of ``u`` (``O(Nk)``).
    Dense: stores ``F s`` itself (float64, ``p``), updated by ``F[:, idx] δ`` (``O(pk)``).
    Neither is ever recomputed from scratch except by :meth:`refresh`.
    """

    def __init__(self, op: TorchCurvature, s):
        self.op = op
        self.s = op._vec(s).clone()
        self.refresh()

    def refresh(self) -> None:
        """Recompute the stored product from ``s`` (to discard accumulated rounding)."""
        if self.op.is_low_rank:
            self.u = self.op.sketch(self.s)
            self.fs = None
        else:
            self.u = None
            self.fs = self.op.matvec(self.s, precise=True)

    def values(self, idx) -> torch.Tensor:
        """``(F s)[idx]`` (float64)."""
        idx = _as_index(idx, self.op.device)
        if self.op.is_low_rank:
            return self.op.rows(idx) @ self.u + self.op.damping * self.s[idx]
        return self.fs[idx]

    def full(self, precise: bool = False) -> torch.Tensor:
        """``F s`` for all weights (float64; low rank: a sweep in the storage dtype unless ``precise``)."""
        if self.op.is_low_rank:
            return self.op.unsketch(self.u, precise=precise) + self.op.damping * self.s
        return self.fs.clone()

    def add(self, idx, delta) -> None:
        """``s[idx] += delta`` (distinct ``idx``) and the matching update of the stored product."""
        idx = _as_index(idx, self.op.device)
        if idx.numel() == 0:
            return
        delta = self.op._vec(delta)
        self.s[idx] += delta
        if self.op.is_low_rank:
            self.u += self.op.rows(idx).T @ delta
        else:  # F symmetric: F[:, idx] = F[idx]ᵀ, a contiguous row gather
            self.fs += self.op.rows(idx).T @ delta

    def quad(self) -> float:
        """``sᵀ F s`` (float64)."""
        if self.op.is_low_rank:
            return float(self.u @ self.u + self.op.damping * (self.s @ self.s))
        return float(self.s @ self.fs)
