"""Record types shared by synth, inspectors, aligners and serve (field meanings: docs/data.md).

Every record is a pydantic model so that a malformed line in a JSONL file is caught at the
boundary with its line number, instead of failing deep inside training or serving code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aligners.atomic import atomic_open

SCHEMA_VERSION = 1


class Record(BaseModel):
    """Base for every record: unknown fields are errors, so typos in data files surface."""

    model_config = ConfigDict(extra="forbid")


class CriterionExample(Record):
    """One worked example inside a criterion spec, shown to teachers and humans."""

    prompt: str = Field(min_length=1)
    misaligned: str = Field(min_length=1, description="An answer that violates the criterion.")
    aligned: str = Field(min_length=1, description="The corrected answer.")


class Criterion(Record):
    """What an aligner enforces: read from `configs/criteria/<name>.yaml`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Short slug, e.g. 'harmless'.")
    description: str = Field(min_length=10, description="What violates the criterion.")
    correction: str = Field(min_length=10, description="What a good correction looks like.")
    examples: list[CriterionExample] = Field(default_factory=list)
    topics: list[str] = Field(default_factory=list, description="Optional seed topics for synth.")


class Provenance(Record):
    """Where a pair came from, so any record can be traced to the teacher and template."""

    teacher: str = Field(
        description="Teacher model id, 'human' for hand-written seed data, or 'template' for "
        "corrections written by synth.corrections."
    )
    template_version: str = Field(default="seed-v1")
    seed: int | None = None
    answer_id: str | None = Field(default=None, description="The real answer a pair corrects.")
    answer_model: str | None = Field(default=None, description="Who wrote that answer.")
    label_by: str | None = Field(default=None, description="Who labelled it: 'hand' or a rule.")


class Pair(Record):
    """A (misaligned, aligned) answer pair for one prompt and criterion.

    `needs_correction=False` marks a benign prompt whose answer is already good: then
    `misaligned == aligned` and the pair teaches aligners to keep good answers and inspectors
    not to flag them.
    """

    id: str = Field(min_length=1)
    criterion: str = Field(min_length=1)
    topic: str = Field(min_length=1, description="Topic used for topic-disjoint splits.")
    prompt: str = Field(min_length=1)
    misaligned: str = Field(min_length=1)
    critique: str = ""
    aligned: str = Field(min_length=1)
    needs_correction: bool = True
    source: Provenance

    @model_validator(mode="after")
    def _keep_as_is_pairs_are_identical(self) -> Pair:
        if not self.needs_correction and self.misaligned != self.aligned:
            raise ValueError("a pair with needs_correction=false must have misaligned == aligned")
        return self


PROMPT_STYLES = (
    "direct", "polite", "roleplay", "fiction", "hypothetical", "research", "step-by-step",
    "code", "essay", "long-context", "casual",
)


class PromptRecord(Record):
    """One request to answer: a line of the shipped prompt bank (synth/bank/) or of a user's
    prompt file. Only `prompt` is required in a user's file; the rest feeds splits and reports.

    `intent` says what simply complying would do under `criterion`: "harmful" = a compliant
    answer violates it (harmful help, a private person's data, a rude reply), "benign" = a good
    assistant just answers. `sensitive` marks benign requests that only sound risky.
    """

    id: str = Field(default="", description="Stable id; derived from the prompt when empty.")
    prompt: str = Field(min_length=1)
    criterion: str = ""
    intent: Literal["harmful", "benign"] | None = None
    category: str = "user"
    topic: str = "user"
    style: Literal[PROMPT_STYLES] | None = None  # type: ignore[valid-type]
    sensitive: bool = False
    split: Literal["train", "dev"] = Field(
        default="train", description="'dev' topics are held out of every training split."
    )


class AnswerRecord(Record):
    """A real model's answer to a PromptRecord under one sampling variant, with its label.

    `label` follows the documented rule (docs/data.md): aligned unless the answer violates
    the criterion; `label_by` says who set it — the rule's detector ("rule:<version>") or a
    person ("hand") — so evaluation can use hand labels only.
    """

    id: str = Field(min_length=1, description="'<prompt id>:<variant>'.")
    prompt_id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    answer: str
    answer_model: str = Field(min_length=1, description="Who answered: model id or 'human'.")
    variant: str = Field(min_length=1, description="Sampling variant name, e.g. 'greedy'.")
    finish_reason: Literal["stop", "length"] = "stop"
    criterion: str = ""
    intent: Literal["harmful", "benign"] | None = None
    category: str = "user"
    topic: str = "user"
    style: str | None = None
    sensitive: bool = False
    split: Literal["train", "dev"] = "train"
    label: Literal["aligned", "misaligned"] | None = None
    label_by: str | None = None
    note: str = ""


class HandLabel(Record):
    """A person's label for one harvested answer, kept beside the harvest (hand-labels.jsonl) so
    rebuilding answers.jsonl from the generation cache keeps it and the rule's label is only a
    fallback."""

    id: str = Field(min_length=1, description="The AnswerRecord id: '<prompt id>:<variant>'.")
    label: Literal["aligned", "misaligned"]
    note: str = Field(min_length=1, description="Why, about this very answer.")


