"""The embedded default and spec files: the solvers available here (:func:`default_solver_specs`,
:func:`engines_of`, :func:`probe_engine`), the digits default study, and :func:`study_from_dict`
for TOML study specs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .sources import digits_instances, file_instances, generated_instances, sliced_instances
from .spec import Instance, NetworkStudy, SolverSpec, Study, Tolerances, parse_solver_spec


def default_solver_specs(*, probe: bool = True) -> list[SolverSpec]:
    """Every backend available here, one spec per usable engine for backends with an ``engine`` option.

    ``probe`` solves a 6-weight problem with each engine first and leaves out those that fail here
    (a solver whose licence is missing, say). Engines in :data:`OPT_IN` are left out (too slow for a
    default); enumeration gets a ``max_p``.
    """
    from solvers import backends

    specs = []
    for name, info in backends().items():
        if not info.is_available():
            continue
        engines = [e for e in engines_of(name, probe=False) if (name, e) not in OPT_IN]
        if probe:
            engines = [e for e in engines if probe_engine(name, e) is None]
        if engines:
            specs += [SolverSpec(name, {"engine": e}, **_SLOW.get((name, e), {})) for e in engines]
        else:
            specs.append(SolverSpec(name, **_SLOW.get((name, None), {})))
    return specs


# Exhaustive enumeration: C(20, 10) ≈ 1.8e5 subsets take ~0.1 s, C(24, 12) ≈ 2.7e6 already seconds
# (and it refuses beyond 3e6); the MIQP carries the larger blocks.
_SLOW = {("enumerate", None): {"max_p": 20}}
# Left out of the default study (ask for them with SolverSpec / --solver miqp:engine=scip): SCIP on the
# MIQP needed more than 20 s for a 16-weight digits block at half sparsity (HiGHS B&B: 0.07 s), and it
# hung once inside a forked worker (Pyomo's output capture blocked on a pipe).
OPT_IN = {("miqp", "scip")}


def engines_of(name: str, *, probe: bool = False) -> list[str]:
    """Engines of backend ``name`` usable here: those registered (``solvers.engines``) whose modules are
    importable, the default first; ``probe`` also test-solves each one."""
    from solvers import engines

    found = [e.name for e in engines(name) if e.is_available()]
    if probe:
        found = [e for e in found if probe_engine(name, e) is None]
    return found


@functools.lru_cache(maxsize=None)
def probe_engine(name: str, engine: str) -> str | None:
    """``None`` when ``name`` with ``engine`` solves a tiny problem here, else the reason it cannot."""
    import contextlib as _cl
    import io

    import solvers

    from ..instances import random_problem

    try:
        with _cl.redirect_stdout(io.StringIO()), _silence_fd(1):  # engines print banners, some from C
            solvers.solve(random_problem(6, 4, 3, seed=0), name, engine=engine, time_limit=10)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    return None


@contextlib.contextmanager
def _silence_fd(fd: int):
    """Send what native code writes to file descriptor ``fd`` to /dev/null for the block."""
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor (embedded interpreters): nothing to silence
        yield
        return
    try:
        import sys
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # pragma: no cover
                pass
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _digits_model_only(hidden: int = 16, seed: int = 0):
    from ..digits import digits_model
    return digits_model(hidden=hidden, seed=seed)[0]


def _digits_train(seed: int = 0):
    from ..digits import digits_model
    return digits_model(seed=seed)[1].train


def _digits_evaluate(model, seed: int = 0) -> float:
    from ..digits import accuracy, digits_model
    data = digits_model(seed=seed)[1]
    return accuracy(model, data.x_test, data.y_test)


def digits_network_study(solvers: Sequence[SolverSpec], sparsities: Sequence[float] = (0.3, 0.5, 0.7, 0.8, 0.9),
                         *, block_size: int = 16, n_samples: int = 400, damping: float = 1e-4,
                         objective: str = "update", seed: int = 0,
                         time_limit: float | None = None) -> NetworkStudy:
    """Prune the embedded digits MLP with each solver at each sparsity; metric = test accuracy."""
    return NetworkStudy(name="digits", make_model=functools.partial(_digits_model_only, 16, seed),
                        data=functools.partial(_digits_train, seed), evaluate=functools.partial(_digits_evaluate, seed=seed),
                        solvers=list(solvers), sparsities=tuple(sparsities), seeds=(seed,), time_limit=time_limit,
                        prune_options={"blocks": block_size, "n_samples": n_samples, "damping": damping,
                                       "objective": objective, "allocation": "uniform"})


def default_study(*, quick: bool = False, time_limit: float | None = 20.0, seed: int = 0,
                  solvers: Sequence[SolverSpec] | None = None) -> Study:
    """The embedded default: Fisher blocks of the digits MLP, every available solver, plus a size
    ladder for timing and the accuracy of the whole pruned network.

    ``quick`` shrinks it to a smoke test (a few seconds).
    """
    specs = list(solvers) if solvers is not None else default_solver_specs()
    blocks = digits_instances(max_blocks=4 if quick else 12, seed=seed)
    rows = digits_instances(block_size=64, max_blocks=1, seed=seed)  # one whole fc1 row: 64 weights
    # Weights 16..48 of the row: the centre of the image (its border pixels are constant, their
    # Fisher columns zero), cut into a ladder of sizes for the time-vs-size plot.
    ladder = [dataclasses.replace(inst, family="digits-ladder")
              for inst in sliced_instances(rows[0], (8, 12) if quick else (8, 12, 16, 20, 24, 32), start=16)]
    sparsities = (0.5, 0.75) if quick else (0.25, 0.5, 0.75, 0.9)
    net_specs = [s for s in specs if s.solver != "miqp"] if not quick else \
        [s for s in specs if s.solver in ("magnitude", "obs", "greedy_swap", "enumerate")]
    network = digits_network_study(net_specs, (0.5, 0.8) if quick else (0.3, 0.5, 0.7, 0.8, 0.9), seed=seed)
    exact = ", ".join(s.name for s in specs if _is_exact(s.solver)) or "none available"
    description = (
        f"The embedded default. A 64-16-10 MLP trained on scikit-learn's 8x8 digits; its empirical Fisher "
        f"(N=400 training samples, damping 1e-4) cut into 16-weight blocks. Solver comparison: {len(blocks)} "
        f"blocks spread over both layers at sparsities {', '.join(f'{x:g}' for x in sparsities)}. Timing: a "
        f"ladder of {', '.join(str(i.problem.p) for i in ladder)} weights cut from the centre of one fc1 row. "
        f"Accuracy: the whole network ({len(net_specs)} solvers, every block at the same sparsity). "
        f"Exact references: {exact}.")
    return Study(instances=blocks + ladder, solvers=specs, sparsities=sparsities,
                 time_limits=(time_limit,), seeds=(seed,), network=network,
                 title="cbs-opt study: digits MLP" + (" (quick)" if quick else ""), description=description)


def _is_exact(name: str) -> bool:
    from solvers import backends
    info = backends().get(name)
    return bool(info and info.exact)


def study_from_dict(spec: Mapping[str, Any], *, base_dir: str | os.PathLike = ".") -> Study:
    """Build a :class:`Study` from a parsed TOML spec (see ``docs/study.md`` for the format)::

        [study]                       # settings (all optional)
        title = "my study"; sparsities = [0.5, 0.75]; objectives = ["update"]
        dampings = [1e-3]; time_limits = [10]; seeds = [0, 1]
        [[solvers]]                   # omit for every available backend
        name = "miqp"; options = { engine = "scip" }; label = "miqp[scip]"; max_p = 40
        [[instances]]                 # one table per source
        kind = "generated"; families = ["lowrank"]; sizes = [12, 16]; seeds = [0]; n_samples = 20
        [[instances]]
        kind = "file"; paths = ["block.npz"]
        [[instances]]
        kind = "digits"; block_size = 16; max_blocks = 6
        [network]                     # optional: prune the digits MLP whole, measure accuracy
        sparsities = [0.5, 0.8]; solvers = ["magnitude", "greedy_swap"]
    """
    if not isinstance(spec, Mapping):
        raise TypeError("a study spec must be a table/dict")
    unknown = set(spec) - {"study", "solvers", "instances", "network"}
    if unknown:
        raise ValueError(f"unknown top-level spec key(s): {', '.join(sorted(unknown))}")
    settings = dict(spec.get("study", {}))
    seed = int(settings.get("seed", 0))
    solver_specs = [_solver_from_spec(s) for s in spec.get("solvers", [])] or default_solver_specs()
    instances: list[Instance] = []
    for src in spec.get("instances", [{"kind": "digits"}]):
        instances += _instances_from_spec(dict(src), Path(base_dir), seed)
    network = None
    if "network" in spec:
        net = dict(spec["network"])
        net_solvers = [_solver_from_spec(s) for s in net.pop("solvers", [])] or \
            [s for s in solver_specs if s.solver != "miqp"]
        network = digits_network_study(net_solvers, tuple(net.pop("sparsities", (0.3, 0.5, 0.7, 0.8, 0.9))),
                                       seed=seed, **net)
    allowed = {"title", "sparsities", "objectives", "dampings", "time_limits", "seeds", "seed",
               "measure_memory", "rtol", "atol", "reported_rtol", "reported_rtol_float32"}
    extra = set(settings) - allowed
    if extra:
        raise ValueError(f"unknown [study] key(s): {', '.join(sorted(extra))}")
    tol = Tolerances(**{k: float(settings[k]) for k in ("rtol", "atol", "reported_rtol", "reported_rtol_float32")
                        if k in settings})
    kwargs = {k: tuple(settings[k]) for k in ("sparsities", "objectives", "dampings", "time_limits", "seeds")
              if k in settings}
    return Study(instances=instances, solvers=solver_specs, tolerances=tol, network=network,
                 measure_memory=bool(settings.get("measure_memory", True)),
                 title=str(settings.get("title", "cbs-opt study")), **kwargs)


def _solver_from_spec(entry: Any) -> SolverSpec:
    if isinstance(entry, str):
        return parse_solver_spec(entry)
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ValueError(f"a [[solvers]] entry needs a name, got {entry!r}")
    extra = set(entry) - {"name", "options", "label", "max_p"}
    if extra:
        raise ValueError(f"unknown [[solvers]] key(s): {', '.join(sorted(extra))}")
    return SolverSpec(str(entry["name"]), dict(entry.get("options", {})), entry.get("label"), entry.get("max_p"))


def _instances_from_spec(src: dict, base_dir: Path, seed: int) -> list[Instance]:
    kind = src.pop("kind", None)
    if kind == "generated":
        return generated_instances(**src)
    if kind == "file":
        paths = src.pop("paths", None)
        if not paths or src:
            raise ValueError("a kind='file' instance source needs paths = [...] and nothing else")
        return file_instances([p if Path(p).is_absolute() else base_dir / p for p in paths])
    if kind == "digits":
        src.setdefault("seed", seed)
        return digits_instances(**src)
    raise ValueError(f"instance source kind must be 'generated', 'file' or 'digits', got {kind!r}")
