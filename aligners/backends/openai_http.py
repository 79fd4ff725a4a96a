"""Generation through any OpenAI-compatible HTTP server (vLLM, llama.cpp, OpenAI, our proxy).

Requests go through `OpenAIClient` (one parser, one failure taxonomy, shared with the proxy);
this backend adds what batch generation needs: many requests in flight at once and retries of
what is worth retrying (429, 5xx, connection errors, timeouts) while other 4xx and malformed
bodies fail at once with the server's own words.
LoRA adapters are addressed the way `vllm serve --lora-modules name=path` exposes them: each
adapter is a served model name, so routing is just the `model` field of the request body.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aligners.backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Generation,
    GenerationRequest,
    register_backend,
)
from aligners.backends.openai_client import OpenAIClient, OpenAIServerError, parse_completion
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
        client = OpenAIClient(self._base_url, headers=self._headers, timeout_s=self.cfg.timeout_s,
                              connections=self.cfg.concurrency)
        gate = asyncio.Semaphore(self.cfg.concurrency)
        tasks = [asyncio.ensure_future(self._run(client, gate, path, body, chat)) for path, body, chat in calls]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # the first failure cancels the rest of the batch
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.aclose()

    def adapters(self) -> list[str]:
        return list(self._served)

    def load_adapter(self, name: str, served_name: str) -> None:
        """Route `name` to a model the server already serves (e.g. a `--lora-modules` entry);
        nothing is uploaded."""
        self._served[name] = served_name

    # --- one request -----------------------------------------------------------------------

    def _call(self, req: GenerationRequest) -> tuple[str, dict[str, Any], bool]:
        """(path, body, is_chat_endpoint) for one request."""
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
            return "/chat/completions", body, True
        body["prompt"] = req.prompt if req.messages is None else _flatten_chat(req.messages)
        return "/completions", body, False

    def _model_for(self, adapter: str | None) -> str:
        if adapter is None:
            return self.cfg.model
        if adapter not in self._served:
            known = ", ".join(sorted(self._served)) or "none configured"
            raise BackendError(f"unknown adapter {adapter!r}; known adapters: {known}")
        return self._served[adapter]

    async def _run(self, client: OpenAIClient, gate: asyncio.Semaphore, path: str, body: dict[str, Any],
                   chat: bool) -> Generation:
        """POST with retries on what is worth retrying; the semaphore is held only while a
        request is on the wire, so a request sleeping through its backoff keeps nobody waiting."""
        attempts = self.cfg.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with gate:
                    data = await client.post(path, body)
                done = parse_completion(data, chat, client.base_url + path)
            except OpenAIServerError as exc:
                if not exc.retryable:
                    raise BackendError(str(exc)) from None
                last = exc
                if attempt < attempts:
                    await asyncio.sleep(_retry_after(exc, self.cfg.backoff_s * 2 ** (attempt - 1)))
                continue
            first = done.choices[0]
            return Generation(text=first.text, prompt_tokens=done.prompt_tokens,
                              completion_tokens=done.completion_tokens, finish_reason=first.finish_reason)
        raise BackendError(f"{last.url} failed after {attempts} attempt(s); last error: {_last_error(last)}")


# --- helpers -----------------------------------------------------------------------------


def _flatten_chat(messages: list[ChatMessage]) -> str:
    """A chat as plain text for `endpoint: completions` (servers without a chat template)."""
    turns = [f"{m.role.capitalize()}: {m.content}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def _last_error(exc: OpenAIServerError) -> str:
    return f"HTTP {exc.status}: {exc.detail}" if exc.kind == "status" else f"{exc.kind}: {exc.detail}"


def _retry_after(exc: OpenAIServerError, default: float) -> float:
    """The server's Retry-After in seconds (capped), else our own backoff; HTTP-date values
    are rare from inference servers and fall back to the backoff."""
    try:
        seconds = float(exc.retry_after or "")
    except ValueError:
        return default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
