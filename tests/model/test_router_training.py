"""Layer scan, SharedTrunkNet training and the router bundle on real SmolLM2 features of RouterBench."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from ray_router.cli import main
from ray_router.data.routing_dataset import RoutingDataset
from ray_router.errors import UserError
from ray_router.evaluation.evaluation import RouterInput, SplitData, evaluate
from ray_router.features.feature_set import FeatureSet
from ray_router.features.store import FeatureStore
from ray_router.model.bundle import read_out_of_fold
from ray_router.model.knn_router import mean_log_loss
from ray_router.model.router_training import (
    RouterTrainConfig,
    split_for_training,
    train_router,
)
from ray_router.policy.policies import fit_anchored
from ray_router.router import Router

pytestmark = pytest.mark.ray

FAST = {"pca_k": 16, "scan": {"k": 16}, "trainer": {"n_seeds": 4, "keep_best": 2, "max_epochs": 60, "patience": 10}}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    import yaml

    path = tmp_path_factory.mktemp("cfg") / "train.yaml"
    path.write_text(yaml.safe_dump(FAST))
    return path


@pytest.fixture(scope="module")
def scan_dir(small_routerbench, small_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    result = CliRunner().invoke(main, ["scan-layers", "--data", str(small_routerbench), "--features",
                                       str(small_features), "--out", str(out), "--k", "16"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def bundle(small_routerbench, small_features, scan_dir, config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "router"
    result = CliRunner().invoke(main, ["train", "--data", str(small_routerbench), "--features", str(small_features),
                                       "--scan", str(scan_dir), "--config", str(config_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_scan_writes_table_plot_and_a_selection_per_target(scan_dir, small_routerbench):
    targets = RoutingDataset.read(small_routerbench).target_names
    selection = json.loads((scan_dir / "selection.json").read_text())
    assert (scan_dir / "scan.png").stat().st_size > 10_000
    assert (scan_dir / "scan.csv").read_text().count("\n") > len(targets) * 6  # 3 layers x 2 poolings each
    assert set(selection["targets"]) == set(targets)


def _log_loss(p, y):
    known = ~np.isnan(y)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p))[known].mean())


def test_router_beats_the_constant_predictor_on_held_out_rows(bundle, small_routerbench, small_features):
    router = Router.load(bundle)
    fit_rows, holdout = split_for_training(RoutingDataset.read(small_routerbench), 0.15)
    proba = router.predict_proba(FeatureSet.open(str(small_features)).load(holdout.query_ids, router.required_keys))
    constant = np.broadcast_to(np.nanmean(fit_rows.labels(), axis=0), proba.shape)
    assert _log_loss(proba, holdout.labels()) < _log_loss(constant, holdout.labels())
    validation = router.manifest.validation
    assert router.manifest.head["n_members"] == 2 and len(validation.member_val_losses) == 4


def test_bundle_round_trip_predicts_exactly_what_was_trained(small_routerbench, small_features, scan_dir, tmp_path):
    config = RouterTrainConfig.model_validate(FAST)
    trained = train_router(str(small_routerbench), str(small_features), str(tmp_path / "b"), scan=str(scan_dir),
                           config=config, use_ray=False)
    loaded = Router.load(tmp_path / "b")
    ids = RoutingDataset.read(small_routerbench).select(split="test").query_ids
    features = FeatureSet.open(str(small_features)).load(ids, trained.required_keys)
    np.testing.assert_array_equal(loaded.predict_proba(features), trained.predict_proba(features))
    assert loaded.feature_schemas == [FeatureStore.open(str(small_features)).schema]


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m.update(bundle_format_version=99), "format version 99"),
    (lambda m: m["head"].update(n_members=m["head"]["n_members"] + 1), "router.json"),
    (lambda m: m["head"]["inputs"][0].__setitem__(1, 3), "does not match"),
    (lambda m: m["head"].update(kind="oracle"), "oracle"),
])
def test_tampered_bundle_is_refused(bundle, tmp_path, tamper, message):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "router.json").read_text())
    tamper(manifest)
    (copy / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=message):
        Router.load(copy)


def test_truncated_weights_file_is_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = (copy / "head.safetensors").read_bytes()
    (copy / "head.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="head.safetensors: does not match the sha256"):
        Router.load(copy)


def test_bundle_saves_and_loads_through_a_uri_keeping_its_out_of_fold_rows(bundle, tmp_path):
    router = Router.load(bundle)
    uri = f"file://{tmp_path}/uri-bundle"
    router.save(uri)
    again = Router.load(uri)
    assert again.manifest == router.manifest
    assert sorted(p.name for p in (tmp_path / "uri-bundle").iterdir()) == [
        "head.safetensors", "out_of_fold.safetensors", "router.json"]
    np.testing.assert_array_equal(read_out_of_fold(uri, again.manifest), read_out_of_fold(bundle, router.manifest))


def test_bad_train_config_is_one_line_error(small_routerbench, small_features, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {keep_best: 20, n_seeds: 10}\n")
    result = CliRunner().invoke(main, ["train", "--data", str(small_routerbench), "--features", str(small_features),
                                       "--config", str(bad), "--out", str(tmp_path / "b"), "--local"])
    assert result.exit_code == 2 and "keep_best" in result.output and "Traceback" not in result.output


def test_evaluate_end_to_end_writes_every_report_file(bundle, small_routerbench, small_features, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", "--bundle", str(bundle), "--data", str(small_routerbench),
                                       "--features", str(small_features), "--out", str(out), "--local",
                                       "--compare", f"again={bundle}"])
    assert result.exit_code == 0, result.output
    for name in ("metrics.json", "report.md", "cost_accuracy.png", "auc_per_target.png", "calibration.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    names = [r["name"] for r in metrics["routers"]]
    assert names[0] == "prefill router" and any("kNN" in n for n in names) and "semantic SharedTrunkNet" in names
    assert names[1] == "again" and metrics["routers"][1]["aiq"] == metrics["routers"][0]["aiq"]  # the same bundle
    versus = {c["other"]: c for c in metrics["comparisons"]}
    assert set(versus) == set(names[1:]) and versus["again"]["aiq"]["difference"] == 0.0
    assert "prefill router" in result.output  # the headline table on the terminal


def _strings(value):
    """Every string inside a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_router_json_holds_no_machine_path(small_routerbench, small_features, tmp_path):
    import os

    config = RouterTrainConfig.model_validate({**FAST, "run": {"storage_path": str(tmp_path / "checkpoints"),
                                                               "run_name": "where-it-ran"}})
    train_router(str(small_routerbench), str(small_features), str(tmp_path / "b"), config=config, use_ray=False)
    text = (tmp_path / "b" / "router.json").read_text()
    paths = [s for s in _strings(json.loads(text)) if os.path.isabs(s) or s.startswith("~") or "site-packages" in s]
    assert not paths and str(tmp_path) not in text and "where-it-ran" not in text


