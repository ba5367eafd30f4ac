"""Offline batch routing on real RouterBench prompts with a small router trained on real SmolLM2 features."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ray_router.batch.routing import (
    COST_PREFIX,
    PROBA_PREFIX,
    route_queries,
    stored_query_ids,
)
from ray_router.cli.route import route
from ray_router.data.importers.table import prompt_ids
from ray_router.data.routing_dataset import RoutingDataset
from ray_router.errors import UserError
from ray_router.model.router_training import RouterTrainConfig, train_router
from ray_router.policy.config import PolicyConfig
from ray_router.router import Router

pytestmark = pytest.mark.ray

FAST = {"pca_k": 16, "trainer": {"n_seeds": 2, "keep_best": 1, "max_epochs": 30, "patience": 5}}
N_QUERIES = 24


@pytest.fixture(scope="module")
def bundle(small_routerbench, small_features, tmp_path_factory) -> str:
    targets = RoutingDataset.read(small_routerbench).target_names
    out = tmp_path_factory.mktemp("bundle") / "router"
    train_router(str(small_routerbench), str(small_features), str(out),
                 blocks=dict.fromkeys(targets, "smollm2-135m/L3_last"), config=RouterTrainConfig.model_validate(FAST),
                 use_ray=False)
    return str(out)


@pytest.fixture(scope="module")
def queries(small_routerbench, tmp_path_factory) -> pd.DataFrame:
    """Real test-split prompts (column `text`) with their ids (column `qid`)."""
    test = RoutingDataset.read(small_routerbench).select(split="test")
    return pd.DataFrame({"qid": test.query_ids[:N_QUERIES], "text": test.prompts[:N_QUERIES]})


def read_decisions(out) -> pd.DataFrame:
    return pq.read_table(str(out / "shards")).to_pandas().set_index("query_id")


def test_decisions_match_in_process_routing_and_resume(bundle, queries, ray_cluster, tmp_path):
    router = Router.load(bundle)
    policy = PolicyConfig.from_user(kind="tolerance", tau=0.05)
    reference = router.route(list(queries.text), policy)
    source = tmp_path / "queries.parquet"
    queries.to_parquet(source)
    out = tmp_path / "decisions"

    result = route_queries(bundle, str(source), str(out), policy, prompt_col="text", id_col="qid",
                           batch_size=4, shard_rows=8)
    assert (result.computed, result.already_done) == (N_QUERIES, 0)
    decisions = read_decisions(out).loc[queries.qid]
    assert decisions["target"].tolist() == reference.chosen()
    assert [list(f) for f in decisions["fallbacks"]] == [row[1:] for row in reference.fallback_names()]
    proba = decisions[[PROBA_PREFIX + t for t in router.targets]].to_numpy()
    np.testing.assert_allclose(proba, reference.proba, atol=1e-5)
    np.testing.assert_array_equal(decisions[[COST_PREFIX + t for t in router.targets]].to_numpy(),
                                  reference.expected_cost)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == N_QUERIES and len(manifest["shards"]) >= 2
    assert not (out / "queue").exists()  # the queue of a complete run is removed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == N_QUERIES
    assert summary["share"] == {t: reference.chosen().count(t) / N_QUERIES for t in router.targets}
    routed = reference.expected_cost[np.arange(N_QUERIES), reference.choice].sum()
    assert summary["expected_cost_usd"] == pytest.approx(routed)
    assert summary["most_expensive_cost_usd"] == pytest.approx(reference.expected_cost.sum(axis=0).max())

    # An interrupted run: one shard and the manifest lost; the rerun routes only the missing rows.
    shards = sorted((out / "shards").glob("part-*.parquet"))
    lost = set(pq.read_table(shards[0]).column("query_id").to_pylist())
    shards[0].unlink()
    (out / "manifest.json").unlink()
    again = route_queries(bundle, str(source), str(out), policy, prompt_col="text", id_col="qid", batch_size=4)
    assert (again.computed, again.already_done) == (len(lost), N_QUERIES - len(lost))
    ids = pq.read_table(str(out / "shards")).column("query_id").to_pylist()
    assert sorted(ids) == sorted(queries.qid)
    assert read_decisions(out).loc[queries.qid, "target"].tolist() == reference.chosen()
    assert again.manifest["query_ids_sha256"] == manifest["query_ids_sha256"]

    with pytest.raises(UserError, match="another run"):
        route_queries(bundle, str(source), str(out), {"kind": "argmax"}, prompt_col="text", id_col="qid")


def test_cli_csv_without_ids(bundle, queries, ray_cluster, tmp_path):
    prompts = list(queries.text[:6]) + [queries.text[0]]  # a repeated prompt gets "-2"
    source = tmp_path / "queries.csv"
    pd.DataFrame({"prompt": prompts}).to_csv(source, index=False)
    out = tmp_path / "decisions"
    result = CliRunner().invoke(route, ["--bundle", bundle, "--input", str(source), "--out", str(out),
                                        "--policy", "argmax", "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["rows"] == 7 and sum(summary["share"].values()) == pytest.approx(1.0)
    assert stored_query_ids(str(out)) == set(prompt_ids(prompts))
    decisions = read_decisions(out)
    router = Router.load(bundle)
    proba = decisions[[PROBA_PREFIX + t for t in router.targets]].to_numpy()
    assert decisions["target"].tolist() == [router.targets[i] for i in proba.argmax(axis=1)]


def test_limit_routes_only_the_first_queries(bundle, queries, ray_cluster, tmp_path):
    source = tmp_path / "queries.parquet"
    queries.to_parquet(source)
    out = tmp_path / "decisions"
    result = route_queries(bundle, str(source), str(out), prompt_col="text", id_col="qid", limit=5, batch_size=4)
    assert (result.computed, result.already_done, result.manifest["rows"]) == (5, 0, 5)
    assert stored_query_ids(str(out)) == set(queries.qid[:5])


def test_user_mistakes(bundle, queries, tmp_path):
    source = tmp_path / "queries.jsonl"
    queries.to_json(source, orient="records", lines=True)
    with pytest.raises(UserError, match="no column 'prompt'; columns are"):
        route_queries(bundle, str(source), str(tmp_path / "a"))
    with pytest.raises(UserError, match="needs lam fitted on validation"):
        route_queries(bundle, str(source), str(tmp_path / "b"), {"kind": "budget", "budget": 0.001},
                      prompt_col="text")
    with pytest.raises(UserError, match="not in this router's targets"):
        route_queries(bundle, str(source), str(tmp_path / "c"), {"allowed": ["nope"]}, prompt_col="text")
    with pytest.raises(UserError, match="no such file"):
        route_queries(bundle, str(tmp_path / "missing.csv"), str(tmp_path / "d"))


def test_encoder_mismatch_is_refused_before_any_actor_starts(bundle, queries, ray_cluster, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "router.json").read_text())
    manifest["feature_schemas"][0]["weight_hash"] = "0" * 64  # trained on other weights than the encoder's
    (copy / "router.json").write_text(json.dumps(manifest))
    source = tmp_path / "queries.jsonl"
    queries.to_json(source, orient="records", lines=True)
    with pytest.raises(UserError, match="do not match the router's feature schema"):
        route_queries(str(copy), str(source), str(tmp_path / "out"), prompt_col="text", id_col="qid")
    assert not (tmp_path / "out").exists()
