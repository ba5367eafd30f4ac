"""Training a router from files: the targets' feature blocks -> SharedTrunkRouter.fit -> a router bundle.

`train_router` is the one library function behind `jobs/train.py` and `ray-router train`: it reads the
routing dataset and the feature folders (one per encoder), works out each target's block (`blocks`:
the layer each encoder's scan selects for the target, or every layer of every encoder), fits a
`SharedTrunkRouter` on arrays, and writes the bundle.
A share of the training split (by a salted hash of query_id) is held out as the router's own
validation set: it is never trained on, so evaluation can choose policy parameters on it.
"""

from collections.abc import Sequence
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ray_router.data.routing_dataset import RoutingDataset, hash_fraction_mask
from ray_router.errors import UserError, validation_message
from ray_router.evaluation.metrics import roc_auc_per_target
from ray_router.features.feature_set import FeatureSet
from ray_router.features.schema import column_name, feature_key
from ray_router.features.store import FeatureStore
from ray_router.model.bundle import (
    InputBlock,
    RouterManifest,
    TargetBlock,
    ValidationSummary,
)
from ray_router.model.cost_model import CostModel
from ray_router.model.layer_scan import ScanConfig, ScanResult, scan_layers
from ray_router.model.preprocessing import block_keys, block_spec
from ray_router.model.scan_files import read_scan
from ray_router.model.training import TrainRunConfig, TrunkConfig
from ray_router.model.trunk_router import SharedTrunkRouter
from ray_router.policy.config import PolicyConfig
from ray_router.router import Router

HOLDOUT_SALT = "ray-router-holdout:"


class RouterTrainConfig(BaseModel):
    """Everything `ray-router train --config train.yaml` can set."""

    model_config = ConfigDict(extra="forbid")

    pca_k: int = Field(100, ge=1, description="PCA dimensions per block (NVIDIA's port sweeps 50-300).")
    blocks: Literal["selected", "all-layers"] = Field(
        "selected", description="Each target's block: the (layer, pooling) each encoder's scan selects for it, "
        "side by side, or every layer of every encoder (`all_layers_pooling`), one block for all targets.")
    all_layers_pooling: Literal["mean", "last"] = Field("mean", description="The pooling of an all-layers block.")
    unique_inputs: bool = Field(False, description="The network reads each distinct block once (else one per target).")
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
    features: str | Sequence[str],
    out: str,
    *,
    scan: str | Sequence[str] | None = None,
    blocks: dict[str, str] | None = None,
    config: RouterTrainConfig | None = None,
    use_ray: bool = True,
) -> Router:
    """Train a router on DATA's training split with the features of FEATURES (one folder, or one per encoder);
    write the bundle to OUT.

    Each target's block (feature keys joined by "+") comes from `blocks`, else from `config.blocks`; for
    "selected", per feature folder the (layer, pooling) of its scan folder in `scan` (one per feature folder,
    in the same order), else of a layer scan run now.
    """
    config = config or RouterTrainConfig()
    dataset = RoutingDataset.read(data)
    feature_set = FeatureSet.open(features)
    blocks = blocks or target_blocks(dataset, feature_set, scan, config, use_ray)
    _check_blocks(blocks, dataset.target_names, feature_set)

    fit_rows, holdout_rows = split_for_training(dataset, config.holdout_fraction)
    specs = [blocks[t] for t in dataset.target_names]
    model = SharedTrunkRouter(specs, config.pca_k, config.trainer, config.run, use_ray=use_ray,
                              unique_inputs=config.unique_inputs)
    keys = list(dict.fromkeys(key for spec in specs for key in block_keys(spec)))
    model.fit(feature_set.load(fit_rows.query_ids, keys), fit_rows.labels())
    holdout_auc, holdout_mean_auc = _holdout_auc(model, feature_set, holdout_rows)
    manifest = RouterManifest(
        data_hash=dataset.content_hash(),
        feature_schemas=feature_set.schemas,
        targets=dataset.target_names,
        blocks=[TargetBlock(target=t, block=spec, k=k) for t, (spec, k) in zip(dataset.target_names, model.blocks_)],
        inputs=[InputBlock(block=spec, k=k) for spec, k in model.inputs_],
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
            holdout_auc=holdout_auc,
            holdout_mean_auc=holdout_mean_auc,
        ),
    )
    router = Router(manifest, model)
    router.save(out)
    return router


def target_blocks(dataset: RoutingDataset, feature_set: FeatureSet, scan: str | Sequence[str] | None,
                  config: RouterTrainConfig, use_ray: bool) -> dict[str, str]:
    """Each target's block spec by `config.blocks` (see train_router)."""
    if config.blocks == "all-layers":
        pooling = config.all_layers_pooling
        keys = [feature_key(s.name, column_name(layer, pooling)) for s in feature_set.schemas for layer in s.layers
                if pooling in s.poolings]
        if not keys:
            raise UserError(f"no feature folder holds {pooling!r} pooling for an all-layers block")
        return dict.fromkeys(dataset.target_names, block_spec(keys))
    scans = [scan] if isinstance(scan, str) else list(scan or [])
    if scans and len(scans) != len(feature_set.stores):
        raise UserError(f"give one scan folder per feature folder: {len(scans)} scans, "
                        f"{len(feature_set.stores)} feature folders")
    selections = [read_scan(path).selection for path in scans] or [
        run_scan(dataset, store, config.scan, use_ray).selection for store in feature_set.stores]
    for store, selection, path in zip(feature_set.stores, selections, scans or [None] * len(selections)):
        _check_selection(selection, dataset.target_names, store, path)
    return {t: block_spec(feature_key(store.schema.name, column_name(*selection[t]))
                          for store, selection in zip(feature_set.stores, selections))
            for t in dataset.target_names}


def _holdout_auc(model: SharedTrunkRouter, feature_set: FeatureSet,
                 holdout: RoutingDataset) -> tuple[list[float | None] | None, float | None]:
    """Per-target ROC-AUC of the router on its holdout rows (None where undefined) and their mean."""
    if not len(holdout):
        return None, None
    auc = roc_auc_per_target(model.predict_proba(feature_set.load(holdout.query_ids, model.required_keys)),
                             holdout.labels())
    mean = float(np.nanmean(auc)) if np.isfinite(auc).any() else None
    return [None if np.isnan(a) else float(a) for a in auc], mean


def _check_blocks(blocks: dict[str, str], targets: list[str], feature_set: FeatureSet) -> None:
    missing = [t for t in targets if t not in blocks]
    if missing:
        raise UserError(f"no feature block for targets {missing[:3]}")
    unknown = sorted({key for spec in blocks.values() for key in block_keys(spec)} - set(feature_set.keys))
    if unknown:
        raise UserError(f"the blocks read features {unknown[:3]} that the feature folders do not hold")


def _check_selection(selection, targets, store: FeatureStore, scan: str | None) -> None:
    missing = [t for t in targets if t not in selection]
    if missing:
        raise UserError(f"the layer selection{' in ' + scan if scan else ''} has no entry for targets {missing[:3]}")
    available = set(feature_keys(store))
    absent = sorted({tuple(v) for v in selection.values()} - available)
    if absent:
        raise UserError(f"the selection uses (layer, pooling) {absent[:3]} that {store.root} does not hold")
