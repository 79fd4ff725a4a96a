"""Rewrite units for content-keeping criteria: an answer cut into paragraphs that join back to it
byte for byte.

Why: a real assistant answer is 250–400 tokens of markdown, and the personal data or the rude
remark sits in one or two of its paragraphs. Rewriting the whole answer asks a small aligner to
copy hundreds of tokens it was never trained on (its training answers fit in a few hundred
tokens) and to stop inside its token budget; a rewrite of the one paragraph that holds the
problem leaves every other byte of the answer untouched, so facts elsewhere cannot change.
"""

from __future__ import annotations

import re

_BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")
_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)


def _blocks(text: str) -> list[str]:
    """Split after each blank-line run that is not inside a fenced code block (an unclosed fence
    keeps the rest whole)."""
    pieces, start = [], 0
    for m in _BLANK_LINE.finditer(text):
        if len(_FENCE.findall(text, start, m.start())) % 2 == 0:
            pieces.append(text[start:m.end()])
            start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def paragraphs(text: str, min_chars: int = 160) -> list[str]:
    """The answer's paragraphs, each with the blank lines that follow it, so that
    `"".join(paragraphs(t)) == t`. A paragraph shorter than `min_chars` (a heading, a one-line
    lead-in to a list) joins the next one: alone it gives an aligner too little to go on."""
    merged: list[str] = []
    for piece in _blocks(text):
        if merged and len(merged[-1].strip()) < min_chars:
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


def replace_body(piece: str, body: str) -> str:
    """`piece` with its text replaced by `body`, keeping the whitespace around it (the layout
    that joins it to its neighbours)."""
    lead = piece[: len(piece) - len(piece.lstrip())]
    trail = piece[len(piece.rstrip()):]
    return lead + body.strip() + trail
