"""synth building blocks without HTTP: templates, tolerant parsing, filters, cache, config."""

from __future__ import annotations

import json

import pytest

from aligners.backends.base import Generation, GenerationRequest
from aligners.config import ConfigError, load_config
from aligners.schema import Criterion
from synth import prompts
from synth.cache import GenerationCache, request_key
from synth.config import SynthConfig
from synth.filters import dedup_exact, dedup_near, normalize, pair_similarity, within
from synth.parse import (
    ParseError,
    clean_question,
    clean_topic,
    parse_list,
    parse_pair,
    parse_review,
)

CRITERION = Criterion(
    name="harmless",
    description="The answer helps with something dangerous or illegal.",
    correction="Refuse briefly and offer a safe alternative.",
    examples=[{"prompt": "how to pick a lock", "misaligned": "Use a tension wrench...", "aligned": "I can't help."}],
    topics=["weapons", "hacking"],
)


# --- templates -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", prompts.TEMPLATE_NAMES)
def test_every_template_is_versioned_and_comment_free(name):
    t = prompts.load_template(name)
    assert t.version.startswith(f"{name}-v")
    assert "# version" not in t.body and not t.body.startswith("#")


def test_prompts_render_every_placeholder():
    v, text = prompts.topics_prompt(CRITERION, 5, avoid=["weapons"])
    assert v == "topics-v1" and "List 5 distinct" in text and "Do not repeat these topics: weapons" in text
    assert "For instance: weapons, hacking." in text
    _, text = prompts.questions_prompt(CRITERION, "lock picking", 3)
    assert '"lock picking"' in text and "Write 3 different" in text
    _, text = prompts.pair_prompt(CRITERION, "How do I  pick\na lock?")
    assert "User question: How do I pick a lock?" in text and "Corrected answer: I can't help." in text
    _, text = prompts.review_prompt(CRITERION, "q?", "an answer\nin two lines")
    assert "an answer\nin two lines" in text and "Verdict: SATISFIES or VIOLATES" in text
    assert "{{" not in text


def test_render_refuses_missing_or_unknown_values():
    t = prompts.parse_template("x", "# version: x-v2\nHello {{name}}\n")
    assert t.version == "x-v2" and t.render(name="you") == "Hello you\n"
    with pytest.raises(prompts.TemplateError, match="missing values \\['name'\\]"):
        t.render()
    with pytest.raises(prompts.TemplateError, match="unexpected values \\['other'\\]"):
        t.render(name="a", other="b")
    with pytest.raises(prompts.TemplateError, match="version"):
        prompts.parse_template("x", "no header\n")


# --- lists -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1. Phishing\n2. Lock picking\n3. Fraud", ["Phishing", "Lock picking", "Fraud"]),
        (
            ("Sure! Here are 3 topics:\n\n1) **Phishing emails**: tricking people\n- Lock picking\n"
            "* `Fraud`\nTopic 4: Stalking\n\nI hope this helps!"),
            ["Phishing emails", "Lock picking", "Fraud", "Stalking"],
        ),
        ('```json\n["Phishing", "Fraud"]\n```', ["Phishing", "Fraud"]),
        ('Here you go: {"topics": [{"name": "Phishing"}, {"name": "Fraud"}]}', ["Phishing", "Fraud"]),
        ("weapons, hacking, fraud", ["weapons", "hacking", "fraud"]),
        ("Here are some topics:\nPhishing\nFraud\n", ["Phishing", "Fraud"]),
        ("### 1. Phishing — emails that steal logins\n### 2. Fraud", ["Phishing", "Fraud"]),
        ("1. <topic>\n2. <topic>\n\n1. Phishing\n2. Fraud", ["Phishing", "Fraud"]),  # echoed format
    ],
)
def test_topic_lists_in_many_shapes(text, expected):
    items = parse_list(text, kind="topic", split_commas=True).items
    assert [clean_topic(i) for i in items] == expected


def test_question_lists_keep_the_question_and_duplicates():
    text = (
        "Here are some questions:\n1. **Phishing**: How do I write a phishing email?\n"
        '2. "How do I write a phishing email?"\n3. Q: ok so how do i fake a bank site\n'
    )
    items = [clean_question(i) for i in parse_list(text, kind="question").items]
    assert items == [
        "How do I write a phishing email?",
        "How do I write a phishing email?",  # duplicates are counted by the filters, not hidden
        "ok so how do i fake a bank site",
    ]


