"""The layer scan over (layer, pooling, target) on synthetic features with one planted informative layer."""

import json

import matplotlib.image
import numpy as np
import pandas as pd
import pydantic
import pytest

from ray_router.errors import UserError
from ray_router.model.layer_scan import (
    NO_SIGNAL,
    OK,
    ScanConfig,
    ScanResult,
    scan_layers,
)
from ray_router.model.probes import fisher_separability, probe_auc, reduce_features
from ray_router.model.scan_files import read_scan, write_scan
from ray_router.model.scan_report import scan_table

TARGETS = ["alpha", "beta", "rare"]
PLANTED = (2, "last")
CONFIG = ScanConfig(k=16, min_minority=10)


def synthetic_scan_inputs(n: int = 300, d: int = 40, seed: int = 0):
    """Features for layers 0-3 x pooling last/mean; only (2, "last") carries the labels of alpha and
    beta. "rare" has 4 positives (not enough signal); alpha misses 40 labels (NaN)."""
    rng = np.random.default_rng(seed)
    labels = np.column_stack(
        [rng.random(n) < 0.4, rng.random(n) < 0.6, np.isin(np.arange(n), [3, 50, 120, 200])]
    ).astype(np.float64)
    labels[rng.choice(n, size=40, replace=False), 0] = np.nan
    directions = rng.normal(size=(len(TARGETS), d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    features = {}
    for layer in range(4):
        for pooling in ("last", "mean"):
            matrix = rng.normal(size=(n, d))
            if (layer, pooling) == PLANTED:
                matrix += 2.0 * (np.nan_to_num(labels, nan=0.5) - 0.5) @ directions
            features[(layer, pooling)] = matrix.astype(np.float32)
    return features, labels


@pytest.fixture(scope="module")
def scan_inputs():
    return synthetic_scan_inputs()


@pytest.fixture(scope="module")
def scan(scan_inputs) -> ScanResult:
    features, labels = scan_inputs
    return scan_layers(features, labels, TARGETS, CONFIG)


def test_scan_has_one_row_per_target_layer_pooling(scan):
    assert len(scan.rows) == len(TARGETS) * 4 * 2
    assert list(scan.rows.columns) == [
        "target", "layer", "pooling", "k", "n", "positives", "J", "d_eff", "probe_auc", "status"
    ]
    assert (scan.rows["k"] == 16).all()
    # d_eff is a property of the (layer, pooling), shared by every target
    assert (scan.rows.groupby(["layer", "pooling"])["d_eff"].nunique() == 1).all()


def test_scan_selects_the_planted_layer_by_j_and_by_auc(scan_inputs, scan):
    assert scan.selection["alpha"] == PLANTED and scan.selection["beta"] == PLANTED
    planted = scan.rows[(scan.rows["layer"] == 2) & (scan.rows["pooling"] == "last") & (scan.rows["status"] == OK)]
    assert (planted["probe_auc"] > 0.8).all()
    features, labels = scan_inputs
    by_auc = scan_layers(features, labels, TARGETS, CONFIG.model_copy(update={"select": "auc"}))
    assert by_auc.selection["alpha"] == PLANTED and by_auc.selection["beta"] == PLANTED


def test_missing_labels_are_dropped_not_counted_as_wrong(scan_inputs, scan):
    features, labels = scan_inputs
    known = ~np.isnan(labels[:, 0])
    reduced = reduce_features(features[PLANTED], CONFIG.k)
    row = scan.rows[(scan.rows["target"] == "alpha") & (scan.rows["layer"] == 2) & (scan.rows["pooling"] == "last")]
    assert row["n"].item() == known.sum() == 260
    assert row["positives"].item() == labels[known, 0].sum()
    assert row["J"].item() == fisher_separability(reduced[known], labels[known, 0])
    assert row["probe_auc"].item() == probe_auc(reduced[known], labels[known, 0])
    nan_as_zero = np.nan_to_num(labels[:, 0], nan=0.0)
    assert row["J"].item() != pytest.approx(fisher_separability(reduced, nan_as_zero), rel=1e-3)
    # a target's missing labels change nothing for the other targets
    without_nan = scan_layers(features, np.nan_to_num(labels, nan=1.0), TARGETS, CONFIG)
    beta = scan.rows["target"] == "beta"
    pd.testing.assert_frame_equal(scan.rows[beta], without_nan.rows[beta])


def test_target_with_too_few_minority_rows_gets_no_signal_marker(scan):
    rare = scan.rows[scan.rows["target"] == "rare"]
    assert (rare["status"] == NO_SIGNAL).all()
    assert rare["J"].isna().all() and rare["probe_auc"].isna().all()
    assert (rare["positives"] == 4).all()
    assert scan.no_signal_targets == ["rare"]
    # fallback: the (layer, pooling) with the highest mean J over the targets with signal
    assert scan.selection["rare"] == PLANTED
    table = scan_table(scan)
    assert NO_SIGNAL in table and "alpha" in table and "chosen by" in table


def test_scan_refuses_when_no_target_has_signal(scan_inputs):
    features, labels = scan_inputs
    with pytest.raises(UserError, match="no target has enough signal"):
        scan_layers(features, labels[:, 2:], ["rare"], CONFIG)


def test_scan_refuses_bad_inputs(scan_inputs):
    features, labels = scan_inputs
    with pytest.raises(UserError, match="layer 0 pooling 'last'"):
        scan_layers({(0, "last"): features[(0, "last")][:10]}, labels, TARGETS, CONFIG)
    with pytest.raises(UserError, match=r"0, 1 or missing"):
        scan_layers(features, labels * 0.5, TARGETS, CONFIG)
    with pytest.raises(UserError, match="3 target names"):
        scan_layers(features, labels[:, :2], TARGETS, CONFIG)
    with pytest.raises(pydantic.ValidationError, match="min_minority"):
        ScanConfig(min_minority=3, folds=5)


@pytest.mark.ray
def test_ray_scan_equals_in_process_scan(ray_cluster, scan_inputs, scan):
    features, labels = scan_inputs
    # 0.5 CPU per task: other tests' actors in the session's 2-CPU cluster may hold one CPU
    on_ray = scan_layers(features, labels, TARGETS, CONFIG.model_copy(update={"ray_task_cpus": 0.5}), use_ray=True)
    pd.testing.assert_frame_equal(on_ray.rows, scan.rows, check_exact=True)
    assert on_ray.selection == scan.selection


def test_write_read_round_trip_and_plot(tmp_path, scan):
    out = tmp_path / "scan"
    write_scan(scan, out)
    assert sorted(p.name for p in out.iterdir()) == ["scan.csv", "scan.png", "selection.json"]
    back = read_scan(out)
    pd.testing.assert_frame_equal(back.rows, scan.rows, check_exact=True)
    assert back.selection == scan.selection and back.config == scan.config
    selection = json.loads((out / "selection.json").read_text())
    assert selection["targets"]["rare"]["fallback"] is True
    assert selection["targets"]["alpha"] == {"layer": 2, "pooling": "last", "k": 16, "fallback": False}
    image = matplotlib.image.imread(out / "scan.png")
    assert image.shape[0] > 800 and image.shape[1] > 800
    assert image[..., :3].std() > 0.1  # not a blank canvas
    assert (out / "scan.png").stat().st_size > 30_000
    assert read_scan(f"file://{out}").selection == scan.selection  # URIs go through pyarrow filesystems


def test_read_refuses_a_broken_scan_folder(tmp_path, scan):
    with pytest.raises(UserError, match="not found"):
        read_scan(tmp_path)
    write_scan(scan, tmp_path)
    (tmp_path / "selection.json").write_text('{"format_version": 99}')
    with pytest.raises(UserError, match="selection.json is not a valid"):
        read_scan(tmp_path)