def test_candidates_are_compared_on_the_holdout_and_every_head_round_trips(small_routerbench, small_features,
                                                                         tmp_path):
    config = RouterTrainConfig.model_validate({**FAST, "blocks": "all-layers", "calibrate": True, "candidates": [
        {"head": "logistic"}, {"head": "knn"}, {"head": "stack"}, {"head": "trunk", "unique_inputs": True}]})
    trained = train_router(str(small_routerbench), str(small_features), str(tmp_path / "b"), config=config,
                           use_ray=False)
    candidates = trained.manifest.validation.candidates
    assert [c["override"]["head"] for c in candidates] == ["logistic", "knn", "stack", "trunk"]
    kept = min(candidates, key=lambda c: c["holdout_log_loss"])
    assert kept["chosen"] and sum(c["chosen"] for c in candidates) == 1
    assert trained.manifest.head["kind"] == kept["override"]["head"]
    assert trained.manifest.validation.holdout_log_loss == kept["holdout_log_loss"]
    assert all(0 < c["holdout_aiq"] <= 1 for c in candidates)
    # the recorded holdout AIQ is the one `evaluate` gives with the holdout as test and validation split (and the
    # fit rows' labels, so that both choose the anchor on the whole training split)
    fit_rows, holdout = split_for_training(RoutingDataset.read(small_routerbench), config.holdout_fraction)
    x_holdout = FeatureSet.open(str(small_features)).load(holdout.query_ids, trained.required_keys)
    split = SplitData(holdout.labels(), trained.expected_cost(holdout.prompts), holdout.costs())
    scored = evaluate([RouterInput("head", trained.model, x_holdout, x_holdout)], trained.targets, split, split,
                      labels_train=fit_rows.labels(), policy_kind="anchored", n_boot=10)
    assert kept["holdout_aiq"] == pytest.approx(scored.routers[0].aiq) == pytest.approx(scored.routers[0].val_aiq)
    assert len(trained.manifest.temperatures) == len(trained.targets)  # calibrated on the holdout
    policy = trained.default_policy
    assert policy.kind == "anchored" and policy.anchor in trained.targets  # fitted on the holdout
    loaded = Router.load(tmp_path / "b")
    ids = RoutingDataset.read(small_routerbench).select(split="test").query_ids
    features = FeatureSet.open(str(small_features)).load(ids, trained.required_keys)
    np.testing.assert_array_equal(loaded.predict_proba(features), trained.predict_proba(features))
    assert loaded.default_policy == policy
    with pytest.raises(UserError, match="candidate.*heads"):
        train_router(str(small_routerbench), str(small_features), str(tmp_path / "c"), use_ray=False,
                     config=RouterTrainConfig.model_validate({**FAST, "candidates": [{"heads": "trunk"}]}))


