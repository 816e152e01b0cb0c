"""Turn a :class:`~cbs_opt.study.StudyResult` into tables and plots: ``report.md``, ``report.html``, PNGs.

Four figures (each skipped when the study has no data for it):

``objective_vs_sparsity.png``  total objective over the comparison instances per solver (log scale),
                               the proven optimum as a black dashed reference; right panel: the same
                               as a ratio to the optimum (1 = optimal).
``optimality_gap.png``         per-instance relative gap to the optimum of every heuristic, by sparsity.
``time_vs_size.png``           median solve time against block size, log-log; hollow markers = stopped
                               by the time limit.
``accuracy_vs_sparsity.png``   accuracy of the whole pruned network per solver, dense accuracy dashed.

Matplotlib runs on the Agg backend (no display needed).
"""
from __future__ import annotations

import html
import math
import os
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Any, Sequence

import numpy as np

__all__ = ["write_report", "solver_summary", "gap_table", "accuracy_table", "time_table", "failure_lines",
           "markdown_table", "plot_objective_vs_sparsity", "plot_gaps", "plot_time_vs_size", "plot_accuracy",
           "solver_colors"]

LADDER_SUFFIX = "-ladder"


# ---------------------------------------------------------------------------------------------
# Tables (lists of rows; rendered to Markdown or HTML)
# ---------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    return f"{100 * value:.3g}%"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _solver_order(records) -> list[str]:
    """Solvers in first-appearance order (the study's order)."""
    seen: dict[str, None] = {}
    for r in records:
        seen.setdefault(r.solver, None)
    return list(seen)


def solver_summary(records) -> tuple[list[str], list[list[str]]]:
    """One row per solver: runs, statuses, how often it reached the reference, gaps, time, memory."""
    header = ["solver", "exact", "runs", "statuses", "at reference", "mean gap", "max gap",
              "median s", "max s", "peak MB", "failed checks"]
    rows = []
    by_solver = defaultdict(list)
    for r in records:
        by_solver[r.solver].append(r)
    for name in _solver_order(records):
        rs = by_solver[name]
        done = [r for r in rs if r.objective is not None]
        gaps = [r.gap for r in done if r.gap is not None]
        secs = [r.seconds for r in done if r.seconds is not None]
        mem = [r.peak_memory_mb for r in rs if r.peak_memory_mb is not None]
        statuses = defaultdict(int)
        for r in rs:
            statuses[r.status] += 1
        rows.append([name, "yes" if rs[0].exact else "no", len(rs),
                     ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
                     f"{sum(g == 0 for g in gaps)}/{len(gaps)}",
                     _pct(float(np.mean(gaps))) if gaps else "–", _pct(max(gaps)) if gaps else "–",
                     _fmt(median(secs), 3) if secs else "–", _fmt(max(secs), 3) if secs else "–",
                     _fmt(max(mem), 3) if mem else "–", sum(not r.valid for r in rs)])
    return header, rows


def _pivot(records, column, label, keep, cell) -> tuple[list[str], list[list[str]]]:
    """A solver × ``column(record)`` table: ``cell(records)`` over the kept records of each cell, "–" if none."""
    columns = sorted({column(r) for r in records})
    cells = defaultdict(list)
    for r in records:
        if keep(r):
            cells[r.solver, column(r)].append(r)
    header = ["solver"] + [label(c) for c in columns]
    rows = [[name] + [cell(cells[name, c]) if cells.get((name, c)) else "–" for c in columns]
            for name in _solver_order(records)]
    return header, rows


def gap_table(records) -> tuple[list[str], list[list[str]]]:
    """Mean (max) relative gap to the reference, solver × sparsity."""
    def cell(rs):
        gaps = [r.gap for r in rs]
        return f"{_pct(float(np.mean(gaps)))} ({_pct(max(gaps))})"
    return _pivot(records, lambda r: r.sparsity, lambda s: f"sparsity {s:g}", lambda r: r.gap is not None, cell)


