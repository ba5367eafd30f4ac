"""`ray-router evaluate`: the trained router against the baselines, on the test split, into a report.

The router's policy parameters are chosen on its holdout rows (part of the training split that
the router never trained on); every number is reported on the test split, the same rows for every
router. The semantic baselines (kNN and the same SharedTrunkNet on all-MiniLM-L6-v2 sentence
embeddings) get their embeddings through the same extraction job, cached in a feature folder, and are
fitted in memory on the router's own fit rows.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.errors import UserError
from ray_router.evaluation.baselines import TaskLabelRouter
from ray_router.evaluation.evaluation import (
    BundleInfo,
    EvaluationResults,
    RouterInput,
    SplitData,
    evaluate,
)
from ray_router.evaluation.report import write_report
from ray_router.features.extraction import extract_features
from ray_router.features.feature_set import FeatureSet
from ray_router.features.schema import EncoderConfig, column_name, feature_key
from ray_router.model.knn_router import KnnRouter
from ray_router.model.router_training import split_for_training
from ray_router.model.training import TrunkConfig
from ray_router.model.trunk_router import SharedTrunkRouter
from ray_router.router import Router

BASELINES = ("knn", "semantic-trunk", "task-label")
# all-MiniLM-L6-v2's sentence embedding: its last layer, mean-pooled, over its max_seq_length of 256
# tokens (the END of long prompts is kept), on the raw text.
SEMANTIC_ENCODER = EncoderConfig(encoder="minilm-l6", layers=(6,), poolings=("mean",), max_tokens=256,
                                 chat_template=False)
SEMANTIC_KEY = feature_key(SEMANTIC_ENCODER.name, column_name(6, "mean"))


def task_labels(dataset: RoutingDataset) -> np.ndarray | None:
    """`category` where the data has it (finer: MMLU-Pro subjects), else `task`; None when it has neither."""
    for column in ("category", "task"):
        values = dataset.column(column)
        if values is not None and not all(v is None for v in values):
            return np.array(["" if v is None else str(v) for v in values], dtype=object)
    return None


def run_evaluation(
    bundle: str,
    data: str,
    features: str | Sequence[str],
    out: str,
    *,
    baselines: tuple[str, ...] = BASELINES,
    semantic_features: str | None = None,
    policy_kind: str = "tolerance",
    compare: dict[str, str] | None = None,
    use_ray: bool = True,
) -> EvaluationResults:
    """Evaluate BUNDLE on DATA's test split, with the features of FEATURES (the feature folders it was trained
    on: one per encoder), beside the baselines and the routers `compare` names ({name: bundle}, trained on the
    same data and holdout); write metrics.json, report.md and plots into OUT."""
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise UserError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)} or 'all'")
    router = Router.load(bundle)
    others = {name: Router.load(path) for name, path in (compare or {}).items()}
    dataset = RoutingDataset.read(data)
    feature_set = FeatureSet.open(features)
    for name, candidate in {"prefill router": router, **others}.items():
        _check_router(name, candidate, dataset, feature_set, router.manifest.validation.holdout_fraction)
    fit_rows, val_rows = split_for_training(dataset, router.manifest.validation.holdout_fraction)
    test_rows = dataset.select(split="test")
    if not len(test_rows) or not len(val_rows):
        raise UserError(f"{data}: evaluation needs test rows and holdout rows of the training split")
    skipped = []
    if "task-label" in baselines and task_labels(dataset) is None:  # known before any work starts
        baselines = tuple(b for b in baselines if b != "task-label")
        skipped.append("The task-label baseline was skipped: the data has no task or category labels.")

    def prefill(rows: RoutingDataset):
        return feature_set.load(rows.query_ids, router.required_keys)

    routers = [RouterInput("prefill router", router, prefill(test_rows), prefill(val_rows))]
    routers += [RouterInput(name, other, feature_set.load(test_rows.query_ids, other.required_keys),
                            feature_set.load(val_rows.query_ids, other.required_keys))
                for name, other in others.items()]
    if {"knn", "semantic-trunk"} & set(baselines):
        semantic_dir = semantic_features or str(Path(out) / "semantic_features")
        extract_features(data, SEMANTIC_ENCODER, semantic_dir)
        routers += _semantic_routers(router, FeatureSet.open(semantic_dir), baselines, fit_rows, val_rows,
                                     test_rows, use_ray)
    if "task-label" in baselines:
        task = TaskLabelRouter().fit(task_labels(fit_rows), fit_rows.labels())
        routers.append(RouterInput("task-label (reference)", task, task_labels(test_rows), task_labels(val_rows)))

    def split(rows: RoutingDataset) -> SplitData:
        return SplitData(rows.labels(), router.expected_cost(rows.prompts), rows.costs())

    results = evaluate(routers, router.targets, split(test_rows), split(val_rows),
                       labels_train=fit_rows.labels(), policy_kind=policy_kind)
    results.notes.extend(skipped)
    results.bundle = BundleInfo(path=str(bundle), feature_schema=router.schema_id,
                                encoder=", ".join(schema.encoder for schema in router.feature_schemas),
                                selection=_trunk_head(router.manifest.head).get("blocks"))
    write_report(results, out)
    return results


def _check_router(name: str, router: Router, dataset: RoutingDataset, feature_set: FeatureSet,
                  holdout_fraction: float) -> None:
    """UserError unless `router` was trained on these targets, reads these feature folders and has this holdout."""
    if dataset.target_names != router.targets:
        raise UserError(f"{name}: the data has targets {dataset.target_names[:3]}..., "
                        f"the router {router.targets[:3]}...")
    trained = {schema.schema_id for schema in router.feature_schemas}
    given = {schema.schema_id for schema in feature_set.schemas}
    if not trained <= given:
        raise UserError(f"{name} reads features of schemas {', '.join(sorted(trained))}; the feature folders hold "
                        f"{', '.join(sorted(given))}")
    if router.manifest.validation.holdout_fraction != holdout_fraction:
        raise UserError(f"{name} was trained with another holdout fraction: its validation rows would differ")


def _trunk_head(head: dict) -> dict:
    """The description of the router's SharedTrunkNet head, or of the first one it stacks ({}: none)."""
    if head.get("kind") == "trunk":
        return head
    return next((found for part in head.get("parts", []) if (found := _trunk_head(part))), {})


