"""Training a router from files: the targets' feature blocks -> a head fitted on arrays -> a router bundle.

`train_router` is the one library function behind `jobs/train.py` and `ray-router train`: it reads the
routing dataset and the feature folders (one per encoder), works out each target's block (`blocks`:
the layer each encoder's scan selects for the target, or every layer of every encoder), fits the head
(`head`: SharedTrunkNet, logistic regression, kNN, or a stack of SharedTrunkNet and kNN), and writes the
bundle. A share of the training split (by a salted hash of query_id) is held out as the router's own
validation set, never trained on: the `candidates` of a config are compared there (the lowest mean
log-loss is kept), the stack's weights and the calibration are fitted there, and evaluation chooses
policy parameters there. With `policy_folds`, the chosen head is fitted again on folds of the fit rows to
predict each fit row out of fold: policy parameters are then chosen on those rows and the holdout together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ray_router.data.routing_dataset import RoutingDataset, hash_fraction_mask
from ray_router.errors import UserError, validation_message
from ray_router.evaluation.evaluation import SplitData, split_aiq
from ray_router.evaluation.metrics import expected_calibration_error, roc_auc_per_target
from ray_router.features.feature_set import FeatureSet
from ray_router.features.schema import column_name, feature_key
from ray_router.features.store import FeatureStore
from ray_router.model.bundle import RouterManifest, ValidationSummary
from ray_router.model.calibration import calibrate, cross_fitted, fit_temperatures
from ray_router.model.cost_model import CostModel
from ray_router.model.knn_router import BlockKnnRouter, mean_log_loss
from ray_router.model.layer_scan import ScanConfig, ScanResult, scan_layers
from ray_router.model.logistic_router import LogisticRouter
from ray_router.model.out_of_fold import fold_ids, out_of_fold_proba, rows_sha256, take_rows
from ray_router.model.preprocessing import block_keys, block_spec
from ray_router.model.proba_router import ProbaRouter
from ray_router.model.scan_files import read_scan
from ray_router.model.stack_router import StackRouter
from ray_router.model.training import TrainRunConfig, TrunkConfig
from ray_router.model.trunk_router import SharedTrunkRouter
from ray_router.policy.config import PolicyConfig
from ray_router.policy.policies import fit_anchored, most_accurate_target
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
    head: Literal["trunk", "logistic", "knn", "stack"] = Field(
        "trunk", description="SharedTrunkNet, per-target logistic regression, kNN on the blocks, or a stack of "
        "SharedTrunkNet and kNN with per-target weights fitted on the holdout.")
    knn_encoder: str | None = Field(
        None, description="For the knn and stack heads: the encoder (the prefix of its feature keys, e.g. "
        "minilm-l6) whose features in the targets' blocks the kNN reads, the stack's trunk reading the rest; none: "
        "the kNN reads every feature the blocks read.")
    logistic_c: float = Field(0.01, gt=0, description="Inverse L2 strength of the logistic head.")
    calibrate: bool | Literal["auto"] = Field(
        "auto", description="Fit per-target temperatures on the holdout (stored in the bundle); auto: only when "
        "they lower the holdout log-loss, temperatures fitted on one half of it and scored on the other.")
    candidates: list[dict] = Field(
        default_factory=list, description="Overrides of these fields, each trained in turn on the fit rows; the "
        "one with the lowest holdout log-loss is kept (none: this config alone).")
    holdout_fraction: float = Field(
        0.15, ge=0, lt=1, description="Share of the training split held out for choosing policy parameters."
    )
    policy_folds: int = Field(
        5, ge=0, description="Fit the chosen head again this many times, each on the fit rows minus one fold, to "
        "predict every fit row out of fold (stored in the bundle); the anchored default policy and evaluation's "
        "policy choices then use those rows beside the holdout (0: the holdout alone, K fewer fits).")
    scan: ScanConfig = Field(default_factory=ScanConfig)
    trainer: TrunkConfig = Field(default_factory=TrunkConfig, description="The ensemble recipe (saved in the bundle).")
    run: TrainRunConfig = Field(default_factory=TrainRunConfig, description="Where training runs (not saved).")
    default_policy: PolicyConfig | Literal["anchored"] = Field(
        "anchored", description='The bundle\'s default policy; "anchored": the anchored policy at lam = 0, its '
        "margin fitted on the validation rows (the holdout, and the fit rows out of fold with policy_folds).")

    @field_validator("policy_folds")
    @classmethod
    def _folds(cls, folds: int) -> int:
        if folds == 1:
            raise ValueError("one fold leaves nothing to fit on: use 0 (the holdout alone) or 2 or more")
        return folds

    @model_validator(mode="after")
    def _knn_encoder_needs_a_knn(self) -> RouterTrainConfig:
        if self.knn_encoder is not None and self.head not in ("knn", "stack"):
            raise ValueError(f"knn_encoder is for the knn and stack heads, not {self.head!r}")
        return self

    @model_validator(mode="after")
    def _anchored_needs_a_holdout(self) -> RouterTrainConfig:
        if self.default_policy == "anchored" and self.holdout_fraction == 0:
            raise ValueError("the anchored default policy is fitted on holdout rows: keep holdout_fraction > 0, or "
                             "set default_policy to a fixed policy (e.g. {kind: tolerance, tau: 0.2})")
        return self

    def candidate(self, override: dict) -> RouterTrainConfig:
        """This config with `override` laid over it (nested sections merged); UserError naming a bad field."""
        try:
            return RouterTrainConfig.model_validate(_merged(self.model_dump(exclude={"candidates"}), override))
        except ValidationError as err:
            raise UserError(f"candidate {override}: {validation_message(err)}") from None

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

    Each target's block (feature keys joined by "+") comes from `blocks`, else from the config's `blocks`;
    for "selected", per feature folder the (layer, pooling) of its scan folder in `scan` (one per feature
    folder, in the same order), else of a layer scan run now. With `candidates`, each is trained and the one
    with the lowest holdout log-loss is kept.
    """
    config = config or RouterTrainConfig()
    dataset = RoutingDataset.read(data)
    feature_set = FeatureSet.open(features)
    fit_rows, holdout_rows = split_for_training(dataset, config.holdout_fraction)
    configs = [config.candidate(override) for override in config.candidates] or [config]
    if len(configs) > 1 and not len(holdout_rows):
        raise UserError("comparing candidates needs holdout rows (holdout_fraction > 0)")
    if config.default_policy == "anchored" and not len(holdout_rows):
        raise UserError(f"the anchored default policy is fitted on holdout rows, and holdout_fraction "
                        f"{config.holdout_fraction} holds out none of the {len(fit_rows)} training rows: raise it, "
                        "or set default_policy to a fixed policy")
    cost_model = CostModel.fit(fit_rows)
    holdout_split = _policy_split(holdout_rows, cost_model)
    anchor = _anchor(dataset, holdout_split) if len(holdout_rows) else None  # one for every candidate
    selections: dict = {}  # the layer scans, run once for all candidates
    fitted = []
    for candidate in configs:
        chosen_blocks = blocks or target_blocks(dataset, feature_set, scan, candidate, use_ray, selections)
        missing = [t for t in dataset.target_names if t not in chosen_blocks]
        if missing:
            raise UserError(f"no feature block for targets {missing[:3]}")
        specs = [chosen_blocks[t] for t in dataset.target_names]
        _check_blocks(specs, feature_set)
        keys = list(dict.fromkeys(key for spec in specs for key in block_keys(spec)))
        X_val, Y_val = feature_set.load(holdout_rows.query_ids, keys), holdout_rows.labels()
        model = _fit_head(candidate, specs, use_ray, feature_set.load(fit_rows.query_ids, keys), fit_rows.labels(),
                          X_val, Y_val)
        proba = model.predict_proba(X_val) if len(holdout_rows) else None
        compared = _compared_proba(model, X_val, Y_val, proba)
        fitted.append((model, specs, proba, _holdout_scores(compared, holdout_rows, holdout_split, anchor)))
    chosen = min(range(len(fitted)), key=lambda i: (fitted[i][3].get("holdout_log_loss", math.inf), i))
    model, specs, holdout_proba, scores = fitted[chosen]
    temperatures, calibration = _calibration(configs[chosen].calibrate, holdout_proba, holdout_rows.labels())
    policy_proba, policy_split = _calibrated(holdout_proba, temperatures), holdout_split
    out_of_fold = None
    if config.policy_folds:
        out_of_fold = _calibrated(_out_of_fold(configs[chosen], specs, use_ray, feature_set, fit_rows, holdout_rows,
                                               model.required_keys), temperatures)
        if policy_proba is not None:
            policy_proba = np.vstack([policy_proba, out_of_fold])
            policy_split = SplitData.concat([holdout_split, _policy_split(fit_rows, cost_model)])
    manifest = RouterManifest(
        data_hash=dataset.content_hash(),
        feature_schemas=feature_set.schemas,
        targets=dataset.target_names,
        temperatures=temperatures,
        cost_model=cost_model,
        default_policy=_default_policy(configs[chosen], policy_proba, policy_split, dataset.target_names, anchor),
        validation=ValidationSummary(
            holdout_fraction=config.holdout_fraction,
            fit_rows=len(fit_rows),
            holdout_rows=len(holdout_rows),
            **scores,
            **_trunk_losses(model),
            **calibration,
            candidates=[{"override": override, "chosen": i == chosen, **fitted[i][3]}
                        for i, override in enumerate(config.candidates)],
            policy_folds=config.policy_folds,
            out_of_fold_rows=None if out_of_fold is None else rows_sha256(fit_rows.query_ids),
        ),
    )
    router = Router(manifest, model)
    router.save(out, out_of_fold)
    return router


