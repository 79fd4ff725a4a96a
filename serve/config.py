"""Squad recipes (`configs/squad/*.yaml`): which model answers, which inspectors and aligners
guard it, and the routing policy of the Aligners paper (2403.04224) as tunable knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from aligners.backends.base import SamplingParams
from aligners.config import BackendConfig, StrictModel, TransformersBackendConfig
from synth.refusals import refusal_concerns

PROMPTED_ALIGNER = "prompted"
CONTENT_KEEPING = ("no-pii", "polite")  # starter criteria whose fix must keep the answer's content
NON_GENERATING = ("cut", "spans")  # rewrite units that only remove or mask text: no aligner runs


class CutOptions(StrictModel):
    """How a `rewrite: cut` member cuts (serve.cutting)."""

    max_cuts: int = Field(default=6, ge=1, description="Sentences cut from one answer at most.")
    target: float | None = Field(
        default=None, ge=0, le=1,
        description="Keep cutting, while a cut raises the score, until P(aligned) reaches this "
        "(default, and at least: the threshold). A threshold set to flag few good answers is a low "
        "bar for a fix: an answer just above it often keeps a jab.",
    )
    sentences: Literal["any", "with-facts", "without-facts"] = Field(
        default="any",
        description="Which sentences may be cut, by whether they hold a checkable fact (a number, "
        "name, URL, e-mail or inline code: aligners.facts): 'without-facts' for criteria whose fix "
        "must keep every fact (polite: drop 'Seriously?', never 'Multiply by 9/5 and add 32'), "
        "'with-facts' for those whose facts are the problem (no-pii: the phone number goes, the "
        "advice around it stays).",
    )


class DeclineOptions(StrictModel):
    """When a tagging member's answer is a dossier (serve.declines). The starter no-pii values
    were chosen on the dev set's hand checks (docs/data.md)."""

    min_values: PositiveInt = Field(default=8, description="Distinct values the tagger finds (a cut sentence counts as one), at least.")
    min_sentence_share: float = Field(
        default=0.45, ge=0, le=1,
        description="Share of the answer's sentences and lines that hold a value, at least: a long "
        "answer with a few values has content of its own to keep (code, advice).",
    )


class SquadMember(StrictModel):
    """One criterion: its inspector decides, its aligner rewrites (or, `rewrite: cut`, the
    inspector itself picks sentences to cut; `rewrite: spans`, a span tagger replaces or deletes
    the pieces it finds)."""

    criterion: str
    inspector: str = Field(description="Inspector artifact folder.")
    aligner: str | None = Field(
        default=None,
        description="Aligner artifact folder (adapter + manifest), or 'prompted': the backend's base "
        "model given the aligner instruction without an adapter (the zero-shot baseline). Required "
        "unless rewrite is 'cut' or 'spans', which run no aligner.",
    )
    tagger: str | None = Field(
        default=None,
        description="Span tagger artifact folder (`aligners train-tagger`), for rewrite: spans.",
    )
    decline: DeclineOptions | None = Field(
        default=None,
        description="rewrite: spans only. An answer whose found values make a dossier of someone's "
        "private data becomes a brief decline that names the concern and the proper channel, not a "
        "page of placeholders (serve.declines). None: always mask.",
    )
    fallback_refusal: str | None = Field(
        default=None,
        description="When this member's rewrite of a flagged answer is not kept (the aligner copied "
        "it, or its rewrite still scores no better) or is kept yet still flagged by this member's "
        "inspector, and the answer does not already open with a refusal, try a brief written "
        "refusal for this concern instead (synth.refusals: 'general-harm' names no category), "
        "judged by the same accept rule against what the answer is by then. For criteria whose fix "
        "is a refusal (harmless); None: the answer stays as it was (or as rewritten).",
    )
    threshold: float | None = Field(default=None, ge=0, le=1, description="Overrides the inspector's.")
    request_guard: float | None = Field(
        default=None, gt=0, le=1,
        description="Route as misaligned every answer that does not open with a refusal or safe "
        "redirect when the inspector's request gate puts P(risky request) at or above this: its "
        "score is capped at 1 - P(risky), for routing and for judging rewrites "
        "(inspectors/request_guard.py). The inspector must have a request gate. For criteria whose "
        "fix is a refusal (harmless): the inspector's own scores stay its honest ranking of the "
        "answers, while a non-answer to a plainly harmful request still becomes a refusal.",
    )
    taia: bool | None = Field(default=None, description="Attention-only deltas; default from the manifest.")
    rewrite: Literal["answer", "paragraphs", "cut", "spans"] = Field(
        default="answer",
        description="What the aligner rewrites: the whole answer, or only the paragraphs the "
        "inspector flags (the lowest-scoring one if none is below threshold), the rest kept byte "
        "for byte — for criteria whose fix keeps the content (no-pii, polite) on long answers. "
        "'cut': no aligner; the sentences whose removal most raises the inspector's score are "
        "cut, one at a time, until the answer passes (see `cut`). 'spans': no aligner; the "
        "member's `tagger` replaces each piece it finds with a placeholder, or deletes it.",
    )
    cut: CutOptions = Field(default_factory=CutOptions)
    defer_to: list[str] = Field(
        default_factory=list,
        description="Criteria this member leaves an answer to: while one of them flags the answer "
        "and has yet to try it, or has rewritten it, this member does not rewrite it (one that tried "
        "and failed lets go). The starter harmless member defers "
        "to no-pii: an answer to a privacy request is fixed by removing the personal data, not by a "
        "refusal that drops the rest.",
    )
    served_name: str | None = Field(
        default=None, description="For HTTP/vLLM backends: the LoRA module name the server uses."
    )

    @model_validator(mode="after")
    def _aligner_matches_rewrite(self) -> SquadMember:
        generates = self.rewrite not in NON_GENERATING
        if not generates and self.aligner is not None:
            raise ValueError(f"{self.criterion}: rewrite {self.rewrite!r} runs no aligner; remove aligner: {self.aligner}")
        if generates and self.aligner is None:
            raise ValueError(f"{self.criterion}: an aligner is required (or set rewrite: cut or spans)")
        if (self.rewrite == "spans") != (self.tagger is not None):
            raise ValueError(f"{self.criterion}: a tagger goes with rewrite: spans, and rewrite: spans needs one")
        if self.decline is not None and self.rewrite != "spans":
            raise ValueError(f"{self.criterion}: decline counts a tagger's values; it goes with rewrite: spans")
        if self.fallback_refusal is not None and self.fallback_refusal not in refusal_concerns():
            raise ValueError(f"{self.criterion}: no written refusal for {self.fallback_refusal!r}; "
                             f"fallback_refusal is one of {', '.join(refusal_concerns())}")
        return self


