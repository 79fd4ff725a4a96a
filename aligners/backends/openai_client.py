"""The one client for OpenAI-compatible servers (vLLM, llama.cpp, OpenAI, our own proxy).

Both the `openai_http` backend (batch generation, with retries) and the proxy's upstream
(one client request, no retries) talk through it, so a response is parsed one way and a
failure is classified one way; each caller only decides what a failure means to *its* caller.

Plain httpx rather than the openai SDK: the SDK retries on its own schedule and hides status
codes, and both callers need to decide exactly what is retried and what fails at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

FailureKind = Literal["timeout", "unreachable", "connection", "status", "bad_response", "stream_error"]


class OpenAIServerError(Exception):
    """One failed exchange with the server, classified so each caller can map it to its own terms.

    `kind`: timeout (no answer within the time limit), unreachable (connection refused),
    connection (it broke), status (HTTP ≥ 400; `status`, `retry_after` set), bad_response (not
    the OpenAI shape), stream_error (an `error` event mid-stream). `detail` is the server's own
    words where it gave any.
    """

    def __init__(self, kind: FailureKind, url: str, detail: str, *, status: int | None = None,
                 retry_after: str | None = None):
        self.kind, self.url, self.detail = kind, url, detail
        self.status, self.retry_after = status, retry_after
        super().__init__(f"{url}: {detail}" if status is None else f"{url} answered HTTP {status}: {detail}")

    @property
    def retryable(self) -> bool:
        """Worth another attempt later: overload, server faults and network trouble."""
        if self.kind == "status":
            return self.status == 429 or (self.status or 0) >= 500
        return self.kind in ("timeout", "unreachable", "connection")


@dataclass
class Choice:
    text: str
    finish_reason: str = "stop"  # "stop" or "length"


@dataclass
class Completion:
    """An OpenAI response: its choices in index order and the response's token counts."""

    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0


def parse_completion(data: Any, chat: bool, url: str) -> Completion:
    """The choices of a /chat/completions or /completions body; a missing field names itself."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        raise OpenAIServerError("bad_response", url, f"response has no `choices`: {snippet(str(data))}")
    out = []
    for ch in sorted(choices, key=lambda c: c.get("index", 0)):
        text = (ch.get("message") or {}).get("content") if chat else ch.get("text")
        if not isinstance(text, str):
            where = "choices[].message.content" if chat else "choices[].text"
            raise OpenAIServerError("bad_response", url, f"response has no text in `{where}`: {snippet(str(data))}")
        out.append(Choice(text, "length" if ch.get("finish_reason") == "length" else "stop"))
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return Completion(out, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


class OpenAIClient:
    """A pooled async client for one server; keep-alive makes a hop cost about a millisecond.

    An httpx client is bound to the event loop that made it, so the pool is rebuilt when the
    running loop changes (the sync backend runs a fresh loop per call).
    """

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 60.0,
                 connections: int = 64):
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.connections = connections
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _pool(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
            self._client = httpx.AsyncClient(headers=self.headers, timeout=httpx.Timeout(self.timeout_s),
                                             limits=limits)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        """POST and decode the JSON object, within `timeout_s` in total."""
        url = self.base_url + path
        try:
            resp = await asyncio.wait_for(self._pool().post(url, json=body, headers=headers), self.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise self._timeout(url) from None
        except httpx.TransportError as exc:
            raise _transport_failure(url, exc) from None
        if resp.status_code >= 400:
            raise _status_failure(url, resp.status_code, resp.headers, resp.text, resp.reason_phrase)
        try:
            data = resp.json()
        except ValueError:
            raise OpenAIServerError("bad_response", url, f"answered HTTP {resp.status_code} with a body "
                                    f"that is not JSON: {snippet(resp.text)}") from None
        if not isinstance(data, dict):
            raise OpenAIServerError("bad_response", url, "answered with JSON that is not an object")
        return data

    async def stream(self, path: str, body: dict[str, Any], chat: bool,
                     headers: dict[str, str] | None = None) -> AsyncIterator[tuple[str, str | None]]:
        """POST with `stream: true`; yields (text piece, finish_reason or None) as they arrive.

        A server that ignores `stream` and answers JSON yields its whole text at once. Leaving
        the loop early closes the connection, which stops the server's generation."""
        url = self.base_url + path
        try:
            async with self._pool().stream("POST", url, json={**body, "stream": True}, headers=headers) as resp:
                if resp.status_code >= 400:
                    text = (await resp.aread()).decode("utf-8", "replace")
                    raise _status_failure(url, resp.status_code, resp.headers, text, resp.reason_phrase)
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    for choice in parse_completion(json.loads(await resp.aread()), chat, url).choices:
                        yield choice.text, choice.finish_reason
                    return
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    event = json.loads(payload)
                    if "error" in event:
                        raise OpenAIServerError("stream_error", url, error_text(event))
                    for ch in event.get("choices") or []:
                        piece = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                        yield piece or "", ch.get("finish_reason")
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise self._timeout(url) from None
        except httpx.TransportError as exc:
            raise _transport_failure(url, exc) from None
        except ValueError as exc:  # json
            raise OpenAIServerError("bad_response", url, f"sent a malformed stream event: {exc}") from None

    def _timeout(self, url: str) -> OpenAIServerError:
        return OpenAIServerError("timeout", url, f"no answer within {self.timeout_s:g} s")


def _transport_failure(url: str, exc: Exception) -> OpenAIServerError:
    kind = "unreachable" if isinstance(exc, httpx.ConnectError) else "connection"
    return OpenAIServerError(kind, url, f"{type(exc).__name__}: {exc}")


def _status_failure(url: str, status: int, headers: httpx.Headers, text: str, reason: str) -> OpenAIServerError:
    detail = error_text(text) if text.strip() else reason
    return OpenAIServerError("status", url, detail, status=status, retry_after=headers.get("retry-after"))


def error_text(body: str | dict[str, Any]) -> str:
    """The server's own words from an error body: OpenAI `{"error": {"message"}}`, older vLLM
    `{"message"}`, FastAPI `{"detail"}`, else the raw body."""
    data: Any = body
    if isinstance(body, str):
        try:
            data = json.loads(body)
        except ValueError:
            return snippet(body) or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    return snippet(json.dumps(data))


def snippet(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."
