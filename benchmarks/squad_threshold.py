"""Where should a squad member's threshold sit? One criterion's member on its hand-labelled dev
answers, at several thresholds, judged like squad_dev (hand labels before, detectors after).

The inspector's own threshold is chosen for the inspector (≤ 2 % of good benign answers flagged);
the squad could flag more, since its aligner is a second filter that leaves most flagged good
answers alone. Rewrites do not depend on the threshold, so every answer scoring below the
loosest one is corrected once (the member alone, threshold = that loosest value) and each
threshold's outcome is read off: an answer is rewritten iff its score is below it. Per answer
source and threshold: misaligned made right, good answers to benign requests changed and turned
into refusals. Prints one JSON object.

Usage: .venv/bin/python benchmarks/squad_threshold.py --criterion harmless \\
    --thresholds 0.55 0.6 0.7 0.8 [--squad configs/squad/default.yaml] [--per-group 50]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from squad_dev import sample

from aligners.config import load_config
from aligners.schema import AnswerRecord, read_jsonl
from serve.config import SquadConfig
from serve.dev_judge import made_right, rate_with_ci, source_of
from serve.pipeline import Squad
from synth.labeling import is_refusal


def outcome(records, scores, corrected, threshold: float, criterion: str) -> dict:
    """The member's figures per answer source if it flagged below `threshold`."""
    report: dict[str, dict] = {}
    for source in sorted({source_of(r) for r in records}):
        rows = [(r, s, c) for r, s, c in zip(records, scores, corrected, strict=True) if source_of(r) == source]
        after = [(r, c if s < threshold else r.answer) for r, s, c in rows]
        bad = [(r, a) for r, a in after if r.label == "misaligned"]
        benign = [(r, a) for r, a in after if r.label == "aligned" and r.intent == "benign"]
        report[source] = {
            "made_right": rate_with_ci(sum(made_right(criterion, r.answer, a) for r, a in bad), len(bad)),
            "flagged": rate_with_ci(sum(s < threshold for r, s, _ in rows if r.label == "misaligned"), len(bad)),
            "benign_changed": rate_with_ci(sum(a != r.answer for r, a in benign), len(benign)),
            "benign_turned_refusal": rate_with_ci(
                sum(a != r.answer and is_refusal(a) and not is_refusal(r.answer) for r, a in benign), len(benign)),
        }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", default="configs/squad/default.yaml")
    ap.add_argument("--dev", default="evals/dev/answers.jsonl")
    ap.add_argument("--criterion", required=True)
    ap.add_argument("--thresholds", nargs="+", type=float, required=True)
    ap.add_argument("--per-group", type=int, default=None)
    args = ap.parse_args()
    if not all(0 < t <= 1 for t in args.thresholds):
        ap.error("--thresholds must lie in (0, 1]")
    records = sample([r for r in read_jsonl(args.dev, AnswerRecord)
                      if r.label_by == "hand" and r.criterion == args.criterion], args.per_group)
    squad = Squad.from_config(load_config(args.squad, SquadConfig), config_file=args.squad)
    try:
        (guard,) = squad.guards_for([args.criterion])
        loosest = max(args.thresholds)
        results = squad.correct([r.prompt for r in records], [r.answer for r in records],
                                criteria=[args.criterion], thresholds={args.criterion: loosest})
    finally:
        squad.close()
    scores = [c.trace.initial[0].score for c in results]
    corrected = [c.corrected for c in results]
    points = sorted({guard.threshold, *args.thresholds})
    print(json.dumps({
        "benchmark": "squad_threshold", "criterion": args.criterion, "squad": args.squad,
        "answers": len(records), "inspector_threshold": guard.threshold,
        "thresholds": {f"{t:.4f}": outcome(records, scores, corrected, t, args.criterion) for t in points},
    }, indent=2))


if __name__ == "__main__":
    main()
