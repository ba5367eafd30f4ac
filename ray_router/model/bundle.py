"""The router bundle: a folder that fully describes a trained router.

    router.json                  RouterManifest (pydantic): format version, the feature schema of every
                                 encoder it reads, targets, per-target (block, k), the network's input
                                 blocks, cost model, default policy, ensemble recipe, validation summary,
                                 creation time, data hash
    preprocessing.safetensors    per-block scaler means/scales and PCA components
    ensemble.safetensors         the kept ensemble members' weights (`member<i>.<param>`)

No pickle: loading reads JSON and tensors only, and checks versions, shapes and the sha256 of each tensor
file recorded in router.json. The folder may be a local path or a cloud URI; router.json is written last,
so a bundle interrupted while being overwritten is refused, never half-loaded. `ray_router.Router` is the
class that loads one; this module only reads and writes the files (it never imports the trainer).
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from pydantic import BaseModel, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy
from safetensors.torch import load as load_torch
from safetensors.torch import save as save_torch

from ray_router.data import storage
from ray_router.errors import UserError, validation_message
from ray_router.features.schema import FeatureSchema
from ray_router.model.cost_model import CostModel
from ray_router.model.preprocessing import BlockPreprocessor, block_keys
from ray_router.model.training import TrunkConfig, build_model
from ray_router.model.trunk_net import SharedTrunkNet
from ray_router.model.trunk_router import SharedTrunkRouter
from ray_router.policy.config import PolicyConfig

BUNDLE_FORMAT_VERSION = 2
MANIFEST_FILE = "router.json"
PREPROCESSING_FILE = "preprocessing.safetensors"
ENSEMBLE_FILE = "ensemble.safetensors"


class InputBlock(BaseModel):
    """A block of features reduced to k dimensions: its spec (feature keys joined by "+") and k."""

    block: str
    k: int


class TargetBlock(InputBlock):
    """The block one target's predictions read."""

    target: str


class ValidationSummary(BaseModel):
    """How the ensemble did: every member's validation loss, the kept ones, and the router on its holdout."""

    member_val_losses: list[float]
    kept_members: list[int]
    holdout_fraction: float = Field(description="share of the training split held out (never trained on)")
    fit_rows: int
    holdout_rows: int
    holdout_auc: list[float | None] | None = None
    holdout_mean_auc: float | None = None


class RouterManifest(BaseModel):
    """Everything in router.json."""

    bundle_format_version: int = BUNDLE_FORMAT_VERSION
    created_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    data_hash: str
    feature_schemas: list[FeatureSchema] = Field(min_length=1, description="one per encoder the router reads")
    targets: list[str]
    blocks: list[TargetBlock]
    inputs: list[InputBlock] = Field(description="the blocks the network reads, in order")
    d_in: int
    n_members: int
    cost_model: CostModel
    default_policy: PolicyConfig = Field(default_factory=PolicyConfig)
    trunk: TrunkConfig
    validation: ValidationSummary
    file_sha256: dict[str, str] = Field(default_factory=dict)  # tensor file name -> sha256 of its bytes

    @model_validator(mode="after")
    def _blocks_read_known_features(self) -> RouterManifest:
        names = [schema.name for schema in self.feature_schemas]
        if len(set(names)) != len(names):
            raise ValueError(f"two feature schemas have the same encoder name: {names}")
        if [b.target for b in self.blocks] != self.targets:
            raise ValueError("blocks must list the targets in order, one block each")
        inputs = {(b.block, b.k) for b in self.inputs}
        for b in self.blocks:
            if (b.block, b.k) not in inputs:
                raise ValueError(f"target {b.target!r}: block {b.block!r} (k={b.k}) does not match any input block")
        keys = {key for schema in self.feature_schemas for key in schema.keys}
        unknown = sorted({key for b in self.inputs for key in block_keys(b.block)} - keys)
        if unknown:
            raise ValueError(f"blocks read features {unknown[:3]} that no feature schema has")
        return self


def write_bundle(path: str | os.PathLike, manifest: RouterManifest, model: SharedTrunkRouter) -> RouterManifest:
    """Write the bundle folder (local path or URI): each file atomically, router.json last; returns the
    manifest with the tensor files' sha256."""
    path = os.fspath(path)
    weights = {f"member{i}.{k}": v.detach().cpu().contiguous()
               for i, m in enumerate(model.members_) for k, v in m.state_dict().items()}
    files = {PREPROCESSING_FILE: save_numpy(model.preprocessor_.to_tensors()), ENSEMBLE_FILE: save_torch(weights)}
    manifest = manifest.model_copy(
        update={"file_sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    )
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(path, name), data)
    storage.write_bytes_atomic(storage.join(path, MANIFEST_FILE), manifest.model_dump_json(indent=2).encode())
    return manifest


def read_bundle(path: str | os.PathLike) -> tuple[RouterManifest, SharedTrunkRouter]:
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
    files = {name: _read_tensor_file(path, name, manifest) for name in (PREPROCESSING_FILE, ENSEMBLE_FILE)}
    try:
        tensors = load_numpy(files[PREPROCESSING_FILE])
        weights = load_torch(files[ENSEMBLE_FILE])
    except (SafetensorError, ValueError) as err:
        raise UserError(f"{path}: unreadable bundle tensors ({err})") from None
    try:
        preprocessor = BlockPreprocessor.from_tensors([(b.block, b.k) for b in manifest.inputs], tensors)
    except (KeyError, ValueError, UserError) as err:
        raise UserError(f"{path}/{PREPROCESSING_FILE}: does not match router.json ({err})") from None
    if preprocessor.output_dim != manifest.d_in:
        raise UserError(f"{path}: preprocessing gives {preprocessor.output_dim} inputs, router.json says {manifest.d_in}")
    members = [_load_member(manifest, weights, i, path) for i in range(manifest.n_members)]
    blocks = [(b.block, b.k) for b in manifest.blocks]
    return manifest, SharedTrunkRouter.from_fitted(blocks, preprocessor, members, manifest.trunk)


def _read_tensor_file(path: str, name: str, manifest: RouterManifest) -> bytes:
    """A tensor file's bytes, checked against the sha256 that router.json records for it."""
    try:
        data = storage.read_bytes(storage.join(path, name))
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"{path}: unreadable bundle tensors ({err})") from None
    expected = manifest.file_sha256.get(name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise UserError(f"{path}/{name}: does not match the sha256 in {MANIFEST_FILE} (changed or partly written)")
    return data


def _load_member(manifest: RouterManifest, weights: dict, i: int, path: str) -> SharedTrunkNet:
    net = build_model(manifest.d_in, len(manifest.targets), manifest.trunk)
    prefix = f"member{i}."
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}/{ENSEMBLE_FILE}: member {i} does not match router.json ({str(err).splitlines()[0]})") from None
    return net.eval()
