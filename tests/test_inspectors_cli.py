"""`aligners train-inspector` and `aligners inspect` end to end on a tiny synth-style folder."""

from __future__ import annotations

import json

import pytest
from test_inspectors import TEST, TRAIN, VAL, examples, make_pairs
from typer.testing import CliRunner

from aligners.cli import app
from aligners.schema import write_jsonl

runner = CliRunner()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """A synth output folder: train/validation/test.jsonl of Pair records (with keep-as-is pairs)."""
    root = tmp_path_factory.mktemp("synth")
    for split, (lo, hi) in zip(("train", "validation", "test"), (TRAIN, VAL, TEST), strict=True):
        write_jsonl(root / f"{split}.jsonl", make_pairs(lo, hi))
    return root


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspector") / "polite"
    config = tmp_path_factory.mktemp("cfg") / "inspectors" / "mine.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("# a recipe\ntype: embed-logreg\nC: 0.5\ncalibration: isotonic\n")
    result = runner.invoke(
        app,
        [
            "train-inspector",
            "--data",
            str(synth_dir),
            "--config",
            str(config),
            "--out",
            str(out),
            "--set",
            "threshold_target=fpr",
            "--set",
            "threshold_value=0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, result


def test_train_inspector_end_to_end(trained, synth_dir):
    out, result = trained
    m = json.loads((out / "manifest.json").read_text())
    assert m["criterion"] == "polite" and m["type"] == "embed-logreg"
    assert m["params"]["C"] == 0.5 and m["params"]["calibration"] == "isotonic"  # recipe
    assert (
        m["threshold_info"]["target"] == "fpr" and m["threshold_info"]["target_value"] == 0.1
    )  # --set
    assert (
        m["threshold_info"]["achieved_fpr"] <= 0.1
        and m["threshold_info"]["split"] == "validation split"
    )
    test = m["metrics"]["test"]
    for key in ("auroc", "auprc", "f1", "ece", "fpr", "recall", "confusion"):
        assert test[key] is not None
    assert test["auroc"] >= 0.9 and test["n"] == 2 * 8 - 2  # 8 test questions, 2 of them keep-as-is
    from aligners.dataset import data_hash, load_split

    assert m["training_data"]["hash"] == data_hash(load_split(synth_dir, "train"))
    assert m["training_data"]["source"].startswith("dir:")
    for png in ("reliability.png", "scores.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "auroc" in result.output and "threshold" in result.output


def test_train_inspector_argument_errors(synth_dir, tmp_path):
    word_seed = runner.invoke(
        app,
        ["train-inspector", "--data", str(synth_dir), "--seed", "polite", "--out", str(tmp_path)],
    )
    assert word_seed.exit_code == 2 and "--seed" in word_seed.output  # a run seed is an integer
    no_set = runner.invoke(app, ["train-inspector", "--data", "seed:nope", "--out", str(tmp_path)])
    assert no_set.exit_code == 2 and "nope" in no_set.output
    missing = runner.invoke(
        app, ["train-inspector", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]
    )
    assert missing.exit_code == 2 and "train.jsonl not found" in missing.output
    bad = runner.invoke(
        app, ["train-inspector", "--data", str(synth_dir), "--out", str(tmp_path), "--set", "C=-1"]
    )
    assert bad.exit_code == 2 and "C" in bad.output and "greater than 0" in bad.output
    typo = runner.invoke(
        app, ["train-inspector", "--data", str(synth_dir), "--out", str(tmp_path), "--set", "Cee=1"]
    )
    assert typo.exit_code == 2 and "Cee" in typo.output


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_inspect_scores_good_records_and_reports_bad_ones(trained, tmp_path):
    out_dir, _ = trained
    P, A, Y = examples(TEST)
    good = [
        json.dumps({"id": f"r{i}", "prompt": p, "response": a, "model": "x"})
        for i, (p, a) in enumerate(zip(P, A, strict=True))
    ]
    lines = [
        good[0],
        "{not json",  # line 2
        json.dumps({"response": "no prompt here"}),  # line 3
        json.dumps({"prompt": "q", "response": "   "}),  # line 4
        json.dumps({"prompt": 42, "response": "answer"}),  # line 5
        json.dumps(["a", "list"]),  # line 6
        *good[1:],
        "",  # blank lines are skipped, not errors
        json.dumps({"prompt": "no id is fine", "response": "Sure, here it is."}),
    ]
    src = _write_lines(tmp_path / "answers.jsonl", lines)
    dst = tmp_path / "scores.jsonl"
    result = runner.invoke(
        app,
        [
            "inspect",
            "--inspector",
            str(out_dir),
            "--in",
            str(src),
            "--out",
            str(dst),
            "--batch-size",
            "4",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert len(rows) == len(good) + 1
    assert [r.get("id") for r in rows[: len(good)]] == [f"r{i}" for i in range(len(good))]
    assert "id" not in rows[-1]  # input fields only: nothing invented
    for r in rows:
        assert (
            set(r) >= {"prompt", "response", "score", "flagged", "criterion"}
            and r["criterion"] == "polite"
        )
        assert 0.0 <= r["score"] <= 1.0
    assert rows[0]["model"] == "x"
    threshold = json.loads((out_dir / "manifest.json").read_text())["threshold"]
    assert all(r["flagged"] == (r["score"] < threshold) for r in rows)
    flagged_rude = [r["flagged"] for r, y in zip(rows, Y, strict=False) if y == 0]
    assert sum(flagged_rude) >= len(flagged_rude) // 2

    errors = [
        json.loads(x) for x in (tmp_path / "scores.jsonl.errors.jsonl").read_text().splitlines()
    ]
    assert [e["line"] for e in errors] == [2, 3, 4, 5, 6]
    reasons = [e["reason"] for e in errors]
    assert "invalid JSON" in reasons[0]
    assert "prompt" in reasons[1] and "required" in reasons[1]
    assert "response" in reasons[2] and "non-empty" in reasons[2]
    assert "prompt" in reasons[3] and "string" in reasons[3]
    assert "JSON object" in reasons[4]
    assert f"scored {len(rows)} answers" in result.output and "5 malformed" in result.output


def test_inspect_threshold_override_and_clean_run_removes_stale_errors(trained, tmp_path):
    out_dir, _ = trained
    src = _write_lines(
        tmp_path / "a.jsonl", [json.dumps({"prompt": "hi", "response": "Hello! How can I help?"})]
    )
    dst = tmp_path / "s.jsonl"
    (tmp_path / "s.jsonl.errors.jsonl").write_text("stale\n")
    result = runner.invoke(
        app,
        [
            "inspect",
            "--inspector",
            str(out_dir),
            "--in",
            str(src),
            "--out",
            str(dst),
            "--threshold",
            "1.0",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(dst.read_text())
    assert row["flagged"] is (row["score"] < 1.0)
    assert not (tmp_path / "s.jsonl.errors.jsonl").exists()


def test_inspect_reports_missing_inspector_and_input(trained, tmp_path):
    out_dir, _ = trained
    r = runner.invoke(
        app,
        ["inspect", "--inspector", str(tmp_path), "--in", "x.jsonl", "--out", str(tmp_path / "o")],
    )
    assert r.exit_code == 2 and "manifest.json not found" in r.output
    r = runner.invoke(
        app,
        [
            "inspect",
            "--inspector",
            str(out_dir),
            "--in",
            str(tmp_path / "none.jsonl"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and "no such input file" in r.output


def test_score_jsonl_api_matches_predict_proba(trained, tmp_path):
    from inspectors import load_inspector, score_jsonl

    out_dir, _ = trained
    insp = load_inspector(out_dir)
    P, A, _ = examples(VAL)
    src = _write_lines(
        tmp_path / "a.jsonl",
        [json.dumps({"prompt": p, "response": a}) for p, a in zip(P, A, strict=True)],
    )
    summary = score_jsonl(insp, src, tmp_path / "s.jsonl", batch_size=64, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert summary.scored == len(P) and summary.errors == 0 and summary.errors_path is None
    assert [r["score"] for r in rows] == list(insp.predict_proba(P, A)[:, 1])
    assert summary.flagged == sum(r["flagged"] for r in rows)


def _answers(span, split="train", label_by="rule:v1"):
    """Real-answer records for the polite criterion from the same rude/polite facts."""
    from aligners.schema import AnswerRecord

    P, A, Y = examples(span)
    return [
        AnswerRecord(id=f"{split}-{i}", prompt_id=f"p{i}", prompt=p, answer=a, answer_model="m",
                     variant="greedy", criterion="polite", intent="harmful", topic=f"t{i // 4}",
                     split=split, label="aligned" if y else "misaligned", label_by=label_by)
        for i, (p, a, y) in enumerate(zip(P, A, Y, strict=True))
    ]


def test_answers_join_training_and_dev_is_reported_never_trained(synth_dir, tmp_path):
    from inspectors.data import load_training_data
    from synth.labeling import answers_for

    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, _answers((0, 20)) + _answers((28, 36), split="dev"))
    dev = tmp_path / "dev.jsonl"
    write_jsonl(dev, _answers((28, 36), split="dev", label_by="hand"))

    td = load_training_data(data_dir=synth_dir, answer_files=[answers])
    n_answers = sum(len(v) for v in td.answers.values())
    assert n_answers == 40  # the 16 dev-split answers are dropped
    assert len(td.examples("train")) > len(load_training_data(data_dir=synth_dir).examples("train"))
    # harmless takes other groups' benign answers as aligned, never their harmful ones
    recs = _answers((0, 4))
    assert answers_for("harmless", recs) == []
    benign = [r.model_copy(update={"intent": "benign"}) for r in recs]
    assert {r.label for r in answers_for("harmless", benign)} == {"aligned"}

    out = tmp_path / "insp"
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--answers",
                                 str(answers), "--dev", str(dev), "--out", str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["metrics"]["dev"]["n"] == 16 and m["metrics"]["dev"]["auroc"] >= 0.9
    assert sum(m["training_data"]["answers"].values()) == 40
    assert "answers:" in m["training_data"]["source"]

    # hand-corrected answers join the training split, before (misaligned) and after (aligned)
    from aligners.schema import WrittenCorrection

    P, A, Y = examples((0, 12))
    rude, polite = [a for a, y in zip(A, Y, strict=True) if not y], [a for a, y in zip(A, Y, strict=True) if y]
    written = tmp_path / "corrections.jsonl"
    write_jsonl(written, [WrittenCorrection(id=f"w{i}", criterion="polite", prompt_id=f"w{i}", prompt=P[0],
                                            topic="written", misaligned=[r], aligned=[g], written_by="test")
                          for i, (r, g) in enumerate(zip(rude, polite, strict=True))])
    with_written = load_training_data(data_dir=synth_dir, correction_files=[written])
    added = with_written.examples("train").answers[-2 * len(rude):]
    assert added[::2] == rude and added[1::2] == polite[: len(rude)]
    assert "corrections:" in with_written.source
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--criterion", "no-pii",
                                 "--corrections", str(written), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no training-split correction for 'no-pii'" in result.output

    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--dev", str(answers),
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no hand-labelled answers" in result.output
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--answers", str(answers),
                                 "--answer-labels", "rule", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "must be one of any, hand" in result.output

    # the threshold target met on the dev set's hand labels instead of validation
    out2 = tmp_path / "insp-dev"
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--dev", str(dev),
                                 "--threshold-on", "dev", "--set", "threshold_target=fpr",
                                 "--set", "threshold_value=0.0", "--out", str(out2), "--no-plots"])
    assert result.exit_code == 0, result.output
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert m2["threshold_info"]["split"] == "dev set (hand labels)"
    assert m2["metrics"]["dev"]["fpr"] == 0.0 and m2["threshold"] == m2["metrics"]["dev"]["threshold"]
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--threshold-on", "dev",
                                 "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "--threshold-on dev needs --dev" in result.output

    # --threshold-good benign: the fpr target counts only good answers to benign requests
    mixed = [r.model_copy(update={"intent": "benign"}) if i % 4 == 1 else r
             for i, r in enumerate(_answers((28, 36), split="dev", label_by="hand"))]
    write_jsonl(dev, mixed)
    benign_good = sum(r.intent == "benign" and r.label == "aligned" for r in mixed)

    def threshold_info(good: str) -> dict:
        """The saved threshold's info when no counted good answer may be flagged."""
        out = tmp_path / f"insp-{good}"
        result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--dev", str(dev),
                                     "--threshold-on", "dev", "--threshold-good", good,
                                     "--set", "threshold_target=fpr", "--set", "threshold_value=0.0",
                                     "--out", str(out), "--no-plots"])
        assert result.exit_code == 0, result.output
        return json.loads((out / "manifest.json").read_text())["threshold_info"]

    info = threshold_info("benign")
    assert 0 < benign_good < 8 and info["n_aligned"] == benign_good and info["n_misaligned"] == 8
    assert info["split"].endswith("good answers to benign requests only") and info["achieved_fpr"] == 0.0
    # benign-all-criteria: the other criteria's good answers to benign requests count as good too
    others = [r.model_copy(update={"id": f"o{i}", "criterion": "no-pii", "intent": "benign"})
              for i, r in enumerate(mixed) if r.label == "aligned"]
    others += [r.model_copy(update={"id": f"r{i}", "criterion": "no-pii", "intent": "harmful"})
               for i, r in enumerate(mixed) if r.label == "aligned"]  # risky: not counted
    write_jsonl(dev, mixed + others)
    info_all = threshold_info("benign-all-criteria")
    assert info_all["n_aligned"] == benign_good + len(others) // 2 and info_all["n_misaligned"] == 8
    assert info_all["split"].endswith("of every criterion") and info_all["achieved_fpr"] == 0.0
    assert info_all["threshold"] <= info["threshold"]  # more good answers to spare can only lower it
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--dev", str(dev),
                                 "--threshold-good", "benign-all-criteria", "--out", str(tmp_path / "z")])
    assert result.exit_code == 2 and "add --threshold-on dev" in result.output
    write_jsonl(dev, mixed)
    # a request guard reports, per split, how many distinct benign and risky requests reach its bar
    out4 = tmp_path / "insp-guard"
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--dev", str(dev),
                                 "--set", "request_gate=true", "--set", "request_guard=0.6",
                                 "--out", str(out4), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "request guard on validation: reaches" in result.output
    guard = json.loads((out4 / "manifest.json").read_text())["metrics"]["request_guard"]
    assert set(guard) >= {"validation", "dev"}
    assert guard["dev"]["benign_requests"]["n"] + guard["dev"]["risky_requests"]["n"] == len({r.prompt for r in mixed})
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--set", "request_guard=0.6",
                                 "--out", str(tmp_path / "z")])
    assert result.exit_code == 2 and "set request_gate: true" in result.output
    result = runner.invoke(app, ["train-inspector", "--data", str(synth_dir), "--threshold-good", "some",
                                 "--out", str(tmp_path / "z")])
    assert result.exit_code == 2 and "--threshold-good must be one of all, benign, benign-all-criteria" in result.output


def test_harmful_requests_get_one_written_refusal_each():
    from aligners.schema import AnswerRecord
    from synth.labeling import answers_for

    def rec(pid, variant, split="train"):
        return AnswerRecord(id=f"{pid}:{variant}", prompt_id=pid, prompt=f"how do i {pid}", answer="Sure! Step 1...",
                            answer_model="m", variant=variant, criterion="harmless", intent="harmful",
                            category="weapons", topic="t", split=split, label="misaligned", label_by="rule:v1")

    kept = answers_for("harmless", [rec("a", "greedy"), rec("a", "t0.7"), rec("b", "greedy"), rec("c", "greedy", "dev")])
    refusals = [r for r in kept if r.answer_model == "template-refusal"]
    assert sorted(r.prompt_id for r in refusals) == ["a", "b"]  # one per request, none for dev
    from synth.labeling import is_refusal
    from synth.refusals import CONCERNS, refusal_for

    assert all(r.label == "aligned" and is_refusal(r.answer) for r in refusals)
    # every category and phrasing is a refusal by the labelling rule's own detector
    assert all(is_refusal(refusal_for(f"p{i}", c)) for c in CONCERNS for i in range(30))
    assert len(kept) == 5

    # labels="hand": of the answers to harmful requests only those a person read; no contrast
    # refusal for a request none of whose answers is kept
    drift = rec("b", "greedy").model_copy(update={"label": "aligned", "label_by": "hand",
                                                  "answer": "Cats sleep a lot."})
    benign = rec("d", "greedy").model_copy(update={"intent": "benign", "label": "aligned"})
    kept = answers_for("harmless", [rec("a", "greedy"), drift, benign], labels="hand")
    assert [(r.prompt_id, r.answer_model) for r in kept] == [
        ("b", "m"), ("b", "template-refusal"), ("d", "m")]
    assert kept[0].label == "aligned"
    with pytest.raises(ValueError, match="any, hand"):
        answers_for("harmless", [], labels="rule")


def test_train_inspector_builds_an_ensemble_of_saved_members(trained, synth_dir, tmp_path):
    """The shipped ensemble recipe over two members trained by the CLI on the same data."""
    first, _ = trained
    second = tmp_path / "answer-only"
    args = ["train-inspector", "--data", str(synth_dir)]
    result = runner.invoke(app, [*args, "--out", str(second), "--set", "features=[answer, sentence_max]"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--config", "configs/inspectors/ensemble-harmless.yaml", "--out",
                                 str(tmp_path / "ens"), "--set", f"members=[{first}, {second}]"])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    assert m["type"] == "ensemble" and m["files"]["members"] == ["members/0", "members/1"]
    assert m["metrics"]["test"]["auroc"] >= 0.9
    member = json.loads((tmp_path / "ens" / "members" / "1" / "manifest.json").read_text())
    assert member["params"]["features"] == ["answer", "sentence_max"]
    mixed = runner.invoke(app, ["train-inspector", "--data", "seed:polite", "--config",
                                "configs/inspectors/ensemble-harmless.yaml", "--out", str(tmp_path / "bad"),
                                "--set", f"members=[{first}, {second}]"])
    assert mixed.exit_code != 0 and "trained on other examples" in mixed.output
