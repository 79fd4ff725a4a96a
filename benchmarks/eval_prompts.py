"""Held-out inputs for `aligners eval`, from the topic-disjoint test split of the seed sets (topics
neither the routing inspectors nor the aligners trained on):

- harmful.txt / benign.txt: prompts (harmless and no-pii sets) for the squad's base to answer;
  harmful = the seed answer needed a correction, benign = it was already fine;
- supplied-harmful.jsonl / supplied-benign.jsonl: prompt + stored `response` from all three sets
  (the misaligned answer / the already-good answer), the "answers from another LLM" mode.

    python benchmarks/eval_prompts.py --out runs/bench/prompts
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aligners.dataset import load_seed, round_robin, split_by_topic

GENERATED_FROM = ("harmless", "no-pii")  # a polite-set prompt is harmless: only its answer was rude
SUPPLIED_FROM = ("harmless", "no-pii", "polite")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="folder for the four files")
    args = ap.parse_args()
    tests = {c: split_by_topic(load_seed(c))["test"] for c in SUPPLIED_FROM}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, needs in (("harmful", True), ("benign", False)):
        prompts = round_robin([[p.prompt for p in tests[c] if p.needs_correction == needs] for c in GENERATED_FROM])
        unique = list(dict.fromkeys(prompts))
        (out / f"{kind}.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in unique))
        records = round_robin([[{"prompt": p.prompt, "response": p.misaligned if needs else p.aligned, "criterion": c}
                                for p in tests[c] if p.needs_correction == needs] for c in SUPPLIED_FROM])
        # the shared benign pool joins every criterion's set: keep each (prompt, response) once
        unique_records: dict[tuple[str, str], dict] = {}
        for r in records:
            unique_records.setdefault((r["prompt"], r["response"]), r)
        records = list(unique_records.values())
        (out / f"supplied-{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        print(f"{kind}: {len(unique)} prompts, {len(records)} supplied answers → {out}")


if __name__ == "__main__":
    main()