def time_table(records) -> tuple[list[str], list[list[str]]]:
    """Median solve seconds, solver × block size (``*`` = some runs hit the time limit)."""
    def cell(rs):
        star = "*" if any(r.status == "time_limit" for r in rs) else ""
        return f"{median(r.seconds for r in rs):.3g}{star}"
    return _pivot(records, lambda r: r.p, lambda p: f"p={p}", lambda r: r.seconds is not None, cell)


def accuracy_table(network) -> tuple[list[str], list[list[str]]]:
    """Metric of the pruned network, solver × sparsity (dense value in the header)."""
    if not network:
        return [], []
    sparsities = sorted({r.sparsity for r in network})
    metric = network[0].metric
    dense = next((r.dense_value for r in network if r.dense_value is not None), None)
    header = ["solver"] + [f"sparsity {s:g}" for s in sparsities]
    cells = {(r.solver, r.sparsity): r for r in network}
    rows = []
    for name in _solver_order(network):
        row = [name]
        for s in sparsities:
            r = cells.get((name, s))
            row.append("error" if r is not None and r.error else
                       (f"{100 * r.value:.1f}%" if metric == "accuracy" else _fmt(r.value)) if r else "–")
        rows.append(row)
    if dense is not None:
        rows.append(["(dense)"] + [f"{100 * dense:.1f}%" if metric == "accuracy" else _fmt(dense)] * len(sparsities))
    return header, rows


def failure_lines(result) -> list[str]:
    """One line per failed run: a run that fails several cross-checks (a wrong reported objective is
    usually also a false optimality claim) is listed once, with every check it failed."""
    runs: dict[tuple, list] = {}
    for f in result.failures:
        if f.check == "error":  # failed runs are listed below, from result.errors, once each
            continue
        runs.setdefault((f.instance, f.m, f.objective_kind, f.solver, f.seed), []).append(f)
    lines = [f"[{', '.join(f.check for f in fs)}] {fs[0].instance} (m={fs[0].m}, {fs[0].objective_kind}) "
             f"{fs[0].solver}: {'; '.join(f.message for f in fs)}" for fs in runs.values()]
    lines += [f"[error] {getattr(r, 'instance', getattr(r, 'network', ''))} {r.solver}: {r.error}"
              for r in result.errors]
    return lines


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def solver_colors(names: Sequence[str], exact: dict[str, bool] | None = None) -> dict[str, dict]:
    """A stable line style per solver: heuristics in colour, exact backends in greys/black."""
    exact = exact or {}
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
    greys = ["#000000", "#555555", "#999999", "#333333"]
    markers = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
    styles, i_h, i_e = {}, 0, 0
    for name in names:
        if exact.get(name):
            styles[name] = {"color": greys[i_e % len(greys)], "marker": "x", "linestyle": "--"}
            i_e += 1
        else:
            styles[name] = {"color": palette[i_h % len(palette)], "marker": markers[i_h % len(markers)],
                            "linestyle": "-"}
            i_h += 1
    return styles


def _comparison_records(records):
    main = [r for r in records if not r.family.endswith(LADDER_SUFFIX)]
    return main or list(records)



def _legend_right(ax, **kw) -> None:
    """The legend outside the axes, on the right (the curves stay visible)."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kw)


def _save(fig, path) -> bool:
    """Lay out, write the PNG and free the figure; → True (the plot was written)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return True


