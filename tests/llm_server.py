"""A scripted OpenAI-compatible chat server on 127.0.0.1, for tests that drive the real `openai` client.

    with ScriptedServer([{"text": "hello"}, {"status": 429, "headers": {"Retry-After": "0"}}]) as srv:
        client = openai.AsyncOpenAI(api_key="k", base_url=srv.url)   # srv.url = "http://127.0.0.1:PORT/v1"
        ...
        srv.requests[0].body["messages"], srv.requests[0].authorization

POST /v1/chat/completions answers with the next entry of the script (a FIFO queue; `push` adds more);
when the queue is empty it answers `default` (a plain "ok" answer unless given). Script entry keys,
all optional:

    text          the answer's content (default "ok")
    finish_reason "stop" | "length" (default "stop")
    status        HTTP status (default 200); non-200 answers carry an OpenAI-style error body
    error         the error body's message (default "scripted error"); "{auth}" in it is replaced by the
                  bearer token the request carried, to imitate servers that echo the key back
    headers       extra response headers, e.g. {"Retry-After": "0"}
    delay_s       seconds to wait before answering (to exceed the client's timeout)
    stream        answer as SSE chunks (`data: {...}` then `data: [DONE]`); usage comes as a last chunk
                  when the request asked for it with stream_options.include_usage
    no_choices    answer with an empty `choices` list
    usage         the usage object, or None to leave it out (default 11 prompt, 7 completion tokens)

Every request is recorded (path, JSON body, Authorization header) in `requests`, in arrival order.
Any other path answers 404.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@dataclass
class RecordedRequest:
    """One request the server received."""

    path: str
    body: dict[str, Any]
    authorization: str | None


class ScriptedServer:
    """An OpenAI-compatible chat-completions server replaying a script, in a daemon thread.

    Use as a context manager (`with ScriptedServer(script) as srv:`) or call `start()` / `stop()`.
    """

    def __init__(self, script: list[dict[str, Any]] | None = None, default: dict[str, Any] | None = None):
        self._queue: deque[dict[str, Any]] = deque(script or [])
        self.default: dict[str, Any] = default if default is not None else {"text": "ok"}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to give the openai client: http://127.0.0.1:PORT/v1."""
        if self._httpd is None:
            raise RuntimeError("ScriptedServer is not started: use it as a context manager or call start()")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *entries: dict[str, Any]) -> None:
        """Append entries to the script."""
        with self._lock:
            self._queue.extend(entries)

    def _next_entry(self, request: RecordedRequest) -> dict[str, Any]:
        with self._lock:
            self.requests.append(request)
            return self._queue.popleft() if self._queue else self.default

    def start(self) -> ScriptedServer:
        """Listen on a free port of 127.0.0.1 and serve in a daemon thread."""
        server = self

        class Handler(_Handler):
            scripted = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True  # a handler still sleeping on delay_s must not block exit
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    scripted: ScriptedServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # keep test output quiet

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}, {})
            return
        auth = self.headers.get("Authorization")
        entry = self.scripted._next_entry(RecordedRequest(self.path, body, auth))
        if entry.get("delay_s"):
            time.sleep(float(entry["delay_s"]))
        try:
            self._answer(entry, body, auth)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer

    def _answer(self, entry: dict[str, Any], body: dict[str, Any], auth: str | None) -> None:
        status = int(entry.get("status", 200))
        headers = dict(entry.get("headers", {}))
        if status != 200:
            token = (auth or "").removeprefix("Bearer ").strip()
            message = str(entry.get("error", "scripted error")).replace("{auth}", token)
            error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
            self._send_json(status, {"error": error}, headers)
            return
        model = body.get("model", "scripted-model")
        text = str(entry.get("text", "ok"))
        finish = entry.get("finish_reason", "stop")
        usage = entry.get("usage", DEFAULT_USAGE)
        if entry.get("stream"):
            self._send_stream(entry, body, model, text, finish, usage, headers)
            return
        choices = (
            []
            if entry.get("no_choices")
            else [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ]
        )
        answer: dict[str, Any] = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            answer["usage"] = usage
        self._send_json(200, answer, headers)

    def _send_stream(
        self,
        entry: dict[str, Any],
        body: dict[str, Any],
        model: str,
        text: str,
        finish: str,
        usage: dict[str, Any] | None,
        headers: dict[str, str],
    ) -> None:
        base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": model}
        chunks: list[dict[str, Any]] = []
        if not entry.get("no_choices"):
            pieces = [text[i : i + 4] for i in range(0, len(text), 4)] or [""]
            chunks.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            for piece in pieces:
                chunks.append({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
            chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        payload = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
        payload += b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
