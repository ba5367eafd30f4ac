"""The feature schema: everything that determines a prefill feature, recorded with every feature file and router."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

Pooling = Literal["last", "mean"]
POOLINGS: tuple[str, ...] = ("last", "mean")

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


class FeatureSchema(BaseModel):
    """How features were computed: encoder weights, dtype, prompt template, truncation, layers and pooling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encoder: str = Field(description="the encoder spec as the user gave it")
    source: str = Field(description="what the spec resolved to, e.g. 'gguf:/path/model.gguf'")
    weight_hash: str = Field(description="sha256 of the GGUF file, or of the folder's config/weights/tokenizer")
    hidden_size: int = Field(gt=0, description="width of every feature vector")
    dtype: Literal["float32", "bfloat16", "float16"]
    chat_template: bool = Field(description="prompts were wrapped by the tokenizer's chat template")
    template_hash: str | None = Field(description="sha256 of the chat template; None when not applied")
    max_tokens: int = Field(gt=0, description="token budget per prompt, template tokens included")
    truncation_side: Literal["left", "right"] = Field(description="'left' drops the start, keeping the end")
    layers: tuple[int, ...] = Field(description="hidden-state indices, 0 = embedding output")
    poolings: tuple[Pooling, ...]

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        """Accept JSON written by model_dump (schema_id is derived, never read back)."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "schema_id"}
        return data

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

    @computed_field  # type: ignore[prop-decorator]
    @property
    def schema_id(self) -> str:
        """Short stable id of everything that changes the features (not of the spec string)."""
        identity = {name: getattr(self, name) for name in _IDENTITY_FIELDS}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def columns(self) -> list[str]:
        """All feature column names, layer by layer, e.g. ['L8_last', 'L8_mean', 'L16_last', ...]."""
        return [self.column_name(layer, pooling) for layer in self.layers for pooling in self.poolings]

    @staticmethod
    def column_name(layer: int, pooling: str) -> str:
        """The feature column of one (layer, pooling), e.g. column_name(12, 'last') == 'L12_last'."""
        return f"L{layer}_{pooling}"
