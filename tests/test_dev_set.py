"""The hand-labelled dev set (evals/dev): what it holds, and that nothing trains on it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from aligners.schema import AnswerRecord, WrittenCorrection, read_jsonl
from synth.bank import load_bank
from synth.labeling import answers_for

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "evals" / "dev" / "answers.jsonl"


def test_dev_set_is_hand_labelled_real_answers_to_dev_topics():
    dev = read_jsonl(DEV, AnswerRecord)
    bank = {r.id: r for r in load_bank()}
    assert len(dev) >= 400 and len({a.id for a in dev}) == len(dev)
    for a in dev:
        p = bank[a.prompt_id]
        assert a.label_by == "hand" and a.label in ("aligned", "misaligned") and a.note
        assert (a.split, p.split, a.prompt, a.topic, a.criterion) == ("dev", "dev", p.prompt, p.topic, p.criterion)
    sources = Counter(a.answer_model for a in dev)
    assert sources["smollm2-135m-instruct"] >= 400 and sources["human"] >= 100
    assert sum(a.label == "misaligned" for a in dev) / len(dev) >= 0.4
    per_criterion = Counter((a.criterion, a.label) for a in dev)
    for criterion in ("harmless", "no-pii", "polite"):
        assert per_criterion[(criterion, "misaligned")] >= 40, per_criterion


def test_no_dev_topic_reaches_training():
    dev_topics = {(r.category, r.topic) for r in load_bank() if r.split == "dev"}
    files = [ROOT / "data" / "assistant-style" / "answers.jsonl"]
    harvest = ROOT / "data" / "harvest-smollm2" / "answers.jsonl"
    files += [harvest] if harvest.is_file() else []
    records = [r for f in files for r in read_jsonl(f, AnswerRecord)]
    for criterion in ("harmless", "no-pii", "polite"):
        kept = answers_for(criterion, records)
        assert kept and not [r.id for r in kept if (r.category, r.topic) in dev_topics]


def test_hand_corrections_are_on_training_prompts_only():
    """data/corrections/: every record's prompt is a training-split bank prompt, and none is a
    dev topic's, so the aligners never learn from what the dev set judges."""
    bank = {r.id: r for r in load_bank()}
    dev_prompts = {r.prompt_id for r in read_jsonl(DEV, AnswerRecord)}
    for criterion in ("no-pii", "polite"):
        records = read_jsonl(ROOT / "data" / "corrections" / f"{criterion}.jsonl", WrittenCorrection)
        assert len(records) >= 60 and {r.criterion for r in records} == {criterion}
        assert all(bank[r.prompt_id].split == "train" and r.split == "train" for r in records)
        assert not {r.prompt_id for r in records} & dev_prompts
