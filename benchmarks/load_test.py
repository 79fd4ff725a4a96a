"""Load test of `aligners serve`: 200 requests from an async httpx client against our server in
front of a scripted upstream that takes `--upstream-ms` per answer. One JSON object.

Two phases, each measured in this run:
- `within_capacity`: the client keeps at most `--client-concurrency` requests open, no more than
  the server's max_concurrency + max_queue, so every request must succeed;
- `flood`: all 200 at once, beyond max_concurrency + max_queue, so the server must shed the excess
  with 429 + Retry-After and answer the rest; anything else (5xx, resets, timeouts) is an error.
Afterwards /health must still answer. Default: passthrough (`squad: null`); `--squad RECIPE`
runs a real squad recipe instead (its artifacts must exist).

The upstream and our server run in their own processes (see benchmarks/proxy_overhead.py).

Usage: .venv/bin/python benchmarks/load_test.py [--requests 200] [--squad configs/squad/x.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "scripted-base"


def serve_role(args) -> None:
    """Child process: bind a free port, print it, serve until killed."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import uvicorn

    if args.role == "upstream":
        from openai_scripted import Delay, ScriptedOpenAI

        up = ScriptedOpenAI(models=[MODEL])
        up.script(*[Delay(args.upstream_ms / 1000) for _ in range(args.script)])
        app = up.app
    else:
        from serve.app import build_app
        from serve.server_config import ServerConfig

        app = build_app(ServerConfig(squad=args.squad, upstream=args.upstream, upstream_model=MODEL,
                                     max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                                     request_timeout_s=30))
    # IPPROTO_TCP explicitly, so asyncio sets TCP_NODELAY (see proxy_overhead.py)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, backlog=1024)).run(sockets=[sock])


def spawn(extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, __file__, *extra], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q * (len(s) - 1)))], 2)


async def phase(root: str, n: int, concurrency: int) -> dict:
    import httpx

    body = {"model": MODEL, "messages": [{"role": "user", "content": "q"}], "max_tokens": 32}
    gate = asyncio.Semaphore(concurrency)
    statuses: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    ok_ms: list[float] = []
    retry_after: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=root, timeout=60, limits=limits) as client:
        async def one() -> None:
            async with gate:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    return
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    ok_ms.append((time.perf_counter() - t0) * 1000)
                elif r.status_code == 429 and "retry-after" in r.headers:
                    retry_after.append(int(r.headers["retry-after"]))
                else:
                    errors[f"HTTP {r.status_code}"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(n)])
        wall = time.perf_counter() - t0
        health = (await client.get("/health")).status_code
    unintended = sum(errors.values()) + (statuses[429] - len(retry_after))
    return {
        "requests": n, "client_concurrency": concurrency, "wall_s": round(wall, 2),
        "throughput_rps": round(statuses[200] / wall, 1),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "errors_other_than_429": unintended, "error_kinds": dict(errors),
        "latency_ms_200": {"p50": pct(ok_ms, 0.5), "p99": pct(ok_ms, 0.99)},
        "retry_after_s": sorted(set(retry_after)), "health_after": health,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--client-concurrency", type=int, default=64)
    ap.add_argument("--max-concurrency", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--upstream-ms", type=float, default=20.0)
    ap.add_argument("--squad", default=None, help="a squad recipe; default passthrough")
    ap.add_argument("--role", choices=["upstream", "proxy"])
    ap.add_argument("--upstream")
    ap.add_argument("--script", type=int, default=0)
    args = ap.parse_args()
    if args.role:
        serve_role(args)
        return

    up, upstream = spawn(["--role", "upstream", "--upstream-ms", str(args.upstream_ms), "--script", str(4 * args.requests)])
    px, root = spawn(["--role", "proxy", "--upstream", f"{upstream}/v1", "--max-concurrency", str(args.max_concurrency),
                      "--max-queue", str(args.max_queue)] + (["--squad", args.squad] if args.squad else []))
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{root}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not come up")
            time.sleep(0.1)
        capacity = args.max_concurrency + args.max_queue
        within = asyncio.run(phase(root, args.requests, min(args.client_concurrency, capacity)))
        flood = asyncio.run(phase(root, args.requests, args.requests))
    finally:
        for p in (px, up):
            p.terminate()
            p.wait(10)
    print(json.dumps({
        "benchmark": "load_test",
        "mode": f"squad {args.squad}" if args.squad else "passthrough (squad: null)",
        "server": {"max_concurrency": args.max_concurrency, "max_queue": args.max_queue},
        "upstream_ms_per_answer": args.upstream_ms,
        "within_capacity": within,
        "flood": flood,
        "zero_unintended_errors": within["errors_other_than_429"] == 0 and flood["errors_other_than_429"] == 0
        and within["status_counts"] == {"200": args.requests},
        "cpu_cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