def _fit_head(config: RouterTrainConfig, specs: list[str], use_ray: bool, X, Y, X_val, Y_val) -> ProbaRouter:
    """The head of `config` on the targets' blocks, fitted on (X, Y); kNN (alone or stacked) chooses its k,
    and the stack its weights, on the holdout (X_val, Y_val)."""

    knn_keys, trunk_specs = _knn_split(specs, config.knn_encoder, config.head)

    def trunk() -> SharedTrunkRouter:
        return SharedTrunkRouter(trunk_specs, config.pca_k, config.trainer, config.run, use_ray=use_ray,
                                 unique_inputs=config.unique_inputs)

    def knn() -> BlockKnnRouter:  # one neighbour space: every feature it reads
        return BlockKnnRouter(block_spec(knn_keys), pca_k=config.pca_k)

    if config.head == "trunk":
        return trunk().fit(X, Y)
    if config.head == "logistic":
        return LogisticRouter(specs, config.pca_k, config.logistic_c).fit(X, Y)
    if not len(Y_val):
        raise UserError(f"the {config.head} head chooses its parameters on holdout rows (holdout_fraction > 0)")
    head = knn() if config.head == "knn" else StackRouter([trunk(), knn()])
    return head.fit(X, Y, X_val, Y_val)


def _compared_proba(model: ProbaRouter, X_val, Y_val: np.ndarray, proba: np.ndarray | None) -> np.ndarray | None:
    """The holdout probabilities a candidate is scored and compared on. A head fitted on the fit rows alone: its
    own, `proba`. A head that chooses parameters on the holdout (kNN's k, the stack's weights: it has
    `rechosen`), whose own holdout predictions are optimistic (a stack's holdout log-loss is never above its
    trunk's): cross-fitted, each half of the holdout (alternate rows) predicted by the head with those
    parameters chosen again on the other half."""
    if proba is None or not hasattr(model, "rechosen") or len(Y_val) < 4:
        return proba

    def rechosen(rows: np.ndarray) -> ProbaRouter:
        return model.rechosen(take_rows(X_val, rows), Y_val[rows])

    return out_of_fold_proba(rechosen, X_val, np.arange(len(Y_val)) % 2, Y_val.shape[1])


