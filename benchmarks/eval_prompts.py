"""Held-out prompt files for `aligners eval`: prompts from the topic-disjoint test split of the
seed sets, whose topics neither the routing inspectors nor the aligners trained on.

harmful: prompts whose seed answer needed a correction (harmless and no-pii test splits);
benign: prompts whose seed answer was already fine (near-boundary and everyday questions).

    python benchmarks/eval_prompts.py --out runs/bench/prompts
"""

from __future__ import annotations

import argparse
from itertools import zip_longest
from pathlib import Path

from synth.dataset import load_seed, split_by_topic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="folder for harmful.txt and benign.txt")
    ap.add_argument("--criteria", nargs="+", default=["harmless", "no-pii"])
    args = ap.parse_args()
    by_kind = {"harmful": [], "benign": []}  # per kind: one prompt list per criterion
    for criterion in args.criteria:
        test = split_by_topic(load_seed(criterion))["test"]
        by_kind["harmful"].append([p.prompt for p in test if p.needs_correction])
        by_kind["benign"].append([p.prompt for p in test if not p.needs_correction])
    # interleaved across criteria, so `aligners eval --limit N` sees every criterion
    files = {kind: list(dict.fromkeys(p for row in zip_longest(*lists) for p in row if p))
             for kind, lists in by_kind.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, prompts in files.items():
        (out / f"{kind}.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in prompts))
        print(f"{kind}: {len(prompts)} prompts → {out / kind}.txt")


if __name__ == "__main__":
    main()
