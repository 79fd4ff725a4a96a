"""The shipped starter squad: every aligner loads on SmolLM2, passes the adapter self-test, and
its manifest matches its committed recipe; the default squad recipe assembles."""

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
