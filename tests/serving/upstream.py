"""A real OpenAI-compatible upstream for the gateway tests: an HTTP server on 127.0.0.1 that records every
request body and answers by the `model` it is asked for:

- "echo": a chat completion with a tool call when the request has tools (finish_reason "tool_calls"),
  logprobs, a system fingerprint and usage details; streamed: a role chunk, two tool-call deltas (or two
  text pieces), a finish chunk and, with stream_options.include_usage, a usage chunk;
- "hang": never answers in time (sleeps 30 s);
- "garbage": 200 with a body that is not JSON (and not SSE when streaming);
- "drop": streamed: one chunk, then the connection is closed mid-stream.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def completion(request: dict) -> dict:
    message = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]} if request.get("tools") else {
        "role": "assistant", "content": "Hello from upstream.", "refusal": None}
    return {
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000, "model": request["model"],
        "system_fingerprint": "fp_upstream",
        "choices": [{"index": 0, "message": message, "logprobs": {"content": []},
                     "finish_reason": "tool_calls" if request.get("tools") else "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                  "completion_tokens_details": {"reasoning_tokens": 0}},
    }


def chunks(request: dict) -> list[dict]:
    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 1700000000,
                "model": request["model"], "system_fingerprint": "fp_upstream",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    if request.get("tools"):
        parts = [{"tool_calls": [{"index": 0, **TOOL_CALL, "function": {"name": "get_weather", "arguments": ""}}]},
                 {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}]
        finish = "tool_calls"
    else:
        parts, finish = [{"content": "Hello "}, {"content": "from upstream."}], "stop"
    out = [chunk({"role": "assistant", "content": None if request.get("tools") else ""})]
    out += [chunk(part) for part in parts] + [chunk({}, finish)]
    if (request.get("stream_options") or {}).get("include_usage"):
        out.append({"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 1700000000,
                    "model": request["model"], "choices": [], "usage": completion(request)["usage"]})
    return out


class Upstream:
    """The server, started on a free port; `requests` holds every body received, in order."""

    def __init__(self):
        self.requests: list[dict] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                upstream.requests.append(body)
                model = body["model"]
                if model == "hang":
                    time.sleep(30)
                    return
                if model == "garbage":
                    return self._send(200, b"this is not json", "text/plain")
                if not body.get("stream"):
                    return self._send(200, json.dumps(completion(body)).encode(), "application/json")
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i, chunk in enumerate(chunks(body)):
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                    if model == "drop" and i == 0:
                        self.close_connection = True
                        self.connection.shutdown(2)  # the connection dies mid-stream, before the last chunk
                        return
                self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, data: bytes):
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _send(self, status: int, data: bytes, kind: str):
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
