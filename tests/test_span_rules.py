"""What a tagged span becomes (inspectors/span_rules.py): split values joined, repeated names and
values masked everywhere, free health text cut with its sentence; pure text, no model."""

import re
from itertools import pairwise

import numpy as np

from inspectors.config import SpanTaggerConfig
from inspectors.span_rules import (
    CUT,
    Span,
    joined,
    repeats,
    says_when,
    sentence_cuts,
    value_part,
    whole_names,
    within_sentences,
)
from inspectors.spans import SpanTagger


def spans_of(text: str, *pieces: tuple[str, str]) -> list[Span]:
    """Spans over the first occurrence of each (piece, type), in order."""
    out = []
    for piece, kind in pieces:
        start = text.index(piece)
        out.append(Span(start, start + len(piece), kind))
    return sorted(out, key=lambda s: s.start)


def texts(text: str, spans: list[Span]) -> list[tuple[str, str]]:
    return [(text[s.start:s.end], s.type) for s in spans]


def test_a_value_split_in_two_is_joined_but_a_name_and_its_address_stay_apart():
    text = "Call **(720) 555-0147** or see Dana Ruiz - 17 Elm Lane, 104 Larkspur Lane."
    split = spans_of(text, ("(720", "PHONE"), ("555-0147", "PHONE"), ("Dana Ruiz", "NAME"),
                     ("17 Elm Lane", "ADDRESS"), ("104", "ADDRESS"), ("Larkspur Lane", "LOCATION"))
    assert texts(text, joined(text, split)) == [
        ("(720) 555-0147", "PHONE"), ("Dana Ruiz", "NAME"), ("17 Elm Lane", "ADDRESS"),
        ("104 Larkspur Lane", "LOCATION"),  # one space apart: one value, typed as the longer
    ]
    two = "I met Dana Ruiz. Tom Lee came too."
    assert texts(two, joined(two, spans_of(two, ("Dana Ruiz", "NAME"), ("Tom Lee", "NAME")))) == [
        ("Dana Ruiz", "NAME"), ("Tom Lee", "NAME")]  # a sentence's end lies between them


def test_a_span_never_crosses_a_sentence_end():
    text = "I met **Dana Ruiz**. Tom Lee came too.\nCall 555-0147"
    crossing = [Span(text.index("Dana"), text.index(" came"), "NAME"), Span(text.index("too"), len(text), "PHONE")]
    assert texts(text, within_sentences(text, crossing)) == [
        ("Dana Ruiz", "NAME"), ("Tom Lee", "NAME"), ("too", "PHONE"), ("Call 555-0147", "PHONE")]


def test_a_name_or_value_masked_once_is_masked_wherever_it_comes_again():
    text = ("Mirela Popescu (born 22 January 1903) was on reduced hours. Mirela's score: 3. "
            "Born 22 January 1903. Visa and Corliss Mews; Visa again, Corliss Mews again. Annual review for Mirela.")
    found = spans_of(text, ("Mirela Popescu", "NAME"), ("22 January 1903", "DATE"), ("Visa", "FINANCIAL"),
                     ("Corliss Mews", "LOCATION"))
    got = repeats(text, found, name_types=["NAME"])
    assert texts(text, got) == [
        ("Mirela Popescu", "NAME"), ("22 January 1903", "DATE"), ("Mirela", "NAME"),  # "Mirela's"
        ("22 January 1903", "DATE"), ("Visa", "FINANCIAL"), ("Corliss Mews", "LOCATION"),
        ("Corliss Mews", "LOCATION"), ("Mirela", "NAME"),
    ]  # a lone capitalised word of another type ("Visa") is not repeated; "Annual" holds no "Ann"
    assert all(a.end <= b.start for a, b in pairwise(got))
    without_names = [t for t in texts(text, got) if t != ("Mirela", "NAME")]
    assert texts(text, repeats(text, found)) == without_names  # without name types, no name words


def test_a_name_may_open_a_sentence_when_the_tagger_says_it_is_one():
    text = "Gerald works nights. The house is empty. Tomasz's dog barks."
    gerald, the, tomasz = Span(0, 6, "NAME"), Span(21, 24, "NAME"), Span(41, 49, "NAME")
    assert value_part(text, gerald) is None  # an opener says nothing about a name...
    assert value_part(text, gerald, ["NAME"]) == gerald  # ...unless the tagger typed it one
    assert value_part(text, the, ["NAME"]) is None  # a common word is nobody's name
    assert value_part(text, tomasz, ["NAME"]) == tomasz
    assert value_part(text, Span(0, 6, "OTHER"), ["NAME"]) is None


