"""Wire format of the OpenAI-compatible server: pydantic models mirroring OpenAI's schema.

Like vLLM's `entrypoints/openai/protocol.py`: requests are validated here, at the boundary, and
everything a standard client may send either maps to a field below or is refused with a 400 that
names the parameter. Our additions travel in one extra field, `aligners`, in both directions:

- request: `"aligners": {"return_original": true, "stream_mode": "live"}` (`AlignersOptions`);
  the official `openai` client sends it with `extra_body={"aligners": {...}}`.
- response: a top-level `aligners` object (`AlignersInfo`) with per-choice scores before/after,
  the aligners applied and (opt-in) the original text. Standard clients ignore unknown fields.

Errors are `{"error": {"message", "type", "param", "code"}}` (`ErrorResponse`), raised from the
serving layer as `ServingError` and rendered by the router.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# --- errors ----------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ServingError(Exception):
    """An error with its HTTP status and OpenAI-style body; raised anywhere below the router."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ServingError:
    return ServingError(400, message, param=param, code=code)


# --- request pieces ----------------------------------------------------------------------------


class _Request(BaseModel):
    """Unknown parameters are errors, as on api.openai.com ("Unrecognized request argument"), and
    types are strict: `"stream": "yes"` or `"max_tokens": "5"` is a 400, not a silent coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


Mode = Literal["enforce", "shadow", "off"]


class PolicyOptions(_Request):
    """How the squad treats one request: a named policy in the server config, or per request."""

    mode: Mode | None = Field(
        default=None, description="enforce (default): return the corrected answer. shadow: return the "
        "original, with the verdicts and what the squad would have written. off: no squad at all.")
    criteria: list[str] | None = Field(default=None, description="Only these criteria run (default: all).")
    thresholds: dict[str, Annotated[float, Field(gt=0, lt=1)]] | None = Field(
        default=None, description="Per-criterion thresholds on P(aligned), replacing the inspectors' own.")


class AlignersOptions(PolicyOptions):
    """Our extension, sent as the extra body field `aligners`."""

    policy: str | None = Field(default=None, description="A named policy of the server config (or the "
                               "`x-aligners-policy` header); the fields above override it.")

    return_original: bool = Field(
        default=False, description="Include each choice's uncorrected base text in `aligners`."
    )
    stream_mode: Literal["buffered", "live", "sentences"] = Field(
        default="buffered",
        description="buffered: stream the corrected text after the squad ran. live: stream the "
        "base tokens as they come, then a final event with the correction. sentences: release the "
        "base answer one sentence at a time once the answer so far passes the inspectors; on a "
        "flag, stop the base and stream the aligners' rewrite instead.",
    )
    details: bool = Field(default=True, description="Include per-choice squad details.")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class RequestMessage(BaseModel):
    """A chat message; content is a string or a list of text parts (images are refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, v: str | list[dict[str, Any]]) -> str:
        if isinstance(v, str):
            return v
        texts = []
        for part in v:
            if part.get("type") != "text":
                raise ValueError(f"only text content parts are supported, got type {part.get('type')!r}")
            texts.append(TextPart.model_validate(part).text)
        return "".join(texts)

    @property
    def text(self) -> str:
        assert isinstance(self.content, str)  # normalized by the validator
        return self.content


class StreamOptions(_Request):
    include_usage: bool = False


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def _is_default(value: Any, default: Any) -> bool:
    return value is None or value == default


# (field, default that is harmless, why it cannot be honoured)
_UNSUPPORTED: list[tuple[str, Any, str]] = [
    ("logprobs", False, "log-probabilities of a corrected text do not exist"),
    ("top_logprobs", 0, "log-probabilities of a corrected text do not exist"),
    ("tools", [], "tool calls cannot be inspected or corrected"),
    ("tool_choice", "none", "tool calls cannot be inspected or corrected"),
    ("functions", [], "function calls cannot be inspected or corrected"),
    ("function_call", "none", "function calls cannot be inspected or corrected"),
    ("parallel_tool_calls", None, "tool calls cannot be inspected or corrected"),
    ("response_format", {"type": "text"}, "a rewritten answer cannot keep a structured format"),
    ("logit_bias", {}, "token biases are not forwarded"),
    ("presence_penalty", 0, "penalties are not forwarded"),
    ("frequency_penalty", 0, "penalties are not forwarded"),
    ("echo", False, "echo is not supported"),
    ("suffix", None, "suffix (insertion) is not supported"),
    ("best_of", 1, "best_of is not supported; use n"),
]


