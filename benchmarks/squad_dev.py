"""Does the squad correct real answers? Judged by hand labels, never by its own inspectors.

The dev set's hand-labelled answers (SmolLM2's and the large-assistant style; dev topics never
train anything) are corrected twice, with the same inspectors and routing policy:
- `trained`: the squad as shipped (its LoRA aligners);
- `prompted`: every aligner replaced by the base model given the same aligner instruction without
  an adapter — the zero-shot rewrite any user could run, which a trained aligner must beat.
Each arm is judged by serve.dev_judge (before: hand labels; after: the labelling rule's
detectors, whose agreement with the hand labels it reports) into OUT/<arm>/report.json, .md and
results.jsonl. `--per-group N` keeps a seeded sample of N answers per (source, criterion, label)
group for a quicker run. Prints one JSON object.

Usage: .venv/bin/python benchmarks/squad_dev.py --squad configs/squad/default.yaml \\
    --dev evals/dev/answers.jsonl --out runs/bench/dev [--per-group 40] [--criteria harmless]
    [--arms trained]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aligners.config import load_config
from aligners.schema import AnswerRecord, read_jsonl
from serve.config import SquadConfig
from serve.dev_judge import evaluate_on_dev_set, source_of
from serve.pipeline import Squad


def sample(records: list[AnswerRecord], per_group: int | None, seed: int = 0) -> list[AnswerRecord]:
    """Up to `per_group` answers of each (source, criterion, label) group, in file order. Each group
    draws from its own seeded RNG, so a `--criteria` subset samples exactly what the full run does."""
    if per_group is None:
        return records
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((source_of(r), r.criterion, r.label), []).append(i)
    keep = {i for key, idx in groups.items()
            for i in random.Random(f"{seed}:{':'.join(map(str, key))}").sample(idx, min(per_group, len(idx)))}
    return [r for i, r in enumerate(records) if i in keep]


def run_arm(recipe: SquadConfig, config_file: str, records: list[AnswerRecord], out: Path) -> dict:
    squad = Squad.from_config(recipe, config_file=config_file)
    t0 = time.perf_counter()
    try:
        report = evaluate_on_dev_set(squad, records, out)
    finally:
        squad.close()
    return report | {"seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", default="configs/squad/default.yaml")
    ap.add_argument("--dev", default="evals/dev/answers.jsonl")
    ap.add_argument("--out", default="runs/bench/dev")
    ap.add_argument("--per-group", type=int, default=None)
    ap.add_argument("--criteria", nargs="+", default=None,
                    help="Only the dev answers labelled for these criteria (default: all).")
    ap.add_argument("--arms", nargs="+", default=["trained", "prompted"], choices=["trained", "prompted"])
    args = ap.parse_args()
    records = [r for r in read_jsonl(args.dev, AnswerRecord)
               if r.label_by == "hand" and (args.criteria is None or r.criterion in args.criteria)]
    records = sample(records, args.per_group)
    recipe = load_config(args.squad, SquadConfig)
    arms = {"trained": recipe, "prompted": recipe.with_prompted_aligners()}
    reports = {name: run_arm(arms[name], args.squad, records, Path(args.out) / name) for name in args.arms}
    gap = {} if len(reports) < 2 else {
        source: {crit: round(100 * (f["made_right"]["rate"] - reports["prompted"]["groups"][source][crit]["made_right"]["rate"]), 1)
                 for crit, f in crits.items() if f["made_right"]["n"]}
        for source, crits in reports["trained"]["groups"].items()}
    print(json.dumps({"benchmark": "squad_dev", "squad": args.squad, "dev": args.dev, "per_group": args.per_group,
                      "criteria": args.criteria, "answers": len(records), **reports, "made_right_gap_points": gap}, indent=2))


if __name__ == "__main__":
    main()
