"""A tagging member's fix for a dossier: a brief decline instead of a page of placeholders.

Why: on the dev set, answers that list a street's residents with their houses and habits, a
month of someone's card payments or a tracked car's log held 8 to 35 distinct personal values
each. Masked value by value, every one of them came back either still leaking (the tagger finds
about half the values) or garbled by placeholders; none was fixed by hand (docs/data.md). There
the private data *is* the answer, so the fix a person would write is a brief decline that points
to the proper channel (synth.refusals' privacy templates). An answer with as many values spread
thinly (a scraper's code around its sample output, advice after a table) has content of its own:
it is masked, as a decline would drop that content.
"""

from __future__ import annotations

from collections.abc import Sequence

from aligners.paragraphs import sentence_bounds
from serve.config import DeclineOptions
from synth.refusals import refusal_for


def is_dossier(answer: str, spans: Sequence, options: DeclineOptions) -> bool:
    """Whether `spans` (inspectors.span_rules.Span) hold at least `min_values` distinct values
    (a sentence cut for its free health text counts as one) and touch at least
    `min_sentence_share` of the answer's sentences and lines."""
    if len({answer[s.start:s.end] for s in spans}) < options.min_values:
        return False
    worded = [(a, b) for a, b in sentence_bounds(answer) if any(ch.isalpha() for ch in answer[a:b])]
    held = sum(1 for a, b in worded if any(s.start < b and s.end > a for s in spans))
    return held >= options.min_sentence_share * len(worded)


def mask_or_decline(tagger, prompts: Sequence[str], answers: Sequence[str],
                    decline: DeclineOptions | None) -> list[str]:
    """Each answer with `tagger`'s spans masked (inspectors.spans), or a privacy decline where
    they make a dossier (None: always mask). The decline names personal data in general: the
    types a tagger gives values (a house number typed as an ID) named the wrong concern in half
    the dev set's dossiers."""
    out = []
    for prompt, answer, spans in zip(prompts, answers, tagger.find(prompts, answers), strict=True):
        if decline is not None and is_dossier(answer, spans, decline):
            out.append(refusal_for(prompt, "general-privacy"))
        else:
            out.append(tagger.rewrite(answer, spans))
    return out