class _Generate(_Request):
    """Fields shared by chat and completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX, description="What torch and vLLM accept.")
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0, description="vLLM extension")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    aligners: AlignersOptions = Field(default_factory=AlignersOptions)
    # accepted so they can be refused with a clear message (see `unsupported`)
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str]:
        """One list; how many and how long is the server's call (`max_stop_*`)."""
        return [v] if isinstance(v, str) else list(v or [])

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    def unsupported(self) -> ServingError | None:
        """The first parameter set to something this server cannot honour, as a 400."""
        for name, default, why in _UNSUPPORTED:
            if name in type(self).model_fields and not _is_default(getattr(self, name), default):
                return ServingError(
                    400, f"parameter `{name}` is not supported by the aligners server: {why}",
                    param=name, code="unsupported_parameter",
                )
        return None


class ChatCompletionRequest(_Generate):
    messages: list[RequestMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, v: list[RequestMessage]) -> list[RequestMessage]:
        if not v:
            raise ValueError("must contain at least one message")
        return v

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def inspected_prompt(self) -> str:
        """What inspectors and aligners see as the question: the last user message."""
        users = [m.text for m in self.messages if m.role == "user"]
        return users[-1] if users else self.messages[-1].text


class CompletionRequest(_Generate):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, v: Any) -> Any:
        if isinstance(v, list) and v and not all(isinstance(p, str) for p in v):
            raise ValueError("token-id prompts are not supported: send the prompt as text")
        if isinstance(v, list) and not v:
            raise ValueError("`prompt` must not be an empty list")
        return v

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ReloadRequest(_Request):
    """Body of POST /admin/reload: which squad recipe to load (default: the server's own)."""

    squad: str | None = Field(default=None, description="Squad recipe path; default: the configured one.")


class SquadRequest(_Request):
    """Body of /v1/aligners/correct and /v1/aligners/inspect: one pair, or lists of them.
    A single prompt with a list of answers scores every answer against that prompt."""

    prompt: str | list[str]
    answer: str | list[str]
    id: str | list[str | None] | None = None

    def pairs(self) -> tuple[list[str], list[str], list[str | None]]:
        answers = [self.answer] if isinstance(self.answer, str) else list(self.answer)
        prompts = [self.prompt] * len(answers) if isinstance(self.prompt, str) else list(self.prompt)
        if len(prompts) != len(answers):
            raise invalid(f"{len(prompts)} prompts but {len(answers)} answers: give one answer per prompt", "answer")
        if not answers:
            raise invalid("`answer` must not be empty", "answer")
        ids = self.id if isinstance(self.id, list) else [self.id] * len(answers)
        if len(ids) != len(answers):
            raise invalid(f"{len(ids)} ids but {len(answers)} answers", "id")
        return prompts, answers, ids


# --- parsing -------------------------------------------------------------------------------------


def parse_body(model: type[BaseModel], raw: bytes, max_depth: int = 32) -> Any:
    """Raw request body → validated model, or a 400 ServingError naming the problem."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise invalid(f"request body nests deeper than this server's limit of {max_depth}",
                      code="json_too_deep") from None
    if not isinstance(data, dict):
        raise invalid(f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    problem = check_json_tree(data, max_depth)
    if problem is not None:
        raise problem
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc) from None
    bad = req.unsupported() if hasattr(req, "unsupported") else None
    if bad is not None:
        raise bad
    return req


def check_json_tree(data: Any, max_depth: int) -> ServingError | None:
    """The first part of a parsed body that no model can take, as a 400: nesting deeper than
    `max_depth`, or a string holding a lone UTF-16 surrogate (JSON allows `"\\ud800"`, but no
    tokenizer, log or response can encode it). Iterative: depth cannot exhaust the stack."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        param = ".".join(map(str, path)) or None
        if isinstance(node, dict | list) and depth > max_depth:
            return invalid(f"`{param}` nests deeper than this server's limit of {max_depth} levels",
                           param, "json_too_deep")
        if isinstance(node, dict):
            for key, value in node.items():
                if not _encodable(key):
                    return invalid(f"a key in `{param or 'the body'}` is not valid Unicode (a lone surrogate)",
                                   param, "invalid_unicode")
                stack.append((value, (*path, key), depth + 1))
        elif isinstance(node, list):
            stack.extend((value, (*path, i), depth + 1) for i, value in enumerate(node))
        elif isinstance(node, str) and not _encodable(node):
            return invalid(f"`{param}` is not valid Unicode: it holds a lone surrogate (such as \\ud800) that "
                           "UTF-8 cannot encode", param, "invalid_unicode")
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_UNION_TAGS = {"str", "int", "float", "bool", "none"}  # pydantic's names for union branches in `loc`


