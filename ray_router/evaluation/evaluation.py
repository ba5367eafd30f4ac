"""Evaluate probability routers and choice baselines on one test split, on the same queries for all
(METHOD.md, "Metrics" and "Baselines").

``evaluate`` takes the routers themselves (``RouterInput``: a ``ProbaRouter`` with what it reads for the
test and validation queries), predicts with them and returns ``EvaluationResults``, a tree of dataclasses;
``EvaluationResults.to_json`` gives the plain dict of metrics.json. In the dataclasses NaN marks an
undefined number and None what does not apply (no validation split, an operating point never reached).

For every probability router (prefill router, semantic trunk net, kNN, task label):
- probability quality on test: per-target ROC-AUC and their mean, Brier score, ECE, calibration bins;
- the cost-accuracy curve on test from sweeping the policy parameter (tau or lambda), its AIQ over one
  cost range common to all routers, and APGR for two-target pools; the same curve and AIQ on validation
  (what a choice between routers or policies can be made on without reading test);
- operating points: the policy's most accurate setting (best accuracy: lambda = 0 or tau = 0), points
  whose parameter is CHOSEN ON THE VALIDATION CURVE (cheapest point matching the best single target, best
  point at the cheapest target's cost) and the policy's default parameter, each then scored on test. The
  same points read off the test curve are kept as ``test_readout``, marked optimistic: choosing a parameter
  on test overstates what it reaches.
Every scored point (and every baseline: random, always-cheapest, always-best-single, oracle) gets
accuracy, gap closed, total and per-query cost, cost savings vs the most expensive target, accuracy
on the disagree zone, and a paired bootstrap CI of its accuracy difference with the test's best
single target (the gap-closed reference).

Cost is evaluated on the true per-query cost where the data has it; a missing true cost falls back to
the expected cost and is counted. Missing labels are counted, never scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np

from ray_router.evaluation import metrics
from ray_router.evaluation.baselines import (
    best_single_choice,
    cheapest_choice,
    random_choice,
)
from ray_router.evaluation.comparison import RouterComparison, compare_routers
from ray_router.model.proba_router import ProbaRouter
from ray_router.policy.config import SWEEPABLE, PolicyConfig
from ray_router.policy.policies import (
    Ranking,
    default_sweep_values,
    fit_anchored,
    most_accurate_target,
    route,
    sweep,
)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RouterInput:
    """A router to evaluate: ``router.predict_proba(X_test)`` gives its (n_test, K) probabilities and, to
    choose operating points, ``router.predict_proba(X_val)`` those on the validation split (None: the
    default point only), or ``proba_val`` gives them (rows some copy of the router predicted without training on
    them: out of fold). ``X_test`` and ``X_val`` are whatever the router reads, one row per query."""

    name: str
    router: ProbaRouter
    X_test: Any
    X_val: Any = None
    proba_val: np.ndarray | None = None


@dataclass(frozen=True)
class SplitData:
    """Labels and costs of one split: ``labels`` (n, K) in [0, 1], NaN = missing; ``expected_cost``
    (n, K) or (K,), what the policies route on; ``true_cost`` (n, K) per-query cost, NaN = unknown
    (None: unknown everywhere), what cost is evaluated on."""

    labels: np.ndarray
    expected_cost: np.ndarray
    true_cost: np.ndarray | None = None

    def evaluation_cost(self) -> np.ndarray:
        """(n, K): the true cost, the expected one where the true one is unknown."""
        expected = np.broadcast_to(np.asarray(self.expected_cost, dtype=float), np.shape(self.labels))
        if self.true_cost is None:
            return expected
        true_cost = np.asarray(self.true_cost, dtype=float)
        return np.where(np.isnan(true_cost), expected, true_cost)

    @staticmethod
    def concat(splits: list[SplitData]) -> SplitData:
        """The rows of `splits`, one after the other (an unknown true cost stays unknown)."""

        def cells(split: SplitData, value) -> np.ndarray:
            return np.broadcast_to(np.asarray(np.nan if value is None else value, dtype=float), np.shape(split.labels))

        return SplitData(*(np.vstack([cells(split, getattr(split, name)) for split in splits])
                           for name in ("labels", "expected_cost", "true_cost")))


@dataclass(frozen=True)
class PolicySweep:
    """The policy whose parameter is swept: its ``kind``, the parameter's name ("tau" or "lam"), the swept
    ``values`` (possibly inf) and the policy's ``default`` value."""

    kind: str
    parameter: str
    values: list[float]
    default: float


