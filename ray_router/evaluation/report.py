"""The evaluation report: metrics.json, report.md and three PNG plots, from the ``EvaluationResults`` of
``evaluation.evaluate`` (written atomically, to a local folder or a cloud URI).

- ``metrics.json``: ``results.to_json()``, strict JSON (null = undefined or not applicable, "inf" = an
  infinite parameter).
- ``report.md``: the headline table, operating points, per-target tables, agreement zones, notes.
- ``cost_accuracy.png``: each router's test curve, its validation-chosen points, the baselines, and
  every single target as a numbered point with the targets' Pareto front.
- ``auc_per_target.png``: per-target ROC-AUC, one bar per router (prefill vs semantic side by side).
- ``calibration.png``: reliability diagram and the number of (query, target) cells per bin.
"""

from __future__ import annotations

import io
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be set first)
import numpy as np  # noqa: E402

from ray_router.data import storage  # noqa: E402
from ray_router.evaluation.evaluation import (  # noqa: E402
    EvaluationResults,
    OperatingPoint,
    RouterResult,
    ScoredPoint,
)

FILES = ("metrics.json", "report.md", "cost_accuracy.png", "auc_per_target.png", "calibration.png")
MAX_NAME = 40  # longer target names are shortened in plots
HEADLINE_POINT = "best_accuracy"
POINT_TITLES = {
    "best_accuracy": "best accuracy",
    "match_best_single": "match best single",
    "at_cheapest_cost": "at cheapest cost",
    "default": "default",
}
BASELINE_MARKERS = {"random": "X", "always-cheapest": "v", "always-best-single": "s", "oracle": "*"}


def write_report(results: EvaluationResults, out_dir: str | os.PathLike) -> None:
    """Write metrics.json, report.md, cost_accuracy.png, auc_per_target.png and calibration.png into
    ``out_dir`` (created if needed), each atomically."""
    base = os.fspath(out_dir)
    storage.makedirs(base)
    outputs = {
        "metrics.json": json.dumps(results.to_json(), indent=2, allow_nan=False).encode(),
        "report.md": markdown_report(results).encode(),
        "cost_accuracy.png": _png(plot_cost_accuracy(results)),
        "auc_per_target.png": _png(plot_auc_per_target(results)),
        "calibration.png": _png(plot_calibration(results)),
    }
    for name, data in outputs.items():
        storage.write_bytes_atomic(storage.join(base, name), data)


def headline_table(results: EvaluationResults) -> str:
    """Router vs baselines on test, as an aligned Markdown table (also readable in a terminal).

    Each router is shown at its best-accuracy point, the policy's most accurate setting (or at the policy's
    default parameter when it had no validation scores)."""
    header = ["router", "point", "accuracy", "Δ vs best single [95% CI]", "gap closed", "cost savings",
              "cost/query", "mean AUC", "ECE", "missing labels"]
    rows = []
    for router in results.routers:
        point_name, point = headline_point(router)
        rows.append([router.name, _point_label(results, point_name, point), *_summary_cells(point.test),
                     _num(router.probability.mean_auc, 3), _num(router.probability.ece, 3),
                     str(point.test.n_missing_label)])
    for baseline in results.baselines:
        test = baseline.test
        rows.append([baseline.name, "", *_summary_cells(test), "", "", str(test.n_missing_label)])
    return _table(header, rows)


def headline_point(router: RouterResult) -> tuple[str, OperatingPoint]:
    """(name, operating point) shown in the headline: best accuracy (the sweep's most accurate setting) when the
    router has a validation curve, else default."""
    point = router.operating_points.get(HEADLINE_POINT)
    if point is not None and point.reached:
        return HEADLINE_POINT, point
    return "default", router.operating_points["default"]