def plot_objective_vs_sparsity(records, path: str | os.PathLike, *, objective_kind: str | None = None) -> bool:
    """Total objective per solver vs sparsity over the instances every solver finished; → wrote?"""
    plt = _plt()
    records = [r for r in _comparison_records(records) if r.objective is not None]
    kinds = sorted({r.objective_kind for r in records})
    if not records:
        return False
    kind = objective_kind or ("update" if "update" in kinds else kinds[0])
    records = [r for r in records if r.objective_kind == kind]
    exact = {r.solver: r.exact for r in records}
    names = _solver_order(records)
    styles = solver_colors(names, exact)
    sparsities = sorted({r.sparsity for r in records})
    # Per sparsity: the instances for which every solver (first seed, first time limit) has a result.
    best_per = {}
    for r in records:
        key = (r.sparsity, r.instance, r.solver)
        if key not in best_per or r.objective < best_per[key].objective:
            best_per[key] = r
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13.5, 4.8))
    ref_line, totals, partial = [], defaultdict(dict), set()
    for s in sparsities:
        insts = sorted({i for (sp, i, _) in best_per if sp == s})
        # A solver enters the sum only where it ran on every instance (e.g. not a slow engine capped
        # to the small blocks); those left out are named in the legend title.
        complete = [n for n in names if all((s, i, n) in best_per for i in insts)]
        partial |= set(names) - set(complete)
        if not insts or not complete:
            continue
        refs = {i: min(best_per[(s, i, n)].reference for n in names if (s, i, n) in best_per) for i in insts}
        kinds = {best_per[(s, i, n)].reference_kind for i in insts for n in names if (s, i, n) in best_per}
        ref_line.append((s, sum(refs.values()), "optimum" if kinds == {"optimum"} else "best_known"))
        for n in complete:
            totals[n][s] = sum(best_per[(s, i, n)].objective for i in insts)
    if not ref_line:
        plt.close(fig)
        return False
    ref_at = {x: v for x, v, _ in ref_line}
    for k, n in enumerate(names):
        xs = sorted(totals[n])
        if not xs:
            continue
        ms = max(3.0, 9.0 - 0.6 * k)  # later curves drawn smaller, so coinciding solvers stay visible
        ax.plot(xs, [totals[n][x] for x in xs], label=n, lw=1.6, ms=ms, alpha=0.85, **styles[n])
        ax2.plot(xs, [totals[n][x] / ref_at[x] for x in xs], label=n, lw=1.6, ms=ms, alpha=0.85, **styles[n])
    proven = all(k == "optimum" for *_, k in ref_line)
    ref_label = "proven optimum" if proven else "best known"
    ax.plot([x for x, *_ in ref_line], [v for _, v, _ in ref_line], color="black", lw=3, alpha=0.25,
            label=ref_label, zorder=0)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    ax.set_ylabel(f"total '{kind}' objective (predicted loss increase)")
    n_inst = len({i for (_, i, _) in best_per})  # noqa: F841 - shown in the title
    ax.set_title(f"Objective vs sparsity ({n_inst} blocks, summed)")
    ax.grid(True, which="both", alpha=0.3)
    ax2.axhline(1.0, color="black", lw=3, alpha=0.25, label=ref_label)
    ax2.set_xlabel("sparsity (fraction of weights pruned)")
    ax2.set_ylabel(f"total objective / {ref_label}")
    ax2.set_title("Relative to the optimum (1 = optimal)")
    ax2.grid(True, alpha=0.3)
    _legend_right(ax2, title=("not on every block:\n" + ", ".join(sorted(partial))) if partial else None,
                  title_fontsize=7)
    return _save(fig, path)


def plot_gaps(records, path: str | os.PathLike) -> bool:
    """Per-instance relative gap of each heuristic to the reference, grouped by sparsity; → wrote?"""
    plt = _plt()
    records = [r for r in _comparison_records(records) if r.gap is not None and not r.exact]
    if not records:
        return False
    names = _solver_order(records)
    styles = solver_colors(names)
    sparsities = sorted({r.sparsity for r in records})
    fig, ax = plt.subplots(figsize=(13, 5))
    width = 0.8 / len(names)
    rng = np.random.default_rng(0)
    floor = 1e-4  # gaps below 0.01 % are drawn on the floor line (symlog would squash them to 0 anyway)
    for j, n in enumerate(names):
        for i, s in enumerate(sparsities):
            g = np.array([r.gap for r in records if r.solver == n and r.sparsity == s])
            if g.size == 0:
                continue
            x0 = i + (j - (len(names) - 1) / 2) * width
            y = np.maximum(100 * g, 100 * floor)
            ax.scatter(x0 + rng.uniform(-0.3, 0.3, g.size) * width, y, s=12, color=styles[n]["color"],
                       alpha=0.55, edgecolors="none", label=n if i == 0 else None)
            ax.hlines(100 * max(float(np.mean(g)), floor), x0 - 0.4 * width, x0 + 0.4 * width,
                      color=styles[n]["color"], lw=2.5)
    ax.set_yscale("log")
    ax.axhline(100 * floor, color="black", lw=0.8, alpha=0.4)
    top = max(100 * max(r.gap for r in records), 1.0)
    ticks = [100 * floor] + [t for t in (0.1, 1, 10, 100, 1000, 10000) if t <= top * 1.5]
    ax.set_yticks(ticks, ["optimal"] + [f"{t:g}%" for t in ticks[1:]])
    ax.minorticks_off()
    ax.set_xticks(range(len(sparsities)), [f"sparsity {s:g}" for s in sparsities])
    ax.set_ylabel("gap to the optimum (log scale)")
    ref = "proven optimum" if all(r.reference_kind == "optimum" for r in records) else "best known objective"
    ax.set_title(f"Gap of each heuristic to the {ref}: one dot per block, bar = mean")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    _legend_right(ax, markerscale=1.8)
    return _save(fig, path)


