"""Every recipe under configs/ loads; bad recipes fail with the file, key and expectation."""

from pathlib import Path

import pytest

from aligners.config import (
    BACKEND_CONFIG,
    ConfigError,
    OpenAIHTTPBackendConfig,
    apply_overrides,
    load_config,
    load_criterion,
)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_there_are_recipes():
    kinds = {p.parent.name for p in CONFIGS}
    assert {"criteria", "backends"} <= kinds


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_loads(path):
    assert load_config(path) is not None


def test_shipped_criteria_are_the_three_defaults():
    names = {load_criterion(p).name for p in CONFIGS if p.parent.name == "criteria"}
    assert {"harmless", "no-pii", "polite"} <= names


def write(tmp_path, folder, text):
    path = tmp_path / folder / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_wrong_type_names_file_key_and_value(tmp_path):
    path = write(tmp_path, "backends", "type: openai_http\nbase_url: http://x/v1\nmodel: m\nconcurrency: lots\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "concurrency" in msg and "'lots'" in msg


def test_missing_and_unknown_keys_are_reported_together(tmp_path):
    path = write(tmp_path, "backends", "type: openai_http\nmodel: m\ntimout_s: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "base_url" in msg and "Field required" in msg
    assert "timout_s" in msg and "Extra inputs" in msg


def test_unknown_backend_type_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "backends", "type: tgi\nmodel: m\n")
    with pytest.raises(ConfigError, match="transformers.*openai_http.*vllm"):
        load_config(path)


def test_bad_yaml_and_non_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "criteria", "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "criteria", "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "criteria" / "missing.yaml")


def test_unknown_folder_kind_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="cannot tell the config kind"):
        load_config(write(tmp_path, "misc", "a: 1\n"))


def test_criterion_slug_is_checked(tmp_path):
    path = write(tmp_path, "criteria", "name: Not A Slug\ndescription: long enough text\ncorrection: long enough text\n")
    with pytest.raises(ConfigError, match="name"):
        load_config(path)


def test_backend_union_picks_the_model_by_type():
    cfg = BACKEND_CONFIG.validate_python({"type": "openai_http", "base_url": "http://h/v1", "model": "m"})
    assert isinstance(cfg, OpenAIHTTPBackendConfig) and cfg.max_retries == 3


def test_set_overrides_type_their_values_and_reach_nested_fields():
    recipe = {"lora_r": 8, "importance": {"method": "gates"}}
    out = apply_overrides(recipe, ["lora_r=16", "importance.top_k=6", "taia=true", "layers=[1, 2]", "base=my/model"])
    assert out == {"lora_r": 16, "importance": {"method": "gates", "top_k": 6}, "taia": True,
                   "layers": [1, 2], "base": "my/model"}
    for bad, words in (("lora_r", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("lora_r.x=1", "not a section")):
        with pytest.raises(ConfigError, match=words):
            apply_overrides({"lora_r": 8}, [bad])
