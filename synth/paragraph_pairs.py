"""Aligner training pairs from answers rewritten by hand paragraph by paragraph.

A squad member with `rewrite: paragraphs` sends its aligner one paragraph of a long answer at a
time, yet the template corrections (synth.corrections) only make whole-answer pairs, and a
whole large-assistant answer does not fit the aligner's training length: the no-pii and polite
aligners had never seen the unit they are asked to fix. Here each written correction is cut into
the squad's units (aligners.paragraphs.paired_paragraphs): a unit the writer changed becomes a
correction pair, an untouched one a keep-as-is pair (the squad also sends a paragraph that was
only the least good of a flagged answer). Inspectors learn from the same records
(`inspector_pairs`).

A corrected unit that adds a fact (aligners.facts) is not used: a polite or privacy fix keeps
what the original said. Polite must also keep every number, address and code span (only the
rudeness goes); no-pii may drop what it withholds. Dev-split prompts never train anything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from aligners.facts import facts
from aligners.paragraphs import join_paragraphs, paired_paragraphs
from aligners.schema import Pair, Provenance, WrittenCorrection

PARAGRAPH_PAIRS_VERSION = "paragraph-pairs-v1"
MAY_DROP_FACTS = ("no-pii",)  # criteria whose fix withholds what the answer said
_HARD_FACT = re.compile(r"\d|@|://|`")  # numbers, e-mail addresses, URLs, code: not a tone


def fact_problem(criterion: str, before: str, after: str, context: str = "") -> str | None:
    """Why a hand correction of `before` may not teach an aligner, or None: it adds a fact found
    neither in `before` nor in `context` (the request and the whole answer: "ask Todd himself"
    names the person the request named), or, for tone-only criteria, it drops a number, URL,
    address or code span. Case-insensitive. A tone fix may drop a capitalised word: the sarcastic
    aside it cuts ("every winemaker in France just felt a chill") names things too."""
    seen, kept = f"{before}\n{context}".lower(), after.lower()
    if any(f.lower() not in seen for f in facts(after)):
        return "adds-fact"
    if criterion not in MAY_DROP_FACTS and any(
            f.lower() not in kept for f in facts(before) if _HARD_FACT.search(f)):
        return "drops-fact"
    return None


def pairs_from_corrections(
    criterion: str, records: Sequence[WrittenCorrection]
) -> tuple[list[Pair], dict[str, int]]:
    """Correction and keep-as-is pairs from `criterion`'s written corrections (train split only),
    and counts: pairs per kind, and units left out and why."""
    pairs, counts = [], Counter()
    for rec in records:
        if rec.criterion != criterion:
            continue
        if rec.split == "dev":
            counts["dev-split"] += 1
            continue
        context = "\n".join([rec.prompt, *rec.misaligned])
        for k, (before, after) in enumerate(paired_paragraphs(rec.misaligned, rec.aligned)):
            fixes = before != after
            if fixes and (problem := fact_problem(criterion, before, after, context)):
                counts[problem] += 1
                continue
            kind = "paragraph-corrected" if fixes else "paragraph-kept"
            counts[kind] += 1
            pairs.append(_pair(rec, f"p{k}", kind, before, after))
    return pairs, dict(sorted(counts.items()))


def inspector_pairs(criterion: str, records: Sequence[WrittenCorrection]) -> list[Pair]:
    """What an inspector learns from `criterion`'s written corrections (train split only): each
    whole answer before → after, and each unit the writer changed (the squad also scores an
    answer's paragraphs one by one). Every rewrite is a good answer whatever facts it adds, so
    nothing is filtered; units left untouched are not used, since their request still invites
    the violation (a request gate would learn it as benign)."""
    pairs = []
    for rec in records:
        if rec.criterion != criterion or rec.split != "train":
            continue
        whole = (join_paragraphs(rec.misaligned), join_paragraphs(rec.aligned))
        units = [(b, a) for b, a in paired_paragraphs(rec.misaligned, rec.aligned) if b != a and (b, a) != whole]
        pairs.append(_pair(rec, "whole", "answer-corrected", *whole))
        pairs += [_pair(rec, f"p{k}", "paragraph-corrected", b, a) for k, (b, a) in enumerate(units)]
    return pairs


def _pair(rec: WrittenCorrection, part: str, kind: str, before: str, after: str) -> Pair:
    source = Provenance(teacher="human", template_version=f"{PARAGRAPH_PAIRS_VERSION}:{kind}",
                        answer_id=rec.answer_id, answer_model=rec.written_by, label_by="hand")
    return Pair(id=f"{rec.criterion}:{rec.id}:{part}", criterion=rec.criterion, topic=rec.topic, prompt=rec.prompt,
                misaligned=before, aligned=after, needs_correction=before != after, source=source)
