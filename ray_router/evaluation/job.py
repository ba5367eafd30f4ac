"""`ray-router evaluate`: the trained router against the baselines, on the test split, into a report.

The router's policy parameters are chosen on its holdout rows (part of the training split that
the router never trained on) and, when the bundle was trained with policy folds, on its fit rows predicted
out of fold as well; every number is reported on the test split, the same rows for every router. The
semantic baselines (kNN and the same SharedTrunkNet on all-MiniLM-L6-v2 sentence embeddings) get their
embeddings through the same extraction job, cached in a feature folder, and are fitted in memory on the
router's own fit rows (and again on the same folds, for their own out-of-fold rows).
"""

from collections.abc import Callable, Sequence
from dataclasses import replace
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
from ray_router.model.bundle import read_out_of_fold
from ray_router.model.knn_router import KnnRouter
from ray_router.model.out_of_fold import fold_ids, out_of_fold_proba, rows_sha256, take_rows
from ray_router.model.proba_router import ProbaRouter
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
    policy_kind: str = "anchored",
    compare: dict[str, str] | None = None,
    use_ray: bool = True,
) -> EvaluationResults:
    """Evaluate BUNDLE on DATA's test split, with the features of FEATURES (the feature folders it was trained
    on: one per encoder), beside the baselines and the routers `compare` names ({name: bundle}, trained on the
    same data and holdout); write metrics.json, report.md and plots into OUT. When BUNDLE holds out-of-fold
    probabilities of its fit rows, those rows join the holdout as validation rows for every router: the compared
    bundles must hold them too, and the baselines are fitted again on the same folds."""
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
    out_of_fold = {name: _out_of_fold(name, path, candidate, fit_rows)
                   for name, path, candidate in [("prefill router", bundle, router),
                                                 *((name, compare[name], other) for name, other in others.items())]}
    folds = None
    if out_of_fold["prefill router"] is not None:
        missing = [name for name, proba in out_of_fold.items() if proba is None]
        if missing:
            raise UserError(f"{', '.join(missing)}: no out-of-fold rows, which {bundle} has: train it with the same "
                            f"policy_folds ({router.manifest.validation.policy_folds})")
        folds = fold_ids(fit_rows.query_ids, router.manifest.validation.policy_folds)
    skipped = []
    if "task-label" in baselines and task_labels(dataset) is None:  # known before any work starts
        baselines = tuple(b for b in baselines if b != "task-label")
        skipped.append("The task-label baseline was skipped: the data has no task or category labels.")

    def bundle_input(name: str, candidate: Router) -> RouterInput:
        X_val = feature_set.load(val_rows.query_ids, candidate.required_keys)
        proba_val = None if folds is None else np.vstack([candidate.predict_proba(X_val), out_of_fold[name]])
        return RouterInput(name, candidate, feature_set.load(test_rows.query_ids, candidate.required_keys), X_val,
                           proba_val)

    routers = [bundle_input(name, candidate) for name, candidate in {"prefill router": router, **others}.items()]
    if {"knn", "semantic-trunk"} & set(baselines):
        semantic_dir = semantic_features or str(Path(out) / "semantic_features")
        extract_features(data, SEMANTIC_ENCODER, semantic_dir)
        routers += _semantic_routers(router, FeatureSet.open(semantic_dir), baselines, fit_rows, val_rows,
                                     test_rows, folds, use_ray)
    if "task-label" in baselines:
        tasks, labels = task_labels(fit_rows), fit_rows.labels()

        def fit_task(rows: np.ndarray) -> TaskLabelRouter:
            return TaskLabelRouter().fit(tasks[rows], labels[rows])

        routers.append(_fitted_input("task-label (reference)", fit_task, tasks, task_labels(test_rows),
                                     task_labels(val_rows), folds))

    def split(rows: RoutingDataset) -> SplitData:
        return SplitData(rows.labels(), router.expected_cost(rows.prompts), rows.costs())

    validation = split(val_rows) if folds is None else SplitData.concat([split(val_rows), split(fit_rows)])
    results = evaluate(routers, router.targets, split(test_rows), validation,
                       labels_train=fit_rows.labels() if folds is None else None, policy_kind=policy_kind)
    if folds is not None:
        skipped.append(f"Validation rows: the {len(val_rows)} holdout rows and the {len(fit_rows)} fit rows, each "
                       f"predicted out of fold ({router.manifest.validation.policy_folds} folds by query_id) by a "
                       "copy of its router fitted without its fold; the baselines likewise.")
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


