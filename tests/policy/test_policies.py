"""Routing policies on hand-made probability/cost matrices, and against a per-query reference."""

import math

import numpy as np
import pytest

from ray_router.errors import UserError
from ray_router.policy.config import PolicyConfig, merge_policy
from ray_router.policy.policies import (
    default_sweep_values,
    fit_anchored,
    fit_budget_lambda,
    most_accurate_target,
    route,
    sweep,
)

NAMES = ["big", "mid", "small"]
PROBA = np.array([[0.9, 0.75, 0.6], [0.5, 0.8, 0.3], [0.6, 0.6, 0.6]])
COST = np.array([10.0, 2.0, 1.0])


def decide(kind: str, **params) -> tuple[list, list]:
    decision = route(PROBA, COST, PolicyConfig(kind=kind, **params), NAMES)
    return decision.choice.tolist(), decision.fallbacks.tolist()


def test_argmax_picks_highest_probability_and_breaks_ties_by_cost():
    choice, fallbacks = decide("argmax")
    assert choice == [0, 1, 2]  # row 3: equal p, the cheapest wins
    assert fallbacks[0] == [0, 1, 2]
    assert fallbacks[2] == [2, 1, 0]


def test_tolerance_picks_cheapest_within_tau():
    choice, fallbacks = decide("tolerance", tau=0.2)
    # row 1: max 0.9, within 0.2: big (0.9) and mid (0.75); mid is cheaper
    assert choice == [1, 1, 2]
    assert fallbacks[0] == [1, 0, 2]  # within-tau targets by cost, then the rest by p
    # exactly at the boundary: 0.6 >= 0.9 - 0.3 despite 0.9 - 0.3 = 0.6000000000000001
    choice, fallbacks = decide("tolerance", tau=0.3)
    assert choice[0] == 2 and fallbacks[0] == [2, 1, 0]
    # tau = 0 is argmax with ties to the cheaper target
    assert decide("tolerance", tau=0.0)[0] == decide("argmax")[0]


def test_utility_normalises_cost_per_query_over_the_pool():
    proba = np.array([[0.9, 0.7, 0.65]])
    cost = np.array([[10.0, 0.0, 5.0]])  # c_norm = [1, 0, 0.5]
    lam_choice = lambda lam: route(proba, cost, PolicyConfig(kind="utility", lam=lam), NAMES).choice[0]
    assert lam_choice(0.1) == 0  # 0.8 vs 0.7 vs 0.6
    assert lam_choice(0.3) == 1  # 0.6 vs 0.7 vs 0.5
    # scaling all costs of a query leaves the decision unchanged
    assert route(proba, cost * 1e-6, PolicyConfig(kind="utility", lam=0.1), NAMES).choice[0] == 0


def test_utility_zero_is_argmax_and_huge_lambda_is_cheapest():
    rng = np.random.default_rng(0)
    proba = rng.random((500, 6))
    cost = rng.random((500, 6)) * 3
    names = [f"t{k}" for k in range(6)]
    argmax = route(proba, cost, PolicyConfig(kind="argmax"), names)
    zero = route(proba, cost, PolicyConfig(kind="utility", lam=0.0), names)
    np.testing.assert_array_equal(zero.fallbacks, argmax.fallbacks)
    for lam in (1e9, math.inf):
        cheapest = route(proba, cost, PolicyConfig(kind="utility", lam=lam), names).choice
        np.testing.assert_array_equal(cheapest, cost.argmin(axis=1))


def test_allowed_subset_is_respected_by_every_policy_and_masked_in_fallbacks():
    for kind, params in [("argmax", {}), ("tolerance", {"tau": 0.5}), ("utility", {"lam": 0.1})]:
        choice, fallbacks = decide(kind, allowed=["big", "mid"], **params)
        assert all(c in (0, 1) for c in choice)
        assert all(row[2] == -1 and sorted(row[:2]) == [0, 1] for row in fallbacks)
    # the tolerance reference max is taken over allowed targets only
    choice, _ = decide("tolerance", tau=0.1, allowed=["mid", "small"])
    assert choice == [1, 1, 2]  # row 1: max allowed 0.75, small (0.6) is not within 0.1
    with pytest.raises(UserError, match="huge"):
        decide("argmax", allowed=["big", "huge"])