def _knn_split(specs: list[str], encoder: str | None, head: str) -> tuple[list[str], list[str]]:
    """The features the kNN reads (every one the blocks `specs` read, or `encoder`'s alone) and the blocks the
    other heads read (`specs`, or each without `encoder`'s features); UserError when the blocks read none of
    `encoder`'s features, or a stack's trunk would read nothing for some target."""
    keys = list(dict.fromkeys(key for spec in specs for key in block_keys(spec)))
    if encoder is None:
        return keys, specs
    mine = [key for key in keys if key.startswith(f"{encoder}/")]
    if not mine:
        read = sorted({key.split("/")[0] for key in keys})
        raise UserError(f"knn_encoder {encoder!r}: the targets' blocks read no feature of it (they read the "
                        f"encoders {', '.join(read)})")
    rest = [[key for key in block_keys(spec) if key not in mine] for spec in specs]
    if head == "stack" and not all(rest):
        raise UserError(f"knn_encoder {encoder!r}: some target's block reads only its features, leaving the "
                        "stack's trunk nothing: give the features of another encoder too")
    return mine, [block_spec(block) for block in rest]


def _out_of_fold(config: RouterTrainConfig, specs: list[str], use_ray: bool, feature_set: FeatureSet,
                 fit_rows: RoutingDataset, holdout: RoutingDataset, keys: list[str]) -> np.ndarray:
    """(fit rows, K) probabilities, each fold's (`config.policy_folds`, by query_id) from the head of `config`
    fitted again on the other folds (kNN's k and the stack's weights chosen on the holdout, as for the head)."""
    X, Y = feature_set.load(fit_rows.query_ids, keys), fit_rows.labels()
    X_val, Y_val = feature_set.load(holdout.query_ids, keys), holdout.labels()

    def fit(rows: np.ndarray) -> ProbaRouter:
        return _fit_head(config, specs, use_ray, take_rows(X, rows), Y[rows], X_val, Y_val)

    return out_of_fold_proba(fit, X, fold_ids(fit_rows.query_ids, config.policy_folds), Y.shape[1])


