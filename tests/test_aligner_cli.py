"""select-layers → train-aligner → export → analyze through the CLI on the tiny Llama."""

import json

import pytest
from aligner_data import toy_pairs
from typer.testing import CliRunner

from aligners.cli import app
from aligners.dataset import save_splits, split_by_topic
from aligners.importance import jaccard

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for name, crit in (("polite", "polite"), ("other", "harmless")):
        save_splits(root / name, split_by_topic(toy_pairs(24, crit)), {})
    recipe = root / "recipe.yaml"
    recipe.write_text(
        "base: tiny-random-llama\nbatch_size: 4\nmax_steps: 3\neval_every: 3\nlora_dropout: 0.0\n"
        "importance: {warmup_steps: 2, gate_steps: 2, batches: 1, top_k: 1}\n"
    )
    return root, recipe


@pytest.fixture(scope="module")
def selected(folders):
    """select-layers over two data sets, two methods and two seeds (every test that needs its
    output gets it from here, whatever order the tests run in)."""
    root, recipe = folders
    out = root / "layers"
    text = invoke("select-layers", "--data", str(root / "polite"), "--data", str(root / "other"),
                  "--config", str(recipe), "--method", "gates", "--method", "grad-norm",
                  "--seed", "0", "--seed", "1", "--out", str(out))
    return out, text


def test_select_layers_reports_overlaps_and_plots(selected):
    out, text = selected
    result = json.loads((out / "importance.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2 and result["k"] == 1
    assert set(result["overlap"]) == {"across_seeds", "across_data", "across_methods"}
    top_k = {f"{r['data']}/{r['method']}/s{r['seed']}": r["top_k"] for r in result["runs"]}
    for overlap in result["overlap"].values():  # each pair's value is the Jaccard of its top-k sets
        for pair, value in overlap["pairs"].items():
            a, b = pair.split(" ~ ")
            assert value == jaccard(top_k[a], top_k[b]), pair
        assert overlap["mean"] == pytest.approx(sum(overlap["pairs"].values()) / len(overlap["pairs"]))
    assert (out / "importance.png").stat().st_size > 1000
    assert "Jaccard" in text and "Spearman rho" in text


def test_train_export_analyze(folders, selected):
    root, recipe = folders
    out = root / "aligner"
    text = invoke("train-aligner", "--data", str(root / "polite"), "--config", str(recipe),
                  "--layers-from", str(root / "layers" / "importance.json"), "--out", str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert "trained polite aligner" in text and len(manifest["layers"]) == 1
    invoke("export", "--aligner", str(out), "--merged", "--out", str(root / "merged"))
    assert (root / "merged" / "model.safetensors").is_file()
    invoke("analyze", "--aligner", str(out), "--data", str(root / "polite"), "--out", str(root / "report"))
    report = json.loads((root / "report" / "report.json").read_text())
    assert report["top_heads"] and report["layers_by_delta"] == manifest["layers"]
    md = (root / "report" / "report.md").read_text()
    best = report["top_heads"][0]
    assert "head_importance.png" in md and f"| {best['layer']} | {best['head']} | {best['score']:.4g} |" in md
    assert f"Layers by total ‖ΔW‖: {manifest['layers']}" in md
    for png in ("head_importance.png", "delta_norms.png", "head_delta_norms.png"):
        assert (root / "report" / png).stat().st_size > 1000


def test_bad_layers_flag_is_explained(folders):
    root, _ = folders
    result = runner.invoke(app, ["train-aligner", "--data", str(root / "polite"), "--layers", "x,y", "--out", str(root / "z")])
    assert result.exit_code != 0 and "comma list" in result.output


def test_select_layers_extends_an_existing_file_without_redoing_runs(folders, monkeypatch):
    from aligners import importance

    root, recipe = folders
    out = root / "layers-extend"
    invoke("select-layers", "--data", str(root / "polite"), "--config", str(recipe), "--out", str(out))
    first = json.loads((out / "importance.json").read_text())["runs"]
    calls = []
    real = importance.layer_importance
    monkeypatch.setattr(importance, "layer_importance", lambda *a, **k: calls.append(1) or real(*a, **k))
    invoke("select-layers", "--data", str(root / "polite"), "--seed", "0", "--seed", "1",
           "--config", str(recipe), "--out", str(out))
    runs = json.loads((out / "importance.json").read_text())["runs"]
    assert len(calls) == 1 and runs[0] == first[0] and [r["seed"] for r in runs] == [0, 1]
    # a data folder rebuilt with other pairs: its runs are redone, not reused
    rebuilt = root / "rebuilt"
    for n in (24, 20):
        save_splits(rebuilt, split_by_topic(toy_pairs(n, "polite")), {})
        invoke("select-layers", "--data", str(rebuilt), "--config", str(recipe), "--out", str(out))
    runs = [r for r in json.loads((out / "importance.json").read_text())["runs"] if r["data"] == str(rebuilt)]
    assert len(calls) == 3 and len(runs) == 1 and runs[0]["data_hash"] != first[0]["data_hash"]
