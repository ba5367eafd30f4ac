"""Evaluate probability routers and choice baselines on one test split, on the same queries for all
(METHOD.md, "Metrics" and "Baselines").

For every probability router (prefill router, semantic trunk net, kNN, task label):
- probability quality on test: per-target ROC-AUC and their mean, Brier score, ECE, calibration bins;
- the cost-accuracy curve on test from sweeping the policy parameter (tau or lambda), its AIQ over one
  cost range common to all routers, and APGR for two-target pools;
- operating points whose parameter is CHOSEN ON THE VALIDATION CURVE (best accuracy, cheapest point
  matching the best single target, best point at the cheapest target's cost) and the policy's
  default parameter, each then scored on test. The same points read off the test curve are kept as
  ``test_readout``, marked optimistic: choosing a parameter on test overstates what it reaches.
Every scored point (and every baseline: random, always-cheapest, always-best-single, oracle) gets
accuracy, gap closed, total and per-query cost, cost savings vs the most expensive target, accuracy
on the disagree zone, and a paired bootstrap CI of its accuracy difference with the test's best
single target (the gap-closed reference).

Cost is evaluated on the true per-query cost where the data has it; a missing true cost falls back to
the expected cost and is counted. Missing labels are counted, never scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ray_router.evaluation import metrics
from ray_router.evaluation.baselines import best_single_choice, cheapest_choice, random_choice
from ray_router.policy.policies import SWEEPABLE, Decision, PolicyConfig, default_sweep_values, route, sweep

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RouterScores:
    """A probability router's predicted correctness: ``proba_test`` (n_test, K) and, to choose
    operating points, ``proba_val`` (n_val, K) on the validation split (None: default point only)."""

    name: str
    proba_test: np.ndarray
    proba_val: np.ndarray | None = None


@dataclass(frozen=True)
class SplitData:
    """Labels and costs of one split: ``labels`` (n, K) in [0, 1], NaN = missing; ``expected_cost``
    (n, K) or (K,), what the policies route on; ``true_cost`` (n, K) per-query cost, NaN = unknown
    (None: unknown everywhere), what cost is evaluated on."""

    labels: np.ndarray
    expected_cost: np.ndarray
    true_cost: np.ndarray | None = None


class _Split:
    """Checked arrays of a SplitData: labels, routing cost, evaluation cost and its fallback mask."""

    def __init__(self, data: SplitData, n_targets: int, what: str):
        self.labels = np.asarray(data.labels, dtype=float)
        if self.labels.ndim != 2 or self.labels.shape[1] != n_targets:
            raise ValueError(f"{what} labels must be (n, {n_targets}), got {self.labels.shape}")
        self.expected = np.broadcast_to(np.asarray(data.expected_cost, dtype=float), self.labels.shape)
        if not np.isfinite(self.expected).all():
            raise ValueError(f"{what} expected_cost must be finite")
        true_cost = np.full(self.labels.shape, np.nan) if data.true_cost is None else np.asarray(data.true_cost, float)
        if true_cost.shape != self.labels.shape:
            raise ValueError(f"{what} true_cost must be {self.labels.shape}, got {true_cost.shape}")
        self.cost_from_expected = np.isnan(true_cost)
        self.cost = np.where(self.cost_from_expected, self.expected, true_cost)
        self.n = self.labels.shape[0]

    def missing_labels(self) -> dict:
        missing = np.isnan(self.labels)
        return {
            "cells": int(missing.sum()),
            "per_target": missing.sum(axis=0).tolist(),
            "queries_without_any_label": int(missing.all(axis=1).sum()),
        }

    def curve(self, decisions: list[Decision], values: np.ndarray) -> dict:
        """Cost-accuracy points of a parameter sweep (one per value)."""
        outcomes = [metrics.routed_outcome(d.choice, self.labels, self.cost) for d in decisions]
        return {
            "parameter": values.tolist(),
            "accuracy": [o["accuracy"] for o in outcomes],
            "mean_cost": [o["mean_cost"] for o in outcomes],
            "total_cost": [o["total_cost"] for o in outcomes],
            "n_missing_label": [o["n_missing_label"] for o in outcomes],
            "choice_share": [o["choice_share"] for o in outcomes],
        }


class _TestScorer:
    """Scores choices on the test split against its references (best single, oracle, most expensive)."""

    def __init__(self, split: _Split, target_names: list[str], n_boot: int, seed: int):
        self.split, self.names, self.n_boot, self.seed = split, target_names, n_boot, seed
        self.single = metrics.per_target_outcomes(split.labels, split.cost)
        self.best = metrics.best_single(split.labels, split.cost)
        self.oracle_accuracy = metrics.oracle_accuracy(split.labels)
        total = self.single["total_cost"]
        self.most_expensive = int(np.argmax(total))
        self.cheapest = int(np.argmin(total))
        self.best_correct = split.labels[:, self.best]

    def summary(self, choice: np.ndarray) -> dict:
        """Every metric of routing each test query to ``choice``."""
        split = self.split
        outcome = metrics.routed_outcome(choice, split.labels, split.cost)
        rows = np.arange(split.n)
        correct = split.labels[rows, choice]
        try:
            difference = dict(zip(("difference", "ci_low", "ci_high"), metrics.paired_bootstrap_ci(
                correct, self.best_correct, n_boot=self.n_boot, seed=self.seed)))
        except ValueError:  # no query with both labels known
            difference = {"difference": math.nan, "ci_low": math.nan, "ci_high": math.nan}
        return {
            **outcome,
            "n_cost_from_expected": int(split.cost_from_expected[rows, choice].sum()),
            "gap_closed": self._gap_closed(correct),
            "cost_savings": metrics.cost_savings(outcome["total_cost"], self.single["total_cost"][self.most_expensive]),
            "accuracy_on_disagreement": metrics.accuracy_on_disagreement(choice, split.labels),
            "accuracy_vs_best_single": difference,
        }

    def _gap_closed(self, correct: np.ndarray) -> float:
        """Gap closed on the queries whose chosen target has a label, with the best single target and
        the oracle scored on those same queries (all queries when no label is missing)."""
        scored = ~np.isnan(correct)
        best = self.best_correct[scored]
        if not scored.any() or np.isnan(best).all():
            return math.nan
        return metrics.gap_closed(float(correct[scored].mean()), float(np.nanmean(best)),
                                  metrics.oracle_accuracy(self.split.labels[scored]))

    def reference(self) -> dict:
        def target(k: int) -> dict:
            return {"index": k, "name": self.names[k], "accuracy": self.single["accuracy"][k],
                    "mean_cost": self.single["mean_cost"][k], "total_cost": self.single["total_cost"][k]}

        return {
            "best_single": target(self.best),
            "oracle_accuracy": self.oracle_accuracy,
            "most_expensive": target(self.most_expensive),
            "cheapest": target(self.cheapest),
        }


def evaluate(
    routers: list[RouterScores],
    target_names: list[str],
    test: SplitData,
    val: SplitData | None = None,
    *,
    labels_train: np.ndarray | None = None,
    policy_kind: str = "tolerance",
    sweep_values: np.ndarray | None = None,
    seed: int = 0,
    n_boot: int = 2000,
) -> dict:
    """Evaluate ``routers`` and the baselines on ``test``; see the module docstring.

    ``val`` (with each router's ``proba_val``) chooses the operating points. ``labels_train`` chooses
    the always-best-single baseline (validation labels when it is None; never test labels).
    ``policy_kind`` is "tolerance" (sweeps tau) or "utility" (sweeps lambda) over ``sweep_values``
    (default: policies.default_sweep_values). ``seed`` drives the random baseline and the bootstrap.

    Returns a JSON-ready dict of plain Python values: undefined numbers are None (NaN in the
    metrics), an infinite sweep parameter is the string "inf". Keys: format_version, targets, policy,
    data (sizes, missing labels, costs from expected), reference (best single, oracle, most expensive
    and cheapest targets on test, AIQ cost range, AIQ of mixing single targets, the APGR pair),
    single_targets (per-target test accuracy and cost, Pareto front), agreement_zones, routers (per
    router: probability, curve, val_curve, aiq, apgr, operating_points, test_readout), baselines, notes.
    """
    names = list(target_names)
    if policy_kind not in SWEEPABLE:
        raise ValueError(f"policy_kind must be one of {', '.join(SWEEPABLE)}, got {policy_kind!r}")
    values = default_sweep_values(policy_kind) if sweep_values is None else np.asarray(sweep_values, dtype=float)
    test_split = _Split(test, len(names), "test")
    val_split = None if val is None else _Split(val, len(names), "validation")
    _check_routers(routers, test_split, val_split)
    scorer = _TestScorer(test_split, names, n_boot, seed)
    cost_range = _common_cost_range(scorer.single["mean_cost"])
    notes = [
        "Operating points are chosen on the validation curve and scored on test; test_readout reads "
        "the same points off the test curve and is optimistic.",
        f"accuracy_vs_best_single: paired bootstrap (95 %, {n_boot} resamples) of router minus "
        f"{names[scorer.best]} (the test's best single target) over queries where both labels are known.",
    ]
    if test.true_cost is None:
        notes.append("No true per-query test cost: cost is evaluated on the expected cost.")

    router_results = [
        _evaluate_router(router, scorer, val_split, names, policy_kind, values, cost_range) for router in routers
    ]
    baselines, best_single_source = _evaluate_baselines(scorer, val_split, labels_train, names, seed)
    single = scorer.single
    reference = scorer.reference()
    reference["aiq_cost_range"] = list(cost_range) if cost_range else None
    scored = np.flatnonzero(np.isfinite(single["accuracy"]))  # targets with any known test label
    reference["aiq_single_targets"] = metrics.aiq(single["mean_cost"][scored], single["accuracy"][scored], cost_range)
    if len(names) == 2:
        reference["apgr_pair"] = {"strong": names[scorer.best], "weak": names[1 - scorer.best]}
    results = {
        "format_version": FORMAT_VERSION,
        "targets": names,
        "policy": {
            "kind": policy_kind,
            "parameter": SWEEPABLE[policy_kind],
            "values": values.tolist(),
            "default": _default_parameter(policy_kind),
        },
        "data": {
            "n_test": test_split.n,
            "n_val": None if val_split is None else val_split.n,
            "test_missing_labels": test_split.missing_labels(),
            "val_missing_labels": None if val_split is None else val_split.missing_labels(),
            "test_cost_cells_from_expected": int(test_split.cost_from_expected.sum()),
            "best_single_chosen_on": best_single_source,
        },
        "reference": reference,
        "single_targets": {
            "accuracy": single["accuracy"].tolist(),
            "n_scored": single["n_scored"].tolist(),
            "mean_cost": single["mean_cost"].tolist(),
            "total_cost": single["total_cost"].tolist(),
            "pareto_front": scored[
                metrics.pareto_front(single["mean_cost"][scored], single["accuracy"][scored])].tolist(),
        },
        "agreement_zones": metrics.agreement_zones(test_split.labels),
        "routers": router_results,
        "baselines": baselines,
        "notes": notes,
    }
    return to_plain(results)


def _evaluate_router(
    router: RouterScores,
    scorer: _TestScorer,
    val: _Split | None,
    names: list[str],
    kind: str,
    values: np.ndarray,
    cost_range: tuple[float, float] | None,
) -> dict:
    test = scorer.split
    proba = np.asarray(router.proba_test, dtype=float)
    auc = metrics.roc_auc_per_target(proba, test.labels)
    probability = {
        "auc_per_target": auc.tolist(),
        "mean_auc": float(np.nanmean(auc)) if not np.isnan(auc).all() else math.nan,
        "n_targets_without_auc": int(np.isnan(auc).sum()),
        "brier": metrics.brier_score(proba, test.labels),
        "ece": metrics.expected_calibration_error(proba, test.labels),
        "calibration": {key: value.tolist() for key, value in metrics.calibration_curve(proba, test.labels).items()},
    }
    decisions = sweep(proba, test.expected, kind, values, names)
    curve = test.curve(decisions, values)
    finite = _finite_points(curve)
    result = {
        "name": router.name,
        "probability": probability,
        "curve": curve,
        "val_curve": None,
        "aiq": metrics.aiq(np.array(curve["mean_cost"])[finite], np.array(curve["accuracy"])[finite], cost_range)
        if finite.size else math.nan,
        "apgr": _apgr(curve, finite, scorer) if len(names) == 2 else None,
        "operating_points": {},
        "test_readout": _readout(curve, scorer.single),
    }
    if val is not None and router.proba_val is not None:
        val_decisions = sweep(np.asarray(router.proba_val, dtype=float), val.expected, kind, values, names)
        val_curve = val.curve(val_decisions, values)
        result["val_curve"] = val_curve
        val_single = metrics.per_target_outcomes(val.labels, val.cost)
        for name, index in _readout_indices(val_curve, val_single).items():
            result["operating_points"][name] = _operating_point(
                "validation", index, values, val_curve, scorer, decisions)
    default = route(proba, test.expected, PolicyConfig(kind=kind), names)
    result["operating_points"]["default"] = {
        "chosen_on": "default",
        "reached": True,
        "parameter": _default_parameter(kind),
        "sweep_index": None,
        "validation": None,
        "test": scorer.summary(default.choice),
    }
    return result


def _operating_point(
    chosen_on: str,
    index: int | None,
    values: np.ndarray,
    val_curve: dict,
    scorer: _TestScorer,
    decisions: list[Decision],
) -> dict:
    if index is None:
        return {"chosen_on": chosen_on, "reached": False, "parameter": None, "sweep_index": None,
                "validation": None, "test": None}
    return {
        "chosen_on": chosen_on,
        "reached": True,
        "parameter": float(values[index]),
        "sweep_index": index,
        "validation": {"accuracy": val_curve["accuracy"][index], "mean_cost": val_curve["mean_cost"][index]},
        "test": scorer.summary(decisions[index].choice),
    }


def _readout_indices(curve: dict, single: dict) -> dict[str, int | None]:
    """Sweep indices of best_accuracy, match_best_single and at_cheapest_cost on ``curve``, with the
    single targets of the same split as references (points with undefined accuracy are skipped)."""
    finite = _finite_points(curve)
    targets = np.flatnonzero(np.isfinite(single["accuracy"]))
    if finite.size == 0 or targets.size == 0:
        return {"best_accuracy": None, "match_best_single": None, "at_cheapest_cost": None}
    points = metrics.operating_points(
        np.array(curve["mean_cost"])[finite], np.array(curve["accuracy"])[finite],
        single["mean_cost"][targets], single["accuracy"][targets],
    )

    def sweep_index(key: str) -> int | None:
        return None if points[key] is None else int(finite[points[key]])

    return {
        "best_accuracy": sweep_index("index_best_accuracy"),
        "match_best_single": sweep_index("index_match_best_single"),
        "at_cheapest_cost": sweep_index("index_at_cheapest_cost"),
    }


def _readout(curve: dict, single: dict) -> dict:
    """The operating points read off the TEST curve (optimistic: the parameter is chosen on test)."""
    readout = {}
    for name, index in _readout_indices(curve, single).items():
        readout[name] = None if index is None else {
            "parameter": curve["parameter"][index],
            "sweep_index": index,
            "accuracy": curve["accuracy"][index],
            "mean_cost": curve["mean_cost"][index],
        }
    return readout


def _apgr(curve: dict, finite: np.ndarray, scorer: _TestScorer) -> float:
    """APGR of a two-target curve: the strong target is the test's best single, the other the weak."""
    strong = scorer.best
    accuracy = scorer.single["accuracy"]
    fractions = np.array([share[strong] for share in curve["choice_share"]])[finite]
    return metrics.apgr(fractions, np.array(curve["accuracy"])[finite], accuracy[1 - strong], accuracy[strong])


def _evaluate_baselines(
    scorer: _TestScorer, val: _Split | None, labels_train: np.ndarray | None, names: list[str], seed: int
) -> tuple[list[dict], str]:
    test = scorer.split
    if labels_train is not None:
        reference_labels, source = np.asarray(labels_train, dtype=float), "training"
    elif val is not None:
        reference_labels, source = val.labels, "validation"
    else:
        raise ValueError("always-best-single needs labels_train or validation labels (never test labels)")
    mean_expected = test.expected.mean(axis=0)  # tie-break by the cost the router would expect
    best = best_single_choice(test.n, reference_labels, mean_expected)
    choices = [
        ("random", f"a uniformly random target per query (seed {seed})", random_choice(test.n, len(names), seed)),
        ("always-cheapest", "the target with the lowest expected cost per query", cheapest_choice(test.expected)),
        ("always-best-single", f"{names[best[0]]}, the most accurate target on the {source} labels", best),
        ("oracle", "the cheapest right target per query (test labels: an upper bound)",
         metrics.oracle_choice(test.labels, test.cost)),
    ]
    baselines = [
        {"name": name, "description": description, "test": scorer.summary(choice)}
        for name, description, choice in choices
    ]
    return baselines, source


def _check_routers(routers: list[RouterScores], test: _Split, val: _Split | None) -> None:
    seen = set()
    for router in routers:
        if router.name in seen:
            raise ValueError(f"two routers are named {router.name!r}")
        seen.add(router.name)
        if np.shape(router.proba_test) != test.labels.shape:
            raise ValueError(
                f"{router.name}: proba_test must be {test.labels.shape}, got {np.shape(router.proba_test)}")
        if router.proba_val is not None and val is not None and np.shape(router.proba_val) != val.labels.shape:
            raise ValueError(f"{router.name}: proba_val must be {val.labels.shape}, got {np.shape(router.proba_val)}")


def _common_cost_range(single_mean_cost: np.ndarray) -> tuple[float, float] | None:
    """AIQ's common cost range: from the cheapest to the most expensive single target's mean cost on
    test (None when all cost the same: each curve's own range is used)."""
    low, high = float(np.min(single_mean_cost)), float(np.max(single_mean_cost))
    return (low, high) if high > low else None


def _finite_points(curve: dict) -> np.ndarray:
    """Indices of sweep points with a defined accuracy and cost."""
    accuracy, cost = np.array(curve["accuracy"], dtype=float), np.array(curve["mean_cost"], dtype=float)
    return np.flatnonzero(np.isfinite(accuracy) & np.isfinite(cost))


def _default_parameter(kind: str) -> float:
    return float(getattr(PolicyConfig(kind=kind), SWEEPABLE[kind]))


def to_plain(value):
    """``value`` with numpy scalars and arrays as Python numbers and lists, tuples as lists, NaN as
    None and +-infinity as the strings "inf"/"-inf", so that strict JSON round-trips it exactly."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return None
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return number
    return value
