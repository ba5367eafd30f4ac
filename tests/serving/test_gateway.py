"""The router as a transparent OpenAI gateway, against a real local OpenAI-compatible upstream that records
what it receives: every field goes through, tool calls come back (streamed and not), a hanging, garbled or
broken upstream is cut off and the fallback answers, local backends refuse what they cannot honour, what is
routed follows the configured mode, and a per-request cost limit constrains the choice."""

import json
import socket
import time

import httpx
import numpy as np
import pytest

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.model.router_training import RouterTrainConfig, train_router
from ray_router.router import Router
from ray_router.serving.api import ChatRequest

from upstream import Upstream, chunks, completion

pytestmark = pytest.mark.ray

FAST = {"pca_k": 12, "calibrate": False, "trainer": {"n_seeds": 2, "keep_best": 1, "max_epochs": 20, "patience": 4}}
KINDS = ["echo", "hang", "garbage", "drop", "local"]
EVERY_FIELD = {
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "tool_choice": "auto", "parallel_tool_calls": False, "response_format": {"type": "json_object"},
    "stop": ["\n\n"], "seed": 7, "top_p": 0.9, "n": 1, "logprobs": True, "top_logprobs": 2, "user": "u-1",
    "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {"50256": -100}, "metadata": {"k": "v"},
    "temperature": 0.3, "max_completion_tokens": 20,
}


@pytest.fixture(scope="module")
def upstream():
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def bundle(small_routerbench, small_features, tmp_path_factory) -> str:
    targets = RoutingDataset.read(small_routerbench).target_names
    out = str(tmp_path_factory.mktemp("gateway") / "router")
    train_router(str(small_routerbench), str(small_features), out, blocks=dict.fromkeys(targets, "smollm2-135m/L3_last"),
                 config=RouterTrainConfig.model_validate(FAST), use_ray=False)
    return out


@pytest.fixture(scope="module")
def roles(bundle) -> dict[str, str]:
    """A target per upstream behaviour (the local stand-in last)."""
    return dict(zip(KINDS, Router.load(bundle).targets))


@pytest.fixture(scope="module")
def gateway(bundle, roles, upstream, ray_cluster):
    from ray import serve

    from ray_router.serving.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backends = {roles[kind]: {"kind": "openai", "base_url": upstream.url, "model": kind, "timeout_s": 3, "retries": 0}
                for kind in KINDS[:-1]}
    backends[roles["local"]] = {"kind": "local", "model": "smollm2-135m", "max_new_tokens": 4}
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"bundle": bundle, "encoder": {"num_cpus": 0.2}, "backends": backends}), name="gateway",
              route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        yield client
    serve.shutdown()


def _anchored_on(first: str, then: str) -> dict:
    """Routing options that try `first`, then `then` (an infinite margin keeps the anchor)."""
    return {"policy": "anchored", "anchor": first, "allowed": [first, then]}


def _messages(text: str = "What is the weather in Paris?") -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def test_every_field_reaches_the_model_and_every_field_of_its_answer_comes_back(gateway, upstream, roles):
    for model, mode in ((roles["echo"], "pass-through"), ("router", "routed")):
        body = {"model": model, "messages": _messages(), **EVERY_FIELD}
        if model == "router":
            body["router"] = {"allowed": [roles["echo"]]}
        response = gateway.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        sent = upstream.requests[-1]
        assert sent == {k: v for k, v in body.items() if k != "router"} | {"model": "echo"}  # only model changed
        answer = response.json()
        assert answer.pop("router")["mode"] == mode and answer.pop("model") == roles["echo"]
        assert answer == {k: v for k, v in completion(sent).items() if k != "model"}  # tool_calls, usage, ...
        assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert response.headers["x-router-target"] == roles["echo"]


def test_streamed_tool_call_deltas_and_usage_chunks_are_relayed_as_sent(gateway, upstream, roles):
    body = {"model": "router", "messages": _messages(), "stream": True, "stream_options": {"include_usage": True},
            "tools": EVERY_FIELD["tools"], "router": {"allowed": [roles["echo"]]}}
    with gateway.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    relayed = [json.loads(line[6:]) for line in lines[:-1]]
    assert relayed[0].pop("router")["target"] == roles["echo"]
    assert all(chunk.pop("model") == roles["echo"] for chunk in relayed)
    expected = [{k: v for k, v in chunk.items() if k != "model"} for chunk in chunks(upstream.requests[-1])]
    assert relayed == expected  # tool-call deltas, finish reason and the usage chunk, in order


