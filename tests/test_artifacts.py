"""Artifacts are verified at load: the weights' SHA-256 recorded in the manifest, file paths kept
inside the artifact folder, finite weights, and an aligner's base weights hash — on copies of the
real toy inspectors and tiny-Llama aligners of `squad_artifacts`. Every refusal names the file.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch
from squad_fixtures import POLITE, RUDE

from aligners.artifact import ADAPTER_WEIGHTS, AlignerArtifact
from aligners.manifest import ManifestError, checksums, file_sha256
from inspectors import load_inspector
from inspectors.base import WEIGHTS
from serve.pipeline import Squad, SquadError


@pytest.fixture()
def copies(squad_artifacts, tmp_path):
    shutil.copytree(squad_artifacts, tmp_path / "a")
    return tmp_path / "a"


def flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's data: the file still parses
    path.write_bytes(bytes(data))


def edit_manifest(folder, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_saved_artifacts_record_the_sha256_of_their_files(copies):
    ins = json.loads((copies / "inspectors" / "polite" / "manifest.json").read_text())
    assert ins["files"]["sha256"] == {WEIGHTS: file_sha256(copies / "inspectors" / "polite" / WEIGHTS)}
    ali = json.loads((copies / "aligners" / "polite" / "manifest.json").read_text())
    assert ali["files"]["sha256"]["adapter/" + ADAPTER_WEIGHTS] == file_sha256(
        copies / "aligners" / "polite" / "adapter" / ADAPTER_WEIGHTS)
    inspector = load_inspector(copies / "inspectors" / "polite")
    scores = inspector.predict_proba(["q", "q"], [POLITE[0], RUDE[0]])[:, 1]
    assert scores[0] > scores[1]  # the verified inspector still works


def test_a_changed_byte_in_inspector_weights_is_refused_naming_the_file(copies):
    folder = copies / "inspectors" / "polite"
    flip_last_byte(folder / WEIGHTS)
    with pytest.raises(ManifestError, match=rf"{WEIGHTS}: SHA-256 .* does not match .*retrain it"):
        load_inspector(folder)


def test_manifest_paths_must_stay_inside_the_artifact(copies, tmp_path):
    folder = copies / "inspectors" / "polite"
    manifest = json.loads((folder / "manifest.json").read_text())
    for elsewhere in ("../no-pii/" + WEIGHTS, str(tmp_path / "a" / "inspectors" / "no-pii" / WEIGHTS)):
        manifest["files"]["weights"] = elsewhere
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ManifestError, match="leaves the artifact folder"):
            load_inspector(folder)
    manifest["files"]["weights"] = WEIGHTS
    manifest["files"]["sha256"] = {"../no-pii/" + WEIGHTS: "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="leaves the artifact folder"):
        load_inspector(folder)


def test_non_finite_weights_are_refused_even_with_matching_checksums(copies):
    folder = copies / "inspectors" / "no-pii"
    tensors = load_numpy(str(folder / WEIGHTS))
    tensors["model.coef"] = tensors["model.coef"].copy()
    tensors["model.coef"][3] = np.nan  # as a diverged training run would save it
    save_numpy(tensors, str(folder / WEIGHTS))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["sha256"] = checksums(folder, [folder / WEIGHTS])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"inspector.safetensors: 1 tensor\(s\) hold NaN or infinite values \(model.coef\)"):
        load_inspector(folder)

    adapter = copies / "aligners" / "polite" / "adapter" / ADAPTER_WEIGHTS
    weights = load_torch(adapter)
    name = min(weights)
    weights[name][0, 0] = float("inf")
    save_torch(weights, adapter)
    folder = copies / "aligners" / "polite"
    edit_manifest(folder, files={"sha256": checksums(folder, [p for p in (folder / "adapter").rglob("*") if p.is_file()])})
    with pytest.raises(ManifestError, match=f"NaN or infinite values .*{name}"):
        AlignerArtifact.load(folder)


def test_a_changed_adapter_or_another_base_is_refused(copies):
    folder = copies / "aligners" / "no-pii"
    flip_last_byte(folder / "adapter" / ADAPTER_WEIGHTS)
    with pytest.raises(ManifestError, match=rf"{ADAPTER_WEIGHTS}: SHA-256 .* does not match"):
        AlignerArtifact.load(folder)
    (folder / "adapter" / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(ManifestError, match="is missing.*re-copy the whole folder"):
        AlignerArtifact.load(folder)

    folder = copies / "aligners" / "polite"
    edit_manifest(folder, base_hash="0123456789abcdef")
    recipe = {"backend": {"type": "transformers", "model": "tiny-random-llama"},
              "members": [{"criterion": "polite", "inspector": str(copies / "inspectors" / "polite"),
                           "aligner": str(folder)}]}
    with pytest.raises(SquadError, match="weights hash 0123456789abcdef.*has hash random-seeded"):
        Squad.from_config(_write(copies / "squad.yaml", recipe))


def test_an_artifact_without_checksums_loads_with_a_warning(copies, caplog):
    folder = copies / "inspectors" / "polite"
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="aligners.artifacts"):
        load_inspector(folder)
    assert "records no checksums" in caplog.text


def test_the_cli_reports_a_damaged_artifact_in_one_line(copies, tmp_path, monkeypatch, capsys):
    from aligners.cli import main

    flip_last_byte(copies / "inspectors" / "polite" / WEIGHTS)
    recipe = {"backend": {"type": "transformers", "model": "tiny-random-llama"},
              "members": [{"criterion": "polite", "inspector": str(copies / "inspectors" / "polite"),
                           "aligner": str(copies / "aligners" / "polite")}]}
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "q", "response": "hi"}) + "\n")
    monkeypatch.setattr(sys, "argv", ["aligners", "correct", "--squad", str(_write(tmp_path / "squad.yaml", recipe)),
                                      "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and f"{WEIGHTS}: SHA-256" in err


def _write(path, recipe):
    path.write_text(yaml.safe_dump(recipe))
    return path
