"""Generation backends behind one protocol (`base.Backend`), built from a config's `type:`.

Each backend module registers itself on import; `build_backend` imports only the module the
config names, so choosing the HTTP backend never imports torch, and vLLM stays optional.
"""

from __future__ import annotations

import importlib

from aligners.backends.base import (
    BACKENDS,
    Backend,
    BackendError,
    ChatMessage,
    Generation,
    GenerationRequest,
    SamplingParams,
)
from aligners.config import BACKEND_CONFIG, validate

_MODULE_OF_TYPE = {
    "transformers": "aligners.backends.transformers_local",
    "openai_http": "aligners.backends.openai_http",
    "vllm": "aligners.backends.vllm_engine",
}

__all__ = [
    "Backend",
    "BackendError",
    "ChatMessage",
    "Generation",
    "GenerationRequest",
    "SamplingParams",
    "backend_from_spec",
    "build_backend",
]


def build_backend(cfg) -> Backend:
    """Config model (or plain dict with `type:`) → a ready backend."""
    if isinstance(cfg, dict):
        cfg = validate(BACKEND_CONFIG, cfg, "<backend config>")
    importlib.import_module(_MODULE_OF_TYPE[cfg.type])
    return BACKENDS[cfg.type](cfg)


def backend_from_spec(spec: str, **overrides) -> Backend:
    """CLI shorthand: an http(s) URL → openai_http (model via overrides, default 'default');
    anything else → a local transformers model (registry name, HF id or path)."""
    if spec.startswith(("http://", "https://")):
        data = {"type": "openai_http", "base_url": spec.rstrip("/"), "model": "default"}
    else:
        data = {"type": "transformers", "model": spec}
    return build_backend({**data, **overrides})
