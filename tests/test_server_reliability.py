"""The OpenAI-compatible server's guard rails, on a real uvicorn server, in passthrough mode
(no squad, so these tests need no trained artifacts): authentication, every class of malformed
request, upstream failures, admission (429), metrics, client disconnects, graceful shutdown.

Also home of the helpers the squad tests share: `aligners_server` and `SSEUpstream`, a real
streaming OpenAI-compatible upstream (the scripted one answers `stream: true` with plain JSON).
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai_scripted import Delay, Reply, Status, serve_app

from serve.app import build_app
from serve.pipeline import word_pieces
from serve.protocol import chat_chunk, completion_chunk, sse
from serve.server_config import ServerConfig

pytestmark = pytest.mark.timeout(120)

MODEL = "scripted-base"
KEY = "sk-test-right"
HI = [{"role": "user", "content": "hi"}]


# --- shared helpers ------------------------------------------------------------------------------


@contextmanager
def aligners_server(config: ServerConfig, squad=None) -> Iterator[tuple[str, FastAPI]]:
    """Our app on a real uvicorn server; yields (root URL, app)."""
    app = build_app(config, squad=squad)
    with serve_app(app) as root:
        yield root, app


def passthrough(upstream_url: str, **overrides) -> ServerConfig:
    return ServerConfig(upstream=upstream_url, upstream_model=MODEL, **overrides)


def client(root: str, key: str = "none", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{root}/v1", api_key=key, max_retries=0, **kw)


class SSEUpstream:
    """A streaming OpenAI-compatible server: answers `text` word by word, `delay` s apart.
    `finished`/`abandoned` count streams that ran to the end / were cut off by their client."""

    def __init__(self, text: str, delay: float = 0.0, fail_after: int | None = None):
        self.text, self.delay, self.fail_after = text, delay, fail_after
        self.finished = self.abandoned = 0
        self.bodies: list[dict] = []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._handler(chat=True))
        self.app.post("/v1/completions")(self._handler(chat=False))

    def _handler(self, chat: bool):
        async def handle(request: Request):
            body = await request.json()
            self.bodies.append(body)
            if not body.get("stream"):
                choice = {"index": 0, "finish_reason": "stop",
                          **({"message": {"role": "assistant", "content": self.text}} if chat else {"text": self.text})}
                return JSONResponse({"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})

            def event(piece, finish=None):
                if chat:
                    return sse(chat_chunk("up", 0, body["model"], 0, {} if piece is None else {"content": piece}, finish))
                return sse(completion_chunk("up", 0, body["model"], 0, piece or "", finish))

            async def events():
                try:
                    if chat:
                        yield sse(chat_chunk("up", 0, body["model"], 0, {"role": "assistant", "content": ""}))
                    for i, piece in enumerate(word_pieces(self.text)):
                        if i == self.fail_after:
                            raise RuntimeError("upstream died mid-stream")  # uvicorn drops the connection
                        await asyncio.sleep(self.delay)
                        yield event(piece)
                    yield event(None, "stop")
                    yield sse("[DONE]")
                    self.finished += 1
                except BaseException:
                    self.abandoned += 1
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")

        return handle

    @contextmanager
    def running(self) -> Iterator[str]:
        with serve_app(self.app) as root:
            yield f"{root}/v1"


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def metric(root: str, line_start: str, headers: dict | None = None) -> float:
    """The value of the first /metrics sample line starting with `line_start` (0 if absent)."""
    text = httpx.get(f"{root}/metrics", headers=headers or {}).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- authentication --------------------------------------------------------------------------------


def test_api_keys(scripted_openai):
    with aligners_server(passthrough(scripted_openai.base_url, api_keys=[KEY, "sk-other"])) as (root, _):
        missing = httpx.post(f"{root}/v1/chat/completions", json={"model": MODEL, "messages": HI})
        wrong = httpx.post(f"{root}/v1/chat/completions", json={"model": MODEL, "messages": HI},
                           headers={"Authorization": "Bearer sk-test-wrong"})
        assert missing.status_code == wrong.status_code == 401
        assert missing.json() == wrong.json()  # the same words whatever was sent
        assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            client(root, "sk-test-wrong").chat.completions.create(model=MODEL, messages=HI)
        out = client(root, KEY).chat.completions.create(model=MODEL, messages=HI)
        assert out.choices[0].message.content == "echo:hi"
        assert client(root, "sk-other").models.list().data[0].id == MODEL
        assert httpx.get(f"{root}/health").status_code == 200  # open for load balancers
        assert httpx.get(f"{root}/metrics").status_code == 401
        assert httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert "authorization" not in scripted_openai.requests[-1].headers  # our key is not forwarded
    with aligners_server(passthrough(scripted_openai.base_url, api_keys=[KEY], metrics_open=True)) as (root, _):
        assert httpx.get(f"{root}/metrics").status_code == 200


def test_a_key_that_cannot_be_resolved_stops_start_up(monkeypatch):
    from aligners.config import ConfigError, validate

    monkeypatch.delenv("ALIGNERS_UNSET_KEY", raising=False)
    monkeypatch.setenv("ALIGNERS_EMPTY_KEY", "")
    for keys in (["env:ALIGNERS_UNSET_KEY"], [KEY, "env:ALIGNERS_EMPTY_KEY"], [""]):
        with pytest.raises(ConfigError, match="not set or empty.*refuses to start"):
            validate(ServerConfig, {"upstream": "http://127.0.0.1:9/v1", "upstream_model": MODEL, "api_keys": keys})
    with pytest.raises(ConfigError, match="env:ALIGNERS_UNSET_KEY: not set"):
        validate(ServerConfig, {"upstream": "http://127.0.0.1:9/v1", "upstream_model": MODEL,
                                "upstream_key": "env:ALIGNERS_UNSET_KEY"})
    monkeypatch.setenv("ALIGNERS_UNSET_KEY", "sk-now-set")
    assert passthrough("http://127.0.0.1:9/v1", api_keys=["env:ALIGNERS_UNSET_KEY"]).resolved_api_keys() == ["sk-now-set"]


def test_upstream_key_configured_or_passed_through(scripted_openai):
    with aligners_server(passthrough(scripted_openai.base_url, upstream_key="sk-upstream")) as (root, _):
        client(root, "whatever").chat.completions.create(model=MODEL, messages=HI)
        assert scripted_openai.requests[-1].headers["authorization"] == "Bearer sk-upstream"
    with aligners_server(passthrough(scripted_openai.base_url, upstream_key="passthrough")) as (root, _):
        client(root, "sk-users-own").chat.completions.create(model=MODEL, messages=HI)
        assert scripted_openai.requests[-1].headers["authorization"] == "Bearer sk-users-own"
        scripted_openai.script(Status(401, "bad key"))
        with pytest.raises(openai.AuthenticationError, match="upstream refused the forwarded key: bad key"):
            client(root, "sk-users-own").chat.completions.create(model=MODEL, messages=HI)


# --- malformed requests ------------------------------------------------------------------------------


def chat_body(**kw) -> dict:
    return {"model": MODEL, "messages": HI, **kw}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


BAD_REQUESTS = [
    # (id, raw body, status, param, words in the message)
    ("bad-json", b'{"model": "scripted-base", "messages": [', 400, None, "not valid JSON"),
    ("not-an-object", b"[1, 2]", 400, None, "must be a JSON object"),
    ("wrong-type-content", chat_body(messages=[{"role": "user", "content": 5}]), 400, "messages.0.content", "valid string"),
    ("wrong-type-stream", chat_body(stream="yes"), 400, "stream", "valid boolean"),
    ("wrong-type-temperature", chat_body(temperature="hot"), 400, "temperature", "valid number"),
    ("bad-role", chat_body(messages=[{"role": "robot", "content": "x"}]), 400, "messages.0.role", "robot"),
    ("missing-messages", {"model": MODEL}, 400, "messages", "missing required parameter"),
    ("missing-model", {"messages": HI}, 400, "model", "missing required parameter"),
    ("empty-messages", chat_body(messages=[]), 400, "messages", "at least one message"),
    ("unknown-model", chat_body(model="gpt-17"), 404, "model", "`gpt-17` does not exist"),
    ("max-tokens-over-limit", chat_body(max_tokens=100_000), 400, "max_tokens", "exceeds this server's limit of 256"),
    ("n-over-limit", chat_body(n=50), 400, "n", "exceeds this server's limit"),
    ("unsupported-logprobs", chat_body(logprobs=True), 400, "logprobs", "not supported"),
    ("unsupported-tools", chat_body(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools", "not supported"),
    ("unknown-param", chat_body(frobnicate=1), 400, "frobnicate", "unrecognized request parameter"),
    ("image-part", chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), 400,
     "messages.0.content", "only text content"),
    ("live-with-n", chat_body(n=2, stream=True, aligners={"stream_mode": "live"}), 400, "aligners.stream_mode", "single choice"),
    ("seed-over-uint64", chat_body(seed=2**64), 400, "seed", "less than or equal to"),
    ("seed-under-int64", chat_body(seed=-(2**63) - 1), 400, "seed", "greater than or equal to"),
    ("too-many-stops", chat_body(stop=["a", "b", "c", "d", "e"]), 400, "stop", "at most 4"),
    ("huge-stop", chat_body(stop="x" * 10_000), 400, "stop", "at most 64"),
    ("lone-surrogate", b'{"model": "scripted-base", "messages": [{"role": "user", "content": "hi \\ud800"}]}', 400,
     "messages.0.content", "lone surrogate"),
    ("lone-surrogate-in-extension", chat_body(aligners={"details": True, "\ud800": 1}), 400, "aligners",
     "not valid Unicode"),
    ("deep-json", chat_body(aligners=nested(100)), 400, "aligners" + ".x" * 31, "deeper than"),
    ("very-deep-json", b'{"model": "m", "aligners": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None, "deeper than"),
    ("bad-extension", chat_body(aligners={"stream_mode": "fast"}), 400, "aligners.stream_mode", "buffered"),
]


def test_every_malformed_request_gets_a_named_4xx_and_the_server_stays_up(scripted_openai):
    cfg = passthrough(scripted_openai.base_url, max_tokens_limit=256, max_body_bytes=400_000)
    with aligners_server(cfg) as (root, _):
        with httpx.Client(base_url=root) as http:
            for name, body, status, param, words in BAD_REQUESTS:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
                err = r.json()["error"]
                assert (r.status_code, err["param"]) == (status, param), (name, r.text)
                assert words in err["message"], (name, err["message"])
                assert err["type"] == "invalid_request_error" and err["code"], name
            # completions: token-id prompts and echo are refused too
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": [[1, 2, 3]]})
            assert r.status_code == 400 and "token-id prompts" in r.json()["error"]["message"]
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "echo": True})
            assert (r.status_code, r.json()["error"]["param"]) == (400, "echo")
            # oversize: declared by Content-Length, and chunked without one
            r = http.post("/v1/chat/completions", content=b"x" * 500_000)
            assert r.status_code == 413 and "400000 bytes" in r.json()["error"]["message"]
            r = http.post("/v1/chat/completions", content=iter([b"{", b" " * 300_000, b" " * 300_000, b"}"]))
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
            r = http.get("/v1/nowhere")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert http.get("/health").json()["status"] == "ok"
            # a lone surrogate is refused by name on every endpoint
            for path, body in [("/v1/completions", {"model": MODEL, "prompt": "\ud800"}),
                               ("/v1/aligners/correct", {"prompt": "q", "answer": ["ok", "\ud800"]}),
                               ("/v1/aligners/inspect", {"prompt": "\ud800", "answer": "a"})]:
                r = http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
                assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_unicode", (path, r.text)
            assert r.json()["error"]["param"] == "prompt"
            ok = http.post("/v1/chat/completions", json=chat_body(max_tokens=256, stop="\n", seed=2**64 - 1, temperature=0.5, top_p=0.9,
                                                                        repetition_penalty=1.1))
            assert ok.status_code == 200, ok.text
        sent = scripted_openai.requests[-1].body
        assert {k: sent[k] for k in ("max_tokens", "stop", "seed", "temperature", "top_p", "repetition_penalty")} == {
            "max_tokens": 256, "stop": ["\n"], "seed": 2**64 - 1, "temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.1}
        # the official client surfaces the message
        with pytest.raises(openai.BadRequestError, match="`logprobs` is not supported"):
            client(root).chat.completions.create(model=MODEL, messages=HI, logprobs=True)
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client(root).chat.completions.create(model="nope", messages=HI)


# --- upstream failures ---------------------------------------------------------------------------------


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/v1"


def test_upstream_down_is_a_quick_502():
    with aligners_server(passthrough(closed_port_url())) as (root, _):
        t0 = time.monotonic()
        with pytest.raises(openai.InternalServerError) as err:
            client(root).chat.completions.create(model=MODEL, messages=HI)
        assert time.monotonic() - t0 < 3
        assert err.value.status_code == 502 and "unreachable" in str(err.value)
        for mode in ("buffered", "live"):  # a stream that cannot start is an HTTP error too
            with pytest.raises(openai.InternalServerError, match="unreachable"):
                client(root).chat.completions.create(model=MODEL, messages=HI, stream=True,
                                                     extra_body={"aligners": {"stream_mode": mode}})
        assert httpx.get(f"{root}/health").status_code == 200


def test_upstream_slow_is_a_504_within_the_timeout(scripted_openai):
    scripted_openai.script(Delay(10))
    with aligners_server(passthrough(scripted_openai.base_url, request_timeout_s=0.5)) as (root, _):
        t0 = time.monotonic()
        r = httpx.post(f"{root}/v1/chat/completions", json=chat_body(), timeout=10)
        assert r.status_code == 504 and time.monotonic() - t0 < 3
        assert "did not answer within 0.5 s" in r.json()["error"]["message"]
        scripted_openai.script(Delay(10))
        r = httpx.post(f"{root}/v1/chat/completions", json=chat_body(stream=True, aligners={"stream_mode": "live"}),
                       timeout=10)
        assert r.status_code == 504


def test_upstream_errors_map_to_clear_statuses(scripted_openai):
    scripted_openai.script(Status(500, "engine exploded"), Status(400, "prompt too long"),
                           Status(429, "slow down", retry_after=3))
    with aligners_server(passthrough(scripted_openai.base_url)) as (root, _), httpx.Client(base_url=root) as http:
        r = http.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 502 and "HTTP 500: engine exploded" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 400 and "upstream rejected the request: prompt too long" in r.text
        r = http.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 429 and r.headers["retry-after"] == "3"


# --- admission -------------------------------------------------------------------------------------------


def test_flood_gets_429_with_retry_after_and_the_rest_complete(scripted_openai):
    scripted_openai.script(*[Delay(0.6) for _ in range(10)])
    cfg = passthrough(scripted_openai.base_url, max_concurrency=1, max_queue=1)

    async def flood(root):
        async with httpx.AsyncClient(base_url=root, timeout=20) as http:
            return await asyncio.gather(*[http.post("/v1/chat/completions", json=chat_body()) for _ in range(10)])

    with aligners_server(cfg) as (root, _):
        replies = asyncio.run(flood(root))
        codes = sorted(r.status_code for r in replies)
        assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
        for r in replies:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "server_busy"
        assert scripted_openai.max_in_flight == 1  # never more than max_concurrency upstream
        assert httpx.get(f"{root}/health").json()["status"] == "ok"
        assert httpx.post(f"{root}/v1/chat/completions", json=chat_body()).status_code == 200
        assert metric(root, 'aligners_requests_total{endpoint="chat",status="429"}') == codes.count(429)


def raw_upload(root: str, body: bytes, declared: int) -> socket.socket:
    """A client that sends headers declaring `declared` body bytes, then only `body`."""
    host, port = root.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


def test_slow_or_short_uploads_do_not_hold_slots_and_get_408(scripted_openai):
    cfg = passthrough(scripted_openai.base_url, max_concurrency=1, max_queue=0, body_timeout_s=1.5)
    with aligners_server(cfg) as (root, _):
        stalled = [raw_upload(root, b'{"model": "scripted-base", ', declared=200) for _ in range(4)]
        t0 = time.monotonic()
        for _ in range(3):  # one slot, no queue: any held slot would make these 429
            assert httpx.post(f"{root}/v1/chat/completions", json=chat_body()).status_code == 200
        assert time.monotonic() - t0 < 1.0
        for sock in stalled:  # a body shorter than its Content-Length gets a 408, not a hang
            sock.settimeout(5)
            reply = b"".join(iter(functools.partial(sock.recv, 4096), b"")).decode()  # until it closes
            assert reply.startswith("HTTP/1.1 408") and "body_timeout" in reply, reply
            sock.close()
        assert metric(root, 'aligners_requests_total{endpoint="chat",status="408"}') == 4


def test_client_leaving_during_upload_is_a_499_not_a_500(scripted_openai):
    with aligners_server(passthrough(scripted_openai.base_url)) as (root, _):
        raw_upload(root, b'{"model": ', declared=500).close()
        wait_for(lambda: metric(root, 'aligners_requests_total{endpoint="chat",status="499"}') == 1,
                 what="the 499 to be counted")
        assert metric(root, 'aligners_request_errors_total{type="client_disconnected"}') == 1
        assert metric(root, 'aligners_requests_total{endpoint="chat",status="500"}') == 0
        assert httpx.post(f"{root}/v1/chat/completions", json=chat_body()).status_code == 200


def test_retry_after_counts_the_requests_still_running(scripted_openai):
    scripted_openai.script(Delay(4))
    cfg = passthrough(scripted_openai.base_url, max_concurrency=1, max_queue=0)
    with aligners_server(cfg) as (root, _):
        slow = threading.Thread(target=httpx.post, args=(f"{root}/v1/chat/completions",),
                                kwargs={"json": chat_body(), "timeout": 10})
        slow.start()
        wait_for(lambda: scripted_openai.max_in_flight == 1, what="the slow request to start")
        time.sleep(2.2)
        r = httpx.post(f"{root}/v1/chat/completions", json=chat_body())
        # nothing has finished yet, but the one in flight is already 2+ s old
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 3, r.headers
        slow.join()


# --- metrics ------------------------------------------------------------------------------------------------


def test_metrics_count_requests_errors_and_stages(scripted_openai):
    with aligners_server(passthrough(scripted_openai.base_url)) as (root, _):
        c = client(root)
        for _ in range(3):
            c.chat.completions.create(model=MODEL, messages=HI)
        c.completions.create(model=MODEL, prompt="x")
        httpx.post(f"{root}/v1/chat/completions", content=b"{")
        text = httpx.get(f"{root}/metrics").text
        assert 'aligners_requests_total{endpoint="chat",status="200"} 3.0' in text
        assert 'aligners_requests_total{endpoint="completions",status="200"} 1.0' in text
        assert 'aligners_requests_total{endpoint="chat",status="400"} 1.0' in text
        assert 'aligners_request_errors_total{type="invalid_json"} 1.0' in text
        assert 'aligners_stage_seconds_count{stage="generate"} 4.0' in text
        assert 'aligners_stage_seconds_count{stage="total"} 5.0' in text
        assert "aligners_in_flight 0.0" in text


def test_two_apps_in_one_process_keep_separate_metrics(scripted_openai):
    with aligners_server(passthrough(scripted_openai.base_url)) as (a, _), \
         aligners_server(passthrough(scripted_openai.base_url)) as (b, _):
        client(a).chat.completions.create(model=MODEL, messages=HI)
        assert metric(a, 'aligners_requests_total{endpoint="chat",status="200"}') == 1
        assert metric(b, 'aligners_requests_total{endpoint="chat",status="200"}') == 0


# --- streaming through, disconnects, shutdown ------------------------------------------------------------


def test_live_stream_forwards_upstream_tokens_as_they_come():
    text = "one two three four five"
    up = SSEUpstream(text, delay=0.15)
    with up.running() as url, aligners_server(passthrough(url)) as (root, _):
        arrivals, deltas, final = [], [], None
        stream = client(root).chat.completions.create(
            model=MODEL, messages=HI, stream=True, extra_body={"aligners": {"stream_mode": "live"}})
        for chunk in stream:
            arrivals.append(time.monotonic())
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                final = chunk
        assert "".join(deltas) == text and len(deltas) == 5
        assert arrivals[-1] - arrivals[1] > 0.4  # spread out: forwarded, not buffered
        assert final.aligners["stream_mode"] == "live" and final.aligners["squad"] is False
        assert up.bodies[-1]["stream"] is True and up.finished == 1
        # completions stream too
        pieces_ = [c.choices[0].text for c in client(root).completions.create(
            model=MODEL, prompt="p", stream=True, extra_body={"aligners": {"stream_mode": "live"}}) if c.choices]
        assert "".join(pieces_) == text


def test_upstream_failing_mid_stream_ends_the_stream_with_an_error_event():
    up = SSEUpstream("one two three four", fail_after=2)
    with up.running() as url, aligners_server(passthrough(url)) as (root, _):
        body = chat_body(stream=True, aligners={"stream_mode": "live"})
        with httpx.stream("POST", f"{root}/v1/chat/completions", json=body, timeout=10) as r:
            assert r.status_code == 200
            events = [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
                      for line in r.iter_lines() if line]
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "one two "
        assert events[-2]["error"]["code"] == "upstream_error" and "connection to upstream" in events[-2]["error"]["message"]
        assert events[-1] == "[DONE]"
        assert httpx.get(f"{root}/health").status_code == 200


def test_client_disconnect_mid_stream_stops_the_upstream_and_the_server_carries_on():
    up = SSEUpstream(" ".join(f"w{i}" for i in range(200)), delay=0.05)
    with up.running() as url, aligners_server(passthrough(url)) as (root, _):
        body = chat_body(stream=True, aligners={"stream_mode": "live"})
        with httpx.Client(timeout=10) as http, http.stream("POST", f"{root}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any("w1" in line for line in got)
        # leaving the block closed the connection mid-stream
        wait_for(lambda: up.abandoned == 1, what="the upstream stream to be cut off")
        assert up.finished == 0
        assert client(root).chat.completions.create(model=MODEL, messages=HI).choices[0].message.content.startswith("w0")


def test_client_disconnect_cancels_a_waiting_request(scripted_openai):
    scripted_openai.script(Delay(5))
    with aligners_server(passthrough(scripted_openai.base_url)) as (root, _):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{root}/v1/chat/completions", json=chat_body(), timeout=0.5)
        wait_for(lambda: metric(root, 'aligners_request_errors_total{type="client_disconnected"}') == 1,
                 what="the disconnect to be noticed")
        assert metric(root, 'aligners_requests_total{endpoint="chat",status="499"}') == 1
        assert metric(root, "aligners_in_flight") == 0  # the slot was given back
        assert client(root).chat.completions.create(model=MODEL, messages=HI).choices[0].message.content == "echo:hi"


def test_graceful_shutdown_finishes_the_request_in_flight(scripted_openai):
    scripted_openai.script(Delay(1.0, Reply("finished after shutdown began")))
    server = aligners_server(passthrough(scripted_openai.base_url))
    root, _ = server.__enter__()
    result: dict = {}

    def call():
        try:
            result["reply"] = httpx.post(f"{root}/v1/chat/completions", json=chat_body(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: len(scripted_openai.requests) == 1, what="the request to reach the upstream")
    server.__exit__(None, None, None)  # uvicorn's graceful shutdown; returns once it has stopped
    thread.join(10)
    assert "error" not in result, result
    assert result["reply"].status_code == 200
    assert result["reply"].json()["choices"][0]["message"]["content"] == "finished after shutdown began"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{root}/health", timeout=2)


# --- the CLI ---------------------------------------------------------------------------------------------


def test_serve_command_merges_the_recipe_with_flags(monkeypatch):
    from typer.testing import CliRunner

    import serve.app
    from aligners.cli import app

    seen = {}
    monkeypatch.setattr(serve.app, "serve", lambda cfg, config_file=None: seen.update(cfg=cfg, file=config_file))
    args = ["serve", "--config", "configs/serve/default.yaml", "--upstream", "http://127.0.0.1:9/v1",
            "--upstream-model", "m", "--api-key", "k1", "--api-key", "env:ALIGNERS_TEST_KEY", "--port", "8123"]
    monkeypatch.setenv("ALIGNERS_TEST_KEY", "k2")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.squad, cfg.upstream, cfg.upstream_model, cfg.port) == (
        "configs/squad/default.yaml", "http://127.0.0.1:9/v1", "m", 8123)
    assert cfg.resolved_api_keys() == ["k1", "k2"] and cfg.max_queue == 16 and seen["file"] == "configs/serve/default.yaml"
    result = CliRunner().invoke(app, [*args, "--no-squad"])
    assert result.exit_code == 0 and seen["cfg"].squad is None
    result = CliRunner().invoke(app, ["serve", "--no-squad"])
    assert result.exit_code != 0 and "nothing to serve" in str(result.exception)
