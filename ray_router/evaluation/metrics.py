"""Metrics for routers on a held-out split: accuracy and gap closed, cost and savings, probability
quality (ROC-AUC, Brier, ECE), agreement zones, cost-accuracy curve summaries (AIQ, APGR, operating
points, Pareto front) and paired bootstrap confidence intervals.

Conventions shared by every function:
- ``labels``: (n, K) float, the correctness of target k on query i, in [0, 1]; NaN = missing. A
  missing label is never scored as 0 or 1: rows or cells without a label are left out and counted.
- ``cost``: (n, K) true cost of query i on target k; NaN = unknown. A (K,) vector is broadcast.
- ``choice``: (n,) int index of the target a router picked for each query.
- Where a binary outcome is needed (ROC-AUC, agreement zones) a label >= ``RIGHT_THRESHOLD`` (0.5)
  counts as right.
- Dicts hold plain Python numbers (JSON-ready); NaN marks an undefined value, None an operating
  point that is never reached.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import trapezoid
from sklearn.metrics import roc_auc_score

RIGHT_THRESHOLD = 0.5
ZONES = ("all_right", "all_wrong", "disagree")
INCOMPLETE = "incomplete"  # the zone of a query with a missing label
# Relative slack when comparing a curve's cost with a single target's cost: summing the same
# per-query costs in another order must not make "the cost of the cheapest target" unreachable.
COST_RTOL = 1e-9


def routed_outcome(choice: np.ndarray, labels: np.ndarray, cost: np.ndarray | None = None) -> dict:
    """Outcome of routing each query to ``choice``.

    accuracy: mean chosen label over the queries whose chosen label is known (``n_scored``);
    ``n_missing_label`` queries are left out, never scored. choice_share: fraction of queries sent to
    each target. With ``cost``: total_cost and mean_cost (per query) of the chosen targets over the
    queries whose chosen cost is known; ``n_missing_cost`` counts the others.
    """
    y = _labels(labels)
    chosen = _choice(choice, y)
    rows = np.arange(y.shape[0])
    chosen_label = y[rows, chosen]
    known = ~np.isnan(chosen_label)
    outcome = {
        "n_queries": int(y.shape[0]),
        "n_scored": int(known.sum()),
        "n_missing_label": int((~known).sum()),
        "accuracy": _mean(chosen_label[known]),
        "choice_share": (np.bincount(chosen, minlength=y.shape[1]) / max(y.shape[0], 1)).tolist(),
    }
    if cost is not None:
        chosen_cost = _cost(cost, y.shape)[rows, chosen]
        known_cost = ~np.isnan(chosen_cost)
        outcome.update(
            total_cost=float(chosen_cost[known_cost].sum()),
            mean_cost=_mean(chosen_cost[known_cost]),
            n_missing_cost=int((~known_cost).sum()),
        )
    return outcome


def per_target_outcomes(labels: np.ndarray, cost: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``routed_outcome`` of always choosing each target, as (K,) arrays: accuracy, n_scored and,
    with ``cost``, total_cost and mean_cost (the single-target points of a cost-accuracy plot)."""
    y = _labels(labels)
    outcomes = [routed_outcome(np.full(y.shape[0], k), y, cost) for k in range(y.shape[1])]
    fields = ["accuracy", "n_scored"] + (["total_cost", "mean_cost"] if cost is not None else [])
    return {field: np.array([outcome[field] for outcome in outcomes]) for field in fields}


def target_accuracy(labels: np.ndarray) -> np.ndarray:
    """(K,) each target's mean label over its known labels; NaN for a target without any."""
    return per_target_outcomes(labels)["accuracy"]


def best_single(labels: np.ndarray, cost: np.ndarray | None = None) -> int:
    """Index of the target with the highest accuracy (over its known labels); ties go to the lower
    total cost (when ``cost`` is given), then the earlier target. Use training labels for the
    always-best-single baseline and test labels for the gap-closed reference (METHOD.md).
    ValueError when no label is known."""
    outcomes = per_target_outcomes(labels, cost)
    accuracy = outcomes["accuracy"]
    if np.isnan(accuracy).all():
        raise ValueError("no target has any known label")
    total_cost = outcomes.get("total_cost", np.zeros_like(accuracy))
    is_best = accuracy == np.nanmax(accuracy)
    return int(np.lexsort((np.arange(accuracy.size), total_cost, ~is_best))[0])


