"""The ``cbs-opt`` command.

    cbs-opt study --out report                 # the embedded default: digits MLP, every solver, report + plots
    cbs-opt study --spec study.toml --jobs 8   # a study from a TOML spec
    cbs-opt solve block.npz --solver miqp --time-limit 60
    cbs-opt prune --model digits --sparsity 0.8 --out pruned/
    cbs-opt prune --model mlpnet --checkpoint mlpnet.pt --data mnist/ --sparsity 0.9 --blocks row
    cbs-opt solvers

Exit status: 0 success; 1 the study ran but a cross-check failed or a run raised; 2 bad input
(reported as one line ``cbs-opt: error: …``; ``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "UserError", "MODELS"]

PROG = "cbs-opt"


class UserError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``cbs-opt: error: …``) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------------------
def _float_in(accept, message: str):
    """An argparse type: a finite float for which ``accept(value)`` holds, else "<message>, got …"."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}") from None
        if not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
        return value
    return parse


_positive_float = _float_in(lambda v: v > 0, "expected a positive number")
_nonneg_float = _float_in(lambda v: v >= 0, "expected a non-negative number")
_sparsity = _float_in(lambda v: 0.0 <= v <= 1.0, "sparsity must be in [0, 1] (a fraction of the weights)")


def _int_at_least(minimum: int, message: str):
    """An argparse type: an integer ``>= minimum``, else "<message>, got …"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
        return value
    return parse


_nonneg_int = _int_at_least(0, "expected an integer >= 0")
_positive_int = _int_at_least(1, "expected a positive integer")


def _options(items: Sequence[str] | None) -> dict[str, Any]:
    from .study.spec import _parse_value

    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--option expects key=value, got {item!r}")
        out[key.strip()] = _parse_value(value)
    return out


def _blocks(text: str):
    if text in ("model", "layer", "row"):
        return text
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks must be model, layer, row or a chunk size, got {text!r}") \
            from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"--blocks chunk size must be positive, got {size}")
    return size


def _add_parallel_arguments(parser, jobs_help: str) -> None:
    """``--jobs N`` (a local process pool) or ``--scheduler ADDRESS`` (a Dask cluster), not both."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--jobs", "-j", type=_positive_int, default=None, help=jobs_help)
    group.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="run on a Dask cluster (e.g. tcp://127.0.0.1:8786; needs pip install 'cbs-opt[dask]')")


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _percent(value: float) -> str:
    return "n/a (no test data)" if math.isnan(value) else f"{100 * value:.2f}%"


def _say(args, text: str = "") -> None:
    if not getattr(args, "quiet", False):
        print(text)


