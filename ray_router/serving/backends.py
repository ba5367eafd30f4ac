"""Target backends as the Ingress sees them: `complete` (an OpenAI chat completion, as a dict) and `stream`
(its chunks, as dicts), for a `ChatCall` (the client's request body).

- OpenAIBackend: a transparent relay to an OpenAI-compatible endpoint. The client's body goes upstream
  unchanged but for `model` (the backend's upstream name), so tools, tool_choice, response_format, stop,
  seed, n, logprobs, ... all reach the model; its answer comes back unchanged, chunk by chunk when
  streaming (tool-call deltas and usage chunks included). One shared async httpx pool, a timeout on every
  attempt, retries on connection errors, timeouts, 429 and 5xx; a stream is retried only before its first
  chunk.
- LocalBackend: a LocalGenerator Serve deployment (demos and tests). It answers text only, and `unsupported`
  names the request fields it cannot honour (tools, response_format, n > 1, logprobs, ...): the Ingress
  refuses those with a 400 instead of ignoring them.
Both raise TargetError when the target cannot answer; the Ingress then tries the next fallback.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from ray_router.serving.config import LocalBackendConfig, OpenAIBackendConfig

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_BACKOFF_S = 0.2
# What a local backend honours; any other field set in a request is refused (n only when it is 1).
_LOCAL_FIELDS = {"model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "n", "user",
                 "metadata"}


class TargetError(Exception):
    """A target failed to answer (connection, timeout, upstream error, malformed answer)."""


@dataclass(frozen=True)
class ChatCall:
    """One chat completion to ask a target for: the client's request body, without the router's own field."""

    body: dict

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def text_messages(self) -> list[dict]:
        """The messages as role and text (text parts joined; other parts and fields left out)."""
        return [{"role": m["role"], "content": message_text(m)} for m in self.body["messages"]]


def message_text(message: dict) -> str:
    """The text of a chat message: its string content, or its text parts joined ("" for none)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content or [] if part.get("type") == "text")


class OpenAIBackend:
    """`POST {base_url}/chat/completions` of an OpenAI-compatible server, relaying the client's body."""

    def __init__(self, config: OpenAIBackendConfig, client: httpx.AsyncClient):
        self.config, self.client = config, client
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.timeout = httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0))

    def unsupported(self, call: ChatCall) -> list[str]:
        """Nothing: the endpoint gets the whole request."""
        return []

    def _headers(self) -> dict:
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, call: ChatCall) -> dict:
        return {**call.body, "model": self.config.model}

    async def _attempts(self):
        """Yield attempt numbers, sleeping a growing backoff between them."""
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
            yield attempt

    async def complete(self, call: ChatCall) -> dict:
        """The upstream's chat completion, as it answered."""
        error = "no attempt"
        async for _ in self._attempts():
            try:
                response = await self.client.post(self.url, json=self._body(call), headers=self._headers(),
                                                  timeout=self.timeout)
            except httpx.HTTPError as err:
                error = f"{type(err).__name__}: {err}"
                continue
            if response.status_code in _RETRY_STATUS:
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                raise TargetError(f"HTTP {response.status_code}: {response.text[:200]}")
            return _completion(response)
        raise TargetError(f"{error} (after {self.config.retries + 1} attempts)")

    async def stream(self, call: ChatCall) -> AsyncIterator[dict]:
        """The upstream's stream chunks, as they arrive; retried only before the first chunk."""
        error = "no attempt"
        async for _ in self._attempts():
            started = False
            try:
                async with self.client.stream("POST", self.url, json=self._body(call), headers=self._headers(),
                                              timeout=self.timeout) as response:
                    if response.status_code != 200:
                        text = (await response.aread()).decode(errors="replace")[:200]
                        error = f"HTTP {response.status_code}: {text}"
                        if response.status_code in _RETRY_STATUS:
                            continue
                        raise TargetError(error)
                    async for chunk in _sse_chunks(response):
                        started = True
                        yield chunk
                    return
            except httpx.HTTPError as err:
                if started:
                    raise TargetError(f"stream broken: {type(err).__name__}: {err}") from None
                error = f"{type(err).__name__}: {err}"
        raise TargetError(f"{error} (after {self.config.retries + 1} attempts)")


def _completion(response: httpx.Response) -> dict:
    """The upstream's JSON answer; TargetError unless it is a chat completion (an object with choices)."""
    try:
        body = response.json()
    except ValueError as err:
        raise TargetError(f"malformed chat completion from upstream (not JSON: {err})") from None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise TargetError(f"malformed chat completion from upstream (no choices): {response.text[:100]!r}")
    return body


async def _sse_chunks(response: httpx.Response) -> AsyncIterator[dict]:
    """The JSON chunks of an SSE stream, up to `data: [DONE]`; TargetError for a chunk that is not an object."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError as err:
            raise TargetError(f"malformed stream chunk from upstream: {data[:100]!r} ({err})") from None
        if not isinstance(chunk, dict):
            raise TargetError(f"malformed stream chunk from upstream: {data[:100]!r}")
        yield chunk


class LocalBackend:
    """A LocalGenerator deployment, called through its handle with a timeout; text answers only."""

    def __init__(self, config: LocalBackendConfig, handle):
        self.config, self.handle = config, handle

    def unsupported(self, call: ChatCall) -> list[str]:
        """The request fields this backend cannot honour (set, and not null)."""
        fields = [f for f, v in call.body.items() if f not in _LOCAL_FIELDS and v is not None]
        return fields + (["n"] if call.body.get("n") not in (None, 1) else [])

    def _limit(self, call: ChatCall) -> int:
        asked = call.body.get("max_completion_tokens") or call.body.get("max_tokens")
        return min(asked or self.config.max_new_tokens, self.config.max_new_tokens)

    async def complete(self, call: ChatCall) -> dict:
        """The whole answer, as an OpenAI chat completion."""
        try:
            result = await asyncio.wait_for(
                self.handle.complete.remote(call.text_messages(), self._limit(call), call.body.get("temperature")),
                self.config.timeout_s,
            )
        except asyncio.TimeoutError:
            raise TargetError(f"local generation timed out after {self.config.timeout_s} s") from None
        except Exception as err:  # a replica error arrives wrapped; the Ingress reports it as this attempt's error
            raise TargetError(f"local generation failed: {type(err).__name__}: {err}") from None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.config.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                         "finish_reason": result["finish_reason"]}],
            "usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                      "total_tokens": result["prompt_tokens"] + result["completion_tokens"]},
        }

    async def stream(self, call: ChatCall) -> AsyncIterator[dict]:
        """The answer as OpenAI stream chunks: the role, a chunk per text piece, then the finish reason."""
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": self.config.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        pieces = self.handle.options(stream=True).stream.remote(call.text_messages(), self._limit(call),
                                                                 call.body.get("temperature"))
        first = True
        while True:
            try:
                piece = await asyncio.wait_for(pieces.__anext__(), self.config.timeout_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                pieces.cancel()
                raise TargetError(f"local generation stalled for {self.config.timeout_s} s") from None
            except Exception as err:
                raise TargetError(f"local generation failed: {type(err).__name__}: {err}") from None
            yield chunk({"role": "assistant", "content": piece} if first else {"content": piece})
            first = False
        yield chunk({}, finish_reason="stop")
