"""Several prefill encoders as one: the features a router reads, computed the same way everywhere.

A router may read the features of several encoders (see RouterManifest.feature_schemas); its
`FeatureEncoder` runs each of them, truncated to the deepest layer the router uses, and merges their
features into one mapping by key (`<encoder name>/<column>`, as FeatureSet reads them from feature
folders). Batch routing, Ray Serve and in-process routing all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ray_router.features.prefill_encoder import PrefillEncoder
from ray_router.features.schema import (
    EncoderConfig,
    Features,
    FeatureSchema,
    feature_key,
)


class FeatureEncoder:
    """One PrefillEncoder per config, on `device` (default: CUDA when torch sees a GPU, else CPU)."""

    def __init__(self, configs: Sequence[EncoderConfig], device: str | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.encoders = [PrefillEncoder(config, device=device, cache_dir=cache_dir) for config in configs]

    @property
    def schemas(self) -> list[FeatureSchema]:
        """The feature schema of each encoder, in config order."""
        return [encoder.schema for encoder in self.encoders]

    def encode(self, prompts: Sequence[str], batch_size: int = 16) -> Features:
        """Every encoder's features of `prompts`: {key: (n, hidden) float32}, rows in input order."""
        features: Features = {}
        for encoder in self.encoders:
            name = encoder.schema.name
            features |= {feature_key(name, c): m for c, m in encoder.encode(prompts, batch_size=batch_size).items()}
        return features