@dataclass(frozen=True)
class MissingLabels:
    """Missing labels of one split: NaN cells, in total and per target, and queries without any label."""

    cells: int
    per_target: list[int]
    queries_without_any_label: int


@dataclass(frozen=True)
class DataSummary:
    """Split sizes and missing data (``n_val`` and ``val_missing_labels`` None without a validation
    split); ``best_single_chosen_on``: the labels ("training" or "validation") that chose the
    always-best-single baseline."""

    n_test: int
    n_val: int | None
    test_missing_labels: MissingLabels
    val_missing_labels: MissingLabels | None
    test_cost_cells_from_expected: int
    best_single_chosen_on: str


@dataclass(frozen=True)
class ReferenceTarget:
    """One single target on test: its column index and name, accuracy, mean and total cost."""

    index: int
    name: str
    accuracy: float
    mean_cost: float
    total_cost: float


@dataclass(frozen=True)
class ApgrPair:
    """The targets APGR compares in a two-target pool: ``strong`` (the test's best single) and ``weak``."""

    strong: str
    weak: str


@dataclass(frozen=True)
class Reference:
    """The test's references: the best single target (gap closed), the oracle's accuracy, the most
    expensive target (cost savings), the cheapest target, AIQ's common cost range (None: each curve's
    own), the AIQ of mixing the single targets and, for two-target pools only, the APGR pair."""

    best_single: ReferenceTarget
    oracle_accuracy: float
    most_expensive: ReferenceTarget
    cheapest: ReferenceTarget
    aiq_cost_range: tuple[float, float] | None
    aiq_single_targets: float
    apgr_pair: ApgrPair | None = None


@dataclass(frozen=True)
class SingleTargets:
    """Always choosing each target on test: accuracy, scored queries, mean and total cost per target, and
    ``pareto_front``, the indices of the targets on the cost-accuracy Pareto front, by cost."""

    accuracy: list[float]
    n_scored: list[int]
    mean_cost: list[float]
    total_cost: list[float]
    pareto_front: list[int]


@dataclass(frozen=True)
class AgreementZones:
    """Shares of the ``n_rows`` test queries with every label known where all targets are right, all are
    wrong, or they disagree; ``n_excluded`` queries have a missing label."""

    all_right: float
    all_wrong: float
    disagree: float
    n_rows: int
    n_excluded: int


@dataclass(frozen=True)
class Calibration:
    """Reliability diagram data (``metrics.calibration_curve``): ``bin_edges`` and, per bin, the count of
    (query, target) cells, their mean predicted probability and observed accuracy (NaN: empty bin)."""

    bin_edges: list[float]
    count: list[int]
    mean_predicted: list[float]
    observed: list[float]


@dataclass(frozen=True)
class ProbabilityQuality:
    """A router's probabilities on test: per-target ROC-AUC (NaN: one class only), their mean, the number
    of targets without one, Brier score, ECE and calibration bins."""

    auc_per_target: list[float]
    mean_auc: float
    n_targets_without_auc: int
    brier: float
    ece: float
    calibration: Calibration


@dataclass(frozen=True)
class Curve:
    """A cost-accuracy curve: per swept ``parameter`` value, accuracy, mean and total cost, queries whose
    chosen target has no label, and the share of queries sent to each target."""

    parameter: list[float]
    accuracy: list[float]
    mean_cost: list[float]
    total_cost: list[float]
    n_missing_label: list[int]
    choice_share: list[list[float]]


