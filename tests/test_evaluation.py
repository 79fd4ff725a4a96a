"""`aligners eval`: prompt file formats, rates from real inspectors, judge win rates, report files."""

import json

import pytest
from squad_fixtures import POLITE, RUDE, ScriptedBackend
from test_squad import FIXED_POLITE, make_squad

from serve.evaluation import evaluate_squad, read_prompts, wilson


def test_prompt_files_in_three_formats(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    (tmp_path / "p.jsonl").write_text('{"goal": "first"}\n{"goal": "second"}\n')
    (tmp_path / "p.csv").write_text("id,goal\n1,first\n2,second\n")
    (tmp_path / "a.jsonl").write_text('{"prompt": "q1", "response": "a1"}\n{"prompt": "q2"}\n')
    (tmp_path / "a.csv").write_text("prompt,response\nq1,a1\nq2,a2\n")
    assert read_prompts(tmp_path / "p.txt") == (["first", "second"], None)
    assert read_prompts(tmp_path / "p.jsonl", "goal") == (["first", "second"], None)
    assert read_prompts(tmp_path / "p.csv", "goal") == (["first", "second"], None)
    assert read_prompts(tmp_path / "a.csv", answer_column="response") == (["q1", "q2"], ["a1", "a2"])
    with pytest.raises(ValueError, match="no column 'prompt'"):
        read_prompts(tmp_path / "p.csv")
    with pytest.raises(ValueError, match="use --column"):
        read_prompts(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match=r"lines \[2\] have no 'response'"):
        read_prompts(tmp_path / "a.jsonl", answer_column="response")
    with pytest.raises(ValueError, match="need a .jsonl or .csv"):
        read_prompts(tmp_path / "p.txt", answer_column="response")


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo < 0.8 < hi and 0 <= lo and hi <= 1
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(50, 100)[1] - wilson(50, 100)[0] < wilson(5, 10)[1] - wilson(5, 10)[0]


def test_harmful_run_reports_before_after_and_judge(squad_artifacts, tmp_path):
    rude = iter(RUDE * 2)
    squad, _ = make_squad(squad_artifacts, {"polite": lambda r: FIXED_POLITE, "no-pii": lambda r: "x",
                                            None: lambda r: next(rude)})
    judge = ScriptedBackend({None: lambda r: "A" if FIXED_POLITE in r.messages[-1].content.split("Response B")[0] else "B"})
    report = evaluate_squad(squad, ["q"] * 6, "harmful", tmp_path, judge=judge)
    polite = report["criteria"]["polite"]
    assert polite["flagged_rate"] == 1.0 and polite["corrected_rate"] == 1.0
    assert polite["misaligned_before"] == 1.0 and polite["misaligned_after"] == 0.0
    assert report["judging_inspectors"].startswith("routing")
    harmless_judge = report["judge"][0]
    assert harmless_judge["n"] == 6 and harmless_judge["corrected_win_rate"] == 1.0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["criteria"]["polite"]["misaligned_after"] == 0.0
    for png in ("before_after.png", "score_distributions.png", "flags.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "| polite | 100% | 100% | 100% | 0% |" in (tmp_path / "report.md").read_text()
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 6


def test_benign_run_reports_do_no_harm_with_independent_inspectors(squad_artifacts, tmp_path):
    polite = iter(POLITE)
    squad, _ = make_squad(squad_artifacts, {"polite": lambda r: "changed", "no-pii": lambda r: "changed",
                                            None: lambda r: next(polite)})
    eval_insp = {c: str(squad_artifacts / "inspectors" / c) for c in ("polite", "no-pii")}
    report = evaluate_squad(squad, ["q"] * 5, "benign", tmp_path, eval_inspectors=eval_insp)
    assert report["do_no_harm_rate"] == 1.0 and report["changed_rate"] == 0.0
    assert report["judging_inspectors"].startswith("independent")


def test_supplied_answers_are_corrected_without_generation(squad_artifacts, tmp_path):
    squad, backend = make_squad(squad_artifacts)
    report = evaluate_squad(squad, ["q"] * 4, "harmful", tmp_path, answers=[RUDE[0], RUDE[1], POLITE[0], POLITE[1]])
    assert report["answers"] == "supplied" and report["changed_rate"] == 0.5
    assert report["criteria"]["polite"]["misaligned_before"] == 0.5 and report["criteria"]["polite"]["misaligned_after"] == 0.0
    assert all(adapter == "polite" for adapter, _ in backend.calls)  # aligner calls only: no base generation
