"""The HTTP API's request bodies (OpenAI chat schema plus routing options) and its JSON errors."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from ray_router.features.prefill_encoder import is_valid_text

ROUTER_MODEL = "router"  # `model` value that asks for routing; a target name passes through


class ApiError(Exception):
    """An HTTP error answer: its status and an OpenAI-style error body (a 4xx for the request's mistakes,
    502 when every target failed, 504 when a decision timed out)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", **extra: object):
        super().__init__(message)
        self.status, self.message, self.kind, self.extra = status, message, kind, extra

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, **self.extra}}


class RoutingOptions(BaseModel):
    """Per-request routing options; unset fields take the app's policy defaults."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["argmax", "tolerance", "utility", "budget", "anchored"] | None = None
    tau: float | None = None
    lam: float | None = None
    budget: float | None = None
    anchor: str | None = None
    margin: float | None = None
    allowed: list[str] | None = None

    def overrides(self) -> dict:
        """PolicyConfig fields set by the request (`policy` is PolicyConfig's `kind`)."""
        values = self.model_dump(exclude_none=True)
        if "policy" in values:
            values["kind"] = values.pop("policy")
        return values


def _valid_text(text: str) -> str:
    if not is_valid_text(text):
        raise ValueError("not valid Unicode text (a lone surrogate)")
    return text


Text = Annotated[str, AfterValidator(_valid_text)]  # a string the tokenizers accept


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, counted without parsing it (strings skipped),
    so that a body nested too deeply is refused before the recursive decoder sees it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`: the OpenAI fields used here; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = ROUTER_MODEL
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    router: RoutingOptions = Field(default_factory=RoutingOptions)

    def prompt(self) -> str:
        """The text that is routed: the last user message."""
        users = [m.text() for m in self.messages if m.role == "user"]
        if not users or not users[-1].strip():
            raise ApiError(400, "messages need a non-empty user message (the last one is routed)", param="messages")
        return users[-1]

    def plain_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class RouteRequest(BaseModel):
    """`POST /v1/route`: one prompt or several, and routing options."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text | None = None
    prompts: list[Text] | None = None
    router: RoutingOptions = Field(default_factory=RoutingOptions)

    @field_validator("prompts")
    @classmethod
    def _nonempty(cls, prompts: list[str] | None) -> list[str] | None:
        if prompts is not None and not prompts:
            raise ValueError("prompts must hold at least one prompt")
        return prompts

    def all_prompts(self) -> list[str]:
        if (self.prompt is None) == (self.prompts is None):
            raise ApiError(400, "give exactly one of 'prompt' or 'prompts'", param="prompt")
        prompts = [self.prompt] if self.prompt is not None else self.prompts
        for i, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ApiError(400, f"prompt {i} is empty or whitespace only", param="prompts")
        return prompts
