"""The one small protocol every text generator speaks (teacher, base model, aligners, eval).

A request is either a chat (`messages`) or a raw completion (`prompt`); `adapter` names a LoRA
adapter the backend has loaded (None = the base model). Backends return text plus token counts
so callers can report throughput and cost without knowing which backend ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(BaseModel):
    """Sampling knobs shared by every backend (OpenAI names, so they pass through unchanged)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 means greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, le=2.0,
        description="vLLM/transformers extension: > 1 discourages repeated tokens (small models "
        "decoding greedily loop); 1 = off, and then it is not sent to OpenAI-compatible servers.",
    )


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    adapter: str | None = Field(default=None, description="LoRA adapter name; None = base model.")
    params: SamplingParams = Field(default_factory=SamplingParams)

    @model_validator(mode="after")
    def _exactly_one_input(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of `messages` (chat) or `prompt` (completion)")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` must not be empty")
        return self

    @classmethod
    def chat(cls, user: str, system: str | None = None, **kwargs) -> GenerationRequest:
        msgs = [ChatMessage(role="system", content=system)] if system else []
        msgs.append(ChatMessage(role="user", content=user))
        return cls(messages=msgs, **kwargs)


class Generation(BaseModel):
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "stop"


@dataclass
class TokenStates:
    """A generated sequence's tokens (request and answer, no padding, no end-of-sequence token) and
    what the model computed for them at some decoder layers: `states[k]` = the output of layer k
    (counted from 1, before any final norm), one row per token. Readers of the same model take
    them instead of running it again (inspectors/shared_reading.py)."""

    ids: list[int]
    states: dict[int, Any]  # layer -> (len(ids), hidden) tensor


class BackendError(RuntimeError):
    """A generation failed for a reason the caller should read (bad request, server down...)."""


class PromptTooLong(BackendError):
    """The prompt plus `max_tokens` does not fit the model's context: refused before generating
    (a local model would otherwise run for minutes on positions it was never trained on)."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context: int):
        self.prompt_tokens, self.max_tokens, self.context = prompt_tokens, max_tokens, context
        super().__init__(
            f"the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}, but the model's "
            f"context holds {context} tokens: shorten the input or lower max_tokens"
        )


class GenerationCancelled(BackendError):
    """A generation stopped early because its caller set the cancel event (timeout, client gone)."""


_cancel = threading.local()


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[None]:
    """Generations run by this thread inside the block stop between tokens once `event` is set
    and raise GenerationCancelled. A thread-local, so the squad, the aligners and the base model
    need no extra argument: whoever runs the work in a thread owns its cancel switch."""
    previous = getattr(_cancel, "event", None)
    _cancel.event = event
    try:
        yield
    finally:
        _cancel.event = previous


def cancel_event() -> threading.Event | None:
    """The cancel event of the enclosing `cancel_scope` in this thread, if any."""
    return getattr(_cancel, "event", None)


def raise_if_cancelled() -> None:
    event = cancel_event()
    if event is not None and event.is_set():
        raise GenerationCancelled("generation cancelled: its request timed out or its client went away")


class Backend(ABC):
    """Batched generation. Subclasses implement `generate`; async callers get a thread offload
    for free unless the backend is natively async (the HTTP backend overrides `agenerate`)."""

    name: str = "backend"

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Generate one completion per request, in order."""

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return await asyncio.to_thread(self.generate, list(requests))

    @property
    def states_model(self) -> tuple[str, str, str] | None:
        """(model name, dtype, device) whose states `generate_with_states` gives; None: it gives none."""
        return None

    def generate_with_states(self, requests: Sequence[GenerationRequest],
                             layers: Sequence[int]) -> tuple[list[Generation], list[TokenStates | None]]:
        """`generate`, and per answer its `layers`' states from the same run where the backend
        can keep them (None where it cannot: by default everywhere)."""
        return self.generate(requests), [None] * len(requests)

    def adapters(self) -> list[str]:
        """Names of the LoRA adapters this backend can route to."""
        return []

    def load_adapter(self, name: str, location: str) -> None:
        """Make adapter `name` routable: a local adapter folder, or a served model name."""
        raise BackendError(f"backend {self.name!r} cannot load adapters")

    def close(self) -> None:
        """Release connections or engines; a no-op by default."""


BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(type_name: str):
    """Class decorator: make a backend buildable from a config whose `type:` is `type_name`."""

    def deco(cls):
        BACKENDS[type_name] = cls
        return cls

    return deco
