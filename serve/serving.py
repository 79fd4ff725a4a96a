"""The serving layer of the OpenAI-compatible server: validated protocol requests in, OpenAI
responses (or SSE event streams) out. No web framework here (vLLM's `OpenAIServing*` split):
`serve/app.py` is the thin HTTP router; tests and the benchmarks can drive this class directly.

One request, `POST /v1/chat/completions`:

    generate   the base answers: an upstream OpenAI-compatible server (pooled httpx client), or
               the squad's local base model (a worker thread, serialized with the squad), which
               keeps the layers its inspectors read of it while generating
    correct    `squad.correct([prompt] * n, answers)`: inspect (from those kept states where
               they match), route aligners, re-inspect
    respond    the corrected text as a normal OpenAI response; squad details in the extra
               top-level field `aligners` and in `x-aligners-*` headers

The squad and any local model run in worker threads (`asyncio.to_thread`) so the event loop
keeps serving other requests; torch is not thread-safe for concurrent `generate` on one model,
so every squad/local-model call holds one lock (the app's admission limit bounds the queue).

Streaming (`stream: true`) — an answer has to be inspected whole:

- `buffered` (default): the base answer is generated and corrected first, then the final text is
  streamed as ordinary `chat.completion.chunk`s: the role, word-sized content pieces, a chunk with
  `finish_reason` that also carries the top-level `aligners` object for that choice, an optional
  usage chunk (`stream_options.include_usage`), then `data: [DONE]`. Headers carry the squad's
  verdict as for non-streaming requests, because it is known before the first byte.
- `live` (`"aligners": {"stream_mode": "live"}`, one choice only): base tokens are forwarded as
  they arrive (from the upstream's own stream; a local model's finished answer is chunked), then
  the squad runs on the whole answer and the `finish_reason` chunk carries `aligners` with
  `stream_mode: "live"` and, per choice, `replaces_streamed` (true when the squad changed the
  answer) and `corrected` (the full corrected text, present when `replaces_streamed` is true).
  A client that ignores `aligners` shows the uncorrected base text: live mode is for UIs that
  swap the text in when `replaces_streamed` is true. Errors after the first byte arrive as a
  `data: {"error": {...}}` event followed by `data: [DONE]`.
- `sentences` (one choice): base tokens go into a holding window; each completed sentence is
  released once the answer so far passes every inspector. When one flags, the base stream is
  closed, the squad corrects the answer so far, and the rewrite is streamed after what was
  released (its continuation when it extends the released text, else after a blank line); an
  answer still flagged after the squad is withheld past what was released. A client that
  ignores every extra field never receives text an inspector flagged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from aligners.backends.base import (
    BackendError,
    ChatMessage,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
    TokenStates,
    cancel_scope,
)
from aligners.backends.openai_client import OpenAIClient, OpenAIServerError, parse_completion
from aligners.config import OpenAIHTTPBackendConfig
from aligners.schema import Correction
from serve.metrics import ServerMetrics
from serve.pairs import PairLog
from serve.pipeline import Squad, SquadError, word_pieces
from serve.protocol import (
    AlignersInfo,
    AlignersOptions,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceDetails,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CorrectResponse,
    InspectResponse,
    InspectResult,
    ModelCard,
    ModelList,
    PolicyOptions,
    ResponseMessage,
    ScoreSet,
    ServingError,
    SquadRequest,
    StepInfo,
    UsageInfo,
    chat_chunk,
    completion_chunk,
    invalid,
    new_id,
    sse,
    usage_chunk,
)
from serve.server_config import ServerConfig, resolve_secret

ALIGNER_MODEL_PREFIX = "aligners/"


# --- small records -----------------------------------------------------------------------------


async def _never_disconnected() -> bool:
    return False


@dataclass
class RequestContext:
    """What the serving layer needs to know about the HTTP request, without HTTP objects."""

    authorization: str | None = None  # the client's Authorization header (upstream_key: passthrough)
    policy: str | None = None  # the x-aligners-policy header: a named policy of the server config
    disconnected: Callable[[], Awaitable[bool]] = _never_disconnected


@dataclass
class BaseAnswer:
    text: str
    finish_reason: str = "stop"
    completion_tokens: int = 0
    prompt_tokens: int = 0
    states: TokenStates | None = None  # what the local base kept for the squad's inspectors


@dataclass
class Served:
    """A complete JSON response."""

    body: BaseModel
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Streamed:
    """An SSE response: `events` yields ready-to-send `data: ...` strings."""

    events: AsyncIterator[str]
    headers: dict[str, str] = field(default_factory=dict)


class Cancelled(Exception):
    """Work abandoned because its request went away before a worker thread picked it up."""


# --- the upstream OpenAI-compatible server ----------------------------------------------------------


class Upstream:
    """The proxy's upstream: one `OpenAIClient` plus what a proxy adds on top.

    It forwards the client's key (`upstream_key: passthrough`) or uses its own, and maps every
    failure to a `ServingError` for the proxy's client: unreachable → 502, no answer within
    `timeout_s` → 504, upstream 4xx/5xx → 400/401/429/502 (see `_serving_error`). No retries:
    the client's own SDK retries (the official one retries 429/5xx), and a retry here would
    stack its timeout on top of the client's.
    """

    def __init__(self, base_url: str, model: str, *, key: str | None = None, passthrough: bool = False,
                 timeout_s: float = 60.0, connections: int = 64):
        self.model = model
        self.key = key
        self.passthrough = passthrough
        self.api = OpenAIClient(base_url, timeout_s=timeout_s, connections=connections)

    @property
    def base_url(self) -> str:
        return self.api.base_url

    async def aclose(self) -> None:
        await self.api.aclose()

    def _headers(self, authorization: str | None) -> dict[str, str]:
        if self.passthrough:
            return {"Authorization": authorization} if authorization else {}
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    async def answers(self, path: str, body: dict[str, Any], authorization: str | None,
                      chat: bool) -> list[BaseAnswer]:
        """POST one request; its choices as answers, the response's token counts spread over them."""
        try:
            done = parse_completion(await self.api.post(path, body, self._headers(authorization)), chat,
                                    self.base_url + path)
        except OpenAIServerError as exc:
            raise self._serving_error(exc) from None
        out = [BaseAnswer(c.text, c.finish_reason) for c in done.choices]
        for i, a in enumerate(out):
            a.completion_tokens = done.completion_tokens // len(out) + (1 if i < done.completion_tokens % len(out) else 0)
        out[0].prompt_tokens = done.prompt_tokens
        return out

    async def stream(self, path: str, body: dict[str, Any], authorization: str | None,
                     chat: bool) -> AsyncIterator[tuple[str, str | None]]:
        """(text piece, finish_reason or None) as they arrive; leaving early stops the upstream."""
        try:
            async with contextlib.aclosing(self.api.stream(path, body, chat, self._headers(authorization))) as events:
                async for event in events:
                    yield event
        except OpenAIServerError as exc:
            raise self._serving_error(exc) from None

    def _serving_error(self, exc: OpenAIServerError) -> ServingError:
        """What an upstream failure means to our client: its own fault stays a 4xx, ours is a 5xx."""
        url, msg = exc.url, exc.detail
        if exc.kind == "timeout":
            return ServingError(504, f"upstream {url} did not answer within {self.api.timeout_s:g} s "
                                "(request_timeout_s)", type="upstream_timeout", code="upstream_timeout")
        if exc.kind == "unreachable":
            return ServingError(502, f"upstream {url} is unreachable ({msg})",
                                type="upstream_error", code="upstream_unavailable")
        if exc.kind == "connection":
            return ServingError(502, f"the connection to upstream {url} failed ({msg})",
                                type="upstream_error", code="upstream_error")
        if exc.kind == "stream_error":
            return ServingError(502, f"upstream {url} failed mid-stream: {msg}",
                                type="upstream_error", code="upstream_error")
        if exc.kind == "bad_response":
            return ServingError(502, f"upstream {url} {msg}", type="upstream_error", code="upstream_bad_response")
        if exc.status == 429:
            return ServingError(429, f"upstream is rate limiting: {msg}", type="rate_limit_error",
                                code="upstream_rate_limited",
                                headers={"Retry-After": exc.retry_after} if exc.retry_after else None)
        if exc.status in (401, 403) and self.passthrough:
            return ServingError(exc.status, f"upstream refused the forwarded key: {msg}",
                                type="invalid_request_error", code="upstream_auth")
        if exc.status in (400, 413, 422):
            return ServingError(400, f"upstream rejected the request: {msg}", code="upstream_bad_request")
        return ServingError(502, f"upstream {url} answered HTTP {exc.status}: {msg}",
                            type="upstream_error", code="upstream_error")