def plot_time_vs_size(records, path: str | os.PathLike) -> bool:
    """Median solve seconds per solver against block size ``p`` (log-log); → wrote?"""
    plt = _plt()
    records = [r for r in records if r.seconds is not None]
    ladder = [r for r in records if r.family.endswith(LADDER_SUFFIX)]
    if len({r.p for r in ladder}) >= 2:  # a size ladder cut from one block: the cleanest comparison
        records = ladder
    if not records:
        return False
    # At the sparsity nearest 1/2: the most pruned sets to choose from, the hardest case for exact search.
    target = min({r.sparsity for r in records}, key=lambda s: (abs(s - 0.5), s))
    records = [r for r in records if r.sparsity == target]
    sizes = sorted({r.p for r in records})
    if len(sizes) < 2:
        return False
    exact = {r.solver: r.exact for r in records}
    names = _solver_order(records)
    styles = solver_colors(names, exact)
    fig, ax = plt.subplots(figsize=(9.5, 5))
    limits = sorted({r.time_limit for r in records if r.time_limit is not None})
    for n in names:
        xs, ys, hit = [], [], []
        for p in sizes:
            rs = [r for r in records if r.solver == n and r.p == p]
            if rs:
                xs.append(p)
                ys.append(max(median(r.seconds for r in rs), 1e-5))
                hit.append(any(r.status == "time_limit" for r in rs))
        if not xs:
            continue
        st = styles[n]
        ax.plot(xs, ys, color=st["color"], linestyle=st["linestyle"], lw=1.5, label=n)
        ax.scatter([x for x, h in zip(xs, hit) if not h], [y for y, h in zip(ys, hit) if not h],
                   color=st["color"], marker=st["marker"], s=30, zorder=3)
        ax.scatter([x for x, h in zip(xs, hit) if h], [y for y, h in zip(ys, hit) if h],
                   facecolors="none", edgecolors=st["color"], marker="o", s=80, lw=1.5, zorder=3)
    for t in limits:
        ax.axhline(t, color="red", lw=0.8, linestyle=":", alpha=0.7)
        ax.text(sizes[-1], t * 1.12, f"time limit {t:g} s", color="red", fontsize=8, ha="right")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(p) for p in sizes])
    ax.set_xlabel("block size p (weights)")
    ax.set_ylabel("median solve time (s)")
    ax.set_title(f"Solve time vs block size at sparsity {target:g} (hollow circle = time limit hit)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    _legend_right(ax)
    return _save(fig, path)


def plot_accuracy(network, path: str | os.PathLike) -> bool:
    """Pruned-network metric per solver vs sparsity, dense value dashed; → wrote?"""
    plt = _plt()
    rows = [r for r in network if r.value is not None]
    if not rows:
        return False
    names = _solver_order(rows)
    exact = {}
    for r in rows:
        exact[r.solver] = r.backend in _exact_backends()
    styles = solver_colors(names, exact)
    scale = 100.0 if rows[0].metric == "accuracy" else 1.0
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, n in enumerate(names):
        pts = sorted((r.sparsity, r.value) for r in rows if r.solver == n)
        ms = max(3.0, 9.0 - 0.6 * k)  # later curves smaller, so coinciding solvers stay visible
        ax.plot([s for s, _ in pts], [scale * v for _, v in pts], label=n, lw=1.6, ms=ms, alpha=0.85,
                **styles[n])
    dense = next((r.dense_value for r in rows if r.dense_value is not None), None)
    if dense is not None:
        ax.axhline(scale * dense, color="black", lw=1, linestyle=":", label="dense (unpruned)")
    ax.set_xlabel("sparsity (fraction of weights pruned, every block)")
    ax.set_ylabel(f"test {rows[0].metric}" + (" (%)" if scale == 100 else ""))
    ax.set_title(f"{rows[0].network}: {rows[0].metric} of the pruned network")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def _exact_backends() -> set[str]:
    from solvers import backends
    return {n for n, info in backends().items() if info.exact}


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
FIGURES = {
    "objective_vs_sparsity.png": "Objective vs sparsity. Left: the CBS objective (the loss increase the "
                                 "quadratic model predicts) summed over the comparison blocks, per solver, on a "
                                 "log scale; the thick grey line is the proven optimum. Right: the same totals "
                                 "divided by the optimum, so 1 means optimal.",
    "optimality_gap.png": "Optimality gap of each heuristic: one dot per block and sparsity, the bar is the "
                          "mean; dots on the bottom line found the optimum (gap below 0.01 %).",
    "time_vs_size.png": "Solve time vs block size on log-log axes (median over runs). Exact backends "
                        "(dashed, grey/black) grow combinatorially with the block size; heuristics stay flat. "
                        "A hollow circle means the time limit stopped the run.",
    "accuracy_vs_sparsity.png": "Test accuracy of the whole pruned network at each sparsity, one curve per "
                                "solver; the dotted line is the unpruned network.",
}


def write_report(result, directory: str | os.PathLike, *, command: str | None = None,
                 machine: str | None = None) -> dict[str, Path]:
    """Write records, plots, ``report.md`` and ``report.html`` into ``directory``; → the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = result.save(out)
    comparison = _comparison_records(result.records)
    drawn = {
        "objective_vs_sparsity.png": plot_objective_vs_sparsity(result.records, out / "objective_vs_sparsity.png"),
        "optimality_gap.png": plot_gaps(result.records, out / "optimality_gap.png"),
        "time_vs_size.png": plot_time_vs_size(result.records, out / "time_vs_size.png"),
        "accuracy_vs_sparsity.png": plot_accuracy(result.network, out / "accuracy_vs_sparsity.png"),
    }
    for name, ok in drawn.items():
        if ok:
            paths[name] = out / name

    meta = result.meta
    blocks: list[tuple[str, Any]] = [("h1", meta.get("title", "cbs-opt study"))]
    status = "PASSED" if result.ok else "FAILED"
    intro = (f"Validation **{status}**: {len(result.records)} solver runs"
             + (f" and {len(result.network)} pruned networks ({len(result.network_blocks)} block solves inside "
                f"them, cross-checked the same way)" if result.network else "")
             + f", {len(result.failed_checks)} failed cross-checks, {len(result.errors)} failed runs. "
             f"Wall time {meta.get('seconds', 0):.1f} s ({meta.get('executor', '?')}"
             + (f", {meta['jobs']} workers" if meta.get("jobs") else "") + f"), {meta.get('date', '')}.")
    blocks.append(("p", intro))
    if meta.get("description"):
        blocks.append(("p", meta["description"]))
    if command:
        blocks.append(("code", command))
    if machine:
        blocks.append(("p", f"Machine: {machine}."))
    blocks.append(("p", "Settings: sparsities " + ", ".join(f"{s:g}" for s in meta.get("sparsities", []))
                   + "; objectives " + ", ".join(meta.get("objectives", []))
                   + "; time limits " + ", ".join("none" if t is None else f"{t:g} s"
                                                  for t in meta.get("time_limits", []))
                   + "; seeds " + ", ".join(str(s) for s in meta.get("seeds", []))
                   + f"; {len(meta.get('instances', []))} instances."))
    lines = failure_lines(result)
    blocks.append(("h2", "Validation"))
    if lines:
        blocks.append(("p", "These cross-checks failed (an exact backend claiming optimality above another "
                            "backend's objective, a lower bound above a reached objective, a reported objective "
                            "that differs from the recomputed one, or a backend that raised):"))
        blocks.append(("list", lines[:200] + ([f"… and {len(lines) - 200} more"] if len(lines) > 200 else [])))
    else:
        blocks.append(("p", "Every cross-check passed: no backend claimed optimality above an objective "
                            "another backend reached, no lower bound exceeded a reached objective, and every "
                            "objective a backend reported matches the engine's recomputation."))
    blocks.append(("h2", "Solvers"))
    blocks.append(("p", "Gap = (objective − reference) / |reference|, where the reference is the proven "
                        "optimum of the instance when an exact backend proved one, else the best objective "
                        "found. “at reference” counts runs with zero gap (within tolerance)."))
    blocks.append(("table", solver_summary(result.records)))
    blocks.append(("h2", "Gap by sparsity"))
    blocks.append(("p", "Mean (max) gap to the reference over the comparison instances."))
    blocks.append(("table", gap_table(comparison)))
    for name in ("objective_vs_sparsity.png", "optimality_gap.png"):
        if drawn[name]:
            blocks.append(("img", (name, FIGURES[name])))
    if drawn["time_vs_size.png"]:
        blocks.append(("h2", "Solve time vs block size"))
        blocks.append(("p", "Median seconds per solve (`*`: some runs stopped at the time limit)."))
        blocks.append(("table", time_table(result.records)))
        blocks.append(("img", ("time_vs_size.png", FIGURES["time_vs_size.png"])))
    if result.network:
        blocks.append(("h2", "The pruned network"))
        blocks.append(("p", "Every block of the network pruned to the same sparsity by each solver, the "
                            "kept weights updated (CBS-U), then evaluated on held-out data."))
        blocks.append(("table", accuracy_table(result.network)))
        if drawn["accuracy_vs_sparsity.png"]:
            blocks.append(("img", ("accuracy_vs_sparsity.png", FIGURES["accuracy_vs_sparsity.png"])))
    blocks.append(("p", "Files: `records.csv` / `records.json` (one row per run)"
                   + (", `network.csv` (one row per pruned network), `network_blocks.csv` (one row per block "
                      "solve inside them)" if result.network else "") + "."))

    paths["report.md"] = out / "report.md"
    paths["report.md"].write_text(_render_markdown(blocks))
    paths["report.html"] = out / "report.html"
    paths["report.html"].write_text(_render_html(blocks, meta.get("title", "cbs-opt study")))
    return paths


def _render_markdown(blocks) -> str:
    parts = []
    for kind, body in blocks:
        if kind == "h1":
            parts.append(f"# {body}")
        elif kind == "h2":
            parts.append(f"## {body}")
        elif kind == "p":
            parts.append(body)
        elif kind == "code":
            parts.append(f"```\n{body}\n```")
        elif kind == "list":
            parts.append("\n".join(f"- {line}" for line in body))
        elif kind == "table":
            header, rows = body
            if header:
                parts.append(markdown_table(header, rows))
        elif kind == "img":
            name, caption = body
            parts.append(f"![{name}]({name})\n\n*{caption}*")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` → HTML (the only inline markup the report uses)."""
    import re
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _render_html(blocks, title: str) -> str:
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
           "td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}"
           "figcaption{font-style:italic;color:#555;margin-bottom:1.5em}pre{background:#f6f6f6;padding:8px}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body>"]
    for kind, body in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(body)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(body)}</p>")
        elif kind == "code":
            parts.append(f"<pre>{html.escape(body)}</pre>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in body) + "</ul>")
        elif kind == "table":
            header, rows = body
            if header:
                parts.append(_html_table(header, rows))
        elif kind == "img":
            name, caption = body
            parts.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(name)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