def test_fallbacks_match_a_per_query_reference_with_many_ties():
    rng = np.random.default_rng(1)
    proba = rng.integers(0, 11, size=(300, 5)) / 10  # coarse values force ties
    cost = rng.integers(1, 4, size=(300, 5)).astype(float)
    names = list("abcde")
    allowed = ["a", "c", "d", "e"]
    ok = [0, 2, 3, 4]
    for kind, params in [("argmax", {}), ("tolerance", {"tau": 0.2}), ("utility", {"lam": 0.25})]:
        got = route(proba, cost, PolicyConfig(kind=kind, allowed=allowed, **params), names).fallbacks
        for i in range(proba.shape[0]):
            p, c = proba[i], cost[i]
            if kind == "argmax":
                key = lambda k: (-p[k], c[k], k)
            elif kind == "tolerance":
                best = max(p[k] for k in ok)
                key = lambda k: (0, c[k], -p[k], k) if p[k] >= best - 0.2 - 1e-12 else (1, -p[k], c[k], k)
            else:
                low, high = min(c[k] for k in ok), max(c[k] for k in ok)
                norm = lambda k: (c[k] - low) / (high - low) if high > low else 0.0
                key = lambda k: (-(p[k] - 0.25 * norm(k)), c[k], k)
            assert got[i].tolist() == sorted(ok, key=key) + [-1], (kind, i)


def test_budget_lambda_meets_the_budget_on_validation_and_is_smallest():
    rng = np.random.default_rng(2)
    names = [f"t{k}" for k in range(4)]
    cost = np.array([1.0, 2.0, 4.0, 8.0])
    proba = np.clip(rng.random((400, 4)) * 0.5 + np.array([0.1, 0.2, 0.3, 0.4]), 0, 1)
    mean_cost = lambda lam: cost[route(proba, cost, PolicyConfig(kind="utility", lam=lam), names).choice].mean()
    budget = 3.0
    assert mean_cost(0.0) > budget
    fit = fit_budget_lambda(proba, cost, budget, names)
    assert fit.feasible and 0 < fit.lam < math.inf
    assert fit.mean_cost == mean_cost(fit.lam) <= budget
    assert mean_cost(fit.lam * (1 - 1e-6)) > budget
    # the fitted lambda drives the budget policy
    config = PolicyConfig.from_user(kind="budget", budget=budget, lam=fit.lam)
    assert cost[route(proba, cost, config, names).choice].mean() <= budget
    # a generous budget needs no cost pressure at all
    assert fit_budget_lambda(proba, cost, 100.0, names).lam == 0.0


def test_budget_below_the_cheapest_target_routes_cheapest_with_a_warning():
    proba = np.array([[0.9, 0.1], [0.8, 0.2]])
    with pytest.warns(RuntimeWarning, match="cannot be met"):
        fit = fit_budget_lambda(proba, np.array([5.0, 2.0]), 1.0, ["a", "b"])
    assert (fit.lam, fit.mean_cost, fit.feasible) == (math.inf, 2.0, False)


def test_budget_measured_on_true_costs():
    proba = np.array([[0.9, 0.5], [0.9, 0.5]])
    expected = np.array([2.0, 1.0])
    true_cost = np.array([[10.0, 1.0], [np.nan, 1.0]])  # NaN falls back to the expected cost
    fit = fit_budget_lambda(proba, expected, 5.0, ["a", "b"], true_cost_val=true_cost)
    assert fit.mean_cost == 1.0  # argmax would spend (10 + 2) / 2 = 6 > 5


def test_config_validation_gives_clear_user_errors():
    for bad, field in [({"tau": -0.1}, "tau"), ({"lam": -1}, "lam"), ({"budget": 0}, "budget"),
                       ({"allowed": []}, "allowed"), ({"kind": "cheapest"}, "kind")]:
        with pytest.raises(UserError, match=field):
            PolicyConfig.from_user(**bad)
    with pytest.raises(UserError, match="needs budget"):
        PolicyConfig.from_user(kind="budget", lam=0.1)
    with pytest.raises(UserError, match="fit_budget_lambda"):
        PolicyConfig.from_user(kind="budget", budget=1.0)
    with pytest.raises(ValueError, match="proba"):
        route(PROBA[:, :2], COST, PolicyConfig(), NAMES)