# --- the serving class -------------------------------------------------------------------------------


class AlignersServing:
    """OpenAI-compatible completions corrected by a squad; also /v1/aligners/{correct,inspect}.

    `squad=None` is passthrough mode (no correction; needs an upstream) — the baseline of
    `benchmarks/proxy_overhead.py`. `metrics` is the app's `ServerMetrics`."""

    def __init__(self, config: ServerConfig, squad=None, metrics: ServerMetrics | None = None,
                 upstream: Upstream | None = None, recipe: Path | str | None = None):
        self.config = config
        self.recipe = recipe  # the squad recipe that /admin/reload and SIGHUP load again
        self.squad = squad
        self.metrics = metrics or ServerMetrics()
        self.upstream = upstream or self._upstream_from(config, squad)
        self.local_base = squad.base if (squad is not None and self.upstream is None) else None
        if self.upstream is None and squad is None:
            raise ValueError("passthrough mode (no squad) needs an upstream")
        self.model_name = self._base_name()
        self.pairs_log = PairLog(config.pairs_log) if config.pairs_log else None
        self._reload_lock = asyncio.Lock()
        self._alock = asyncio.Lock()  # orders waiters without tying up worker threads
        self._tlock = threading.Lock()  # held by the worker thread itself (see `_locked`)
        if squad is not None:
            self.metrics.init_criteria(self.criteria)

    # --- configuration ---------------------------------------------------------------------------

    @staticmethod
    def _upstream_from(config: ServerConfig, squad) -> Upstream | None:
        if config.upstream:
            return Upstream(config.upstream, config.upstream_model or "default",
                            key=config.resolved_upstream_key(), passthrough=config.upstream_key == "passthrough",
                            timeout_s=config.request_timeout_s, connections=config.upstream_connections)
        base = getattr(getattr(squad, "config", None), "base", None)
        if isinstance(base, OpenAIHTTPBackendConfig):  # the squad recipe names an upstream itself
            return Upstream(base.base_url, base.model, key=resolve_secret(base.api_key),
                            passthrough=config.upstream_key == "passthrough",
                            timeout_s=min(config.request_timeout_s, base.timeout_s),
                            connections=config.upstream_connections)
        return None

    def _base_name(self) -> str | None:
        if self.config.served_model_name:
            return self.config.served_model_name
        if self.upstream is not None:
            return self.upstream.model
        if self.local_base is None:
            return None
        base = self.squad.config.base
        cfg = self.squad.config.backend if base == "shared" else base
        return str(getattr(cfg, "model", "base"))

    @property
    def criteria(self) -> list[str]:
        return [g.criterion for g in self.squad.guards] if self.squad is not None else []

    async def aclose(self) -> None:
        if self.upstream is not None:
            await self.upstream.aclose()

    # --- models and health -----------------------------------------------------------------------

    def models(self) -> ModelList:
        cards = []
        if self.model_name:
            where = "upstream" if self.upstream else "local"
            cards.append(ModelCard(id=self.model_name, aligners={"role": "base", "generation": where,
                                                                 "squad": self.squad is not None}))
            cards += [ModelCard(id=name, aligners={"role": "policy", "base": self.model_name, **policy.model_dump(
                exclude_none=True)}) for name, policy in self.config.policies.items()]
        for g in (self.squad.guards if self.squad is not None else []):
            cards.append(ModelCard(id=ALIGNER_MODEL_PREFIX + g.criterion, aligners={
                "role": "aligner", "criterion": g.criterion, "threshold": g.threshold}))
        return ModelList(data=cards)

    async def reload(self, recipe: Path | str | None) -> dict[str, Any]:
        """Load a squad recipe and swap it in; a recipe that fails to load is a 400 and the old squad
        keeps serving. Requests already running finish with the squad they started with: the swap
        is one assignment and the old squad is left to the garbage collector, never closed under them."""
        recipe = recipe or self.recipe
        if recipe is None:
            raise invalid("this server has no squad recipe to reload: name one in `squad`", "squad")
        async with self._reload_lock:
            t0 = time.perf_counter()
            try:
                squad = await asyncio.to_thread(Squad.from_config, recipe)
            except (ValueError, OSError, LookupError, BackendError) as exc:  # config, artifact, model, backend
                self.metrics.error("reload_failed")
                raise invalid(f"reload refused, the current squad keeps serving: {type(exc).__name__}: {exc}",
                              "squad", "reload_failed") from None
            self.squad, self.recipe = squad, Path(recipe)
            if self.upstream is None:
                self.local_base = squad.base
            self.model_name = self._base_name()
            self.metrics.init_criteria(self.criteria)
        return {"reloaded": str(recipe), "criteria": self.criteria, "model": self.model_name,
                "seconds": round(time.perf_counter() - t0, 2)}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_name, "squad": self.squad is not None,
                "criteria": self.criteria}

    # --- checks shared by chat and completions ---------------------------------------------------------

    def _check(self, req: ChatCompletionRequest | CompletionRequest, choices: int) -> None:
        if req.model != self.model_name and not (self.model_name and req.model in self.config.policies):
            if req.model.startswith(ALIGNER_MODEL_PREFIX) and req.model[len(ALIGNER_MODEL_PREFIX):] in self.criteria:
                raise invalid(f"`{req.model}` is an aligner: it rewrites answers inside the squad and does not "
                              f"answer prompts; ask `{self.model_name}`, or use /v1/aligners/correct", "model",
                              "model_not_generative")
            if self.model_name is None:
                raise invalid("this server has no base model to generate with (squad `base: none` and no "
                              "upstream): use /v1/aligners/correct with your own answers, or start it with "
                              "--upstream", "model", "no_base_model")
            names = ", ".join(f"`{m}`" for m in [self.model_name, *self.config.policies])
            raise ServingError(404, f"the model `{req.model}` does not exist on this server; available: "
                               f"{names}", param="model", code="model_not_found")
        limit = req.token_limit
        if limit is not None and limit > self.config.max_tokens_limit:
            name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            raise invalid(f"`{name}`={limit} exceeds this server's limit of {self.config.max_tokens_limit}",
                          name, "max_tokens_too_large")
        stops = req.stops
        if len(stops) > self.config.max_stop_sequences:
            raise invalid(f"{len(stops)} stop sequences; this server accepts at most {self.config.max_stop_sequences}",
                          "stop")
        if any(len(x) > self.config.max_stop_chars for x in stops):
            raise invalid(f"a stop sequence of {max(map(len, stops))} characters; this server accepts at most "
                          f"{self.config.max_stop_chars} (max_stop_chars)", "stop")
        if req.n > self.config.max_n:
            raise invalid(f"`n`={req.n} exceeds this server's limit of {self.config.max_n}", "n")
        if choices > self.config.max_batch_items:
            raise invalid(f"{choices} choices requested (prompts x n); this server's limit is "
                          f"{self.config.max_batch_items}", "prompt")
        if req.stream and req.aligners.stream_mode in ("live", "sentences") and choices != 1:
            raise invalid(f"stream_mode `{req.aligners.stream_mode}` streams a single choice: use n=1 and one "
                          "prompt, or the default buffered mode", "aligners.stream_mode")

    def _sampling(self, req: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
        """The request's sampling knobs for a local model; unset ones from the squad's base_params."""
        base = self.squad.config.policy.base_params
        try:
            return SamplingParams(
                max_tokens=req.token_limit or base.max_tokens,
                temperature=base.temperature if req.temperature is None else req.temperature,
                top_p=base.top_p if req.top_p is None else req.top_p,
                stop=req.stops or base.stop, seed=base.seed if req.seed is None else req.seed,
                repetition_penalty=base.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            )
        except ValidationError as exc:
            raise invalid(f"sampling parameters not accepted by the local model: {exc.errors()[0]['msg']}") from None

    def _upstream_body(self, req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
        """Sampling knobs for the upstream: only what the client set (the upstream's defaults
        apply otherwise, as if the client talked to it directly)."""
        body: dict[str, Any] = {"model": self.upstream.model}
        if req.token_limit is not None:
            body["max_tokens"] = req.token_limit
        for name in ("temperature", "top_p", "seed", "repetition_penalty"):
            if getattr(req, name) is not None:
                body[name] = getattr(req, name)
        if req.stops:
            body["stop"] = req.stops
        return body

    # --- worker threads ----------------------------------------------------------------------------

    async def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in a worker thread, one at a time.

        The asyncio lock queues waiters without holding threads; the thread lock is taken by
        the worker itself, so a request cancelled mid-run (client gone, timeout) releases the
        asyncio lock while its thread finishes under the thread lock — the next run waits for
        it instead of entering torch concurrently. Cancelling sets the run's cancel event: a
        local generation stops at its next token (`cancel_scope`), so the wait is one step, and
        a run not yet started is skipped."""
        cancelled = threading.Event()

        def work() -> Any:
            with self._tlock, cancel_scope(cancelled):
                if cancelled.is_set():
                    raise Cancelled()
                return fn(*args)

        async with self._alock:
            try:
                return await asyncio.to_thread(work)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    async def _run_model(self, stage: str, param: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`_locked` within `request_timeout_s` (then a 504, and the run is cancelled), with the
        model error a client can act on as a 400: an input longer than the context names `param`.
        `stage`: generation, correction or inspection."""
        limit = self.config.request_timeout_s
        try:
            return await asyncio.wait_for(self._locked(fn, *args), limit)
        except asyncio.TimeoutError:
            raise ServingError(504, f"the {stage} did not finish within {limit:g} s (request_timeout_s) and was "
                               "stopped", type="timeout", code=f"{stage}_timeout") from None
        except PromptTooLong as exc:
            raise invalid(f"too long for the {stage}: {exc}", param, "prompt_too_long") from None

    async def _local_generate(self, requests: list[GenerationRequest], param: str) -> list[BaseAnswer]:
        """The local base's answers; the squad's own base also keeps what its inspectors read of it."""
        try:
            if self.squad is not None and self.local_base is self.squad.base:
                outs, states = await self._run_model("generation", param, self.squad.answer_with_states, requests)
            else:
                outs = await self._run_model("generation", param, self.local_base.generate, requests)
                states = [None] * len(outs)
        except BackendError as exc:
            raise ServingError(502, f"base model failed: {exc}", type="upstream_error", code="generation_failed") from None
        return [BaseAnswer(o.text, o.finish_reason, o.completion_tokens, o.prompt_tokens, s)
                for o, s in zip(outs, states, strict=True)]

    def _policy(self, options: AlignersOptions, ctx: RequestContext, model: str | None = None) -> PolicyOptions:
        """The request's squad policy: the named one (body field, else header, else a `model` that
        names a policy: the base model under that policy), then the request's own fields."""
        name = options.policy or ctx.policy or (model if model in self.config.policies else None)
        named = PolicyOptions()
        if name is not None:
            if name not in self.config.policies:
                known = ", ".join(sorted(self.config.policies)) or "none configured"
                raise invalid(f"unknown policy {name!r}; this server's policies: {known}", "aligners.policy",
                              "unknown_policy")
            named = self.config.policies[name]
        policy = PolicyOptions(
            mode=options.mode or named.mode or "enforce",
            criteria=options.criteria if options.criteria is not None else named.criteria,
            thresholds={**(named.thresholds or {}), **(options.thresholds or {})} or None)
        if self.squad is not None:
            try:
                self.squad.guards_for(policy.criteria, policy.thresholds)
            except SquadError as exc:
                raise invalid(str(exc), "aligners.criteria", "unknown_criterion") from None
        return policy

    async def _flagged(self, prompt: str, text: str, param: str, policy: PolicyOptions) -> bool:
        """Does any inspector of the request's policy flag `text` as the answer so far?"""
        if self.squad is None:
            return False
        guards = self.squad.guards_for(policy.criteria, policy.thresholds)
        scores = await self._run_model("inspection", param, self.squad.inspect, [prompt], [text], guards)
        return bool(any(score < g.threshold for g, score in zip(guards, scores[0], strict=True)))

    async def _correct(self, prompts: Sequence[str], answers: Sequence[str],
                       ids: Sequence[str | None] | None = None, param: str = "messages",
                       policy: PolicyOptions | None = None,
                       generated: Sequence[TokenStates | None] | None = None) -> list[Correction] | None:
        policy = policy or PolicyOptions(mode="enforce")
        if self.squad is None or policy.mode == "off":
            return None
        correct = functools.partial(self.squad.correct, criteria=policy.criteria, thresholds=policy.thresholds,
                                    generated=generated)
        try:
            results = await self._run_model("correction", param, correct, list(prompts), list(answers), ids)
        except BackendError as exc:
            raise ServingError(502, f"an aligner failed: {exc}", type="upstream_error", code="aligner_failed") from None
        self.metrics.corrections(results, shadow=policy.mode == "shadow")
        if self.pairs_log is not None:
            self.pairs_log.write(results)
        return results

    # --- generation ---------------------------------------------------------------------------------

    async def _generate_upstream(self, path: str, body: dict[str, Any], n: int, ctx: RequestContext,
                                 chat: bool) -> tuple[list[BaseAnswer], int]:
        """n answers for one input; servers that ignore `n` (llama.cpp) get extra calls."""
        answers = (await self.upstream.answers(path, {**body, **({"n": n} if n > 1 else {})},
                                               ctx.authorization, chat))[:n]
        prompt_tokens = answers[0].prompt_tokens
        if len(answers) < n:
            more = await asyncio.gather(*[self.upstream.answers(path, body, ctx.authorization, chat)
                                          for _ in range(n - len(answers))])
            answers += [m[0] for m in more]
        return answers, prompt_tokens

    async def _generate_chat(self, req: ChatCompletionRequest, ctx: RequestContext) -> tuple[list[BaseAnswer], UsageInfo]:
        t0 = time.perf_counter()
        messages = _role_mapped(req)
        if self.upstream is not None:
            body = {**self._upstream_body(req), "messages": messages}
            answers, prompt_tokens = await self._generate_upstream("/chat/completions", body, req.n, ctx, True)
        else:
            params = self._sampling(req)
            gen = GenerationRequest(messages=[ChatMessage(**m) for m in messages], params=params)
            answers = await self._local_generate([gen] * req.n, "messages")
            prompt_tokens = answers[0].prompt_tokens
        self.metrics.observe("generate", time.perf_counter() - t0)
        return answers, _usage(prompt_tokens, answers)

    async def _generate_completion(self, req: CompletionRequest, ctx: RequestContext) -> tuple[list[BaseAnswer], UsageInfo]:
        t0 = time.perf_counter()
        if self.upstream is not None:
            body = self._upstream_body(req)
            per_prompt = await asyncio.gather(*[
                self._generate_upstream("/completions", {**body, "prompt": p}, req.n, ctx, False)
                for p in req.prompts
            ])
            answers = [a for group, _ in per_prompt for a in group]
            prompt_tokens = sum(pt for _, pt in per_prompt)
        else:
            params = self._sampling(req)
            answers = await self._local_generate(
                [GenerationRequest(prompt=p, params=params) for p in req.prompts for _ in range(req.n)], "prompt")
            prompt_tokens = sum(a.prompt_tokens for a in answers[:: req.n])
        self.metrics.observe("generate", time.perf_counter() - t0)
        return answers, _usage(prompt_tokens, answers)

    # --- squad details ------------------------------------------------------------------------------

    def _details(self, results: list[Correction] | None, answers: list[BaseAnswer], return_original: bool,
                 live: bool = False, mode: str = "enforce") -> AlignersInfo:
        if results is None:
            return AlignersInfo(squad=self.squad is not None, mode=mode, choices=[
                ChoiceDetails(index=i, changed=False, flagged=[], applied=[]) for i in range(len(answers))])
        shadow = mode == "shadow"
        choices = []
        for i, r in enumerate(results):
            choices.append(ChoiceDetails(
                index=i, changed=r.changed and not shadow,
                flagged=[v.criterion for v in r.trace.initial if v.flagged],
                applied=[s.criterion for s in r.trace.steps if s.accepted],
                scores=ScoreSet(before={v.criterion: v.score for v in r.trace.initial},
                                after={v.criterion: v.score for v in r.trace.final},
                                thresholds={v.criterion: v.threshold for v in r.trace.final}),
                steps=[StepInfo(criterion=s.criterion, score_before=s.score_before, score_after=s.score_after,
                                accepted=s.accepted, reason=s.reason) for s in r.trace.steps],
                original=r.original if return_original else None,
                corrected=r.corrected if ((live or shadow) and r.changed) else None,
                replaces_streamed=r.changed if live else None,
            ))
        applied: list[str] = []
        for c in choices:
            applied += [a for a in c.applied if a not in applied]
        return AlignersInfo(squad=True, mode=mode, changed=any(c.changed for c in choices), applied=applied,
                            choices=choices, would_change=any(r.changed for r in results) if shadow else None)

    @staticmethod
    def _headers(info: AlignersInfo) -> dict[str, str]:
        flagged: list[str] = []
        for c in info.choices:
            flagged += [f for f in c.flagged if f not in flagged]
        return {
            "x-aligners-squad": "on" if info.squad else "off",
            "x-aligners-mode": info.mode,
            "x-aligners-changed": "true" if info.changed else "false",
            **({"x-aligners-would-change": "true" if info.would_change else "false"}
               if info.would_change is not None else {}),
            "x-aligners-applied": ",".join(info.applied),
            "x-aligners-flagged": ",".join(flagged),
            **({"x-aligners-time-ms": f"{info.timings_ms['total']:.1f}"} if "total" in info.timings_ms else {}),
        }

    def _finish(self, info: AlignersInfo, answers: list[BaseAnswer], results: list[Correction] | None,
                t0: float, t_gen: float) -> tuple[list[str], list[str]]:
        """Final texts and finish reasons; fills `info.timings_ms`. A changed answer is a complete
        rewrite, so its finish reason is `stop` even if the base hit the length limit."""
        texts = [r.corrected for r in results] if results else [a.text for a in answers]
        finish = ["stop" if (results and results[i].changed) else a.finish_reason for i, a in enumerate(answers)]
        timings = {"generate": t_gen * 1000}
        if results:
            timings["inspect"] = sum(r.trace.timings.get("inspect_s", 0.0) for r in results) * 1000
            timings["align"] = sum(r.trace.timings.get("align_s", 0.0) for r in results) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        info.timings_ms = {k: round(v, 3) for k, v in timings.items()}
        return texts, finish

    # --- POST /v1/chat/completions --------------------------------------------------------------------

    async def chat(self, req: ChatCompletionRequest, ctx: RequestContext | None = None) -> Served | Streamed:
        return await self._serve(req, ctx or RequestContext(), chat=True)

    # --- POST /v1/completions -------------------------------------------------------------------------

    async def completion(self, req: CompletionRequest, ctx: RequestContext | None = None) -> Served | Streamed:
        return await self._serve(req, ctx or RequestContext(), chat=False)

    async def _serve(self, req: ChatCompletionRequest | CompletionRequest, ctx: RequestContext,
                     chat: bool) -> Served | Streamed:
        """One path for both endpoints: generate, correct, answer as JSON or as an SSE stream."""
        t0 = time.perf_counter()
        self._check(req, req.n if chat else len(req.prompts) * req.n)
        policy = self._policy(req.aligners, ctx, req.model)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        mode = req.aligners.stream_mode if req.stream else None
        if mode in ("live", "sentences") and policy.mode != "enforce":
            raise invalid(f"stream_mode `{mode}` runs in enforce mode only; {policy.mode} mode streams buffered",
                          "aligners.stream_mode")
        if mode in ("live", "sentences"):
            events = await self._start_live(self._live(req, ctx, chat, include_usage, policy, mode == "sentences"))
            return Streamed(events, {"x-aligners-squad": "on" if self.squad else "off",
                                     "x-aligners-stream-mode": mode})
        answers, usage = await (self._generate_chat(req, ctx) if chat else self._generate_completion(req, ctx))
        t_gen = time.perf_counter() - t0
        prompts = [req.inspected_prompt()] * len(answers) if chat else [p for p in req.prompts for _ in range(req.n)]
        results = await self._correct(prompts, [a.text for a in answers], param="messages" if chat else "prompt",
                                      policy=policy, generated=[a.states for a in answers])
        info = self._details(results, answers, req.aligners.return_original, mode=policy.mode)
        texts, finish = self._finish(info, answers, results if policy.mode == "enforce" else None, t0, t_gen)
        headers = self._headers(info)
        if req.stream:
            info.stream_mode = "buffered"
            return Streamed(self._replay(req.model, texts, finish, info, usage, ctx, chat, include_usage), headers)
        details = info if req.aligners.details else None
        pairs = enumerate(zip(texts, finish, strict=True))
        if chat:
            return Served(ChatCompletionResponse(
                model=req.model, usage=usage, aligners=details,
                choices=[ChatChoice(index=i, message=ResponseMessage(content=t), finish_reason=f) for i, (t, f) in pairs]),
                headers)
        return Served(CompletionResponse(
            model=req.model, usage=usage, aligners=details,
            choices=[CompletionChoice(index=i, text=t, finish_reason=f) for i, (t, f) in pairs]), headers)

    # --- streaming ------------------------------------------------------------------------------------

    async def _replay(self, model: str, texts: list[str], finish: list[str], info: AlignersInfo,
                      usage: UsageInfo, ctx: RequestContext, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        """Buffered mode: stream finished texts as chunks; each choice's finish chunk carries
        `aligners` (this choice's details)."""
        cid, created = new_id("chatcmpl" if chat else "cmpl"), int(time.time())
        for i, text in enumerate(texts):
            if chat:
                yield sse(chat_chunk(cid, created, model, i, {"role": "assistant", "content": ""}))
            for piece in word_pieces(text):
                if await ctx.disconnected():
                    self.metrics.error("client_disconnected")
                    return
                yield sse(chat_chunk(cid, created, model, i, {"content": piece}) if chat
                          else completion_chunk(cid, created, model, i, piece))
            extra = {"aligners": _one_choice(info, i)}
            yield sse(chat_chunk(cid, created, model, i, {}, finish[i], **extra) if chat
                      else completion_chunk(cid, created, model, i, "", finish[i], **extra))
        if include_usage:
            yield sse(usage_chunk(cid, created, model, "chat.completion.chunk" if chat else "text_completion", usage))
        yield sse("[DONE]")

    async def _live(self, req: ChatCompletionRequest | CompletionRequest, ctx: RequestContext, chat: bool,
                    include_usage: bool, policy: PolicyOptions, sentences: bool) -> AsyncIterator[str]:
        """Live mode (one choice): forward base pieces as they come, then the correction event.
        Sentences mode: forward only sentences whose answer-so-far passes the inspectors (see the
        module docstring); `released` is what the client has.

        Nothing is yielded before the first base piece, so a failure to start (upstream down,
        slow, refusing) raises a ServingError to `_start_live` and becomes a proper HTTP status;
        a failure after that is an in-stream error event. Usage counts stream pieces as tokens."""
        t0 = time.perf_counter()
        cid, created, model = new_id("chatcmpl" if chat else "cmpl"), int(time.time()), req.model

        def chunk(text: str | None, finish: str | None = None, **extra: Any) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                return sse(chat_chunk(cid, created, model, 0, delta, finish, **extra))
            return sse(completion_chunk(cid, created, model, 0, text or "", finish, **extra))

        opening = sse(chat_chunk(cid, created, model, 0, {"role": "assistant", "content": ""})) if chat else None
        prompt = req.inspected_prompt() if chat else req.prompts[0]
        param = "messages" if chat else "prompt"
        parts: list[str] = []
        released = pending = ""
        finish_reason = "stop"
        started = False
        try:
            if self.upstream is not None:
                if chat:
                    messages = _role_mapped(req)
                    path, body = "/chat/completions", {**self._upstream_body(req), "messages": messages}
                else:
                    path, body = "/completions", {**self._upstream_body(req), "prompt": prompt}
                base_pieces = contextlib.aclosing(self.upstream.stream(path, body, ctx.authorization, chat))
            else:
                answers, _ = await (self._generate_chat(req, ctx) if chat else self._generate_completion(req, ctx))
                finish_reason = answers[0].finish_reason
                base_pieces = contextlib.aclosing(_aiter((p, None) for p in word_pieces(answers[0].text)))
            async with base_pieces as stream:
                async for piece, fin in stream:
                    if started and await ctx.disconnected():
                        self.metrics.error("client_disconnected")
                        return  # leaving the block closes the upstream stream: it stops generating
                    if fin:
                        finish_reason = "length" if fin == "length" else "stop"
                    if not piece:
                        continue
                    if not started and opening:
                        yield opening
                    started = True
                    parts.append(piece)
                    if not sentences:
                        yield chunk(piece)
                        continue
                    done, pending = _complete_sentences(pending + piece)
                    if done and await self._flagged(prompt, released + done, param, policy):
                        pending = done + pending
                        break  # leaving the block closes the base stream: it stops generating
                    if done:
                        released += done
                        yield chunk(done)
            if not started and opening:
                yield opening
            started = True
            t_gen = time.perf_counter() - t0
            if self.upstream is not None:
                self.metrics.observe("generate", t_gen)
            text = released + pending if sentences else "".join(parts)
            answer = BaseAnswer(text, finish_reason, completion_tokens=len(parts))
            results = await self._correct([prompt], [answer.text], param=param, policy=policy)
            if sentences and not (results and any(v.flagged for v in results[0].trace.final)):
                # still flagged after the squad (a rewrite it rejected): the rest is withheld
                tail = _unreleased(released, results[0].corrected if results else answer.text)
                if tail:
                    yield chunk(tail)
            info = self._details(results, [answer], req.aligners.return_original, live=not sentences)
            _, finish = self._finish(info, [answer], results, t0, t_gen)
            info.stream_mode = "sentences" if sentences else "live"
            yield chunk(None, finish[0], aligners=info.model_dump(exclude_none=True))
            if include_usage:
                usage = _usage(0, [answer])
                yield sse(usage_chunk(cid, created, model, "chat.completion.chunk" if chat else "text_completion", usage))
        except ServingError as exc:
            if not started:
                raise
            self.metrics.error(exc.code or exc.type)
            yield sse(exc.body())
        yield sse("[DONE]")

    async def _start_live(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """Run a live stream up to its first event, so errors before it raise here (HTTP status)."""
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            return _aiter([sse("[DONE]")])
        except BaseException:
            await events.aclose()
            raise

        async def stream() -> AsyncIterator[str]:
            async with contextlib.aclosing(events):
                yield first
                async for event in events:
                    yield event

        return stream()

    # --- POST /v1/aligners/correct and /v1/aligners/inspect ------------------------------------------------

    def _pairs(self, req: SquadRequest) -> tuple[list[str], list[str], list[str | None]]:
        if self.squad is None:
            raise invalid("this server runs without a squad (passthrough mode): nothing to correct or inspect",
                          code="no_squad")
        prompts, answers, ids = req.pairs()
        if len(answers) > self.config.max_batch_items:
            raise invalid(f"{len(answers)} answers in one request; this server's limit is "
                          f"{self.config.max_batch_items}", "answer")
        return prompts, answers, ids

    async def correct(self, req: SquadRequest) -> Served:
        prompts, answers, ids = self._pairs(req)
        results = await self._correct(prompts, answers, ids, param="answer")
        info = self._details(results, [BaseAnswer(a) for a in answers], False)
        return Served(CorrectResponse(data=[r.model_dump() for r in results]), self._headers(info))

    async def inspect(self, req: SquadRequest) -> Served:
        prompts, answers, ids = self._pairs(req)
        t0 = time.perf_counter()
        scores = await self._run_model("inspection", "answer", self.squad.inspect, prompts, answers)
        self.metrics.observe("inspect", time.perf_counter() - t0)
        thresholds = {g.criterion: g.threshold for g in self.squad.guards}
        data = []
        for i, row in enumerate(scores):
            s = {g.criterion: float(v) for g, v in zip(self.squad.guards, row, strict=True)}
            data.append(InspectResult(index=i, id=ids[i], scores=s, thresholds=thresholds,
                                      flagged=[c for c, v in s.items() if v < thresholds[c]]))
        return Served(InspectResponse(data=data))


# --- helpers ------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*\s+|\n")


def _complete_sentences(text: str) -> tuple[str, str]:
    """(the complete sentences at the start of `text`, the rest): the holding window's split."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return (text[:ends[-1]], text[ends[-1]:]) if ends else ("", text)


def _unreleased(released: str, final: str) -> str:
    """What the client still needs after `released`: the final text's continuation when it extends
    the released text, else the whole final text after a blank line (released text cannot be unsent)."""
    if final.startswith(released):
        return final[len(released):]
    if final.startswith(released.rstrip()):
        return final[len(released.rstrip()):].lstrip()
    return ("\n\n" if released else "") + final


def _role_mapped(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The chat as plain role/content dicts; `developer` (OpenAI's newer name) becomes `system`,
    which every OpenAI-compatible server and chat template knows."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in req.messages]


async def _aiter(items) -> AsyncIterator:
    for item in items:
        yield item


def _usage(prompt_tokens: int, answers: Sequence[BaseAnswer]) -> UsageInfo:
    completion = sum(a.completion_tokens for a in answers)
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion,
                     total_tokens=prompt_tokens + completion)


def _one_choice(info: AlignersInfo, index: int) -> dict[str, Any]:
    """`info` with only choice `index` (what a streamed choice's finish chunk carries)."""
    data = info.model_dump(exclude_none=True)
    data["choices"] = [c for c in data["choices"] if c["index"] == index]
    return data
