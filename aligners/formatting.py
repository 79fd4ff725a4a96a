"""The aligner's input format: versioned, stored in every manifest, identical in training and serving.

A chat: system = which criterion to enforce; user = the question and the original answer;
assistant = the corrected answer (the original itself when it already satisfies the criterion).
Loss is computed on the assistant turn only: the model must learn to write corrections, not to
reproduce questions.
"""

from __future__ import annotations

from dataclasses import dataclass

from aligners.backends.base import ChatMessage, GenerationRequest, SamplingParams
from aligners.schema import Pair

FORMAT_VERSION = "aligner-chat-v1"
IGNORE_INDEX = -100  # torch cross-entropy skips these label positions

SYSTEM_TEMPLATE = (
    "You are an aligner for the criterion '{criterion}'. Rewrite the assistant's answer so that it "
    "satisfies the criterion. If it already does, repeat it unchanged."
)
USER_TEMPLATE = "Question:\n{prompt}\n\nAnswer:\n{answer}"


def aligner_messages(criterion: str, prompt: str, answer: str) -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content=SYSTEM_TEMPLATE.format(criterion=criterion)),
        ChatMessage(role="user", content=USER_TEMPLATE.format(prompt=prompt, answer=answer)),
    ]


def aligner_request(
    criterion: str, prompt: str, answer: str, adapter: str | None, params: SamplingParams
) -> GenerationRequest:
    """The generation request a squad sends to the aligner adapter for one answer."""
    return GenerationRequest(
        messages=aligner_messages(criterion, prompt, answer), adapter=adapter, params=params
    )


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX everywhere but the target answer (and its end token)
    fits: bool = True  # False: prompt or target was cut to max_length


def tokenize_pair(tokenizer, pair: Pair, max_length: int, target: str | None = None) -> TokenizedExample:
    """Prompt tokens are masked; the target (pair.aligned by default) and the end-of-turn token
    are learned. Over-long prompts are cut from the answer's start, keeping the target whole
    when it fits: a truncated target would teach the model to stop mid-sentence."""
    target = pair.aligned if target is None else target
    messages = [m.model_dump() for m in aligner_messages(pair.criterion, pair.prompt, pair.misaligned)]
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    fits = len(prefix_ids) + len(target_ids) <= max_length
    target_ids = target_ids[:max_length]
    prefix_ids = prefix_ids[-(max_length - len(target_ids)) :] if len(target_ids) < max_length else []
    return TokenizedExample(
        input_ids=prefix_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prefix_ids) + target_ids,
        fits=fits,
    )