def test_unmarked_lines_drop_chatter_and_refusals():
    text = "Sure, here they are:\nHow do I pick a lock?\nWhich tools open doors?\nI hope these help."
    assert parse_list(text).items == ["How do I pick a lock?", "Which tools open doors?"]
    with pytest.raises(ParseError, match="no questions"):
        parse_list("I'm sorry, but I can't help with that.", kind="question")
    with pytest.raises(ParseError, match="empty"):
        parse_list("   \n")


def test_clean_topic_rejects_questions_and_long_lines():
    assert clean_topic("Phishing scams - emails that steal logins") == "Phishing scams"
    assert clean_topic("How do I phish?") == ""
    assert clean_topic("x" * 200) == ""


# --- pairs and reviews -----------------------------------------------------------------------

BAD, CRIT, GOOD = "Sure, step one is to buy a tension wrench.", "It explains burglary.", "I can't help with that."


@pytest.mark.parametrize(
    "text",
    [
        f"Misaligned answer: {BAD}\nCritique: {CRIT}\nCorrected answer: {GOOD}",
        (f"Here is the example.\n\n**Misaligned answer:** {BAD}\n\n**Critique:** {CRIT}\n\n"
        f"**Corrected answer:** {GOOD}\n\nI hope this helps!"),
        f"### Misaligned Answer\n{BAD}\n\n### Critique\n{CRIT}\n\n### Corrected Answer\n{GOOD}\n---",
        f'```json\n{{"misaligned_answer": "{BAD}", "critique": "{CRIT}", "corrected_answer": "{GOOD}"}}\n```',
        f'Sure: {{"misaligned": "{BAD}", "critique": "{CRIT}", "aligned": "{GOOD}"}} Done.',
        f"1. Misaligned answer (y): {BAD}\n2. Critique - {CRIT}\n3. Corrected answer (y'): {GOOD}",
        f"misaligned response:\n{BAD}\nCRITIQUE: {CRIT}\nRevised answer: \"{GOOD}\"",
        ("Misaligned answer: <an answer a careless assistant might give>\nCritique: <...>\n"
        f"Corrected answer: <the answer rewritten>\n\nMisaligned answer: {BAD}\nCritique: {CRIT}\n"
        f"Corrected answer: {GOOD}"),
        f"```\nMisaligned answer: {BAD}\nCritique: {CRIT}\nCorrected answer: {GOOD}\n```",
    ],
    ids=["plain", "bold+chatter", "headings", "json-fenced", "json-inline", "numbered", "synonyms",
         "echoed-placeholders", "fenced"],
)
def test_pair_variants(text):
    p = parse_pair(text)
    assert (p.misaligned, p.critique, p.aligned) == (BAD, CRIT, GOOD)


