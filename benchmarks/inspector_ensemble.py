"""Would two inspectors together route better than either? Judged by the dev set's hand labels.

Reads dev scores that `inspector_generalization.py --scores-out DIR` kept (one arm each, e.g. the
fine-tuned MiniLM cross-encoder), scores the dev set with a saved inspector (e.g. the shipped
starter, `--artifact`; its scores are kept beside the others under `--scores-dir`, so a second run
reads them), and reports each alone and their mean log-odds: the same figures as
inspector_generalization (AUROC per part, recall at the squad's operating point). The mean is
weighted 1:1, chosen before looking; other weights are listed as a sweep on dev, for reference
only, since choosing one there would tune on the evaluation data. Without `--arm` the saved
inspector is judged alone (e.g. the shipped harmless ensemble, which holds both). Prints one
JSON object.

Usage: .venv/bin/python benchmarks/inspector_ensemble.py --criterion harmless \\
    --scores-dir benchmarks/inspector_ensemble --arm "finetuned / real" \\
    --artifact artifacts/inspectors/harmless
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SWEEP = (0.3, 0.7)


def artifact_scores(path: Path, dev: list, out: Path) -> dict:
    """The saved inspector's P(aligned) on the dev answers, kept in `out` (scores-out format)."""
    if out.is_file():
        return json.loads(out.read_text())
    from inspector_generalization import kept_scores

    from inspectors.base import load_inspector

    est = load_inspector(path)
    s = est.predict_proba([r.prompt for r in dev], [r.answer for r in dev])[:, 1]
    kept = kept_scores(dev, [int(r.label == "aligned") for r in dev], {f"artifact:{path}": (s, est.threshold_)})
    out.write_text(json.dumps(kept))
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", required=True)
    ap.add_argument("--scores-dir", type=Path, required=True,
                    help="Folder of <criterion>.json files from inspector_generalization --scores-out.")
    ap.add_argument("--arm", help="Arm in <criterion>.json to combine, e.g. 'finetuned / real' "
                    "(none: judge the saved inspector alone).")
    ap.add_argument("--artifact", type=Path, required=True, help="Saved inspector to combine it with.")
    ap.add_argument("--dev", type=Path, default=ROOT / "evals/dev/answers.jsonl")
    args = ap.parse_args()

    from inspector_generalization import judge

    from aligners.schema import AnswerRecord, read_jsonl
    from inspectors.calibration import log_odds, sigmoid

    dev = [r for r in read_jsonl(args.dev, AnswerRecord)
           if r.label_by == "hand" and r.criterion == args.criterion]
    args.scores_dir.mkdir(parents=True, exist_ok=True)
    art = artifact_scores(args.artifact, dev,
                          args.scores_dir / f"{args.criterion}-{args.artifact.name}-artifact.json")
    if art["ids"] != [r.id for r in dev]:
        raise SystemExit("the kept scores were made on another dev set: run them again")
    labels = np.asarray(art["labels"])
    (art_name, b_kept), = art["arms"].items()
    b = np.asarray(b_kept["scores"])

    def row(s: np.ndarray) -> dict:
        out = judge(s, 0.5, dev, labels)  # no threshold of its own: keep the ranking figures only
        return {k: v for k, v in out.items()
                if k not in ("recall", "fpr", "flag_rate_refusals", "flag_rate_sensitive_benign")}

    report = {"benchmark": "inspector_ensemble", "criterion": args.criterion, "arms": {art_name: row(b)}}
    if args.arm is None:
        print(json.dumps(report))
        return
    kept = json.loads((args.scores_dir / f"{args.criterion}.json").read_text())
    if kept["ids"] != art["ids"]:
        raise SystemExit("the kept scores were made on another dev set: run them again")
    a = np.asarray(kept["arms"][args.arm]["scores"])

    def mixed(w: float) -> dict:
        """The weighted mean of the two log-odds (weight w on the kept arm), judged."""
        return row(sigmoid(w * log_odds(a) + (1 - w) * log_odds(b)))

    report["arms"] = {args.arm: row(a), art_name: row(b), "mean log-odds 1:1": mixed(0.5)}
    report["sweep_on_dev_for_reference"] = {f"weight {w} on {args.arm}": mixed(w) for w in SWEEP}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
