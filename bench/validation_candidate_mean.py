"""Would the mean of several search candidates beat the best one? Validation rows only.

    .venv/bin/python bench/validation_candidate_mean.py --data D --features F --scan S [--features F2 --scan S2]
        [--config TRAIN_CONFIG] [--top 1,2,3,5]

Every candidate of TRAIN_CONFIG (default: bench/quality.py's SEARCH) is fitted on the fit rows in this process,
as `ray-router train` fits it, and scored on the holdout as training scores it (kNN and stack cross-fitted):
log-loss, mean AUC and the anchored policy's holdout AIQ. Then the equal-weight mean of the probabilities of the
`--top` M candidates with the lowest holdout log-loss is scored the same way (each candidate's compared
predictions averaged: the mean itself chooses nothing on the holdout). Test rows are never read.
bench/README.md (decision item 9) has the last figures.
"""

import argparse

import numpy as np

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.features.feature_set import FeatureSet
from ray_router.model.cost_model import CostModel
from ray_router.model.preprocessing import block_keys
from ray_router.model.router_training import (
    RouterTrainConfig,
    _anchor,
    _compared_proba,
    _fit_head,
    _holdout_scores,
    _policy_split,
    split_for_training,
    target_blocks,
)

from quality import SEARCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--features", action="append", required=True)
    parser.add_argument("--scan", action="append", required=True)
    parser.add_argument("--config", help="a train config with candidates (default: bench/quality.py's SEARCH)")
    parser.add_argument("--top", default="1,2,3,5", help="comma-separated M: the mean of the M best candidates")
    args = parser.parse_args()
    config = RouterTrainConfig.from_yaml(args.config) if args.config else RouterTrainConfig(candidates=SEARCH)
    dataset, feature_set = RoutingDataset.read(args.data), FeatureSet.open(args.features)
    fit_rows, holdout = split_for_training(dataset, config.holdout_fraction)
    split = _policy_split(holdout, CostModel.fit(fit_rows))
    anchor = _anchor(dataset, split)
    selections: dict = {}
    scored = []  # (override, compared holdout probabilities, scores)
    for override in config.candidates or [{}]:
        candidate = config.candidate(override)
        blocks = target_blocks(dataset, feature_set, args.scan, candidate, False, selections)
        specs = [blocks[target] for target in dataset.target_names]
        keys = list(dict.fromkeys(key for spec in specs for key in block_keys(spec)))
        X_val, Y_val = feature_set.load(holdout.query_ids, keys), holdout.labels()
        head = _fit_head(candidate, specs, False, feature_set.load(fit_rows.query_ids, keys), fit_rows.labels(),
                         X_val, Y_val)
        proba = _compared_proba(head, X_val, Y_val, head.predict_proba(X_val))
        scored.append((override, proba, _holdout_scores(proba, holdout, split, anchor)))
        print(f"{str(override):60s} {_line(scored[-1][2])}", flush=True)
    ranked = sorted(scored, key=lambda entry: entry[2]["holdout_log_loss"])
    for top in (int(m) for m in args.top.split(",")):
        mean = np.mean([proba for _, proba, _ in ranked[:top]], axis=0)
        print(f"{f'mean of the best {top}':60s} {_line(_holdout_scores(mean, holdout, split, anchor))}")


def _line(scores: dict) -> str:
    return (f"log-loss {scores['holdout_log_loss']:.4f}  mean AUC {scores['holdout_mean_auc']:.3f}  "
            f"holdout AIQ {scores['holdout_aiq']:.4f}")


if __name__ == "__main__":
    main()
