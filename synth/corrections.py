"""Aligner training pairs from labelled real answers: what a model really said, and a
correction that fits the request.

Aligners trained only on hand-written seed answers ("Sure! … fun garage project!") have never
seen a real model's answer, so on real traffic they change nothing. Here every labelled answer
(harvested, or written in the large-assistant style) becomes a pair:

- an aligned answer → a keep-as-is pair (the aligner must learn to leave good answers alone);
- harmless, misaligned → the refusal written for the request's category and phrasing style
  (synth.refusals: a brief concern and a safe, useful alternative);
- no-pii, misaligned → the same answer with every piece of personal data the detectors find
  generalised in place ("[phone number withheld]"); when none can be located (invented details
  with no recognisable format) or too little is left, the privacy refusal for the category;
- polite, misaligned → the same answer without the rude phrases the detector finds (a trailing
  ", genius" goes; a sentence built on an insult goes whole); when none can be located, or the
  rewrite would drop or add a fact (aligners.facts), no pair: a template cannot fix a tone it
  cannot find.

Only violations a person confirmed are corrected for no-pii and polite: their detectors' flags
are often wrong on a small model's answers ("It's not dumb to invest…"), while for harmless any
answer to a harmful request that is not a refusal may be replaced by one. Every pair's `source`
records the answer it came from, who labelled it and how it was corrected.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Sequence

from aligners.facts import fact_changes
from aligners.schema import AnswerRecord, Pair, Provenance
from synth.labeling import PII_PATTERNS, RUDE_PATTERN, answers_for, pii_found
from synth.refusals import PRIVACY_CONCERNS, refusal_for

CORRECTIONS_VERSION = "corrections-v1"
_PII_WORDS = {
    "email": "e-mail address", "phone": "phone number", "ssn": "social-security number",
    "card": "card number", "iban": "account number", "street_address": "address",
    "date_of_birth": "date of birth",
}
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
MIN_KEPT_CHARS = 40  # a generalised answer shorter than this says nothing: refuse instead
MIN_KEPT_WORDS = 3  # what is left of a rude answer must still say something


def generalize_personal_data(answer: str) -> str:
    """`answer` with each span the personal-data detectors find replaced by what it was."""
    for kind, rx in PII_PATTERNS.items():
        answer = rx.sub(f"[{_PII_WORDS[kind]} withheld]", answer)
    return answer


def without_rudeness(answer: str) -> str | None:
    """`answer` without its rude phrases, or None when none is found or nothing useful is left.

    A rude word closing a sentence after a comma (", genius.") is cut; any other sentence that
    holds a rude phrase is dropped whole ("Seriously?", "Even a child knows this.").
    """
    if not RUDE_PATTERN.search(answer):
        return None
    kept = []
    for sentence in _SENTENCE.split(answer.strip()):
        trimmed = re.sub(r",\s*(?:" + RUDE_PATTERN.pattern + r")\s*(?=[.!?]*$)", "", sentence,
                         flags=RUDE_PATTERN.flags)
        if not RUDE_PATTERN.search(trimmed):
            kept.append(trimmed)
    text = " ".join(kept).strip()
    return text if len(text.split()) >= MIN_KEPT_WORDS else None


def correction_for(rec: AnswerRecord) -> tuple[str, str] | None:
    """(corrected answer, method) for a misaligned answer, or None when no template fits."""
    if rec.criterion == "harmless":
        return refusal_for(rec.prompt_id, rec.category, rec.style), "refusal"
    if rec.criterion == "no-pii":
        if pii_found(rec.answer):
            cleaned = generalize_personal_data(rec.answer)
            if not fact_changes(rec.answer, cleaned).added and len(cleaned) >= MIN_KEPT_CHARS:
                return cleaned, "personal-data-generalized"
        category = rec.category if rec.category in PRIVACY_CONCERNS else "general-privacy"
        return refusal_for(rec.prompt_id, category, rec.style), "privacy-refusal"
    if rec.criterion == "polite":
        polite = without_rudeness(rec.answer)
        if polite is None:
            return None
        changes = fact_changes(rec.answer, polite)
        return None if changes.added or changes.dropped else (polite, "rudeness-removed")
    return None


def pairs_from_answers(
    criterion: str, records: Sequence[AnswerRecord], labels: str = "any", corrected: Collection[str] = ()
) -> tuple[list[Pair], dict[str, int]]:
    """Pairs for `criterion`'s aligner from labelled answers (the answers `answers_for` picks,
    dev split never), and counts per method (`uncorrectable`: misaligned, no template fits;
    `unconfirmed-flag`: flagged by a no-pii or polite detector, never confirmed by a person;
    `hand-corrected`: an answer in `corrected`, rewritten by hand instead, synth.paragraph_pairs)."""
    pairs, counts = [], Counter()
    for rec in answers_for(criterion, records, labels):
        if rec.id in corrected:
            counts["hand-corrected"] += 1
            continue
        if not rec.answer.strip():
            counts["empty-answer"] += 1
            continue
        if rec.label == "aligned":
            aligned, method = rec.answer, "keep-as-is"
        elif criterion != "harmless" and rec.label_by != "hand":
            counts["unconfirmed-flag"] += 1  # the detectors' flags are often wrong here
            continue
        elif (fixed := correction_for(rec)) is not None:
            aligned, method = fixed
        else:
            counts["uncorrectable"] += 1
            continue
        counts[method] += 1
        pairs.append(Pair(
            id=f"{criterion}:{rec.id}",
            criterion=criterion,
            topic=rec.topic,
            prompt=rec.prompt,
            misaligned=rec.answer,
            critique=rec.note if method != "keep-as-is" else "",
            aligned=aligned,
            needs_correction=method != "keep-as-is",
            source=Provenance(teacher="template", template_version=f"{CORRECTIONS_VERSION}:{method}",
                              answer_id=rec.id, answer_model=rec.answer_model,
                              label_by=rec.label_by),
        ))
    return pairs, dict(sorted(counts.items()))
