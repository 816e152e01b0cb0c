"""Cross-checks: the reference and gap of every run, and the validation failures of a group
(``false_optimal``, ``bound_above_objective``, ``reported_objective_mismatch``; see :mod:`cbs_opt.study`).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from .records import Record, ValidationFailure
from .spec import Tolerances


def validate(records: Sequence[Record], tol: Tolerances = Tolerances()) -> list[ValidationFailure]:
    """Fill ``reference``/``gap`` of every record and return the failed cross-checks (see :mod:`cbs_opt.study`).

    Failing records get ``valid=False`` and the check names in ``flags``.
    """
    failures: list[ValidationFailure] = []

    def fail(rec: Record, check: str, message: str) -> None:
        rec.valid = False
        rec.flags = ";".join(filter(None, [rec.flags, check]))
        failures.append(ValidationFailure(check, rec.instance, rec.m, rec.objective_kind, rec.solver, rec.seed,
                                          message))

    groups: dict[tuple, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.group()].append(rec)
    for group in groups.values():
        done = [r for r in group if r.objective is not None]
        for r in done:
            rtol = tol.reported_rtol_float32 if r.precision == "float32" else tol.reported_rtol
            if r.reported_objective is not None and tol.differ(r.reported_objective, r.objective, rtol):
                fail(r, "reported_objective_mismatch",
                     f"backend reported {r.reported_objective:.10g}, recomputed objective is {r.objective:.10g}")
        if not done:
            continue
        best = min(done, key=lambda r: r.objective)
        for r in done:
            if r.status == "optimal" and tol.above(r.objective, best.objective):
                fail(r, "false_optimal", f"claims optimal at {r.objective:.10g}, but {best.solver} "
                                         f"(seed {best.seed}) found {best.objective:.10g}")
        for r in group:
            if r.bound is not None and tol.above(r.bound, best.objective):
                fail(r, "bound_above_objective", f"lower bound {r.bound:.10g} exceeds the objective "
                                                 f"{best.objective:.10g} found by {best.solver}")
        proven = [r for r in done if r.status == "optimal" and r.exact and "false_optimal" not in r.flags]
        ref, kind = (min(r.objective for r in proven), "optimum") if proven else (best.objective, "best_known")
        for r in group:
            r.reference, r.reference_kind = ref, kind
            if r.objective is not None:
                diff = r.objective - ref
                # Differences within tolerance are ties: report them as a zero gap, not rounding noise.
                r.gap = 0.0 if not tol.differ(r.objective, ref) else diff / max(abs(ref), tol.atol)
    return failures
