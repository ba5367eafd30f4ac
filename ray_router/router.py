"""Routing at inference time: one path for batch routing, Ray Serve and in-process use.

`encoder_for(router)` builds the PrefillEncoder a router needs (truncated to the deepest layer its
blocks read) and checks that it computes the same features as the router was trained on;
`decide(router, features, prompts, policy)` turns features into routing decisions.
"""

from dataclasses import dataclass

import numpy as np

from ray_router.model.bundle import Router
from ray_router.errors import UserError
from ray_router.features.schema import FeatureSchema
from ray_router.policy.policies import PolicyConfig, route
from ray_router.features.prefill_encoder import PrefillEncoder, resolve_schema

# Fields that must agree between the encoder at inference and the features a router was trained on;
# layers and poolings may differ (the encoder computes only the columns the router reads).
_MATCHING_FIELDS = ("weight_hash", "hidden_size", "dtype", "chat_template", "template_hash", "max_tokens",
                    "truncation_side")


def check_schema(router: Router, encoder_schema: FeatureSchema) -> None:
    """UserError unless `encoder_schema` computes the router's feature columns exactly as in training."""
    trained = router.feature_schema
    different = [f for f in _MATCHING_FIELDS if getattr(trained, f) != getattr(encoder_schema, f)]
    missing = sorted(set(router.required_columns) - set(encoder_schema.columns))
    if different or missing:
        detail = ", ".join(f"{f}: {getattr(encoder_schema, f)!r} vs trained {getattr(trained, f)!r}" for f in different)
        raise UserError(
            f"encoder features do not match the router's feature schema {trained.schema_id} "
            f"({detail or 'missing columns ' + ', '.join(missing)})"
        )


def encoder_kwargs(router: Router, device: str | None = None, cache_dir: str | None = None) -> dict:
    """PrefillEncoder arguments that compute exactly the router's feature columns (and no deeper layers)."""
    schema = router.feature_schema
    columns = router.required_columns
    layers = sorted({layer for layer in schema.layers for p in schema.poolings if schema.column_name(layer, p) in columns})
    poolings = [p for p in schema.poolings if any(schema.column_name(layer, p) in columns for layer in layers)]
    return dict(
        spec=schema.encoder, layers=layers, poolings=poolings, max_tokens=schema.max_tokens,
        truncation_side=schema.truncation_side, chat_template=schema.chat_template, dtype=schema.dtype,
        device=device, cache_dir=cache_dir,
    )


def check_encoder(router: Router, device: str | None = None, cache_dir: str | None = None) -> None:
    """UserError unless the router's encoder can be built here with its training schema (no weights loaded)."""
    check_schema(router, resolve_schema(**encoder_kwargs(router, device, cache_dir)))


def encoder_for(router: Router, device: str | None = None, cache_dir: str | None = None) -> PrefillEncoder:
    """The PrefillEncoder that computes exactly the router's feature columns (and no deeper layers)."""
    encoder = PrefillEncoder(**encoder_kwargs(router, device, cache_dir))
    check_schema(router, encoder.schema)
    return encoder


@dataclass
class Decisions:
    """Routing decisions for n queries: chosen target, fallback order, probabilities, expected costs."""

    targets: list[str]
    choice: np.ndarray  # (n,) target index
    fallbacks: np.ndarray  # (n, K) target indices in order of preference, -1 for disallowed targets
    proba: np.ndarray  # (n, K)
    expected_cost: np.ndarray  # (n, K) USD

    def chosen(self) -> list[str]:
        return [self.targets[i] for i in self.choice]

    def fallback_names(self) -> list[list[str]]:
        return [[self.targets[i] for i in row if i >= 0] for row in self.fallbacks]


def decide(router: Router, features: dict[str, np.ndarray], prompts: list[str],
           policy: PolicyConfig | None = None) -> Decisions:
    """Apply `policy` (default: the bundle's default policy) to the router's predictions."""
    policy = policy or PolicyConfig.model_validate(router.manifest.default_policy)
    proba = router.predict_proba(features)
    cost = router.expected_cost(prompts)
    decision = route(proba, cost, policy, router.targets)
    return Decisions(router.targets, decision.choice, decision.fallbacks, proba, cost)


def route_prompts(router: Router, encoder: PrefillEncoder, prompts: list[str],
                  policy: PolicyConfig | None = None, batch_size: int = 16) -> Decisions:
    """Encode `prompts` and route them, in this process (the reference for batch and online routing)."""
    return decide(router, encoder.encode(prompts, batch_size=batch_size), prompts, policy)
