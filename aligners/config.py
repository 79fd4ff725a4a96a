"""YAML recipes → validated config models (litgpt/trl style: one typed object drives a job).

Every file under `configs/` must load through `load_config` (tests/test_configs.py checks it).
Errors name the file, the key and what was expected, so a typo in a recipe is a one-line fix.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from aligners.schema import Criterion


class ConfigError(ValueError):
    """A recipe that does not validate; the message lists every bad key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --- generation backends -------------------------------------------------------------------


class TransformersBackendConfig(StrictModel):
    """A local model through transformers + peft; many LoRA adapters share one base model."""

    type: Literal["transformers"] = "transformers"
    model: str = Field(default="smollm2-135m-instruct", description="Registry name, HF id or path.")
    adapters: dict[str, str] = Field(default_factory=dict, description="adapter name → adapter dir")
    device: str = Field(default="cpu", description="'cpu', 'cuda', 'cuda:0', ...")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_batch_size: int = Field(default=8, ge=1, description="Requests per forward batch.")
    self_test: bool = Field(default=True, description="Check each adapter changes the logits.")


class OpenAIHTTPBackendConfig(StrictModel):
    """Any OpenAI-compatible server: vLLM, llama.cpp server, OpenAI, or our own proxy."""

    type: Literal["openai_http"] = "openai_http"
    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="Served model name of the base model.")
    api_key: str | None = Field(default=None, description="Bearer key; else $OPENAI_API_KEY if set.")
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="adapter name → served model name (vLLM `--lora-modules name=path`).",
    )
    endpoint: Literal["chat", "completions"] = Field(
        default="chat", description="Where chat requests go; raw prompts always use /completions."
    )
    concurrency: int = Field(default=8, ge=1, description="Max requests in flight.")
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, description="Retries on 429/5xx/connection errors.")
    backoff_s: float = Field(default=0.5, ge=0, description="First retry delay; doubles each time.")


class VLLMBackendConfig(StrictModel):
    """In-process vLLM engine with LoRA (needs CUDA; unverified on CPU-only machines)."""

    type: Literal["vllm"] = "vllm"
    model: str
    adapters: dict[str, str] = Field(default_factory=dict, description="adapter name → adapter dir")
    max_loras: int = Field(default=4, ge=1)
    max_lora_rank: int = Field(default=16, ge=1)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    dtype: str = "auto"


BackendConfig = Annotated[
    TransformersBackendConfig | OpenAIHTTPBackendConfig | VLLMBackendConfig,
    Field(discriminator="type"),
]
BACKEND_CONFIG = TypeAdapter(BackendConfig)


# --- loading ---------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _format_errors(path: Path | str, err: ValidationError) -> str:
    lines = [f"{path}: invalid config ({err.error_count()} problem(s))"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  - {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def apply_overrides(recipe: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items applied to a recipe dict, the one way every command that takes a
    recipe overrides its fields: a value is read as YAML (0.5, true, [1, 2] type themselves) and a
    dotted key sets a nested field (importance.top_k=6)."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section of the recipe")
        node[leaf] = yaml.safe_load(value) if value else value
    return recipe


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate(model: type[M] | TypeAdapter, data: dict[str, Any], source: str = "<config>") -> M:
    """Validate `data` (from YAML or CLI overrides) and turn pydantic errors into ConfigError."""
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(data)
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(path: Path | str, model: type[M] | TypeAdapter | None = None) -> Any:
    """Load a recipe; without `model`, pick it from the folder the file sits in (configs/<kind>/)."""
    data = read_yaml(path)
    if model is None:
        model = model_for_path(path)
    return validate(model, data, str(path))


def load_criterion(path: Path | str) -> Criterion:
    return load_config(path, Criterion)


# configs/<folder>/ → "module:attribute" of its model; imported only when such a file is loaded,
# so loading a criterion never imports torch. Later modules add their folder here.
CONFIG_KINDS: dict[str, str] = {
    "criteria": "aligners.schema:Criterion",
    "backends": "aligners.config:BACKEND_CONFIG",
    "synth": "synth.config:SynthConfig",
    "inspectors": "inspectors.config:INSPECTOR_CONFIG",
    "taggers": "inspectors.config:SpanTaggerConfig",
    "aligners": "aligners.train_config:AlignerTrainConfig",
    "squad": "serve.config:SquadConfig",
    "serve": "serve.server_config:ServerConfig",
}


def model_for_path(path: Path | str) -> type[BaseModel] | TypeAdapter:
    folder = Path(path).resolve().parent.name
    if folder not in CONFIG_KINDS:
        known = ", ".join(sorted(CONFIG_KINDS))
        raise ConfigError(f"{path}: cannot tell the config kind from folder {folder!r}; known: {known}")
    module, attr = CONFIG_KINDS[folder].split(":")
    return getattr(importlib.import_module(module), attr)
