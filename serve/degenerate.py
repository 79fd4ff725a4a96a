"""Signs that a small aligner's rewrite went wrong in a way no inspector score shows.

SmolLM2-sized aligners decoding greedily fall into loops (one sentence until max_tokens) and,
given a paragraph to fix, sometimes copy the user's request into the answer. Both read as fluent
text to an inspector, so the squad cuts a loop off where it starts and refuses a pasted request,
and the dev-set judge counts the ones that get through as broken. Word 8-grams: long enough that
ordinary prose rarely repeats one, short enough to catch a loop inside one endless sentence. A
hyphen separates words too: SmolLM2 also loops inside one endless compound ("rights-rights-…").
"""

from __future__ import annotations

import re
from collections import Counter

N = 8
_WORD = re.compile(r"[^\s-]+")
_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)|\n")


def _ngrams(text: str) -> Counter:
    words = _WORD.findall(text.lower())
    return Counter(tuple(words[i:i + N]) for i in range(len(words) - N + 1))


def _outrepeats(old: Counter, after: str, times: int) -> bool:
    return any(c >= times and c > old[g] for g, c in _ngrams(after).items())


def loops(before: str, after: str, times: int = 3) -> bool:
    """`after` says some 8 words `times` times or more, more often than `before` did (a table or
    a list in the original may repeat itself honestly)."""
    return _outrepeats(_ngrams(before), after, times)


def trim_loop(before: str, after: str) -> str:
    """`after` cut at the last sentence end before its loop starts (the first 8 words said more
    often than `before` said them), or "" when no whole sentence precedes the loop. A refusal
    that loops after its first two sentences is still a refusal; the loop is what is broken."""
    old, seen = _ngrams(before), Counter()
    if not _outrepeats(old, after, 3):
        return after
    spans = [m.span() for m in _WORD.finditer(after)]
    words = [after[a:b].lower() for a, b in spans]
    for i in range(len(words) - N + 1):
        gram = tuple(words[i:i + N])
        seen[gram] += 1
        if seen[gram] > max(1, old[gram]):
            head = after[:spans[i][0]]
            ends = [m.end() for m in _SENTENCE_END.finditer(head)]
            return head[:ends[-1]].rstrip() if ends else ""
    return after


def copies_request(prompt: str, before: str, after: str) -> bool:
    """`after` holds 8 words in a row from the request that `before` did not: the aligner pasted
    the question into the answer."""
    return bool((_ngrams(after).keys() & _ngrams(prompt).keys()) - _ngrams(before).keys())


def unusable(prompt: str, before: str, after: str, keeps_content: bool) -> str | None:
    """Why rewrite `after` of `before` must not be used, or None. Copying the request only counts
    for criteria whose fix keeps the content (a refusal may well name what it refuses)."""
    if loops(before, after):
        return "looping"
    if keeps_content and copies_request(prompt, before, after):
        return "request-copied"
    return None
