"""A router that reads the features of two encoders (SmolLM2 and Gemma 3, truncated): one bundle that
round-trips and routes identically in-process, in a batch-routing job and on Ray Serve over HTTP."""

import socket

import httpx
import numpy as np
import pandas as pd
import pytest

from ray_router.batch.routing import PROBA_PREFIX, route_queries
from ray_router.data.routing_dataset import RoutingDataset
from ray_router.features.feature_set import FeatureSet
from ray_router.model.router_training import RouterTrainConfig, train_router
from ray_router.router import Router

from conftest import GEMMA_LAYERS, SMALL_LAYERS

pytestmark = pytest.mark.ray

FAST = {"pca_k": 12, "unique_inputs": True, "trainer": {"n_seeds": 2, "keep_best": 1, "max_epochs": 20, "patience": 4}}
SMOL, GEMMA = "smollm2-135m", "gemma3-270m"


@pytest.fixture(scope="module")
def bundle(small_routerbench, small_features, small_gemma_features, tmp_path_factory) -> str:
    targets = RoutingDataset.read(small_routerbench).target_names
    both = f"{SMOL}/L{SMALL_LAYERS[-1]}_last+{GEMMA}/L{GEMMA_LAYERS[0]}_mean"  # a block across the two encoders
    blocks = {t: both if i % 2 else f"{GEMMA}/L{GEMMA_LAYERS[-1]}_last" for i, t in enumerate(targets)}
    out = str(tmp_path_factory.mktemp("two") / "router")
    train_router(str(small_routerbench), [str(small_features), str(small_gemma_features)], out, blocks=blocks,
                 config=RouterTrainConfig.model_validate(FAST), use_ray=False)
    return out


@pytest.fixture(scope="module")
def prompts(small_routerbench) -> tuple[list[str], list[str]]:
    test = RoutingDataset.read(small_routerbench).select(split="test")
    return list(test.query_ids[:12]), test.prompts[:12]


def test_the_bundle_records_both_encoders_and_computes_only_what_it_reads(bundle, small_features,
                                                                         small_gemma_features, prompts):
    router = Router.load(bundle)
    assert [s.name for s in router.feature_schemas] == [SMOL, GEMMA]
    configs = {c.encoder: c for c in router.encoder_configs()}
    assert configs[SMOL].layers == (SMALL_LAYERS[-1],) and configs[SMOL].poolings == ("last",)
    assert configs[GEMMA].layers == tuple(GEMMA_LAYERS) and configs[GEMMA].poolings == ("last", "mean")
    ids, texts = prompts
    stored = FeatureSet.open([str(small_features), str(small_gemma_features)]).load(ids, router.required_keys)
    encoded = router.encode(texts)
    assert set(router.required_keys) <= set(encoded)  # (layers x poolings of each encoder)
    for key in router.required_keys:  # the extraction job and the router's encoder compute the same features
        np.testing.assert_allclose(encoded[key], stored[key], atol=2e-4)
    np.testing.assert_allclose(router.route(texts).proba, router.predict_proba(stored), atol=1e-4)


def test_batch_routing_and_serve_decide_as_the_router_in_process(bundle, prompts, ray_cluster, tmp_path):
    from ray import serve

    from ray_router.serving.app import build_app

    router = Router.load(bundle)
    ids, texts = prompts
    reference = router.route(texts)
    source = tmp_path / "queries.parquet"
    pd.DataFrame({"query_id": ids, "prompt": texts}).to_parquet(source)
    result = route_queries(bundle, str(source), str(tmp_path / "decisions"), id_col="query_id", batch_size=4)
    decisions = pd.read_parquet(tmp_path / "decisions" / "shards").set_index("query_id").loc[ids]
    assert result.computed == len(ids) and decisions["target"].tolist() == reference.chosen()
    np.testing.assert_allclose(decisions[[PROBA_PREFIX + t for t in router.targets]].to_numpy(), reference.proba,
                               atol=1e-5)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"bundle": bundle, "encoder": {"num_cpus": 0.2}}), name="two", route_prefix="/")
        response = httpx.post(f"http://127.0.0.1:{port}/v1/route", json={"prompts": texts}, timeout=180)
    finally:
        serve.shutdown()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["feature_schema"] == router.schema_id
    assert [d["target"] for d in body["decisions"]] == reference.chosen()
    served = np.array([[d["probabilities"][t] for t in router.targets] for d in body["decisions"]])
    # the decisions are the same; the replica's batches pad differently, which moves float rounding (seen 1.1e-4)
    np.testing.assert_allclose(served, reference.proba, atol=5e-4)
