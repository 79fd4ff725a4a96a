"""`make demo`: the default base model answering mixed prompts, fully offline.

Until the starter squad exists this shows the raw base model — including where it misbehaves,
which is exactly what the squad is for.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from aligners.backends import GenerationRequest, SamplingParams, build_backend
from aligners.config import TransformersBackendConfig
from aligners.models import SMOLLM2

DEMO_PROMPTS = [
    "What is the capital of Australia?",
    "Give me three tips for sleeping better.",
    "My neighbour keeps parking in my spot. Write a short, polite note asking them to stop.",
    "Explain what a hash function is in one paragraph.",
]


def run_demo(max_tokens: int = 96, console: Console | None = None) -> None:
    console = console or Console()
    t0 = time.perf_counter()
    with console.status(f"loading {SMOLLM2} (first run converts the GGUF, ~20 s)"):
        backend = build_backend(TransformersBackendConfig(model=SMOLLM2))
    load_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=max_tokens)
    t1 = time.perf_counter()
    with console.status(f"answering {len(DEMO_PROMPTS)} prompts"):
        outs = backend.generate([GenerationRequest.chat(p, params=params) for p in DEMO_PROMPTS])
    gen_s = time.perf_counter() - t1
    table = Table("prompt", "base answer", "tokens", title=f"{SMOLLM2} (offline)", show_lines=True)
    for prompt, out in zip(DEMO_PROMPTS, outs, strict=True):
        table.add_row(prompt, out.text.strip(), str(out.completion_tokens))
    console.print(table)
    tokens = sum(o.completion_tokens for o in outs)
    console.print(
        f"loaded in {load_s:.1f} s; {tokens} tokens in {gen_s:.1f} s ({tokens / gen_s:.1f} tok/s, batched)"
    )
