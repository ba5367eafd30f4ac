"""evaluate() on hand-made cases and, end to end with write_report, on real RouterBench labels."""

import json
import math

import numpy as np
import pytest

from ray_router.evaluation.baselines import TaskLabelRouter
from ray_router.evaluation.evaluation import (
    MissingLabels,
    RouterInput,
    SplitData,
    ValidationPoint,
    evaluate,
)
from ray_router.evaluation.report import FILES, headline_table, markdown_report, write_report
from ray_router.model.cost_model import CostModel
from ray_router.model.knn_router import KnnRouter
from ray_router.policy.config import PolicyConfig
from ray_router.policy.policies import route

NAN = np.nan
NAMES = ["big", "mid", "small"]
COST = np.array([4.0, 2.0, 1.0])
# 6 queries x 3 targets: best single "big" (4/6), oracle 5/6 (the last query is all wrong)
LABELS = np.array([
    [1, 0, 1],
    [1, 1, 0],
    [0, 1, 0],
    [1, 0, 0],
    [1, 1, 1],
    [0, 0, 0],
], dtype=float)


class GivenProba:
    """A router whose input is already its probability matrix."""

    def fit(self, X, Y):
        return self

    def predict_proba(self, X):
        return X


def given(name: str, proba_test: np.ndarray, proba_val: np.ndarray | None = None) -> RouterInput:
    return RouterInput(name, GivenProba(), proba_test, proba_val)


def by_name(items: list, name: str):
    return next(item for item in items if item.name == name)


