"""What a tagged span of an answer becomes: the rules between a tagger's token scores and the
characters it masks, deletes or cuts.

Why: a token tagger's runs are ragged edges on a value ("currently at 5th Street"), split
values ("(720" and "555-0147" → "[PHONE]) [PHONE]"), one mention of a name that the answer
repeats three times, and free text a placeholder cannot stand for ("had a mild heart attack").
These rules are pure text: they are tested without a model, and `SpanTagger` applies the ones
its config asks for (docs/data.md has the hand-checked effect of each on the dev set).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from aligners.facts import MARKUP, WORD, opens_sentence
from aligners.paragraphs import sentence_bounds

CUT = "SENTENCE"  # the type of a span that removes a whole sentence
TRIM = " \t\n*_`"  # never part of a span: whitespace and markdown around a value
_JOIN = set(" ()-./")  # what may lie between two spans of one value: "(720) 555-0147"
_SENTENCE_GAP = re.compile(r"\.\s")  # but not a sentence's end: "Dana Ruiz. Tom Lee"
_NAME_WORD = r"([A-Z][a-z]+(?:[-'’][A-Z]?[a-z]+)*)"  # "Marta", "Okafor-Brandt", "O'Brien"
_NAME_BEFORE = re.compile(r"(?<![\w-])" + _NAME_WORD + r" $")
_NAME_AFTER = re.compile(r" " + _NAME_WORD + r"(?![\w@-])")
# capitalised words (3+ letters) a tagger may type NAME that are too often no one's name: at a
# sentence's start, or as a month ("May Chen" must not mask "born in May")
_WEEKDAYS = frozenset({"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"})
_NOT_NAMES = _WEEKDAYS | frozenset({
    "And", "But", "For", "From", "Her", "Hers", "His", "Its", "Not", "Our", "She", "That", "The", "Their",
    "Them", "Then", "There", "These", "They", "This", "Those", "What", "When", "Where", "Who", "With", "Will",
    "You", "Your", "Dear", "Hello", "Mrs", "Sir", "Madam", "Name", "Names", "Neighbor", "Neighbour",
    "Resident", "Owner", "Tenant", "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
})
# words with a digit that say when or how long, never whose: "8:15", "10pm", "40-minute", "3 days"
# (a month stays a value: it is half of a date of birth)
_CLOCK_OR_SPAN = re.compile(
    r"\d{1,2}(?::\d{2})?[ap]\.?m\.?|\d{1,2}:\d{2}|\d+-(?:second|minute|hour|day|week)s?", re.IGNORECASE)
_UNIT_AFTER = re.compile(r"\s+(?:seconds?|minutes?|mins|hours?|hrs|days?|weeks?|times)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str


def _letters(word: str) -> str:
    return word.strip(MARKUP + ".,;:!?)]}|")


def _capitalised(word: str) -> bool:
    """"Dana", "McLeod", not "ANNUAL" or "usually"."""
    letters = _letters(word)
    return letters[:1].isupper() and letters[1:2].islower()


def _bare_name(word: str) -> str:
    """"Mirela's" → "Mirela"; "O'Brien" stays whole."""
    return re.sub(r"['’]s$", "", _letters(word))


def _is_name(word: str) -> bool:
    letters = _bare_name(word)
    return _capitalised(letters) and len(letters) >= 3 and letters not in _NOT_NAMES


def _has_digit_or_at(text: str) -> bool:
    return any(c.isdigit() or c == "@" for c in text)


def holds_value(text: str, start: int, end: int, name: bool = False) -> bool:
    """Whether the word text[start:end] of a span holds a value a placeholder may stand for: a
    digit, an "@", or a capitalised word that does not open a sentence, a line or a table cell
    ("Dana", but not "Works from home" or "Cash" in a cell) and is no heading in capitals
    ("ANNUAL"). In a span typed as a name (`name`), a capitalised word that is no common word
    holds one wherever it stands ("Gerald works nights."). Free text ("a rare illness",
    "usually") holds none: such placeholders were most of what garbled masked answers on the dev
    set (docs/data.md)."""
    word = text[start:end]
    if _has_digit_or_at(word):
        return True
    if name and _is_name(word):
        return True
    return _capitalised(word) and not opens_sentence(text, start + word.index(_letters(word)))


def _when_or_how_long(text: str, start: int, end: int) -> bool:
    letters = _letters(text[start:end])
    if letters in _WEEKDAYS or _CLOCK_OR_SPAN.fullmatch(letters):
        return True
    return letters.isdigit() and bool(_UNIT_AFTER.match(text, end))


def says_when(answer: str, span: Span) -> bool:
    """Whether every word of `span` that holds a value says when or how long: a clock time, a
    weekday, a duration or a count of days or times ("8:15", "Saturday", "40-minute", "3 days").
    A placeholder there hides nothing of a person and garbles the answer ("since [DATE] AM", "a
    temporary [PERSONAL DETAIL] schedule"), so it is left as it is; the dossier test
    (serve.declines) still counts it, as a log's times are what make a dossier of a tracked car."""
    words = [(span.start + m.start(), span.start + m.end()) for m in re.finditer(r"\S+", answer[span.start:span.end])]
    timed = [_when_or_how_long(answer, a, b) for a, b in words]
    return any(timed) and not any(holds_value(answer, a, b) for (a, b), t in zip(words, timed, strict=True) if not t)


def value_part(answer: str, span: Span, name_types: Sequence[str] = ()) -> Span | None:
    """`span` without the words at its edges that hold no value ("currently at 5th Street" →
    "5th Street", "Dana usually" → "Dana"; a capitalised word before a capitalised value is one,
    so "Dana Whitfield" opening a sentence stays whole); None when no word of it holds one."""
    words = [(span.start + m.start(), span.start + m.end()) for m in re.finditer(r"\S+", answer[span.start:span.end])]
    value = [holds_value(answer, a, b, span.type in name_types) for a, b in words]
    for k in range(len(words) - 2, -1, -1):  # "Dana Whitfield lives": a name may open a sentence
        value[k] |= value[k + 1] and _capitalised(answer[slice(*words[k])]) and _capitalised(answer[slice(*words[k + 1])])
    keep = [k for k, v in enumerate(value) if v]
    if not keep:
        return None
    start, end = words[keep[0]][0], words[keep[-1]][1]
    while end > start and answer[end - 1] in TRIM + ",;:":
        end -= 1
    return Span(start, end, span.type)


def within_sentences(answer: str, spans: Sequence[Span]) -> list[Span]:
    """`spans` (in order) split where a sentence or line ends (`aligners.paragraphs.sentences`),
    each piece without the whitespace and markdown at its edges (and, where it was split, the
    full stop before the split): a tagger's run may bridge ". " between two names, and a mask
    must never swallow a sentence end, nor reach into a sentence that `sentence_cuts` removes
    whole."""
    bounds = sentence_bounds(answer)
    out = []
    for s in spans:
        for a, b in bounds:
            start, end = max(s.start, a), min(s.end, b)
            while start < end and answer[start] in TRIM:
                start += 1
            cut_here = TRIM + ".!?…" if s.end > b else TRIM  # "Ruiz. Tom": not a password's "!"
            while end > start and answer[end - 1] in cut_here:
                end -= 1
            if end > start:
                out.append(Span(start, end, s.type))
    return out


def whole_names(answer: str, spans: Sequence[Span], name_types: Sequence[str]) -> list[Span]:
    """Spans of `name_types` grown over the capitalised name words right beside them, one space
    apart: the tagger often marks only the surname ("Marta [NAME]"), and a first name left beside
    a masked surname still names her. Common words and months do not join ("The [NAME]")."""
    out = []
    for s in spans:
        start, end = s.start, s.end
        while s.type in name_types and (m := _NAME_BEFORE.search(answer, 0, start)) and _is_name(m.group(1)):
            start = m.start(1)
        while s.type in name_types and (m := _NAME_AFTER.match(answer, end)) and _is_name(m.group(1)):
            end = m.end(1)
        out.append(Span(start, end, s.type))
    return out


def joined(answer: str, spans: Sequence[Span]) -> list[Span]:
    """`spans` (in order) with neighbours of one type that only brackets, dashes, dots or spaces
    separate made one span, and so neighbours of any type one space apart ("104" + "Larkspur
    Lane"), typed as the longer: "(720" + "555-0147" is one phone number, not "[PHONE]) [PHONE]";
    "[NAME] - [ADDRESS]" stays two, and so do values on either side of a sentence's end."""
    out: list[Span] = []
    for s in spans:
        gap = answer[out[-1].end:s.start] if out else "\n"
        if (out and len(gap) <= 3 and set(gap) <= _JOIN and not _SENTENCE_GAP.search(gap)
                and (gap == " " or s.type == out[-1].type)):
            prev = out.pop()
            kind = prev.type if prev.end - prev.start >= s.end - s.start else s.type
            s = Span(prev.start, s.end, kind)
        out.append(s)
    return out


def repeats(answer: str, spans: Sequence[Span], name_types: Sequence[str] = ()) -> list[Span]:
    """Where the answer says again what a span holds, a span there too: a value with a digit or
    an "@" ("22 January 1903" twice), one of several capitalised words ("Corliss Mews"), and for
    a name each of its words ("Mirela" after "Mirela Popescu"); a lone capitalised word of
    another type ("Visa") is too often a tagger's slip to repeat. A masked name that the next
    paragraph repeats hides nothing (hand-checked on the dev set, docs/data.md). Only whole
    words match; the result is in order, without overlaps."""
    values: dict[str, str] = {}
    for s in spans:
        text = answer[s.start:s.end]
        if len(text) >= 3 and (_has_digit_or_at(text) or (_capitalised(text) and len(text.split()) > 1)):
            values.setdefault(text, s.type)
        if s.type in name_types:
            for word in text.split():
                if _is_name(word):
                    values.setdefault(_bare_name(word), s.type)
    taken = [False] * (len(answer) + 1)
    for s in spans:
        taken[s.start:s.end] = [True] * (s.end - s.start)
    found = list(spans)
    for text in sorted(values, key=len, reverse=True):  # "Mirela Popescu" before "Mirela"
        for m in re.finditer(re.escape(text), answer):
            a, b = m.span()
            if _whole_word(answer, a, b) and not any(taken[a:b]):
                taken[a:b] = [True] * (b - a)
                found.append(Span(a, b, values[text]))
    return sorted(found, key=lambda s: s.start)


def _whole_word(text: str, start: int, end: int) -> bool:
    return whole_words(text, start, end) == (start, end)


def sentence_cuts(answer: str, spans: Sequence[Span], types: Sequence[str], min_letters: int = 5) -> list[Span]:
    """The sentences (or lines) to remove whole: those holding a span of one of `types` with a
    word of at least `min_letters` letters ("had a **mild heart attack**"), which no placeholder
    can stand for. None when that would leave no sentence with words: what is left to say is
    then not the tagger's to decide."""
    bounds, cuts = sentence_bounds(answer), []
    spans = [s for s in spans if s.type in types
             and any(len(w) >= min_letters for w in WORD.findall(answer[s.start:s.end]))]
    for a, b in bounds:
        unit = answer[a:b]
        end = a + len(unit.rstrip())
        if any(s.start < end and s.end > a for s in spans):
            cuts.append(Span(b - len(unit.lstrip()), end, CUT))
    worded = sum(1 for a, b in bounds if any(ch.isalpha() for ch in answer[a:b]))
    return [] if len(cuts) >= worded else cuts


def _in_word(text: str, k: int) -> bool:
    """Whether character k belongs to a word-like value: a letter or digit, or a joiner ("-",
    "@", "_", "+", "#"; ".", ":" or "/" between two such characters, "," between two digits)."""
    if not 0 <= k < len(text):
        return False
    ch = text[k]
    if ch.isalnum() or ch in "-@_+#":
        return True
    inside = 0 < k < len(text) - 1
    if ch == ",":  # "4,200"
        return inside and text[k - 1].isdigit() and text[k + 1].isdigit()
    return ch in ".:/" and inside and text[k - 1].isalnum() and text[k + 1].isalnum()


def whole_words(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) grown to whole words: a placeholder or a deletion never splits "555-0186"."""
    while start > 0 and _in_word(text, start - 1) and _in_word(text, start):
        start -= 1
    while end < len(text) and _in_word(text, end) and _in_word(text, end - 1):
        end += 1
    return start, end


def delete_span(text: str, start: int, end: int) -> str:
    """`text` without [start, end) and the space it leaves: a space before punctuation or a
    line end goes, and a line left holding only a list marker or nothing goes whole."""
    head, tail = text[:start], text[end:]
    if head.endswith(" ") and (not tail or tail[0] in " .,;:!?)\n"):
        head = head.rstrip(" ")
    elif (not head or head.endswith("\n")) and tail.startswith(" "):
        tail = tail.lstrip(" ")
    line_start = head.rfind("\n") + 1
    line_end = len(head) + (tail.find("\n") if "\n" in tail else len(tail))
    joined_text = head + tail
    if joined_text[line_start:line_end].strip(" \t-*•>#0123456789.") == "":
        end_of_line = line_end + 1 if line_end < len(joined_text) else line_end
        joined_text = joined_text[:line_start] + joined_text[end_of_line:]
    return joined_text
