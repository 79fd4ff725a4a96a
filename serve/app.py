"""The HTTP layer of the OpenAI-compatible server: a thin FastAPI router over `AlignersServing`.

    app = build_app(ServerConfig(squad="configs/squad/default.yaml"))     # uvicorn serve.app:...
    app = build_app(config, squad=my_squad)                               # a ready Squad (tests)

Routes: POST /v1/chat/completions, /v1/completions, /v1/aligners/correct, /v1/aligners/inspect;
GET /v1/models, /health (always open), /metrics (Prometheus; behind the key unless metrics_open);
POST /admin/reload (only with `admin_keys`, and only with one of them; SIGHUP does the same).

One pure-ASGI middleware (`Gate`) does what every route needs, in this order:
1. authentication: `Authorization: Bearer <key>` against `api_keys`, compared in constant time
   (SHA-256 digests, every key compared); one 401 message whatever was sent;
2. body: a `Content-Length` above `max_body_bytes` is refused at once, and a chunked body is
   counted as it arrives — 413 either way; a work request's body is read whole before anything
   else, within `body_timeout_s` (408 after it; a client that leaves meanwhile is a 499);
3. admission: at most `max_concurrency` work requests run and `max_queue` wait; the next gets
   429 with `Retry-After` (the queue ahead at the pace of recent requests, or of the oldest
   running one if slower). A slot is taken only once the body is in, and a streamed response
   holds it until the stream ends;
4. metrics: requests by endpoint and status, total latency, and a catch-all that turns an
   unexpected exception into an OpenAI-style 500 instead of a dropped connection.
Every error body is OpenAI's `{"error": {"message", "type", "param", "code"}}`.

A non-streaming request whose client disconnects is cancelled (`until_disconnected`): waiting
for the squad or the upstream stops, and a squad run not yet started is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.metrics import ServerMetrics
from serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ReloadRequest,
    ServingError,
    SquadRequest,
    parse_body,
)
from serve.server_config import ServerConfig
from serve.serving import AlignersServing, RequestContext, Served, Streamed

log = logging.getLogger("aligners.serve")

# fixed endpoint labels (unknown paths are "other", so scanners cannot blow up label cardinality)
WORK = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/aligners/correct": "correct",
    "/v1/aligners/inspect": "inspect",
}
LIGHT = {"/v1/models": "models", "/health": "health", "/metrics": "metrics", "/admin/reload": "reload"}
AUTH_MESSAGE = "Invalid or missing API key: send `Authorization: Bearer <key>`."

T = TypeVar("T")


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected before the answer was ready; nothing is sent."""


class BodyTimeout(Exception):
    pass


def error_response(err: ServingError, metrics: ServerMetrics | None = None) -> JSONResponse:
    if metrics is not None:
        metrics.error(err.code or err.type)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


# --- admission ------------------------------------------------------------------------------------