def test_gap_closed_compares_the_same_queries_when_the_choice_lacks_labels():
    # big is right on 3/4 (the best single), the oracle on 4/4; the router always picks small, whose
    # label is missing on q0. On the 3 scored queries small (2/3) does exactly as well as big (2/3).
    labels = np.array([[1, 1, NAN], [1, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=float)
    split = SplitData(labels, COST)
    always_small = np.tile([0.1, 0.1, 0.9], (4, 1))
    results = evaluate([given("small", always_small, always_small)], NAMES, split, split)
    test = results.routers[0].operating_points["best_accuracy"].test
    assert test.n_missing_label == 1 and test.accuracy == pytest.approx(2 / 3)
    assert test.accuracy_vs_best_single.difference == pytest.approx(0.0)
    assert test.gap_closed == pytest.approx(0.0)  # not (2/3 - 3/4) / (1 - 3/4) = -1/3 over mixed rows


def test_perfect_router_closes_the_whole_gap_and_best_single_none():
    split = SplitData(LABELS, COST)
    results = evaluate([given("perfect", LABELS, LABELS)], NAMES, split, split)
    router = results.routers[0]
    best = router.operating_points["best_accuracy"]
    assert best.chosen_on == "policy" and best.reached
    assert best.test.accuracy == pytest.approx(5 / 6)
    assert best.test.gap_closed == pytest.approx(1.0)
    # with proba = labels, tau = 0 routes every query to its cheapest right target: the oracle's cost
    assert best.test.total_cost == 1 + 2 + 2 + 4 + 1 + 1
    assert best.test.cost_savings == pytest.approx(1 - 11 / 24)
    assert router.probability.mean_auc == 1.0 and router.probability.brier == 0.0
    assert router.probability.ece == 0.0
    oracle, single = by_name(results.baselines, "oracle"), by_name(results.baselines, "always-best-single")
    assert oracle.test.gap_closed == pytest.approx(1.0) and oracle.test.total_cost == 11
    assert single.test.gap_closed == 0.0 and single.test.accuracy == pytest.approx(4 / 6)
    assert by_name(results.baselines, "always-cheapest").test.choice_share == [0.0, 0.0, 1.0]
    assert results.reference.best_single.name == "big"
    assert results.agreement_zones.disagree == pytest.approx(4 / 6)
    assert oracle.test.accuracy_on_disagreement == 1.0


def test_operating_points_are_chosen_on_validation_not_test():
    # p says "expensive" is 0.1 more likely right: tau = 0 picks it, tau >= 0.1 the cheap target
    names = ["expensive", "cheap"]
    proba = np.tile([0.6, 0.5], (4, 1))
    val_labels = np.tile([0.0, 1.0], (4, 1))  # on validation only the cheap target is right
    test_labels = np.tile([1.0, 0.0], (4, 1))  # on test only the expensive one
    values = np.array([0.0, 0.05, 0.2, 0.5])
    results = evaluate(
        [given("r", proba, proba)], names,
        SplitData(test_labels, np.array([10.0, 1.0])), SplitData(val_labels, np.array([10.0, 1.0])),
        sweep_values=values,
    )
    router = results.routers[0]
    match = router.operating_points["match_best_single"]  # the best single on validation is "cheap" (right on all)
    assert match.parameter == 0.2 and match.sweep_index == 2  # the cheapest val point with accuracy 1
    assert match.validation == ValidationPoint(accuracy=1.0, mean_cost=1.0)
    assert match.test.accuracy == 0.0 and match.test.mean_cost == 1.0  # honest: wrong on test
    assert router.test_readout["match_best_single"].parameter == 0.0  # what choosing on test would give
    # best accuracy is the sweep's most accurate setting (tau = 0: argmax), not the highest validation point
    best = router.operating_points["best_accuracy"]
    assert best.chosen_on == "policy" and best.parameter == 0.0 and best.validation.accuracy == 0.0
    assert best.test.accuracy == 1.0
    assert router.curve.accuracy == [1.0, 1.0, 0.0, 0.0]
    assert router.val_curve.accuracy == [0.0, 0.0, 1.0, 1.0]
    assert router.apgr == pytest.approx(0.5)  # PGR 1 at all-strong points, 0 at all-weak ones
    # AIQ over cost 1 to 10: on test the hull rises linearly from (1, 0) to (10, 1); on validation it is 1
    assert router.aiq == pytest.approx(0.5) and router.val_aiq == pytest.approx(1.0)
    # the always-best-single baseline follows validation labels (no training labels given), not test
    assert by_name(results.baselines, "always-best-single").test.choice_share == [0.0, 1.0]
    assert results.data.best_single_chosen_on == "validation"
    # without validation scores only the default point exists; without any reference labels no best single
    only_default = evaluate([given("r", proba)], names, SplitData(test_labels, np.array([10.0, 1.0])),
                            labels_train=val_labels)
    assert list(only_default.routers[0].operating_points) == ["default"]
    assert only_default.routers[0].val_aiq is None
    with pytest.raises(ValueError, match="never test labels"):
        evaluate([], names, SplitData(test_labels, np.array([10.0, 1.0])))


def test_missing_labels_and_costs_are_counted_not_scored():
    labels = LABELS.copy()
    labels[0, 0] = NAN  # the best single target's label on query 0
    labels[5, :] = NAN  # a query without any label
    true_cost = np.broadcast_to(COST, labels.shape).copy()
    true_cost[1, 0] = NAN  # falls back to the expected cost
    true_cost[2, 0] = 8.0
    results = evaluate([], NAMES, SplitData(labels, COST, true_cost), labels_train=LABELS)
    data = results.data
    assert data.test_missing_labels == MissingLabels(cells=4, per_target=[2, 1, 1], queries_without_any_label=1)
    assert data.test_cost_cells_from_expected == 1
    single = by_name(results.baselines, "always-best-single").test
    assert single.n_missing_label == 2 and single.n_scored == 4
    assert single.accuracy == pytest.approx(3 / 4)  # queries 1-4: 1, 0, 1, 1
    assert single.total_cost == 4 + 4 + 8 + 4 + 4 + 4 and single.n_cost_from_expected == 1
    assert results.agreement_zones.n_excluded == 2
    # undefined numbers are NaN in the results and None in their JSON: no gap to close when one target is
    # always right
    always_right = np.column_stack([np.ones(6), LABELS[:, 1:]])
    undefined = evaluate([], NAMES, SplitData(always_right, COST), labels_train=LABELS)
    assert math.isnan(undefined.baselines[0].test.gap_closed)
    assert undefined.to_json()["baselines"][0]["test"]["gap_closed"] is None


def test_write_report_writes_every_file_and_metrics_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) < [0.7, 0.5, 0.3]).astype(float)
    noisy = np.clip(labels * 0.6 + rng.random(labels.shape) * 0.4, 0, 1)
    split = SplitData(labels, COST, COST * rng.uniform(0.5, 1.5, labels.shape))
    results = evaluate([given("noisy", noisy, noisy), given("no val", noisy)], NAMES, split, split,
                       policy_kind="utility", n_boot=200)
    assert results.policy.values[-1] == math.inf
    assert results.to_json()["policy"]["values"][-1] == "inf"  # lambda = infinity, kept in strict JSON
    write_report(results, tmp_path / "report")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(FILES)
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == results.to_json()
    markdown = (tmp_path / "report" / "report.md").read_text()
    table = headline_table(results)
    assert table in markdown and "noisy" in table and "oracle" in table
    assert "best accuracy (λ=0)" in table and "default (λ=0.2)" in table
    for png in FILES[2:]:
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_and_report_end_to_end_on_real_routerbench_labels(shared_data, tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer

    from ray_router.data.importers.routerbench import import_routerbench

    train_all = import_routerbench(shared_data / "routerbench" / "arc_challenge_train.csv")
    test = import_routerbench(shared_data / "routerbench" / "arc_challenge_test.csv")
    names = test.target_names
    assert train_all.target_names == names
    y_test = test.labels()
    assert np.isnan(y_test).any()  # this file alone keeps the half-rows of the split duplicates
    rng = np.random.default_rng(0)
    is_val = rng.random(len(train_all)) < 0.15
    train, val = train_all.select(rows=~is_val), train_all.select(rows=is_val)
    cost_model = CostModel.fit(train)
    expected = {name: cost_model.expected_cost(d.prompts) for name, d in [("val", val), ("test", test)]}

    # real semantic kNN on TF-IDF embeddings of the prompts' ends (the question, after the 5-shot prefix)
    tfidf = TfidfVectorizer(max_features=2000).fit([p[-600:] for p in train.prompts])
    embed = lambda d: tfidf.transform([p[-600:] for p in d.prompts]).toarray()
    knn = KnnRouter().fit(embed(train), train.labels(), embed(val), val.labels())
    task = TaskLabelRouter().fit(train.column("task"), train.labels())

    def noisy_labels(labels):  # an informative stand-in for the trained router
        return 1 / (1 + np.exp(-(3 * (np.nan_to_num(labels, nan=0.5) - 0.5) + rng.normal(size=labels.shape))))

    routers = [
        given("noisy labels", noisy_labels(y_test), noisy_labels(val.labels())),
        RouterInput("semantic kNN", knn, embed(test), embed(val)),
        RouterInput("task label", task, test.column("task"), val.column("task")),
    ]
    results = evaluate(
        routers, names,
        SplitData(y_test, expected["test"], test.costs()), SplitData(val.labels(), expected["val"], val.costs()),
        labels_train=train.labels(),
    )
    write_report(results, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == results.to_json()
    assert all((tmp_path / name).stat().st_size > 0 for name in FILES)

    assert results.data.test_missing_labels.cells == int(np.isnan(y_test).sum())
    noisy, knn_result = results.routers[0], results.routers[1]
    assert noisy.probability.mean_auc > 0.8
    assert noisy.operating_points["best_accuracy"].test.gap_closed > 0
    assert 0.4 < knn_result.probability.mean_auc < 1
    assert by_name(results.baselines, "oracle").test.gap_closed == pytest.approx(1.0)
    assert len(noisy.curve.accuracy) == len(results.policy.values)
    # the default point's missing-label count matches routing the same queries by hand
    choice = route(routers[0].X_test, expected["test"], PolicyConfig(), names).choice
    default = noisy.operating_points["default"].test
    assert default.n_missing_label == int(np.isnan(y_test[np.arange(len(choice)), choice]).sum())
    assert default.n_scored + default.n_missing_label == len(test)


def test_anchored_policy_is_fitted_on_validation_and_swept_over_lambda():
    # validation: "mid" is the best single target and p says nothing; the anchored policy stays on it
    rng = np.random.default_rng(1)
    val_labels = np.column_stack([rng.random(80) < 0.5, rng.random(80) < 0.9, rng.random(80) < 0.2]).astype(float)
    test_labels = np.column_stack([rng.random(60) < 0.5, rng.random(60) < 0.9, rng.random(60) < 0.2]).astype(float)
    proba_val, proba_test = rng.random(val_labels.shape), rng.random(test_labels.shape)
    results = evaluate([RouterInput("noise", GivenProba(), proba_test, proba_val)], NAMES,
                       SplitData(test_labels, COST), SplitData(val_labels, COST), policy_kind="anchored", n_boot=100)
    router = results.routers[0]
    assert router.swept_policy["kind"] == "anchored" and router.swept_policy["anchor"] == "mid"
    assert results.policy.parameter == "lam" and results.policy.default == 0.0
    best = router.operating_points["best_accuracy"]
    assert best.validation.accuracy >= val_labels[:, 1].mean()  # never below the anchor on validation
    assert router.curve.mean_cost[-1] == COST.min()  # lambda = inf: always the cheapest
    assert results.to_json()["routers"][0]["swept_policy"]["anchor"] == "mid"
    # with training labels the anchor is chosen on them and the validation labels together, for every router
    train_labels = np.column_stack([np.ones(400), np.zeros(400), np.zeros(400)])  # "big" always right there
    with_train = evaluate([RouterInput("noise", GivenProba(), proba_test, proba_val)], NAMES,
                          SplitData(test_labels, COST), SplitData(val_labels, COST), labels_train=train_labels,
                          policy_kind="anchored", n_boot=100)
    assert with_train.routers[0].swept_policy["anchor"] == "big"


def test_the_first_router_is_compared_with_each_other_on_the_same_resamples():
    rng = np.random.default_rng(2)
    labels = (rng.random((120, 3)) < [0.7, 0.5, 0.3]).astype(float)
    good = np.clip(labels * 0.7 + rng.random(labels.shape) * 0.3, 0, 1)
    noise = rng.random(labels.shape)
    split = SplitData(labels, COST)
    results = evaluate([given("good", good, good), given("noise", noise, noise), given("same", good, good)],
                       NAMES, split, split, n_boot=300)
    versus_noise, versus_same = results.comparisons
    assert (versus_noise.router, versus_noise.other) == ("good", "noise")
    assert versus_noise.mean_auc.ci_low > 0 and versus_noise.aiq.ci_low > 0
    assert versus_same.mean_auc.difference == versus_same.mean_auc.ci_low == versus_same.aiq.ci_high == 0.0
    assert "Paired differences" in markdown_report(results)


def test_given_validation_probabilities_are_used_instead_of_predicting_and_splits_concatenate():
    # out-of-fold rows: probabilities some copy of the router gave; evaluate must choose on them, not predict
    rng = np.random.default_rng(3)
    labels = (rng.random((40, 3)) < 0.6).astype(float)
    holdout, fit_rows = SplitData(labels[:10], COST, np.tile(COST, (10, 1))), SplitData(labels[10:], COST)
    validation = SplitData.concat([holdout, fit_rows])
    assert validation.labels.shape == (40, 3) and np.isnan(validation.true_cost[10:]).all()
    np.testing.assert_array_equal(validation.evaluation_cost(), np.tile(COST, (40, 1)))
    perfect = labels * 0.8 + 0.1  # validation probabilities that know the labels
    never_read = np.full((10, 3), 0.5)
    results = evaluate([RouterInput("oof", GivenProba(), rng.random((12, 3)), never_read, perfect)], NAMES,
                       SplitData(labels[:12], COST), validation, n_boot=10)
    assert results.data.n_val == 40
    assert results.routers[0].val_curve.accuracy[0] == pytest.approx(np.mean(labels.max(axis=1)))  # the oracle
    with pytest.raises(ValueError, match="proba_val must be"):
        evaluate([RouterInput("short", GivenProba(), rng.random((12, 3)), None, perfect[:10])], NAMES,
                 SplitData(labels[:12], COST), validation, n_boot=10)
