"""The starter squad's inspection on real answers: answers/s with one shared SmolLM2 pass for
every member (policy.shared_reading, inspectors/shared_reading.py) against each inspector's own
passes, measured in one run, and how far the two arms' scores and flags differ (they should not).

Answers: hand-labelled dev answers of every criterion (SmolLM2's and the large-assistant style),
a seeded sample. Both arms score the same answers through `Squad.inspect` (what `correct`, the
proxy and the batch engine run first), alternating, the feature cache cleared before each pass,
best of `--repeats` kept, after an untimed pass that loads every model. Prints one JSON object.

    python benchmarks/squad_inspection.py --n 64
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", default="configs/squad/default.yaml")
    ap.add_argument("--dev", default="evals/dev/answers.jsonl")
    ap.add_argument("--n", type=int, default=64, help="dev answers scored per pass")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed passes per arm (best kept)")
    args = ap.parse_args()

    from aligners.config import load_config
    from aligners.schema import AnswerRecord, read_jsonl
    from inspectors.embed_logreg import clear_embedding_cache
    from serve.config import SquadConfig
    from serve.pipeline import Squad

    cfg = load_config(args.squad, SquadConfig)
    squads = {on: Squad.from_config(cfg.model_copy(update={"policy": cfg.policy.model_copy(
        update={"shared_reading": on})}), config_file=args.squad) for on in (True, False)}
    dev = [r for r in read_jsonl(args.dev, AnswerRecord) if r.label_by == "hand"]
    sample = random.Random(0).sample(dev, min(args.n, len(dev)))
    prompts, answers = [r.prompt for r in sample], [r.answer for r in sample]
    for on in (False, True):  # load every model each arm reads before timing
        squads[on].inspect(prompts[:2], answers[:2])
    seconds: dict[bool, list[float]] = {True: [], False: []}
    scores: dict[bool, np.ndarray] = {}
    for _ in range(args.repeats):
        for on in (False, True):
            clear_embedding_cache()
            t0 = time.perf_counter()
            scores[on] = squads[on].inspect(prompts, answers)
            seconds[on].append(time.perf_counter() - t0)
    thresholds = np.array([g.threshold for g in squads[True].guards])
    best = {on: min(s) for on, s in seconds.items()}
    print(json.dumps({
        "benchmark": "squad_inspection",
        "answers": len(sample),
        "members": [g.criterion for g in squads[True].guards],
        "readings": sorted({str(r) for g in squads[True].guards for r in g.inspector.readings()}),
        "separate_passes": {"answers_per_s": round(len(sample) / best[False], 2), "seconds_all": seconds[False]},
        "shared_reading": {"answers_per_s": round(len(sample) / best[True], 2), "seconds_all": seconds[True]},
        "speedup": round(best[False] / best[True], 3),
        "max_abs_score_difference": float(np.abs(scores[True] - scores[False]).max()),
        "flag_decisions_that_differ": int(((scores[True] < thresholds) != (scores[False] < thresholds)).sum()),
    }, indent=2))


if __name__ == "__main__":
    main()
