"""`ServerConfig`: everything `aligners serve` needs (configs/serve/*.yaml, merged with CLI flags).

Who answers prompts, in order of precedence:
1. `upstream` (an OpenAI-compatible URL: vLLM, llama.cpp, OpenAI) with `upstream_model`;
2. else the squad recipe's `base:` (a local model with `base: shared`, or an `openai_http`
   backend config, which is then used as the upstream);
3. `squad: null` turns the squad off: a plain proxy to `upstream` (used to measure overhead).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from aligners.config import StrictModel
from serve.protocol import PolicyOptions


class ServerConfig(StrictModel):
    squad: str | None = Field(
        default=None,
        description="Squad recipe (configs/squad/*.yaml). null = passthrough proxy, no correction "
        "(needs `upstream`).",
    )
    upstream: str | None = Field(
        default=None, description="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1."
    )
    upstream_model: str | None = Field(default=None, description="Model name sent to the upstream.")
    upstream_key: str | None = Field(
        default=None,
        description="Key for the upstream: a literal key, 'env:VAR' (read from the environment), or "
        "'passthrough' (forward the client's own Authorization header).",
    )
    served_model_name: str | None = Field(
        default=None,
        description="The model id clients send and /v1/models lists; default: upstream_model, else "
        "the squad's base model name.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted Bearer keys ('env:VAR' allowed); empty = no authentication. A key "
        "that cannot be resolved (VAR unset or empty) stops start-up: never silently open.",
    )
    metrics_open: bool = Field(default=False, description="Serve /metrics without a key.")
    admin_keys: list[str] = Field(
        default_factory=list,
        description="Bearer keys of the admin endpoints (POST /admin/reload; 'env:VAR' allowed), "
        "separate from api_keys; empty = the admin endpoints are off.",
    )
    policies: dict[str, PolicyOptions] = Field(
        default_factory=dict, description="Named squad policies (mode, criteria, thresholds) a request "
        "selects with `aligners.policy` or the `x-aligners-policy` header.",
    )
    pairs_log: str | None = Field(
        default=None, pattern=r"\.jsonl$", description="Append every changed answer as a preference pair (prompt, chosen, "
        "rejected, criteria, scores) to this .jsonl file, for datasets and trl's DPOTrainer.",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Larger bodies get 413.")
    max_tokens_limit: int = Field(default=4096, ge=1, description="Larger max_tokens get 400.")
    max_n: int = Field(default=8, ge=1, description="Largest `n` (choices per request).")
    max_batch_items: int = Field(default=64, ge=1, description="Pairs per /v1/aligners/* request.")
    max_stop_sequences: int = Field(default=4, ge=0, description="Most `stop` strings (OpenAI: 4).")
    max_stop_chars: int = Field(
        default=64, ge=1, description="Longest `stop` string (each distinct one costs the local "
        "generator a compiled matcher)."
    )
    max_json_depth: int = Field(default=32, ge=4, description="Deepest JSON nesting a body may have.")
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="The whole body must arrive within this (else 408); a "
        "request takes an admission slot only once its body is in."
    )
    max_concurrency: int = Field(default=4, ge=1, description="Requests processed at once.")
    max_queue: int = Field(
        default=16, ge=0, description="Requests waiting for a slot; beyond that: 429 + Retry-After."
    )
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="Generation (upstream or local) must finish within this; else 504."
    )
    graceful_shutdown_s: float = Field(
        default=30.0, ge=0, description="On SIGINT/SIGTERM, in-flight requests get this long to finish."
    )
    upstream_connections: int = Field(default=64, ge=1, description="Pooled connections to the upstream.")
    log_level: str = "info"

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        if self.upstream is not None and not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream must be an http(s) URL ending in /v1, got {self.upstream!r}")
        if self.upstream is not None and not self.upstream_model:
            raise ValueError("upstream_model is required with upstream (the model name the upstream serves)")
        if self.squad is None and self.upstream is None:
            raise ValueError("nothing to serve: give a squad recipe, an upstream, or both")
        return self

    @model_validator(mode="after")
    def _secrets_resolve(self) -> ServerConfig:
        """Fail closed: `--api-key env:VAR` with VAR unset must not start an open server."""
        named = [*self.api_keys, *self.admin_keys, *([self.upstream_key] if self.upstream_key else [])]
        missing = [k or "an empty key" for k in named if not resolve_secret(k)]
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: not set or empty in the environment; set it, or remove the key "
                "from the config (the server refuses to start with authentication it cannot apply)"
            )
        return self

    def resolved_api_keys(self) -> list[str]:
        return [resolve_secret(k) for k in self.api_keys]

    def resolved_admin_keys(self) -> list[str]:
        return [resolve_secret(k) for k in self.admin_keys]

    def resolved_upstream_key(self) -> str | None:
        if self.upstream_key == "passthrough":
            return None
        return resolve_secret(self.upstream_key)

    def squad_path(self, config_file: Path | str | None = None) -> Path | None:
        """The squad recipe path; a relative one is tried from the working directory, then from
        the folders above the server config file (so configs/serve/x.yaml can name configs/squad/...)."""
        if self.squad is None:
            return None
        from serve.config import resolve_artifact

        return resolve_artifact(self.squad, Path(config_file) if config_file else None)


def resolve_secret(value: str | None) -> str | None:
    """'env:VAR' → $VAR (None if unset); anything else as-is."""
    if value and value.startswith("env:"):
        return os.environ.get(value[4:]) or None
    return value
