"""One pass of a causal LM for every inspector that reads the same answers.

Why: the starter squad's three inspectors all read SmolLM2's hidden states over the same
chat-rendered (request, answer): the harmless probe layers 12–30 of the first 256 answer tokens,
the no-pii and polite probes layer 15, their span taggers layer 21 of up to 2,048 tokens, and each
ran its own pass, so one answer cost about three and a half passes of the model. Under causal
attention a token's states depend only on the tokens before it: one pass over the longest
truncation, to the deepest layer anyone reads, holds every reader's states (a shorter truncation
is a prefix, the request gate's state is the last token of the request). Inside
`shared_reading(readings)` the readers that `readings` cover are served from that one pass;
outside it (training, one inspector alone) each reads as before.

When the squad's own base model wrote the answers (`Squad.generate`, the proxy's local base) and
the inspectors read that same model, the base keeps their layers while generating
(`Backend.generate_with_states`) and offers them (`Offered`): no reader runs the model at all for
an answer whose tokens match what was generated.

What one pass keeps is the union of the readers' layers for each answer, until the scope ends: a
caller scores a bounded batch per scope (the squad: its `inspect_batch_size`). The results match
separate passes up to float rounding (batched matrix products of other shapes), checked by
tests/test_shared_reading.py.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from aligners.backends.base import TokenStates
from inspectors.backbone import (
    chat_head,
    encode_pairs,
    get_backbone,
    hidden_state_batches,
    padded_batch,
)
from inspectors.embed_logreg import token_batches


@dataclass(frozen=True)
class Reading:
    """What one reader reads of a causal LM over chat-rendered (request, answer) pairs.

    `layers` count decoder layers from 1 (hidden state k = the output of layer k)."""

    encoder: str
    layers: tuple[int, ...]
    max_prompt_tokens: int
    max_answer_tokens: int
    dtype: str = "float32"
    device: str = "cpu"

    @property
    def model(self) -> tuple:
        """Readers with the same model and request rendering can share one pass."""
        return self.encoder, self.dtype, self.device, self.max_prompt_tokens

    def backbone(self):
        """(model, tokenizer): the shared pass's model inside a scope that covers this reading
        (no shallower copy is loaded), else one cut to this reading's deepest layer."""
        scope = _SCOPE.get()
        covered = scope is not None and scope.covers(self)
        depth = max(scope.merged[self.model].layers if covered else self.layers)
        return get_backbone(self.encoder, depth, self.device, self.dtype)


@dataclass
class _Kept:
    ids: tuple[int, ...]
    start: int  # where the answer begins
    states: dict  # layer -> (tokens, hidden) tensor


class _SharedPass:
    """The merged reading per model and the states it produced for each pair so far."""

    def __init__(self, readings: Sequence[Reading], offered: Offered | None = None):
        self.offered = offered
        self.merged: dict[tuple, Reading] = {}
        for r in readings:
            held = self.merged.get(r.model)
            self.merged[r.model] = r if held is None else replace(
                held, layers=tuple(sorted(set(held.layers) | set(r.layers))),
                max_answer_tokens=max(held.max_answer_tokens, r.max_answer_tokens))
        self.pairs: dict[tuple, _Kept] = {}
        self.heads: dict[tuple, _Kept] = {}  # (model, prompt) -> a kept pair of that request

    def covers(self, reading: Reading) -> bool:
        held = self.merged.get(reading.model)
        return (held is not None and set(reading.layers) <= set(held.layers)
                and reading.max_answer_tokens <= held.max_answer_tokens)

    def fill(self, reading: Reading, pairs: Sequence[tuple[str, str]], batch_tokens: int, description: str) -> None:
        """Read the pairs not yet kept, once, as the merged reading of `reading`'s model."""
        merged = self.merged[reading.model]
        todo = list(dict.fromkeys(p for p in pairs if (merged.model, *p) not in self.pairs))
        if not todo:
            return
        body, tok = merged.backbone()
        ids, starts = encode_pairs(tok, [p for p, _ in todo], [a for _, a in todo],
                                   merged.max_prompt_tokens, merged.max_answer_tokens)
        offers = self.offered.states if self.offered is not None and self.offered.model == merged.model[:3] else {}
        read = []
        for i, pair in enumerate(todo):
            offer = offers.get(pair)
            if (offer is not None and tuple(offer.ids[: len(ids[i])]) == tuple(ids[i])
                    and set(merged.layers) <= set(offer.states)):
                self._keep(merged, pair, _Kept(tuple(ids[i]), starts[i],
                                               {k: offer.states[k][: len(ids[i])] for k in merged.layers}))
            else:
                read.append(i)
        if not read:
            return
        for batch, states, _, _ in hidden_state_batches(body, tok, [ids[i] for i in read], [starts[i] for i in read],
                                                        batch_tokens, description):
            for row, j in enumerate(batch):
                i = read[j]
                self._keep(merged, todo[i], _Kept(tuple(ids[i]), starts[i],
                                                  {k: states[k][row, : len(ids[i])].clone() for k in merged.layers}))

    def _keep(self, merged: Reading, pair: tuple[str, str], kept: _Kept) -> None:
        self.pairs[(merged.model, *pair)] = kept
        self.heads.setdefault((merged.model, pair[0]), kept)


