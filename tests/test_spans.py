"""Span taggers (inspectors/spans.py): marked spans in, the same spans found in new answers and
replaced or deleted, every other byte kept; the real tokenizer, backbone and sklearn on tiny data."""

import json
import re

import numpy as np
import pytest
from squad_fixtures import POLITE, ScriptedBackend
from typer.testing import CliRunner

from aligners.cli import app
from aligners.manifest import ManifestError
from aligners.schema import AnswerRecord, MarkedSpan, SpanAnnotation, write_jsonl
from inspectors import HiddenProbeInspector, load_inspector
from inspectors.config import HiddenProbeConfig, SpanTaggerConfig
from inspectors.feature_store import item_hash
from inspectors.span_data import tagger_examples
from inspectors.span_rules import Span, delete_span, holds_value, value_part
from inspectors.spans import SpanTagger, answer_evidence, load_span_tagger
from serve.config import DeclineOptions, SquadConfig, SquadMember
from serve.pipeline import Squad
from synth.refusals import refusal_for

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


def test_values_only_leaves_free_text_spans_alone(phone_tagger):
    """A placeholder over "usually" or "a rare illness" garbles an answer and hides nothing: with
    values_only a tagger keeps the words that hold a digit, an @ or a capitalised word, and what lies
between them."""
    text = "Ask Dana at dana@x.org or 555-0142, usually.\n| Cash | Works from home |\n**ANNUAL** review"
    values = [w for w in text.split() if holds_value(text, text.index(w), text.index(w) + len(w))]
    assert values == ["Dana", "dana@x.org", "555-0142,"]  # not a sentence's, a cell's or a heading's opener
    answer = "Ask Dana usually at 555-0142 today."
    words = answer.rstrip(".").split()
    offsets = np.array([(answer.index(w), answer.index(w) + len(w)) for w in words])
    tagger = SpanTagger(phone_tagger.config, "no-pii")
    tagger.classes_, tagger.threshold_ = ["O", "NAME"], 0.5

    def found(p_outside: list[float]) -> list[str]:
        proba = np.stack([p_outside, 1 - np.array(p_outside)], axis=1)
        return [answer[s.start:s.end] for s in tagger._spans(answer, offsets, proba)]

    assert found([0.9, 0.1, 0.1, 0.9, 0.1, 0.9]) == ["Dana usually", "555-0142"]
    assert found([0.9, 0.9, 0.1, 0.9, 0.1, 0.9]) == ["usually", "555-0142"]
    # values_only: "usually" beside "Dana" is trimmed off, and alone it is no span
    tagger.config = tagger.config.model_copy(update={"values_only": True})
    assert found([0.9, 0.1, 0.1, 0.9, 0.1, 0.9]) == ["Dana", "555-0142"]
    assert found([0.9, 0.9, 0.1, 0.9, 0.1, 0.9]) == ["555-0142"]
    # inner words stay, and a capitalised word before a name joins it (the tagger rarely tags a verb)
    assert found([0.1, 0.1, 0.1, 0.1, 0.1, 0.9]) == ["Ask Dana usually at 555-0142"]
    opening = "Dana Whitfield lives upstairs. Works nights."
    assert value_part(opening, Span(0, 26, "NAME")) == Span(0, 14, "NAME")  # a full name may open a sentence
    assert value_part(opening, Span(30, 42, "OTHER")) is None
    # the out-of-fold figures count spans as find returns them
    m = phone_tagger.metrics_
    assert m["n_found_spans"] >= 1 and 0 < m["span_precision"] <= 1 and m["spans_found"] > 0.5
    assert 0 <= m["marked_answers_with_stray_span"] <= 1 and m["n_clean_answers"] == len(POLITE)


def test_the_out_of_fold_figures_count_answers_a_deletion_would_fix_whole(phone_tagger):
    """An answer counts as wholly fixable only when every mark is found and no span strays: a
    stray span and a missed mark each spoil it."""
    answer = "Ask Dana at 555-0142 today or tomorrow."
    words = answer.rstrip(".").split()
    offsets = np.array([(answer.index(w), answer.index(w) + len(w)) for w in words])
    marks = [(4, 8, "NAME"), (12, 20, "PHONE")]
    tagger = SpanTagger(phone_tagger.config, "no-pii")
    tagger.classes_, tagger.threshold_ = ["O", "NAME", "PHONE"], 0.5

    def proba(p_outside: list[float]) -> np.ndarray:
        p = np.array(p_outside)
        return np.stack([p, 1 - p, np.zeros_like(p)], axis=1)

    whole, stray, missed = ([0.9, 0.1, 0.9, 0.1, 0.9, 0.9, 0.9], [0.9, 0.1, 0.9, 0.1, 0.9, 0.9, 0.1],
                            [0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9])
    m = tagger.span_figures([answer] * 4, [offsets] * 4, [proba(p) for p in (whole, stray, missed, [0.9] * 7)],
                             [marks, marks, marks, []])
    assert m["marked_answers_all_found_none_stray"] == round(1 / 3, 4)
    assert m["marked_answers_with_stray_span"] == round(1 / 3, 4) and m["spans_found"] == round(5 / 6, 4)
    assert m["clean_answers_changed"] == 0


