"""Metric functions against hand-computed cases."""

import numpy as np
import pytest

from ray_router.evaluation.metrics import (
    accuracy_on_disagreement,
    agreement_zones,
    aiq,
    apgr,
    best_single,
    brier_score,
    calibration_curve,
    cost_savings,
    expected_calibration_error,
    gap_closed,
    nondecreasing_hull,
    operating_points,
    oracle_accuracy,
    oracle_choice,
    paired_bootstrap_ci,
    pareto_front,
    per_target_outcomes,
    roc_auc_per_target,
    routed_outcome,
)

NAN = np.nan
# 5 queries x 3 targets; target 0 is best single (3/5), oracle 4/5 (row 4 all wrong)
LABELS = np.array([
    [1, 0, 1],
    [1, 1, 0],
    [0, 1, 0],
    [1, 0, 0],
    [0, 0, 0],
], dtype=float)
COST = np.array([4.0, 2.0, 1.0])


def test_best_single_oracle_and_gap_closed():
    assert best_single(LABELS) == 0
    assert oracle_accuracy(LABELS) == pytest.approx(0.8)
    oracle = oracle_choice(LABELS, COST)
    assert oracle.tolist() == [2, 1, 1, 0, 2]  # cheapest right target; cheapest when all wrong
    perfect = routed_outcome(oracle, LABELS, COST)
    single = routed_outcome(np.zeros(5, dtype=int), LABELS, COST)
    assert perfect["accuracy"] == pytest.approx(0.8)
    assert perfect["total_cost"] == 1 + 2 + 2 + 4 + 1
    assert gap_closed(perfect["accuracy"], single["accuracy"], 0.8) == pytest.approx(1.0)
    assert gap_closed(single["accuracy"], single["accuracy"], 0.8) == 0.0
    assert np.isnan(gap_closed(0.7, 0.8, 0.8))


def test_best_single_ties_go_to_the_cheaper_target():
    labels = np.array([[1, 0, 1], [0, 1, 0]], dtype=float)  # targets 0 and 2 tie at 0.5
    assert best_single(labels) == 0
    assert best_single(labels, COST) == 2


def test_costs_and_savings():
    single = per_target_outcomes(LABELS, COST)
    np.testing.assert_allclose(single["accuracy"], [0.6, 0.4, 0.2])
    np.testing.assert_allclose(single["total_cost"], [20.0, 10.0, 5.0])
    router = routed_outcome(np.array([2, 1, 1, 0, 2]), LABELS, COST)
    assert router["mean_cost"] == pytest.approx(10 / 5)
    assert router["choice_share"] == [0.2, 0.4, 0.4]
    assert cost_savings(router["total_cost"], single["total_cost"].max()) == pytest.approx(0.5)


def test_missing_labels_are_counted_not_scored():
    labels = LABELS.copy()
    labels[0, 2] = NAN
    labels[1, 0] = NAN
    cost = np.broadcast_to(COST, labels.shape).copy()
    cost[3, 0] = NAN
    outcome = routed_outcome(np.array([2, 0, 1, 0, 0]), labels, cost)
    assert outcome["n_scored"] == 3 and outcome["n_missing_label"] == 2
    assert outcome["accuracy"] == pytest.approx((1 + 1 + 0) / 3)
    assert outcome["n_missing_cost"] == 1 and outcome["total_cost"] == 1 + 4 + 2 + 4
    assert oracle_accuracy(np.array([[NAN, NAN], [0, 1]])) == 1.0  # the all-missing row is left out


def test_agreement_zones_and_accuracy_on_disagreement():
    labels = np.vstack([LABELS, [[1, 1, 1], [1, NAN, 0]]])
    zones = agreement_zones(labels)
    assert zones["n_rows"] == 6 and zones["n_excluded"] == 1
    assert zones["all_right"] == pytest.approx(1 / 6)
    assert zones["all_wrong"] == pytest.approx(1 / 6)
    assert zones["disagree"] == pytest.approx(4 / 6)
    # rows 0-3 disagree; the choice is right on rows 0 and 2
    choice = np.array([2, 2, 1, 1, 0, 0, 0])
    assert accuracy_on_disagreement(choice, labels) == pytest.approx(0.5)


def test_auc_brier_and_calibration_by_hand():
    proba = np.array([[0.9, 0.2], [0.3, 0.4], [0.6, 0.1]])
    labels = np.array([[1, 1], [0, 1], [1, NAN]], dtype=float)
    auc = roc_auc_per_target(proba, labels)
    assert auc[0] == 1.0 and np.isnan(auc[1])  # target 1 has one class only
    expected_brier = (0.01 + 0.09 + 0.16 + 0.64 + 0.36) / 5
    assert brier_score(proba, labels) == pytest.approx(expected_brier)
    same = np.full((5, 1), 0.8)
    assert expected_calibration_error(same, np.array([[1], [1], [1], [1], [0]], float)) == pytest.approx(0.0)
    assert expected_calibration_error(same, np.ones((5, 1))) == pytest.approx(0.2)
    curve = calibration_curve(np.array([[0.05], [0.3], [1.0]]), np.array([[0], [1], [1]], float), n_bins=10)
    assert curve["count"].tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert np.isnan(curve["observed"][1]) and curve["mean_predicted"][9] == 1.0


