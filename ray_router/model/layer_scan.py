"""Scan every (layer, pooling) of an encoder's features with the layer probes, and pick one per target.

For each (layer, pooling) the training features are reduced once (StandardScaler + PCA k, shared by
all targets), d_eff is computed once, and Fisher J and the probe's CV ROC-AUC per target on the rows
whose label is known. The selection is per target the (layer, pooling) with the highest J (or AUC).
The result is plain data: `scan_files` writes and reads it, `scan_report` renders it.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pydantic
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ray_router.errors import UserError
from ray_router.model.probes import (
    effective_dimensionality,
    fisher_separability,
    probe_auc,
    reduce_features,
)
from ray_router.resources import ensure_ray

OK = "ok"
NO_SIGNAL = "not enough signal"
COLUMNS = ["target", "layer", "pooling", "k", "n", "positives", "J", "d_eff", "probe_auc", "status"]
CRITERION_COLUMN = {"j": "J", "auc": "probe_auc"}


class ScanConfig(pydantic.BaseModel):
    """Settings of a layer scan."""

    model_config = pydantic.ConfigDict(extra="forbid")

    k: int = pydantic.Field(64, ge=1, description="PCA dimension (capped at n_train - 1 and the feature width)")
    select: Literal["j", "auc"] = pydantic.Field("j", description="selection criterion: Fisher J or probe AUC")
    min_minority: int = pydantic.Field(
        20, ge=2, description="a target whose rarer class has fewer training rows gets 'not enough signal'"
    )
    folds: int = pydantic.Field(5, ge=2, description="stratified CV folds of the logistic probe")
    seed: int = pydantic.Field(0, description="seed of the CV split")
    shrinkage: float = pydantic.Field(1e-3, ge=0.0, description="Fisher J ridge: eps = shrinkage * trace(S_W) / k")
    # One whole CPU per task: a task is single-threaded CPU work, and on 2 cores 0.5 CPU per task (4 tasks
    # at once) made the scan 2-3x slower. Short tasks cannot deadlock the way long-lived actors can;
    # lower it only when other actors hold the cluster's CPUs.
    ray_task_cpus: float = pydantic.Field(1.0, gt=0.0, description="CPUs per Ray task (one per (layer, pooling))")

    @pydantic.model_validator(mode="after")
    def _enough_rows_per_fold(self) -> "ScanConfig":
        if self.min_minority < self.folds:
            raise ValueError(f"min_minority ({self.min_minority}) must be >= folds ({self.folds})")
        return self


def _scan_one_layer(features: np.ndarray, labels: np.ndarray, config: ScanConfig) -> list[dict]:
    """Probe statistics of one (layer, pooling) for every target (label column), in column order.

    BLAS runs single-threaded: the matrices are small, and threads fighting over busy cores made a
    scan 5x slower; parallelism comes from running (layer, pooling) pairs as Ray tasks instead.
    """
    with threadpool_limits(limits=1):
        return _probe_all_targets(features, labels, config)


def _probe_all_targets(features: np.ndarray, labels: np.ndarray, config: ScanConfig) -> list[dict]:
    reduced = reduce_features(features, config.k)
    d_eff = effective_dimensionality(reduced)
    rows = []
    for column in labels.T:
        known = ~np.isnan(column)
        y = column[known]
        n, positives = int(known.sum()), int(y.sum())
        row = {"k": reduced.shape[1], "n": n, "positives": positives, "d_eff": d_eff}
        if min(positives, n - positives) < config.min_minority:
            row.update(J=np.nan, probe_auc=np.nan, status=NO_SIGNAL)
        else:
            row.update(
                J=fisher_separability(reduced[known], y, config.shrinkage),
                probe_auc=probe_auc(reduced[known], y, config.folds, config.seed),
                status=OK,
            )
        rows.append(row)
    return rows


def _check_inputs(
    features: dict[tuple[int, str], np.ndarray], labels: np.ndarray, target_names: list[str]
) -> None:
    if not features:
        raise UserError("the layer scan got no features: the feature directory holds no (layer, pooling)")
    if labels.ndim != 2 or labels.shape[1] != len(target_names):
        raise UserError(f"labels have shape {labels.shape} but there are {len(target_names)} target names")
    if len(set(target_names)) != len(target_names):
        raise UserError(f"target names are not unique: {target_names}")
    known = labels[~np.isnan(labels)]
    if not np.isin(known, (0.0, 1.0)).all():
        bad = sorted(set(known[~np.isin(known, (0.0, 1.0))].tolist()))[:5]
        raise UserError(f"labels must be 0, 1 or missing (NaN); found {bad}")
    for (layer, pooling), matrix in features.items():
        if matrix.ndim != 2 or matrix.shape[0] != labels.shape[0]:
            raise UserError(
                f"features of layer {layer} pooling {pooling!r} have shape {matrix.shape}, "
                f"expected ({labels.shape[0]}, d) to match the labels"
            )
        if not np.isfinite(matrix).all():
            raise UserError(f"features of layer {layer} pooling {pooling!r} contain NaN or infinite values")


def _run_local(
    features: dict[tuple[int, str], np.ndarray], labels: np.ndarray, config: ScanConfig
) -> dict[tuple[int, str], list[dict]]:
    results = {}
    for key in tqdm(sorted(features), desc="scan layers", unit="layer", disable=None):
        results[key] = _scan_one_layer(features[key], labels, config)
    return results


def _run_on_ray(
    features: dict[tuple[int, str], np.ndarray], labels: np.ndarray, config: ScanConfig
) -> dict[tuple[int, str], list[dict]]:
    import ray

    ensure_ray()
    labels_ref = ray.put(labels)
    scan_task = ray.remote(_scan_one_layer).options(num_cpus=config.ray_task_cpus)
    pending = {scan_task.remote(ray.put(features[key]), labels_ref, config): key for key in sorted(features)}
    results = {}
    with tqdm(total=len(pending), desc="scan layers (ray)", unit="layer", disable=None) as progress:
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done)] = ray.get(done)
            progress.update(1)
    return results


def _select(rows: pd.DataFrame, criterion: str) -> dict[str, tuple[int, str]]:
    """Per target the (layer, pooling) with the highest criterion among its "ok" rows; targets without
    signal get the (layer, pooling) with the highest mean criterion over the targets that have it."""
    column = CRITERION_COLUMN[criterion]
    ok = rows[rows["status"] == OK]
    if ok.empty:
        raise UserError(
            "no target has enough signal to select a layer: every target's rarer class has fewer "
            "training rows than min_minority (lower it, or use more training data)"
        )
    overall_layer, overall_pooling = ok.groupby(["layer", "pooling"])[column].mean().idxmax()
    selection = {}
    for target in rows["target"].unique():
        candidates = ok[ok["target"] == target]
        if candidates.empty:
            selection[target] = (int(overall_layer), str(overall_pooling))
        else:
            best = candidates.loc[candidates[column].idxmax()]
            selection[target] = (int(best["layer"]), str(best["pooling"]))
    return selection


def scan_layers(
    features: dict[tuple[int, str], np.ndarray],
    labels: np.ndarray,
    target_names: list[str],
    config: ScanConfig,
    use_ray: bool = False,
) -> "ScanResult":
    """Probe every (layer, pooling) for every target on the training rows, and select one per target.

    features: (layer, pooling) -> (n_train, d) array, rows aligned with labels.
    labels: (n_train, K) with 1 = target correct, 0 = wrong, NaN = unknown (those rows are left out
    of that target's J and AUC; they still take part in the shared, unsupervised PCA).
    use_ray: one Ray task per (layer, pooling) (config.ray_task_cpus each); same numbers as in-process.
    """
    labels = np.asarray(labels, dtype=np.float64)
    target_names = list(target_names)
    _check_inputs(features, labels, target_names)
    per_layer = (_run_on_ray if use_ray else _run_local)(features, labels, config)
    records = [
        {"target": target, "layer": int(layer), "pooling": str(pooling), **per_layer[(layer, pooling)][index]}
        for index, target in enumerate(target_names)
        for layer, pooling in sorted(per_layer)
    ]
    rows = pd.DataFrame.from_records(records, columns=COLUMNS)
    return ScanResult(rows=rows, selection=_select(rows, config.select), config=config)


@dataclass
class ScanResult:
    """The table of probe statistics (one row per target, layer, pooling) and the per-target selection."""

    rows: pd.DataFrame
    selection: dict[str, tuple[int, str]]
    config: ScanConfig

    @property
    def targets(self) -> list[str]:
        """Target names in their original order."""
        return list(self.rows["target"].unique())

    @property
    def no_signal_targets(self) -> list[str]:
        """Targets marked "not enough signal"; their selection is the overall best (layer, pooling)."""
        has_signal = self.rows.groupby("target", sort=False)["status"].apply(lambda s: (s == OK).any())
        return [target for target, ok in has_signal.items() if not ok]

    def selected_rows(self) -> pd.DataFrame:
        """One row per target: its statistics at the selected (layer, pooling)."""
        chosen = pd.DataFrame(
            [(t, layer, pooling) for t, (layer, pooling) in self.selection.items()],
            columns=["target", "layer", "pooling"],
        )
        return chosen.merge(self.rows, on=["target", "layer", "pooling"], how="left")