@dataclass(frozen=True)
class AccuracyDifference:
    """Accuracy minus the test's best single target's, over the queries where both labels are known, with
    its paired bootstrap 95 % interval (all NaN when there is no such query)."""

    difference: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ScoredPoint:
    """Every metric of routing each test query to one chosen target: ``metrics.routed_outcome`` (queries,
    scored, missing labels, accuracy, choice share, total and mean cost, missing costs), the costs taken
    from the expected cost, gap closed, cost savings, accuracy on disagreement and the difference with
    the best single target."""

    n_queries: int
    n_scored: int
    n_missing_label: int
    accuracy: float
    choice_share: list[float]
    total_cost: float
    mean_cost: float
    n_missing_cost: int
    n_cost_from_expected: int
    gap_closed: float
    cost_savings: float
    accuracy_on_disagreement: float
    accuracy_vs_best_single: AccuracyDifference


@dataclass(frozen=True)
class ValidationPoint:
    """Where an operating point lies on the validation curve."""

    accuracy: float
    mean_cost: float


@dataclass(frozen=True)
class OperatingPoint:
    """A policy parameter chosen on the validation curve (``chosen_on`` "validation"), the sweep's most
    accurate setting (``chosen_on`` "policy": its first value, lambda = 0 or tau = 0) or the policy's default
    (``chosen_on`` "default", no sweep index nor validation point), scored on ``test``. A point no sweep value
    qualified for is not ``reached``: parameter, sweep_index, validation and test are None."""

    chosen_on: str
    reached: bool
    parameter: float | None
    sweep_index: int | None
    validation: ValidationPoint | None
    test: ScoredPoint | None


@dataclass(frozen=True)
class ReadoutPoint:
    """An operating point read off the test curve (optimistic: its parameter is chosen on test)."""

    parameter: float
    sweep_index: int
    accuracy: float
    mean_cost: float


@dataclass(frozen=True)
class RouterResult:
    """One probability router: probability quality, test curve, validation curve (None without
    validation), AIQ on test and on validation (None without validation, each over its split's cheapest to
    most expensive single target), APGR (None unless two targets), ``operating_points`` by name (best_accuracy,
    match_best_single and at_cheapest_cost with validation, then default) and ``test_readout``, the
    validation points' names read off the test curve (None: not reached)."""

    name: str
    probability: ProbabilityQuality
    curve: Curve
    val_curve: Curve | None
    aiq: float
    val_aiq: float | None
    apgr: float | None
    operating_points: dict[str, OperatingPoint]
    test_readout: dict[str, ReadoutPoint | None]
    swept_policy: dict  # the policy whose parameter is swept ("anchored": its anchor and margin, fitted on val)


@dataclass(frozen=True)
class BaselineResult:
    """A choice baseline (random, always-cheapest, always-best-single or oracle) scored on test."""

    name: str
    description: str
    test: ScoredPoint


@dataclass(frozen=True)
class BundleInfo:
    """The router bundle evaluated: its path, feature schema id, encoder and layer selection."""

    path: str
    feature_schema: str
    encoder: str
    selection: dict | None