# ---------------------------------------------------------------------------------------------
# Models the `prune` subcommand knows (architecture + data loader + metric)
# ---------------------------------------------------------------------------------------------
def _default_data_dir() -> Path:
    """``$CBS_OPT_DATA`` or ``<repo root>/../shared/data`` (the reference data of a checkout)."""
    env = os.environ.get("CBS_OPT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _digits_setup(checkpoint: Path | None, data_dir: Path | None, seed: int):
    from .digits import DigitsMLP, digits_model

    model, data = digits_model(seed=seed)
    if checkpoint is not None:
        state = _load_state(checkpoint)
        hidden = state.get("fc1.weight").shape[0] if "fc1.weight" in state else 16
        model = DigitsMLP(int(hidden))
        _load_into(model, state, checkpoint)
    return model, data.train, data.test


def _mlpnet_setup(checkpoint: Path | None, data_dir: Path | None, seed: int):
    if checkpoint is None:
        raise UserError("--model mlpnet needs --checkpoint (a state dict .pt of the 784-40-20-10 MLPNet)")
    from .mnist import MLPNet, load_mnist

    model = MLPNet()
    _load_into(model, _load_state(checkpoint), checkpoint)
    directory = data_dir or _default_data_dir() / "mnist"
    if not directory.exists():
        raise FileNotFoundError(f"MNIST data directory not found: {directory} (pass --data or set CBS_OPT_DATA)")
    return model.eval(), load_mnist(directory, "train"), load_mnist(directory, "test")


MODELS = {
    "digits": ("64-16-10 MLP on scikit-learn's 8x8 digits (built in; trained on the fly without --checkpoint)",
               _digits_setup),
    "mlpnet": ("784-40-20-10 MLPNet on MNIST IDX files (--checkpoint required, --data: the IDX folder)",
               _mlpnet_setup),
}


def _import_object(spec: str, what: str):
    """``package.module:name`` or ``path/to/file.py:name`` → the object (a function, usually).

    The current directory is importable, as for ``python -m``; nothing is ever unpickled.
    """
    import importlib
    import importlib.util

    target, colon, attr = spec.rpartition(":")
    if not colon or not target or not attr.isidentifier():
        raise UserError(f"{what} must look like package.module:function or file.py:function, got {spec!r}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise UserError(f"{what}: file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise UserError(f"{what}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UserError(f"{what}: cannot import module {target!r} ({exc})") from None
    if not hasattr(module, attr):
        raise UserError(f"{what}: module {target!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _factory_setup(model_spec: str, data_spec: str | None, checkpoint: Path | None):
    """A user's architecture from ``--model pkg.mod:make_model`` (called with no arguments), its weights
    from a ``--checkpoint`` state dict, and its data from ``--data pkg.mod:make_data``.

    ``make_data()`` returns the training data (a DataLoader or an ``(inputs, targets)`` pair) or a dict
    ``{"train": ..., "test": ...}``; with test data the report shows the accuracy before and after.
    """
    import torch

    make_model = _import_object(model_spec, "--model")
    if not callable(make_model):
        raise UserError(f"--model {model_spec!r} is not callable")
    model = make_model()
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"--model {model_spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        _load_into(model, _load_state(checkpoint), checkpoint)
    if data_spec is None:
        raise UserError("a --model factory needs --data package.module:make_data (its calibration data)")
    make_data = _import_object(data_spec, "--data")
    data = make_data() if callable(make_data) else make_data
    test = None
    if isinstance(data, dict):
        if "train" not in data:
            raise UserError(f"--data {data_spec!r} returned a dict without a 'train' entry")
        data, test = data["train"], data.get("test")
    return model.eval(), data, test


def _load_state(path: Path) -> dict:
    import torch

    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is not a state dict")
    return state


def _load_into(model, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise UserError(f"checkpoint {path} does not fit the architecture: {first}") from None


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
def _solver_specs(args):
    from .study import parse_solver_spec

    return [parse_solver_spec(s) for s in args.solver] if args.solver else None


def cmd_study(args) -> int:
    from . import study as st
    from .report import accuracy_table, failure_lines, markdown_table, solver_summary, write_report

    specs = _solver_specs(args)
    if args.spec:
        import tomllib

        path = Path(args.spec)
        if not path.exists():
            raise FileNotFoundError(f"study spec not found: {path}")
        try:
            spec = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path} is not valid TOML: {exc}") from None
        study = st.study_from_dict(spec, base_dir=path.parent)
        if specs:
            study.solvers = specs
    elif args.family or args.problem:
        instances = []
        if args.family:
            instances += st.generated_instances(args.family, args.size or (12,), args.n_samples,
                                                seeds=args.instance_seed or (0,), damping=args.damping or 1e-3)
        if args.problem:
            instances += st.file_instances(args.problem)
        study = st.Study(instances, specs or st.default_solver_specs(), title="cbs-opt study")
    else:
        _say(args, "Embedded default study: Fisher blocks of a 64-16-10 MLP trained on scikit-learn's digits.")
        study = st.default_study(quick=args.quick, seed=args.seed or 0, solvers=specs,
                                 time_limit=args.time_limit or 20.0)
        if args.no_network:
            study.network = None
    if args.sparsity:
        study.sparsities = tuple(args.sparsity)
    if args.objective:
        study.objectives = tuple(args.objective)
    if args.time_limit is not None:
        study.time_limits = (args.time_limit,)
        if study.network is not None:
            study.network.time_limit = args.time_limit
    if args.seed is not None:
        study.seeds = (args.seed,)
    if args.no_memory:
        study.measure_memory = False
    if args.no_network:
        study.network = None

    if args.scheduler:  # a Dask cluster runs the cells; the client is closed when the study ends
        from .executors import executor_scope
        with executor_scope(scheduler=args.scheduler) as client:
            result = st.run_study(study, executor=client, progress=_progress(args))
    else:
        result = st.run_study(study, jobs=args.jobs, progress=_progress(args))
    _say(args, markdown_table(*solver_summary(result.records)))
    if result.network:
        _say(args)
        _say(args, markdown_table(*accuracy_table(result.network)))
    if args.out:
        command = "cbs-opt " + " ".join(args.argv)
        paths = write_report(result, args.out, command=command)
        _say(args, f"\nwrote {', '.join(sorted(p.name for p in paths.values()))} to {args.out}/")
    if not result.ok:
        for line in failure_lines(result)[:20]:
            print(f"  {line}", file=sys.stderr)
        print(f"{PROG}: error: study failed validation: {len(result.failed_checks)} failed cross-check(s), "
              f"{len(result.errors)} failed run(s)" + (f" (see {args.out}/report.md)" if args.out else ""),
              file=sys.stderr)
        return 1
    _say(args, f"validation passed: {len(result.records)} runs cross-checked in {result.meta['seconds']:.1f} s")
    return 0


def cmd_solve(args) -> int:
    import numpy as np
    import solvers

    from .problem import Problem
    from .study import Tolerances
    from .study.runner import _precision

    path = Path(args.problem)
    problem = Problem.load(path)
    if args.objective:
        problem = problem.with_objective(args.objective)
    if args.n_prune is not None and args.sparsity is not None:
        raise UserError("give --n-prune or --sparsity, not both")
    if args.sparsity is not None:
        problem = problem.with_n_prune(int(round(args.sparsity * problem.p)))
    elif args.n_prune is not None:
        if not 0 <= args.n_prune <= problem.p:
            raise UserError(f"--n-prune must be in [0, {problem.p}] for this problem (p={problem.p}), "
                            f"got {args.n_prune}")
        problem = problem.with_n_prune(args.n_prune)
    _say(args, f"{path.name}: {problem!r}")
    options = _options(args.option)
    solvers.registry.check_options(args.solver, options)  # a run setting as --option: one clear line, exit 2
    sol = solvers.solve(problem, args.solver, time_limit=args.time_limit, seed=args.seed or 0,
                        progress=_progress(args), **options)
    print(sol.summary())
    reported = sol.info.get("reported_objective")
    tol = Tolerances()
    rtol = tol.reported_rtol_float32 if _precision(sol) == "float32" else tol.reported_rtol
    if reported is not None and tol.differ(reported, sol.objective, rtol):
        print(f"{PROG}: error: solver {args.solver!r} reported objective {reported:.10g} but the pruned set "
              f"costs {sol.objective:.10g}", file=sys.stderr)
        return 1
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, pruned=sol.pruned, mask=sol.mask, weights=sol.weights,
                            objective=np.float64(sol.objective), status=np.str_(sol.status.value),
                            solver=np.str_(sol.solver))
        _say(args, f"wrote {out}")
    if sol.status == "interrupted":  # Ctrl-C: the incumbent and bound are printed (and written) above
        print(f"{PROG}: error: interrupted; reported the best incumbent found so far", file=sys.stderr)
        return 130
    return 0


def cmd_prune(args) -> int:
    import torch

    from .prune import prune

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if ":" in args.model:
        model, train, test = _factory_setup(args.model, args.data, checkpoint)
    elif args.model in MODELS:
        setup = MODELS[args.model][1]
        model, train, test = setup(checkpoint, Path(args.data) if args.data else None, args.seed or 0)
    else:
        raise UserError(f"unknown --model {args.model!r}; known: {', '.join(MODELS)}, "
                        "or package.module:make_model for your own architecture")

    def accuracy(net) -> float:
        """Top-1 accuracy on the test data (nan without test data); the model's mode is left as it was."""
        if test is None:
            return float("nan")
        batches = [test] if isinstance(test, (tuple, list)) and len(test) == 2 \
            and all(isinstance(t, torch.Tensor) for t in test) else test
        was_training, correct, count = net.training, 0, 0
        net.eval()
        try:
            with torch.no_grad():
                for x, y in batches:
                    correct += int((net(x).argmax(1) == y).sum())
                    count += int(y.shape[0])
        finally:
            net.train(was_training)
        return correct / max(1, count)

    dense = accuracy(model)
    options = _options(args.option)
    start = time.perf_counter()
    # Settings left unset on the command line keep prune()'s own (measured) defaults.
    chosen = {k: v for k, v in (("damping", args.damping), ("blocks", args.blocks), ("solver", args.solver),
                                ("n_samples", args.n_samples)) if v is not None}
    if args.sparsity is None and args.pattern is None:
        raise UserError("give --sparsity S (a fraction of the weights) or --pattern N:M")
    chosen.update({k: v for k, v in (("pattern", args.pattern), ("jobs", args.jobs), ("scheduler", args.scheduler),
                                     ("refits", args.refits)) if v is not None})
    if args.curvature != "fisher":
        chosen["curvature"] = args.curvature
    result = prune(model, train, args.sparsity, objective=args.objective, seed=args.seed or 0, stages=args.stages, solver_options=options,
                   progress=_progress(args), time_limit=args.time_limit, loss=args.loss, **chosen)
    seconds = time.perf_counter() - start
    pruned_acc = accuracy(result.model)

    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    masks = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(v))
             for k, v in result.masks.items()}
    total = sum(int(m.numel()) for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    solutions = list(result.solutions.values()) if isinstance(result.solutions, dict) else list(result.solutions)
    objective = sum(s.objective for s in solutions)
    used_solver = solutions[0].solver if solutions else (args.solver or "default")
    lines = [f"# Pruned {args.model}", "",
             f"Command: `cbs-opt {' '.join(args.argv)}`", "",
             "| quantity | value |", "| --- | --- |",
             f"| solver | {used_solver} |", f"| objective | {args.objective} |",
             f"| blocks | {args.blocks} ({len(solutions)} solved) |",
             f"| sparsity | {1 - kept / total:.4f} ({total - kept:,} of {total:,} weights pruned) |",
             f"| total model objective | {objective:.6g} |",
             f"| test accuracy | {_percent(dense)} dense → {_percent(pruned_acc)} pruned |",
             f"| seconds | {seconds:.2f} |", "",
             "| parameter | weights | kept | sparsity |", "| --- | --- | --- | --- |"]
    for name, m in masks.items():
        lines.append(f"| {name} | {m.numel():,} | {int(m.sum()):,} | {1 - float(m.float().mean()):.4f} |")
    report = "\n".join(lines) + "\n"
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, out / "pruned.pt")
        torch.save(masks, out / "masks.pt")
        (out / "prune_report.md").write_text(report)
        (out / "prune_summary.json").write_text(json.dumps(
            {"model": args.model, "solver": used_solver, "sparsity": 1 - kept / total,
             "dense_accuracy": None if math.isnan(dense) else dense,
             "pruned_accuracy": None if math.isnan(pruned_acc) else pruned_acc, "objective": objective,
             "blocks": len(solutions), "seconds": seconds}, indent=1))
    if not args.quiet:
        print(report)
        if args.out:
            print(f"wrote pruned.pt, masks.pt, prune_report.md, prune_summary.json to {args.out}/")
    else:
        print(f"{args.model}: sparsity {1 - kept / total:.4f}, accuracy {_percent(dense)} -> {_percent(pruned_acc)}")
    return 0


def cmd_solvers(args) -> int:
    from solvers import backends

    from .study import engines_of, probe_engine

    rows = []
    for name, info in backends().items():
        ok = info.is_available()
        engines = []
        if ok:
            for engine in _all_engines(name):
                reason = probe_engine(name, engine) if engine in engines_of(name) else "not installed"
                engines.append({"engine": engine, "available": reason is None, "reason": reason or "",
                                "install": _engine_hint(name, engine)})
        rows.append({"name": name, "available": ok, "exact": info.exact, "kind": info.kind,
                     "description": info.description,
                     "engines": engines, "options": info.options(),
                     "install": "" if ok else (info.install_hint or f"needs {', '.join(info.requires)}")})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'solver':<{width}}  {'available':<9}  {'kind':<9}  engines (usable here)")
    for r in rows:
        usable = ", ".join(e["engine"] for e in r["engines"] if e["available"]) or "-"
        print(f"{r['name']:<{width}}  {'yes' if r['available'] else 'no':<9}  "
              f"{r['kind']:<9}  {usable}")
        print(f"{'':<{width}}    {r['description']}")
        if r["install"]:
            print(f"{'':<{width}}    install: {r['install']}")
        for e in r["engines"]:
            if not e["available"]:
                print(f"{'':<{width}}    engine {e['engine']} unusable here ({e['reason']})"
                      + (f"; install: {e['install']}" if e["install"] else ""))
    return 0


