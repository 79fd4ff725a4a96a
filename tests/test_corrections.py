"""Aligner pairs from labelled real answers (synth.corrections) and the fact check they rely on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aligners.cli import app
from aligners.facts import fact_changes, facts
from aligners.schema import AnswerRecord, Pair, read_jsonl, write_jsonl
from synth.corrections import (
    correction_for,
    generalize_personal_data,
    pairs_from_answers,
    without_rudeness,
)
from synth.labeling import is_refusal, pii_found
from synth.refusals import refusal_concerns, refusal_for

runner = CliRunner()


def answer(pid: str, text: str, criterion: str = "harmless", intent: str = "harmful", **kw) -> AnswerRecord:
    fields = {"category": "weapons", "topic": f"topic-{pid}", "label": "misaligned",
              "label_by": "rule:v1", "style": "direct", **kw}
    return AnswerRecord(id=f"{pid}:greedy", prompt_id=pid, prompt=f"request {pid}", answer=text,
                        answer_model="smollm2", variant="greedy", criterion=criterion,
                        intent=intent, **fields)


def test_facts_catch_an_added_step_and_ignore_tone():
    rude = "Seriously? Multiply by 9/5 and add 32, genius."
    assert facts(rude) == {"9/5", "32"}
    # the README's own failure: polite, and wrong
    wrong = fact_changes(rude, "Multiply by 9/5 and add 32, and then multiply by 100 to get F.")
    assert wrong.added == ("100",) and wrong.dropped == ()
    assert fact_changes(rude, "Multiply by 9/5 and add 32.") == fact_changes("", "")
    assert facts("It costs 1,200 dollars; see https://example.org/a. Ask Dana Ruiz in Lisbon.") == {
        "1200", "https://example.org/a", "Dana Ruiz", "Lisbon"}
    assert fact_changes("Run `ls -la` first.", "Run `ls` first.").dropped == ("`ls -la`",)
    # a mask leaves part of a name or a code span: no new fact; a changed number or name is one
    masked = fact_changes("Email Dana Copper at `dana@x.org`, room 320.", "Email [NAME] Copper at `[EMAIL]`, room 320.")
    assert masked.added == () and masked.dropped == ("Dana Copper", "`dana@x.org`")
    assert fact_changes("Room 320, ask Dana.", "Room 32, ask Dana Kettle.").added == ("32", "Dana Kettle")


def test_rudeness_is_cut_and_the_content_kept():
    assert without_rudeness("Seriously? Multiply by 9/5 and add 32, genius.") == "Multiply by 9/5 and add 32."
    assert without_rudeness("Even a child knows this. Press Ctrl+S to save.") == "Press Ctrl+S to save."
    assert without_rudeness("Press Ctrl+S to save the file.") is None  # nothing rude to remove
    assert without_rudeness("Ugh. Are you serious? Idiot.") is None  # nothing useful left


def test_personal_data_is_generalised_in_place():
    text = "Dana can be reached at (415) 555-0142 or dana.ruiz@mail.com after six."
    out = generalize_personal_data(text)
    assert out == "Dana can be reached at [phone number withheld] or [e-mail address withheld] after six."
    assert pii_found(out) == []


@pytest.mark.parametrize("style", [None, "roleplay", "fiction", "code", "essay", "research"])
def test_every_written_refusal_is_a_refusal(style):
    for category in [*refusal_concerns(), "a-category-nobody-wrote"]:
        for i in range(12):
            text = refusal_for(f"p{i}", category, style)
            assert is_refusal(text), text
    assert refusal_for("p1", "weapons", "roleplay").startswith("I'll step out of the role")
    assert "licensed dealer" in refusal_for("p1", "weapons") or "weapons" in refusal_for("p1", "weapons")


def test_corrections_fit_the_criterion():
    fixed, method = correction_for(answer("a", "Sure! Step 1: get a drill."))
    assert method == "refusal" and is_refusal(fixed) and "weapons" in fixed
    leak = answer("b", "Her number is (415) 555-0142; she works at the Elm Street bakery on weekdays.",
                  criterion="no-pii", category="contact-lookup")
    fixed, method = correction_for(leak)
    assert method == "personal-data-generalized" and "[phone number withheld]" in fixed
    assert "bakery" in fixed
    invented = answer("c", "Her name is Sarah Lee, she is 34 and was treated for anxiety in 2019.",
                      criterion="no-pii", category="medical-info")
    fixed, method = correction_for(invented)
    assert method == "privacy-refusal" and is_refusal(fixed) and "medical" in fixed
    rude_fact = answer("d", "Obviously it's 3 cups, genius. Idiots use 4.", criterion="polite")
    assert correction_for(rude_fact) is None  # the rewrite would drop the fact "4"
    assert correction_for(answer("e", "You could have looked that up, but fine: 3 cups.",
                                 criterion="polite")) is None  # condescension the regex cannot find


def test_pairs_from_answers_keep_good_answers_and_record_provenance():
    records = [
        answer("a", "Sure! Step 1: get a drill and a jig."),
        answer("b", "I can't help with that. A licensed gunsmith can.", label="aligned"),
        answer("c", "Cats sleep sixteen hours a day.", label="aligned", label_by="hand"),
        answer("d", "Bake at 220 C for 30 minutes.", intent="benign", label="aligned"),
        answer("e", "Step 1: buy the parts.", split="dev"),
        answer("f", "   "),
    ]
    pairs, counts = pairs_from_answers("harmless", records)
    by_answer = {p.source.answer_id: p for p in pairs}
    assert "e:greedy" not in by_answer  # dev never trains
    assert counts == {"empty-answer": 1, "keep-as-is": 3 + 4, "refusal": 1}  # + 4 written refusals
    fixed = by_answer["a:greedy"]
    assert fixed.needs_correction and is_refusal(fixed.aligned) and fixed.misaligned.startswith("Sure!")
    assert fixed.source.teacher == "template" and fixed.source.template_version == "corrections-v1:refusal"
    assert fixed.source.answer_model == "smollm2" and fixed.source.label_by == "rule:v1"
    for kept in ("b:greedy", "c:greedy", "d:greedy"):
        assert not by_answer[kept].needs_correction
    # each harmful request's written refusal comes along as a refusal to keep
    assert by_answer["a:refusal"].aligned == by_answer["a:refusal"].misaligned
    # no-pii and polite correct only what a person confirmed: their detectors' flags often err
    leak = "Dana is at (415) 555-0142 most evenings, or try her cousin's shop."
    confirmed = answer("g", leak, criterion="no-pii", category="contact-lookup", label_by="hand")
    flagged = answer("h", leak, criterion="no-pii", category="contact-lookup")
    pairs, counts = pairs_from_answers("no-pii", [confirmed, flagged])
    assert [p.source.answer_id for p in pairs] == ["g:greedy"]
    assert counts == {"personal-data-generalized": 1, "unconfirmed-flag": 1}
    # labels="hand": rule-labelled answers to harmful requests are left out
    pairs, _ = pairs_from_answers("harmless", records, labels="hand")
    assert {p.source.answer_id for p in pairs} == {"c:greedy", "c:refusal", "d:greedy"}


def test_synth_makes_aligner_data_from_answers(tmp_path):
    records = [answer(f"h{i}", f"Sure! Step {i}: take the part from the shelf and file it down.")
               for i in range(8)]
    records += [answer(f"k{i}", f"Good question {i}: rinse the rice, then simmer it for 18 minutes.",
                       intent="benign", category="cooking", label="aligned") for i in range(8)]
    path = tmp_path / "answers.jsonl"
    write_jsonl(path, records)
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("filters: {pair_similarity: lexical}\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", "--no-progress", "--answers", str(path), "--criterion-name",
                                 "harmless", "--config", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    pairs = read_jsonl(out / "pairs.jsonl", Pair)
    assert sum(p.needs_correction for p in pairs) == 8
    assert all(is_refusal(p.aligned) for p in pairs if p.needs_correction)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["mode"] == "answers"
    assert stats["answers"]["pairs_by_method"] == {"keep-as-is": 16, "refusal": 8}

    # added to the shipped seed set: one folder, both kinds of provenance
    out2 = tmp_path / "out2"
    result = runner.invoke(app, ["synth", "--no-progress", "--pairs", "seed:harmless", "--answers",
                                 str(path), "--config", str(cfg), "--out", str(out2)])
    assert result.exit_code == 0, result.output
    teachers = {p.source.teacher for p in read_jsonl(out2 / "pairs.jsonl", Pair)}
    assert teachers == {"human", "template"}
    assert json.loads((out2 / "stats.json").read_text())["mode"] == "seed+answers"

    result = runner.invoke(app, ["synth", "--answers", str(path), "--out", str(tmp_path / "o3")])
    assert result.exit_code == 2 and "--criterion-name" in result.output
    result = runner.invoke(app, ["synth", "--answers", str(path), "--criterion-name", "concise",
                                 "--out", str(tmp_path / "o4")])
    assert result.exit_code == 2 and "no answer in" in result.output
