"""The Ray Data extraction job on real SmolLM2 weights and real RouterBench prompts."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ray_router.cli import main
from ray_router.data.routing_dataset import RoutingDataset, Target
from ray_router.features.extraction import extract_features
from ray_router.features.prefill_encoder import PrefillEncoder
from ray_router.features.schema import EncoderConfig
from ray_router.features.store import FeatureStore

from conftest import SMALL_LAYERS, SMALL_MAX_TOKENS
from reference_forward import plain_forward_features, template_ids

pytestmark = pytest.mark.ray


def test_ray_job_features_equal_a_plain_forward(small_routerbench, small_features):
    """Prompts short enough not to be truncated, of different lengths, batched together in the job."""
    dataset = RoutingDataset.read(small_routerbench)
    encoder = PrefillEncoder(EncoderConfig(encoder="smollm2-135m", layers=[1]))
    tokenizer = encoder.prompt_tokenizer.tokenizer
    lengths = {q: len(template_ids(tokenizer, p)) for q, p in zip(dataset.query_ids, dataset.prompts)}
    short = sorted((n, q) for q, n in lengths.items() if n <= SMALL_MAX_TOKENS)
    picked = [q for _, q in short[:: max(1, len(short) // 6)]][:6]
    assert len({lengths[q] for q in picked}) == len(picked) >= 4
    prompts = dict(zip(dataset.query_ids, dataset.prompts))
    expected = plain_forward_features("smollm2-135m", [prompts[q] for q in picked], SMALL_LAYERS)
    got = FeatureStore.open(str(small_features)).load(picked)
    assert set(got) == set(expected)
    for column, matrix in expected.items():
        diff = np.abs(got[column] - matrix).max()
        assert diff <= 1e-4, f"{column}: max abs diff {diff}"


def test_output_holds_every_query_once_with_manifest(small_routerbench, small_features):
    dataset = RoutingDataset.read(small_routerbench)
    store = FeatureStore.open(str(small_features))
    ids = [i for shard in store.shard_files() for i in pq.read_table(shard, columns=["query_id"]).column(0).to_pylist()]
    assert sorted(ids) == sorted(dataset.query_ids)
    manifest = json.loads((small_features / "manifest.json").read_text())
    assert manifest["rows"] == len(dataset)
    assert manifest["source_data_hash"] == dataset.content_hash()
    assert manifest["schema"]["layers"] == SMALL_LAYERS
    shard_meta = pq.read_schema(store.shard_files()[0]).metadata[b"ray_router.feature_schema"]
    assert json.loads(shard_meta)["schema_id"] == store.schema.schema_id


def test_interrupted_run_resumes_without_duplicates_or_gaps(small_routerbench, small_features, tmp_path, ray_cluster):
    out = tmp_path / "resume"
    config = EncoderConfig(encoder="smollm2-135m", layers=[1], max_tokens=64)
    first = extract_features(str(small_routerbench), config, str(out), limit=40, shard_rows=16)
    assert (first.computed, first.already_done) == (40, 0)
    second = extract_features(str(small_routerbench), config, str(out), limit=100, shard_rows=64)
    assert (second.computed, second.already_done) == (60, 40)
    store = FeatureStore.open(str(out))
    ids = [i for s in store.shard_files() for i in pq.read_table(s, columns=["query_id"]).column(0).to_pylist()]
    assert len(ids) == len(set(ids)) == 100
    assert set(ids) == set(RoutingDataset.read(small_routerbench).query_ids[:100])
    # Resumed rows equal a fresh computation of the same rows.
    again = extract_features(str(small_routerbench), config, str(tmp_path / "fresh"), limit=100)
    assert again.computed == 100
    sample = list(ids[::7])
    np.testing.assert_allclose(store.load(sample)["L1_last"], FeatureStore.open(str(tmp_path / "fresh")).load(sample)["L1_last"], atol=1e-4)


def test_folder_with_another_schema_is_refused(small_routerbench, small_features):
    result = CliRunner().invoke(main, [
        "extract", "--data", str(small_routerbench), "--encoder", "smollm2-135m", "--layers", "2",
        "--out", str(small_features), "--limit", "5",
    ])
    assert result.exit_code == 2
    assert "another feature schema" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--encoder", "no-such-encoder"], "no-such-encoder"),
    (["--encoder", "smollm2-135m", "--layers", "31"], "layer"),
])
def test_bad_encoder_inputs_give_one_line_errors(args, message, small_routerbench, tmp_path):
    base = {"--data": str(small_routerbench), "--layers": "1", "--out": str(tmp_path / "x")}
    argv = ["extract"] + [x for k, v in base.items() if k not in args for x in (k, v)] + args
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and message in result.output
    assert "Traceback" not in result.output


def test_empty_prompt_is_refused_before_any_work(tmp_path, ray_cluster):
    data = tmp_path / "empty.parquet"
    RoutingDataset.from_arrays(["a", "b"], ["fine prompt", "   "], targets=[Target(name="t")],
                               correct=np.array([[1.0], [0.0]])).write(data)
    result = CliRunner().invoke(main, ["extract", "--data", str(data), "--encoder", "smollm2-135m", "--layers", "1",
                                       "--out", str(tmp_path / "f")])
    assert result.exit_code == 2 and "empty prompt" in result.output and "'b'" in result.output