def _out_of_fold(name: str, path: str, router: Router, fit_rows: RoutingDataset) -> np.ndarray | None:
    """The bundle's out-of-fold probabilities of the fit rows (None: it has none); UserError when they belong to
    other rows (the data changed since training)."""
    proba = read_out_of_fold(path, router.manifest)
    if proba is not None and router.manifest.validation.out_of_fold_rows != rows_sha256(fit_rows.query_ids):
        raise UserError(f"{name}: its out-of-fold rows are not this data's fit rows (was it trained on other data?)")
    return proba


def _fitted_input(name: str, fit: Callable[[np.ndarray], ProbaRouter], X_fit, X_test, X_val,
                  folds: np.ndarray | None) -> RouterInput:
    """A baseline fitted on every fit row (`fit(rows)` fits one on those rows); with `folds`, its validation
    probabilities are the holdout's and then the fit rows' out of fold, from copies fitted on the same folds."""
    model = fit(np.arange(_n_rows(X_fit)))
    if folds is None:
        return RouterInput(name, model, X_test, X_val)
    holdout = model.predict_proba(X_val)
    proba_val = np.vstack([holdout, out_of_fold_proba(fit, X_fit, folds, holdout.shape[1])])
    return RouterInput(name, model, X_test, X_val, proba_val)


def _n_rows(X) -> int:
    return len(next(iter(X.values()))) if isinstance(X, dict) else len(X)


def _trunk_head(head: dict) -> dict:
    """The description of the router's SharedTrunkNet head, or of the first one it stacks ({}: none)."""
    if head.get("kind") == "trunk":
        return head
    return next((found for part in head.get("parts", []) if (found := _trunk_head(part))), {})


def _semantic_routers(router: Router, semantic: FeatureSet, baselines, fit_rows: RoutingDataset,
                      val_rows: RoutingDataset, test_rows: RoutingDataset, folds: np.ndarray | None,
                      use_ray: bool) -> list[RouterInput]:
    """kNN and the router's own SharedTrunkNet recipe on MiniLM embeddings, fitted on the router's fit rows (and
    on `folds` of them, see _fitted_input)."""

    def embed(rows: RoutingDataset):
        return semantic.load(rows.query_ids, [SEMANTIC_KEY])

    E_fit, E_val, E_test = embed(fit_rows), embed(val_rows), embed(test_rows)
    labels, val_labels = fit_rows.labels(), val_rows.labels()
    routers = []
    if "knn" in baselines:
        def fit_knn(rows: np.ndarray) -> KnnRouter:  # k chosen on the holdout, as for the router's kNN
            return KnnRouter().fit(E_fit[SEMANTIC_KEY][rows], labels[rows], E_val[SEMANTIC_KEY], val_labels)

        knn = _fitted_input("semantic kNN", fit_knn, E_fit[SEMANTIC_KEY], E_test[SEMANTIC_KEY], E_val[SEMANTIC_KEY],
                            folds)
        routers.append(replace(knn, name=f"semantic kNN (k={knn.router.k_})"))
    if "semantic-trunk" in baselines:
        recipe = _trunk_head(router.manifest.head)  # the router's own PCA size and ensemble recipe, if it has them

        def fit_trunk(rows: np.ndarray) -> SharedTrunkRouter:
            return SharedTrunkRouter(SEMANTIC_KEY, pca_k=recipe["blocks"][0][1] if recipe else 100,
                                     config=TrunkConfig.model_validate(recipe["config"]) if recipe else None,
                                     use_ray=use_ray).fit(take_rows(E_fit, rows), labels[rows])

        routers.append(_fitted_input("semantic SharedTrunkNet", fit_trunk, E_fit, E_test, E_val, folds))
    return routers