def markdown_report(results: EvaluationResults) -> str:
    """The whole report.md."""
    data, reference = results.data, results.reference
    policy = results.policy
    parameter = _parameter_symbol(policy.parameter)
    lines = [
        "# Routing evaluation",
        "",
        f"Test split: {data.n_test} queries, {len(results.targets)} targets"
        + (f"; validation split: {data.n_val} queries." if data.n_val else "; no validation split.")
        + f" Policy: `{policy.kind}`, sweeping {parameter} over {len(policy.values)} values"
        + f" (default {parameter} = {_param(policy.default)}).",
        "",
        f"Best single target on test: **{reference.best_single.name}** "
        f"({_pct(reference.best_single.accuracy)}); oracle {_pct(reference.oracle_accuracy)}; "
        f"most expensive target: {reference.most_expensive.name} "
        f"({_money(reference.most_expensive.total_cost)} in total, the cost-savings reference).",
        "",
        "## Headline",
        "",
        headline_table(results),
        "",
        f"Routers at their best-accuracy point, the policy's most accurate setting (the sweep's first "
        f"{parameter}, 0 by default; an anchored policy's anchor and margin fitted on validation), scored on "
        "test (a router without validation scores is shown at the default parameter). Δ is the accuracy "
        "difference with the test's best single target on the same queries, in percentage points, with a "
        "paired bootstrap 95 % interval: an interval containing 0 is no evidence of a difference. Gap closed "
        "= (router − best single) / (oracle − best single), all three on the queries the router's choices "
        "can be scored on (its missing labels left out). Cost savings = 1 − router cost / cost of the "
        f"most expensive target. The always-best-single baseline is chosen on the {data.best_single_chosen_on} "
        "labels; the oracle uses test labels (an upper bound, not a router).",
        "",
        "![cost-accuracy](cost_accuracy.png)",
        "",
        "## Operating points (chosen before test, scored on test)",
        "",
        _operating_points_table(results),
        "",
        f"Points: *best accuracy* = the sweep's most accurate setting (its first {parameter}), not the highest "
        "validation point, which luck favours; *match best single* = cheapest point whose "
        "validation accuracy reaches the validation best single target; *at cheapest cost* = best validation "
        "accuracy at no more than the cheapest target's cost; *default* = the policy's default parameter. "
        "'not reached' = no sweep point qualified on validation.",
        "",
        "### Read off the test curve (optimistic, for reference only)",
        "",
        _readout_table(results),
        "",
        "## Cost-accuracy curve summaries",
        "",
        _curve_summary_table(results),
        "",
        _comparison_section(results),
        "",
        "## Targets on test",
        "",
        _targets_table(results),
        "",
        "![AUC per target](auc_per_target.png)",
        "",
        "## Calibration",
        "",
        "Pooled over every known (query, target) cell, 10 equal-width bins: a calibrated router lies on the "
        "diagonal. ECE = Σ (bin share) × |observed − mean predicted|.",
        "",
        "![calibration](calibration.png)",
        "",
        "## Agreement zones",
        "",
        _agreement_section(results),
        "",
        "## Data",
        "",
        *_data_lines(results),
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in results.notes],
        "",
    ]
    return "\n".join(lines)