def test_a_masked_surname_takes_the_first_name_beside_it():
    text = "Your landlord is Marta Kowalski. The Kowalski family, Dr. Lee Chen and May Okafor-Brandt met."
    surnames = spans_of(text, ("Kowalski", "NAME"), ("Lee", "NAME"), ("Okafor-Brandt", "NAME"))
    surnames.insert(1, Span(text.index("Kowalski", 30), text.index("Kowalski", 30) + 8, "NAME"))
    assert [text[s.start:s.end] for s in whole_names(text, surnames, ["NAME"])] == [
        "Marta Kowalski", "Kowalski", "Lee Chen", "Okafor-Brandt"]  # not "The", "Dr.", "May"
    assert whole_names(text, surnames, []) == surnames  # only spans of a name type grow


def test_free_health_text_cuts_its_sentence_but_never_the_whole_answer():
    text = ("Room 418 is on the fourth floor.\n- She had a **mild heart attack** on Tuesday.\n"
            "Visiting hours end at 8. Bring ID on the way in.")
    spans = spans_of(text, ("mild heart attack", "HEALTH"), ("on the way", "HEALTH"), ("Room 418", "ID"))
    cuts = sentence_cuts(text, spans, ["HEALTH"])
    # "on the way" has no word of five letters: no cut for it
    assert texts(text, cuts) == [("- She had a **mild heart attack** on Tuesday.", CUT)]
    assert sentence_cuts(text, spans, ["FINANCIAL"]) == []
    alone = "She had a mild heart attack."
    assert sentence_cuts(alone, spans_of(alone, ("mild heart attack", "HEALTH")), ["HEALTH"]) == []


def test_masks_and_cuts_never_overlap_so_no_untagged_text_is_lost():
    """A run of the tagger bridging ". " joins the number before a cut sentence to one inside it:
    split at the sentence end, the first stays a mask and the second goes with its sentence."""
    answer = "Call 555-0147. 555-0199 had a stroke last year. Bye now."
    tokens = [(m.start(), m.end()) for m in re.finditer(r"\d+|\w+|[^\w\s]|\s", answer)]
    tokens = [t for t in tokens if answer[t[0]:t[1]] != " " or answer[t[0] - 1] == "."]  # ". " is one gap token
    classes = ["O", "PHONE", "HEALTH"]
    phone = set(range(answer.index("555"), answer.index(" had")))
    stroke = set(range(answer.index("a stroke"), answer.index(" last")))
    proba = np.full((len(tokens), 3), 0.05)
    for t, (a, _) in enumerate(tokens):
        proba[t, 1 if a in phone else 2 if a in stroke else 0] = 0.9
    cfg = SpanTaggerConfig(values_only=True, cut_sentence_types=["HEALTH"], mask_repeats=True, name_types=["NAME"])
    tagger = SpanTagger(cfg, "no-pii")
    tagger.classes_, tagger.threshold_ = classes, 0.5
    spans = tagger._spans(answer, np.array(tokens), proba)
    assert tagger.rewrite(answer, spans) == "Call [PHONE]. Bye now."
    # a span overlapping a later one is skipped, never applied with stale offsets
    assert tagger.rewrite("ab cd ef", [Span(0, 5, "NAME"), Span(3, 8, "NAME")]) == "ab [NAME]"


def test_a_span_that_only_says_when_is_left_as_it_is():
    """A clock time, a weekday, a duration or a count of days is nobody's personal data: masked,
    it garbles the answer ("since [DATE] AM"). A span holding another value is still masked, and
    a month stays a value (half of a date of birth)."""
    text = ("Parked since 7:52 AM on Saturday, 3 days in a row; a 40-minute stop at 10pm. "
            "Call Dana at 555-0147 on Monday. Born 22 March 1990.")
    spans = spans_of(text, ("7:52", "DATE"), ("Saturday", "DATE"), ("3 days", "OTHER"), ("40-minute", "OTHER"),
                     ("10pm", "DATE"), ("Dana", "NAME"), ("555-0147 on Monday", "PHONE"), ("22 March 1990", "DATE"))
    assert [says_when(text, s) for s in spans] == [True, True, True, True, True, False, False, False]
    tagger = SpanTagger(SpanTaggerConfig(), "no-pii")
    assert tagger.rewrite(text, spans) == ("Parked since 7:52 AM on Saturday, 3 days in a row; a 40-minute stop at 10pm. "
                                           "Call [NAME] at [PHONE]. Born [DATE].")
