"""Routing policies: from predicted correctness probabilities and expected costs to one target per query.

Every policy is pure numpy and vectorised over queries. It ranks, for each query, all allowed targets
in its order of preference: the first is the choice, the rest are the fallbacks (what to try when the
chosen target fails). Disallowed targets come last, written as -1.

Inputs shared by all policies:
- ``proba``: (n, K) predicted probability that target k answers query i correctly, in [0, 1].
- ``expected_cost``: (n, K) expected cost of query i on target k (prompt tokens x input price + median
  output tokens x output price), or (K,) when it is the same for every query; finite and >= 0.
- ``target_names``: the K target names, in column order.

Ties are broken deterministically: after the policy's own score (and, for ``anchored``, the anchor), the
lower expected cost wins, then the earlier target (column order). The sort is stable, so equal keys keep column order.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ray_router.errors import UserError
from ray_router.policy.config import SWEEPABLE, PolicyConfig, merge_policy

# Absolute slack on "p >= max p - tau": 0.9 - 0.2 is 0.7000000000000001 in floating point, and a
# target at exactly p = 0.7 must count as within tau.
TOLERANCE_SLACK = 1e-12
# fit_anchored's default: the margin must gain over the anchor by one standard error on validation (the
# one-standard-error rule), decided on validation halves of both benchmark datasets (bench/README.md).
DEFAULT_CONFIDENCE = 1.0
# Margins whose bounds differ by less than this are ties (the same routing can give bounds that differ in the
# last bits).
SCORE_TIE = 1e-12


@dataclass(frozen=True)
class Ranking:
    """A policy's ranking of the targets for n queries over K targets (the router turns it into Decisions).

    ``choice``: (n,) chosen target index. ``fallbacks``: (n, K) every allowed target in order of
    preference (column 0 is ``choice``), then -1 for each disallowed target.
    """

    choice: np.ndarray
    fallbacks: np.ndarray


@dataclass(frozen=True)
class BudgetFit:
    """Result of ``fit_budget_lambda``.

    ``lam``: the smallest lambda meeting the budget (``math.inf`` = always the cheapest target).
    ``mean_cost``: mean cost per validation query at ``lam``. ``feasible``: False when even the
    cheapest target on every query exceeds the budget (``lam`` is then ``math.inf``).
    """

    lam: float
    mean_cost: float
    feasible: bool


def allowed_mask(target_names: list[str], allowed: list[str] | None) -> np.ndarray:
    """(K,) bool: which targets may be chosen. Unknown names in ``allowed`` raise UserError."""
    if allowed is None:
        return np.ones(len(target_names), dtype=bool)
    unknown = [name for name in allowed if name not in target_names]
    if unknown:
        raise UserError(
            f"allowed target(s) {', '.join(unknown)} not in this router's targets: {', '.join(target_names)}"
        )
    return np.array([name in allowed for name in target_names])


def route(
    proba: np.ndarray, expected_cost: np.ndarray, config: PolicyConfig, target_names: list[str]
) -> Ranking:
    """Apply the policy in ``config`` to every query; see the module and PolicyConfig docstrings."""
    p, cost = _checked_inputs(proba, expected_cost, target_names)
    allowed = allowed_mask(target_names, config.allowed)
    if config.kind == "argmax":
        keys = (-p, cost)
    elif config.kind == "tolerance":
        keys = _tolerance_keys(p, cost, allowed, config.tau)
    elif config.kind == "anchored":
        keys = _anchored_keys(p, cost, allowed, _anchor_index(config.anchor, target_names), config.margin, config.lam)
    else:
        keys = _utility_keys(p, cost, allowed, config.lam)
    return _rank(keys, allowed)


def sweep(
    proba: np.ndarray,
    expected_cost: np.ndarray,
    base: PolicyConfig,
    values: np.ndarray,
    target_names: list[str],
) -> list[Ranking]:
    """One ranking per value of `base`'s swept parameter, for cost-accuracy curves: tau for ``tolerance``,
    lambda for ``utility`` and ``anchored``. (``budget`` is ``utility`` with a fitted lambda, so its
    curve is the utility curve.)"""
    if base.kind not in SWEEPABLE:
        raise UserError(f"cannot sweep policy {base.kind!r}: choose one of {', '.join(SWEEPABLE)}")
    parameter = SWEEPABLE[base.kind]
    configs = [merge_policy(base, {parameter: float(value)}) for value in np.asarray(values, dtype=float)]
    return [route(proba, expected_cost, config, target_names) for config in configs]


def default_sweep_values(kind: str) -> np.ndarray:
    """A parameter grid spanning a policy's whole cost range: tau in [0, 1] by 0.025 for ``tolerance``
    (tau = 1 is always the cheapest); lambda = 0, 1e-3 ... 1e3 (log-spaced), inf for ``utility`` and
    ``anchored``."""
    if kind == "tolerance":
        return np.linspace(0.0, 1.0, 41)
    if kind in ("utility", "anchored"):
        return np.concatenate([[0.0], np.logspace(-3, 3, 61), [math.inf]])
    raise UserError(f"cannot sweep policy {kind!r}: choose one of {', '.join(SWEEPABLE)}")


def fit_budget_lambda(
    proba_val: np.ndarray,
    cost_val: np.ndarray,
    budget: float,
    target_names: list[str],
    *,
    allowed: list[str] | None = None,
    true_cost_val: np.ndarray | None = None,
    rel_tol: float = 1e-9,
) -> BudgetFit:
    """Smallest utility lambda whose mean cost per validation query is <= ``budget``.

    Routing uses ``cost_val`` (the expected cost the router sees); the mean cost is measured on
    ``true_cost_val`` when given (its NaN entries fall back to ``cost_val``), else on ``cost_val``.
    With the routing cost, the mean cost is non-increasing in lambda, so bisection (to a relative
    width ``rel_tol``) finds the smallest feasible lambda; with true costs it returns a feasible lambda
    at a feasibility boundary. lambda = 0 (argmax) is returned when it already meets the budget. When
    even lambda = inf (the cheapest allowed target for every query) exceeds the budget, the result is
    ``BudgetFit(inf, cheapest mean cost, feasible=False)`` and a RuntimeWarning is issued.
    """
    if not budget > 0:
        raise UserError(f"budget must be > 0, got {budget}")
    p, cost = _checked_inputs(proba_val, cost_val, target_names)
    measured = cost
    if true_cost_val is not None:
        true_cost = np.broadcast_to(np.asarray(true_cost_val, dtype=float), p.shape)
        measured = np.where(np.isnan(true_cost), cost, true_cost)
    rows = np.arange(p.shape[0])

    def mean_cost(lam: float) -> float:
        config = PolicyConfig.from_user(kind="utility", lam=lam, allowed=allowed)
        return float(measured[rows, route(p, cost, config, target_names).choice].mean())

    if mean_cost(0.0) <= budget:
        return BudgetFit(0.0, mean_cost(0.0), True)
    cheapest = mean_cost(math.inf)
    if cheapest > budget:
        warnings.warn(
            f"budget {budget:g} cannot be met on validation: even the cheapest allowed target costs "
            f"{cheapest:g} per query on average; routing to the cheapest target always",
            RuntimeWarning,
            stacklevel=2,
        )
        return BudgetFit(math.inf, cheapest, False)
    low, high = 0.0, 1.0
    while mean_cost(high) > budget:
        low, high = high, 2.0 * high
        if high > 1e15:  # cost gaps too small for any finite lambda to matter
            return BudgetFit(math.inf, cheapest, True)
    while high - low > rel_tol * high:
        middle = 0.5 * (low + high)
        if mean_cost(middle) <= budget:
            high = middle
        else:
            low = middle
    return BudgetFit(high, mean_cost(high), True)


def _checked_inputs(
    proba: np.ndarray, expected_cost: np.ndarray, target_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(target_names):
        raise ValueError(f"proba must be (n, {len(target_names)}) for targets {target_names}, got {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("proba must hold probabilities in [0, 1] (no NaN)")
    cost = np.asarray(expected_cost, dtype=float)
    if cost.shape not in {(len(target_names),), p.shape}:
        raise ValueError(f"expected_cost must be {p.shape} or ({len(target_names)},), got {cost.shape}")
    if not np.isfinite(cost).all() or (cost < 0).any():
        raise ValueError("expected_cost must be finite and >= 0 for every target")
    return p, np.broadcast_to(cost, p.shape)


def _tolerance_keys(
    p: np.ndarray, cost: np.ndarray, allowed: np.ndarray, tau: float
) -> tuple[np.ndarray, ...]:
    """Within-tau targets first, cheapest first (then higher p); the others after, by p then cost."""
    best = np.where(allowed, p, -np.inf).max(axis=1, keepdims=True)
    return _within_keys(p, cost, p >= best - tau - TOLERANCE_SLACK)


def _anchor_index(anchor: str, target_names: list[str]) -> int:
    if anchor not in target_names:
        raise UserError(f"anchor {anchor!r} is not one of this router's targets: {', '.join(target_names)}")
    return target_names.index(anchor)


def _anchored_keys(
    p: np.ndarray, cost: np.ndarray, allowed: np.ndarray, anchor: int, margin: float | None, lam: float
) -> tuple[np.ndarray, ...]:
    """The utility keys with the anchor's p raised by `margin` (at most 1, which p in [0, 1] never beats; None:
    1), the anchor first on ties of the score. An anchor that is not allowed gets no bonus: plain utility."""
    bonus = 1.0 if margin is None else min(margin, 1.0)
    is_anchor = np.broadcast_to((np.arange(p.shape[1]) == anchor) & allowed[anchor], p.shape)
    first, *rest = _utility_keys(p + bonus * is_anchor, cost, allowed, lam)
    return first, ~is_anchor, *rest


def _within_keys(p: np.ndarray, cost: np.ndarray, within: np.ndarray) -> tuple[np.ndarray, ...]:
    """Targets within the tolerance first, cheapest first (then higher p); the others after, by p then cost."""
    return ~within, np.where(within, cost, -p), np.where(within, -p, cost)


def fit_anchored(
    proba_val: np.ndarray,
    labels_val: np.ndarray,
    cost_val: np.ndarray,
    target_names: list[str],
    *,
    allowed: list[str] | None = None,
    margins: np.ndarray | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    anchor: str | None = None,
) -> PolicyConfig:
    """The anchored policy fitted on validation data: the anchor is `anchor` (e.g. `most_accurate_target` of
    every training label) or else the most accurate allowed target on `labels_val`, the margin the one of
    `margins` (default 0 to 1 by 0.01) whose gain over the anchor at lam = 0 has the highest lower bound: the
    mean paired gain (routed minus anchor correct, on the queries with both labels) minus `confidence`
    standard errors of it. Ties go to the
    smallest margin (the one that leaves the cost trade-off the most room). A margin of 1 keeps the anchor
    on every query (gain 0, bound 0), so the policy leaves the anchor only where validation says, with
    `confidence` standard errors to spare, that it gains; `confidence` = 0 is the best validation accuracy."""
    if not confidence >= 0:
        raise UserError(f"confidence must be >= 0 (standard errors), got {confidence}")
    p, cost = _checked_inputs(proba_val, cost_val, target_names)
    labels = np.asarray(labels_val, dtype=float)
    anchor = _anchor_index(anchor or most_accurate_target(labels, cost.mean(axis=0), target_names, allowed),
                           target_names)
    grid = np.linspace(0, 1, 101) if margins is None else np.asarray(margins, dtype=float)
    rows = np.arange(p.shape[0])

    def gain_bound(margin: float) -> float:
        config = PolicyConfig(kind="anchored", anchor=target_names[anchor], margin=margin, allowed=allowed)
        gain = labels[rows, route(p, cost, config, target_names).choice] - labels[:, anchor]
        gain = gain[np.isfinite(gain)]
        if gain.size == 0:
            return -math.inf
        spread = gain.std(ddof=1) / math.sqrt(gain.size) if gain.size > 1 else 0.0
        return float(gain.mean() - confidence * spread)

    scores = np.array([gain_bound(margin) for margin in grid])
    margin = float(grid[scores >= scores.max() - SCORE_TIE].min())
    return PolicyConfig(kind="anchored", anchor=target_names[anchor], margin=margin, allowed=allowed)


def most_accurate_target(labels: np.ndarray, mean_cost: np.ndarray, target_names: list[str],
                         allowed: list[str] | None = None) -> str:
    """The allowed target right on the largest share of its labelled queries in `labels` ((n, K), NaN =
    unknown); ties: the lower `mean_cost` ((K,)), then column order. UserError when no allowed target has a
    label."""
    labels = np.asarray(labels, dtype=float)
    known = ~np.isnan(labels)
    candidates = allowed_mask(target_names, allowed) & known.any(axis=0)
    if not candidates.any():
        raise UserError("no allowed target has a label to choose the anchor on")
    accuracy = np.where(known, labels, 0).sum(axis=0) / np.maximum(known.sum(axis=0), 1)
    accuracy = np.where(candidates, accuracy, -np.inf)
    return target_names[int(np.lexsort((np.arange(len(target_names)), np.asarray(mean_cost), -accuracy))[0])]


def _utility_keys(
    p: np.ndarray, cost: np.ndarray, allowed: np.ndarray, lam: float
) -> tuple[np.ndarray, ...]:
    """Highest p - lam * c_norm first (c_norm: per-query min-max over allowed targets), then cost."""
    if math.isinf(lam):
        return cost, -p
    allowed_cost_low = np.where(allowed, cost, np.inf).min(axis=1, keepdims=True)
    allowed_cost_high = np.where(allowed, cost, -np.inf).max(axis=1, keepdims=True)
    spread = allowed_cost_high - allowed_cost_low
    c_norm = np.divide(cost - allowed_cost_low, spread, out=np.zeros_like(cost), where=spread > 0)
    return -(p - lam * c_norm), cost


def _rank(keys: tuple[np.ndarray, ...], allowed: np.ndarray) -> Ranking:
    """Sort each row by (disallowed, *keys), most significant first; stable, so column order breaks ties."""
    disallowed = np.broadcast_to(~allowed, keys[0].shape)
    order = np.lexsort(tuple(reversed((disallowed, *keys))), axis=-1)
    order[:, int(allowed.sum()) :] = -1
    return Ranking(choice=order[:, 0].copy(), fallbacks=order)