def plot_cost_accuracy(results: EvaluationResults) -> plt.Figure:
    """Each router's test cost-accuracy curve with its validation-chosen points, the baselines, and
    the single targets as numbered points (key on the right) with their Pareto front."""
    single = results.single_targets
    names = results.targets
    cost, accuracy = np.array(single.mean_cost, dtype=float), np.array(single.accuracy, dtype=float)
    fig = plt.figure(figsize=(13, 7.5 if len(names) <= 20 else 9.5))
    grid = fig.add_gridspec(1, 2, width_ratios=[3.0, 1.3], wspace=0.04)
    ax, key = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    ax.scatter(cost, accuracy, s=36, color="0.55", edgecolor="white", linewidth=0.6, zorder=7,
               label="single targets (numbered, key above)")
    for k in range(len(names)):
        if np.isfinite(cost[k]) and np.isfinite(accuracy[k]):
            ax.annotate(str(k + 1), (cost[k], accuracy[k]), xytext=(4, 3), textcoords="offset points",
                        fontsize=8, color="0.25")
    front = np.array(single.pareto_front, dtype=int)
    ax.step(cost[front], accuracy[front], where="post", linestyle="--", color="0.55", linewidth=1,
            label="targets' Pareto front")
    colors = plt.get_cmap("tab10").colors
    all_costs = [cost]
    for i, router in enumerate(results.routers):
        color = colors[i % len(colors)]
        x, y = np.array(router.curve.mean_cost, dtype=float), np.array(router.curve.accuracy, dtype=float)
        all_costs.append(x)
        ax.plot(x, y, "-o", color=color, markersize=2.5, linewidth=1.4, label=router.name, zorder=4)
        for name, marker in (("best_accuracy", "*"), ("match_best_single", "D")):
            point = router.operating_points.get(name)
            if point and point.reached:
                ax.scatter(point.test.mean_cost, point.test.accuracy, marker=marker, s=140 if
                           marker == "*" else 55, color=color, edgecolor="black", linewidth=0.7, zorder=6)
    for baseline in results.baselines:
        test = baseline.test
        all_costs.append(np.array([test.mean_cost], dtype=float))
        ax.scatter(test.mean_cost, test.accuracy, marker=BASELINE_MARKERS.get(baseline.name, "P"),
                   s=70, color="black" if baseline.name != "oracle" else "gold", edgecolor="black",
                   linewidth=0.6, zorder=5, label=baseline.name)
    ax.scatter([], [], marker="*", s=140, color="white", edgecolor="black",
               label="best accuracy (most accurate setting)")
    ax.scatter([], [], marker="D", s=55, color="white", edgecolor="black", label="match best single (chosen on val)")
    if _log_scale(np.concatenate(all_costs)):
        ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Cost-accuracy on test ({results.data.n_test} queries), "
                 f"sweeping {_parameter_symbol(results.policy.parameter)}")
    ax.grid(alpha=0.3)
    key.axis("off")
    entries = [f"{k + 1:>2}  {_short(name, 36)}" for k, name in enumerate(names)]
    key.text(0.0, 1.0, "targets\n" + "\n".join(entries), va="top", ha="left", family="monospace",
             fontsize=8 if len(names) <= 20 else 7, transform=key.transAxes)
    key.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="lower left", borderaxespad=0, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.94, bottom=0.08)
    return fig


def plot_auc_per_target(results: EvaluationResults) -> plt.Figure:
    """Horizontal grouped bars: per target, one bar per router's ROC-AUC; the legend gives mean AUCs."""
    names, routers = results.targets, results.routers
    n_routers = max(len(routers), 1)
    height = 1.6 + len(names) * (0.2 + 0.1 * n_routers)
    fig, ax = plt.subplots(figsize=(10, height))
    positions = np.arange(len(names))[::-1]
    bar = 0.8 / n_routers
    colors = plt.get_cmap("tab10").colors
    low = 0.5
    for i, router in enumerate(routers):
        auc = np.array(router.probability.auc_per_target, dtype=float)
        low = min(low, np.nanmin(auc) if np.isfinite(auc).any() else low)
        offsets = positions + 0.4 - bar * (i + 0.5)
        ax.barh(offsets, np.nan_to_num(auc, nan=0.0), height=bar * 0.92, color=colors[i % len(colors)],
                label=f"{router.name} (mean {_num(router.probability.mean_auc, 3)})")
    if not routers:
        ax.text(0.5, 0.5, "no probability router evaluated", ha="center", transform=ax.transAxes)
    ax.axvline(0.5, color="0.3", linestyle=":", linewidth=1)
    ax.set_yticks(positions, [_short(name) for name in names], fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlim(max(0.0, np.floor(low * 10) / 10 - 0.05), 1.0)
    ax.set_xlabel("ROC-AUC on test (0.5 = chance)")
    ax.set_title("Per-target ROC-AUC of the predicted correctness")
    ax.grid(axis="x", alpha=0.3)
    legend_rows = 0
    if routers:
        legend_rows = -(-len(routers) // 2)
        fig.legend(fontsize=8, loc="upper center", ncol=min(len(routers), 2), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.25 * legend_rows + 0.05) / height))
    return fig