def _calibrated(proba: np.ndarray | None, temperatures: list[float] | None) -> np.ndarray | None:
    """`proba` as the router gives it: by the stored temperatures, when there are some."""
    return proba if proba is None or temperatures is None else calibrate(proba, np.asarray(temperatures))


def _calibration(mode: bool | str, holdout_proba: np.ndarray | None,
                 labels: np.ndarray) -> tuple[list[float] | None, dict]:
    """The per-target temperatures to store (None: no calibration), and the holdout log-loss and ECE before and
    after calibration, after meaning temperatures fitted on one half of the holdout and scored on the other."""
    if not mode or holdout_proba is None:
        return None, {}
    calibrated = cross_fitted(holdout_proba, labels)
    scores = {"calibration": {
        "log_loss_before": mean_log_loss(holdout_proba, labels), "log_loss_after": mean_log_loss(calibrated, labels),
        "ece_before": expected_calibration_error(holdout_proba, labels),
        "ece_after": expected_calibration_error(calibrated, labels)}}
    if mode == "auto" and scores["calibration"]["log_loss_after"] >= scores["calibration"]["log_loss_before"]:
        return None, scores
    return fit_temperatures(holdout_proba, labels).tolist(), scores


def _policy_split(rows: RoutingDataset, cost_model: CostModel) -> SplitData:
    """The rows' labels, the expected cost the policy routes on and the true cost."""
    return SplitData(rows.labels(), cost_model.expected_cost(rows.prompts), rows.costs())


