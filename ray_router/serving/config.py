"""Typed arguments of the serving application (`args:` of a Serve config, or `build_app(args)`).

Every target of the bundle that should answer chat requests is bound to a backend: `openai` (any
OpenAI-compatible endpoint) or `local` (a transformers causal LM generating on a Serve replica, for
demos and tests). Targets without a backend can still be routed by `/v1/route`, never chatted with.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_router.errors import UserError, validated
from ray_router.resources import WorkerResources


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaResources(WorkerResources):
    """A deployment's replicas: `num_workers` of them (default 1), each with these resources; GPUs only when
    asked for. `torch_threads` default: Ray's own (one thread for a fractional CPU) where noted otherwise."""

    num_cpus: float = Field(0.1, gt=0, description="CPUs per replica (fractional on small machines)")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica")

    def actor_options(self) -> dict:
        """Serve's ray_actor_options for these resources."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


class Autoscaling(_Strict):
    """Serve autoscaling of the Encoder deployment."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8, gt=0)


class EncoderOptions(ReplicaResources):
    """The Encoder deployment: its replicas (a fixed `num_workers`, or `autoscaling`) and dynamic request
    batching. > 0 `num_gpus` runs the encoder on CUDA; `torch_threads` default: the node's cores."""

    num_cpus: float = Field(0.25, gt=0, description="CPUs per replica (fractional on small machines)")
    max_batch_size: int = Field(16, ge=1, description="prompts per encoder forward (1 = batching off)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="how long a batch waits to fill")
    autoscaling: Autoscaling | None = Field(None, description="replicas between min and max (instead of num_workers)")
    cache_dir: str | None = Field(None, description="encoder cache (default: $RAY_ROUTER_CACHE or user cache)")

    @model_validator(mode="after")
    def _replicas_once(self) -> EncoderOptions:
        if self.num_workers is not None and self.autoscaling is not None:
            raise ValueError("give num_workers (fixed replicas) or autoscaling, not both")
        return self

    def replica_options(self) -> dict:
        """Serve's deployment options for the replicas: resources and a fixed count or autoscaling."""
        if self.autoscaling is not None:
            return {"ray_actor_options": self.actor_options(), "autoscaling_config": self.autoscaling.model_dump()}
        return {"ray_actor_options": self.actor_options(), "num_replicas": self.num_workers or 1}


class OpenAIBackendConfig(_Strict):
    """A target answered by an OpenAI-compatible endpoint (`POST {base_url}/chat/completions`)."""

    kind: Literal["openai"]
    base_url: str = Field(description="e.g. https://api.openai.com/v1")
    model: str = Field(description="model name sent upstream")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    timeout_s: float = Field(60.0, gt=0, description="per attempt: connect, read and write timeouts")
    retries: int = Field(1, ge=0, description="extra attempts on connection errors, timeouts, 429 and 5xx")


class LocalBackendConfig(ReplicaResources):
    """A target answered by a causal LM on a local Serve replica (a stand-in for demos and tests); the
    resources are those of its LocalGenerator replicas (one deployment per model, set by its first backend)."""

    kind: Literal["local"]
    model: str = Field("smollm2-135m", description="encoder spec of the generating model (alias, gguf, folder)")
    max_new_tokens: int = Field(64, ge=1, description="cap on generated tokens")
    timeout_s: float = Field(120.0, gt=0)
    num_cpus: float = Field(0.25, gt=0)


BackendConfig = Annotated[OpenAIBackendConfig | LocalBackendConfig, Field(discriminator="kind")]


class ServeArgs(_Strict):
    """Arguments of `build_app`: the bundle, the encoder, policy defaults, backends and the door."""

    bundle: str = Field(description="router bundle folder")
    encoder: EncoderOptions = Field(default_factory=EncoderOptions)
    policy: dict = Field(default_factory=dict, description="overrides of the bundle's default policy")
    backends: dict[str, BackendConfig] = Field(default_factory=dict, description="target name -> backend")
    auth_token_env: str | None = Field(None, description="env var with the bearer token; unset = no auth")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    max_json_depth: int = Field(32, ge=4, description="bodies nested deeper (arrays, objects) get 400")
    max_prompts: int = Field(64, ge=1, description="a /v1/route request with more prompts gets 413")
    routed_text: Literal["last_user", "system_and_last_user", "conversation"] = Field(
        "last_user", description="chat: what is routed (a request's router.routed_text overrides it)")
    head: ReplicaResources = Field(default_factory=ReplicaResources, description="the RouterHead replicas")
    ingress: ReplicaResources = Field(default_factory=ReplicaResources, description="the Ingress replicas")

    @classmethod
    def from_user(cls, args: dict) -> ServeArgs:
        """Validate `args`; UserError naming the bad field."""
        return validated(cls, args, "serve arguments")

    def check_targets(self, targets: list[str]) -> list[str]:
        """UserError for backends of unknown targets; returns the targets without a backend."""
        unknown = sorted(set(self.backends) - set(targets))
        if unknown:
            raise UserError(
                f"backends name target(s) not in the bundle: {', '.join(unknown)} (targets: {', '.join(targets)})"
            )
        return [t for t in targets if t not in self.backends]
