"""The HTTP ingress (FastAPI on Ray Serve) and `build_app(args)` for `serve run` / `serve build`.

Graph: Encoder -> RouterHead -> Ingress, plus one LocalGenerator per local model. Endpoints:
`POST /v1/route`, `POST /v1/chat/completions` (OpenAI schema, `model: "router"` routes, a target name
passes through, `stream: true` streams SSE), `GET /v1/models`, `GET /healthz`.
"""

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve import Application
from ray.serve.exceptions import RayServeException

from ray_router.errors import UserError, validation_message
from ray_router.policy.config import PolicyConfig, merge_policy
from ray_router.policy.policies import allowed_mask
from ray_router.router import Router
from ray_router.serving.api import (
    ROUTER_MODEL,
    ApiError,
    ChatRequest,
    RouteRequest,
    RoutingOptions,
    json_depth,
)
from ray_router.serving.backends import (
    ChatCall,
    LocalBackend,
    OpenAIBackend,
    TargetError,
)
from ray_router.serving.config import ServeArgs
from ray_router.serving.deployments import EncodeError, Encoder, RouterHead
from ray_router.serving.local_target import LocalGenerator
from ray_router.serving.telemetry import RouterMetrics

logger = logging.getLogger("ray.serve")

DECISION_TIMEOUT_S = 60.0  # encoder + head, per request
api = FastAPI(title="ray-router", docs_url=None, redoc_url=None)