def _default_policy(config: RouterTrainConfig, proba: np.ndarray | None, split: SplitData,
                    target_names: list[str], anchor: str | None) -> PolicyConfig:
    """The config's default policy; "anchored" is fitted on the router's probabilities of `split` (the holdout,
    and the fit rows out of fold with policy folds)."""
    if config.default_policy != "anchored":
        return config.default_policy
    return fit_anchored(proba, split.labels, split.evaluation_cost(), target_names, anchor=anchor)


def _anchor(dataset: RoutingDataset, holdout: SplitData) -> str:
    """The anchored policy's anchor: the most accurate target on every label of the training split (fit rows and
    holdout: more labels than the holdout alone to tell close targets apart; the anchor needs no prediction),
    ties by the holdout's mean cost."""
    return most_accurate_target(dataset.select(split="train").labels(), holdout.evaluation_cost().mean(axis=0),
                                dataset.target_names)


def _trunk_losses(model: ProbaRouter) -> dict:
    """The members' own validation losses and the kept ones, when the head is (or stacks) a trained trunk."""
    parts = [model, *getattr(model, "parts_", [])]
    trunk = next((m for m in parts if isinstance(m, SharedTrunkRouter) and m.ensemble_ is not None), None)
    return {} if trunk is None else {"member_val_losses": trunk.ensemble_.val_losses,
                                     "kept_members": trunk.ensemble_.kept}


def _merged(base: dict, override: dict) -> dict:
    """`override` laid over `base`, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if nested else value
    return merged


def target_blocks(dataset: RoutingDataset, feature_set: FeatureSet, scan: str | Sequence[str] | None,
                  config: RouterTrainConfig, use_ray: bool, selections: dict | None = None) -> dict[str, str]:
    """Each target's block spec by `config.blocks` (see train_router); `selections` caches the layer scans
    (by scan config) across calls."""
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
    cache = {} if selections is None else selections
    key = config.scan.model_dump_json()
    if key not in cache:
        cache[key] = [read_scan(path).selection for path in scans] or [
            run_scan(dataset, store, config.scan, use_ray).selection for store in feature_set.stores]
        for store, selection, path in zip(feature_set.stores, cache[key], scans or [None] * len(feature_set.stores)):
            _check_selection(selection, dataset.target_names, store, path)
    return {t: block_spec(feature_key(store.schema.name, column_name(*selection[t]))
                          for store, selection in zip(feature_set.stores, cache[key]))
            for t in dataset.target_names}


def _holdout_scores(proba: np.ndarray | None, holdout: RoutingDataset, split: SplitData, anchor: str | None) -> dict:
    """The per-target ROC-AUC of the router's probabilities `proba` on its holdout rows (None where undefined),
    their mean, the mean log-loss and the routing AIQ; empty without holdout rows."""
    if proba is None:
        return {}
    auc = roc_auc_per_target(proba, holdout.labels())
    return {"holdout_auc": [None if np.isnan(a) else float(a) for a in auc],
            "holdout_mean_auc": float(np.nanmean(auc)) if np.isfinite(auc).any() else None,
            "holdout_log_loss": mean_log_loss(proba, holdout.labels()),
            "holdout_aiq": _holdout_aiq(proba, split, holdout.target_names, anchor)}


def _holdout_aiq(proba: np.ndarray, split: SplitData, target_names: list[str], anchor: str) -> float | None:
    """The holdout AIQ of the anchored policy (`anchor`, the margin fitted there), lambda swept, as `evaluate`
    scores validation (optimistic: the margin is fitted on the same rows); None where undefined."""
    policy = fit_anchored(proba, split.labels, split.evaluation_cost(), target_names, anchor=anchor)
    value = split_aiq(proba, split, policy, target_names)
    return None if math.isnan(value) else value


def _check_blocks(specs: list[str], feature_set: FeatureSet) -> None:
    unknown = sorted({key for spec in specs for key in block_keys(spec)} - set(feature_set.keys))
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
