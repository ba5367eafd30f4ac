"""What prefill features are: `EncoderConfig` (what a user asks an encoder for) and `FeatureSchema` (what it
computed, with the hashes that identify it), recorded with every feature folder and every trained router.

A router may read the features of several encoders: its bundle records one FeatureSchema per encoder, and
it names a feature by its *key*, `<encoder name>/<column>` (e.g. `smollm2-135m/L8_last`), so that the
columns of two encoders never collide.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

from ray_router.errors import validated

Features = dict[str, np.ndarray]  # feature column -> (n, d) float32 matrix, rows in query order
Pooling = Literal["last", "mean"]
POOLINGS: tuple[str, ...] = ("last", "mean")
Dtype = Literal["float32", "bfloat16", "float16"]

# The fields that change feature values; `encoder` and `source` only describe where the weights came from,
# so two specs resolving to the same weights (an alias and its file, a moved folder) share a schema_id.
_IDENTITY_FIELDS = (
    "weight_hash",
    "dtype",
    "chat_template",
    "template_hash",
    "max_tokens",
    "truncation_side",
    "layers",
    "poolings",
)


class EncoderConfig(BaseModel):
    """Which prefill features to compute: the encoder, its layers and poolings, and how prompts are fed.

    encoder: an alias (smollm2-135m, minilm-l6), a .gguf file, a transformers folder or a hub id.
    layers: hidden-state indices, 0 = the embedding output. poolings: "last" (token) and/or "mean".
    max_tokens / truncation_side: token budget per prompt, template included; "left" drops the start and
    keeps the END (the question of a few-shot prompt). chat_template: wrap the prompt as one user message
    and the generation prompt when the tokenizer has a template. dtype: default float32 on CPU, bfloat16 on CUDA.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    encoder: str = Field(min_length=1, description="the encoder spec as the user gave it")
    layers: tuple[int, ...] = Field(description="hidden-state indices, 0 = embedding output")
    poolings: tuple[Pooling, ...] = ("last",)
    max_tokens: int = Field(2048, gt=0, description="token budget per prompt, template tokens included")
    truncation_side: Literal["left", "right"] = Field("left", description="'left' drops the start, keeping the end")
    chat_template: bool = Field(True, description="wrap prompts with the tokenizer's chat template, if it has one")
    dtype: Dtype | None = Field(None, description="default: float32 on CPU, bfloat16 on CUDA")

    @classmethod
    def from_user(cls, **values: Any) -> EncoderConfig:
        """Build a config from user input; invalid values raise UserError naming the field."""
        return validated(cls, values, "encoder config")

    @field_validator("layers")
    @classmethod
    def _sorted_layers(cls, layers: tuple[int, ...]) -> tuple[int, ...]:
        if not layers or min(layers) < 0:
            raise ValueError("layers must be a non-empty list of indices >= 0")
        return tuple(sorted(set(layers)))

    @field_validator("poolings")
    @classmethod
    def _ordered_poolings(cls, poolings: tuple[str, ...]) -> tuple[str, ...]:
        if not poolings:
            raise ValueError("poolings must name at least one of " + ", ".join(POOLINGS))
        return tuple(p for p in POOLINGS if p in poolings)

    @property
    def columns(self) -> list[str]:
        """All feature column names, layer by layer, e.g. ['L8_last', 'L8_mean', 'L16_last', ...]."""
        return [column_name(layer, pooling) for layer in self.layers for pooling in self.poolings]

    @property
    def name(self) -> str:
        """The encoder's short name, the prefix of its feature keys: the alias, or the spec's file or folder
        name (without .gguf)."""
        return PurePosixPath(self.encoder.rstrip("/")).name.removesuffix(".gguf")

    @property
    def keys(self) -> list[str]:
        """All feature keys, e.g. ['smollm2-135m/L8_last', ...]."""
        return [feature_key(self.name, column) for column in self.columns]


class FeatureSchema(EncoderConfig):
    """How features were computed: the encoder config as resolved (the dtype chosen, the token budget after
    the model's position limit, `chat_template` True only when a template was applied), and the hashes of
    the weights and of the template. `encoder_config()` gives the config that computes these features."""

    source: str = Field(description="what the spec resolved to, e.g. 'gguf:SmolLM2-135M-Instruct.Q4_1.gguf'")
    weight_hash: str = Field(description="sha256 of the GGUF file, or of the folder's config/weights/tokenizer")
    hidden_size: int = Field(gt=0, description="width of every feature vector")
    dtype: Dtype
    template_hash: str | None = Field(description="sha256 of the chat template; None when not applied")

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        """Accept JSON written by model_dump (schema_id is derived, never read back)."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "schema_id"}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def schema_id(self) -> str:
        """Short stable id of everything that changes the features (not of the spec string)."""
        identity = {name: getattr(self, name) for name in _IDENTITY_FIELDS}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def encoder_config(self, keys: list[str] | None = None) -> EncoderConfig:
        """The EncoderConfig that computes these features; with `keys`, only the layers and poolings those of
        them that are this encoder's need (so the encoder runs no deeper than the deepest of them)."""
        wanted = self.columns if keys is None else [c for c, k in zip(self.columns, self.keys) if k in keys]
        layers = [layer for layer in self.layers if any(column_name(layer, p) in wanted for p in self.poolings)]
        poolings = [p for p in self.poolings if any(column_name(layer, p) in wanted for layer in layers)]
        fields = {name: getattr(self, name) for name in EncoderConfig.model_fields}
        return EncoderConfig(**fields | {"layers": layers, "poolings": poolings})

    def differences(self, other: FeatureSchema, mine: str, theirs: str, ignore: tuple[str, ...] = ()) -> list[str]:
        """'field: <value> <mine> vs <value> <theirs>' for each field that changes features and differs from
        `other`'s (except the `ignore`d ones)."""
        return [f"{name}: {getattr(self, name)!r} {mine} vs {getattr(other, name)!r} {theirs}"
                for name in _IDENTITY_FIELDS
                if name not in ignore and getattr(self, name) != getattr(other, name)]


def column_name(layer: int, pooling: str) -> str:
    """The feature column of one (layer, pooling), e.g. column_name(12, 'last') == 'L12_last'."""
    return f"L{layer}_{pooling}"


def feature_key(name: str, column: str) -> str:
    """The key of an encoder's feature column, e.g. feature_key('smollm2-135m', 'L8_last') == 'smollm2-135m/L8_last'."""
    return f"{name}/{column}"