@dataclass
class EvaluationResults:
    """What ``evaluate`` returns (see its docstring); ``bundle`` is the caller's to fill."""

    format_version: int
    targets: list[str]
    policy: PolicySweep
    data: DataSummary
    reference: Reference
    single_targets: SingleTargets
    agreement_zones: AgreementZones
    routers: list[RouterResult]
    comparisons: list[RouterComparison]  # the first router minus each other one, paired on the test queries
    baselines: list[BaselineResult]
    notes: list[str]
    bundle: BundleInfo | None = None

    def to_json(self) -> dict:
        """The results as metrics.json holds them: plain Python values (``to_plain``), keyed by field name,
        without ``reference.apgr_pair`` and ``bundle`` when they are None."""
        plain = to_plain(self)
        if self.reference.apgr_pair is None:
            del plain["reference"]["apgr_pair"]
        if self.bundle is None:
            del plain["bundle"]
        return plain


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
        self.cost = data.evaluation_cost()
        self.n = self.labels.shape[0]

    def missing_labels(self) -> MissingLabels:
        missing = np.isnan(self.labels)
        return MissingLabels(
            cells=int(missing.sum()),
            per_target=missing.sum(axis=0).tolist(),
            queries_without_any_label=int(missing.all(axis=1).sum()),
        )

    def curve(self, decisions: list[Ranking], values: np.ndarray) -> Curve:
        """Cost-accuracy points of a parameter sweep (one per value)."""
        outcomes = [metrics.routed_outcome(d.choice, self.labels, self.cost) for d in decisions]
        return Curve(
            parameter=values.tolist(),
            accuracy=[o["accuracy"] for o in outcomes],
            mean_cost=[o["mean_cost"] for o in outcomes],
            total_cost=[o["total_cost"] for o in outcomes],
            n_missing_label=[o["n_missing_label"] for o in outcomes],
            choice_share=[o["choice_share"] for o in outcomes],
        )


class _TestScorer:
    """Scores choices on the test split against its references (best single, oracle, most expensive)."""

    def __init__(self, split: _Split, target_names: list[str], n_boot: int, seed: int):
        self.split, self.names, self.n_boot, self.seed = split, target_names, n_boot, seed
        self.single = metrics.per_target_outcomes(split.labels, split.cost)
        self.scored_targets = np.flatnonzero(np.isfinite(self.single["accuracy"]))  # any known test label
        self.best = metrics.best_single(split.labels, split.cost)
        self.oracle_accuracy = metrics.oracle_accuracy(split.labels)
        total = self.single["total_cost"]
        self.most_expensive = int(np.argmax(total))
        self.cheapest = int(np.argmin(total))
        self.best_correct = split.labels[:, self.best]

    def summary(self, choice: np.ndarray) -> ScoredPoint:
        """Every metric of routing each test query to ``choice``."""
        split = self.split
        outcome = metrics.routed_outcome(choice, split.labels, split.cost)
        rows = np.arange(split.n)
        correct = split.labels[rows, choice]
        try:
            difference = AccuracyDifference(*metrics.paired_bootstrap_ci(
                correct, self.best_correct, n_boot=self.n_boot, seed=self.seed))
        except ValueError:  # no query with both labels known
            difference = AccuracyDifference(math.nan, math.nan, math.nan)
        return ScoredPoint(
            **outcome,
            n_cost_from_expected=int(split.cost_from_expected[rows, choice].sum()),
            gap_closed=self._gap_closed(correct),
            cost_savings=metrics.cost_savings(outcome["total_cost"], self.single["total_cost"][self.most_expensive]),
            accuracy_on_disagreement=metrics.accuracy_on_disagreement(choice, split.labels),
            accuracy_vs_best_single=difference,
        )

    def _gap_closed(self, correct: np.ndarray) -> float:
        """Gap closed on the queries whose chosen target has a label, with the best single target and
        the oracle scored on those same queries (all queries when no label is missing)."""
        scored = ~np.isnan(correct)
        best = self.best_correct[scored]
        if not scored.any() or np.isnan(best).all():
            return math.nan
        return metrics.gap_closed(float(correct[scored].mean()), float(np.nanmean(best)),
                                  metrics.oracle_accuracy(self.split.labels[scored]))

    def reference(self, cost_range: tuple[float, float] | None) -> Reference:
        def target(k: int) -> ReferenceTarget:
            return ReferenceTarget(index=k, name=self.names[k], accuracy=float(self.single["accuracy"][k]),
                                   mean_cost=float(self.single["mean_cost"][k]),
                                   total_cost=float(self.single["total_cost"][k]))

        scored = self.scored_targets
        return Reference(
            best_single=target(self.best),
            oracle_accuracy=self.oracle_accuracy,
            most_expensive=target(self.most_expensive),
            cheapest=target(self.cheapest),
            aiq_cost_range=cost_range,
            aiq_single_targets=metrics.aiq(self.single["mean_cost"][scored], self.single["accuracy"][scored],
                                           cost_range),
            apgr_pair=ApgrPair(strong=self.names[self.best], weak=self.names[1 - self.best])
            if len(self.names) == 2 else None,
        )

    def single_targets(self) -> SingleTargets:
        single, scored = self.single, self.scored_targets
        return SingleTargets(
            accuracy=single["accuracy"].tolist(),
            n_scored=single["n_scored"].tolist(),
            mean_cost=single["mean_cost"].tolist(),
            total_cost=single["total_cost"].tolist(),
            pareto_front=scored[metrics.pareto_front(single["mean_cost"][scored], single["accuracy"][scored])].tolist(),
        )


