"""In-process vLLM engine with multi-LoRA: many adapters over one base model on one GPU.

Unverified here: written against vLLM's documented API (`LLM`, `LLM.chat`, `LLM.generate`,
`SamplingParams`, `vllm.lora.request.LoRARequest`); this machine has no CUDA, so vLLM cannot
be installed and only the "not installed" path is tested. vLLM is imported when the backend
is built, so importing this module (or choosing another backend) never needs it.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aligners.backends.base import (
    Backend,
    BackendError,
    Generation,
    GenerationRequest,
    SamplingParams,
    register_backend,
)
from aligners.config import VLLMBackendConfig

NOT_INSTALLED = (
    "vLLM is not installed: pip install 'aligners[vllm]' on a CUDA machine, or use "
    "type: openai_http against a `vllm serve --enable-lora --lora-modules name=path` server"
)


@register_backend("vllm")
class VLLMBackend(Backend):
    """Batched generation through `vllm.LLM`, routing each request to its LoRA adapter."""

    name = "vllm"

    def __init__(self, cfg: VLLMBackendConfig):
        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise BackendError(NOT_INSTALLED) from exc
        self.cfg = cfg
        self._vllm = vllm
        self._lora_request_cls = LoRARequest
        self._paths: dict[str, str] = {}
        self._ids: dict[str, int] = {}
        for name, path in cfg.adapters.items():  # bad paths fail before the engine loads
            self.load_adapter(name, path)
        self._llm: Any = vllm.LLM(
            model=cfg.model,
            enable_lora=True,
            max_loras=cfg.max_loras,
            max_lora_rank=cfg.max_lora_rank,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            dtype=cfg.dtype,
        )

    def adapters(self) -> list[str]:
        return list(self._paths)

    def load_adapter(self, name: str, path: str) -> None:
        """Register an adapter directory; vLLM loads it on the first request that uses it.

        A new path under a known name gets a new int id, because vLLM caches adapter weights
        by id and would otherwise keep serving the old ones."""
        if not Path(path).is_dir():
            raise BackendError(f"adapter {name!r}: {path} is not a directory")
        if self._paths.get(name) != path:
            self._ids[name] = max(self._ids.values(), default=0) + 1
            self._paths[name] = path

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One engine call per (chat or prompt, adapter) group: `LLM.chat` takes a single
        `lora_request` for the whole call, so requests are grouped by adapter; results are
        put back in input order."""
        if self._llm is None:
            raise BackendError("vllm backend is closed")
        requests = list(requests)
        groups: dict[tuple[bool, str | None], list[int]] = {}
        for i, req in enumerate(requests):
            self._lora(req.adapter)  # unknown adapters fail before any generation
            groups.setdefault((req.messages is not None, req.adapter), []).append(i)
        results: list[Generation | None] = [None] * len(requests)
        for (is_chat, adapter), indices in groups.items():
            batch = [requests[i] for i in indices]
            params = [self._sampling(r.params) for r in batch]
            lora = self._lora(adapter)
            if is_chat:
                conversations = [[m.model_dump() for m in r.messages] for r in batch]
                outputs = self._llm.chat(conversations, params, use_tqdm=False, lora_request=lora)
            else:
                prompts = [r.prompt for r in batch]
                outputs = self._llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
            for i, out in zip(indices, outputs, strict=True):
                results[i] = _to_generation(out)
        return results  # type: ignore[return-value]  # every slot was filled above

    def close(self) -> None:
        """Drop the engine so its GPU memory can be reclaimed before another model loads."""
        self._llm = None
        gc.collect()

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self._paths:
            known = ", ".join(sorted(self._paths)) or "none loaded"
            raise BackendError(f"unknown adapter {adapter!r}; known adapters: {known}")
        return self._lora_request_cls(adapter, self._ids[adapter], self._paths[adapter])

    def _sampling(self, p: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            stop=list(p.stop) or None,
            seed=p.seed,
            repetition_penalty=p.repetition_penalty,
        )


def _to_generation(out: Any) -> Generation:
    """vllm.RequestOutput → Generation (first completion; token counts from token ids)."""
    completion = out.outputs[0]
    return Generation(
        text=completion.text,
        prompt_tokens=len(out.prompt_token_ids or []),
        completion_tokens=len(completion.token_ids),
        finish_reason="length" if completion.finish_reason == "length" else "stop",
    )
