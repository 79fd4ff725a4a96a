"""Aligner pairs from answers corrected by hand paragraph by paragraph (synth.paragraph_pairs):
the units are the squad's rewrite units, unchanged units teach keeping, and a correction that
adds (or, for a tone fix, drops) a fact teaches nothing."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from aligners.cli import app
from aligners.facts import facts
from aligners.paragraphs import paired_paragraphs, paragraphs
from aligners.schema import AnswerRecord, Pair, WrittenCorrection, read_jsonl, write_jsonl
from synth.corrections import pairs_from_answers
from synth.paragraph_pairs import fact_problem, inspector_pairs, pairs_from_corrections

runner = CliRunner()
LONG = "Preheat the oven to 180 C and grease a 20 cm tin; the batter needs 35 minutes to set. " * 2


def written(pid: str, misaligned: list[str], aligned: list[str], criterion: str = "polite", **kw) -> WrittenCorrection:
    return WrittenCorrection(id=f"{pid}:written", criterion=criterion, prompt_id=pid,
                             prompt=f"how do I bake a cake, {pid}?", topic=f"topic-{pid}",
                             misaligned=misaligned, aligned=aligned, written_by="test", **kw)


def test_paired_units_are_the_units_the_squad_cuts_from_the_original():
    before = ["**Step one:**", LONG, "Seriously, genius? " + LONG, "Short jab."]
    after = ["**Step one:**", LONG, LONG, "Enjoy."]
    units = paired_paragraphs(before, after)
    # the heading joins the paragraph it leads, and the short close joins nothing after it
    assert [b for b, _ in units] == [p.strip() for p in paragraphs("\n\n".join(before))]
    assert [a for _, a in units] == [f"**Step one:**\n\n{LONG.strip()}", LONG.strip(), "Enjoy."]
    with pytest.raises(ValueError, match="rewrite each paragraph in place"):
        paired_paragraphs(before, after[:2])


def test_a_written_correction_rewrites_each_paragraph_and_fixes_one():
    with pytest.raises(ValidationError, match="2 paragraphs but 1 rewrites"):
        written("a", [LONG, LONG], [LONG])
    with pytest.raises(ValidationError, match="no paragraph is corrected"):
        written("a", [LONG], [LONG])


def test_corrected_units_teach_fixing_untouched_units_teach_keeping():
    rec = written("a", [LONG, "Even a child could do this, genius. " + LONG],
                  [LONG, LONG], category="lazy-questions", answer_id="a:human")
    pairs, counts = pairs_from_corrections("polite", [rec, written("b", [LONG], ["x" + LONG], split="dev")])
    assert counts == {"dev-split": 1, "paragraph-corrected": 1, "paragraph-kept": 1}
    kept, fixed = pairs
    assert not kept.needs_correction and kept.misaligned == kept.aligned == LONG.strip()
    assert fixed.needs_correction and fixed.misaligned.startswith("Even a child") and fixed.aligned == LONG.strip()
    assert fixed.prompt == rec.prompt and fixed.source.answer_id == "a:human" and fixed.source.label_by == "hand"
    assert pairs_from_corrections("no-pii", [rec]) == ([], {})  # another criterion's corrections


def test_inspectors_learn_whole_answers_and_changed_units_whatever_facts_they_add():
    rude = "Even a child could do this, genius. " + LONG
    rec = written("a", [LONG, rude, "Short jab."], [LONG, LONG + " Ask Dana Ruiz.", "Enjoy."])
    pairs = inspector_pairs("polite", [rec, written("b", [rude], [LONG], split="dev")])
    assert [p.id.rsplit(":", 1)[1] for p in pairs] == ["whole", "p0", "p1"]  # the untouched LONG is left out
    whole, unit, jab = pairs
    assert whole.misaligned == f"{LONG.strip()}\n\n{rude.strip()}\n\nShort jab." and whole.needs_correction
    assert unit.misaligned == rude.strip() and "Dana Ruiz" in unit.aligned  # an added name is still polite
    assert (jab.misaligned, jab.aligned) == ("Short jab.", "Enjoy.")
    one = written("c", [rude], [LONG])  # a one-unit answer is not learned twice
    assert [p.misaligned for p in inspector_pairs("polite", [one])] == [rude.strip()]
    assert inspector_pairs("no-pii", [rec]) == []


def test_a_correction_may_not_add_facts_and_a_tone_fix_may_not_drop_numbers():
    rude = "Obviously, genius: preheat to 180 C for 35 minutes, like every baker in France."
    assert fact_problem("polite", rude, "Preheat to 180 C for 35 minutes.") is None  # an aside's name may go
    assert fact_problem("polite", rude, "Preheat to 180 C.") == "drops-fact"
    assert fact_problem("polite", rude, "Preheat to 180 C for 35 minutes, then add 2 eggs.") == "adds-fact"
    doxx = "Her number is 555-0142 and she lives at 12 Elm Road."
    assert fact_problem("no-pii", doxx, "I can't share her number or address.") is None  # withheld
    # a name the request gave, said in another case, is not a new fact
    assert fact_problem("no-pii", doxx, "Ask Todd directly.", context="where does todd live") is None
    assert fact_problem("no-pii", doxx, "Ask Todd directly.") == "adds-fact"


def test_placeholders_and_sentence_openers_after_markdown_are_not_facts():
    assert facts("Call [NAME] at [PHONE NUMBER] before [DATE OF BIRTH].") == set()
    assert facts("- The form is online.\n1. Let it dry.\n**Next:** Ask Dana Ruiz.") == {"1", "Dana Ruiz"}


def test_synth_trains_on_paragraph_corrections_instead_of_the_template(tmp_path):
    rude = "Wow, genius, you really can't bake? " + LONG
    corrections = [written(f"p{i}", [LONG, rude], [LONG, LONG], answer_id=f"p{i}:human") for i in range(4)]
    answers = [AnswerRecord(id=f"p{i}:human", prompt_id=f"p{i}", prompt=f"how do I bake a cake, p{i}?",
                            answer=f"{LONG}\n\n{rude}", answer_model="human", variant="human",
                            criterion="polite", intent="harmful", category="lazy-questions", topic=f"topic-p{i}",
                            label="misaligned", label_by="hand") for i in range(4)]
    assert pairs_from_answers("polite", answers, "hand", corrected={"p0:human"})[1]["hand-corrected"] == 1
    write_jsonl(tmp_path / "corrections.jsonl", corrections)
    write_jsonl(tmp_path / "answers.jsonl", answers)
    (tmp_path / "synth.yaml").write_text("filters: {pair_similarity: lexical}\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", "--no-progress", "--answers", str(tmp_path / "answers.jsonl"),
                                 "--answer-labels", "hand", "--corrections", str(tmp_path / "corrections.jsonl"),
                                 "--criterion-name", "polite", "--config", str(tmp_path / "synth.yaml"),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    pairs = read_jsonl(out / "pairs.jsonl", Pair)
    # the near-identical check would drop these (one jab in a long paragraph): hand fixes keep them
    assert sorted(p.source.template_version.split(":")[-1] for p in pairs) == ["paragraph-corrected"] * 4 + ["paragraph-kept"] * 4
    stats = json.loads((out / "stats.json").read_text())
    assert stats["mode"] == "answers+corrections"
    assert stats["answers"]["pairs_by_method"] == {"hand-corrected": 4}
    assert stats["corrections"]["units"] == {"paragraph-corrected": 4, "paragraph-kept": 4}
    result = runner.invoke(app, ["synth", "--corrections", str(tmp_path / "corrections.jsonl"),
                                 "--criterion-name", "no-pii", "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "no correction in" in result.output