def evaluate(
    routers: list[RouterInput],
    target_names: list[str],
    test: SplitData,
    val: SplitData | None = None,
    *,
    labels_train: np.ndarray | None = None,
    policy_kind: str = "tolerance",
    sweep_values: np.ndarray | None = None,
    seed: int = 0,
    n_boot: int = 2000,
) -> EvaluationResults:
    """Evaluate ``routers`` and the baselines on ``test``; see the module docstring.

    Each router predicts on its ``X_test`` and, when ``val`` is given, on its ``X_val``: ``val`` chooses
    the operating points. ``labels_train`` chooses the always-best-single baseline (validation labels
    when it is None; never test labels). ``policy_kind`` is "tolerance" (sweeps tau), "utility"
    (sweeps lambda) or "anchored" (the anchor the most accurate target on ``labels_train`` and the validation
    labels together, the margin fitted on each router's validation scores; sweeps lambda)
    over ``sweep_values`` (default: policies.default_sweep_values). ``seed`` drives the random baseline and
    the bootstraps. ``comparisons`` holds the first router minus each other one (mean AUC, AIQ), paired on
    the same resamples of the test queries.
    """
    names = list(target_names)
    if policy_kind not in SWEEPABLE:
        raise ValueError(f"policy_kind must be one of {', '.join(SWEEPABLE)}, got {policy_kind!r}")
    values = default_sweep_values(policy_kind) if sweep_values is None else np.asarray(sweep_values, dtype=float)
    test_split = _Split(test, len(names), "test")
    val_split = None if val is None else _Split(val, len(names), "validation")
    predictions = _predict(routers, test_split, val_split)
    scorer = _TestScorer(test_split, names, n_boot, seed)
    cost_range = _common_cost_range(scorer.single["mean_cost"])
    notes = [
        "best_accuracy is the sweep's most accurate setting (its first value); the other operating points are "
        "chosen on the validation curve; all are scored on test. test_readout reads the same points off the "
        "test curve and is optimistic.",
        f"accuracy_vs_best_single: paired bootstrap (95 %, {n_boot} resamples) of router minus "
        f"{names[scorer.best]} (the test's best single target) over queries where both labels are known.",
    ]
    if test.true_cost is None:
        notes.append("No true per-query test cost: cost is evaluated on the expected cost.")

    anchored = policy_kind == "anchored" and val_split is not None
    anchor = _anchor(val_split, labels_train, names) if anchored else None
    evaluated = [
        _evaluate_router(name, proba_test, proba_val, scorer, val_split, names, policy_kind, values, cost_range,
                         anchor)
        for name, proba_test, proba_val in predictions
    ]
    router_results = [result for result, _ in evaluated]
    comparisons = [
        compare_routers((predictions[0][0], name), (predictions[0][1], proba_test), (evaluated[0][1], choices),
                        test_split.labels, test_split.cost, cost_range, n_boot=n_boot, seed=seed)
        for (name, proba_test, _), (_, choices) in zip(predictions[1:], evaluated[1:])
    ]
    baselines, best_single_source = _evaluate_baselines(scorer, val_split, labels_train, names, seed)
    return EvaluationResults(
        format_version=FORMAT_VERSION,
        targets=names,
        policy=PolicySweep(kind=policy_kind, parameter=SWEEPABLE[policy_kind], values=values.tolist(),
                           default=_default_parameter(policy_kind)),
        data=DataSummary(
            n_test=test_split.n,
            n_val=None if val_split is None else val_split.n,
            test_missing_labels=test_split.missing_labels(),
            val_missing_labels=None if val_split is None else val_split.missing_labels(),
            test_cost_cells_from_expected=int(test_split.cost_from_expected.sum()),
            best_single_chosen_on=best_single_source,
        ),
        reference=scorer.reference(cost_range),
        single_targets=scorer.single_targets(),
        agreement_zones=AgreementZones(**metrics.agreement_zones(test_split.labels)),
        routers=router_results,
        comparisons=comparisons,
        baselines=baselines,
        notes=notes,
    )


