"""N aligners as LoRA adapters on one base vs N merged model copies: memory and throughput.

Each variant runs in its own child process (peak RSS is its own). Both generate the same
aligner requests, grouped by aligner, with the squad recipe's backend and aligner sampling. The
aligners are the three starter ones by default, whichever of them the squad recipe uses.
Prints one JSON object.

    python benchmarks/adapters_vs_merged.py --squad configs/squad/default.yaml --n 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

STARTERS = [f"artifacts/aligners/{c}" for c in ("harmless", "no-pii", "polite")]


def workload(squad_cfg: str, aligners: list[str], n: int):
    from aligners.artifact import AlignerArtifact
    from aligners.config import load_config
    from aligners.dataset import load_seed, split_by_topic
    from aligners.formatting import aligner_request
    from serve.config import SquadConfig

    cfg = load_config(squad_cfg, SquadConfig)
    dirs, reqs = {}, {}
    for path in aligners:
        crit = AlignerArtifact.load(path).criterion
        test = [p for p in split_by_topic(load_seed(crit))["test"] if p.needs_correction][:n]
        dirs[crit] = path
        reqs[crit] = [aligner_request(crit, p.prompt, p.misaligned, crit, cfg.policy.aligner_params) for p in test]
    return cfg, dirs, reqs


def child(variant: str, squad_cfg: str, aligners: list[str], n: int) -> dict:
    import torch

    from aligners.artifact import AlignerArtifact, export_merged
    from aligners.backends.transformers_local import TransformersBackend
    from aligners.config import TransformersBackendConfig
    from aligners.models import load_causal_lm

    torch.manual_seed(0)
    cfg, dirs, reqs = workload(squad_cfg, aligners, n)
    t_load = time.perf_counter()
    if variant == "adapters":
        backend = TransformersBackend(TransformersBackendConfig(model=cfg.backend.model, self_test=False))
        for crit, d in dirs.items():
            backend.load_adapter(crit, str(AlignerArtifact.load(d).adapter_dir()))
        backends = {crit: backend for crit in dirs}
    else:
        import tempfile

        backends = {}
        for crit, d in dirs.items():
            merged_dir = export_merged(d, tempfile.mkdtemp(prefix=f"merged-{crit}-"))
            model, tok = load_causal_lm(str(merged_dir))
            backends[crit] = TransformersBackend(TransformersBackendConfig(model=str(merged_dir)), model=model, tokenizer=tok)
    load_s = time.perf_counter() - t_load
    tokens = 0
    t0 = time.perf_counter()
    for crit, rs in reqs.items():
        rs = [r.model_copy(update={"adapter": crit if variant == "adapters" else None}) for r in rs]
        tokens += sum(o.completion_tokens for o in backends[crit].generate(rs))
    seconds = time.perf_counter() - t0
    params = sum(sum(p.numel() * p.element_size() for p in b.model.parameters()) for b in {id(b): b for b in backends.values()}.values())
    return {"variant": variant, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "load_s": load_s, "weights_mb": params / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--squad", default="configs/squad/default.yaml")
    ap.add_argument("--aligners", nargs="+", default=STARTERS, help="aligner artifact folders")
    ap.add_argument("--n", type=int, default=8, help="aligner requests per criterion")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.squad, args.aligners, args.n)))
        return
    runs = {}
    for variant in ("adapters", "merged"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--squad", args.squad,
                              "--aligners", *args.aligners, "--n", str(args.n)],
                             capture_output=True, text=True, check=True)
        runs[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    a, m = runs["adapters"], runs["merged"]
    print(json.dumps({
        "benchmark": "adapters_on_one_base_vs_merged_copies",
        "aligners": len(args.aligners), "requests_per_aligner": args.n, **runs,
        "memory_ratio_adapters_over_merged": a["peak_rss_mb"] / m["peak_rss_mb"],
        "weights_ratio_adapters_over_merged": a["weights_mb"] / m["weights_mb"],
        "throughput_ratio_adapters_over_merged": a["tokens_per_s"] / m["tokens_per_s"],
    }, indent=2))


if __name__ == "__main__":
    main()
