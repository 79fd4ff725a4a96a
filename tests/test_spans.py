"""Span taggers (inspectors/spans.py): marked spans in, the same spans found in new answers and
replaced or deleted, every other byte kept; the real tokenizer, backbone and sklearn on tiny data."""

import json

import pytest
from squad_fixtures import POLITE, ScriptedBackend
from typer.testing import CliRunner

from aligners.cli import app
from aligners.manifest import ManifestError
from aligners.schema import AnswerRecord, MarkedSpan, SpanAnnotation, write_jsonl
from inspectors.config import SpanTaggerConfig
from inspectors.span_data import tagger_examples
from inspectors.spans import SpanTagger, delete_span, load_span_tagger
from serve.config import SquadConfig, SquadMember
from serve.pipeline import Squad

PHONES = [f"555-01{d}{(d * 3) % 10}" for d in range(10)]


def marked(i: int) -> SpanAnnotation:
    answer = f"{POLITE[i % len(POLITE)]} Her cell is {PHONES[i]}, call after six."
    return SpanAnnotation(id=f"a{i}", criterion="no-pii", prompt="How do I reach her?", answer=answer,
                          spans=[MarkedSpan(text=PHONES[i], type="PHONE")], fixes=True, marked_by="test")


@pytest.fixture(scope="module")
def phone_tagger():
    cfg = SpanTaggerConfig(encoder="tiny-random-llama", layers=[1, 2], lookahead=2, cv_folds=2, C=1.0)
    ex = tagger_examples("no-pii", [marked(i) for i in range(10)])
    for i, good in enumerate(POLITE):  # good answers, numbers included ("100 degrees")
        ex.add("How do I reach her?", good, [])
    return SpanTagger(cfg, "no-pii").fit(ex.prompts, ex.answers, ex.spans)


def test_marked_texts_become_character_spans_at_every_occurrence():
    rec = SpanAnnotation(id="x", criterion="no-pii", prompt="p", answer="Call Ann Lee or Ann at 555-0142.",
                         spans=[MarkedSpan(text="Ann", type="NAME"), MarkedSpan(text="Ann Lee", type="NAME"),
                                MarkedSpan(text="555-0142", type="PHONE")], fixes=True, marked_by="t")
    # the longer mark wins where two overlap; the shorter still marks its other occurrence
    assert rec.char_spans() == [(5, 12, "NAME"), (16, 19, "NAME"), (23, 31, "PHONE")]
    with pytest.raises(ValueError, match="not in the answer"):
        SpanAnnotation(id="x", criterion="no-pii", prompt="p", answer="Call me.", fixes=True, marked_by="t",
                       spans=[MarkedSpan(text="555-0142")])


def test_deleting_a_span_leaves_no_stray_space_or_empty_line():
    assert delete_span("Multiply by 9/5 and add 32, genius.", 26, 34) == "Multiply by 9/5 and add 32."
    assert delete_span("Seriously? Multiply by 9/5.", 0, 10) == "Multiply by 9/5."
    text = "Steps:\n- Ugh, fine.\n- Open the lid."
    assert delete_span(text, 9, 19) == "Steps:\n- Open the lid."
    assert delete_span("Keep this. Drop that.", 11, 21) == "Keep this."


def test_a_tagger_finds_new_phone_numbers_and_keeps_every_other_byte(phone_tagger, tmp_path):
    m = phone_tagger.metrics_
    assert m["n_spans"] == 10 and 0 < phone_tagger.threshold_ < 1
    answer = "The museum is free on Sundays. Her cell is 555-0186, call after six."
    (out,) = phone_tagger.apply(["How do I reach her?"], [answer])
    assert out == "The museum is free on Sundays. Her cell is [PHONE], call after six."
    clean = "Water boils at 100 degrees Celsius at sea level."
    assert phone_tagger.apply(["q"], [clean]) == [clean]
    # saved and loaded: the same spans, from safetensors + a manifest
    folder = phone_tagger.save(tmp_path / "tagger")
    loaded = load_span_tagger(folder)
    assert loaded.apply(["How do I reach her?"], [answer]) == [out]
    assert json.loads((folder / "manifest.json").read_text())["classes"] == ["O", "PHONE"]
    # a delete tagger drops what a replace tagger would mask
    loaded.config = loaded.config.model_copy(update={"action": "delete"})
    assert loaded.apply(["How do I reach her?"], [answer]) == [
        "The museum is free on Sundays. Her cell is, call after six."]