def _predict(
    routers: list[RouterInput], test: _Split, val: _Split | None
) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, test probabilities, validation probabilities or None) of each router, shapes checked."""
    seen = set()
    for item in routers:
        if item.name in seen:
            raise ValueError(f"two routers are named {item.name!r}")
        seen.add(item.name)
    predictions = []
    for item in routers:
        proba_test = np.asarray(item.router.predict_proba(item.X_test), dtype=float)
        if proba_test.shape != test.labels.shape:
            raise ValueError(f"{item.name}: proba_test must be {test.labels.shape}, got {proba_test.shape}")
        proba_val = None
        if val is not None and (item.proba_val is not None or item.X_val is not None):
            given = item.router.predict_proba(item.X_val) if item.proba_val is None else item.proba_val
            proba_val = np.asarray(given, dtype=float)
            if proba_val.shape != val.labels.shape:
                raise ValueError(f"{item.name}: proba_val must be {val.labels.shape}, got {proba_val.shape}")
        predictions.append((item.name, proba_test, proba_val))
    return predictions


def _evaluate_router(
    name: str,
    proba: np.ndarray,
    proba_val: np.ndarray | None,
    scorer: _TestScorer,
    val: _Split | None,
    names: list[str],
    kind: str,
    values: np.ndarray,
    cost_range: tuple[float, float] | None,
    anchor: str | None,
) -> tuple[RouterResult, np.ndarray]:
    """The router's result and its (sweep points, n_test) chosen targets."""
    test = scorer.split
    base = _swept_policy(kind, proba_val, val, names, name, anchor)
    decisions = sweep(proba, test.expected, base, values, names)
    curve = test.curve(decisions, values)
    val_curve, val_aiq, operating_points = None, None, {}
    if proba_val is not None:
        val_curve = val.curve(sweep(proba_val, val.expected, base, values, names), values)
        val_single = metrics.per_target_outcomes(val.labels, val.cost)
        val_aiq = _curve_aiq(val_curve, _common_cost_range(val_single["mean_cost"]))
        indices = _readout_indices(val_curve, val_single) | {"best_accuracy": _most_accurate_setting(val_curve)}
        for point, index in indices.items():
            chosen_on = "policy" if point == "best_accuracy" else "validation"
            operating_points[point] = _operating_point(index, chosen_on, values, val_curve, scorer, decisions)
    default = route(proba, test.expected, base, names)
    operating_points["default"] = OperatingPoint(chosen_on="default", reached=True, parameter=_default_parameter(kind),
                                                 sweep_index=None, validation=None, test=scorer.summary(default.choice))
    return RouterResult(
        name=name,
        probability=_probability_quality(proba, test.labels),
        curve=curve,
        val_curve=val_curve,
        aiq=_curve_aiq(curve, cost_range),
        val_aiq=val_aiq,
        apgr=_apgr(curve, _finite_points(curve), scorer) if len(names) == 2 else None,
        operating_points=operating_points,
        test_readout=_readout(curve, scorer.single),
        swept_policy=base.model_dump(mode="json"),
    ), np.stack([d.choice for d in decisions])


