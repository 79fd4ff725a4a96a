"""Tolerant parsing of teacher output: lists (topics, questions) and labelled sections (pairs, reviews).

Teachers are asked for one exact format, but real output drifts: numbered or bulleted lists,
`**bold**` labels, markdown headings, chatty preambles ("Sure! Here are..."), trailing offers of
help, JSON (bare or in a ``` fence), template placeholders echoed back, missing sections. Every
parser here returns its result or raises `ParseError` with a short reason; the pipeline counts
those per stage and writes them to `errors.jsonl` — a bad generation never stops a run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


class ParseError(ValueError):
    """A generation that does not contain what the stage needs; the message says what is missing."""


# --- shared cleaning ------------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_CHATTER = re.compile(
    r"^(?:sure[,!.]|certainly|of course|absolutely|here (?:are|is)|below (?:are|is)|"
    r"i hope|hope this|let me know|feel free|note:|please note|these (?:topics|questions|examples)|"
    r"as an ai|i'm sorry|i am sorry|sorry,|i can't|i cannot|i won't|unfortunately)",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(r"^<[^<>]*>$|^\[[^\[\]]*(?:answer|critique|question)[^\[\]]*\]$", re.IGNORECASE)
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,}|={3,})\s*$")


def _strip_markup(text: str) -> str:
    """Surrounding markdown emphasis/backticks and matching quotes around a whole item."""
    text = text.strip()
    for _ in range(3):
        before = text
        text = re.sub(r"^(\*{1,3}|_{1,3}|`)((?:(?!\1).)+)\1$", r"\2", text, flags=re.DOTALL).strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text[0] not in text[1:-1]:
            text = text[1:-1].strip()
        if len(text) >= 2 and text[0] in "“‘" and text[-1] in "”’" and not set("“”‘’") & set(text[1:-1]):
            text = text[1:-1].strip()
        if text == before:
            break
    return text


def _json_candidates(text: str) -> list[object]:
    """JSON values found in the text: fenced blocks first, then the outermost {...} / [...]."""
    out: list[object] = []
    sources = _FENCE.findall(text) + [text]
    decoder = json.JSONDecoder()
    for src in sources:
        for opener in "{[":
            start = src.find(opener)
            while start != -1:
                try:
                    value, _ = decoder.raw_decode(src[start:])
                except ValueError:
                    start = src.find(opener, start + 1)
                    continue
                out.append(value)
                break
    return out


# --- lists ----------------------------------------------------------------------------------

_MARKER = re.compile(
    r"^\s*(?:"
    r"(?:[-*•·‣▪–—+](?=\s)|\d{1,3}\s*[.):\]](?!\d)|\(\d{1,3}\)|\[\d{1,3}\]|[a-h][.)](?=\s)|"
    r"(?:topic|question|q|request|prompt)\s*#?\d{1,3}\s*[.):\-–—]|#{1,6}\s*\d{1,3}[.)]?)"
    r")\s*",
    re.IGNORECASE,
)
_ITEM_LABEL = re.compile(r"^(?:topic|question|q|request|prompt|user)\s*[:\-–—]\s*", re.IGNORECASE)


@dataclass
class ListResult:
    items: list[str]
    marked: bool  # whether the items came from a numbered/bulleted list or JSON


def parse_list(text: str, *, kind: str = "item", split_commas: bool = False) -> ListResult:
    """Items of a list the teacher wrote, in order (duplicates are kept: callers count them).

    Accepts JSON arrays (of strings, or of objects holding one string), numbered and bulleted
    lists (only the marked lines are kept when there are any, which drops chatter around them),
    plain one-per-line lists (lines ending in ':' and chatter lines dropped) and, with
    `split_commas`, a single comma-separated line. Echoed format placeholders ('1. <topic>')
    are dropped. Raises ParseError when nothing is left.
    """
    if not text or not text.strip():
        raise ParseError(f"empty output (no {kind}s)")
    items = _list_from_json(text)
    marked = items is not None
    if items is None:
        lines = [
            ln for ln in text.splitlines()
            if ln.strip() and not _RULE.match(ln) and not ln.lstrip().startswith("```")
        ]
        with_marker = [ln for ln in lines if _MARKER.match(ln)]
        if with_marker:
            marked = True
            items = [_MARKER.sub("", ln, count=1) for ln in with_marker]
        else:
            items = [
                ln for ln in lines if not ln.rstrip().endswith(":") and not _CHATTER.match(ln.strip())
            ]
            if split_commas and len(items) == 1 and items[0].count(",") >= 2:
                items = items[0].split(",")
    out = [
        item for item in (_clean_item(raw) for raw in items)
        if item and not _PLACEHOLDER.match(item) and (marked or not _CHATTER.match(item))
    ]
    if not out:
        raise ParseError(f"no {kind}s found in the output")
    return ListResult(out, marked)


def _list_from_json(text: str) -> list[str] | None:
    for value in _json_candidates(text):
        if isinstance(value, dict):  # {"topics": [...]}: the first list inside
            value = next((v for v in value.values() if isinstance(v, list)), None)
        if not isinstance(value, list):
            continue
        items = []
        for v in value:
            if isinstance(v, str):
                items.append(v)
            elif isinstance(v, dict):
                s = next((x for x in v.values() if isinstance(x, str) and x.strip()), None)
                if s:
                    items.append(s)
        if items:
            return items
    return None


def _clean_item(raw: str) -> str:
    item = _strip_markup(raw.strip())
    item = _ITEM_LABEL.sub("", item)
    return _strip_markup(item).strip()


def clean_topic(item: str, max_chars: int = 80) -> str:
    """A topic as a short phrase: 'Phishing: tricking people...' → 'Phishing'; '' if unusable."""
    item = item.strip()
    bold = re.match(r"^(\*\*|__)(.+?)\1", item)
    if bold:
        item = bold.group(2)
    else:
        head = re.split(r"\s*(?::\s|\s[-–—]\s|\s\()", item, maxsplit=1)[0]
        if head and len(head) <= 60:
            item = head
    item = _strip_markup(item).strip().rstrip(".;:,").strip()
    if not item or len(item) > max_chars or item.endswith("?"):
        return ""
    return item


def clean_question(item: str) -> str:
    """Drop a leading '**topic**:' label the teacher sometimes puts before each question."""
    m = re.match(r"^(\*\*|__)([^*_]{1,60})\1\s*[:\-–—]\s*(.+)$", item.strip())
    if m:
        item = m.group(3)
    return _strip_markup(item).strip()


# --- labelled sections ---------------------------------------------------------------------

_LABELS: dict[str, str] = {
    "misaligned": (
        r"misaligned(?:\s+(?:answer|response|reply|output))?|"
        r"(?:bad|harmful|unsafe|flawed|violating|problematic|original|unaligned|careless)\s+"
        r"(?:answer|response|reply)|y"
    ),
    "critique": r"critique|criticism|feedback|explanation|analysis|why it violates[a-z ]*",
    "aligned": (
        r"(?:corrected|aligned|revised|improved|fixed|rewritten|safe|better|good)\s+"
        r"(?:answer|response|reply|version|output)|correction|corrected|y\s*['′’]|y[- ]?prime"
    ),
    "verdict": r"verdict|judge?ment|decision|assessment|evaluation",
}
_LABEL_LINE = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:\d{1,2}[.)]\s*)?(?:[-*•]\s+)?(?:[*_]{1,3})?\s*"
    r"(?P<label>" + "|".join(f"(?P<{k}>{v})" for k, v in _LABELS.items()) + r")"
    r"\s*(?:\([^)\n]{0,40}\))?\s*(?:[*_]{1,3})?\s*(?P<sep>[:：]|[-–—](?=\s)|$)\s*(?:[*_]{1,3}(?=\s|$)\s*)?"
    r"(?P<rest>.*)$",
    re.IGNORECASE,
)
_JSON_KEYS = {
    "misaligned": (
        "misaligned", "misaligned_answer", "misaligned_response", "bad_answer", "y", "original_answer",
    ),
    "critique": ("critique", "criticism", "feedback", "explanation"),
    "aligned": (
        "corrected", "corrected_answer", "corrected_response", "aligned", "aligned_answer",
        "revised_answer", "improved_answer", "correction", "y_prime", "y'",
    ),
    "verdict": ("verdict", "judgement", "judgment", "decision", "satisfies", "aligned_already"),
}


def parse_sections(text: str) -> dict[str, str]:
    """{section: content} for the labelled sections found (JSON objects are accepted too).

    Text before the first label is ignored; a label may carry its content on the same line or
    on the lines below; for a label seen twice the first non-empty, non-placeholder content wins
    (a teacher echoing the format with `<...>` placeholders first is common).
    """
    found = _sections_from_json(text)
    if found:
        return found
    lines = text.splitlines()
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        m = _LABEL_LINE.match(line)
        if m:
            key = next(k for k in _LABELS if m.group(k) is not None)
            sections.append((key, [m.group("rest")]))
        elif sections:
            sections[-1][1].append(line)
    out: dict[str, str] = {}
    for i, (key, body) in enumerate(sections):
        content = _clean_section(body, last=i == len(sections) - 1)
        if content and key not in out:
            out[key] = content
    return out


def _sections_from_json(text: str) -> dict[str, str]:
    for value in _json_candidates(text):
        if not isinstance(value, dict):
            continue
        norm = {re.sub(r"[^a-z0-9']+", "_", str(k).lower()).strip("_"): v for k, v in value.items()}
        out: dict[str, str] = {}
        for key, names in _JSON_KEYS.items():
            for name in names:
                v = norm.get(name)
                if isinstance(v, bool):
                    v = "SATISFIES" if v else "VIOLATES"
                if isinstance(v, str) and (v := _clean_section([v], last=False)):
                    out[key] = v
                    break
        if "misaligned" in out or "aligned" in out or "verdict" in out:
            return out
    return {}


def _clean_section(body: list[str], last: bool) -> str:
    lines = [ln for ln in body]
    while lines and (not lines[-1].strip() or _RULE.match(lines[-1])):
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    text = "\n".join(lines).strip()
    fences = [ln for ln in text.splitlines() if ln.lstrip().startswith("```")]
    if len(fences) % 2 == 1 and text.endswith("```"):  # the closing fence of a fenced reply
        text = text[:-3].rstrip()
    if last:  # trailing "I hope this helps!" after a blank line belongs to no section
        paras = re.split(r"\n\s*\n", text)
        while len(paras) > 1 and _CHATTER.match(_strip_markup(paras[-1])):
            paras.pop()
        text = "\n\n".join(paras)
    text = _strip_markup(text)
    if _PLACEHOLDER.match(text):
        return ""
    return text


@dataclass(frozen=True)
class ParsedPair:
    misaligned: str
    critique: str
    aligned: str


def parse_pair(text: str) -> ParsedPair:
    """(y, critique, y′) from one teacher generation; the critique may be missing (empty)."""
    if not text or not text.strip():
        raise ParseError("empty output")
    s = parse_sections(text)
    missing = [name for key, name in (("misaligned", "misaligned answer"), ("aligned", "corrected answer")) if key not in s]
    if missing:
        raise ParseError(f"missing section(s): {', '.join(missing)}")
    return ParsedPair(s["misaligned"], s.get("critique", ""), s["aligned"])


_NEGATED_VIOLATION = re.compile(r"\b(?:not|n't|no|never)\s+(?:\w+\s+)?violat", re.IGNORECASE)
_NEGATED_SATISFIES = re.compile(r"\b(?:not|n't|never)\s+(?:\w+\s+)?(?:satisf|acceptable|compliant|fine|ok)", re.IGNORECASE)
_VIOLATES = re.compile(r"violat|misaligned|\bfail|unacceptable|harmful|\bno\b|\bfalse\b", re.IGNORECASE)
_SATISFIES = re.compile(
    r"satisf|acceptable|compliant|\bpass|\bfine\b|aligned|\bok(?:ay)?\b|\byes\b|\btrue\b|\bkeep", re.IGNORECASE
)
_SAME = re.compile(r"^(?:same|unchanged|no change[s]?(?: needed)?|n/?a|none|\(same\)|keep(?: as is)?)[.!]?$", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedReview:
    satisfies: bool
    critique: str
    aligned: str  # '' when the answer is kept as is


def parse_review(text: str) -> ParsedReview:
    """The teacher's verdict on a real answer, its critique, and the correction if one is needed.

    Without a verdict line, a real correction means VIOLATES and 'SAME' means SATISFIES.
    A VIOLATES verdict without a usable correction is unparseable.
    """
    if not text or not text.strip():
        raise ParseError("empty output")
    s = parse_sections(text)
    corrected = s.get("aligned", "")
    same = bool(_SAME.match(corrected))
    verdict = re.split(r"[.\n]", s.get("verdict", ""), maxsplit=1)[0]
    if _NEGATED_VIOLATION.search(verdict):
        satisfies = True
    elif _NEGATED_SATISFIES.search(verdict) or _VIOLATES.search(verdict):
        satisfies = False
    elif _SATISFIES.search(verdict):
        satisfies = True
    elif verdict:
        raise ParseError(f"verdict {verdict[:40]!r} is neither SATISFIES nor VIOLATES")
    elif corrected:
        satisfies = same
    else:
        raise ParseError("missing section(s): verdict, corrected answer")
    if satisfies:
        return ParsedReview(True, s.get("critique", ""), "")
    if not corrected or same:
        raise ParseError("verdict VIOLATES but no corrected answer")
    return ParsedReview(False, s.get("critique", ""), corrected)
