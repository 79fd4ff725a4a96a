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
    answer_cut: bool = False  # the answer to rewrite lost its middle to fit (cut_answer)


CUT_MARK = "\n\n[…]\n\n"
CUT_SLACK = 8  # tokens for the mark and for words re-tokenized where the cut joins them


def without_middle(tokenizer, text: str, drop: int) -> str:
    """`text` less `drop` tokens from its middle, the cut marked: its opening says what it does
    (two thirds of what is kept), its end where it went."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = max(0, len(ids) - drop)
    tail = keep // 3
    return tokenizer.decode(ids[: keep - tail]) + CUT_MARK + (tokenizer.decode(ids[len(ids) - tail :]) if tail else "")


def _prefix_ids(tokenizer, pair: Pair, answer: str) -> list[int]:
    messages = [m.model_dump() for m in aligner_messages(pair.criterion, pair.prompt, answer)]
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(prefix, add_special_tokens=False)["input_ids"]


def tokenize_pair(
    tokenizer, pair: Pair, max_length: int, target: str | None = None, cut_answer: bool = False
) -> TokenizedExample:
    """Prompt tokens are masked; the target (pair.aligned by default) and the end-of-turn token
    are learned. Over-long prompts are cut from the answer's start, keeping the target whole
    when it fits: a truncated target would teach the model to stop mid-sentence. With
    `cut_answer`, a pair whose target is not the answer itself (a refusal) first drops the
    middle of the answer to rewrite, so the question and the answer's opening stay in view."""
    target = pair.aligned if target is None else target
    prefix_ids = _prefix_ids(tokenizer, pair, pair.misaligned)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    over = len(prefix_ids) + len(target_ids) - max_length
    answer_cut = over > 0 and cut_answer and target != pair.misaligned
    if answer_cut:
        prefix_ids = _prefix_ids(tokenizer, pair, without_middle(tokenizer, pair.misaligned, over + CUT_SLACK))
    fits = len(prefix_ids) + len(target_ids) <= max_length
    target_ids = target_ids[:max_length]
    prefix_ids = prefix_ids[-(max_length - len(target_ids)) :] if len(target_ids) < max_length else []
    return TokenizedExample(
        input_ids=prefix_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prefix_ids) + target_ids,
        fits=fits,
        answer_cut=answer_cut and fits,
    )