def test_a_hanging_or_garbled_upstream_is_cut_off_and_the_fallback_answers(gateway, roles):
    for broken, says in (("hang", "ReadTimeout"), ("garbage", "malformed chat completion")):
        started = time.monotonic()
        body = {"model": "router", "messages": _messages(), "router": _anchored_on(roles[broken], roles["echo"])}
        response = gateway.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        meta = response.json()["router"]
        assert meta["target"] == roles["echo"] and meta["fallback_used"]
        assert says in meta["attempts"][0]["error"]
        assert time.monotonic() - started < 20  # the 3 s timeout, not the upstream's 30 s
    alone = gateway.post("/v1/chat/completions", json={"model": roles["garbage"], "messages": _messages()})
    assert alone.status_code == 502 and "malformed" in alone.json()["error"]["message"]


def test_a_stream_broken_midway_ends_with_an_error_never_a_hang(gateway, roles):
    body = {"model": roles["drop"], "messages": _messages("Tell me a story."), "stream": True}
    started = time.monotonic()
    with gateway.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    assert time.monotonic() - started < 20
    assert events[0]["router"]["target"] == roles["drop"]
    assert "stream broken" in events[-2]["error"]["message"] and events[-1]["choices"][0]["finish_reason"] == "error"


def test_a_local_backend_refuses_what_it_cannot_honour(gateway, roles):
    for field, value in (("tools", EVERY_FIELD["tools"]), ("response_format", {"type": "json_object"}), ("n", 2),
                         ("logprobs", True)):
        direct = gateway.post("/v1/chat/completions", json={"model": roles["local"], "messages": _messages(),
                                                             field: value})
        assert direct.status_code == 400 and field in direct.json()["error"]["message"], direct.text
        routed = gateway.post("/v1/chat/completions", json={"model": "router", "messages": _messages(), field: value,
                                                            "router": {"allowed": [roles["local"]]}})
        assert routed.status_code == 400 and field in routed.json()["error"]["message"], routed.text
    plain = gateway.post("/v1/chat/completions", json={"model": roles["local"], "messages": _messages(),
                                                        "user": "u-1", "max_tokens": 2})
    assert plain.status_code == 200, plain.text


@pytest.mark.parametrize("mode", ["last_user", "system_and_last_user", "conversation"])
def test_what_is_routed_follows_the_configured_mode(gateway, bundle, roles, mode):
    messages = [{"role": "system", "content": "You answer questions about geography."},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                      "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "Paris"},
                {"role": "user", "content": "And of Italy?"}]
    body = {"model": "router", "messages": messages, "router": {"routed_text": mode, "allowed": [roles["echo"]]}}
    response = gateway.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    served = response.json()["router"]["decision"]["probabilities"]
    text = ChatRequest.model_validate(body).routed_text(mode)
    assert (text == "And of Italy?") == (mode == "last_user") and ("tool: Paris" in text) == (mode == "conversation")
    router = Router.load(bundle)
    expected = router.route([text]).proba[0]
    np.testing.assert_allclose([served[t] for t in router.targets], expected, atol=1e-5)


def test_a_cost_limit_per_request_constrains_the_choice_and_says_so(gateway, bundle):
    router = Router.load(bundle)
    prompt = "What is the capital of France?"
    cost = router.expected_cost([prompt])[0]
    free = gateway.post("/v1/route", json={"prompt": prompt, "router": {"policy": "argmax"}}).json()["decisions"][0]
    chosen_cost = free["expected_cost_usd"][free["target"]]
    below = float(np.min(cost[cost < chosen_cost])) if (cost < chosen_cost).any() else None
    if below is not None:
        limited = gateway.post("/v1/route", json={"prompt": prompt,
                                                  "router": {"policy": "argmax", "max_cost_usd": below}})
        decision = limited.json()["decisions"][0]
        assert decision["expected_cost_usd"][decision["target"]] <= below and decision["bound"] == "max_cost_usd"
        assert decision["max_cost_usd"] == below
    loose = gateway.post("/v1/route", json={"prompt": prompt, "router": {"policy": "argmax",
                                                                         "max_cost_usd": float(cost.max())}})
    assert loose.json()["decisions"][0]["bound"] is None
    none_left = gateway.post("/v1/route", json={"prompt": prompt, "router": {"max_cost_usd": float(cost.min()) / 2}})
    assert none_left.status_code == 400 and "cost at most" in none_left.json()["error"]["message"]
