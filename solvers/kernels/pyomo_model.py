"""The CBS problem as a Pyomo model: building, exporting, and solving it with an external MIQP engine.

Formulations (DESIGN §1; ``w̃`` the Newton point, ``F = BᵀB + diag(d)`` from
:func:`solvers.exact_core.diagonal_split`, so ``B = A = G/√N`` and ``d = λ`` when N < p):

``"update"`` — MIQP, binaries ``z`` (1 = kept), ``Σz = p − m``::

    min  s·[½‖r‖² + ½ Σ d_i (x_i − w̃_i)²] + c₀       r = B(x − w̃)   (one equality per row of B)
         −M_i z_i ≤ x_i ≤ M_i z_i,  M_i = |w̃_i| + √(2·U·(F⁻¹)_ii)

  ``U`` is the cost (without ``c₀``) of a feasible pruned set (OBS), so every optimal ``x`` satisfies
  ``½(x−w̃)ᵀF(x−w̃) ≤ U`` and hence ``|x_i − w̃_i| ≤ √(2U(F⁻¹)_ii)``: the big-M is valid, not guessed.
  ``s = 1/U`` scales the objective to O(1) (generic solvers stall on 1e-6-sized objectives); the model's
  objective is reported in the problem's units by :func:`solve_with_engine`.

Budgets: ``Σz = p − m`` (``Σy = m``) is one row for a total budget and one row per group,
``Σ_{i∈g} z_i = n_g − m_g`` (``Σ_{i∈g} y_i = m_g``), for a partition budget (N:M, per row…).

``"selection"`` — binary QP over ``y`` (1 = pruned), ``Σy = m``, with ``Q = WFW`` and ``c = w∘ḡ``::

    formulation "lowrank":  min s·[½‖r‖² + ½ Σ d_i w_i² y_i − cᵀy],   r = B(w∘y)      (y_i² = y_i)
    formulation "dense":    min s·[½ yᵀQy − cᵀy]
    formulation "milp":     min s·[½ Σ Q_ii y_i + Σ_{i<j} Q_ij u_ij − cᵀy]   (exact linearisation:
                            u_ij ≥ y_i + y_j − 1 where Q_ij > 0, u_ij ≤ y_i, u_ij ≤ y_j where Q_ij < 0)

Building is linear in the stored nonzeros: ``r = B(·)`` has ``rows(B)·p`` terms and no ``p²`` loop is run
unless the dense or MILP formulation is asked for.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..base import BackendResult, SolverUnavailableError, Status
from ..errors import EngineError
from ..exact_core import diagonal_split

__all__ = ["build_model", "export_model", "solve_with_engine", "FORMULATIONS", "ENGINES",
           "feasible_cost_scale", "engine_error", "round_to_budget", "probe_engine"]

FORMULATIONS = ("auto", "lowrank", "dense", "milp")
# engine name → (Pyomo contrib.solver name, module it needs, install extra)
ENGINES = {"gurobi": ("gurobi_persistent", "gurobipy", "pip install 'cbs-opt[gurobi]'"),
           "scip": ("scip_direct", "pyscipopt", "pip install 'cbs-opt[scip]'")}


def _pyo():
    import pyomo.environ as pyo  # imported lazily: Pyomo's import is slow and most solvers never need it
    return pyo


def feasible_cost_scale(problem) -> float:
    """A feasible cost ``U`` (without the update constant) used for the big-M and the objective scale.

    The cost of the OBS pruned set (update) or of magnitude pruning (selection); falls back to 1 when that
    cost is 0 (then every objective is 0 and any scale works).
    """
    # The set must satisfy the problem's budget (per group under a partition budget): the big-M argument
    # needs a *feasible* U, and a set that only meets the total count can cost less than every feasible one.
    from ..magnitude import smallest_for
    if problem.objective_kind == "update":
        from ..obs import obs_scores
        try:
            pruned = smallest_for(obs_scores(problem), problem)
        except ValueError:  # singular F: no OBS scores
            pruned = smallest_for(np.abs(problem.effective_weights), problem)
        value = problem.update_cost(pruned) - problem.update_constant
    else:
        value = abs(problem.selection_cost(smallest_for(np.abs(problem.weights), problem)))
    return float(value) if value > 1e-300 else 1.0


def _linear_rows(pyo, model, name, mat, var, shift):
    """Constraints ``r_j = Σ_i mat[j,i] (var_i − shift_i)`` — one term per stored entry."""
    rows, cols = mat.shape
    model.add_component(f"{name}_index", pyo.RangeSet(0, rows - 1))
    r = pyo.Var(model.component(f"{name}_index"), domain=pyo.Reals)
    model.add_component(name, r)
    const = mat @ shift

    def rule(m, j):
        nz = np.flatnonzero(mat[j])
        return r[j] == pyo.quicksum(float(mat[j, i]) * var[int(i)] for i in nz) - float(const[j])
    model.add_component(f"{name}_def", pyo.Constraint(model.component(f"{name}_index"), rule=rule))
    return r


def _budget_rows(pyo, model, problem, var, *, keep: bool) -> None:
    """The budget as constraints ``model.budget``: ``Σ var = p − m`` (keep indicators) or ``= m`` (prune
    indicators) for a total budget; one row per group ``Σ_{i∈g} var_i = n_g − m_g`` (or ``m_g``) for a
    partition budget (indexed by the group id)."""
    budget = problem.budget
    if budget.n_groups == 1:
        rhs = problem.n_keep if keep else problem.n_prune
        model.budget = pyo.Constraint(expr=pyo.quicksum(var[i] for i in model.I) == rhs)
        return
    members = budget.members
    rhs = budget.keep_counts if keep else budget.counts
    model.G = pyo.RangeSet(0, budget.n_groups - 1)
    model.budget = pyo.Constraint(model.G, rule=lambda mm, g: pyo.quicksum(var[int(i)] for i in members[g])
                                  == int(rhs[g]))


def round_to_budget(problem, values: np.ndarray, *, keep: bool) -> np.ndarray:
    """The pruned set from an engine's 0/1 values (tolerances leave them near 0/1): per group the
    ``m_g`` lowest keep indicators (``keep=True``) or highest prune indicators, so the set is feasible."""
    from ..magnitude import smallest_for
    values = np.asarray(values, dtype=np.float64)
    return smallest_for(values if keep else -values, problem)


def build_model(problem, formulation: str = "auto", *, scale: float | None = None):
    """The CBS problem as a Pyomo ``ConcreteModel`` (module docstring for the formulations).

    ``formulation``: "auto" (low-rank form), "lowrank", "dense" (``p²`` quadratic terms) or "milp"
    (selection objective only). The model carries ``model.z`` (update: 1 = kept) or ``model.y`` (selection:
    1 = pruned), ``model.cbs_scale`` (objective multiplier) and ``model.cbs_constant`` (added after unscaling).
    """
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
    if formulation == "milp" and problem.objective_kind != "selection":
        raise ValueError("formulation='milp' (exact linearisation) exists only for objective='selection'; "
                         "the update objective has continuous x and needs an MIQP")
    pyo = _pyo()
    p, k, m = problem.p, problem.n_keep, problem.n_prune
    U = feasible_cost_scale(problem)
    s = 1.0 / U if scale is None else float(scale)
    B, d = diagonal_split(problem)
    model = pyo.ConcreteModel(name=f"cbs_{problem.objective_kind}_p{p}_m{m}"
                                   + ("" if problem.budget.n_groups == 1 else f"_g{problem.budget.n_groups}"))
    model.I = pyo.RangeSet(0, p - 1)
    model.cbs_scale = s
    if problem.objective_kind == "update":
        w = problem.effective_weights
        model.cbs_constant = float(problem.update_constant)
        try:
            inv_diag = problem.curvature.inverse_diagonal()
        except ValueError as exc:
            raise ValueError("the update MIQP needs F positive definite for valid big-M bounds "
                             "(damping > 0, or N >= p with full-rank gradients)") from exc
        big_m = np.abs(w) + np.sqrt(2.0 * U * np.clip(inv_diag, 0.0, None)) * (1.0 + 1e-9)
        model.z = pyo.Var(model.I, domain=pyo.Binary)
        model.x = pyo.Var(model.I, domain=pyo.Reals, bounds=lambda _, i: (-big_m[i], big_m[i]))
        model.upper = pyo.Constraint(model.I, rule=lambda mm, i: mm.x[i] <= float(big_m[i]) * mm.z[i])
        model.lower = pyo.Constraint(model.I, rule=lambda mm, i: -float(big_m[i]) * mm.z[i] <= mm.x[i])
        _budget_rows(pyo, model, problem, model.z, keep=True)
        if formulation == "dense":
            F = problem.curvature.dense()
            dx = {i: model.x[i] - float(w[i]) for i in range(p)}
            quad = pyo.quicksum(float(F[i, j]) * dx[i] * dx[j] for i in range(p) for j in range(p) if F[i, j])
            model.obj = pyo.Objective(expr=0.5 * s * quad)
        else:
            terms = []
            if B.shape[0]:
                r = _linear_rows(pyo, model, "r", B, model.x, w)
                terms.append(pyo.quicksum(r[j] * r[j] for j in range(B.shape[0])))
            terms.append(pyo.quicksum(float(d[i]) * (model.x[i] - float(w[i])) ** 2 for i in range(p) if d[i]))
            model.obj = pyo.Objective(expr=0.5 * s * pyo.quicksum(terms))
        return model

    # selection
    w = problem.weights
    c = np.zeros(p) if problem.gradient is None else w * problem.gradient
    model.cbs_constant = 0.0
    model.y = pyo.Var(model.I, domain=pyo.Binary)
    _budget_rows(pyo, model, problem, model.y, keep=False)
    linear = pyo.quicksum(-float(c[i]) * model.y[i] for i in range(p) if c[i])
    if formulation in ("auto", "lowrank"):
        terms = [linear, pyo.quicksum(0.5 * float(d[i] * w[i] ** 2) * model.y[i] for i in range(p) if d[i] * w[i])]
        if B.shape[0]:
            Bw = B * w[None, :]
            r = _linear_rows(pyo, model, "r", Bw, model.y, np.zeros(p))
            terms.append(0.5 * pyo.quicksum(r[j] * r[j] for j in range(B.shape[0])))
        model.obj = pyo.Objective(expr=s * pyo.quicksum(terms))
        return model
    Q = problem.curvature.dense() * w[:, None] * w[None, :]
    if formulation == "dense":
        quad = pyo.quicksum(float(Q[i, j]) * model.y[i] * model.y[j]
                            for i in range(p) for j in range(p) if Q[i, j])
        model.obj = pyo.Objective(expr=s * (0.5 * quad + linear))
        return model
    pairs = [(i, j) for i in range(p) for j in range(i + 1, p) if Q[i, j] != 0.0]
    model.P = pyo.Set(initialize=pairs, dimen=2)
    model.u = pyo.Var(model.P, bounds=(0.0, 1.0))
    pos = [(i, j) for (i, j) in pairs if Q[i, j] > 0]
    neg = [(i, j) for (i, j) in pairs if Q[i, j] < 0]
    model.both = pyo.Constraint(pos, rule=lambda mm, i, j: mm.u[i, j] >= mm.y[i] + mm.y[j] - 1)
    model.left = pyo.Constraint(neg, rule=lambda mm, i, j: mm.u[i, j] <= mm.y[i])
    model.right = pyo.Constraint(neg, rule=lambda mm, i, j: mm.u[i, j] <= mm.y[j])
    expr = pyo.quicksum(0.5 * float(Q[i, i]) * model.y[i] for i in range(p) if Q[i, i]) \
        + pyo.quicksum(float(Q[i, j]) * model.u[i, j] for (i, j) in pairs) + linear
    model.obj = pyo.Objective(expr=s * expr)
    return model


def export_model(problem, path: str | os.PathLike, formulation: str = "auto") -> Path:
    """Write the Pyomo model to ``path``; the format follows the extension: ``.lp``, ``.mps`` or ``.nl``."""
    path = Path(path)
    if path.suffix.lower() not in (".lp", ".mps", ".nl"):
        raise ValueError(f"path must end in .lp, .mps or .nl, got {path.name!r}")
    model = build_model(problem, formulation)
    # Pyomo picks the writer from the extension; the LP/MPS writers add a fixed column for the constant.
    model.write(str(path), io_options={"symbolic_solver_labels": True})
    return path


FALLBACK_HINT = ("use engine='highs' (the default of solver='miqp': exact, no licence needed) or "
                 "solver='greedy_swap' for a fast heuristic")


def engine_error(engine: str, exc: BaseException) -> EngineError:
    """An engine failure as :class:`EngineError`, naming the engine and what to do about it."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    lower = message.lower()
    if "size-limited" in lower or "license" in lower or "licence" in lower:
        hint = ("the model exceeds the engine's licence (Gurobi's pip package ships a size-limited licence); "
                "install a full licence (https://www.gurobi.com/academia/ for free academic ones), use smaller "
                "blocks, or " + FALLBACK_HINT)
    elif "lp solver" in lower or "numeric" in lower:
        hint = ("the engine's LP solver failed numerically (tiny damping makes the model ill-conditioned); "
                "try a larger damping, or " + FALLBACK_HINT)
    elif "memory" in lower:
        hint = "the engine ran out of memory; use smaller blocks, or " + FALLBACK_HINT
    else:
        hint = FALLBACK_HINT
    return EngineError(engine, f"{type(exc).__name__}: {message}", hint)


