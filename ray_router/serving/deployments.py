"""The routing deployments: Encoder (prefill features, dynamically batched) and RouterHead (bundle + policy)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import numpy as np
from ray import serve

from ray_router.errors import UserError
from ray_router.features.schema import FeatureSchema
from ray_router.policy.config import PolicyConfig, merge_policy
from ray_router.resources import set_torch_threads
from ray_router.router import Router


@dataclass(frozen=True)
class EncodeError:
    """Why the Encoder refused one prompt (a user's mistake: the request gets a 400 naming it)."""

    message: str


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Encoder:
    """The bundle's encoders (truncated to the layers it reads); concurrent prompts are batched."""

    def __init__(self, bundle: str, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005,
                 cache_dir: str | None = None, torch_threads: int | None = None):
        set_torch_threads(torch_threads or os.cpu_count() or 1)
        self.encoder = Router.load(bundle).build_encoder(cache_dir=cache_dir)  # UserError: schema mismatch
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def schemas(self) -> list[dict]:
        """The feature schema of each encoder this replica runs."""
        return [schema.model_dump() for schema in self.encoder.schemas]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def encode(self, prompts: list[str]) -> list[dict[str, np.ndarray] | EncodeError]:
        """Features of one prompt per call ({key: (hidden,) array}); Serve groups concurrent calls. A prompt the
        encoder refuses fails alone: the batch is encoded again prompt by prompt, and that caller gets an
        EncodeError while the others get their features."""
        try:
            return self._rows(await asyncio.to_thread(self.encoder.encode, prompts, len(prompts)), len(prompts))
        except UserError:
            return [await self._encode_one(prompt) for prompt in prompts]

    async def _encode_one(self, prompt: str) -> dict[str, np.ndarray] | EncodeError:
        try:
            return self._rows(await asyncio.to_thread(self.encoder.encode, [prompt], 1), 1)[0]
        except UserError as err:
            return EncodeError(str(err).replace("prompt at row 0 ", "the prompt "))

    @staticmethod
    def _rows(features: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
        return [{key: values[i] for key, values in features.items()} for i in range(n)]


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class RouterHead:
    """The router bundle and the policy: features in, decisions out. Refuses to start when the Encoder's
    feature schemas do not match the bundle's."""

    async def __init__(self, bundle: str, encoder, policy_overrides: dict, torch_threads: int | None = None):
        set_torch_threads(torch_threads)
        self.router = Router.load(bundle)
        self.router.check_schemas([FeatureSchema.model_validate(s) for s in await encoder.schemas.remote()])
        self.default_policy = merge_policy(self.router.default_policy, policy_overrides)

    def describe(self) -> dict:
        """Targets, the default policy and the feature-schema id."""
        return {"targets": self.router.targets, "default_policy": self.default_policy.model_dump(),
                "feature_schema": self.router.schema_id}

    def decide(self, features: list[dict[str, np.ndarray]], prompts: list[str], policy: dict,
               max_cost_usd: float | None = None) -> list[dict]:
        """One decision per prompt: target, fallbacks (in order), probability and expected cost per target, and
        with `max_cost_usd` that limit and whether it `bound` (changed the choice). UserError when the request
        cannot be decided (nothing left under the cost limit)."""
        stacked = {key: np.stack([f[key] for f in features]) for key in self.router.required_keys}
        decisions = self.router.decide(stacked, prompts, PolicyConfig.model_validate(policy), max_cost_usd)
        targets = self.router.targets
        limits = {} if max_cost_usd is None else {"max_cost_usd": max_cost_usd}
        return [
            {
                "target": ranked[0],
                "fallbacks": ranked[1:],
                "probabilities": dict(zip(targets, decisions.proba[i].tolist())),
                "expected_cost_usd": dict(zip(targets, decisions.expected_cost[i].tolist())),
                **(limits and {**limits, "bound": decisions.bound[i]}),
            }
            for i, ranked in enumerate(decisions.fallback_names())
        ]
