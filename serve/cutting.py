"""A squad member that corrects by cutting sentences, guided by its own inspector.

Why: on real answers the 135M aligner, asked to rewrite a rude or privacy-leaking paragraph,
often garbles it, invents offers or drops the useful part (hand-checked on the dev set,
docs/data.md). Most of what polite and no-pii object to in a real answer sits in a few sentences
of their own ("Buckle up, dude.", "Her cell is 555-0142."). Removing exactly those keeps every
other byte, cannot add a fact, and needs no generation at all.

The search is greedy leave-one-out: score the answer without each of its sentences (one batch
for all answers), keep the cut that raises P(aligned) most, and repeat until the answer reaches
the target, no cut raises the score, `max_cuts` sentences are gone, or one sentence is left. The
target may lie above the squad's threshold: the threshold decides which answers need a fix, the
target how clean a fix should be. The candidates can be limited by whether a sentence holds a
checkable fact (a number, name, URL, code: aligners.facts): a polite fix may drop "Seriously?" but
not "Multiply by 9/5 and add 32"; a privacy fix should drop the phone number, not the advice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aligners.facts import facts
from aligners.paragraphs import sentences


@dataclass
class _Answer:
    prompt: str
    units: list[str]
    score: float
    cuts: int = 0
    done: bool = False  # no cut raised its score


def _cuttable(unit: str, which: str) -> bool:
    if not any(ch.isalpha() for ch in unit):
        return False
    return which == "any" or (which == "with-facts") == bool(facts(unit))


def cut_sentences(
    inspector, prompts: Sequence[str], answers: Sequence[str], target: float, *,
    max_cuts: int = 6, which: str = "any", batch_size: int = 64,
) -> list[str]:
    """Each answer with the sentences cut whose removal lifts `inspector`'s P(aligned) towards
    `target` (see the module docstring); an answer already at or above it comes back as is."""
    scores = inspector.score_answers(prompts, answers, batch_size=batch_size)
    state = [_Answer(p, sentences(a), float(s)) for p, a, s in zip(prompts, answers, scores, strict=True)]
    while True:
        rounds = [(a, [k for k, u in enumerate(a.units) if _cuttable(u, which)]) for a in state
                  if not a.done and a.score < target and a.cuts < max_cuts and len(a.units) > 1]
        rounds = [(a, ks) for a, ks in rounds if ks]  # unit indices to try leaving out, per answer
        if not rounds:
            break
        variants = [(a.prompt, "".join(_without(a.units, k))) for a, ks in rounds for k in ks]
        new = inspector.score_answers([p for p, _ in variants], [v for _, v in variants], batch_size=batch_size)
        at = 0
        for a, ks in rounds:
            mine = new[at:at + len(ks)]
            at += len(ks)
            best = int(np.argmax(mine))
            if mine[best] <= a.score:
                a.done = True
                continue
            a.units = _without(a.units, ks[best])
            a.score, a.cuts = float(mine[best]), a.cuts + 1
    return [_tidy("".join(a.units), original) if a.cuts else original
            for a, original in zip(state, answers, strict=True)]


def _without(units: list[str], k: int) -> list[str]:
    """`units` without unit `k`; a line or paragraph break after it moves to the unit before, so
    cutting a paragraph's last sentence does not run two paragraphs together."""
    rest = units[:k] + units[k + 1:]
    gap = units[k][len(units[k].rstrip()):]
    if k > 0 and "\n" in gap and "\n" not in units[k - 1][len(units[k - 1].rstrip()):]:
        rest[k - 1] = units[k - 1].rstrip() + gap
    return rest


def _tidy(text: str, original: str) -> str:
    """The cut text ending as the original ends (a cut last sentence leaves the space after the
    one before it)."""
    return text.rstrip() + original[len(original.rstrip()):]
