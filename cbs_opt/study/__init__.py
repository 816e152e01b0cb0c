"""Solver-comparison and exact-vs-heuristic validation studies.

A study is a grid: **instances** (generated families, saved ``.npz`` problems, Fisher blocks of a
torch model) × **solvers** (registry names with options, e.g. an MIQP engine) × **settings**
(sparsities, objective kinds, dampings, time limits, seeds). Every cell is one independent run,
executed through a ``concurrent.futures``-style executor (a process pool by default; anything with
``submit`` — a thread pool, a Dask ``Client`` — works), and becomes one tidy :class:`Record`.

Runs on the same instance, sparsity, objective and damping form a *group*. Inside a group:

* the **reference** is the proven optimum (the objective of any exact backend that reports
  ``status="optimal"``), else the best objective any run found; ``gap = (objective − ref)/|ref|``;
* three **cross-checks** flag validation failures, never averaged away:

  - ``false_optimal``: a run claims ``"optimal"`` yet another run found a lower objective;
  - ``bound_above_objective``: a claimed lower bound exceeds an objective someone reached;
  - ``reported_objective_mismatch``: what the backend said its objective was differs from the
    engine's recomputation (``Solution.info["reported_objective"]`` vs ``Solution.objective``).

A :class:`NetworkStudy` adds the model-level question: prune a whole network with each solver at
each sparsity (through :func:`cbs_opt.prune.prune`) and measure its accuracy.

    from cbs_opt.study import Study, SolverSpec, generated_instances, run_study
    study = Study(generated_instances(sizes=(12, 16)), [SolverSpec("obs"), SolverSpec("enumerate")],
                  sparsities=(0.5, 0.75))
    result = run_study(study, jobs=2)
    result.ok, result.failures, result.save("out/")

The package, one job per module (each imports only those before it):

* :mod:`~cbs_opt.study.spec` — what a study is made of: :class:`Instance`, :class:`SolverSpec`,
  :func:`parse_solver_spec`, :class:`Tolerances`, :class:`NetworkStudy`, :class:`Study` and its checks;
* :mod:`~cbs_opt.study.sources` — instance sources: :func:`generated_instances`,
  :func:`file_instances`, :func:`model_instances`, :func:`digits_instances`, :func:`sliced_instances`;
* :mod:`~cbs_opt.study.records` — :class:`Record` (``RECORD_FIELDS``), :class:`NetworkRecord`,
  :class:`ValidationFailure`;
* :mod:`~cbs_opt.study.checks` — the cross-checks above: :func:`validate`;
* :mod:`~cbs_opt.study.runner` — tasks, executors, thread limits: :func:`run_study` →
  :class:`StudyResult` (and its files);
* :mod:`~cbs_opt.study.defaults` — the embedded default and spec files: :func:`default_solver_specs`,
  :func:`engines_of`, :func:`probe_engine`, :func:`digits_network_study`, :func:`default_study`,
  :func:`study_from_dict`.

Import from ``cbs_opt.study``; the module split is an implementation detail.
"""
from __future__ import annotations

from .checks import validate
from .defaults import (OPT_IN, default_solver_specs, default_study, digits_network_study, engines_of,
                       probe_engine, study_from_dict)
from .records import RECORD_FIELDS, NetworkRecord, Record, ValidationFailure
from .runner import StudyResult, run_study
from .sources import digits_instances, file_instances, generated_instances, model_instances, sliced_instances
from .spec import Instance, NetworkStudy, SolverSpec, Study, Tolerances, parse_solver_spec

__all__ = ["Instance", "SolverSpec", "Tolerances", "Study", "NetworkStudy", "Record", "NetworkRecord",
           "ValidationFailure", "StudyResult", "run_study", "validate", "generated_instances",
           "file_instances", "model_instances", "digits_instances", "sliced_instances",
           "digits_network_study", "default_study", "study_from_dict", "parse_solver_spec",
           "default_solver_specs", "RECORD_FIELDS",
           # public before the split too (the CLI uses them), now listed
           "engines_of", "probe_engine", "OPT_IN"]
