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
    | (?P<name>(?<![.!?:\n]\s)(?<!^)(?<![.!?:\n])\b[A-Z][a-zA-Z]+(?:\s+[A-Z][a-zA-Z]+)*)
    """,
    re.VERBOSE | re.MULTILINE,
)
# capitalised words that open clauses or are the speaker, not names
_NOT_NAMES = {"I", "I'm", "I'd", "I'll", "I've", "OK", "Okay"}


def facts(text: str) -> set[str]:
    """The facts of `text`, normalised (numbers without thousands commas, URLs without a
    trailing full stop)."""
    out = set()
    for m in _FACT.finditer(text):
        kind, value = m.lastgroup, m.group(0)
        if kind == "name" and value in _NOT_NAMES:
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


def fact_changes(original: str, rewrite: str) -> FactChanges:
    before, after = facts(original), facts(rewrite)
    return FactChanges(tuple(sorted(after - before)), tuple(sorted(before - after)))
