"""Training a router end to end: layer selection -> preprocessing -> SharedTrunkNet ensemble -> bundle.

`train_router` is the one library function behind `jobs/train.py` and `ray-router train`.
A share of the training split (by a salted hash of query_id) is held out as the router's own
validation set: it is never trained on, so evaluation can choose policy parameters on it.
"""

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ray_router.model.bundle import Router, RouterManifest, TargetBlock
from ray_router.model.cost_model import CostModel
from ray_router.errors import UserError, validation_message
from ray_router.features.store import FeatureStore
from ray_router.model.layer_scan import ScanConfig, ScanResult, scan_layers
from ray_router.model.scan_files import read_scan
from ray_router.evaluation.metrics import roc_auc_per_target
from ray_router.policy.policies import PolicyConfig
from ray_router.model.preprocessing import BlockPreprocessor
from ray_router.data.routing_dataset import RoutingDataset, hash_fraction_mask
from ray_router.model.training import TrainConfig, build_members, fit_ensemble

HOLDOUT_SALT = "ray-router-holdout:"


class RouterTrainConfig(BaseModel):
    """Everything `ray-router train --config train.yaml` can set."""

    model_config = ConfigDict(extra="forbid")

    pca_k: int = Field(100, ge=1, description="PCA dimensions per target block (NVIDIA's port sweeps 50-300).")
    holdout_fraction: float = Field(
        0.15, ge=0, lt=1, description="Share of the training split held out for choosing policy parameters."
    )
    scan: ScanConfig = Field(default_factory=ScanConfig)
    trainer: TrainConfig = Field(default_factory=TrainConfig)
    default_policy: PolicyConfig = Field(default_factory=PolicyConfig)

    @classmethod
    def from_yaml(cls, path: str | None) -> "RouterTrainConfig":
        """Read a YAML config (None gives the defaults); UserError naming the bad field."""
        if path is None:
            return cls()
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
            return cls.model_validate(raw)
        except FileNotFoundError:
            raise UserError(f"{path}: no such config file") from None
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({err})") from None
        except ValidationError as err:
            raise UserError(f"{path}: {validation_message(err)}") from None


def holdout_mask(query_ids, fraction: float) -> np.ndarray:
    """True for the training rows held out as the router's validation set (stable salted hash)."""
    return hash_fraction_mask(query_ids, fraction, salt=HOLDOUT_SALT)


def split_for_training(dataset: RoutingDataset, fraction: float) -> tuple[RoutingDataset, RoutingDataset]:
    """(fit rows, holdout rows) of the dataset's training split."""
    train = dataset.select(split="train")
    if len(train) == 0:
        raise UserError("the dataset has no training rows (split == 'train')")
    held = holdout_mask(train.query_ids, fraction)
    return train.select(rows=~held), train.select(rows=held)


def feature_keys(store: FeatureStore) -> dict[tuple[int, str], str]:
    """(layer, pooling) -> column name for every column of a feature folder."""
    schema = store.schema
    return {(layer, pooling): schema.column_name(layer, pooling) for layer in schema.layers for pooling in schema.poolings}


def run_scan(dataset: RoutingDataset, store: FeatureStore, config: ScanConfig, use_ray: bool) -> ScanResult:
    """Layer probes on the training split (holdout included: the scan only picks layers)."""
    train = dataset.select(split="train")
    keys = feature_keys(store)
    loaded = store.load(train.query_ids, columns=list(keys.values()))
    features = {key: loaded[column] for key, column in keys.items()}
    return scan_layers(features, train.labels(), train.target_names, config, use_ray=use_ray)


def train_router(
    data: str,
    features: str,
    out: str,
    *,
    scan: str | None = None,
    selection: dict[str, tuple[int, str]] | None = None,
    config: RouterTrainConfig | None = None,
    use_ray: bool = True,
) -> Router:
    """Train a router on DATA's training split with the features in FEATURES; write the bundle to OUT.

    The (layer, pooling) per target comes from `selection`, else the scan folder `scan`, else a
    layer scan run now.
    """
    config = config or RouterTrainConfig()
    dataset = RoutingDataset.read(data)
    store = FeatureStore.open(features)
    if selection is None:
        selection = read_scan(scan).selection if scan else run_scan(dataset, store, config.scan, use_ray).selection
    _check_selection(selection, dataset.target_names, store, scan)

    fit_rows, holdout_rows = split_for_training(dataset, config.holdout_fraction)
    k = min(config.pca_k, len(fit_rows) - 1, store.schema.hidden_size)
    blocks = [(store.schema.column_name(*selection[t]), k) for t in dataset.target_names]
    columns = list(dict.fromkeys(c for c, _ in blocks))
    fit_features = store.load(fit_rows.query_ids, columns=columns)
    preprocessor = BlockPreprocessor(blocks).fit(fit_features)
    ensemble = fit_ensemble(preprocessor.transform(fit_features), fit_rows.labels(), config.trainer, use_ray=use_ray)

    manifest = RouterManifest(
        data_hash=dataset.content_hash(),
        feature_schema=store.schema,
        targets=dataset.target_names,
        blocks=[TargetBlock(target=t, column=c, k=k) for t, (c, k) in zip(dataset.target_names, blocks)],
        d_in=preprocessor.output_dim,
        n_members=len(ensemble.members),
        cost_model=CostModel.fit(fit_rows),
        default_policy=config.default_policy.model_dump(),
        train_config=config.trainer,
        validation={
            "member_val_losses": ensemble.val_losses,
            "kept_members": ensemble.kept,
            "holdout_fraction": config.holdout_fraction,
            "fit_rows": len(fit_rows),
            "holdout_rows": len(holdout_rows),
            "selection": {t: list(v) for t, v in selection.items()},
        },
    )
    members = build_members(ensemble.members, ensemble.d_in, ensemble.n_targets, config.trainer)
    router = Router(manifest, preprocessor, members)
    if len(holdout_rows):
        proba = router.predict_proba(store.load(holdout_rows.query_ids, columns=columns))
        auc = roc_auc_per_target(proba, holdout_rows.labels())
        manifest.validation["holdout_auc"] = [None if np.isnan(a) else float(a) for a in auc]
        manifest.validation["holdout_mean_auc"] = float(np.nanmean(auc)) if np.isfinite(auc).any() else None
    router.save(out)
    return router


def _check_selection(selection, targets, store: FeatureStore, scan: str | None) -> None:
    missing = [t for t in targets if t not in selection]
    if missing:
        raise UserError(f"the layer selection{' in ' + scan if scan else ''} has no entry for targets {missing[:3]}")
    available = set(feature_keys(store))
    absent = sorted({tuple(v) for v in selection.values()} - available)
    if absent:
        raise UserError(f"the selection uses (layer, pooling) {absent[:3]} that {store.root} does not hold")
