"""The router bundle: a folder that fully describes a trained router, and the `Router` it loads.

    router.json                  RouterManifest (pydantic): format version, feature schema, targets,
                                 per-target (column, k) blocks, cost model, default policy,
                                 training config, validation metrics, creation time, data hash
    preprocessing.safetensors    per-block scaler means/scales and PCA components
    ensemble.safetensors         the kept ensemble members' weights (`member<i>.<param>`)

No pickle: loading reads JSON and tensors only, and checks versions, shapes and the sha256 of
each tensor file recorded in router.json. The folder may be a local path or a cloud URI; router.json
is written last, so a bundle interrupted while being overwritten is refused, never half-loaded.
"""

import hashlib
import json
import os
import time

import numpy as np
from pydantic import BaseModel, Field, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy, save as save_numpy
from safetensors.torch import load as load_torch, save as save_torch

from ray_router.data import storage
from ray_router.model.cost_model import CostModel
from ray_router.errors import UserError, validation_message
from ray_router.features.schema import FeatureSchema
from ray_router.model.preprocessing import BlockPreprocessor
from ray_router.model.training import TrainConfig, build_model
from ray_router.model.trunk_net import SharedTrunkNet, ensemble_proba

BUNDLE_FORMAT_VERSION = 1
MANIFEST_FILE = "router.json"
PREPROCESSING_FILE = "preprocessing.safetensors"
ENSEMBLE_FILE = "ensemble.safetensors"


class TargetBlock(BaseModel):
    """The features one target's predictions read: a feature column reduced to k dimensions."""

    target: str
    column: str
    k: int


class RouterManifest(BaseModel):
    """Everything in router.json."""

    bundle_format_version: int = BUNDLE_FORMAT_VERSION
    created_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    data_hash: str
    feature_schema: FeatureSchema
    targets: list[str]
    blocks: list[TargetBlock]
    d_in: int
    n_members: int
    cost_model: CostModel
    default_policy: dict = Field(default_factory=dict)
    train_config: TrainConfig
    validation: dict = Field(default_factory=dict)
    file_sha256: dict[str, str] = Field(default_factory=dict)  # tensor file name -> sha256 of its bytes


class Router:
    """A trained router: features in, per-target probability of a correct answer out (numpy)."""

    def __init__(self, manifest: RouterManifest, preprocessor: BlockPreprocessor, members: list[SharedTrunkNet]):
        self.manifest = manifest
        self.preprocessor = preprocessor
        self.members = members

    @property
    def targets(self) -> list[str]:
        return self.manifest.targets

    @property
    def feature_schema(self) -> FeatureSchema:
        return self.manifest.feature_schema

    @property
    def required_columns(self) -> list[str]:
        """Feature columns the router reads, each once."""
        return list(dict.fromkeys(b.column for b in self.manifest.blocks))

    def predict_proba(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """(n, K) mean sigmoid of the ensemble members, for features {column: (n, d)}."""
        missing = [c for c in self.required_columns if c not in features]
        if missing:
            raise UserError(f"the router needs feature columns {missing}; got {sorted(features)}")
        return ensemble_proba(self.members, self.preprocessor.transform(features))

    def expected_cost(self, prompts: list[str]) -> np.ndarray:
        """(n, K) expected USD per query and target (see CostModel)."""
        return self.manifest.cost_model.expected_cost(prompts)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the bundle folder (local path or URI): each file atomically, router.json last."""
        path = os.fspath(path)
        weights = {f"member{i}.{k}": v.detach().cpu().contiguous()
                   for i, m in enumerate(self.members) for k, v in m.state_dict().items()}
        files = {PREPROCESSING_FILE: save_numpy(self.preprocessor.to_tensors()), ENSEMBLE_FILE: save_torch(weights)}
        manifest = self.manifest.model_copy(
            update={"file_sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
        )
        for name, data in files.items():
            storage.write_bytes_atomic(storage.join(path, name), data)
        storage.write_bytes_atomic(storage.join(path, MANIFEST_FILE), manifest.model_dump_json(indent=2).encode())
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Router":
        """Load and check a bundle folder; UserError naming the problem when it is not a valid one."""
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
        blocks = [(b.column, b.k) for b in manifest.blocks]
        try:
            preprocessor = BlockPreprocessor.from_tensors(blocks, tensors)
        except (KeyError, ValueError, UserError) as err:
            raise UserError(f"{path}/{PREPROCESSING_FILE}: does not match router.json ({err})") from None
        if preprocessor.output_dim != manifest.d_in:
            raise UserError(f"{path}: preprocessing gives {preprocessor.output_dim} inputs, router.json says {manifest.d_in}")
        members = [_load_member(manifest, weights, i, path) for i in range(manifest.n_members)]
        return cls(manifest, preprocessor, members)


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
    net = build_model(manifest.d_in, len(manifest.targets), manifest.train_config)
    prefix = f"member{i}."
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}/{ENSEMBLE_FILE}: member {i} does not match router.json ({str(err).splitlines()[0]})") from None
    return net.eval()