def _all_engines(name: str) -> list[str]:
    """Every engine registered for a backend (``solvers.engines``), usable here or not, the default first."""
    from solvers import engines

    return [e.name for e in engines(name)]


def _engine_hint(name: str, engine: str) -> str:
    from solvers import engines

    return next((e.install_hint for e in engines(name) if e.name == engine), "")


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Combinatorial Brain Surgeon pruning: studies, solves, pruning.",
                     epilog="Exit status: 0 ok, 1 validation failure, 2 bad input.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    common.add_argument("--time-limit", type=_positive_float, default=None, metavar="S",
                        help="seconds per solve (best incumbent and an honest status when reached)")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or tables")

    p = sub.add_parser("study", parents=[common], help="run a solver-comparison / validation study",
                       description="Run every solver on every instance at every setting, cross-check the "
                                   "results and write a report. Without --spec/--family/--problem: the "
                                   "embedded default (Fisher blocks of a small MLP on scikit-learn's digits).")
    p.add_argument("--spec", metavar="FILE.toml", help="study spec (see docs/study.md)")
    p.add_argument("--out", metavar="DIR", help="write report.md, report.html, records.csv/json and PNG plots")
    _add_parallel_arguments(p, "worker processes (default: CPU count; 1 = run in this process)")
    p.add_argument("--solver", action="append", metavar="NAME[:k=v,...]",
                   help="a solver to include, with options (repeatable; default: every available one)")
    p.add_argument("--sparsity", action="append", type=_sparsity, metavar="S", help="sparsity (repeatable)")
    p.add_argument("--objective", action="append", choices=("update", "selection"),
                   help="objective kind (repeatable; default update)")
    p.add_argument("--family", action="append", metavar="NAME",
                   help="generated instance family instead of the default (lowrank, cancelling, identity, "
                        "duplicates; repeatable)")
    p.add_argument("--size", action="append", type=_positive_int, metavar="P", help="generated block size")
    p.add_argument("--n-samples", type=_positive_int, default=None, metavar="N",
                   help="gradient rows of generated instances")
    p.add_argument("--instance-seed", action="append", type=int, metavar="S", help="generation seed")
    p.add_argument("--damping", type=_nonneg_float, default=None, help="damping of generated instances")
    p.add_argument("--problem", action="append", metavar="FILE.npz", help="saved problem (repeatable)")
    p.add_argument("--quick", action="store_true", help="a smaller default study (seconds)")
    p.add_argument("--no-network", action="store_true", help="skip the whole-network accuracy part")
    p.add_argument("--no-memory", action="store_true", help="do not trace peak memory (faster pure-Python runs)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("solve", parents=[common], help="solve one saved problem with one solver",
                       description="Load a problem written by Problem.save (.npz), solve it, print the Solution.")
    p.add_argument("problem", metavar="FILE.npz")
    p.add_argument("--solver", default="greedy_swap", help="backend name (see 'cbs-opt solvers')")
    p.add_argument("--objective", choices=("update", "selection"), help="override the file's objective kind")
    p.add_argument("--n-prune", type=int, default=None, metavar="M", help="override the budget m")
    p.add_argument("--sparsity", type=_sparsity, default=None, help="override the budget as a fraction")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend option (repeatable)")
    p.add_argument("--out", metavar="FILE.npz", help="save the solution (pruned, mask, weights)")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("prune", parents=[common], help="prune a checkpoint and write the pruned one",
                       description="Prune a model checkpoint to a sparsity with a solver; write the pruned "
                                   "state dict, the masks and a report. Models: "
                                   + "; ".join(f"{k}: {v[0]}" for k, v in MODELS.items()))
    p.add_argument("--model", default="digits", metavar="digits|mlpnet|MODULE:FACTORY",
                   help="architecture: digits (default), mlpnet, or your own as package.module:make_model "
                        "(or file.py:make_model), called with no arguments")
    p.add_argument("--checkpoint", metavar="FILE.pt", help="state dict to prune (loaded with weights_only=True)")
    p.add_argument("--data", metavar="DIR|MODULE:FACTORY",
                   help="mlpnet: the MNIST IDX folder (default $CBS_OPT_DATA/mnist); with a --model factory: "
                        "package.module:make_data returning the training data or {'train': ..., 'test': ...}")
    p.add_argument("--loss", default="cross_entropy", choices=("cross_entropy", "nll", "mse"),
                   help="loss of the Fisher (default cross_entropy on logits)")
    p.add_argument("--sparsity", type=_sparsity, default=None, help="fraction of weights to prune")
    p.add_argument("--solver", default=None, help="backend name (default: prune()'s default)")
    p.add_argument("--objective", choices=("update", "selection"), default="update")
    p.add_argument("--blocks", type=_blocks, default=None, metavar="model|layer|row|K",
                   help="Fisher blocks (default: 16-weight chunks for digits, rows for mlpnet)")
    p.add_argument("--n-samples", type=_positive_int, default=None, metavar="N",
                   help="Fisher samples (default: prune()'s default)")
    p.add_argument("--damping", type=_nonneg_float, default=None, help="Fisher damping (default 1e-4 "
                                                                         "digits, 1e-3 mlpnet)")
    p.add_argument("--stages", type=_positive_int, default=1, help="gradual pruning stages")
    p.add_argument("--refits", type=_nonneg_int, default=None, metavar="R",
                   help="first-order refit passes after each stage (default: prune()'s, 4 with a "
                        "cross-entropy/NLL loss; 0 turns them off)")
    p.add_argument("--pattern", metavar="N:M", default=None,
                   help="structured N:M sparsity (e.g. 2:4; --sparsity is then implied and may be left out)")
    p.add_argument("--curvature", choices=("fisher", "activations"), default="fisher",
                   help="fisher (default) or activations: layer-wise X^T X reconstruction curvature")
    _add_parallel_arguments(p, "worker processes for the block solves (default: this process)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="solver option (repeatable)")
    p.add_argument("--out", metavar="DIR", help="write pruned.pt, masks.pt, prune_report.md")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("solvers", help="list the backends and engines available here",
                       description="List every registered backend: available here or not (with install hints), "
                                   "exact or heuristic, and its engines.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_solvers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cbs-opt``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = argv
    if args.command == "prune" and args.model in MODELS:  # the built-in nets' measured settings
        if args.blocks is None:
            args.blocks = 16 if args.model == "digits" else "row"
        if args.damping is None:
            args.damping = 1e-4 if args.model == "digits" else 1e-3
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors → one line; --debug for the traceback
        from solvers import CbsOptError
        if args.debug or not isinstance(exc, (UserError, CbsOptError, ValueError, TypeError, OSError,
                                              ImportError, KeyError)):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, KeyError):
            message = f"missing key {message}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