def _swept_policy(kind: str, proba_val: np.ndarray | None, val: _Split | None, names: list[str],
                  router: str, anchor: str | None) -> PolicyConfig:
    """The policy whose parameter is swept: the kind's defaults, or for "anchored" `anchor` with the margin
    fitted on the router's validation probabilities (never on test)."""
    if kind != "anchored":
        return PolicyConfig(kind=kind)
    if proba_val is None or val is None:
        raise ValueError(f"{router}: the anchored policy is fitted on validation: give X_val and a validation split")
    return fit_anchored(proba_val, val.labels, val.cost, names, anchor=anchor)


def _anchor(val: _Split, labels_train: np.ndarray | None, names: list[str]) -> str:
    """The anchored policy's anchor, the same for every router: the most accurate target on the training labels
    and the validation labels together (validation alone without training labels), ties by validation cost."""
    labels = val.labels if labels_train is None else np.vstack([np.asarray(labels_train, dtype=float), val.labels])
    return most_accurate_target(labels, val.cost.mean(axis=0), names)


def _probability_quality(proba: np.ndarray, labels: np.ndarray) -> ProbabilityQuality:
    auc = metrics.roc_auc_per_target(proba, labels)
    calibration = metrics.calibration_curve(proba, labels)
    return ProbabilityQuality(
        auc_per_target=auc.tolist(),
        mean_auc=float(np.nanmean(auc)) if not np.isnan(auc).all() else math.nan,
        n_targets_without_auc=int(np.isnan(auc).sum()),
        brier=metrics.brier_score(proba, labels),
        ece=metrics.expected_calibration_error(proba, labels),
        calibration=Calibration(**{key: value.tolist() for key, value in calibration.items()}),
    )


def _operating_point(index: int | None, chosen_on: str, values: np.ndarray, val_curve: Curve, scorer: _TestScorer,
                     decisions: list[Ranking]) -> OperatingPoint:
    """The point at sweep ``index`` of the validation curve (None: not reached), scored on test."""
    if index is None:
        return OperatingPoint(chosen_on=chosen_on, reached=False, parameter=None, sweep_index=None,
                              validation=None, test=None)
    return OperatingPoint(
        chosen_on=chosen_on,
        reached=True,
        parameter=float(values[index]),
        sweep_index=index,
        validation=ValidationPoint(accuracy=val_curve.accuracy[index], mean_cost=val_curve.mean_cost[index]),
        test=scorer.summary(decisions[index].choice),
    )


def _readout_indices(curve: Curve, single: dict) -> dict[str, int | None]:
    """Sweep indices of best_accuracy, match_best_single and at_cheapest_cost on ``curve``, with the
    single targets of the same split as references (points with undefined accuracy are skipped)."""
    finite = _finite_points(curve)
    targets = np.flatnonzero(np.isfinite(single["accuracy"]))
    if finite.size == 0 or targets.size == 0:
        return {"best_accuracy": None, "match_best_single": None, "at_cheapest_cost": None}
    points = metrics.operating_points(
        np.array(curve.mean_cost)[finite], np.array(curve.accuracy)[finite],
        single["mean_cost"][targets], single["accuracy"][targets],
    )

    def sweep_index(key: str) -> int | None:
        return None if points[key] is None else int(finite[points[key]])

    return {
        "best_accuracy": sweep_index("index_best_accuracy"),
        "match_best_single": sweep_index("index_match_best_single"),
        "at_cheapest_cost": sweep_index("index_at_cheapest_cost"),
    }