@dataclass(frozen=True)
class Offered:
    """States a generator kept while it wrote the answers (`Backend.generate_with_states`): for
    `model` = (name, dtype, device), each (prompt, answer)'s TokenStates. A reader takes them where
    its tokens are a prefix of theirs (the same rendering of the request, the answer re-tokenized
    as it was generated), and reads the rest itself."""

    model: tuple[str, str, str]
    states: Mapping[tuple[str, str], TokenStates]


_SCOPE: contextvars.ContextVar[_SharedPass | None] = contextvars.ContextVar("shared_reading", default=None)


@contextlib.contextmanager
def shared_reading(readings: Sequence[Reading], offered: Offered | None = None) -> Iterator[None]:
    """Within this block, readers covered by `readings` share one pass per pair (module docstring),
    or none where `offered` holds the pair's states already."""
    token = _SCOPE.set(_SharedPass(readings, offered) if readings else None)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def pair_state_batches(reading: Reading, prompts: Sequence[str], answers: Sequence[str], batch_tokens: int,
                       description: str):
    """(batch indices, states, attention mask, answer-token mask) per batch of the pairs, as
    `backbone.hidden_state_batches` yields them (`states[k]` for each k in `reading.layers`), read
    by this reading's own pass or served from the shared one."""
    body, tok = reading.backbone()
    ids, starts = encode_pairs(tok, prompts, answers, reading.max_prompt_tokens, reading.max_answer_tokens)
    scope = _SCOPE.get()
    if scope is None or not scope.covers(reading):
        yield from hidden_state_batches(body, tok, ids, starts, batch_tokens, description)
        return
    pairs = list(zip(prompts, answers, strict=True))
    scope.fill(reading, pairs, batch_tokens, description)
    kept = [scope.pairs[(reading.model, *p)] for p in pairs]
    if any(k.ids[: len(x)] != tuple(x) for k, x in zip(kept, ids, strict=True)):  # never expected: read it alone
        yield from hidden_state_batches(body, tok, ids, starts, batch_tokens, description)
        return
    yield from _served(kept, ids, starts, reading.layers, tok, batch_tokens)


def _served(kept: list[_Kept], ids: list[list[int]], starts: list[int], layers: Sequence[int], tok,
            batch_tokens: int):
    import torch

    for batch in token_batches([len(x) for x in ids], batch_tokens):
        _, mask, answer = padded_batch(tok, ids, starts, batch)
        states = {}
        for k in layers:
            width = kept[batch[0]].states[k].shape[-1]
            block = torch.zeros((len(batch), mask.shape[1], width), dtype=kept[batch[0]].states[k].dtype)
            for row, i in enumerate(batch):
                block[row, : len(ids[i])] = kept[i].states[k][: len(ids[i])]
            states[k] = block
        yield batch, states, mask, answer


def request_state_rows(reading: Reading, prompts: Sequence[str], batch_tokens: int, description: str) -> np.ndarray:
    """(n, hidden × layers): the states at each request's last token (the end of the chat header,
    where the model has read the request and not yet answered), from a shared pass that read an
    answer to the same request, else from a pass over the request alone."""
    import torch

    body, tok = reading.backbone()
    heads = [chat_head(tok, p, reading.max_prompt_tokens) for p in prompts]
    scope = _SCOPE.get()
    rows: dict[int, np.ndarray] = {}
    if scope is not None and scope.covers(reading):
        for i, (prompt, head) in enumerate(zip(prompts, heads, strict=True)):
            kept = scope.heads.get((reading.model, prompt))
            if kept is not None and kept.ids[: kept.start] == tuple(head):
                rows[i] = np.hstack([kept.states[k][kept.start - 1].float().cpu().numpy() for k in reading.layers])
    todo = [i for i in range(len(prompts)) if i not in rows]
    if todo:
        ids = [heads[i] for i in todo]
        for batch, states, mask, _ in hidden_state_batches(body, tok, ids, [len(x) for x in ids], batch_tokens,
                                                           description):
            last = (mask.sum(1) - 1).to(body.device)
            at = torch.arange(len(batch), device=body.device)
            block = np.hstack([states[k][at, last].float().cpu().numpy() for k in reading.layers])
            for row, j in enumerate(batch):
                rows[todo[j]] = block[row]
    width = body.config.hidden_size * len(reading.layers)
    return np.stack([rows[i] for i in range(len(prompts))]) if prompts else np.zeros((0, width), dtype=np.float32)
