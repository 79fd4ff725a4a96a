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