def _most_accurate_setting(val_curve: Curve) -> int | None:
    """The sweep index of the policy's most accurate setting: its first value with a defined validation point
    (the grid rises from lambda = 0 or tau = 0: argmax, or the anchored margin fitted on validation). Not the
    highest point of the validation curve, which favours the points that were lucky there: fitted on one
    half of the holdout and scored on the other, that point is below lambda = 0 (bench/README.md)."""
    finite = _finite_points(val_curve)
    return int(finite[0]) if finite.size else None


def _readout(curve: Curve, single: dict) -> dict[str, ReadoutPoint | None]:
    """The operating points read off the TEST curve (optimistic: the parameter is chosen on test)."""
    return {
        name: None if index is None else ReadoutPoint(parameter=curve.parameter[index], sweep_index=index,
                                                      accuracy=curve.accuracy[index], mean_cost=curve.mean_cost[index])
        for name, index in _readout_indices(curve, single).items()
    }


def _apgr(curve: Curve, finite: np.ndarray, scorer: _TestScorer) -> float:
    """APGR of a two-target curve: the strong target is the test's best single, the other the weak."""
    strong = scorer.best
    accuracy = scorer.single["accuracy"]
    fractions = np.array([share[strong] for share in curve.choice_share])[finite]
    return metrics.apgr(fractions, np.array(curve.accuracy)[finite], accuracy[1 - strong], accuracy[strong])


def _evaluate_baselines(
    scorer: _TestScorer, val: _Split | None, labels_train: np.ndarray | None, names: list[str], seed: int
) -> tuple[list[BaselineResult], str]:
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
        BaselineResult(name=name, description=description, test=scorer.summary(choice))
        for name, description, choice in choices
    ]
    return baselines, source


def _common_cost_range(single_mean_cost: np.ndarray) -> tuple[float, float] | None:
    """AIQ's common cost range: from the cheapest to the most expensive single target's mean cost on one
    split (None when all cost the same: each curve's own range is used)."""
    low, high = float(np.min(single_mean_cost)), float(np.max(single_mean_cost))
    return (low, high) if high > low else None


def split_aiq(proba: np.ndarray, data: SplitData, policy: PolicyConfig, target_names: list[str]) -> float:
    """AIQ of ``policy``'s parameter swept (policies.default_sweep_values) on one split, over the split's
    cheapest to most expensive single target: the validation AIQ of ``evaluate``, for training to compare
    candidates on its holdout. NaN when no point has a defined accuracy and cost."""
    split = _Split(data, len(target_names), "split")
    values = default_sweep_values(policy.kind)
    curve = split.curve(sweep(proba, split.expected, policy, values, target_names), values)
    return _curve_aiq(curve, _common_cost_range(metrics.per_target_outcomes(split.labels, split.cost)["mean_cost"]))


def _curve_aiq(curve: Curve, cost_range: tuple[float, float] | None) -> float:
    """AIQ of the curve's points with a defined accuracy and cost (NaN when none has)."""
    finite = _finite_points(curve)
    if not finite.size:
        return math.nan
    return metrics.aiq(np.array(curve.mean_cost)[finite], np.array(curve.accuracy)[finite], cost_range)


def _finite_points(curve: Curve) -> np.ndarray:
    """Indices of sweep points with a defined accuracy and cost."""
    accuracy, cost = np.array(curve.accuracy, dtype=float), np.array(curve.mean_cost, dtype=float)
    return np.flatnonzero(np.isfinite(accuracy) & np.isfinite(cost))


def _default_parameter(kind: str) -> float:
    """The swept parameter's default: the policy's own, and 0 for "anchored" (stay on the anchor)."""
    return 0.0 if kind == "anchored" else float(getattr(PolicyConfig(kind=kind), SWEEPABLE[kind]))


def to_plain(value):
    """``value`` with dataclasses as dicts of their fields, numpy scalars and arrays as Python numbers and
    lists, tuples as lists, NaN as None and +-infinity as the strings "inf"/"-inf", so that strict JSON
    round-trips it exactly."""
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_plain(getattr(value, field.name)) for field in fields(value)}
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