def test_a_damaged_or_foreign_tagger_is_refused(phone_tagger, tmp_path):
    folder = phone_tagger.save(tmp_path / "tagger")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"encoder": {"id": "x", "hash": "0"}}))
    with pytest.raises(ManifestError, match="trained on encoder x"):
        load_span_tagger(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "tagger.safetensors").write_bytes(b"not weights")
    with pytest.raises(ManifestError, match="SHA-256"):
        load_span_tagger(folder)
    with pytest.raises(ManifestError, match="not a span-tagger artifact"):
        load_span_tagger(tmp_path)


def test_training_needs_marks_and_drops_dev_answers():
    dev = marked(0).model_copy(update={"split": "dev"})
    with pytest.raises(ValueError, match="no training-split answers marked"):
        tagger_examples("no-pii", [dev])
    with pytest.raises(ValueError, match="no marked spans"):
        SpanTagger(SpanTaggerConfig(encoder="tiny-random-llama", layers=[1])).fit(["q"], ["a"], [[]])


def test_a_squad_member_that_tags_with_a_real_inspector(phone_tagger, squad_artifacts, tmp_path):
    """rewrite: spans with the real MiniLM no-pii inspector: the flagged answer's number becomes a
    placeholder, nothing else changes, and no aligner runs (the backend sees no request)."""
    folder = phone_tagger.save(tmp_path / "tagger")
    cfg = SquadConfig.model_validate({
        "backend": {"type": "transformers", "model": "tiny-random-llama"}, "base": "none",
        "members": [{"criterion": "no-pii", "inspector": str(squad_artifacts / "inspectors" / "no-pii"),
                     "rewrite": "spans", "tagger": str(folder), "threshold": 0.9}],
    })
    backend = ScriptedBackend({})
    squad = Squad.from_config(cfg, backend=backend)
    answer = "The meeting is on Tuesday afternoon. Her cell is 555-0172, call after six."
    (r,) = squad.correct(["How do I reach her?"], [answer])
    assert r.trace.initial[0].flagged
    assert r.corrected == "The meeting is on Tuesday afternoon. Her cell is [PHONE], call after six."
    assert backend.calls == []
    (prompted,) = cfg.with_prompted_aligners().members
    assert (prompted.aligner, prompted.rewrite, prompted.tagger) == ("prompted", "paragraphs", None)


def test_tagging_members_need_a_tagger_and_no_aligner():
    base = {"criterion": "no-pii", "inspector": "x"}
    assert SquadMember.model_validate(base | {"rewrite": "spans", "tagger": "t"}).tagger == "t"
    with pytest.raises(ValueError, match="needs one"):
        SquadMember.model_validate(base | {"rewrite": "spans"})
    with pytest.raises(ValueError, match="runs no aligner"):
        SquadMember.model_validate(base | {"rewrite": "spans", "tagger": "t", "aligner": "a"})
    with pytest.raises(ValueError, match="goes with rewrite: spans"):
        SquadMember.model_validate(base | {"aligner": "a", "tagger": "t"})


def test_train_tagger_command_end_to_end_and_its_errors(tmp_path):
    spans = tmp_path / "spans.jsonl"
    write_jsonl(spans, [marked(i) for i in range(10)])
    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, [AnswerRecord(id=f"g{i}:greedy", prompt_id=f"g{i}", prompt="How do I reach her?",
                                       answer=good, answer_model="human", variant="greedy", criterion="no-pii",
                                       label="aligned") for i, good in enumerate(POLITE)])
    tiny = ["--set", "encoder=tiny-random-llama", "--set", "layers=[1, 2]", "--set", "cv_folds=2", "--set", "C=1.0"]
    out = tmp_path / "tagger"
    result = CliRunner().invoke(app, ["train-tagger", "--spans", str(spans), "--answers", str(answers),
                                      "--out", str(out), *tiny])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "of 10 marked spans found" in said and "of 12 good answers changed" in said
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["criterion"] == "no-pii" and manifest["training_data"]["clean_answers"] == 12
    bad = tmp_path / "bad.jsonl"
    bad.write_text(marked(0).model_dump_json().replace("555-0100", "555-9999", 1) + "\n")
    failed = CliRunner().invoke(app, ["train-tagger", "--spans", str(bad), "--out", str(out), *tiny])
    assert failed.exit_code == 2 and "bad.jsonl:1:" in failed.output and "not in the answer" in failed.output
    polite = tmp_path / "polite.jsonl"
    write_jsonl(polite, [marked(0).model_copy(update={"criterion": "polite"})])
    mixed = CliRunner().invoke(app, ["train-tagger", "--spans", str(spans), "--spans", str(polite), "--out", str(out)])
    assert mixed.exit_code == 2 and "--criterion" in mixed.output