def test_ece_of_a_perfectly_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    proba = rng.random((50_000, 4))
    labels = (rng.random(proba.shape) < proba).astype(float)
    assert expected_calibration_error(proba, labels) < 0.01
    assert expected_calibration_error(np.clip(proba + 0.2, 0, 1), labels) > 0.1


def test_aiq_of_a_known_hull():
    costs = np.array([3.0, 1.0, 2.0, 4.0])
    accs = np.array([0.7, 0.5, 0.8, 0.9])
    hull_x, hull_y = nondecreasing_hull(costs, accs)
    assert hull_x.tolist() == [1.0, 2.0, 4.0]  # (3, 0.7) lies under the chord (2, 0.8)-(4, 0.9)
    # area: (0.5 + 0.8) / 2 * 1 + (0.8 + 0.9) / 2 * 2 = 2.35 over width 3
    assert aiq(costs, accs) == pytest.approx(2.35 / 3)
    # common range (0, 5): 0 below cost 1, flat 0.9 from 4 to 5
    assert aiq(costs, accs, cost_range=(0.0, 5.0)) == pytest.approx((2.35 + 0.9) / 5)


def test_hull_is_non_decreasing():
    hull_x, hull_y = nondecreasing_hull(np.array([1.0, 2.0, 3.0, 3.0]), np.array([0.6, 0.9, 0.8, 0.5]))
    assert hull_x.tolist() == [1.0, 2.0, 3.0] and hull_y.tolist() == [0.6, 0.9, 0.9]
    assert aiq(np.array([1.0, 2.0, 3.0]), np.array([0.6, 0.9, 0.8])) == pytest.approx((0.75 + 0.9) / 2)


def test_apgr_known_cases():
    weak, strong = 0.5, 0.9
    # a random router recovers the gap linearly: APGR 0.5
    assert apgr(np.array([0.0, 0.5, 1.0]), np.array([0.5, 0.7, 0.9]), weak, strong) == pytest.approx(0.5)
    # all of the gap with 20 % strong calls: 0.2 * 1 / 2 + 0.8 * 1 = 0.9 (end points added)
    assert apgr(np.array([0.2]), np.array([0.9]), weak, strong) == pytest.approx(0.9)
    assert apgr(np.array([0.0, 0.2, 1.0]), np.array([0.5, 0.9, 0.9]), weak, strong) == pytest.approx(0.9)


def test_operating_points_and_pareto_front():
    curve_costs = np.array([1.0, 1.5, 2.0, 3.0, 5.0])
    curve_accs = np.array([0.55, 0.60, 0.72, 0.80, 0.78])
    single_costs = np.array([1.0, 3.0, 6.0])
    single_accs = np.array([0.5, 0.7, 0.75])
    points = operating_points(curve_costs, curve_accs, single_costs, single_accs)
    assert points["accuracy_at_cheapest_cost"] == 0.55 and points["index_at_cheapest_cost"] == 0
    assert points["cost_to_match_best_single"] == 3.0 and points["index_match_best_single"] == 3
    assert points["best_accuracy"] == 0.80 and points["cost_at_best_accuracy"] == 3.0
    never = operating_points(curve_costs[1:], curve_accs[1:] - 0.1, single_costs, single_accs)
    assert never["accuracy_at_cheapest_cost"] is None and never["cost_to_match_best_single"] is None
    assert pareto_front(single_costs, single_accs).tolist() == [0, 1, 2]
    assert pareto_front(curve_costs, curve_accs).tolist() == [0, 1, 2, 3]
    assert pareto_front(np.array([2.0, 1.0, 1.0]), np.array([0.5, 0.6, 0.6])).tolist() == [1]


def test_paired_bootstrap_ci_contains_the_true_difference():
    rng = np.random.default_rng(0)
    n = 3000
    b = (rng.random(n) < 0.6).astype(float)
    a = np.where(rng.random(n) < 0.25, 1.0, b)  # a fixes a quarter of b's errors: +0.1 on average
    diff, low, high = paired_bootstrap_ci(a, b)
    assert diff == pytest.approx((a - b).mean())
    assert low < 0.1 < high and high - low < 0.05
    assert paired_bootstrap_ci(a, b) == (diff, low, high)  # seeded
    a[:10] = np.nan  # missing labels leave those queries out
    assert paired_bootstrap_ci(a, b)[0] == pytest.approx((a[10:] - b[10:]).mean())