def oracle_accuracy(labels: np.ndarray) -> float:
    """Mean over queries of the best known label (max_k y_ik). Queries with no known label are left
    out; where some labels are missing this is the oracle over the known ones (a lower bound)."""
    y = _labels(labels)
    any_known = ~np.isnan(y).all(axis=1)
    return _mean(np.nanmax(y[any_known], axis=1)) if any_known.any() else float("nan")


def oracle_choice(labels: np.ndarray, cost: np.ndarray | None = None) -> np.ndarray:
    """(n,) the oracle router: per query, among the targets with the best known label, the cheapest
    (unknown cost counts as most expensive), then the earliest. A query with no known label (or all
    wrong) goes to its cheapest target. ``routed_outcome`` of it gives oracle accuracy and cost."""
    y = _labels(labels)
    price = np.zeros(y.shape) if cost is None else _cost(cost, y.shape)
    row_best = np.max(np.where(np.isnan(y), -np.inf, y), axis=1, keepdims=True)
    is_best = y == row_best  # False for NaN cells
    order = np.lexsort((np.where(np.isnan(price), np.inf, price), ~is_best), axis=-1)
    return order[:, 0]


def gap_closed(acc_router: float, acc_best_single: float, acc_oracle: float) -> float:
    """(acc_router - acc_best_single) / (acc_oracle - acc_best_single): 1 = oracle, 0 = best single,
    negative = worse than the best single target. NaN when the oracle is no better than the best single."""
    gap = acc_oracle - acc_best_single
    return float((acc_router - acc_best_single) / gap) if gap > 0 else float("nan")


def cost_savings(cost_router_total: float, cost_most_expensive_total: float) -> float:
    """1 - cost_router_total / cost_most_expensive_total (totals over the same test queries); NaN when
    the most expensive target costs nothing."""
    if cost_most_expensive_total <= 0:
        return float("nan")
    return float(1.0 - cost_router_total / cost_most_expensive_total)


def roc_auc_per_target(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K,) ROC-AUC of each target's predicted probability against its known labels (>= 0.5 = right);
    NaN where a target's known labels hold only one class."""
    p, y = _proba_and_labels(proba, labels)
    auc = np.full(y.shape[1], np.nan)
    for k in range(y.shape[1]):
        known = ~np.isnan(y[:, k])
        right = y[known, k] >= RIGHT_THRESHOLD
        if 0 < right.sum() < right.size:
            auc[k] = roc_auc_score(right, p[known, k])
    return auc


