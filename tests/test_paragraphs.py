"""Paragraph rewrite units: they join back to the answer byte for byte, never cut a code block,
and keep a heading with what it introduces."""

import pytest

from aligners.paragraphs import paragraphs, replace_body, sentences

LONG = "This paragraph is long enough to stand alone as a unit, " * 4

TEXTS = [
    "",
    "One line.",
    "\n\nStarts with blank lines.\n\n" + LONG + "\n\n  \n\nEnds with spaces.  \n",
    f"{LONG}\n\n```python\nx = 1\n\ny = 2\n```\n\n{LONG}",
    f"{LONG}\n\n```\nunclosed fence\n\nstill code\n\n{LONG}",
    f"**Contact:**\n\n- Jane Doe, 555-0142\n\n{LONG}\r\n\r\n{LONG}",
]


@pytest.mark.parametrize("text", TEXTS)
def test_paragraphs_join_back_to_the_answer(text):
    assert "".join(paragraphs(text)) == text


def test_code_blocks_stay_whole_and_short_pieces_join_the_next():
    fenced = "```python\nx = 1\n\ny = 2\n```"
    pieces = paragraphs(f"{LONG}\n\n{fenced}\n\n{LONG}", min_chars=20)
    assert len(pieces) == 3 and pieces[1].strip() == fenced
    heading, body = "**Contact:**", "- Jane Doe, 555-0142"
    assert paragraphs(f"{heading}\n\n{body}\n\n{LONG}", min_chars=30) == [f"{heading}\n\n{body}\n\n", LONG]
    # an unclosed fence keeps everything after it in one piece
    assert len(paragraphs(f"{LONG}\n\n```\ncode\n\nmore\n\n{LONG}", min_chars=20)) == 2


def test_replace_body_keeps_the_layout_around_it():
    assert replace_body("\n  Old text.\n\n", " New text. ") == "\n  New text.\n\n"
    assert replace_body("Same.\n\n", "Same.") == "Same.\n\n"


@pytest.mark.parametrize("text", TEXTS + ["Seriously? Multiply by 9/5, genius.", "Ask Dr. Lee, e.g. today.\n1. One. Two"])
def test_sentences_join_back_and_keep_code_and_markers_whole(text):
    assert "".join(sentences(text)) == text
    for unit in sentences(text)[:-1]:
        assert sum(ch.isalpha() for ch in unit) >= 3


def test_sentence_units():
    assert sentences("Seriously? Multiply by 9/5, genius.") == ["Seriously? ", "Multiply by 9/5, genius."]
    assert sentences('He said "no." Then left.\n\n1. Ask Dr. Lee. Next') == [
        'He said "no." ', "Then left.\n\n", "1. Ask Dr. Lee. ", "Next"]
    fenced = "```py\nx = 1. Y = 2\n\n```\n"
    assert sentences(f"Run this.\n{fenced}Done.") == ["Run this.\n", fenced, "Done."]
