"""Time to first token and total time of a streamed answer: the raw upstream, then through the
squad in `buffered` and `sentences` mode, on clean traffic. One JSON object.

A paced OpenAI-compatible upstream streams a fixed clean answer (`--sentences` sentences, one word
every `--word-ms`), so the upstream's own speed is the same in every arm; our server runs the
starter squad (`--squad`) in front of it. Arms alternate request by request, so machine load hits
them alike. Target (issue #17): sentences TTFT <= raw TTFT + the time of one sentence + 10 ms;
sentences total within 5 % of buffered.

Usage: .venv/bin/python benchmarks/stream_modes.py [--requests 5] [--word-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/openai_scripted.py serves apps on a free port

ANSWER = [
    "Start by rinsing the rice until the water runs clear.",
    "Use one and a half cups of water for every cup of rice.",
    "Bring the water to a boil, then lower the heat and cover the pot.",
    "Let it simmer for about eighteen minutes without lifting the lid.",
    "Take the pot off the heat and let it rest for five more minutes.",
    "Fluff the rice with a fork before serving it warm.",
]
PROMPT = "How do I cook rice on the stove?"


def paced_upstream(text: str, word_s: float) -> FastAPI:
    from serve.pipeline import word_pieces
    from serve.protocol import chat_chunk, sse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if not body.get("stream"):  # the whole answer after the same generation time
            await asyncio.sleep(word_s * len(word_pieces(text)))
            return {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(word_pieces(text))}}

        async def events():
            yield sse(chat_chunk("up", 0, body["model"], 0, {"role": "assistant", "content": ""}))
            for piece in word_pieces(text):
                await asyncio.sleep(word_s)
                yield sse(chat_chunk("up", 0, body["model"], 0, {"content": piece}))
            yield sse(chat_chunk("up", 0, body["model"], 0, {}, "stop"))
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def timed_stream(client, url: str, body: dict) -> tuple[float, float, str]:
    """(seconds to the first non-empty content piece, seconds to [DONE], the text received)."""
    t0 = time.perf_counter()
    first, parts = None, []
    with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for ch in event.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    first = first if first is not None else time.perf_counter() - t0
                    parts.append(piece)
    return first or float("nan"), time.perf_counter() - t0, "".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", default="configs/squad/default.yaml")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--word-ms", type=float, default=20.0)
    args = ap.parse_args()

    import httpx
    from openai_scripted import serve_app

    from serve.app import build_app
    from serve.server_config import ServerConfig

    text = " ".join(ANSWER)
    messages = [{"role": "user", "content": PROMPT}]
    with serve_app(paced_upstream(text, args.word_ms / 1000)) as upstream:
        t0 = time.perf_counter()
        app = build_app(ServerConfig(squad=args.squad, upstream=f"{upstream}/v1", upstream_model="paced"))
        load_s = time.perf_counter() - t0
        with serve_app(app) as ours, httpx.Client(timeout=300) as client:
            arms = {
                "raw upstream": (f"{upstream}/v1/chat/completions", {"model": "paced", "stream": True}),
                "buffered": (f"{ours}/v1/chat/completions", {"model": "paced", "stream": True}),
                "sentences": (f"{ours}/v1/chat/completions", {"model": "paced", "stream": True,
                                                              "aligners": {"stream_mode": "sentences"}}),
            }
            runs: dict[str, list] = {name: [] for name in arms}
            for _ in range(args.requests + 1):  # the first round warms up and is dropped
                for name, (url, body) in arms.items():
                    runs[name].append(timed_stream(client, url, {**body, "messages": messages}))
    sentence_s = len(ANSWER[0].split()) * args.word_ms / 1000
    out = {"benchmark": "stream_modes", "squad": args.squad, "requests": args.requests,
           "word_ms": args.word_ms, "words": len(text.split()), "sentences": len(ANSWER),
           "first_sentence_s": round(sentence_s, 3), "squad_load_s": round(load_s, 1), "arms": {}}
    for name, samples in runs.items():
        kept = samples[1:]
        out["arms"][name] = {
            "ttft_s_median": round(statistics.median(s[0] for s in kept), 4),
            "total_s_median": round(statistics.median(s[1] for s in kept), 4),
            "text_unchanged": sum(s[2] == text for s in kept),
        }
    a = out["arms"]
    out["sentences_ttft_minus_raw_s"] = round(a["sentences"]["ttft_s_median"] - a["raw upstream"]["ttft_s_median"], 4)
    out["sentences_total_over_buffered"] = round(a["sentences"]["total_s_median"] / a["buffered"]["total_s_median"], 3)
    out["ttft_target_met"] = out["sentences_ttft_minus_raw_s"] <= sentence_s + 0.010
    out["total_target_met"] = out["sentences_total_over_buffered"] <= 1.05
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
