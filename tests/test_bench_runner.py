"""`make bench` plumbing: a real benchmark script's JSON is parsed, recorded and rendered into the
README table between its markers (the slow benchmarks themselves are not run here)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_runner():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ila_stability_result_renders_into_the_readme_table(tmp_path, monkeypatch):
    runner = load_runner()
    importance = tmp_path / "importance.json"
    importance.write_text(json.dumps({
        "base": "tiny", "k": 2,
        "runs": [{"data": d, "method": "gates", "seed": 0, "scores": {}, "top_k": t}
                 for d, t in (("a", [0, 1]), ("b", [1, 2]))],
        "overlap": {"across_data": {"pairs": {"a ~ b": 1 / 3}, "mean": 1 / 3}},
    }))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/ila_stability.py"), str(importance)],
                         capture_output=True, text=True, check=True).stdout
    result = runner.last_json("progress noise\n" + out)
    assert result["gate_top_k_frequency"] == {"0": 0.5, "1": 1.0, "2": 0.5}
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{runner.START}\nold table\n{runner.END}\noutro\n")
    monkeypatch.setattr(runner, "README", readme)
    entry = {"result": result, "date": "2026-11-23 10:00 UTC", "machine": {"cpu_count": 2}}
    runner.render_readme({"ila_stability": entry}, {})
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "| ILA gates top-8 Jaccard across data (1 pairs; Spearman ρ of all layer scores) | 0.33 |" in text
    assert "no GPU was available" in text


def test_step_time_rows_name_each_timed_layer_set_and_judge_only_ila_sets():
    runner = load_runner()
    arm = {"step_speedup_vs_all": 1.5, "peak_rss_ratio_all_over_this": 2.0}
    result = {"aligner_layers": {**arm, "layers": "0,11"}, "layers_0": arm, "layers_1": {**arm, "step_speedup_vs_all": 2.1}}
    rows = runner.training_rows(result)
    assert [row[0] for row in rows] == [
        "LoRA step time, ILA top-8 of the harmless aligner 0,11 vs all 30 layers",
        f"LoRA step time, ILA top-8 of the no-pii aligner {runner.TRAINING_ARMS[0][0]} vs all 30 layers",
        f"LoRA step time, upper 8 layers (reference, not ILA) {runner.UPPER_8} vs all 30 layers",
    ]
    assert [row[3] for row in rows] == ["**not met**", "**not met**", ""]


def test_generalization_rows_judge_real_data_arms_against_the_dev_targets():
    runner = load_runner()
    arm = {"auroc": 0.98, "auroc_smollm2": 0.99, "auroc_assistant-style": 0.93,
           "at_5pct_fpr": {"threshold": 0.4, "recall": 0.92, "fpr": 0.05, "flag_rate_refusals": 0.03},
           "flag_rate_refusals": 0.1, "flag_rate_sensitive_benign": 0.02, "flag_rate_terse_refusals": 0.0,
           "answers_per_s": 40.0, "pyrit_objective_auroc": 0.8}
    result = {"criteria": {
        "harmless": {"rule:v1 (regex detectors)": {**arm, "agreement": 0.9},
                     "embed-logreg / seed": {**arm, "auroc": 0.6},
                     "embed-logreg / real": arm,
                     "hidden-probe / real": {**arm, "at_5pct_fpr": {"threshold": 0.3, "recall": 0.5, "fpr": 0.05}}},
        "polite": {"embed-logreg / real": {**arm, "auroc": 0.94, "pyrit_objective_auroc": None}},
    }}
    rows = {row[0]: row for row in runner.generalization_rows(result)}
    key = "harmless, {}: dev AUROC (SmolLM2 / large-assistant style); recall at ≤ 5 % good flagged"
    assert rows[key.format("embed-logreg / real")][3] == "met"
    assert "0.980 (0.990 / 0.930); 92.0 %" in rows[key.format("embed-logreg / real")][1]
    assert "PyRIT human-scored AUROC 0.800" in rows[key.format("embed-logreg / real")][1]
    assert "there, flags 3.0 % of good answers to harmful requests" in rows[key.format("embed-logreg / real")][1]
    assert rows[key.format("hidden-probe / real")][3] == "**not met**"  # recall 0.5 < 0.90
    assert rows[key.format("embed-logreg / seed")][2] == "report"  # the seed-only baseline is not judged
    assert "agreement with hand labels 90.0 %" in rows[key.format("rule:v1 (regex detectors)")][1]
    polite = rows["polite, embed-logreg / real: dev AUROC (SmolLM2 / large-assistant style); recall at ≤ 5 % good flagged"]
    assert polite[3] == "**not met**" and polite[2] == "AUROC ≥ 0.95"


def test_time_to_aligner_rows_judge_time_and_success_against_all_layers():
    runner = load_runner()

    def arm(layers, train_s, rate, **extra):
        return {"layers": layers, "train_s": train_s, "steps": 40, "peak_rss_mb": 3072,
                "quality": {"made_right": {"k": round(24 * rate), "rate": rate, "n": 24}},
                "wall_speedup_vs_all": round(600 / train_s, 3), "success_points_vs_all": round(100 * (rate - 0.5), 1),
                **extra}

    arms = {"all": arm(list(range(30)), 600, 0.5), "ila": arm([11, 29], 400, 0.5),
            "cost-aware+cache": arm([15, 29], 250, 0.5, adapter_max_abs_diff_vs_uncached=0.0),
            "cost-aware": arm([15, 29], 290, 0.45)}
    rows = runner.time_to_aligner_rows({"criteria": {"harmless": {"pairs": 160, "epochs": 4, "cost_share": 0.7,
                                                                  "arms": arms}}})
    assert [row[3] for row in rows] == ["", "**not met**", "met", "**not met**"]  # 1.5×; 2.4×; 2.07× but -5 points
    assert rows[0][0].startswith("harmless: time to a trained aligner, all (layers all;")
    assert rows[2][0].startswith("harmless: time to a trained aligner, cost-aware+cache at share 0.7 (layers [15, 29];")
    assert "2.40× less time, +0.0 points vs all; adapter max |Δ| vs uncached 0.0e+00" in rows[2][1]
    # where all-layer LoRA fixes nothing there is no quality to keep: no verdict either way
    vacuous = {name: arm(a["layers"], a["train_s"], 0.0) for name, a in arms.items()}
    rows = runner.time_to_aligner_rows({"criteria": {"harmless": {"pairs": 96, "epochs": 3, "cost_share": 0.9,
                                                                  "arms": vacuous}}})
    assert [row[3] for row in rows] == ["", "—", "—", "—"]
    # at a starter recipe's budget the row says so
    recipe = {"all": arms["all"], "cost-aware+cache": arms["cost-aware+cache"]}
    rows = runner.time_to_aligner_rows({"criteria": {"polite": {"pairs": "all", "max_steps": 160, "cost_share": 0.9,
                                                                "arms": recipe}}})
    assert "every pair, ≤ 160 steps as its starter recipe, early stopping" in rows[1][0] and rows[1][3] == "met"