def brier_score(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference between probability and label, pooled over all known (query, target) cells."""
    p, y = _proba_and_labels(proba, labels)
    known = ~np.isnan(y)
    return _mean((p[known] - y[known]) ** 2)


def calibration_curve(proba: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Reliability diagram data, pooled over all known (query, target) cells, with ``n_bins``
    equal-width bins on [0, 1]: bin b holds the p with b <= p * n_bins < b + 1 (p = 1 in the last).
    Returns bin_edges (n_bins + 1,), and per bin: count, mean_predicted and observed (mean label),
    NaN for empty bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, y = _proba_and_labels(proba, labels)
    known = ~np.isnan(y)
    p, y = p[known], y[known]
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(bins, weights=p, minlength=n_bins) / count
        observed = np.bincount(bins, weights=y, minlength=n_bins) / count
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "mean_predicted": mean_predicted,
        "observed": observed,
    }


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE = sum over non-empty bins of (count / N) * |observed - mean_predicted|, with the pooled
    equal-width bins of ``calibration_curve`` (N = number of known cells)."""
    curve = calibration_curve(proba, labels, n_bins)
    count = curve["count"]
    if count.sum() == 0:
        return float("nan")
    filled = count > 0
    gaps = np.abs(curve["observed"][filled] - curve["mean_predicted"][filled])
    return float(np.sum(count[filled] * gaps) / count.sum())


def complete_rows(labels: np.ndarray) -> np.ndarray:
    """(n,) bool: the queries with every target's label known."""
    return ~np.isnan(_labels(labels)).any(axis=1)


def agreement_zone_of_rows(labels: np.ndarray) -> np.ndarray:
    """(n,) object array, each query's zone: "all_right", "all_wrong", "disagree", or "incomplete"
    (some label missing)."""
    zones = _zones(labels)  # each query is in exactly one
    return np.select(list(zones.values()), list(zones), default=INCOMPLETE).astype(object)


def agreement_zones(labels: np.ndarray) -> dict:
    """Shares of queries where all targets are right, all wrong, or they disagree (where routing can
    matter), over the ``n_rows`` queries with every label known; ``n_excluded`` queries have a
    missing label and are left out."""
    zone = _zones(labels)
    n_rows = int((~zone[INCOMPLETE]).sum())
    share = (lambda mask: float(mask.sum() / n_rows)) if n_rows else (lambda mask: float("nan"))
    return {
        **{name: share(zone[name]) for name in ZONES},
        "n_rows": n_rows,
        "n_excluded": int(zone[INCOMPLETE].sum()),
    }


def accuracy_on_disagreement(choice: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of ``choice`` on the queries of the disagree zone (every label known, targets not all
    right nor all wrong); NaN when there are none."""
    y = _labels(labels)
    chosen_label = y[np.arange(y.shape[0]), _choice(choice, y)]
    return _mean(chosen_label[_zones(y)["disagree"]])


def nondecreasing_hull(costs: np.ndarray, accuracies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RouterBench's non-decreasing convex hull of (cost, accuracy) points, as its vertices sorted by
    cost: the upper concave envelope of the points (any two points can be mixed at random, so every
    point on a chord is reachable), kept up to its highest accuracy and flat from there to the
    largest cost (spending more never has to lower accuracy)."""
    x, y = _curve(costs, accuracies)
    order = np.lexsort((-y, x))
    x, y = x[order], y[order]
    first_of_cost = np.concatenate([[True], x[1:] != x[:-1]])  # best accuracy at each cost
    hull: list[tuple[float, float]] = []
    for point in zip(x[first_of_cost], y[first_of_cost]):
        while len(hull) >= 2 and _turns_left(hull[-2], hull[-1], point):
            hull.pop()
        hull.append(point)
    hull_x, hull_y = np.array(hull).T
    peak = int(np.argmax(hull_y))
    hull_x, hull_y = hull_x[: peak + 1], hull_y[: peak + 1]
    if x[-1] > hull_x[-1]:
        hull_x, hull_y = np.append(hull_x, x[-1]), np.append(hull_y, hull_y[-1])
    return hull_x, hull_y


def aiq(costs: np.ndarray, accuracies: np.ndarray, cost_range: tuple[float, float] | None = None) -> float:
    """RouterBench's AIQ: (1 / (c_max - c_min)) * integral over [c_min, c_max] of the router's
    non-decreasing convex hull, i.e. the hull's mean accuracy over the cost range.

    ``cost_range`` defaults to the points' own (min cost, max cost); pass one common range (e.g. the
    cheapest to the most expensive single target) to compare routers. Beyond its largest cost the hull
    stays flat at its best accuracy; below its smallest cost the router cannot operate and counts 0
    (as in RouterBench's code, which integrates from 0). A curve with a single cost and no range
    gives that cost's best accuracy."""
    hull_x, hull_y = nondecreasing_hull(costs, accuracies)
    low, high = (hull_x[0], hull_x[-1]) if cost_range is None else map(float, cost_range)
    if high <= low:
        if cost_range is None:
            return float(hull_y[-1])
        raise ValueError(f"cost_range must have c_max > c_min, got {cost_range}")
    start = max(low, hull_x[0])
    if start >= high:
        return 0.0
    inner = hull_x[(hull_x > start) & (hull_x < high)]
    grid = np.concatenate([[start], inner, [high]])
    area = trapezoid(np.interp(grid, hull_x, hull_y), grid)
    return float(area / (high - low))


def apgr(
    strong_fractions: np.ndarray, accuracies: np.ndarray, acc_weak: float, acc_strong: float
) -> float:
    """RouteLLM's APGR for a two-target pool: the average, over the fraction of calls to the strong
    target in [0, 1], of the performance gap recovered PGR = (acc - acc_weak) / (acc_strong - acc_weak),
    integrated with the trapezoidal rule over the router's sweep points. The exact end points (0 calls:
    the weak target, PGR 0; all calls: the strong target, PGR 1) are added when the sweep lacks them;
    points sharing a fraction are averaged (as RouteLLM does). 0.5 = a random router. NaN when
    acc_strong == acc_weak."""
    x, y = _curve(strong_fractions, accuracies)
    if (x < 0).any() or (x > 1).any():
        raise ValueError("strong_fractions must lie in [0, 1]")
    if acc_strong == acc_weak:
        return float("nan")
    pgr = (y - acc_weak) / (acc_strong - acc_weak)
    fractions, position = np.unique(x, return_inverse=True)
    mean_pgr = np.bincount(position, weights=pgr) / np.bincount(position)
    if fractions[0] > 0:
        fractions, mean_pgr = np.insert(fractions, 0, 0.0), np.insert(mean_pgr, 0, 0.0)
    if fractions[-1] < 1:
        fractions, mean_pgr = np.append(fractions, 1.0), np.append(mean_pgr, 1.0)
    return float(trapezoid(mean_pgr, fractions))


def operating_points(
    curve_costs: np.ndarray, curve_accs: np.ndarray, single_costs: np.ndarray, single_accs: np.ndarray
) -> dict:
    """The points a reader wants from a cost-accuracy curve (each as a realised sweep point, no
    interpolation), with the index of that point so the caller can look up its parameter:

    - accuracy_at_cheapest_cost: best accuracy among points costing no more than the cheapest
      single target (``cheapest_target_cost``);
    - cost_to_match_best_single: least cost among points with accuracy >= the best single target's
      (``best_single_accuracy``);
    - best_accuracy and cost_at_best_accuracy: the highest accuracy on the curve at its least cost.
    Values are None when no point qualifies. Computed on a validation curve, the indices choose the
    parameters to report on test (choosing them on the test curve is optimistic).
    """
    x, y = _curve(curve_costs, curve_accs)
    single_x, single_y = _curve(single_costs, single_accs)
    cheapest = int(np.lexsort((-single_y, single_x))[0])
    cheapest_cost = float(single_x[cheapest])
    best_single_acc = float(single_y.max())
    at_cheapest = _best_point(x, y, x <= cheapest_cost + COST_RTOL * abs(cheapest_cost))
    matching = _cheapest_point(x, y, y >= best_single_acc)
    best = _cheapest_point(x, y, y == y.max())
    return {
        "cheapest_target_cost": cheapest_cost,
        "accuracy_at_cheapest_cost": None if at_cheapest is None else float(y[at_cheapest]),
        "index_at_cheapest_cost": at_cheapest,
        "best_single_accuracy": best_single_acc,
        "cost_to_match_best_single": None if matching is None else float(x[matching]),
        "index_match_best_single": matching,
        "best_accuracy": float(y[best]),
        "cost_at_best_accuracy": float(x[best]),
        "index_best_accuracy": best,
    }


def pareto_front(costs: np.ndarray, accs: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (cost <= and accuracy >=, one strictly), sorted by
    cost; of identical points the first is kept."""
    x, y = _curve(costs, accs)
    order = np.lexsort((np.arange(x.size), -y, x))
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(y[order])[:-1]])
    return order[y[order] > best_before]


def paired_bootstrap_ci(
    correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of correct_a - correct_b over the same queries, with a (1 - alpha) percentile bootstrap
    interval from ``n_boot`` resamples of the queries (pairs kept together). Queries where either side
    is NaN (missing label) are left out. Returns (mean_diff, low, high)."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correct_a and correct_b must be equal-length 1-D arrays: {a.shape}, {b.shape}")
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    both_known = ~(np.isnan(a) | np.isnan(b))
    diff = (a - b)[both_known]
    if diff.size == 0:
        raise ValueError("no query has both outcomes known")
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // diff.size)  # bounds memory at ~32 MB of indices per chunk
    boot_means = np.concatenate(
        [diff[rng.integers(0, diff.size, size=(min(chunk, n_boot - done), diff.size))].mean(axis=1)
         for done in range(0, n_boot, chunk)]
    )
    low, high = np.quantile(boot_means, [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(low), float(high)


def _mean(values: np.ndarray) -> float:
    """Mean as a Python float; NaN (without a warning) for no values."""
    return float(values.mean()) if values.size else float("nan")


def _labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels, dtype=float)
    if y.ndim != 2:
        raise ValueError(f"labels must be (n, K), got shape {y.shape}")
    known = y[~np.isnan(y)]
    if (known < 0).any() or (known > 1).any():
        raise ValueError("labels must lie in [0, 1] (NaN = missing)")
    return y


def _cost(cost: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    c = np.asarray(cost, dtype=float)
    if c.shape not in {shape, shape[1:]}:
        raise ValueError(f"cost must be {shape} or {shape[1:]}, got {c.shape}")
    return np.broadcast_to(c, shape)


def _choice(choice: np.ndarray, labels: np.ndarray) -> np.ndarray:
    chosen = np.asarray(choice)
    if chosen.shape != labels.shape[:1] or not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError(f"choice must be ({labels.shape[0]},) integers, got {chosen.shape} {chosen.dtype}")
    if ((chosen < 0) | (chosen >= labels.shape[1])).any():
        raise ValueError(f"choice must hold target indices in [0, {labels.shape[1]})")
    return chosen


def _proba_and_labels(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(labels)
    p = np.asarray(proba, dtype=float)
    if p.shape != y.shape:
        raise ValueError(f"proba {p.shape} and labels {y.shape} must have the same shape")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("proba must hold probabilities in [0, 1] (no NaN)")
    return p, y


def _zones(labels: np.ndarray) -> dict[str, np.ndarray]:
    """{zone: (n,) mask} for the ZONES and INCOMPLETE; every query is in exactly one."""
    y = _labels(labels)
    all_known = complete_rows(y)
    right = np.where(np.isnan(y), False, y >= RIGHT_THRESHOLD)
    all_right, all_wrong = all_known & right.all(axis=1), all_known & ~right.any(axis=1)
    return {
        "all_right": all_right,
        "all_wrong": all_wrong,
        "disagree": all_known & ~all_right & ~all_wrong,
        INCOMPLETE: ~all_known,
    }


def _curve(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if cx.shape != cy.shape or cx.size == 0:
        raise ValueError(f"need the same non-zero number of x and y values, got {cx.size} and {cy.size}")
    if not (np.isfinite(cx).all() and np.isfinite(cy).all()):
        raise ValueError("curve points must be finite (drop points with an undefined cost or accuracy)")
    return cx, cy


def _turns_left(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when a lies on or below the segment o -> b (so a is not an upper-hull vertex)."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]) >= 0


def _best_point(x: np.ndarray, y: np.ndarray, eligible: np.ndarray) -> int | None:
    """Index of the highest y among eligible points (ties: lower x, then first), None if none."""
    if not eligible.any():
        return None
    return int(np.lexsort((np.arange(x.size), x, -y, ~eligible))[0])


def _cheapest_point(x: np.ndarray, y: np.ndarray, eligible: np.ndarray) -> int | None:
    """Index of the lowest x among eligible points (ties: higher y, then first), None if none."""
    if not eligible.any():
        return None
    return int(np.lexsort((np.arange(x.size), -y, x, ~eligible))[0])
