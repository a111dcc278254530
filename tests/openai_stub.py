"""A scriptable OpenAI chat-completions server on loopback, for tests and benchmarks.

``POST /v1/chat/completions`` answers with a real chat-completion body; ``GET /v1/models`` lists one model. What
each request gets is decided, in order, by:

1. the script: actions queued with :meth:`OpenAIStub.push` are consumed one per request (FIFO);
2. otherwise ``responder(body) -> str | Action`` if given (content, or an action);
3. otherwise ``default`` (a reply text, ``"{'score': 3}"`` unless set).

Actions: :func:`reply` (200 with a content, optional delay), :func:`status` (an HTTP error with an OpenAI-style
error body, optional ``Retry-After``), :func:`slow` (a reply after ``delay`` seconds, for client timeouts),
:func:`garbage` (200 with a body that is not JSON). ``latency`` adds a fixed delay to every request.

The server counts requests (``count``, ``requests`` keeps every parsed body) and the highest number of requests
in flight at once (``max_in_flight``). It is a ``ThreadingHTTPServer`` with HTTP/1.1 keep-alive on port 0, so
concurrent clients really overlap. Usable in-process (``with OpenAIStub() as stub: stub.base_url``) or as a
separate process for benchmarks (``python tests/openai_stub.py --port 0 --latency 0.1`` prints the base URL).
"""
from __future__ import annotations

import argparse
import collections
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["Action", "OpenAIStub", "garbage", "reply", "slow", "status"]


@dataclass
class Action:
    code: int = 200
    content: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None  # sent verbatim instead of a chat-completion body


def reply(content: str, delay: float = 0.0) -> Action:
    return Action(200, content, delay)


def slow(delay: float, content: str = "{'score': 3}") -> Action:
    return Action(200, content, delay)


def status(code: int, retry_after: float | str | None = None, delay: float = 0.0) -> Action:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return Action(code, None, delay, headers)


def garbage(text: bytes = b"<html>not json</html>") -> Action:
    return Action(200, None, 0.0, {}, text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog of 5 resets connections under 16-way concurrency


class OpenAIStub:
    def __init__(self, *, default: str = "{'score': 3}", latency: float = 0.0,
                 responder: Callable[[dict], str | Action] | None = None, model: str = "stub-judge",
                 host: str = "127.0.0.1", port: int = 0):
        self.default = default
        self.latency = latency
        self.responder = responder
        self.model = model
        self._script: collections.deque[Action] = collections.deque()
        self._lock = threading.Lock()
        self.count = 0
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = _Server((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *actions: Action | str) -> "OpenAIStub":
        with self._lock:
            for a in actions:
                self._script.append(reply(a) if isinstance(a, str) else a)
        return self

    def reset_counts(self) -> None:
        with self._lock:
            self.count = 0
            self.requests.clear()
            self.max_in_flight = self.in_flight

    def start(self) -> "OpenAIStub":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "OpenAIStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- serving --------------------------------------------------------------------------------------------------
    def _next_action(self, body: dict) -> Action:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            out = self.responder(body)
            return reply(out) if isinstance(out, str) else out
        return reply(self.default)

    def _completion(self, body: dict, content: str) -> bytes:
        with self._lock:
            n = self.count
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        return json.dumps({
            "id": f"chatcmpl-stub-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "system_fingerprint": "stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": max(1, len(content) // 4),
                      "total_tokens": prompt_chars // 4 + max(1, len(content) // 4)},
        }).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out as one segment, and no Nagle / delayed-ACK stall (~40 ms) on keep-alive
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None,
                      ctype: str = "application/json") -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self._headers_buffer.append(b"\r\n")  # end_headers() without its separate flush
                    self._headers_buffer.append(payload)
                    self.flush_headers()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": stub.model, "object": "model", "created": 0, "owned_by": "stub"}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, b'{"error": {"message": "bad json"}}')
                    return
                with stub._lock:
                    stub.count += 1
                    stub.requests.append(body)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    action = stub._next_action(body)
                    delay = stub.latency + action.delay
                    if delay > 0:
                        time.sleep(delay)
                    if action.raw_body is not None:
                        self._send(action.code, action.raw_body, action.headers, ctype="text/html")
                    elif action.code != 200:
                        err = {"error": {"message": f"stub error {action.code}", "type": "stub_error",
                                         "code": str(action.code)}}
                        self._send(action.code, json.dumps(err).encode(), action.headers)
                    else:
                        self._send(200, stub._completion(body, action.content or ""), action.headers)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

        return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OpenAI chat-completions stub on loopback")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--default", default="{'score': 3}", help="reply content")
    args = ap.parse_args(argv)
    stub = OpenAIStub(default=args.default, latency=args.latency, port=args.port).start()
    print(stub.base_url, flush=True)
    try:
        for line in sys.stdin:  # runs until stdin closes or "count" is asked
            if line.strip() == "count":
                print(json.dumps({"count": stub.count, "max_in_flight": stub.max_in_flight}), flush=True)
            elif line.strip() == "reset":
                stub.reset_counts()
                print("ok", flush=True)
    except KeyboardInterrupt:
        pass
    stub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