def _authorized(header: str, token: str) -> bool:
    """Whether `header` is `Bearer <token>`, compared in constant time (no timing hint about the token)."""
    return hmac.compare_digest(header.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode())


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=128)
@serve.ingress(api)
class Ingress:
    """Routes requests, calls the chosen target, falls back on failure, reports what happened."""

    async def __init__(self, encoder, head, generators: dict, args: dict):
        self.args = ServeArgs.model_validate(args)
        self.encoder, self.head = encoder, head
        self.token = None
        if self.args.auth_token_env:
            self.token = os.environ.get(self.args.auth_token_env)
            if not self.token:
                raise UserError(f"auth_token_env {self.args.auth_token_env!r} is set but that variable is empty")
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=32))
        self.backends = {
            target: OpenAIBackend(cfg, self.client) if cfg.kind == "openai" else LocalBackend(cfg, generators[cfg.model])
            for target, cfg in self.args.backends.items()
        }
        info = await head.describe.remote()
        self.targets: list[str] = info["targets"]
        self.default_policy = PolicyConfig.model_validate(info["default_policy"])
        self.schema_id: str = info["feature_schema"]
        self.metrics = RouterMetrics()

    # -- the door ---------------------------------------------------------------------------------
    async def _respond(self, endpoint: str, request: Request, work: Callable[[], Awaitable]) -> object:
        """Authorize, run `work`, and turn ApiErrors and UserErrors (a 4xx) into JSON error responses."""
        try:
            if self.token is not None and not _authorized(request.headers.get("authorization", ""), self.token):
                raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                               kind="authentication_error")
            return await work()
        except (ApiError, UserError) as err:
            error = err if isinstance(err, ApiError) else ApiError(err.status, str(err))
            self.metrics.error(endpoint, error.status)
            return JSONResponse(error.body(), status_code=error.status)

    async def _read(self, request: Request, model: type[BaseModel]) -> tuple[BaseModel, dict]:
        """The body, checked against `model`, and as the JSON object it was."""
        limit = self.args.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(413, f"request body of {len(raw)} bytes exceeds the limit of {limit} bytes")
        brackets = raw.count(b"[") + raw.count(b"{")  # an upper bound on the depth, counted in C
        if brackets > self.args.max_json_depth and json_depth(raw) > self.args.max_json_depth:
            raise ApiError(400, f"the JSON body is nested deeper than {self.args.max_json_depth} levels")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise ApiError(400, f"malformed JSON body: {err}") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
        try:
            return model.model_validate(data), data
        except ValidationError as err:
            raise ApiError(400, f"invalid request: {validation_message(err)}") from None

    def _policy(self, options: RoutingOptions, call: ChatCall | None = None) -> PolicyConfig:
        """The request's fields over the app's default policy (see merge_policy). For a chat `call`, `allowed`
        defaults to the targets with a backend, and only backends that honour every field of the call stay."""
        try:
            policy = merge_policy(self.default_policy, options.overrides())
            allowed_mask(self.targets, policy.allowed)
        except UserError as err:
            raise ApiError(400, str(err), param="router") from None
        if call is not None:
            allowed = policy.allowed or [t for t in self.targets if t in self.backends]
            unbound = [t for t in allowed if t not in self.backends]
            if unbound:
                raise ApiError(400, f"target(s) {', '.join(unbound)} have no backend (not routable for chat)",
                               param="router.allowed")
            if not allowed:
                raise ApiError(400, "no target has a backend: this deployment only serves /v1/route")
            refused = {t: self.backends[t].unsupported(call) for t in allowed}
            able = [t for t in allowed if not refused[t]]
            if not able:
                fields = sorted({f for fs in refused.values() for f in fs})
                raise ApiError(400, f"no allowed target can honour {', '.join(fields)} (local backends answer "
                                    "text only)", param=fields[0])
            policy = policy.model_copy(update={"allowed": able})
        return policy

    async def _decide(self, endpoint: str, prompts: list[str], policy: PolicyConfig,
                      max_cost_usd: float | None = None) -> tuple[list[dict], dict]:
        start = time.perf_counter()
        try:
            features = await asyncio.wait_for(
                asyncio.gather(*(self.encoder.encode.remote(p) for p in prompts)), DECISION_TIMEOUT_S)
            refused = [(i, f.message) for i, f in enumerate(features) if isinstance(f, EncodeError)]
            if refused:
                raise ApiError(400, "; ".join(f"prompt {i}: {message}" for i, message in refused), param="prompts")
            encoded = time.perf_counter()
            decisions = await asyncio.wait_for(
                self.head.decide.remote(features, prompts, policy.model_dump(), max_cost_usd), DECISION_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ApiError(504, f"routing decision took longer than {DECISION_TIMEOUT_S} s", kind="timeout") from None
        except RayTaskError as err:
            if not isinstance(err.cause, UserError):
                raise
            raise ApiError(400, str(err.cause), param="router") from None
        except (RayError, RayServeException) as err:  # a replica died or restarts: Serve replaces it
            logger.warning("routing decision failed: %s", err)
            raise ApiError(503, f"the router's {type(err).__name__}: a replica failed; retry the request",
                           kind="service_unavailable") from None
        latency = {"encode": round((encoded - start) * 1000, 3), "decide": _ms(encoded), "total": _ms(start)}
        self.metrics.decided(endpoint, latency["total"])
        return decisions, latency

    # -- endpoints --------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "feature_schema": self.schema_id, "targets": len(self.targets),
                "routable": [t for t in self.targets if t in self.backends]}

    @api.get("/v1/models")
    async def models(self, request: Request):
        async def work():
            data = [{"id": ROUTER_MODEL, "object": "model", "owned_by": "ray-router", "routable": True}]
            data += [{"id": t, "object": "model", "owned_by": self.args.backends[t].kind if t in self.backends
                      else "unbound", "routable": t in self.backends} for t in self.targets]
            return {"object": "list", "data": data}

        return await self._respond("models", request, work)

    @api.post("/v1/route")
    async def route(self, request: Request):
        async def work():
            body, _ = await self._read(request, RouteRequest)
            prompts = body.all_prompts()
            if len(prompts) > self.args.max_prompts:
                raise ApiError(413, f"{len(prompts)} prompts in one request exceed the limit of "
                                    f"{self.args.max_prompts}", param="prompts")
            policy = self._policy(body.router)
            decisions, latency = await self._decide("route", prompts, policy, body.router.max_cost_usd)
            for decision in decisions:
                self.metrics.answered("route", decision["target"])
            return {"decisions": decisions, "policy": policy.model_dump(mode="json"), "feature_schema": self.schema_id,
                    "latency_ms": latency}

        return await self._respond("route", request, work)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        async def work():
            body, data = await self._read(request, ChatRequest)
            call = ChatCall({k: v for k, v in data.items() if k != "router"})
            if body.model == ROUTER_MODEL:
                prompt = body.routed_text(body.router.routed_text or self.args.routed_text)
                policy = self._policy(body.router, call)
                decisions, latency = await self._decide("chat", [prompt], policy, body.router.max_cost_usd)
                decision = decisions[0]
                routing = {"mode": "routed", "policy": policy.model_dump(mode="json"), "feature_schema": self.schema_id,
                           "decision": decision, "decision_latency_ms": latency}
                candidates = [decision["target"], *decision["fallbacks"]]
            elif body.model in self.backends:
                refused = self.backends[body.model].unsupported(call)
                if refused:
                    raise ApiError(400, f"target {body.model!r} cannot honour {', '.join(refused)} (a local backend "
                                        "answers text only)", param=refused[0])
                routing, candidates = {"mode": "pass-through"}, [body.model]
            elif body.model in self.targets:
                raise ApiError(400, f"target {body.model!r} has no backend (not routable for chat)", param="model")
            else:
                raise ApiError(404, f"unknown model {body.model!r}: use {ROUTER_MODEL!r} or one of "
                                    f"{', '.join(self.backends)}", param="model", code="model_not_found")
            if call.stream:
                return await self._stream(call, candidates, routing)
            return await self._complete(call, candidates, routing)

        return await self._respond("chat", request, work)

    # -- answering with fallback ------------------------------------------------------------------
    def _failed(self, attempts: list[dict], target: str, err: TargetError, start: float) -> None:
        attempts.append({"target": target, "ok": False, "error": str(err), "latency_ms": _ms(start)})
        self.metrics.failed_attempt(target)
        logger.warning("target %s failed: %s", target, err)

    def _all_failed(self, attempts: list[dict]) -> ApiError:
        return ApiError(502, f"all {len(attempts)} target(s) failed: "
                             + "; ".join(f"{a['target']}: {a['error']}" for a in attempts),
                        kind="upstream_error", attempts=attempts)

    def _metadata(self, target: str, routing: dict, attempts: list[dict]) -> tuple[dict, dict]:
        """The `router` field of the answer and the matching x-router-* headers."""
        meta = {"target": target, **routing, "fallback_used": len(attempts) > 1, "attempts": attempts}
        headers = {"x-router-target": target, "x-router-mode": routing["mode"],
                   "x-router-attempts": str(len(attempts)), "x-router-fallback": str(len(attempts) > 1).lower()}
        if routing["mode"] == "routed":
            decision = routing["decision"]
            headers |= {"x-router-policy": routing["policy"]["kind"],
                        "x-router-chosen": decision["target"],
                        "x-router-probability": f"{decision['probabilities'][target]:.4f}",
                        "x-router-expected-cost-usd": f"{decision['expected_cost_usd'][target]:.6g}",
                        "x-router-feature-schema": routing["feature_schema"]}
        return meta, headers

    async def _complete(self, call: ChatCall, candidates: list[str], routing: dict) -> JSONResponse:
        """The first target that answers: its completion unchanged but for `model` (the target's name), with the
        router's metadata added."""
        attempts: list[dict] = []
        for target in candidates:
            start = time.perf_counter()
            try:
                completion = await self.backends[target].complete(call)
            except TargetError as err:
                self._failed(attempts, target, err, start)
                continue
            attempts.append({"target": target, "ok": True, "latency_ms": _ms(start)})
            self.metrics.answered("chat", target)
            meta, headers = self._metadata(target, routing, attempts)
            return JSONResponse({**completion, "model": target, "router": meta}, headers=headers)
        raise self._all_failed(attempts)

    async def _stream(self, call: ChatCall, candidates: list[str], routing: dict) -> StreamingResponse:
        """SSE chunks relayed from the first target whose stream starts; a target is abandoned for the next only
        before its first chunk, so a partly sent stream is never repeated."""
        attempts: list[dict] = []
        for target in candidates:
            start = time.perf_counter()
            chunks = self.backends[target].stream(call)
            try:
                first = await anext(chunks, None)
            except TargetError as err:
                self._failed(attempts, target, err, start)
                continue
            attempts.append({"target": target, "ok": True, "latency_ms": _ms(start)})
            self.metrics.answered("chat", target)
            meta, headers = self._metadata(target, routing, attempts)
            return StreamingResponse(self._sse(target, first, chunks, meta), media_type="text/event-stream",
                                     headers=headers | {"cache-control": "no-cache"})
        raise self._all_failed(attempts)

    async def _sse(self, target: str, first: dict | None, chunks: AsyncIterator[dict], meta: dict
                   ) -> AsyncIterator[str]:
        """The target's chunks with `model` set to the target and the router's metadata in the first one; a
        stream broken midway ends with an error event and a chunk whose finish_reason is "error"."""
        def event(chunk: dict) -> str:
            return f"data: {json.dumps({**chunk, 'model': target})}\n\n"

        if first is None:
            first = {"object": "chat.completion.chunk", "choices": []}
        yield event({**first, "router": meta})
        try:
            async for chunk in chunks:
                yield event(chunk)
        except TargetError as err:
            self.metrics.error("chat", 502)
            yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'upstream_error'}})}\n\n"
            yield event({"id": first.get("id"), "object": "chat.completion.chunk", "created": first.get("created"),
                         "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}]})
        yield "data: [DONE]\n\n"


def build_app(args: dict) -> Application:
    """The Serve application for `args` (see ServeArgs); checks the bundle and the backends first."""
    config = ServeArgs.from_user(args)
    config.bundle = str(Path(config.bundle).expanduser().resolve())  # replicas may run in another directory
    router = Router.load(config.bundle)
    merge_policy(router.default_policy, config.policy)  # a bad policy is a UserError now, not a replica failure
    unbound = config.check_targets(router.targets)
    if unbound:
        logger.warning("targets without a backend (routable by /v1/route only, not for chat): %s", ", ".join(unbound))
    options = config.encoder
    encoder = Encoder.options(**options.replica_options()).bind(
        config.bundle, options.max_batch_size, options.batch_wait_timeout_s, options.cache_dir, options.torch_threads)
    head = RouterHead.options(ray_actor_options=config.head.actor_options(),
                              num_replicas=config.head.num_workers or 1).bind(
        config.bundle, encoder, config.policy, config.head.torch_threads)
    local = {}
    for cfg in config.backends.values():
        if cfg.kind == "local" and cfg.model not in local:
            name = "LocalGenerator" if not local else f"LocalGenerator{len(local)}"
            local[cfg.model] = LocalGenerator.options(
                name=name, ray_actor_options=cfg.actor_options(), num_replicas=cfg.num_workers or 1,
            ).bind(cfg.model, options.cache_dir, cfg.torch_threads)
    return Ingress.options(ray_actor_options=config.ingress.actor_options(),
                           num_replicas=config.ingress.num_workers or 1).bind(
        encoder, head, local, config.model_dump())
