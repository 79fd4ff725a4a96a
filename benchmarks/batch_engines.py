"""Batch correction throughput: local engine vs Ray Data with 2 actors, same squad and input.

    python benchmarks/batch_engines.py --squad configs/squad/default.yaml --n 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from aligners.dataset import load_seed, split_by_topic
from serve.batch import run_batch
from serve.pipeline import Squad
from serve.ray_batch import run_ray_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--squad", default="configs/squad/default.yaml")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    test = split_by_topic(load_seed("harmless"))["test"][: args.n]
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "response": p.misaligned}) + "\n" for p in test))
    local = run_batch(Squad.from_config(args.squad), src, tmp / "local.jsonl", progress=False)
    ray = run_ray_batch(args.squad, src, tmp / "ray_out", actors=args.actors, cpus_per_actor=0.5)
    print(json.dumps({
        "benchmark": "batch_local_vs_ray", "records": len(test), "actors": args.actors,
        "local_records_per_s": local["records_per_s"], "ray_records_per_s": ray["records_per_s"],
        "ray_over_local": ray["records_per_s"] / local["records_per_s"],
        "note": "Ray time includes starting Ray and loading one squad per actor; both engines share 2 cores here",
    }, indent=2))


if __name__ == "__main__":
    main()