def test_a_stack_is_compared_on_cross_fitted_holdout_predictions_not_its_own(small_routerbench, small_features,
                                                                             tmp_path):
    # its weights are chosen on the holdout: its own holdout log-loss is never above its trunk's, so it would win
    config = RouterTrainConfig.model_validate({**FAST, "head": "stack", "calibrate": False, "policy_folds": 0,
                                               "candidates": [{}, {"head": "trunk"}]})
    trained = train_router(str(small_routerbench), str(small_features), str(tmp_path / "b"), config=config,
                           use_ray=False)
    stack, trunk = trained.manifest.validation.candidates
    _, holdout = split_for_training(RoutingDataset.read(small_routerbench), config.holdout_fraction)
    x_holdout = FeatureSet.open(str(small_features)).load(holdout.query_ids, trained.required_keys)
    if stack["chosen"]:  # then the bundle's head is the stack, fitted with the whole holdout
        assert stack["holdout_log_loss"] > mean_log_loss(trained.predict_proba(x_holdout), holdout.labels())
    else:
        assert stack["holdout_log_loss"] > trunk["holdout_log_loss"]


def test_a_stack_can_read_one_encoder_for_its_knn_and_the_others_for_its_trunk(small_routerbench, small_features,
                                                                              small_gemma_features, tmp_path):
    both, data = [str(small_features), str(small_gemma_features)], str(small_routerbench)
    config = RouterTrainConfig.model_validate({**FAST, "head": "stack", "knn_encoder": "gemma3-270m",
                                               "policy_folds": 0})
    trained = train_router(data, both, str(tmp_path / "b"), config=config, use_ray=False)
    trunk, knn = trained.model.parts_
    assert trunk.required_keys and all(key.startswith("smollm2-135m/") for key in trunk.required_keys)
    assert knn.required_keys and all(key.startswith("gemma3-270m/") for key in knn.required_keys)
    ids = RoutingDataset.read(small_routerbench).select(split="test").query_ids
    features = FeatureSet.open(both).load(ids, trained.required_keys)
    np.testing.assert_array_equal(Router.load(tmp_path / "b").predict_proba(features), trained.predict_proba(features))
    for features_given, encoder, message in [(str(small_features), "minilm-l6", "no feature of it.*smollm2-135m"),
                                             (str(small_gemma_features), "gemma3-270m", "trunk nothing")]:
        with pytest.raises(UserError, match=f"knn_encoder '{encoder}': .*{message}"):
            train_router(data, features_given, str(tmp_path / "c"), use_ray=False,
                         config=RouterTrainConfig.model_validate({**config.model_dump(), "knn_encoder": encoder}))
    with pytest.raises(ValidationError, match="knn_encoder is for the knn and stack heads, not 'trunk'"):
        RouterTrainConfig.model_validate({"knn_encoder": "minilm-l6"})


def test_a_baseline_the_data_cannot_support_is_skipped_and_said_so(bundle, small_routerbench, small_features,
                                                                  tmp_path):
    import pyarrow as pa

    dataset = RoutingDataset.read(small_routerbench)
    table = dataset.table
    for column in ("task", "category"):
        table = table.set_column(table.schema.get_field_index(column), column, pa.nulls(len(table), pa.string()))
    no_tasks = tmp_path / "no-tasks.parquet"
    RoutingDataset(table, dataset.targets, dataset.source).write(no_tasks)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", "--bundle", str(bundle), "--data", str(no_tasks), "--features",
                                       str(small_features), "--out", str(out), "--baselines", "task-label"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in metrics["routers"]] == ["prefill router"]
    assert any("task-label baseline was skipped" in note for note in metrics["notes"])


