"""Operating-point rules checked on validation only: fitted on one half of a router's holdout, scored on the other.

    .venv/bin/python bench/validation_halves.py --bundle B --data D --features F [--features F2]
        --semantic-features S [--halvings 60] [--seed 4]

For the bundle's prefill router and for kNN on MiniLM (fitted on the bundle's fit rows, k chosen on its holdout,
as `evaluate` does), on each of `--halvings` random halvings A/B of the holdout: the anchored policy is fitted on
A (anchor; margin by the lower bound of its gain over the anchor, `confidence` 0 or 1 standard error), and its
most accurate point is read from A three ways: lambda = 0, the highest point of A's lambda curve, or the point
of A's curve whose gain has the highest lower bound (ties: the cheapest). Each is scored on B as the accuracy
difference with A's anchor on B (percentage points), with the share of halvings where it is below 0, and B's
AIQ of the whole curve. Test rows are never read. bench/README.md ("the most accurate point, and the margin by
a lower bound") has the last figures.
"""

import argparse

import numpy as np

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.evaluation import metrics
from ray_router.evaluation.evaluation import SplitData, _common_cost_range, _curve_aiq, _Split
from ray_router.evaluation.job import SEMANTIC_KEY
from ray_router.features.feature_set import FeatureSet
from ray_router.model.knn_router import KnnRouter
from ray_router.model.router_training import split_for_training
from ray_router.policy.policies import default_sweep_values, fit_anchored, sweep
from ray_router.router import Router

CONFIDENCES = (0.0, 1.0)
READINGS = ("lambda = 0", "curve max", "bound max")


def holdout_probabilities(bundle: str, data: str, features: list[str], semantic: str) -> tuple[dict, _Split, list]:
    """{router: (n_holdout, K) probabilities}, the holdout split and the target names."""
    router = Router.load(bundle)
    dataset = RoutingDataset.read(data)
    fit_rows, holdout = split_for_training(dataset, router.manifest.validation.holdout_fraction)
    proba = {"prefill router": router.predict_proba(FeatureSet.open(features).load(holdout.query_ids,
                                                                                   router.required_keys))}
    embeddings = FeatureSet.open(semantic)

    def embed(rows):
        return embeddings.load(rows.query_ids, [SEMANTIC_KEY])[SEMANTIC_KEY]

    knn = KnnRouter().fit(embed(fit_rows), fit_rows.labels(), embed(holdout), holdout.labels())
    proba[f"semantic kNN (k={knn.k_})"] = knn.predict_proba(embed(holdout))
    split = _Split(SplitData(holdout.labels(), router.expected_cost(holdout.prompts), holdout.costs()),
                   len(router.targets), "holdout")
    return proba, split, router.targets


def gain_bound(gain: np.ndarray, confidence: float) -> np.ndarray:
    """Mean of each row of paired gains (NaN: unknown) minus `confidence` standard errors of it."""
    known = np.isfinite(gain).sum(axis=-1)
    spread = np.nanstd(gain, axis=-1, ddof=1) / np.sqrt(known)
    return np.nanmean(gain, axis=-1) - confidence * np.nan_to_num(spread)


def one_halving(proba: np.ndarray, split: _Split, names: list[str], rows_a, rows_b, confidence: float) -> list:
    """[(gain on B over the anchor, per reading), B's AIQ] of the policy fitted on A."""
    a, b = (_Split(SplitData(split.labels[r], split.expected[r], split.cost[r]), len(names), "half")
            for r in (rows_a, rows_b))
    policy = fit_anchored(proba[rows_a], a.labels, a.cost, names, confidence=confidence)
    anchor, values = names.index(policy.anchor), default_sweep_values("anchored")

    def gains(part, rows):
        chosen = np.stack([r.choice for r in sweep(proba[rows], part.expected, policy, values, names)])
        index = np.arange(part.n)
        return part.labels[index, chosen] - part.labels[:, anchor], part.cost[index, chosen].mean(axis=1)

    gain_a, cost_a = gains(a, rows_a)
    gain_b, _ = gains(b, rows_b)

    def cheapest_best(score):
        tied = np.flatnonzero(score >= np.nanmax(score) - 1e-12)
        return tied[np.argmin(cost_a[tied])]

    picks = [0, cheapest_best(np.nanmean(gain_a, axis=1)), cheapest_best(gain_bound(gain_a, confidence))]
    cost_range = _common_cost_range(metrics.per_target_outcomes(b.labels, b.cost)["mean_cost"])
    aiq = _curve_aiq(b.curve(sweep(proba[rows_b], b.expected, policy, values, names), values), cost_range)
    return [float(np.nanmean(gain_b[i])) for i in picks] + [aiq]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--features", action="append", required=True)
    parser.add_argument("--semantic-features", required=True)
    parser.add_argument("--halvings", type=int, default=60)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    proba, split, names = holdout_probabilities(args.bundle, args.data, args.features, args.semantic_features)
    print(f"holdout {split.n} queries, {args.halvings} halvings; gain on B over the anchor in points "
          "(share of halvings below 0)")
    print("| router | confidence | " + " | ".join(READINGS) + " | AIQ on B |")
    print("|---|---|" + "---|" * (len(READINGS) + 1))
    for name, p in proba.items():
        for confidence in CONFIDENCES:
            rng = np.random.default_rng(args.seed)  # the same halvings for every rule
            results = []
            for _ in range(args.halvings):
                order = rng.permutation(split.n)
                results.append(one_halving(p, split, names, order[: split.n // 2], order[split.n // 2:], confidence))
            results = np.array(results)
            cells = [f"{results[:, i].mean() * 100:+.2f} ({np.mean(results[:, i] < -1e-9) * 100:.0f} %)"
                     for i in range(len(READINGS))]
            print(f"| {name} | {confidence:g} | " + " | ".join(cells) + f" | {np.nanmean(results[:, -1]):.4f} |")


if __name__ == "__main__":
    main()
