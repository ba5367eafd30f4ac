"""Every router in ray-router satisfies the ProbaRouter contract, on real RouterBench queries: the prefill
SharedTrunkNet router, the semantic SharedTrunkNet and kNN on MiniLM embeddings, and the task-label router."""

import numpy as np
import pytest

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.evaluation.baselines import TaskLabelRouter
from ray_router.evaluation.job import SEMANTIC_ENCODER, SEMANTIC_KEY, task_labels
from ray_router.features.feature_encoder import FeatureEncoder
from ray_router.features.feature_set import FeatureSet
from ray_router.model.knn_router import KnnRouter
from ray_router.model.proba_router import ProbaRouter
from ray_router.model.router_training import split_for_training
from ray_router.model.training import TrunkConfig
from ray_router.model.trunk_router import SharedTrunkRouter
from ray_router.router import Router

FAST = TrunkConfig(n_seeds=2, keep_best=1, max_epochs=20, patience=4)


@pytest.fixture(scope="module")
def splits(small_routerbench):
    """(fit, validation, test) rows of the small RouterBench slice."""
    dataset = RoutingDataset.read(small_routerbench)
    fit, val = split_for_training(dataset, 0.15)
    return fit, val, dataset.select(split="test")


@pytest.fixture(scope="module")
def semantic(splits) -> dict[str, dict[str, np.ndarray]]:
    """MiniLM sentence embeddings of each split, as the evaluation computes them."""
    encoder = FeatureEncoder([SEMANTIC_ENCODER])
    return {name: encoder.encode(rows.prompts) for name, rows in zip(("fit", "val", "test"), splits)}


def _routers(splits, small_features, semantic):
    """(router, X_fit, fit extras, X_test) for every router of the project."""
    fit, val, test = splits
    features = FeatureSet.open(str(small_features))
    prefill = {name: features.load(rows.query_ids) for name, rows in zip(("fit", "test"), (fit, test))}
    blocks = ["smollm2-135m/L3_last", "smollm2-135m/L2_mean"] * 5 + ["smollm2-135m/L1_last+smollm2-135m/L3_mean"]
    return {
        "prefill SharedTrunkNet": (SharedTrunkRouter(blocks, pca_k=8, config=FAST), prefill["fit"], (),
                                   prefill["test"]),
        "semantic SharedTrunkNet": (SharedTrunkRouter(SEMANTIC_KEY, pca_k=8, config=FAST), semantic["fit"], (),
                                    semantic["test"]),
        "semantic kNN": (KnnRouter(k_grid=(1, 5, 20)), semantic["fit"][SEMANTIC_KEY],
                         (semantic["val"][SEMANTIC_KEY], val.labels()), semantic["test"][SEMANTIC_KEY]),
        "task label": (TaskLabelRouter(), task_labels(fit), (), task_labels(test)),
    }


def test_every_router_fits_on_arrays_and_predicts_probabilities(splits, small_features, semantic):
    fit, _, test = splits
    for name, (router, X, extras, X_test) in _routers(splits, small_features, semantic).items():
        assert isinstance(router, ProbaRouter), name
        parameters = dict(vars(router))
        assert router.fit(X, fit.labels(), *extras) is router, name
        learned = set(vars(router)) - set(parameters)
        assert learned and all(attr.endswith("_") for attr in learned), (name, learned)
        assert {k: v for k, v in vars(router).items() if k in parameters} == parameters, name  # params untouched
        proba = router.predict_proba(X_test)
        assert proba.shape == (len(test), len(test.target_names)), name
        assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all(), name


def test_a_loaded_router_holds_a_proba_router(small_routerbench, small_features, tmp_path):
    from ray_router.model.router_training import RouterTrainConfig, train_router

    config = RouterTrainConfig(pca_k=8, trainer=FAST)
    trained = train_router(str(small_routerbench), str(small_features), str(tmp_path / "router"),
                           blocks=dict.fromkeys(RoutingDataset.read(small_routerbench).target_names,
                                                "smollm2-135m/L2_mean"),
                           config=config, use_ray=False)
    loaded = Router.load(tmp_path / "router")
    assert isinstance(loaded.model, ProbaRouter) and loaded.model.blocks_ == trained.model.blocks_