def test_policy_folds_predict_the_fit_rows_out_of_fold_and_evaluate_chooses_on_them(bundle, small_routerbench,
                                                                                    small_features, tmp_path):
    config = RouterTrainConfig.model_validate({**FAST, "head": "logistic", "policy_folds": 3})
    trained = train_router(str(small_routerbench), str(small_features), str(tmp_path / "b"), config=config,
                           use_ray=False)
    dataset = RoutingDataset.read(small_routerbench)
    fit_rows, holdout = split_for_training(dataset, config.holdout_fraction)
    features = FeatureSet.open(str(small_features))
    out_of_fold = read_out_of_fold(tmp_path / "b", Router.load(tmp_path / "b").manifest)
    assert out_of_fold.shape == (len(fit_rows), len(trained.targets))
    assert trained.manifest.validation.policy_folds == 3
    # each fit row predicted by a copy that never saw it: worse there than the head that trained on them all
    in_sample = trained.predict_proba(features.load(fit_rows.query_ids, trained.required_keys))
    assert _log_loss(out_of_fold, fit_rows.labels()) > _log_loss(in_sample, fit_rows.labels()) + 0.005
    # the default policy is fitted on the holdout and those rows together
    holdout_proba = trained.predict_proba(features.load(holdout.query_ids, trained.required_keys))
    rows = SplitData.concat([SplitData(r.labels(), trained.expected_cost(r.prompts), r.costs())
                             for r in (holdout, fit_rows)])
    assert trained.default_policy == fit_anchored(np.vstack([holdout_proba, out_of_fold]), rows.labels,
                                                  rows.evaluation_cost(), trained.targets,
                                                  anchor=trained.default_policy.anchor)
    # evaluate chooses on them too, for the bundle and the baselines; a compared bundle without them is refused
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", "--bundle", str(tmp_path / "b"), "--data", str(small_routerbench),
                                       "--features", str(small_features), "--out", str(out), "--local", "--policy",
                                       "anchored", "--baselines", "task-label", "--compare", f"again={tmp_path / 'b'}"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["n_val"] == len(fit_rows) + len(holdout)
    assert [r["name"] for r in metrics["routers"]] == ["prefill router", "again", "task-label (reference)"]
    assert metrics["routers"][0]["swept_policy"] == trained.default_policy.model_dump(mode="json")
    assert any("predicted out of fold" in note for note in metrics["notes"])
    train_router(str(small_routerbench), str(small_features), str(tmp_path / "plain"), use_ray=False,
                 config=RouterTrainConfig.model_validate({**FAST, "head": "logistic", "policy_folds": 0}))
    refused = CliRunner().invoke(main, ["evaluate", "--bundle", str(tmp_path / "b"), "--data", str(small_routerbench),
                                        "--features", str(small_features), "--out", str(tmp_path / "r2"), "--local",
                                        "--baselines", "none", "--compare", f"plain={tmp_path / 'plain'}"])
    assert refused.exit_code == 2 and "plain: no out-of-fold rows" in refused.output
    stored = tmp_path / "b" / "out_of_fold.safetensors"
    stored.write_bytes(stored.read_bytes()[:-8] + bytes(8))
    with pytest.raises(UserError, match="does not match the sha256"):
        read_out_of_fold(tmp_path / "b", trained.manifest)
    with pytest.raises(ValidationError, match="one fold"):
        RouterTrainConfig.model_validate({"policy_folds": 1})


def test_the_defaults_are_the_anchored_policy_on_out_of_fold_rows_and_need_a_holdout():
    config = RouterTrainConfig()
    assert (config.default_policy, config.policy_folds) == ("anchored", 5)
    with pytest.raises(ValidationError, match="anchored default policy is fitted on holdout rows"):
        RouterTrainConfig.model_validate({"holdout_fraction": 0})
    fixed = RouterTrainConfig.model_validate({"holdout_fraction": 0, "default_policy": {"kind": "tolerance"}})
    assert fixed.default_policy.kind == "tolerance"
