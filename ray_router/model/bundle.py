"""The router bundle: a folder that fully describes a trained router.

    router.json          RouterManifest (pydantic): format version, the feature schema of every encoder it
                         reads, targets, the head's description (its kind, blocks and parameters), the
                         calibration, cost model, default policy, validation summary, creation time, data hash
    head.safetensors     the head's arrays (preprocessing, network weights, neighbours, ...)
    out_of_fold.safetensors  (when trained with policy folds) the fit rows' out-of-fold probabilities,
                         validation rows for evaluation; serving never reads it

No pickle: loading reads JSON and tensors only, checks the format version and the sha256 of the tensor
file recorded in router.json, rebuilds the head through its kind (ray_router.model.heads) and runs it once
on a row of zeros to check its inputs and outputs. The folder may be a local path or a cloud URI;
router.json is written last, so a bundle interrupted while being overwritten is refused, never
half-loaded. `ray_router.Router` is the class that loads one; this module only reads and writes the files
(it never imports the trainer).
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy

from ray_router.data import storage
from ray_router.errors import UserError, validation_message
from ray_router.features.schema import FeatureSchema
from ray_router.model.cost_model import CostModel
from ray_router.model.heads import head_from_bundle
from ray_router.model.proba_router import ProbaRouter
from ray_router.policy.config import PolicyConfig

BUNDLE_FORMAT_VERSION = 2
MANIFEST_FILE = "router.json"
HEAD_FILE = "head.safetensors"
OUT_OF_FOLD_FILE = "out_of_fold.safetensors"


class ValidationSummary(BaseModel):
    """How training went: the holdout (part of the training split never trained on), the router's scores on
    it, and every candidate configuration that was compared there."""

    holdout_fraction: float = Field(description="share of the training split held out (never trained on)")
    fit_rows: int
    holdout_rows: int
    holdout_auc: list[float | None] | None = None
    holdout_mean_auc: float | None = None
    holdout_log_loss: float | None = None
    holdout_aiq: float | None = Field(None, description="anchored policy's AIQ on the holdout (recorded, not used "
                                      "to choose)")
    member_val_losses: list[float] = Field(default_factory=list, description="trunk: every member's own loss")
    kept_members: list[int] = Field(default_factory=list)
    candidates: list[dict] = Field(default_factory=list, description="each candidate's overrides and holdout scores")
    policy_folds: int = Field(0, description="folds of the fit rows predicted out of fold (0: none)")
    out_of_fold_rows: str | None = Field(None, description="sha256 of the query ids of the rows predicted out of "
                                         "fold, in the order of out_of_fold.safetensors")
    calibration: dict[str, float] | None = Field(
        None, description="holdout log_loss / ece before and after calibration (cross-fitted halves)")


class RouterManifest(BaseModel):
    """Everything in router.json."""

    bundle_format_version: int = BUNDLE_FORMAT_VERSION
    created_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    data_hash: str
    feature_schemas: list[FeatureSchema] = Field(min_length=1, description="one per encoder the router reads")
    targets: list[str]
    head: dict = Field(default_factory=dict, description="the head's description: its kind, blocks and parameters "
                       "(written from the head with the bundle)")
    temperatures: list[float] | None = Field(None, description="per-target calibration, fitted on the holdout")
    cost_model: CostModel
    default_policy: PolicyConfig = Field(default_factory=PolicyConfig)
    validation: ValidationSummary
    file_sha256: dict[str, str] = Field(default_factory=dict)  # tensor file name -> sha256 of its bytes

    @model_validator(mode="after")
    def _consistent(self) -> RouterManifest:
        names = [schema.name for schema in self.feature_schemas]
        if len(set(names)) != len(names):
            raise ValueError(f"two feature schemas have the same encoder name: {names}")
        if self.temperatures is not None and len(self.temperatures) != len(self.targets):
            raise ValueError(f"{len(self.temperatures)} temperatures for {len(self.targets)} targets")
        return self


def write_bundle(path: str | os.PathLike, manifest: RouterManifest, model: ProbaRouter,
                 out_of_fold: np.ndarray | None = None) -> RouterManifest:
    """Write the bundle folder (local path or URI): the tensors (and the out-of-fold probabilities when given),
    then router.json (with the head's description and the tensor files' sha256); returns the manifest written."""
    path = os.fspath(path)
    description, tensors = model.to_bundle()
    files = {HEAD_FILE: save_numpy({name: np.ascontiguousarray(array) for name, array in tensors.items()})}
    if out_of_fold is not None:
        files[OUT_OF_FOLD_FILE] = save_numpy({"proba": np.ascontiguousarray(out_of_fold, dtype=np.float32)})
    manifest = manifest.model_copy(update={
        "head": description, "file_sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}})
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(path, name), data)
    storage.write_bytes_atomic(storage.join(path, MANIFEST_FILE), manifest.model_dump_json(indent=2).encode())
    return manifest


def read_bundle(path: str | os.PathLike) -> tuple[RouterManifest, ProbaRouter]:
    """Read and check a bundle folder; UserError naming the problem when it is not a valid one."""
    path = os.fspath(path).rstrip("/")
    manifest_file = storage.join(path, MANIFEST_FILE)
    if not storage.exists(manifest_file):
        raise UserError(f"{path} is not a router bundle (no {MANIFEST_FILE})")
    try:
        raw = json.loads(storage.read_bytes(manifest_file))
    except json.JSONDecodeError as err:
        raise UserError(f"{manifest_file}: not valid JSON ({err})") from None
    version = raw.get("bundle_format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise UserError(
            f"{path}: bundle format version {version!r}, this ray-router reads version {BUNDLE_FORMAT_VERSION}"
            " (train the router again with this version)"
        )
    try:
        manifest = RouterManifest.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{manifest_file}: invalid router manifest: {validation_message(err)}") from None
    try:
        tensors = load_numpy(_read_tensor_file(path, manifest, HEAD_FILE))
    except (SafetensorError, ValueError) as err:
        raise UserError(f"{path}: unreadable bundle tensors ({err})") from None
    try:
        model = head_from_bundle(manifest.head, tensors)
        _check_head(model, manifest)
    except UserError as err:
        raise UserError(f"{manifest_file}: the head does not match its tensors or the manifest ({err})") from None
    return manifest, model


def read_out_of_fold(path: str | os.PathLike, manifest: RouterManifest) -> np.ndarray | None:
    """(fit rows, K) out-of-fold probabilities of the bundle at `path` (None: it has none); UserError when the
    file does not match router.json."""
    path = os.fspath(path).rstrip("/")
    if OUT_OF_FOLD_FILE not in manifest.file_sha256:
        return None
    try:
        proba = load_numpy(_read_tensor_file(path, manifest, OUT_OF_FOLD_FILE))["proba"]
    except (SafetensorError, ValueError, KeyError) as err:
        raise UserError(f"{path}: unreadable out-of-fold probabilities ({err})") from None
    if proba.shape != (manifest.validation.fit_rows, len(manifest.targets)):
        raise UserError(f"{path}/{OUT_OF_FOLD_FILE}: shape {proba.shape}, expected "
                        f"{(manifest.validation.fit_rows, len(manifest.targets))}")
    return proba.astype(np.float64)


def _read_tensor_file(path: str, manifest: RouterManifest, name: str) -> bytes:
    """A tensor file's bytes, checked against the sha256 that router.json records for it."""
    try:
        data = storage.read_bytes(storage.join(path, name))
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"{path}: unreadable bundle tensors ({err})") from None
    if hashlib.sha256(data).hexdigest() != manifest.file_sha256.get(name):
        raise UserError(f"{path}/{name}: does not match the sha256 in {MANIFEST_FILE} (changed or partly written)")
    return data


def _check_head(model: ProbaRouter, manifest: RouterManifest) -> None:
    """UserError unless the head reads only the schemas' features and gives one probability per target."""
    width = {key: schema.hidden_size for schema in manifest.feature_schemas for key in schema.keys}
    unknown = [key for key in model.required_keys if key not in width]
    if unknown:
        raise UserError(f"the head reads features {unknown[:3]} that no feature schema has")
    shape = model.predict_proba({key: np.zeros((1, width[key]), np.float32) for key in model.required_keys}).shape
    if shape != (1, len(manifest.targets)):
        raise UserError(f"the head gives {shape[1]} probabilities per query for {len(manifest.targets)} targets")
