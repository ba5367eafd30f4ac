"""Training a router from files: layer selection -> SharedTrunkRouter.fit -> a router bundle.

`train_router` is the one library function behind `jobs/train.py` and `ray-router train`: it reads the
routing dataset and the feature folder, fits a `SharedTrunkRouter` on arrays, and writes the bundle.
A share of the training split (by a salted hash of query_id) is held out as the router's own
validation set: it is never trained on, so evaluation can choose policy parameters on it.
"""

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ray_router.data.routing_dataset import RoutingDataset, hash_fraction_mask
from ray_router.errors import UserError, validation_message
from ray_router.evaluation.metrics import roc_auc_per_target
from ray_router.features.schema import column_name
from ray_router.features.store import FeatureStore
from ray_router.model.bundle import RouterManifest, TargetBlock, ValidationSummary
from ray_router.model.cost_model import CostModel
from ray_router.model.layer_scan import ScanConfig, ScanResult, scan_layers
from ray_router.model.scan_files import read_scan
from ray_router.model.training import TrainRunConfig, TrunkConfig
from ray_router.model.trunk_router import SharedTrunkRouter
from ray_router.policy.config import PolicyConfig
from ray_router.router import Router

HOLDOUT_SALT = "ray-router-holdout:"


class RouterTrainConfig(BaseModel):
    """Everything `ray-router train --config train.yaml` can set."""

    model_config = ConfigDict(extra="forbid")

    pca_k: int = Field(100, ge=1, description="PCA dimensions per target block (NVIDIA's port sweeps 50-300).")
    holdout_fraction: float = Field(
        0.15, ge=0, lt=1, description="Share of the training split held out for choosing policy parameters."
    )
    scan: ScanConfig = Field(default_factory=ScanConfig)
    trainer: TrunkConfig = Field(default_factory=TrunkConfig, description="The ensemble recipe (saved in the bundle).")
    run: TrainRunConfig = Field(default_factory=TrainRunConfig, description="Where training runs (not saved).")
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
    return {(layer, pooling): column_name(layer, pooling) for layer in schema.layers for pooling in schema.poolings}


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
    columns = [column_name(*selection[t]) for t in dataset.target_names]
    model = SharedTrunkRouter(columns, config.pca_k, config.trainer, config.run, use_ray=use_ray)
    model.fit(store.load(fit_rows.query_ids, columns=list(dict.fromkeys(columns))), fit_rows.labels())
    holdout_auc, holdout_mean_auc = _holdout_auc(model, store, holdout_rows)
    manifest = RouterManifest(
        data_hash=dataset.content_hash(),
        feature_schemas=[store.schema],
        targets=dataset.target_names,
        blocks=[TargetBlock(target=t, column=c, k=k) for t, (c, k) in zip(dataset.target_names, model.blocks_)],
        d_in=model.preprocessor_.output_dim,
        n_members=len(model.members_),
        cost_model=CostModel.fit(fit_rows),
        default_policy=config.default_policy,
        trunk=config.trainer,
        validation=ValidationSummary(
            member_val_losses=model.ensemble_.val_losses,
            kept_members=model.ensemble_.kept,
            holdout_fraction=config.holdout_fraction,
            fit_rows=len(fit_rows),
            holdout_rows=len(holdout_rows),
            selection=selection,
            holdout_auc=holdout_auc,
            holdout_mean_auc=holdout_mean_auc,
        ),
    )
    router = Router(manifest, model)
    router.save(out)
    return router


def _holdout_auc(model: SharedTrunkRouter, store: FeatureStore,
                 holdout: RoutingDataset) -> tuple[list[float | None] | None, float | None]:
    """Per-target ROC-AUC of the router on its holdout rows (None where undefined) and their mean."""
    if not len(holdout):
        return None, None
    auc = roc_auc_per_target(model.predict_proba(store.load(holdout.query_ids, model.required_columns)),
                             holdout.labels())
    mean = float(np.nanmean(auc)) if np.isfinite(auc).any() else None
    return [None if np.isnan(a) else float(a) for a in auc], mean


def _check_selection(selection, targets, store: FeatureStore, scan: str | None) -> None:
    missing = [t for t in targets if t not in selection]
    if missing:
        raise UserError(f"the layer selection{' in ' + scan if scan else ''} has no entry for targets {missing[:3]}")
    available = set(feature_keys(store))
    absent = sorted({tuple(v) for v in selection.values()} - available)
    if absent:
        raise UserError(f"the selection uses (layer, pooling) {absent[:3]} that {store.root} does not hold")
