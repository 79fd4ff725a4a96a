"""Aligner training cost: LoRA on the ILA top-k layers vs on all layers (ratios from one run).

Each variant runs in its own child process so peak memory (max RSS) is its own. Prints one JSON
object. Example:
    python benchmarks/aligner_training.py --aligner artifacts/aligners/harmless --layers 22,23,24,25,26,27,28,29
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def child(data: str, layers: str, steps: int, batch_size: int, base: str) -> dict:
    from itertools import cycle, islice

    import torch

    from aligners.dataset import resolve_data
    from aligners.lora import answer_loss, attach_lora, batches, tokenize_all, training_pairs
    from aligners.models import load_causal_lm
    from aligners.train_config import AlignerTrainConfig

    torch.manual_seed(0)
    model, tok = load_causal_lm(base)
    chosen = None if layers == "all" else [int(x) for x in layers.split(",")]
    cfg = AlignerTrainConfig(base=base, layers=chosen or "all", batch_size=batch_size)
    pairs = training_pairs(resolve_data(data)["train"], cfg)
    data_batches = batches(tokenize_all(tok, pairs, cfg.max_length), batch_size, tok.pad_token_id, seed=0)
    peft_model = attach_lora(model, cfg, chosen)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for i, batch in enumerate(islice(cycle(data_batches), steps + 2)):
        t0 = time.perf_counter()
        answer_loss(peft_model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # the first steps warm allocator and kernels up
            times.append(time.perf_counter() - t0)
    return {
        "layers": layers,
        "trainable_params": sum(p.numel() for p in params),
        "mean_step_s": sum(times) / len(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(args, layers: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--data", args.data, "--layers", layers,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--base", args.base]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="seed:harmless")
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--aligner", help="a trained aligner: time the layers its manifest names (e.g. its ILA top-k)")
    ap.add_argument("--layers", action="append", default=[], help="a comma list of layers; repeat to compare several")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.data, args.layers[0], args.steps, args.batch_size, args.base)))
        return
    variants = {}
    if args.aligner:
        variants["aligner_layers"] = json.loads((Path(args.aligner) / "manifest.json").read_text())["layers"]
    for i, spec in enumerate(args.layers):
        variants[f"layers_{i}"] = sorted(int(x) for x in spec.split(","))
    if not variants:
        ap.error("give --aligner and/or --layers")
    full = run_child(args, "all")
    report = {"benchmark": "aligner_training_topk_vs_all", "base": args.base, "data": args.data,
              "batch_size": args.batch_size, "steps": args.steps, "all_layers": full}
    for name, layers in variants.items():
        run = run_child(args, ",".join(map(str, layers)))
        report[name] = run | {
            "step_speedup_vs_all": full["mean_step_s"] / run["mean_step_s"],
            "peak_rss_ratio_all_over_this": full["peak_rss_mb"] / run["peak_rss_mb"],
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