def _explain(exc: ValidationError) -> ServingError:
    """The first validation problem as a 400: param path, pydantic's reason, the bad value."""
    errors = exc.errors()
    first = errors[0]  # a union reports one error per branch; its branch tags leave the path
    loc = [p for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    param = ".".join(str(p) for p in loc) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        return invalid(f"unrecognized request parameter `{param}`", param, "unknown_parameter")
    if kind == "missing":
        return invalid(f"missing required parameter `{param}`", param, "missing_required_parameter")
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {json.dumps(got)[:80]})"
    more = f"; and {len(errors) - 1} more problem(s)" if len({e['loc'][:1] for e in errors}) > 1 else ""
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value"
    return invalid(f"`{param}`: {msg}{shown}{more}", param, code)


# --- responses -----------------------------------------------------------------------------------


class UsageInfo(BaseModel):
    """Token counts of the base generation (aligner rewrites are not billed as completion)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ScoreSet(BaseModel):
    before: dict[str, float]
    after: dict[str, float]
    thresholds: dict[str, float]


class StepInfo(BaseModel):
    criterion: str
    score_before: float
    score_after: float
    accepted: bool
    reason: str = ""


class ChoiceDetails(BaseModel):
    """What the squad did to one choice."""

    index: int
    changed: bool
    flagged: list[str] = Field(description="Criteria below threshold before correction.")
    applied: list[str] = Field(description="Aligners whose rewrite was kept, in order.")
    scores: ScoreSet | None = None
    steps: list[StepInfo] = Field(default_factory=list)
    original: str | None = Field(default=None, description="Base text; only with return_original.")
    # live streaming: the corrected text and whether it replaces what was streamed;
    # shadow mode: the text the squad would have returned
    corrected: str | None = None
    replaces_streamed: bool | None = None


class AlignersInfo(BaseModel):
    """The extra top-level `aligners` field of every completion response."""

    squad: bool = Field(description="False in passthrough mode (no squad configured).")
    mode: Mode = "enforce"
    changed: bool = False
    would_change: bool | None = Field(default=None, description="shadow mode: the squad would have changed "
                                      "an answer (see each choice's `corrected`).")
    applied: list[str] = Field(default_factory=list, description="Union over choices.")
    stream_mode: Literal["buffered", "live", "sentences"] | None = None
    choices: list[ChoiceDetails] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)


def _now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    aligners: AlignersInfo | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    aligners: AlignersInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "aligners"
    aligners: dict[str, Any] = Field(default_factory=dict, description="role: base | policy | aligner; criterion, threshold")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class InspectResult(BaseModel):
    index: int
    id: str | None = None
    scores: dict[str, float]
    thresholds: dict[str, float]
    flagged: list[str]


class InspectResponse(BaseModel):
    object: Literal["aligners.inspection"] = "aligners.inspection"
    data: list[InspectResult]


class CorrectResponse(BaseModel):
    object: Literal["aligners.correction"] = "aligners.correction"
    data: list[dict[str, Any]] = Field(description="serialized aligners.schema.Correction records")


# --- streaming -----------------------------------------------------------------------------------


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: <json>\\n\\n` (or the literal `[DONE]`)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


def chat_chunk(cid: str, created: int, model: str, index: int, delta: dict[str, Any],
               finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """A `chat.completion.chunk` with one choice; `extra` adds top-level fields (`aligners`)."""
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [choice], **extra}


def completion_chunk(cid: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [choice], **extra}


def usage_chunk(cid: str, created: int, model: str, obj: str, usage: UsageInfo) -> dict[str, Any]:
    """The extra last chunk of `stream_options.include_usage` (empty `choices`)."""
    return {"id": cid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage.model_dump()}
