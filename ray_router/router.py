"""`Router`: a trained router, loaded from its bundle; the one routing path for Python, batch and Serve.

    router = Router.load("build/router")
    decisions = router.route(["What is the capital of France?"])

`route` is `encode` (the prefill features, computed by the encoders the bundle names, truncated to the
layers it reads) then `decide` (probabilities, expected costs and the policy); Serve keeps the two in
separate deployments, batch routing runs both in each Ray Data actor. Loading a router imports neither
Ray Train nor the training code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ray_router.errors import UserError
from ray_router.features.feature_encoder import FeatureEncoder
from ray_router.features.prefill_encoder import resolve_schema
from ray_router.features.schema import EncoderConfig, Features, FeatureSchema
from ray_router.model.bundle import RouterManifest, read_bundle, read_out_of_fold, write_bundle
from ray_router.model.calibration import calibrate
from ray_router.model.proba_router import ProbaRouter
from ray_router.policy.config import PolicyConfig, merge_policy
from ray_router.policy.policies import route as apply_policy

Policy = PolicyConfig | Mapping[str, object] | None  # a policy, fields over the default policy, or the default
# Fields that may differ between the encoder at inference and the features a router was trained on:
# the encoder computes only the columns the router reads.
_MAY_DIFFER = ("layers", "poolings")


@dataclass
class Decisions:
    """Routing decisions for n queries: chosen target, fallback order, probabilities, expected costs."""

    targets: list[str]
    choice: np.ndarray  # (n,) target index
    fallbacks: np.ndarray  # (n, K) target indices in order of preference, -1 for disallowed targets
    proba: np.ndarray  # (n, K)
    expected_cost: np.ndarray  # (n, K) USD
    bound: list[str | None] | None = None  # per query, the constraint that changed the choice (None: none did)

    def chosen(self) -> list[str]:
        """The chosen target's name per query."""
        return [self.targets[i] for i in self.choice]

    def fallback_names(self) -> list[list[str]]:
        """Per query, the allowed targets in order of preference (the chosen one first)."""
        return [[self.targets[i] for i in row if i >= 0] for row in self.fallbacks]


