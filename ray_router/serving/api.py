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


RoutedText = Literal["last_user", "system_and_last_user", "conversation"]


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
    max_cost_usd: float | None = Field(None, gt=0, description="targets expected to cost more are not allowed")
    routed_text: RoutedText | None = Field(None, description="chat: what is routed (default: the app's)")

    def overrides(self) -> dict:
        """PolicyConfig fields set by the request (`policy` is PolicyConfig's `kind`)."""
        values = self.model_dump(exclude_none=True, exclude={"max_cost_usd", "routed_text"})
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


class ContentPart(BaseModel):
    """A part of a message's content: text (routed), or any other kind (image_url, input_audio, ...: passed on)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: Text | None = None


class ChatMessage(BaseModel):
    """An OpenAI chat message; its other fields (tool_calls, tool_call_id, name, ...) are passed on unchanged."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | list[ContentPart] | None = None

    def text(self) -> str:
        """The message's text: its string content, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content or [] if part.type == "text")


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`: the fields the router reads are checked here; every field of the body
    (tools, response_format, stop, seed, ...) is passed on to the target (see backends.ChatCall)."""

    model_config = ConfigDict(extra="allow")

    model: str = ROUTER_MODEL
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    router: RoutingOptions = Field(default_factory=RoutingOptions)

    def routed_text(self, mode: RoutedText) -> str:
        """The text that is routed: the last user message (`last_user`), the system prompt(s) and the last user
        message (`system_and_last_user`), or the whole conversation (`conversation`, one "role: text" line per
        message; the encoder keeps its end when it is too long)."""
        users = [m for m in self.messages if m.role == "user"]
        if not users or not users[-1].text().strip():
            raise ApiError(400, "messages need a non-empty user message (the last one is routed)", param="messages")
        if mode == "last_user":
            return users[-1].text()
        if mode == "system_and_last_user":
            return "\n\n".join([m.text() for m in self.messages if m.role in ("system", "developer")]
                               + [users[-1].text()])
        return "\n".join(f"{m.role}: {m.text()}" for m in self.messages if m.text().strip())


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
