"""What our server's hop costs: N sequential chat requests straight to a scripted upstream vs the
same requests through `aligners serve` in passthrough mode (`squad: null`, so only the proxy is
measured: auth, admission, validation, upstream client, response rendering). One JSON object.

The upstream (tests/openai_scripted.py, instant echo replies) and our server each run in their own
process, as in production, so neither competes with the client for the GIL. Both arms use one
keep-alive connection and alternate request by request, so load from other jobs on the machine
hits both alike. Target: overhead p50 <= 5 ms.

`in_memory_ms` separates our code from the sockets: the same request through the ASGI app in
memory (no HTTP parsing, no kernel), the upstream answered by an httpx MockTransport; `app_cpu_p50`
is what auth, admission, validation, the upstream client and rendering cost per request.

Usage: .venv/bin/python benchmarks/proxy_overhead.py [--requests 500]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "scripted-base"


def serve_role(role: str, upstream: str | None) -> None:
    """Child process: bind a free port, print it, serve until killed."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import uvicorn

    if role == "upstream":
        from openai_scripted import ScriptedOpenAI

        app = ScriptedOpenAI(models=[MODEL]).app
    else:
        from serve.app import build_app
        from serve.server_config import ServerConfig

        app = build_app(ServerConfig(squad=None, upstream=upstream, upstream_model=MODEL, log_level="warning"))
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it Nagle + delayed ACK add ~40 ms to every response written in two parts
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def spawn(role: str, upstream: str | None = None) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, __file__, "--role", role] + (["--upstream", upstream] if upstream else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1"


def wait_ready(client, url: str, path: str = "/models") -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(Exception):  # not up yet
            if client.get(url + path).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.1)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def in_memory(n: int) -> dict:
    """The app's own cost without sockets: the same request through the ASGI app in memory, the
    upstream answered by an httpx MockTransport, minus the same client calling the mock directly."""
    import asyncio

    import httpx

    sys.path[:0] = [str(ROOT)]
    from serve.app import build_app
    from serve.metrics import ServerMetrics
    from serve.server_config import ServerConfig
    from serve.serving import AlignersServing, Upstream

    reply = {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL, "usage": {},
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    mock = httpx.MockTransport(lambda request: httpx.Response(200, json=reply))
    cfg = ServerConfig(squad=None, upstream="http://upstream/v1", upstream_model=MODEL)
    upstream = Upstream(cfg.upstream, MODEL)
    app = build_app(cfg, serving=AlignersServing(cfg, None, ServerMetrics(), upstream=upstream))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}

    async def run() -> dict:
        upstream._client, upstream._loop = httpx.AsyncClient(transport=mock), asyncio.get_running_loop()
        out = {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://proxy") as via, \
                httpx.AsyncClient(transport=mock, base_url="http://upstream") as direct:
            for name, client in (("direct", direct), ("proxy", via)):
                times = []
                for _ in range(n + 50):
                    t0 = time.perf_counter()
                    r = await client.post("/v1/chat/completions", json=body)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200, r.text
                out[name] = pct(times[50:], 0.5)
        return out

    t = asyncio.run(run())
    return {"direct_mock_p50": round(t["direct"], 3), "proxy_asgi_p50": round(t["proxy"], 3),
            "app_cpu_p50": round(t["proxy"] - t["direct"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--role", choices=["upstream", "proxy"])
    ap.add_argument("--upstream")
    args = ap.parse_args()
    if args.role:
        serve_role(args.role, args.upstream)
        return

    import httpx

    procs = []
    try:
        up_proc, upstream = spawn("upstream")
        procs.append(up_proc)
        px_proc, proxy = spawn("proxy", upstream)
        procs.append(px_proc)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 32}
        times: dict[str, list[float]] = {"direct": [], "proxy": []}
        with httpx.Client(timeout=30) as direct, httpx.Client(timeout=30) as via:
            wait_ready(direct, upstream)
            wait_ready(via, proxy)
            arms = {"direct": (direct, upstream), "proxy": (via, proxy)}
            for i in range(args.warmup + args.requests):
                for name, (client, url) in arms.items():
                    t0 = time.perf_counter()
                    r = client.post(url + "/chat/completions", json=body)
                    dt = (time.perf_counter() - t0) * 1000
                    if r.status_code != 200 or r.json()["choices"][0]["message"]["content"] != "echo:What is the capital of France?":
                        raise RuntimeError(f"{name}: HTTP {r.status_code}: {r.text[:200]}")
                    if i >= args.warmup:
                        times[name].append(dt)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)

    d, p = times["direct"], times["proxy"]
    overhead = [b - a for a, b in zip(d, p, strict=True)]
    result = {
        "benchmark": "proxy_overhead",
        "requests": args.requests,
        "mode": "passthrough (squad: null), sequential, keep-alive, separate processes",
        "direct_ms": {"p50": round(pct(d, 0.5), 3), "p99": round(pct(d, 0.99), 3), "mean": round(statistics.mean(d), 3)},
        "proxy_ms": {"p50": round(pct(p, 0.5), 3), "p99": round(pct(p, 0.99), 3), "mean": round(statistics.mean(p), 3)},
        "overhead_p50_ms": round(pct(p, 0.5) - pct(d, 0.5), 3),
        "overhead_paired_p50_ms": round(pct(overhead, 0.5), 3),
        "overhead_p99_ms": round(pct(p, 0.99) - pct(d, 0.99), 3),
        "in_memory_ms": in_memory(args.requests),
        "target_p50_ms": 5.0,
        "meets_target": pct(p, 0.5) - pct(d, 0.5) <= 5.0,
        "cpu_cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
