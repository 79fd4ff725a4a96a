"""Generation through any OpenAI-compatible HTTP server (vLLM, llama.cpp, OpenAI, our proxy).

Plain httpx rather than the openai SDK: the SDK retries on its own schedule and hides status
codes, and we need to decide exactly what is retried (429, 5xx, connection errors, timeouts)
and what fails at once (other 4xx, malformed bodies) so error messages stay precise.
LoRA adapters are addressed the way `vllm serve --lora-modules name=path` exposes them: each
adapter is a served model name, so routing is just the `model` field of the request body.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from aligners.backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Generation,
    GenerationRequest,
    register_backend,
)
from aligners.config import OpenAIHTTPBackendConfig

MAX_RETRY_AFTER_S = 30.0  # a server asking for longer is better reported than waited on


@register_backend("openai_http")
class OpenAIHTTPBackend(Backend):
    """Concurrent, retrying client for /chat/completions and /completions."""

    name = "openai_http"

    def __init__(self, cfg: OpenAIHTTPBackendConfig):
        self.cfg = cfg
        self._base_url = cfg.base_url.rstrip("/")
        self._served = dict(cfg.adapters)
        key = cfg.api_key or os.environ.get("OPENAI_API_KEY")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    # --- protocol ------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Sync entry point; from inside a running loop it uses a fresh thread, because
        `asyncio.run` cannot nest and blocking that loop on itself would deadlock."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai_http") as pool:
            return pool.submit(asyncio.run, self.agenerate(requests)).result()

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """All requests at once, at most `cfg.concurrency` in flight; results in input order.

        The client lives for one call because an httpx.AsyncClient is bound to the event loop
        that made it, and `generate` makes a new loop each time."""
        calls = [self._call(r) for r in requests]  # bad adapter names fail before any HTTP
        if not calls:
            return []
        limits = httpx.Limits(
            max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency
        )
        gate = asyncio.Semaphore(self.cfg.concurrency)
        async with httpx.AsyncClient(
            headers=self._headers, timeout=self.cfg.timeout_s, limits=limits
        ) as client:
            tasks = [
                asyncio.ensure_future(self._run(client, gate, url, body, chat))
                for url, body, chat in calls
            ]
            try:
                return list(await asyncio.gather(*tasks))
            finally:  # the first failure cancels the rest of the batch
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def adapters(self) -> list[str]:
        return list(self._served)

    def load_adapter(self, name: str, served_name: str) -> None:
        """Route `name` to a model the server already serves (e.g. a `--lora-modules` entry);
        nothing is uploaded."""
        self._served[name] = served_name

    # --- one request -----------------------------------------------------------------------

    def _call(self, req: GenerationRequest) -> tuple[str, dict[str, Any], bool]:
        """(url, body, is_chat_endpoint) for one request."""
        p = req.params
        body: dict[str, Any] = {
            "model": self._model_for(req.adapter),
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.repetition_penalty != 1.0:  # vLLM's extra sampling parameter; plain OpenAI has none
            body["repetition_penalty"] = p.repetition_penalty
        if req.messages is not None and self.cfg.endpoint == "chat":
            body["messages"] = [m.model_dump() for m in req.messages]
            return f"{self._base_url}/chat/completions", body, True
        body["prompt"] = req.prompt if req.messages is None else _flatten_chat(req.messages)
        return f"{self._base_url}/completions", body, False

    def _model_for(self, adapter: str | None) -> str:
        if adapter is None:
            return self.cfg.model
        if adapter not in self._served:
            known = ", ".join(sorted(self._served)) or "none configured"
            raise BackendError(f"unknown adapter {adapter!r}; known adapters: {known}")
        return self._served[adapter]

    async def _run(
        self,
        client: httpx.AsyncClient,
        gate: asyncio.Semaphore,
        url: str,
        body: dict[str, Any],
        chat: bool,
    ) -> Generation:
        return _parse(await self._post(client, gate, url, body), chat, url)

    async def _post(
        self, client: httpx.AsyncClient, gate: asyncio.Semaphore, url: str, body: dict[str, Any]
    ) -> Any:
        """POST with retries on 429/5xx/connection errors/timeouts; returns the decoded JSON.

        The semaphore is held only while a request is on the wire, so a request sleeping
        through its backoff does not keep a healthy one waiting."""
        attempts = self.cfg.max_retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            delay = self.cfg.backoff_s * 2 ** (attempt - 1)
            try:
                async with gate:
                    resp = await asyncio.wait_for(client.post(url, json=body), self.cfg.timeout_s)
            except (asyncio.TimeoutError, httpx.TimeoutException):
                last = f"timeout: no response within timeout_s={self.cfg.timeout_s}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                status = resp.status_code
                if status < 400:
                    try:
                        return resp.json()
                    except ValueError:
                        raise BackendError(
                            f"{url} answered HTTP {status} with a body that is not JSON: "
                            f"{_snippet(resp.text)}"
                        ) from None
                if status != 429 and status < 500:
                    raise BackendError(f"{url} answered HTTP {status}: {_error_message(resp)}")
                last = f"HTTP {status}: {_error_message(resp)}"
                delay = _retry_after(resp, delay)
            if attempt < attempts:
                await asyncio.sleep(delay)
        raise BackendError(f"{url} failed after {attempts} attempt(s); last error: {last}")


# --- helpers -----------------------------------------------------------------------------


def _flatten_chat(messages: list[ChatMessage]) -> str:
    """A chat as plain text for `endpoint: completions` (servers without a chat template)."""
    turns = [f"{m.role.capitalize()}: {m.content}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def _parse(data: Any, chat: bool, url: str) -> Generation:
    """Generation from an OpenAI response body; says which field is missing when one is."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendError(f"{url}: response has no `choices`: {_snippet(str(data))}")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        field = "choices[0].message.content"
    else:
        text, field = choice.get("text"), "choices[0].text"
    if not isinstance(text, str):
        raise BackendError(f"{url}: response has no text in `{field}`: {_snippet(str(data))}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return Generation(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
    )


def error_text(body: str | dict[str, Any]) -> str:
    """The server's own words from an error body: OpenAI `{"error": {"message"}}`, older vLLM
    `{"message"}`, FastAPI `{"detail"}`, else the raw body (shared with the proxy's upstream client)."""
    data: Any = body
    if isinstance(body, str):
        try:
            data = json.loads(body)
        except ValueError:
            return _snippet(body) or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    return _snippet(json.dumps(data))


def _error_message(resp: httpx.Response) -> str:
    return error_text(resp.text) if resp.text.strip() else resp.reason_phrase


def _retry_after(resp: httpx.Response, default: float) -> float:
    """The server's Retry-After in seconds (capped), else our own backoff; HTTP-date values
    are rare from inference servers and fall back to the backoff."""
    try:
        seconds = float(resp.headers.get("retry-after", ""))
    except ValueError:
        return default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _snippet(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."
