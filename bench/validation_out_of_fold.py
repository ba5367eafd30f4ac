"""Would policy choices on out-of-fold predictions of the fit rows hold better? Validation rows only.

    .venv/bin/python bench/validation_out_of_fold.py --bundle B --data D --features F [--features F2]
        --config TRAIN_CONFIG [--folds 5] [--halvings 60] [--seed 4]

The out-of-fold probabilities of every fit row are the bundle's own when it was trained with `policy_folds`;
otherwise the bundle's chosen candidate (read from its router.json and laid over TRAIN_CONFIG, the search
config it was trained with) is fitted again `--folds` times in this process, each time on the fit rows minus
one fold (training's folds by query_id; the stack's weights and kNN's k still chosen on the holdout, as in
training), and predicts that fold. Then on each of `--halvings` random halvings A/B of the holdout the anchored
policy and its points are chosen on A alone (the bundle's own predictions), or on A plus every out-of-fold
fit row, and scored on B with the bundle's predictions: the gain at lambda = 0 and at the match-best-single
point over B's best single target (points; share of halvings below 0), that point's savings against B's most
expensive target, and B's AIQ. Test rows are never read. bench/README.md ("what would move the numbers") has
the last figures.
"""

import argparse

import numpy as np

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.evaluation import metrics
from ray_router.evaluation.evaluation import SplitData, _common_cost_range, _curve_aiq, _readout_indices, _Split
from ray_router.features.feature_set import FeatureSet
from ray_router.model.bundle import read_out_of_fold
from ray_router.model.out_of_fold import fold_ids, out_of_fold_proba, take_rows
from ray_router.model.router_training import RouterTrainConfig, _fit_head, split_for_training
from ray_router.policy.policies import default_sweep_values, fit_anchored, sweep
from ray_router.router import Router


def chosen_config(bundle: Router, config_path: str) -> RouterTrainConfig:
    """The search config with the bundle's chosen candidate laid over it."""
    config = RouterTrainConfig.from_yaml(config_path)
    chosen = [c["override"] for c in bundle.manifest.validation.candidates if c["chosen"]]
    return config.candidate(chosen[0]) if chosen else config


def target_specs(head: dict) -> list[str]:
    """Each target's block spec, from the bundle's trunk head or the one it stacks."""
    trunk = head if head["kind"] == "trunk" else next((p for p in head.get("parts", []) if p["kind"] == "trunk"), None)
    if trunk is None:
        raise SystemExit(f"a {head['kind']} head without a SharedTrunkNet: its blocks are not recorded per target")
    return [spec for spec, _ in trunk["blocks"]]


def out_of_fold(bundle: Router, config: RouterTrainConfig, features, fit_rows, holdout, folds: int):
    """(n_fit, K) probabilities of the fit rows, each from a copy of the head fitted without its fold."""
    if bundle.manifest.temperatures is not None:
        raise SystemExit("the bundle is calibrated: its temperatures would have to be applied to these rows too")
    specs, keys = target_specs(bundle.manifest.head), bundle.required_keys
    X, Y = features.load(fit_rows.query_ids, keys), fit_rows.labels()
    X_val, Y_val = features.load(holdout.query_ids, keys), holdout.labels()

    def fit(rows: np.ndarray):
        return _fit_head(config, specs, False, take_rows(X, rows), Y[rows], X_val, Y_val)

    return out_of_fold_proba(fit, X, fold_ids(fit_rows.query_ids, folds), Y.shape[1])


def split_of(bundle: Router, rows) -> _Split:
    return _Split(SplitData(rows.labels(), bundle.expected_cost(rows.prompts), rows.costs()),
                  len(bundle.targets), "rows")


def stacked(a: _Split, b: _Split) -> _Split:
    return _Split(SplitData(*(np.vstack([x, y]) for x, y in ((a.labels, b.labels), (a.expected, b.expected),
                                                              (a.cost, b.cost)))), a.labels.shape[1], "rows")


