"""The notebooks in ``notebooks/`` are executed top to bottom, so they never rot."""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is part of the test extra")
nbclient = pytest.importorskip("nbclient", reason="nbclient is part of the test extra")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# What a correct run must print (beyond raising nothing).
EXPECTED = {
    "prune_in_10_lines.ipynb": ["test accuracy: dense", "available here:"],
    "exact_vs_greedy_small_net.ipynb": ["validation: passed", "sparsity 0.8:"],
}


def _kernel_name() -> str:
    """The kernel of this interpreter (ipykernel installed next to it), so the notebook sees this env."""
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
    return NATIVE_KERNEL_NAME


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, tmp_path, monkeypatch):
    # One BLAS/OpenMP thread in the kernel: the test suite already runs in parallel (-n 2), and tiny
    # solves on many threads of a busy machine are 10x slower. The notebook itself sets nothing.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(book, timeout=300, kernel_name=_kernel_name(),
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            elif out.get("output_type") == "error":  # pragma: no cover - execute() raises first
                pytest.fail(f"{name}: {out['ename']}: {out['evalue']}")
    printed = "".join(text)
    for fragment in EXPECTED[name]:
        assert fragment in printed, f"{name} did not print {fragment!r}"