def _engine(name: str):
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {('highs',) + tuple(ENGINES)}, got {name!r}")
    import importlib.util
    solver_name, module, hint = ENGINES[name]
    if importlib.util.find_spec(module) is None:
        raise SolverUnavailableError(f"engine {name!r} needs {module}, which is not installed; "
                                     f"install it with: {hint}")
    from pyomo.contrib.solver.common.factory import SolverFactory
    opt = SolverFactory(solver_name)
    try:
        usable = opt.available()
    except Exception as exc:  # noqa: BLE001 — a broken installation or licence check
        raise engine_error(name, exc) from exc
    if not usable:
        raise SolverUnavailableError(f"engine {name!r} ({solver_name}) is not usable here "
                                     f"(licence or installation); {hint}")
    return opt


def probe_engine(name: str) -> str | None:
    """``None`` when Pyomo reports engine ``name`` usable here (installed, licensed), else the reason.

    Cheap: it asks the Pyomo solver interface, it solves nothing (``cbs_opt.study.probe_engine`` does).
    """
    try:
        _pyo()  # loads Pyomo's solver plugins (the factory knows no names before)
        _engine(name)
    except Exception as exc:  # noqa: BLE001 — any failure is the reason
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    return None


def _solve_without_fd_capture(opt, model, kwargs):
    """Run Pyomo's SCIP interface with its fd-level output capture turned off.

    ``scip_direct`` captures SCIP's C-level output through a pipe drained by a Python thread, but
    pyscipopt's ``optimize()`` keeps the GIL: a log (or warnings) beyond the pipe's buffer blocks SCIP
    forever (observed on real MLPNet rows even at ``display/verblevel`` 0). Without fd capture SCIP
    writes straight to this process's stdout, which nobody has to drain.
    """
    from unittest import mock

    from pyomo.contrib.solver.solvers.scip import scip_direct

    original = scip_direct.capture_output

    def python_level_only(*args, **kw):
        kw["capture_fd"] = False
        return original(*args, **kw)

    with mock.patch.object(scip_direct, "capture_output", python_level_only):
        return opt.solve(model, **kwargs)