class WrittenCorrection(Record):
    """An answer rewritten by hand, paragraph by paragraph, for a content-keeping criterion.

    `aligned[i]` rewrites `misaligned[i]` (a copy where nothing needs fixing), so the pairs cut
    from it (synth.paragraph_pairs) are the units a squad sends its aligner. `answer_id` names
    the real answer it corrects, when it corrects one rather than an answer written with it.
    """

    id: str = Field(min_length=1)
    criterion: str = Field(min_length=1)
    prompt_id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    category: str = "user"
    topic: str = Field(min_length=1)
    split: Literal["train", "dev"] = "train"
    answer_id: str | None = None
    misaligned: list[str] = Field(min_length=1)
    aligned: list[str] = Field(min_length=1)
    written_by: str = Field(min_length=1, description="Who wrote the answer and its correction.")

    @model_validator(mode="after")
    def _one_rewrite_per_paragraph(self) -> WrittenCorrection:
        if len(self.misaligned) != len(self.aligned):
            raise ValueError(f"{len(self.misaligned)} paragraphs but {len(self.aligned)} rewrites")
        if self.misaligned == self.aligned:
            raise ValueError("no paragraph is corrected")
        return self


class MarkedSpan(Record):
    """One piece of an answer a person marked: every occurrence of `text` in the answer."""

    text: str = Field(min_length=1)
    type: str = Field(default="SPAN", pattern=r"^[A-Z][A-Z_]*$",
                      description="What it is (PHONE, NAME...); a replacing tagger writes its placeholder.")


class SpanAnnotation(Record):
    """A real answer with the spans a person marked for a criterion: what a span tagger learns
    (inspectors/spans.py). An answer with no spans teaches the tagger to leave it alone."""

    id: str = Field(min_length=1, description="The answer's id (AnswerRecord or WrittenCorrection).")
    criterion: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    split: Literal["train", "dev"] = "train"
    spans: list[MarkedSpan] = Field(default_factory=list)
    fixes: bool = Field(description="Whether replacing (or deleting) the spans fixes the answer, "
                        "by the marker's reading; false where the whole answer is the problem.")
    note: str = ""
    marked_by: str = Field(min_length=1)

    @model_validator(mode="after")
    def _spans_occur(self) -> SpanAnnotation:
        missing = [s.text for s in self.spans if s.text not in self.answer]
        if missing:
            raise ValueError(f"marked text not in the answer: {missing[0]!r}")
        return self

    def char_spans(self) -> list[tuple[int, int, str]]:
        """(start, end, type) of every occurrence of every marked text, longest first where
        two overlap, sorted by start."""
        taken: list[tuple[int, int, str]] = []
        for span in sorted(self.spans, key=lambda s: -len(s.text)):
            at = self.answer.find(span.text)
            while at >= 0:
                end = at + len(span.text)
                if all(end <= a or at >= b for a, b, _ in taken):
                    taken.append((at, end, span.type))
                at = self.answer.find(span.text, at + 1)
        return sorted(taken)


class Verdict(Record):
    """One inspector's opinion of one answer: score = P(aligned)."""

    criterion: str
    score: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)

    @property
    def flagged(self) -> bool:
        return self.score < self.threshold


class TraceStep(Record):
    """One aligner application inside a squad run."""

    criterion: str
    score_before: float
    score_after: float
    accepted: bool
    seconds: float = 0.0
    reason: str = ""


class Trace(Record):
    """What the squad did to one answer and why."""

    initial: list[Verdict] = Field(default_factory=list)
    steps: list[TraceStep] = Field(default_factory=list)
    final: list[Verdict] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)


class Correction(Record):
    """The squad's output for one (prompt, answer)."""

    id: str | None = None
    prompt: str
    original: str
    corrected: str
    changed: bool
    trace: Trace = Field(default_factory=Trace)


class RecordError(ValueError):
    """A malformed record, with the file and line that holds it."""

    def __init__(self, path: Path | str, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{path}:{line}: {reason}")


R = TypeVar("R", bound=BaseModel)


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<record>"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def iter_json_objects(path: Path | str) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, object, None) per JSON-object line, or (line number, None, reason); blank
    lines are skipped. The one place that turns a JSONL file into numbered objects or reasons."""
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(data, dict):
                yield lineno, None, f"expected a JSON object, got {type(data).__name__}"
            else:
                yield lineno, data, None


def iter_jsonl(path: Path | str, model: type[R]) -> Iterator[R | RecordError]:
    """Yield each line parsed as `model`, or a RecordError naming the line; never raise midway.

    Callers that must not lose a batch to one bad line (synth, batch correction) route the
    errors to an errors file; strict callers use `read_jsonl`.
    """
    for lineno, data, reason in iter_json_objects(path):
        if reason is not None:
            yield RecordError(path, lineno, reason)
            continue
        try:
            yield model.model_validate(data)
        except ValidationError as exc:
            yield RecordError(path, lineno, _explain(exc))


def read_jsonl(path: Path | str, model: type[R]) -> list[R]:
    """Read every record or raise the first RecordError (file and line number in the message)."""
    out: list[R] = []
    for item in iter_jsonl(path, model):
        if isinstance(item, RecordError):
            raise item
        out.append(item)
    return out


def write_jsonl(path: Path | str, records: Iterable[BaseModel]) -> int:
    """Write records atomically (temp file + rename), so a crash never leaves half a file."""
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            fh.write(rec.model_dump_json(exclude_none=False) + "\n")
            n += 1
    return n
