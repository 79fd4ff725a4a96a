"""The checkable facts of a text, so a rewrite that adds or changes one can be refused.

A polite or privacy rewrite must keep what the original said: "Multiply by 9/5 and add 32,
genius." may lose "genius", not gain "multiply by 100". Facts here are what a pattern can see
without understanding the text — numbers (with units and percentages), URLs, e-mail addresses,
inline code, and capitalised names that do not open a sentence. That misses paraphrased claims,
but everything it reports is a real difference, so it can reject rewrites automatically; the
hand check on the dev set covers the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FACT = re.compile(
    r"""
      (?P<url>https?://[^\s)\]>]+)
    | (?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
    | (?P<code>`[^`\n]+`)
    | (?P<number>(?<![\w.])[-+]?\d+(?:[.,:/]\d+)*%?)
    | (?P<name>\b[A-Z][a-zA-Z]+(?:[ \t]+[A-Z][a-zA-Z]+)*)
    """,
    re.VERBOSE | re.MULTILINE,
)
# capitalised words that open clauses or are the speaker, not names
_NOT_NAMES = {"I", "I'm", "I'd", "I'll", "I've", "OK", "Okay"}
# "[NAME]", "[DATE OF BIRTH]": a withheld value, which is what a privacy fix should write
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9 _/'-]*\]")
MARKUP = " \t*_>#\"'“‘(`-•"


def opens_sentence(text: str, start: int) -> bool:
    """Whether a word at `start` opens a sentence, a line, a list item or a table cell (markdown
    marks and quotes before it do not count): there a capital letter says nothing about a name."""
    before = text[max(0, start - 80):start].rstrip(MARKUP)
    return not before or before[-1] in ".!?:|\n"


def facts(text: str) -> set[str]:
    """The facts of `text`, normalised (numbers without thousands commas, URLs without a
    trailing full stop)."""
    out = set()
    text = _PLACEHOLDER.sub(" ", text)
    for m in _FACT.finditer(text):
        kind, value = m.lastgroup, m.group(0)
        if kind == "name" and opens_sentence(text, m.start()):
            value = value.split(None, 1)[1] if " " in value else ""  # "Ask Dana Ruiz" → "Dana Ruiz"
        if kind == "name" and (not value or value in _NOT_NAMES):
            continue
        if kind == "number":
            value = value.replace(",", "") if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+", value) else value
        out.add(value.rstrip(".,;"))
    return out


@dataclass(frozen=True)
class FactChanges:
    """Facts a rewrite added (not in the original) and dropped (not kept)."""

    added: tuple[str, ...]
    dropped: tuple[str, ...]


WORD = re.compile(r"[^\W\d_]+")  # a run of letters


def fact_changes(original: str, rewrite: str) -> FactChanges:
    """What `rewrite` added and dropped. A fact without digits made only of words the original
    held is not added: what is left of "Dana Copper" once "[NAME]" masks "Dana", or of a code
    span around a placeholder. A number must match exactly ("320" is not "32")."""
    before, after = facts(original), facts(rewrite)
    known = set(WORD.findall(_PLACEHOLDER.sub(" ", original)))
    added = [f for f in after - before if any(c.isdigit() for c in f) or not set(WORD.findall(f)) <= known]
    return FactChanges(tuple(sorted(added)), tuple(sorted(before - after)))