class Admission:
    """`max_concurrency` slots plus a bounded wait queue; beyond that, callers are refused."""

    def __init__(self, max_concurrency: int, max_queue: int, metrics: ServerMetrics):
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.metrics = metrics
        self.waiting = 0
        self._sem = asyncio.Semaphore(max_concurrency)
        self._running: list[float] = []  # start times of the admitted requests
        self._recent: deque[float] = deque(maxlen=20)  # durations of the last finished ones

    @property
    def running(self) -> int:
        return len(self._running)

    async def acquire(self) -> float | None:
        """A ticket (the start time) to pass to `release`, or None when the queue is full."""
        if self.running >= self.max_concurrency and self.waiting >= self.max_queue:
            return None
        self.waiting += 1
        self.metrics.queued.inc()
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queued.dec()
        ticket = time.monotonic()
        self._running.append(ticket)
        self.metrics.in_flight.inc()
        return ticket

    def release(self, ticket: float) -> None:
        self._running.remove(ticket)
        self._recent.append(time.monotonic() - ticket)
        self.metrics.in_flight.dec()
        self._sem.release()

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead drained at the pace of a request,
        which is the median of the recent ones or the age of the oldest running one, whichever
        is longer (so slow requests in flight count before any of them has finished)."""
        recent = sorted(self._recent)
        per_request = recent[len(recent) // 2] if recent else 1.0
        if self._running:
            per_request = max(per_request, time.monotonic() - min(self._running))
        return max(1, math.ceil(per_request * (self.waiting + 1) / self.max_concurrency))


# --- the gate middleware ------------------------------------------------------------------------------


class Gate:
    """Auth, body size, admission, metrics and last-resort errors for every HTTP request."""

    def __init__(self, app: Any, config: ServerConfig, metrics: ServerMetrics, admission: Admission):
        self.app = app
        self.config = config
        self.metrics = metrics
        self.admission = admission
        self._keys = [hashlib.sha256(k.encode()).digest() for k in config.resolved_api_keys()]
        self._admin_keys = [hashlib.sha256(k.encode()).digest() for k in config.resolved_admin_keys()]

    def _authorized(self, path: str, headers: dict[bytes, bytes]) -> bool:
        if path.startswith("/admin/"):  # admin keys only, never open (no admin keys: 404 below)
            return not self._admin_keys or self._key_in(self._admin_keys, headers)
        if not self._keys or path == "/health" or (path == "/metrics" and self.config.metrics_open):
            return True
        return self._key_in(self._keys, headers)

    @staticmethod
    def _key_in(keys: list[bytes], headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        token = value[7:].strip() if value[:7].lower() == b"bearer " else b""
        digest = hashlib.sha256(token).digest()
        ok = False
        for key in keys:  # no early exit: the time taken does not depend on which key matched
            ok |= hmac.compare_digest(digest, key)
        return ok and bool(token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"]
        endpoint = WORK.get(path) or LIGHT.get(path) or "other"
        work = path in WORK and scope["method"] == "POST"
        status = [0]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def reply(err: ServingError) -> None:
            await error_response(err, self.metrics)(scope, receive, send_status)

        ticket = None
        try:
            headers = dict(scope["headers"])
            if not self._authorized(path, headers):
                await reply(ServingError(401, AUTH_MESSAGE, code="invalid_api_key",
                                         headers={"WWW-Authenticate": "Bearer"}))
                return
            limit = self.config.max_body_bytes
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await reply(_too_large(limit))
                return
            if not work:
                await self.app(scope, _counted(receive, limit), send_status)
                return
            # the whole body first, then a slot: a slow upload must not hold one
            body = await self._read_body(receive)
            ticket = await self.admission.acquire()
            if ticket is None:
                retry = str(self.admission.retry_after())
                await reply(ServingError(
                    429, f"server busy: {self.config.max_concurrency} requests running and "
                    f"{self.config.max_queue} waiting; retry after {retry} s",
                    type="rate_limit_error", code="server_busy", headers={"Retry-After": retry}))
                return
            await self.app(scope, _replay(body, receive), send_status)
        except BodyTooLarge:
            if not status[0]:
                await reply(_too_large(self.config.max_body_bytes))
        except BodyTimeout:
            await reply(ServingError(
                408, f"the request body did not arrive within {self.config.body_timeout_s:g} s "
                "(body_timeout_s): send it whole, with a correct Content-Length",
                code="body_timeout", headers={"Connection": "close"}))
        except ClientGone:
            status[0] = 499  # nginx's "client closed request"; nothing can be sent
            self.metrics.error("client_disconnected")
        except Exception as exc:  # the server stays up and the client gets a readable 500
            log.exception("unhandled error on %s", path)
            if not status[0]:
                await reply(ServingError(500, f"internal error ({type(exc).__name__}); the server log has "
                                         "the details", type="internal_error", code="internal_error"))
            else:
                self.metrics.error("internal_error")
        finally:
            if ticket is not None:
                self.admission.release(ticket)
                self.metrics.observe("total", time.perf_counter() - t0)
            self.metrics.request(endpoint, status[0] or 499)

    async def _read_body(self, receive) -> bytes:
        """The whole request body within `body_timeout_s` and `max_body_bytes`; a client that
        leaves while sending is ClientGone (499), one that stalls or sends less than its
        Content-Length is BodyTimeout (408)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyTimeout() from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.config.max_body_bytes:
                raise BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """An ASGI receive that hands the app the body already read, then the client's own
    messages (so a disconnect is still seen)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _counted(receive, limit: int):
    """An ASGI receive that raises BodyTooLarge once more than `limit` bytes arrived."""
    received = 0

    async def counted():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge()
        return message

    return counted


def _too_large(limit: int) -> ServingError:
    return ServingError(413, f"request body exceeds this server's limit of {limit} bytes (max_body_bytes)",
                        code="request_too_large")


# --- routes -----------------------------------------------------------------------------------------


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (then raises ClientGone)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone()


def _render(result: Served | Streamed) -> Response:
    if isinstance(result, Streamed):
        headers = {**result.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(result.events, media_type="text/event-stream", headers=headers)
    return Response(result.body.model_dump_json(exclude_none=True), media_type="application/json",
                    headers=result.headers)


def _context(request: Request) -> RequestContext:
    return RequestContext(authorization=request.headers.get("authorization"),
                          policy=request.headers.get("x-aligners-policy"), disconnected=request.is_disconnected)


def build_app(config: ServerConfig, *, squad=None, serving: AlignersServing | None = None,
              config_file: Path | str | None = None) -> FastAPI:
    """The app for `config`. `squad` injects a ready Squad (else `config.squad` is loaded;
    `squad: null` in the config = passthrough proxy); `serving` injects the whole serving layer."""
    metrics = serving.metrics if serving is not None else ServerMetrics()
    if serving is None:
        recipe = None
        if squad is None and config.squad is not None:
            from serve.pipeline import Squad

            recipe = config.squad_path(config_file)
            squad = Squad.from_config(recipe)
        serving = AlignersServing(config, squad, metrics, recipe=recipe)

    async def reload_on_sighup() -> None:
        try:
            log.info("SIGHUP: %s", await serving.reload(None))
        except ServingError as exc:
            log.error("SIGHUP: %s", exc.message)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(reload_on_sighup()))
        yield
        await serving.aclose()  # the pooled upstream connections

    app = FastAPI(title="aligners", summary="OpenAI-compatible API whose answers are corrected by a squad",
                  docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.serving = serving
    app.state.metrics = metrics
    app.state.admission = Admission(config.max_concurrency, config.max_queue, metrics)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc, metrics)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return error_response(ServingError(exc.status_code, msg, code="not_found" if exc.status_code == 404
                                           else "method_not_allowed"), metrics)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = parse_body(ChatCompletionRequest, await request.body(), config.max_json_depth)
        return _render(await until_disconnected(request, serving.chat(req, _context(request))))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse_body(CompletionRequest, await request.body(), config.max_json_depth)
        return _render(await until_disconnected(request, serving.completion(req, _context(request))))

    @app.post("/v1/aligners/correct")
    async def correct(request: Request) -> Response:
        req = parse_body(SquadRequest, await request.body(), config.max_json_depth)
        return _render(await until_disconnected(request, serving.correct(req)))

    @app.post("/v1/aligners/inspect")
    async def inspect(request: Request) -> Response:
        req = parse_body(SquadRequest, await request.body(), config.max_json_depth)
        return _render(await until_disconnected(request, serving.inspect(req)))

    @app.post("/admin/reload")
    async def reload(request: Request) -> Response:
        if not config.admin_keys:
            raise ServingError(404, "the admin endpoints are off: give the server admin_keys to use them",
                               code="not_found")
        body = await request.body()
        req = parse_body(ReloadRequest, body or b"{}", config.max_json_depth)
        return JSONResponse(await serving.reload(req.squad))

    @app.get("/v1/models")
    async def models() -> Response:
        return Response(serving.models().model_dump_json(), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return serving.health()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(Gate, config=config, metrics=metrics, admission=app.state.admission)
    return app


def serve(config: ServerConfig, *, config_file: Path | str | None = None, squad=None) -> None:
    """Run the app on uvicorn until SIGINT/SIGTERM; in-flight requests get `graceful_shutdown_s`."""
    import uvicorn

    app = build_app(config, squad=squad, config_file=config_file)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=config.graceful_shutdown_s)