def test_sweep_traces_cost_down_as_the_parameter_grows():
    rng = np.random.default_rng(3)
    proba = rng.random((200, 4))
    cost = np.array([8.0, 4.0, 2.0, 1.0])
    names = list("abcd")
    for base in (PolicyConfig(kind="tolerance"), PolicyConfig(kind="utility"),
                 PolicyConfig(kind="anchored", anchor="a", margin=0.1)):
        values = default_sweep_values(base.kind)
        decisions = sweep(proba, cost, base, values, names)
        assert len(decisions) == len(values)
        mean_costs = np.array([cost[d.choice].mean() for d in decisions])
        assert (np.diff(mean_costs) <= 1e-12).all()
        assert mean_costs[-1] == 1.0  # tau = 1 and lambda = inf: always the cheapest
    with pytest.raises(UserError, match="argmax"):
        sweep(proba, cost, PolicyConfig(kind="argmax"), np.array([0.0]), names)


def test_merge_policy_lays_overrides_over_the_default():
    default = PolicyConfig(kind="tolerance", tau=0.1, allowed=["big", "mid"])
    assert merge_policy(default, None) is default
    given = PolicyConfig(kind="argmax")
    assert merge_policy(default, given) is given
    assert merge_policy(default, {}) == default
    same_kind = merge_policy(default, {"kind": "tolerance"})
    assert same_kind.tau == 0.1 and same_kind.allowed == ["big", "mid"]  # the same kind keeps its parameter
    other_kind = merge_policy(default, {"kind": "utility", "allowed": None})
    assert other_kind.lam == PolicyConfig().lam and other_kind.allowed is None
    assert merge_policy(default, {"kind": "utility"}).tau == PolicyConfig().tau  # not inherited across kinds
    budget = PolicyConfig.from_user(kind="budget", budget=0.01, lam=3.0)
    assert merge_policy(budget, {}).lam == 3.0
    with pytest.raises(UserError, match="needs lam fitted"):
        merge_policy(budget, {"budget": 0.02})  # a lambda fitted for another budget is never reused
    with pytest.raises(UserError, match="tau"):
        merge_policy(default, {"tau": -1})


def test_anchored_stays_on_the_anchor_unless_the_advantage_beats_the_margin():
    never = route(PROBA, COST, PolicyConfig(kind="anchored", anchor="mid", margin=math.inf), NAMES)
    assert never.choice.tolist() == [1, 1, 1]  # an infinite margin always picks the anchor
    assert never.fallbacks[0].tolist() == [1, 0, 2]  # then the others by probability
    moved = route(PROBA, COST, PolicyConfig(kind="anchored", anchor="mid", margin=0.1), NAMES)
    assert moved.choice.tolist() == [0, 1, 1]  # row 1: big beats mid by 0.15 > 0.1; row 3: ties stay
    # lam > 0 trades cost as utility does, the anchor keeping its margin: row 3 stays on mid (0.6 + 0.1 - 0.5 / 9
    # against small's 0.6) where plain utility moves to the cheaper small
    kept = route(PROBA, COST, PolicyConfig(kind="anchored", anchor="mid", margin=0.1, lam=0.5), NAMES)
    assert kept.choice.tolist() == [1, 1, 1]
    assert route(PROBA, COST, PolicyConfig(kind="utility", lam=0.5), NAMES).choice.tolist() == [1, 1, 2]
    rng = np.random.default_rng(0)
    proba, cost = rng.random((50, 3)), rng.random((50, 3))
    for margin in (0.0, 0.1, math.inf):  # lam = inf is the cheapest target whatever the margin (the sweep's end)
        cheapest = route(proba, cost, PolicyConfig(kind="anchored", anchor="mid", margin=margin, lam=math.inf), NAMES)
        assert cheapest.choice.tolist() == cost.argmin(axis=1).tolist()
    assert route(proba, cost, PolicyConfig(kind="anchored", anchor="mid", margin=0.0), NAMES).choice.tolist() == (
        proba.argmax(axis=1).tolist())  # no margin: argmax
    not_allowed = route(PROBA, COST, PolicyConfig(kind="anchored", anchor="big", margin=math.inf,
                                                  allowed=["mid", "small"]), NAMES)
    assert not_allowed.choice.tolist() == [1, 1, 2]  # the allowed target of highest p (cheaper on ties)
    with pytest.raises(UserError, match="anchor"):
        PolicyConfig.from_user(kind="anchored")
    with pytest.raises(UserError, match="nobody"):
        route(PROBA, COST, PolicyConfig(kind="anchored", anchor="nobody"), NAMES)
    with pytest.raises(UserError, match="lam"):
        PolicyConfig.from_user(kind="anchored", anchor="mid", tau=0.2)


