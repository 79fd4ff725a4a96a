"""A scripted OpenAI-compatible server for tests that need real HTTP (backends, synth, proxy).

`ScriptedOpenAI` serves `/v1/chat/completions`, `/v1/completions` and `/v1/models`. Each
completion request takes the next planned action from its script; with the script empty it
falls back to `default` (an echo: `"echo:<last user message>"` for chat, `"echo:<prompt>"`
for completions, the request's `model` reflected in the response), so tests only script what
they care about. Every request is recorded (path, JSON body, headers) and the server tracks
how many requests were in flight at once.

    server = ScriptedOpenAI()
    server.script(Status(429, retry_after=0), Reply(text="hi"))
    with server.running() as base_url:          # http://127.0.0.1:<port>/v1
        ...
    assert [r.body["model"] for r in server.requests] == ["base", "base"]

`serve_app(app)` runs any ASGI app (e.g. our own proxy) on a real uvicorn server in a
background thread and yields its base URL; it is what `running()` uses.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

# --- script actions -------------------------------------------------------------------------


@dataclass
class Reply:
    """A successful completion. Token counts default to whitespace word counts."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Status:
    """An error status with an OpenAI error body; `retry_after` adds a Retry-After header."""

    code: int
    message: str = "scripted error"
    retry_after: float | None = None


@dataclass
class Delay:
    """Wait `seconds`, then answer with `then` (or the default reply). The wait ends early when
    the client disconnects or the server stops, so timeouts never hold up shutdown."""

    seconds: float
    then: Reply | Status | Garbage | None = None


@dataclass
class Garbage:
    """A raw body as-is: non-JSON text, or JSON missing fields (e.g. '{"id": "x"}')."""

    body: str
    status: int = 200
    content_type: str = "application/json"


Action = Reply | Status | Delay | Garbage


@dataclass
class RecordedRequest:
    path: str
    body: Any
    headers: dict[str, str]  # lower-case names


# --- default behaviour and response shapes ---------------------------------------------------


def last_user_text(body: dict[str, Any]) -> str:
    """The prompt of a completions body, or the last user message of a chat body."""
    if "messages" not in body:
        return str(body.get("prompt", ""))
    users = [m.get("content", "") for m in body["messages"] if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def echo_reply(path: str, body: dict[str, Any]) -> Reply:
    """Default reply: deterministic, and shows which input the server saw."""
    return Reply(text=f"echo:{last_user_text(body)}")


@dataclass
class ScriptedOpenAI:
    """The scripted server's state and its FastAPI app (see the module docstring)."""

    models: list[str] = field(default_factory=lambda: ["scripted-base"])
    default: Callable[[str, dict[str, Any]], Reply] = echo_reply  # (path, body) -> Reply
    base_url: str | None = None  # set while `running()`

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._script: deque[Action] = deque()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._stopping = threading.Event()
        self.app = self._build_app()

    # --- test-side API --------------------------------------------------------------------

    def script(self, *actions: Action) -> None:
        """Queue actions; each completion request consumes one, in arrival order."""
        with self._lock:
            self._script.extend(actions)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the completion/models requests received so far."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """Scripted actions not yet consumed."""
        with self._lock:
            return len(self._script)

    @property
    def max_in_flight(self) -> int:
        """The most completion requests the server was handling at the same moment."""
        with self._lock:
            return self._max_in_flight

    def reset(self) -> None:
        """Forget the script, recorded requests and the in-flight maximum."""
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self._max_in_flight = self._in_flight

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve on a free local port; yields (and sets) `base_url`, ending in `/v1`."""
        self._stopping.clear()
        with serve_app(self.app) as root:
            try:
                self.base_url = f"{root}/v1"
                yield self.base_url
            finally:
                self._stopping.set()  # release pending Delays before uvicorn drains
                self.base_url = None

    # --- server side ----------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request) -> dict[str, Any]:
            self._record(request, None)
            return {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._complete(request)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._complete(request)

        return app

    def _record(self, request: Request, body: Any) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self._requests.append(RecordedRequest(request.url.path, body, headers))

    async def _complete(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self._record(request, body)
        with self._lock:
            action = self._script.popleft() if self._script else None
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            if isinstance(action, Delay):
                if not await self._wait(request, action.seconds):
                    return Response(status_code=499)  # nobody is listening any more
                action = action.then
            if not isinstance(body, dict):
                return _error(400, "request body is not a JSON object")
            return self._respond(request.url.path, body, action)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _wait(self, request: Request, seconds: float) -> bool:
        """Sleep in small steps; False if the client left or the server is stopping."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stopping.is_set() or await request.is_disconnected():
                return False
            await asyncio.sleep(min(left, 0.02))
        return True

    def _respond(
        self, path: str, body: dict[str, Any], action: Reply | Status | Garbage | None
    ) -> Response:
        if isinstance(action, Status):
            headers = {}
            if action.retry_after is not None:
                ra = action.retry_after
                headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            return _error(action.code, action.message, headers)
        if isinstance(action, Garbage):
            return Response(action.body, status_code=action.status, media_type=action.content_type)
        reply = action if isinstance(action, Reply) else self.default(path, body)
        return JSONResponse(completion_body(path, body, reply))


def completion_body(path: str, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """An OpenAI response body for `reply`, shaped for the endpoint that was called."""
    chat = path.endswith("/chat/completions")
    prompt_tokens = reply.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = len(last_user_text(body).split())
    completion_tokens = reply.completion_tokens
    if completion_tokens is None:
        completion_tokens = len(reply.text.split())
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": reply.text}}
    else:
        choice = {"index": 0, "text": reply.text}
    choice["finish_reason"] = reply.finish_reason
    return {
        "id": "scripted-1",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    err = {"message": message, "type": "scripted_error", "code": code}
    return JSONResponse({"error": err}, status_code=code, headers=headers)


# --- running an ASGI app for real -------------------------------------------------------------


@contextmanager
def serve_app(app: Any, host: str = "127.0.0.1", startup_timeout_s: float = 10.0) -> Iterator[str]:
    """Run `app` on uvicorn in a daemon thread; yields `http://host:port` once it accepts
    connections, and stops it on exit. The socket is bound here (port 0) and handed to
    uvicorn, so there is no window in which another process can take the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # explicit proto: asyncio then disables Nagle
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {startup_timeout_s}s")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()
