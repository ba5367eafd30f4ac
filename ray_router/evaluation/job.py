"""`ray-router evaluate`: the trained router against the baselines, on the test split, into a report.

The router's policy parameters are chosen on its holdout rows (part of the training split that
the router never trained on); every number is reported on the test split, the same rows for every
router. The semantic baselines (kNN and the same SharedTrunkNet on all-MiniLM-L6-v2 sentence
embeddings) get their embeddings through the same extraction job, cached in a feature folder.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_router.evaluation.baselines import KnnRouter, TaskLabelRouter
from ray_router.model.bundle import Router
from ray_router.errors import UserError
from ray_router.evaluation.evaluation import RouterScores, SplitData, evaluate
from ray_router.features.extraction import extract_features
from ray_router.features.store import FeatureStore
from ray_router.evaluation.report import write_report
from ray_router.model.router_training import RouterTrainConfig, split_for_training, train_router
from ray_router.data.routing_dataset import RoutingDataset

BASELINES = ("knn", "semantic-trunk", "task-label")
SEMANTIC_ENCODER = "minilm-l6"
SEMANTIC_LAYER = 6  # the last layer of all-MiniLM-L6-v2, mean-pooled: its sentence embedding
SEMANTIC_MAX_TOKENS = 256  # the model's max_seq_length; the END of long prompts is kept


@dataclass
class _Rows:
    """One split's query ids, prompts, labels, true costs and task labels."""

    dataset: RoutingDataset

    @property
    def ids(self):
        return self.dataset.query_ids

    def task_labels(self) -> np.ndarray:
        """`category` where the data has it (finer: MMLU-Pro subjects), else `task`."""
        for column in ("category", "task"):
            values = self.dataset.column(column)
            if values is not None and not all(v is None for v in values):
                return np.array(["" if v is None else str(v) for v in values], dtype=object)
        raise UserError("the task-label baseline needs a `task` or `category` column in the data")


def run_evaluation(
    bundle: str,
    data: str,
    features: str,
    out: str,
    *,
    baselines: tuple[str, ...] = BASELINES,
    semantic_features: str | None = None,
    policy_kind: str = "tolerance",
    use_ray: bool = True,
) -> dict:
    """Evaluate BUNDLE on DATA's test split; write metrics.json, report.md and plots into OUT."""
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise UserError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)} or 'all'")
    router = Router.load(bundle)
    dataset = RoutingDataset.read(data)
    if dataset.target_names != router.targets:
        raise UserError(f"{data} has targets {dataset.target_names[:3]}..., the router {router.targets[:3]}...")
    store = FeatureStore.open(features)
    if store.schema.schema_id != router.feature_schema.schema_id:
        raise UserError(f"{features} holds features of schema {store.schema.schema_id}, "
                        f"the router needs {router.feature_schema.schema_id}")
    holdout_fraction = router.manifest.validation.get("holdout_fraction", 0.15)
    fit_rows, val_rows = (_Rows(d) for d in split_for_training(dataset, holdout_fraction))
    test_rows = _Rows(dataset.select(split="test"))
    if not len(test_rows.ids) or not len(val_rows.ids):
        raise UserError(f"{data}: evaluation needs test rows and holdout rows of the training split")

    def prefill(rows: _Rows) -> np.ndarray:
        return router.predict_proba(store.load(rows.ids, router.required_columns))

    scores = [RouterScores("prefill router", proba_test=prefill(test_rows), proba_val=prefill(val_rows))]
    if {"knn", "semantic-trunk"} & set(baselines):
        semantic_dir = semantic_features or str(Path(out) / "semantic_features")
        extract_features(data, SEMANTIC_ENCODER, [SEMANTIC_LAYER], ["mean"], semantic_dir,
                         max_tokens=SEMANTIC_MAX_TOKENS, chat_template=False)
        scores += _semantic_scores(router, data, semantic_dir, out, baselines, fit_rows, val_rows, test_rows, use_ray)
    if "task-label" in baselines:
        task = TaskLabelRouter().fit(fit_rows.task_labels(), fit_rows.dataset.labels())
        scores.append(RouterScores("task-label (reference)", proba_test=task.predict_proba(test_rows.task_labels()),
                                   proba_val=task.predict_proba(val_rows.task_labels())))

    def split(rows: _Rows) -> SplitData:
        return SplitData(rows.dataset.labels(), router.expected_cost(rows.dataset.prompts), rows.dataset.costs())

    results = evaluate(scores, router.targets, split(test_rows), split(val_rows),
                       labels_train=fit_rows.dataset.labels(), policy_kind=policy_kind)
    results["bundle"] = {"path": str(bundle), "feature_schema": router.feature_schema.schema_id,
                         "encoder": router.feature_schema.encoder,
                         "selection": router.manifest.validation.get("selection")}
    write_report(results, out)
    return results


def _semantic_scores(router, data, semantic_dir, out, baselines, fit_rows, val_rows, test_rows, use_ray):
    store = FeatureStore.open(semantic_dir)
    column = store.schema.column_name(SEMANTIC_LAYER, "mean")

    def embed(rows: _Rows) -> np.ndarray:
        return store.load(rows.ids, [column])[column]

    scores = []
    if "knn" in baselines:
        knn = KnnRouter().fit(embed(fit_rows), fit_rows.dataset.labels(), embed(val_rows), val_rows.dataset.labels())
        scores.append(RouterScores(f"semantic kNN (k={knn.k_})", proba_test=knn.predict_proba(embed(test_rows)),
                                   proba_val=knn.predict_proba(embed(val_rows))))
    if "semantic-trunk" in baselines:
        config = RouterTrainConfig(pca_k=router.manifest.blocks[0].k,
                                   holdout_fraction=router.manifest.validation.get("holdout_fraction", 0.15),
                                   trainer=router.manifest.train_config)
        semantic = train_router(data, semantic_dir, str(Path(out) / "semantic_router"),
                                selection={t: (SEMANTIC_LAYER, "mean") for t in router.targets},
                                config=config, use_ray=use_ray)
        scores.append(RouterScores("semantic SharedTrunkNet",
                                   proba_test=semantic.predict_proba(store.load(test_rows.ids, [column])),
                                   proba_val=semantic.predict_proba(store.load(val_rows.ids, [column]))))
    return scores