def test_fit_anchored_never_loses_to_the_anchor_on_validation():
    rng = np.random.default_rng(0)
    n = 400
    labels = np.column_stack([rng.random(n) < 0.8, rng.random(n) < 0.5]).astype(float)  # "big" is the best single
    informative = np.column_stack([np.full(n, 0.8), np.where(labels[:, 1] > labels[:, 0], 0.95, 0.3)])
    fitted = fit_anchored(informative, labels, np.array([2.0, 1.0]), ["big", "small"])
    assert fitted.anchor == "big" and fitted.margin < 1 and fitted.lam == 0
    routed = labels[np.arange(n), route(informative, np.array([2.0, 1.0]), fitted, ["big", "small"]).choice].mean()
    assert routed > labels[:, 0].mean()  # the planted advantage is taken
    noise = rng.random((n, 2))
    fitted = fit_anchored(noise, labels, np.array([2.0, 1.0]), ["big", "small"])
    routed = labels[np.arange(n), route(noise, np.array([2.0, 1.0]), fitted, ["big", "small"]).choice].mean()
    assert routed >= labels[:, 0].mean()  # uninformative probabilities: never below the anchor
    assert PolicyConfig.model_validate_json(fitted.model_dump_json()) == fitted
    # margins equally accurate on validation: the smallest, which leaves the cost trade-off the most room
    assert fit_anchored(np.full((n, 2), 0.5), labels, np.array([2.0, 1.0]), ["big", "small"]).margin == 0.0


def test_fit_anchored_leaves_the_anchor_only_for_a_gain_beyond_its_standard_error():
    n = 100
    labels = np.zeros((n, 2))
    labels[:80, 0] = 1  # "big" right on 80 queries
    moved = np.arange(80, 100)  # where "small" is predicted far better: right on 11 of them, "big" on the 9 others
    labels[moved[:11], 1] = 1
    labels[moved[11:], 0], labels[moved[11:], 1] = 1, 0
    labels[:9, 0] = 0  # keep "big" the best single (80 right) with the 9 swapped
    proba = np.column_stack([np.full(n, 0.5), np.where(np.isin(np.arange(n), moved), 0.9, 0.1)])
    targets, cost = ["big", "small"], np.array([2.0, 1.0])

    def routed(policy):
        return labels[np.arange(n), route(proba, cost, policy, targets).choice].mean()

    greedy = fit_anchored(proba, labels, cost, targets, confidence=0.0)
    assert greedy.margin < 0.4 and routed(greedy) == pytest.approx(labels[:, 0].mean() + 0.02)  # 2 rows gained
    cautious = fit_anchored(proba, labels, cost, targets)  # +0.02 is within one standard error (0.045): stay
    assert cautious.margin == pytest.approx(0.4) and routed(cautious) == labels[:, 0].mean()
    with pytest.raises(UserError, match="confidence"):
        fit_anchored(proba, labels, cost, targets, confidence=-1.0)


def test_the_anchor_can_come_from_more_labels_than_validation():
    labels = np.array([[1, 0], [1, 0], [0, 1], [np.nan, 1]])  # "small" right on 2 of 4, "big" on 2 of its 3
    targets, cost = ["big", "small"], np.array([2.0, 1.0])
    assert most_accurate_target(labels, cost, targets) == "big"
    assert most_accurate_target(labels[:3], cost, targets) == "big"  # 2/3 against 1/3
    assert most_accurate_target(labels[[0, 2]], cost, targets) == "small"  # tie: the cheaper
    assert most_accurate_target(labels, cost, targets, allowed=["small"]) == "small"
    with pytest.raises(UserError, match="no allowed target has a label"):
        most_accurate_target(np.full((2, 2), np.nan), cost, targets)
    proba = np.tile([0.2, 0.8], (4, 1))
    given = fit_anchored(proba, labels, cost, targets, anchor="small", confidence=0.0)
    assert given.anchor == "small" and route(proba, cost, given, targets).choice.tolist() == [1, 1, 1, 1]
    with pytest.raises(UserError, match="nobody"):
        fit_anchored(proba, labels, cost, targets, anchor="nobody")