def subset(split: _Split, index: np.ndarray) -> _Split:
    return _Split(SplitData(split.labels[index], split.expected[index], split.cost[index]), split.labels.shape[1],
                  "rows")


def score_on(p_b: np.ndarray, b: _Split, policy, chosen: _Split, p_chosen: np.ndarray, names: list[str]) -> tuple:
    """(gain at lambda = 0, gain at the match point, its savings, AIQ) on B of `policy`, its match point chosen on
    the rows `chosen`."""
    values = default_sweep_values("anchored")
    curve = chosen.curve(sweep(p_chosen, chosen.expected, policy, values, names), values)
    match = _readout_indices(curve, metrics.per_target_outcomes(chosen.labels, chosen.cost))["match_best_single"]
    choices = np.stack([r.choice for r in sweep(p_b, b.expected, policy, values, names)])
    rows = np.arange(b.n)
    accuracy, cost = np.nanmean(b.labels[rows, choices], axis=1), b.cost[rows, choices].mean(axis=1)
    best, top = np.nanmax(np.nanmean(b.labels, axis=0)), b.cost.mean(axis=0).max()
    cost_range = _common_cost_range(metrics.per_target_outcomes(b.labels, b.cost)["mean_cost"])
    aiq = _curve_aiq(b.curve(sweep(p_b, b.expected, policy, values, names), values), cost_range)
    if match is None:
        return accuracy[0] - best, np.nan, np.nan, aiq
    return accuracy[0] - best, accuracy[match] - best, 1 - cost[match] / top, aiq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--features", action="append", required=True)
    parser.add_argument("--config", required=True, help="the search config the bundle was trained with")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--halvings", type=int, default=60)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    bundle = Router.load(args.bundle)
    dataset, features = RoutingDataset.read(args.data), FeatureSet.open(args.features)
    fit_rows, holdout = split_for_training(dataset, bundle.manifest.validation.holdout_fraction)
    p_fit = read_out_of_fold(args.bundle, bundle.manifest)
    if p_fit is None:
        p_fit = out_of_fold(bundle, chosen_config(bundle, args.config), features, fit_rows, holdout, args.folds)
    p_hold = bundle.predict_proba(features.load(holdout.query_ids, bundle.required_keys))
    fit_split, hold_split, names = split_of(bundle, fit_rows), split_of(bundle, holdout), bundle.targets
    rng, results = np.random.default_rng(args.seed), {"holdout half": [], "holdout half + out-of-fold": []}
    for _ in range(args.halvings):
        order = rng.permutation(hold_split.n)
        a, b = order[: hold_split.n // 2], order[hold_split.n // 2:]
        half = subset(hold_split, a)
        choosing = {"holdout half": (half, p_hold[a]),
                    "holdout half + out-of-fold": (stacked(half, fit_split), np.vstack([p_hold[a], p_fit]))}
        for rule, (rows, p) in choosing.items():
            policy = fit_anchored(p, rows.labels, rows.cost, names)
            results[rule].append(score_on(p_hold[b], subset(hold_split, b), policy, rows, p, names))
    print(f"holdout {hold_split.n}, out-of-fold fit rows {fit_split.n}, {args.halvings} halvings; gain on B over "
          "its best single target in points (share of halvings below 0)")
    print("| policy chosen on | λ = 0 | match best single | its savings | AIQ on B |\n|---|---|---|---|---|")
    for rule, rows in results.items():
        v = np.array(rows, dtype=float)
        gain = [f"{np.nanmean(v[:, c]) * 100:+.2f} ({np.nanmean(v[:, c] < -1e-9) * 100:.0f} %)" for c in (0, 1)]
        print(f"| {rule} | {gain[0]} | {gain[1]} | {np.nanmean(v[:, 2]) * 100:.1f} % | {np.nanmean(v[:, 3]):.4f} |")


if __name__ == "__main__":
    main()