def solve_with_engine(problem, engine: str, *, time_limit: float | None, formulation: str = "auto",
                      rel_gap: float = 1e-9, threads: int = 1, progress: bool = False) -> BackendResult:
    """Solve the Pyomo model with ``engine`` ("gurobi" or "scip") through Pyomo's solver interfaces."""
    from pyomo.contrib.solver.common.results import TerminationCondition
    pyo = _pyo()
    opt = _engine(engine)
    model = build_model(problem, formulation)
    kwargs = dict(rel_gap=rel_gap, abs_gap=0.0, threads=threads, tee=progress, load_solutions=False,
                  raise_exception_on_nonoptimal_result=False)
    if time_limit is not None:
        kwargs["time_limit"] = float(time_limit)
    if engine == "scip":
        kwargs.pop("threads")  # SCIP solves on one thread
        # Quiet unless asked: without Pyomo's capture (below) SCIP's log goes to stdout.
        kwargs["solver_options"] = {"display/verblevel": 5 if progress else 0}
    else:
        # Gurobi's default integrality tolerance (1e-5) let its reported objective drift 1e-5 (relative)
        # from the true cost of the set it returned; tighten it so cross-checks can stay strict.
        kwargs["solver_options"] = {"IntFeasTol": 1e-9}
    try:
        if engine == "scip":
            res = _solve_without_fd_capture(opt, model, kwargs)
        else:
            res = opt.solve(model, **kwargs)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 — the engines raise bare Exception / their own types
        raise engine_error(engine, exc) from exc
    info = {"engine": engine, "formulation": formulation, "termination": str(res.termination_condition)}
    if res.incumbent_objective is None:
        raise EngineError(engine, f"returned no solution ({res.termination_condition})",
                          "the model may exceed the engine's licence (Gurobi's pip licence allows ~200 "
                          "variables for quadratic models); " + FALLBACK_HINT)
    try:
        res.solution_loader.load_vars()
    except Exception as exc:  # noqa: BLE001
        raise engine_error(engine, exc) from exc
    var = model.z if problem.objective_kind == "update" else model.y
    values = np.array([pyo.value(var[i]) for i in range(problem.p)])
    pruned = round_to_budget(problem, values, keep=problem.objective_kind == "update")
    unscale = lambda v: None if v is None or not math.isfinite(v) else v / model.cbs_scale + model.cbs_constant  # noqa: E731
    optimal = res.termination_condition == TerminationCondition.convergenceCriteriaSatisfied
    status = Status.OPTIMAL if optimal else (
        Status.TIME_LIMIT if res.termination_condition == TerminationCondition.maxTimeLimit else Status.FEASIBLE)
    bound = unscale(res.objective_bound)
    return BackendResult(pruned=pruned, status=status, bound=bound, objective=unscale(res.incumbent_objective),
                         info=info)
