"""Target backends as the Ingress sees them: `complete` (whole answer) and `stream` (text pieces).

- OpenAIBackend: an OpenAI-compatible endpoint over a shared async httpx connection pool, with a
  timeout on every attempt and retries on connection errors, timeouts, 429 and 5xx.
- LocalBackend: a LocalGenerator Serve deployment, through its handle, with a timeout on every call.
Both raise TargetError when the target cannot answer; the Ingress then tries the next fallback.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from ray_router.serving.config import LocalBackendConfig, OpenAIBackendConfig

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_BACKOFF_S = 0.2


class TargetError(Exception):
    """A target failed to answer (connection, timeout, upstream error)."""


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class GenerationParams:
    messages: list[dict]
    max_tokens: int | None
    temperature: float | None


class OpenAIBackend:
    """`POST {base_url}/chat/completions` of an OpenAI-compatible server."""

    def __init__(self, config: OpenAIBackendConfig, client: httpx.AsyncClient):
        self.config, self.client = config, client
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.timeout = httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0))

    def _headers(self) -> dict:
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, params: GenerationParams, stream: bool) -> dict:
        body = {"model": self.config.model, "messages": params.messages, "stream": stream}
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        if params.temperature is not None:
            body["temperature"] = params.temperature
        return body

    async def _attempts(self):
        """Yield attempt numbers, sleeping a growing backoff between them."""
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
            yield attempt

    async def complete(self, params: GenerationParams) -> Completion:
        error = "no attempt"
        async for _ in self._attempts():
            try:
                response = await self.client.post(self.url, json=self._body(params, False), headers=self._headers(),
                                                  timeout=self.timeout)
            except httpx.HTTPError as err:
                error = f"{type(err).__name__}: {err}"
                continue
            if response.status_code in _RETRY_STATUS:
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                raise TargetError(f"HTTP {response.status_code}: {response.text[:200]}")
            return _parse_completion(response)
        raise TargetError(f"{error} (after {self.config.retries + 1} attempts)")

    async def stream(self, params: GenerationParams) -> AsyncIterator[str]:
        """Text pieces of the upstream SSE stream; retried only before its first piece."""
        error = "no attempt"
        async for _ in self._attempts():
            started = False
            try:
                async with self.client.stream("POST", self.url, json=self._body(params, True),
                                              headers=self._headers(), timeout=self.timeout) as response:
                    if response.status_code != 200:
                        text = (await response.aread()).decode(errors="replace")[:200]
                        error = f"HTTP {response.status_code}: {text}"
                        if response.status_code in _RETRY_STATUS:
                            continue
                        raise TargetError(error)
                    async for piece in _sse_pieces(response):
                        started = True
                        yield piece
                    return
            except httpx.HTTPError as err:
                if started:
                    raise TargetError(f"stream broken: {type(err).__name__}: {err}") from None
                error = f"{type(err).__name__}: {err}"
        raise TargetError(f"{error} (after {self.config.retries + 1} attempts)")


def _parse_completion(response: httpx.Response) -> Completion:
    try:
        body = response.json()
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Completion(choice["message"].get("content") or "", choice.get("finish_reason") or "stop",
                          int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise TargetError(f"malformed chat completion from upstream ({type(err).__name__}: {err})") from None


async def _sse_pieces(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            delta = json.loads(data)["choices"][0].get("delta") or {}
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise TargetError(f"malformed stream chunk from upstream: {data[:100]!r} ({err})") from None
        if delta.get("content"):
            yield delta["content"]


class LocalBackend:
    """A LocalGenerator deployment, called through its handle with a timeout."""

    def __init__(self, config: LocalBackendConfig, handle):
        self.config, self.handle = config, handle

    def _limit(self, params: GenerationParams) -> int:
        return min(params.max_tokens or self.config.max_new_tokens, self.config.max_new_tokens)

    async def complete(self, params: GenerationParams) -> Completion:
        try:
            result = await asyncio.wait_for(
                self.handle.complete.remote(params.messages, self._limit(params), params.temperature),
                self.config.timeout_s,
            )
        except asyncio.TimeoutError:
            raise TargetError(f"local generation timed out after {self.config.timeout_s} s") from None
        except Exception as err:  # a replica error arrives wrapped; the Ingress reports it as this attempt's error
            raise TargetError(f"local generation failed: {type(err).__name__}: {err}") from None
        return Completion(**result)

    async def stream(self, params: GenerationParams) -> AsyncIterator[str]:
        pieces = self.handle.options(stream=True).stream.remote(params.messages, self._limit(params),
                                                                 params.temperature)
        while True:
            try:
                piece = await asyncio.wait_for(pieces.__anext__(), self.config.timeout_s)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                pieces.cancel()
                raise TargetError(f"local generation stalled for {self.config.timeout_s} s") from None
            except Exception as err:
                raise TargetError(f"local generation failed: {type(err).__name__}: {err}") from None
            yield piece