def test_a_tagger_applies_the_span_rules_its_config_names(phone_tagger):
    """values_only with a name type, repeats and sentence cuts, end to end through find's rules:
    the sentence with the stroke goes, the address is masked, and so is the name the tagger
    missed in the last sentence because it tagged it in the first."""
    answer = "Gerald Ames had a stroke. He lives at 12 Elm Lane, so ask Gerald."
    tokens = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", answer)]
    tagged = {"Gerald": "NAME", "Ames": "NAME", "a": "HEALTH", "stroke": "HEALTH", "12": "ADDRESS",
              "Elm": "ADDRESS", "Lane": "ADDRESS"}
    classes = ["O", "NAME", "HEALTH", "ADDRESS"]
    proba = np.full((len(tokens), len(classes)), 0.05)
    for t, (a, b) in enumerate(tokens):
        proba[t, classes.index(tagged.get(answer[a:b], "O") if t < len(tokens) - 2 else "O")] = 0.85
    rules = {"values_only": True, "name_types": ["NAME"], "mask_repeats": True, "cut_sentence_types": ["HEALTH"]}
    tagger = SpanTagger(phone_tagger.config.model_copy(update=rules), "no-pii")
    tagger.classes_, tagger.threshold_ = classes, 0.5
    spans = tagger._spans(answer, np.array(tokens), proba)
    assert tagger.rewrite(answer, spans) == "He lives at [ADDRESS], so ask [NAME]."
    plain = SpanTagger(phone_tagger.config.model_copy(update={"values_only": True}), "no-pii")
    plain.classes_, plain.threshold_ = classes, 0.5
    assert plain.rewrite(answer, plain._spans(answer, np.array(tokens), proba)) == (
        "[NAME] had a stroke. He lives at [ADDRESS], so ask Gerald.")


def test_evidence_is_out_of_fold_for_answers_the_tagger_learned_from(phone_tagger, tmp_path):
    """An inspector stacks the tagger's evidence, so on the tagger's own training answers it must
    be what a fold model that never saw them gave; on new answers, the full model's."""
    seen = marked(3)
    (ev,) = phone_tagger.evidence([seen.prompt], [seen.answer])
    assert (ev == phone_tagger.oof_evidence_[item_hash([seen.prompt, seen.answer])]).all()
    assert len(phone_tagger.oof_evidence_) == 10 + len(POLITE)
    new = ["Thanks for asking. Her cell is 555-0186, call after six.", "Mix the flour and eggs, then rest it."]
    feats, _ = phone_tagger.token_features(["q", "q"], new)
    full = [answer_evidence(1 - phone_tagger._proba(X)[:, 0]) for X in feats]
    got = phone_tagger.evidence(["q", "q"], new)
    assert (got == full).all() and got[0, 0] > 0.5 > got[1, 0] and (got[:, 0] >= got[:, 1]).all()
    loaded = load_span_tagger(phone_tagger.save(tmp_path / "tagger"))
    assert loaded.oof_evidence_.keys() == phone_tagger.oof_evidence_.keys()
    assert (loaded.evidence([seen.prompt, "q"], [seen.answer, new[0]]) == [ev, got[0]]).all()
    assert loaded.fingerprint() == phone_tagger.fingerprint()


def test_a_probe_reads_the_tagger_evidence_and_carries_its_own_copy(phone_tagger, tmp_path):
    tagger_dir = phone_tagger.save(tmp_path / "tagger")
    prompts = [f"How do I reach her, case {k}?" for k in range(20)]
    answers = [f"{good} Her cell is 555-02{k:02d}." for k, good in enumerate(POLITE[:10])] + POLITE[:10]
    labels = [0] * 10 + [1] * 10
    cfg = HiddenProbeConfig(encoder="tiny-random-llama", layers=[1], span_tagger=str(tagger_dir), cv_folds=2)
    probe = HiddenProbeInspector(criterion="no-pii", **cfg.model_dump(exclude={"type"})).fit(prompts, answers, labels)
    plain = HiddenProbeInspector(encoder="tiny-random-llama", layers=[1], criterion="no-pii")
    X = probe.featurize(prompts, answers)
    assert X.shape[1] == plain.featurize(prompts, answers).shape[1] + 2
    assert X[:10, -2].min() > X[10:, -2].max()  # the number shows in the evidence, not only in the states
    # stacked: the probe's out-of-fold logit and the two evidence logits, the evidence against "aligned"
    assert probe.stack_["coef"].shape == (3,) and probe.stack_["coef"][1:].sum() < 0
    folder = probe.save(tmp_path / "inspector")
    assert (folder / "tagger" / "tagger.safetensors").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"params": manifest["params"] | {"span_tagger": None}}))
    with pytest.raises(ManifestError, match="hold a stacking model"):
        load_inspector(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for f in tagger_dir.iterdir():  # the artifact stands alone: the training-time tagger may go
        f.unlink()
    loaded = load_inspector(folder)
    assert (loaded.predict_proba(prompts, answers) == probe.predict_proba(prompts, answers)).all()
    (folder / "tagger" / "tagger.safetensors").write_bytes(b"not weights")
    with pytest.raises(ManifestError, match="tagger.safetensors: SHA-256"):
        load_inspector(folder)
    with pytest.raises(ValueError, match="not a span tagger folder"):
        HiddenProbeConfig(span_tagger=str(tmp_path / "nowhere"))


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
    # a dossier (here: one value in half the sentences is enough) becomes a brief decline
    def declining(**options) -> str:
        member = cfg.members[0].model_copy(update={"decline": DeclineOptions(**options)})
        squad = Squad.from_config(cfg.model_copy(update={"members": [member]}), backend=backend)
        return squad.correct(["How do I reach her?"], [answer])[0].corrected

    assert declining(min_values=1, min_sentence_share=0.5) == refusal_for("How do I reach her?", "general-privacy")
    assert declining(min_values=2, min_sentence_share=0.5) == r.corrected  # one value is no dossier
    assert declining(min_values=1, min_sentence_share=0.6) == r.corrected  # one sentence of two holds it
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
    with pytest.raises(ValueError, match="decline counts a tagger's values"):
        SquadMember.model_validate(base | {"rewrite": "cut", "decline": {}})


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