class Router:
    """A trained router: prompts or features in, per-target probabilities and routing decisions out."""

    def __init__(self, manifest: RouterManifest, model: ProbaRouter):
        self.manifest = manifest
        self.model = model
        self._encoder: FeatureEncoder | None = None
        self._loaded_from: str | os.PathLike | None = None  # the bundle folder, whose out-of-fold file save() keeps

    @classmethod
    def load(cls, path: str | os.PathLike) -> Router:
        """Load and check a bundle folder (local path or URI); UserError naming the problem when it is not one."""
        router = cls(*read_bundle(path))
        router._loaded_from = path
        return router

    def save(self, path: str | os.PathLike, out_of_fold: np.ndarray | None = None) -> None:
        """Write the bundle folder (local path or URI): each file atomically, router.json last; `out_of_fold`:
        the fit rows' out-of-fold probabilities, for evaluation (training writes them; a loaded router keeps
        its bundle's)."""
        if out_of_fold is None and self._loaded_from is not None:
            out_of_fold = read_out_of_fold(self._loaded_from, self.manifest)
        self.manifest = write_bundle(path, self.manifest, self.model, out_of_fold)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_encoder": None}  # a Ray actor builds its own encoder

    # -- what the router is ----------------------------------------------------------------------
    @property
    def targets(self) -> list[str]:
        return self.manifest.targets

    @property
    def feature_schemas(self) -> list[FeatureSchema]:
        """The schema of every encoder's features the router reads."""
        return self.manifest.feature_schemas

    @property
    def schema_id(self) -> str:
        """Id of the features the router reads: the one encoder's schema_id, or a hash of several."""
        ids = [schema.schema_id for schema in self.feature_schemas]
        return ids[0] if len(ids) == 1 else hashlib.sha256(":".join(ids).encode()).hexdigest()[:16]

    @property
    def required_keys(self) -> list[str]:
        """The features the router reads (keys `<encoder name>/<column>`), each once."""
        return self.model.required_keys

    @property
    def default_policy(self) -> PolicyConfig:
        return self.manifest.default_policy

    # -- features -> decisions -------------------------------------------------------------------
    def predict_proba(self, features: Features) -> np.ndarray:
        """(n, K) probability of a correct answer per target, for features {key: (n, d)}: the head's, calibrated
        by the per-target temperatures fitted on the holdout when the bundle has them."""
        missing = [k for k in self.required_keys if k not in features]
        if missing:
            raise UserError(f"the router needs the features {missing}; got {sorted(features)}")
        proba = self.model.predict_proba(features)
        temperatures = self.manifest.temperatures
        return proba if temperatures is None else calibrate(proba, np.asarray(temperatures))

    def expected_cost(self, prompts: list[str]) -> np.ndarray:
        """(n, K) expected USD per query and target (see CostModel)."""
        return self.manifest.cost_model.expected_cost(prompts)

    def decide(self, features: Features, prompts: list[str], policy: Policy = None,
               max_cost_usd: float | None = None) -> Decisions:
        """Apply `policy` (a PolicyConfig, fields over the default policy, or None for the default) to the
        router's predictions for `prompts`, whose features are `features`. With `max_cost_usd`, a target
        expected to cost more on a query is not allowed for it (UserError naming the query when none is left),
        and `bound` says where that changed the choice."""
        policy = merge_policy(self.default_policy, policy)
        proba = self.predict_proba(features)
        cost = self.expected_cost(prompts)
        ranking = apply_policy(proba, cost, policy, self.targets)
        if max_cost_usd is None:
            return Decisions(self.targets, ranking.choice, ranking.fallbacks, proba, cost)
        allowed = policy.allowed or self.targets
        rows = []
        for i in range(len(prompts)):
            affordable = [t for t in allowed if cost[i, self.targets.index(t)] <= max_cost_usd]
            if not affordable:
                raise UserError(f"prompt {i}: no allowed target is expected to cost at most ${max_cost_usd:g} "
                                f"(the cheapest: ${min(cost[i, self.targets.index(t)] for t in allowed):.3g})")
            rows.append(apply_policy(proba[i:i + 1], cost[i:i + 1], policy.model_copy(update={"allowed": affordable}),
                                     self.targets))
        choice = np.array([r.choice[0] for r in rows])
        bound = ["max_cost_usd" if c != unconstrained else None for c, unconstrained in zip(choice, ranking.choice)]
        return Decisions(self.targets, choice, np.stack([r.fallbacks[0] for r in rows]), proba, cost, bound)

    # -- prompts -> features ---------------------------------------------------------------------
    def _schemas_read(self) -> list[FeatureSchema]:
        """The feature schemas of the encoders whose features the router reads."""
        return [schema for schema in self.feature_schemas if set(schema.keys) & set(self.required_keys)]

    def encoder_configs(self) -> list[EncoderConfig]:
        """Per encoder, the config that computes exactly the features the router reads (and no deeper layers)."""
        return [schema.encoder_config(self.required_keys) for schema in self._schemas_read()]

    def check_schemas(self, schemas: Sequence[FeatureSchema]) -> None:
        """UserError unless `schemas` (one per encoder config) compute the router's features exactly as in
        training."""
        for trained_schema, schema in zip(self._schemas_read(), schemas, strict=True):
            different = schema.differences(trained_schema, "here", "in training", ignore=_MAY_DIFFER)
            needed = set(self.required_keys) & set(trained_schema.keys)
            missing = sorted(needed - set(schema.keys))
            if different or missing:
                raise UserError(
                    f"encoder features do not match the router's feature schema {trained_schema.schema_id} "
                    f"({', '.join(different) or 'missing features ' + ', '.join(missing)})"
                )

    def check_encoders(self, device: str | None = None, cache_dir: str | None = None) -> None:
        """UserError unless the router's encoders can be built here with their training schemas (no weights
        are loaded: a driver can check before any actor starts)."""
        self.check_schemas([resolve_schema(config, device, cache_dir) for config in self.encoder_configs()])

    def build_encoder(self, device: str | None = None, cache_dir: str | None = None) -> FeatureEncoder:
        """The encoders that compute the router's columns, loaded and checked against the training schemas."""
        encoder = FeatureEncoder(self.encoder_configs(), device=device, cache_dir=cache_dir)
        self.check_schemas(encoder.schemas)
        return encoder

    def encode(self, prompts: Sequence[str], batch_size: int = 16) -> Features:
        """The features of `prompts` the router reads (its encoders are loaded on first use)."""
        if self._encoder is None:
            self._encoder = self.build_encoder()
        return self._encoder.encode(prompts, batch_size=batch_size)

    def route(self, prompts: Sequence[str], policy: Policy = None, batch_size: int = 16) -> Decisions:
        """Encode and route `prompts` in this process (the reference for batch and online routing)."""
        prompts = list(prompts)
        return self.decide(self.encode(prompts, batch_size=batch_size), prompts, policy)
