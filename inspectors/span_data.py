"""What a span tagger learns from: answers with the spans people marked, and good answers with none.

The marked answers (data/spans/, `SpanAnnotation`) teach what to find; good answers to the same
kind of request (hand- or rule-labelled aligned, and the hand corrections' rewritten answers,
whose placeholders and refusals must be left alone) teach what to leave. Dev-split answers never
train: they are dropped here, as everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aligners.paragraphs import join_paragraphs
from aligners.schema import AnswerRecord, SpanAnnotation, WrittenCorrection


@dataclass
class TaggerExamples:
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    spans: list[list[tuple[int, int, str]]] = field(default_factory=list)

    def add(self, prompt: str, answer: str, spans: list[tuple[int, int, str]]) -> None:
        self.prompts.append(prompt)
        self.answers.append(answer)
        self.spans.append(spans)

    def counts(self) -> dict[str, int]:
        return {"marked_answers": sum(1 for s in self.spans if s), "clean_answers": sum(1 for s in self.spans if not s),
                "spans": sum(len(s) for s in self.spans)}


def tagger_examples(
    criterion: str, marked: Sequence[SpanAnnotation], answers: Sequence[AnswerRecord] = (),
    corrections: Sequence[WrittenCorrection] = (), max_clean: int = 600, seed: int = 0,
) -> TaggerExamples:
    """Marked training-split answers of `criterion`, then at most `max_clean` good answers (a
    seeded sample) not among them."""
    out = TaggerExamples()
    for rec in marked:
        if rec.criterion == criterion and rec.split == "train":
            out.add(rec.prompt, rec.answer, rec.char_spans())
    if not out.answers:
        raise ValueError(f"no training-split answers marked for {criterion!r}")
    seen = set(out.answers)
    clean = [(r.prompt, r.answer) for r in answers
             if r.criterion == criterion and r.split == "train" and r.label == "aligned" and r.answer.strip()]
    clean += [(c.prompt, join_paragraphs(c.aligned)) for c in corrections
              if c.criterion == criterion and c.split == "train"]
    clean = [pa for pa in dict.fromkeys(clean) if pa[1] not in seen]
    for k in np.random.default_rng(seed).permutation(len(clean))[:max_clean]:
        out.add(*clean[k], [])
    return out