def plot_calibration(results: EvaluationResults) -> plt.Figure:
    """Reliability diagram (observed vs mean predicted per bin) and cells per bin, one line per router."""
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(7.5, 8.5), height_ratios=[3, 1.2], sharex=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="perfectly calibrated")
    colors = plt.get_cmap("tab10").colors
    routers = results.routers
    for i, router in enumerate(routers):
        color = colors[i % len(colors)]
        calibration = router.probability.calibration
        predicted = np.array(calibration.mean_predicted, dtype=float)
        observed = np.array(calibration.observed, dtype=float)
        filled = np.isfinite(predicted) & np.isfinite(observed)
        ax.plot(predicted[filled], observed[filled], "-o", color=color, markersize=4,
                label=f"{router.name} (ECE {_num(router.probability.ece, 3)})")
        edges = np.array(calibration.bin_edges, dtype=float)
        width = (edges[1] - edges[0]) / max(len(routers), 1)
        counts.bar(edges[:-1] + width * (i + 0.5), calibration.count, width=width * 0.9, color=color)
    if not routers:
        ax.text(0.5, 0.5, "no probability router evaluated", ha="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed accuracy in bin")
    ax.set_title("Calibration on test (pooled over targets)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    counts.set_yscale("log")
    counts.set_ylabel("cells per bin")
    counts.set_xlabel("predicted probability of a correct answer")
    counts.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _operating_points_table(results: EvaluationResults) -> str:
    header = ["router", "point", "parameter", "val accuracy", "val cost/query", "test accuracy",
              "Δ vs best single [95% CI]", "gap closed", "cost savings", "cost/query", "missing labels"]
    rows = []
    for router in results.routers:
        for name, point in router.operating_points.items():
            label = POINT_TITLES.get(name, name)
            if not point.reached:
                rows.append([router.name, label, "not reached", *[""] * 8])
                continue
            val = point.validation
            val_cells = [_pct(val.accuracy), _money(val.mean_cost)] if val else ["n/a", "n/a"]
            rows.append([
                router.name, label, _param(point.parameter), *val_cells, *_summary_cells(point.test),
                str(point.test.n_missing_label),
            ])
    return _table(header, rows) if rows else "(no probability router)"


def _readout_table(results: EvaluationResults) -> str:
    header = ["router", "best accuracy", "at cost/query", "cost to match best single", "accuracy at cheapest cost"]
    rows = []
    for router in results.routers:
        readout = router.test_readout
        best, match, cheap = readout["best_accuracy"], readout["match_best_single"], readout["at_cheapest_cost"]
        rows.append([
            router.name,
            _pct(best.accuracy) if best else "",
            _money(best.mean_cost) if best else "",
            _money(match.mean_cost) if match else "never",
            _pct(cheap.accuracy) if cheap else "never",
        ])
    return _table(header, rows) if rows else "(no probability router)"


def _comparison_section(results: EvaluationResults) -> str:
    """The first router minus each other router: mean AUC and AIQ, with paired bootstrap intervals."""
    if not results.comparisons:
        return ""
    rows = [[c.router, c.other, _signed(c.mean_auc, 3), _signed(c.aiq, 4)] for c in results.comparisons]
    return ("### Paired differences on the test queries\n\n"
            + _table(["router", "minus", "Δ mean AUC [95% CI]", "Δ AIQ [95% CI]"], rows)
            + "\n\nThe same bootstrap resamples of the test queries for both routers: an interval above 0 is "
              "evidence that the first router is better.")


def _signed(difference, digits: int) -> str:
    if math.isnan(difference.difference):
        return "n/a"
    return (f"{difference.difference:+.{digits}f} [{difference.ci_low:+.{digits}f}, "
            f"{difference.ci_high:+.{digits}f}]")


def _curve_summary_table(results: EvaluationResults) -> str:
    reference = results.reference
    cost_range = reference.aiq_cost_range
    two_targets = len(results.targets) == 2
    header = ["curve", "AIQ", "validation AIQ"] + (["APGR"] if two_targets else [])
    rows = [[router.name, _num(router.aiq, 4), "n/a" if router.val_aiq is None else _num(router.val_aiq, 4)]
            + ([_num(router.apgr, 3)] if two_targets else []) for router in results.routers]
    mixing = ["mixing single targets", _num(reference.aiq_single_targets, 4), ""]
    rows.append(mixing + (["0.500"] if two_targets else []))
    where = (f"over the common cost range {_money(cost_range[0])} to {_money(cost_range[1])} per query "
             "(cheapest to most expensive single target)") if cost_range else "over each curve's own cost range"
    text = (f"AIQ (RouterBench) = mean accuracy of the non-decreasing convex hull {where}; below a curve's "
            "cheapest point it counts 0. 'Mixing single targets' is the hull of the targets alone. Validation "
            "AIQ: the same on the validation curve, over the validation split's own cost range (what a choice "
            "between routers or policies can be made on).")
    if two_targets:
        pair = reference.apgr_pair
        text += (f" APGR (RouteLLM) = mean performance gap recovered over the share of calls to "
                 f"{pair.strong} (strong) vs {pair.weak} (weak); 0.5 = random mixing.")
    return _table(header, rows) + "\n\n" + text


def _targets_table(results: EvaluationResults) -> str:
    single, names = results.single_targets, results.targets
    front = set(single.pareto_front)
    missing = results.data.test_missing_labels.per_target
    header = ["#", "target", "accuracy", "cost/query", "total cost", "Pareto", "missing labels"]
    header += [f"AUC {router.name}" for router in results.routers]
    rows = []
    for k, name in enumerate(names):
        row = [str(k + 1), name, _pct(single.accuracy[k]), _money(single.mean_cost[k]),
               _money(single.total_cost[k]), "yes" if k in front else "", str(missing[k])]
        row += [_num(router.probability.auc_per_target[k], 3) for router in results.routers]
        rows.append(row)
    return _table(header, rows)


def _agreement_section(results: EvaluationResults) -> str:
    zones = results.agreement_zones
    text = (f"Over the {zones.n_rows} test queries with every label known ({zones.n_excluded} left out): "
            f"all targets right {_pct(zones.all_right)}, all wrong {_pct(zones.all_wrong)}, "
            f"they disagree {_pct(zones.disagree)} (where routing can matter).")
    rows = [[router.name, _pct(headline_point(router)[1].test.accuracy_on_disagreement)]
            for router in results.routers]
    rows += [[baseline.name, _pct(baseline.test.accuracy_on_disagreement)] for baseline in results.baselines]
    return text + "\n\n" + _table(["router (headline point)", "accuracy on disagreement"], rows)


def _data_lines(results: EvaluationResults) -> list[str]:
    data, names = results.data, results.targets
    lines = []
    for split, missing in (("Test", data.test_missing_labels), ("Validation", data.val_missing_labels)):
        if missing is None:
            continue
        per_target = ", ".join(f"{names[k]} {n}" for k, n in enumerate(missing.per_target) if n)
        lines.append(f"- {split} labels missing: {missing.cells} cells"
                     + (f" ({per_target})" if per_target else "")
                     + f"; {missing.queries_without_any_label} queries without any label.")
    lines.append(f"- Test cost cells without a true per-query cost (evaluated on the expected cost): "
                 f"{data.test_cost_cells_from_expected}.")
    lines.append("- A query whose chosen target has no label is counted in 'missing labels' and left out of "
                 "that router's accuracy, never scored as right or wrong.")
    return lines


def _summary_cells(test: ScoredPoint) -> list[str]:
    """accuracy, Δ [CI], gap closed, cost savings, cost/query of one scored point."""
    diff = test.accuracy_vs_best_single
    ci = (f"{_pp(diff.difference)} [{_pp(diff.ci_low)}, {_pp(diff.ci_high)}]"
          if not math.isnan(diff.difference) else "n/a")
    return [_pct(test.accuracy), ci, _pct(test.gap_closed), _pct(test.cost_savings), _money(test.mean_cost)]


def _point_label(results: EvaluationResults, name: str, point: OperatingPoint) -> str:
    setting = f"{_parameter_symbol(results.policy.parameter)}={_param(point.parameter)}"
    if point.chosen_on == "validation":
        return f"{POINT_TITLES[name]} (val, {setting})"
    return f"{POINT_TITLES[name]} ({setting})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An aligned Markdown pipe table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *map(line, rows)])


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _pp(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:+.1f}"


def _num(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _money(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"${value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"${value:.2e}"


def _param(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "∞" if value == math.inf else f"{value:.3g}"


def _parameter_symbol(name: str) -> str:
    return {"tau": "τ", "lam": "λ"}.get(name, name)


def _short(name: str, limit: int = MAX_NAME) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _log_scale(costs: np.ndarray) -> bool:
    """Log cost axis when all costs are positive and span more than a factor of 20."""
    finite = costs[np.isfinite(costs)]
    return finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 20


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
