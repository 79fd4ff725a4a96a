"""Rewrite units for content-keeping criteria: an answer cut into paragraphs (or sentences) that
join back to it byte for byte. The squad rewrites paragraphs (serve.pipeline) and the aligner
data builders train on them (synth.paragraph_pairs), so an aligner learns on what it is later
given; the squad's cutting members remove whole sentences (serve.cutting).

Why: a real assistant answer is 250–400 tokens of markdown, and the personal data or the rude
remark sits in one or two of its paragraphs. Rewriting the whole answer asks a small aligner to
copy hundreds of tokens and to stop inside its token budget; a rewrite of the one paragraph that
holds the problem leaves every other byte of the answer untouched, so facts elsewhere cannot
change.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")
# a sentence's end (closing quotes, brackets or emphasis marks stay with it) or a line break
_SENTENCE_END = re.compile(
    r"""(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)(?<!\bDr)(?<!\bMr)(?<!\bMs)(?<!\bMrs)(?<!\bSt)"""
    r"""[.!?…]["')\]*_]*[ \t]+(?=\S)|\n\s*"""
)
_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)


def _blocks(text: str, boundary: re.Pattern = _BLANK_LINE) -> list[str]:
    """Split after each `boundary` match that is not inside a fenced code block (an unclosed fence
    keeps the rest whole)."""
    pieces, start = [], 0
    for m in boundary.finditer(text):
        if len(_FENCE.findall(text, start, m.start())) % 2 == 0:
            pieces.append(text[start:m.end()])
            start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _groups(pieces: Sequence[str], min_chars: int) -> list[list[int]]:
    """Indices of `pieces` grouped so that a piece shorter than `min_chars` (with what it has
    gathered) joins the next one."""
    groups: list[list[int]] = []
    for i in range(len(pieces)):
        if groups and len("".join(pieces[j] for j in groups[-1]).strip()) < min_chars:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def paragraphs(text: str, min_chars: int = 160) -> list[str]:
    """The answer's paragraphs, each with the blank lines that follow it, so that
    `"".join(paragraphs(t)) == t`. A paragraph shorter than `min_chars` (a heading, a one-line
    lead-in to a list) joins the next one: alone it gives an aligner too little to go on."""
    blocks = _blocks(text)
    return ["".join(blocks[i] for i in group) for group in _groups(blocks, min_chars)]


def sentences(text: str) -> list[str]:
    """The answer's sentences and lines, each with the whitespace after it, so that
    `"".join(sentences(t)) == t`; a fenced code block stays one piece, and a piece with fewer than
    three letters (a list marker "1.", "e.g.", a lone "-") joins the next, so no unit is only markup."""
    units: list[str] = []
    for piece in _blocks(text, _SENTENCE_END):
        if units and sum(ch.isalpha() for ch in units[-1]) < 3:
            units[-1] += piece
        else:
            units.append(piece)
    return units


def sentence_bounds(text: str) -> list[tuple[int, int]]:
    """The [start, end) character range of each of `sentences(text)`, whitespace after it included."""
    bounds, at = [], 0
    for unit in sentences(text):
        bounds.append((at, at + len(unit)))
        at += len(unit)
    return bounds


def join_paragraphs(paras: Sequence[str]) -> str:
    """Paragraphs as one text: each stripped, one blank line between them."""
    return "\n\n".join(p.strip() for p in paras)


def paired_paragraphs(before: Sequence[str], after: Sequence[str], min_chars: int = 160) -> list[tuple[str, str]]:
    """(original, rewrite) units of an answer rewritten paragraph by paragraph (`after[i]`
    rewrites `before[i]`), grouped as `paragraphs` groups the original: each unit is what the
    squad would send an aligner, beside what the aligner should give back."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} paragraphs but {len(after)} rewrites: rewrite each paragraph in place")
    return [(join_paragraphs([before[i] for i in group]), join_paragraphs([after[i] for i in group]))
            for group in _groups([b.strip() + "\n\n" for b in before], min_chars)]


def replace_body(piece: str, body: str) -> str:
    """`piece` with its text replaced by `body`, keeping the whitespace around it (the layout
    that joins it to its neighbours)."""
    lead = piece[: len(piece) - len(piece.lstrip())]
    trail = piece[len(piece.rstrip()):]
    return lead + body.strip() + trail