def test_pair_keeps_multiline_sections_and_code():
    text = "Misaligned answer:\nStep 1: buy\n```sh\nrm -rf /\n```\nStep 2: run\n\nCorrected answer: No."
    p = parse_pair(text)
    assert p.misaligned == "Step 1: buy\n```sh\nrm -rf /\n```\nStep 2: run"
    assert (p.critique, p.aligned) == ("", "No.")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("I'm sorry, I can't help with that.", "misaligned answer, corrected answer"),
        (f"Misaligned answer: {BAD}\nCritique: {CRIT}", "corrected answer"),
        (f"Critique: {CRIT}\nCorrected answer: {GOOD}", "misaligned answer"),
        ("Misaligned answer: <...>\nCorrected answer: <...>", "misaligned answer, corrected answer"),
    ],
)
def test_unparseable_pairs_say_what_is_missing(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_pair(text)


@pytest.mark.parametrize(
    "text, satisfies, aligned",
    [
        ("Verdict: VIOLATES\nCritique: bad\nCorrected answer: fixed", False, "fixed"),
        ("**Verdict:** SATISFIES\nCritique: fine\nCorrected answer: SAME", True, ""),
        ("Verdict: The answer does not violate the criterion.\nCorrected answer: SAME", True, ""),
        ("Verdict: does not satisfy\nCorrected answer: fixed", False, "fixed"),
        ("Critique: fine\nCorrected answer: unchanged", True, ""),
        ("Critique: bad\nCorrected answer: fixed", False, "fixed"),
        ('{"verdict": "violates", "critique": "bad", "corrected_answer": "fixed"}', False, "fixed"),
        ('{"satisfies": true, "critique": "ok"}', True, ""),
    ],
)
def test_review_variants(text, satisfies, aligned):
    r = parse_review(text)
    assert (r.satisfies, r.aligned) == (satisfies, aligned)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Verdict: VIOLATES\nCritique: bad\nCorrected answer: SAME", "no corrected answer"),
        ("Verdict: VIOLATES\nCritique: bad", "no corrected answer"),
        ("Verdict: perhaps\nCorrected answer: x", "neither"),
        ("Critique: hmm", "verdict, corrected answer"),
    ],
)
def test_unparseable_reviews(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_review(text)


# --- filters ----------------------------------------------------------------------------------


def test_exact_dedup_ignores_case_punctuation_and_spacing():
    items = ["How do I pick a lock?", "how do i  pick a LOCK", "Which tools open doors?"]
    kept, dropped = dedup_exact(items, str)
    assert kept == [items[0], items[2]] and [d.item for d in dropped] == [items[1]]
    assert normalize("  A,b\tC! ") == "a b c"


def test_near_dedup_catches_rewrites_but_not_different_questions():
    items = [
        "How do I write a convincing phishing email to get bank logins?",
        "How can I write a convincing phishing email to get bank logins?",
        "What is the best way to spoof a sender address in an email?",
        "How do I write a really convincing phishing email to get bank logins?",
        "How do I write a convincing phishing text message to get bank logins?",  # ~0.6: kept
    ]
    kept, dropped = dedup_near(items, str, threshold=0.7)
    assert kept == [items[0], items[2], items[4]]
    assert [d.item for d in dropped] == [items[1], items[3]] and "Jaccard" in dropped[0].detail
    assert dedup_near(items, str, threshold=1.0) == (items, [])  # 1.0 turns it off


def test_pair_similarity_lexical_and_minilm():
    pairs = [
        ("Sure, here is how to pick it.", "sure  here is how to pick it"),  # same after normalising
        ("Go buy a tension wrench and rake the pins.", "I can't help with breaking into homes."),
        ("The capital of France is Paris.", "The capital of France is Paris!!"),
    ]
    lex = pair_similarity(pairs, "lexical")
    assert lex[0] == 1.0 and lex[1] < 0.6 and lex[2] == 1.0
    cos = pair_similarity(pairs[:2] + [("Paris is France's capital.", "France's capital city is Paris.")], "minilm")
    assert cos[0] == 1.0 and cos[1] < 0.6 and cos[2] > 0.9
    # pairs sharing few words are "different" without an embedding (no model load needed)
    assert pair_similarity(pairs[1:2], "minilm", embed_min_jaccard=0.25) == [0.0]
    assert pair_similarity(pairs[2:], "minilm", embed_min_jaccard=0.25) == [1.0]


def test_length_limits_strip_whitespace():
    assert within("  abc  ", 3, 3) and not within("ab", 3, 10) and not within("x" * 11, 1, 10)


# --- cache ------------------------------------------------------------------------------------


def _req(text: str) -> GenerationRequest:
    return GenerationRequest.chat(text)


def test_cache_key_depends_on_model_and_every_request_field():
    a = request_key("m", _req("hi"))
    assert a == request_key("m", _req("hi"))
    assert a != request_key("other", _req("hi"))
    assert a != request_key("m", _req("hi!"))
    assert a != request_key("m", GenerationRequest.chat("hi", params={"seed": 1}))


def test_cache_survives_a_torn_last_write(tmp_path):
    path = tmp_path / "cache" / "generations.jsonl"
    with GenerationCache(path) as c:
        c.put_many([(request_key("m", _req(t)), "m", _req(t), Generation(text=t.upper())) for t in ("a", "b")])
    full = path.read_bytes()
    path.write_bytes(full + full.splitlines(keepends=True)[0][:40])  # crash mid-append
    c = GenerationCache(path)
    assert (len(c), c.torn) == (2, 1)
    assert c.get(request_key("m", _req("b"))).text == "B"
    c.put_many([(request_key("m", _req("c")), "m", _req("c"), Generation(text="C"))])
    c.close()
    c = GenerationCache(path)  # the new record did not merge into the torn line
    assert (len(c), c.torn) == (3, 1) and c.get(request_key("m", _req("c"))).text == "C"
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["request"]["messages"][0]["content"] == "c"


def test_missing_cache_file_is_empty(tmp_path):
    c = GenerationCache(tmp_path / "nope.jsonl")
    assert len(c) == 0 and c.get("x") is None and not (tmp_path / "nope.jsonl").exists()


# --- config -----------------------------------------------------------------------------------


def test_synth_config_defaults_and_checks(tmp_path):
    assert SynthConfig().filters.pair_similarity == "minilm"
    path = tmp_path / "synth" / "bad.yaml"
    path.parent.mkdir()
    path.write_text("split_fractions: [0.5, 0.5, 0.5]\nfilters: {min_answer_chars: 50, max_answer_chars: 10}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)  # the folder name picks SynthConfig
    assert "split_fractions" in str(err.value) and "min_answer_chars" in str(err.value)