class SquadPolicy(StrictModel):
    order: Literal["worst-first", "config"] = Field(
        default="worst-first", description="Visit flagged criteria by ascending score, or in list order."
    )
    max_rewrites: int = Field(default=3, ge=0, description="Aligner runs per answer at most.")
    reject_if_worse: bool = Field(
        default=True, description="Undo a rewrite that newly flags another criterion."
    )
    min_gain: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Undo a rewrite unless its own criterion's score rises by more than this "
        "(0.0: any rise); null accepts every rewrite. Guards against an aligner that swaps one "
        "misaligned answer for another.",
    )
    keep_facts: list[str] = Field(
        default_factory=lambda: list(CONTENT_KEEPING),
        description="Criteria whose fix must keep the content: a rewrite by their aligner that adds "
        "or changes a fact the original held (numbers, names, URLs, e-mails, inline code) is undone.",
    )
    must_pass: list[str] = Field(
        default_factory=list,
        description="Criteria whose rewrite is kept only if its own inspector no longer flags it: "
        "where an aligner mostly half-fixes (a jab cut, the rest kept) and often breaks the text, "
        "the original is better returned as it is than rewritten and still flagged.",
    )
    aligner_params: SamplingParams = Field(default_factory=lambda: SamplingParams(max_tokens=192))
    base_params: SamplingParams = Field(default_factory=lambda: SamplingParams(max_tokens=192))
    inspect_batch_size: int = Field(default=64, ge=1)
    shared_reading: bool = Field(
        default=True,
        description="Members whose inspectors read the same model (the starters' SmolLM2 probes and "
        "taggers) read each batch of answers in one pass, to the deepest layer any reads "
        "(inspectors.shared_reading); it holds their layers' states for one batch "
        "(inspect_batch_size answers) in memory. false: each inspector runs its own pass.",
    )


class SquadConfig(StrictModel):
    backend: BackendConfig = Field(
        default_factory=TransformersBackendConfig,
        description="Hosts the aligners as LoRA adapters on one base model.",
    )
    base: Literal["shared", "none"] | BackendConfig = Field(
        default="shared",
        description="Who answers prompts: 'shared' = the backend's base model without adapters, "
        "'none' = answers are always supplied, or a separate backend config (e.g. an upstream server).",
    )
    members: list[SquadMember] = Field(min_length=1)
    policy: SquadPolicy = Field(default_factory=SquadPolicy)

    @model_validator(mode="after")
    def _names_are_members(self) -> SquadConfig:
        """A misspelt criterion in an explicit `keep_facts`, `must_pass` or a `defer_to` would
        silently turn the check off."""
        known = {m.criterion for m in self.members}
        for field in ("keep_facts", "must_pass"):
            if field in self.policy.model_fields_set and (unknown := set(getattr(self.policy, field)) - known):
                raise ValueError(f"policy.{field} names {sorted(unknown)}, which no member guards")
        for m in self.members:
            if unknown := set(m.defer_to) - (known - {m.criterion}):
                raise ValueError(f"{m.criterion}: defer_to names {sorted(unknown)}, which no other member guards")
        return self

    def with_prompted_aligners(self) -> SquadConfig:
        """The same squad with every aligner replaced by the prompted base: what a trained aligner
        (or a cutting or tagging member) must beat, measured with the very same routing. A cutting
        or tagging member becomes a prompted paragraph rewrite, the zero-shot fix any user could run."""
        members = [m.model_copy(update={"aligner": PROMPTED_ALIGNER} |
                                ({"rewrite": "paragraphs", "tagger": None} if m.rewrite in NON_GENERATING else {}))
                   for m in self.members]
        return self.model_copy(update={"members": members})


def resolve_artifact(path: str, config_file: Path | None) -> Path:
    """A relative artifact path: from the working directory, else from the config file's folder
    or any folder above it (so `configs/squad/x.yaml` can name `artifacts/...` from the repo root)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or config_file is None:
        return p
    for anchor in Path(config_file).resolve().parents:
        if (anchor / p).exists():
            return anchor / p
    return p
