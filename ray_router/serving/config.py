"""Typed arguments of the serving application (`args:` of a Serve config, or `build_app(args)`).

Every target of the bundle that should answer chat requests is bound to a backend: `openai` (any
OpenAI-compatible endpoint) or `local` (a transformers causal LM generating on a Serve replica, for
demos and tests). Targets without a backend can still be routed by `/v1/route`, never chatted with.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ray_router.errors import UserError, validation_message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Autoscaling(_Strict):
    """Serve autoscaling of the Encoder deployment."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8, gt=0)


class EncoderOptions(_Strict):
    """The Encoder deployment: resources and dynamic request batching."""

    num_cpus: float = Field(0.25, gt=0, description="CPUs per replica (fractional on small machines)")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica; > 0 runs the encoder on CUDA")
    max_batch_size: int = Field(16, ge=1, description="prompts per encoder forward (1 = batching off)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="how long a batch waits to fill")
    torch_threads: int | None = Field(
        None, ge=1, description="torch CPU threads per replica (default: the node's cores; Ray would give a "
        "fractional-CPU replica one thread)")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    cache_dir: str | None = Field(None, description="encoder cache (default: $RAY_ROUTER_CACHE or user cache)")


class OpenAIBackendConfig(_Strict):
    """A target answered by an OpenAI-compatible endpoint (`POST {base_url}/chat/completions`)."""

    kind: Literal["openai"]
    base_url: str = Field(description="e.g. https://api.openai.com/v1")
    model: str = Field(description="model name sent upstream")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    timeout_s: float = Field(60.0, gt=0, description="per attempt: connect, read and write timeouts")
    retries: int = Field(1, ge=0, description="extra attempts on connection errors, timeouts, 429 and 5xx")


class LocalBackendConfig(_Strict):
    """A target answered by a causal LM on a local Serve replica (a stand-in for demos and tests)."""

    kind: Literal["local"]
    model: str = Field("smollm2-135m", description="encoder spec of the generating model (alias, gguf, folder)")
    max_new_tokens: int = Field(64, ge=1, description="cap on generated tokens")
    timeout_s: float = Field(120.0, gt=0)
    num_cpus: float = Field(0.25, gt=0)
    num_gpus: float = Field(0, ge=0)


BackendConfig = Annotated[OpenAIBackendConfig | LocalBackendConfig, Field(discriminator="kind")]


class ServeArgs(_Strict):
    """Arguments of `build_app`: the bundle, the encoder, policy defaults, backends and the door."""

    bundle: str = Field(description="router bundle folder")
    encoder: EncoderOptions = Field(default_factory=EncoderOptions)
    policy: dict = Field(default_factory=dict, description="overrides of the bundle's default policy")
    backends: dict[str, BackendConfig] = Field(default_factory=dict, description="target name -> backend")
    auth_token_env: str | None = Field(None, description="env var with the bearer token; unset = no auth")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    head_num_cpus: float = Field(0.1, gt=0, description="CPUs of the RouterHead replica")
    ingress_num_cpus: float = Field(0.1, gt=0, description="CPUs of the Ingress replica")

    @classmethod
    def from_user(cls, args: dict) -> ServeArgs:
        """Validate `args`; UserError naming the bad field."""
        try:
            return cls.model_validate(args)
        except ValidationError as err:
            raise UserError(f"invalid serve arguments: {validation_message(err)}") from None

    def check_targets(self, targets: list[str]) -> list[str]:
        """UserError for backends of unknown targets; returns the targets without a backend."""
        unknown = sorted(set(self.backends) - set(targets))
        if unknown:
            raise UserError(
                f"backends name target(s) not in the bundle: {', '.join(unknown)} (targets: {', '.join(targets)})"
            )
        return [t for t in targets if t not in self.backends]