def _semantic_routers(router: Router, semantic: FeatureSet, baselines, fit_rows: RoutingDataset,
                      val_rows: RoutingDataset, test_rows: RoutingDataset, use_ray: bool) -> list[RouterInput]:
    """kNN and the router's own SharedTrunkNet recipe on MiniLM embeddings, fitted on the router's fit rows."""

    def embed(rows: RoutingDataset):
        return semantic.load(rows.query_ids, [SEMANTIC_KEY])

    routers = []
    if "knn" in baselines:
        knn = KnnRouter().fit(embed(fit_rows)[SEMANTIC_KEY], fit_rows.labels(),
                              embed(val_rows)[SEMANTIC_KEY], val_rows.labels())
        routers.append(RouterInput(f"semantic kNN (k={knn.k_})", knn, embed(test_rows)[SEMANTIC_KEY],
                                   embed(val_rows)[SEMANTIC_KEY]))
    if "semantic-trunk" in baselines:
        recipe = _trunk_head(router.manifest.head)  # the router's own PCA size and ensemble recipe, if it has them
        trunk = SharedTrunkRouter(SEMANTIC_KEY, pca_k=recipe["blocks"][0][1] if recipe else 100,
                                  config=TrunkConfig.model_validate(recipe["config"]) if recipe else None,
                                  use_ray=use_ray).fit(embed(fit_rows), fit_rows.labels())
        routers.append(RouterInput("semantic SharedTrunkNet", trunk, embed(test_rows), embed(val_rows)))
    return routers
