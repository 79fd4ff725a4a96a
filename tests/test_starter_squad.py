"""The shipped starter squad: every aligner loads on SmolLM2, passes the adapter self-test, and
its manifest matches its committed recipe; so does every inspector (an ensemble's members too);
the default squad recipe assembles."""

import json
import re
from pathlib import Path

import pytest

from aligners.artifact import AlignerArtifact
from aligners.backends.transformers_local import TransformersBackend
from aligners.config import TransformersBackendConfig, load_config
from aligners.train_config import AlignerTrainConfig

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = ("harmless", "no-pii", "polite")


@pytest.mark.parametrize("criterion", CRITERIA)
def test_manifest_matches_recipe(criterion):
    art = AlignerArtifact.load(ROOT / "artifacts" / "aligners" / criterion)
    recipe = load_config(ROOT / "configs" / "aligners" / f"{criterion}.yaml", AlignerTrainConfig)
    trained = AlignerTrainConfig.model_validate(art.manifest["recipe"])
    assert trained.model_dump(exclude={"layers"}) == recipe.model_dump(exclude={"layers"})
    assert art.criterion == criterion and art.base == recipe.base
    assert len(art.manifest["layers"]) == recipe.importance.k_for(art.manifest["num_layers"])
    size = sum(p.stat().st_size for p in art.path.rglob("*") if p.is_file())
    assert size < 10 * 2**20, f"{art.path} is {size / 2**20:.1f} MB: starter artifacts must stay small"


def test_every_shipped_adapter_changes_smollm2(smollm2):
    model, tokenizer = smollm2
    backend = TransformersBackend(TransformersBackendConfig(), model=model, tokenizer=tokenizer)
    try:
        for criterion in CRITERIA:
            backend.load_adapter(criterion, str(AlignerArtifact.load(ROOT / "artifacts" / "aligners" / criterion).adapter_dir()))
            assert backend.self_test(criterion) > 1e-3
    finally:
        backend.peft_model.unload()  # give the session fixture its plain model back


def test_the_default_squad_names_shipped_artifacts_built_by_their_recipes():
    """configs/squad/default.yaml validates, every artifact it names is committed, and the tagger
    its no-pii member masks with (the no-pii inspector's own copy) matches configs/taggers/."""
    from inspectors.config import SpanTaggerConfig
    from inspectors.spans import load_span_tagger
    from serve.config import SquadConfig

    squad = load_config(ROOT / "configs" / "squad" / "default.yaml", SquadConfig)
    for member in squad.members:
        for path in (member.inspector, member.aligner, member.tagger):
            assert path is None or (ROOT / path / "manifest.json").is_file(), path
    (masking,) = [m for m in squad.members if m.rewrite == "spans"]
    tagger = load_span_tagger(ROOT / masking.tagger)
    recipe = load_config(ROOT / "configs" / "taggers" / f"{masking.criterion}.yaml", SpanTaggerConfig)
    assert tagger.config == recipe and tagger.config.values_only


def _recipe_params(folder: Path, recipe: str) -> None:
    """The inspector in `folder` is of the recipe's type with its params; the threshold policy,
    the tagger path and the member paths are the Makefile's to set, so they are not compared. A
    param the manifest predates is loaded with its default, so it is compared as that."""
    from inspectors.config import INSPECTOR_CONFIG

    manifest = json.loads((folder / "manifest.json").read_text())
    cfg = load_config(ROOT / "configs" / "inspectors" / f"{recipe}.yaml", INSPECTOR_CONFIG)
    want = cfg.model_dump(exclude={"type", "threshold_target", "threshold_value", "span_tagger", "members"})
    assert manifest["type"] == cfg.type, folder
    fields = type(cfg).model_fields
    assert {k: manifest["params"].get(k, fields[k].default) for k in want} == want, folder


def test_shipped_inspectors_are_built_by_the_makefile_recipes_and_stay_small():
    makefile = (ROOT / "Makefile").read_text()
    recipes = dict(re.findall(r"^INSPECTOR_(\S+) := (\S+)$", makefile, re.MULTILINE))
    members = dict(re.findall(r"^MEMBERS_(\S+) := (.+)$", makefile, re.MULTILINE))
    assert set(recipes) == set(CRITERIA)
    for criterion in CRITERIA:
        folder = ROOT / "artifacts" / "inspectors" / criterion
        _recipe_params(folder, recipes[criterion])
        for i, member in enumerate(members.get(criterion, "").split()):
            _recipe_params(folder / "members" / str(i), member)
    size = sum(f.stat().st_size for f in (ROOT / "artifacts").rglob("*") if f.is_file())
    assert size < 80 * 2**20, f"the shipped artifacts are {size / 2**20:.0f} MB: keep them to tens of MB"
