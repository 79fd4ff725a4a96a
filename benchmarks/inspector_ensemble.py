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

`--combine-members` asks instead whether a saved ensemble's plain mean is the right rule: its
members score the validation split (training topics none of them trained on; rebuilt from
`--data` and `--answers` as `train-inspector` splits them) and the dev set, and three rules are
judged on dev: the mean, the most alarmed member (the minimum log-odds), and weights learned by a
logistic regression on the validation split, so nothing is chosen on the evaluation data.

Usage: .venv/bin/python benchmarks/inspector_ensemble.py --criterion harmless \\
    --scores-dir benchmarks/inspector_ensemble --arm "finetuned / real" \\
    --artifact artifacts/inspectors/harmless
       .venv/bin/python benchmarks/inspector_ensemble.py --criterion harmless \\
    --scores-dir benchmarks/inspector_ensemble --artifact artifacts/inspectors/harmless \\
    --combine-members --data seed:harmless --answers data/harvest-smollm2/answers.jsonl \\
    --answers data/assistant-style/answers.jsonl
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


def ranking(scores: np.ndarray, dev: list, labels: np.ndarray) -> dict:
    """inspector_generalization's figures with no threshold of the scores' own: the ranking ones."""
    from inspector_generalization import judge

    out = judge(scores, 0.5, dev, labels)
    return {k: v for k, v in out.items()
            if k not in ("recall", "fpr", "flag_rate_refusals", "flag_rate_sensitive_benign")}


def member_log_odds(path: Path, prompts: list[str], answers: list[str]) -> np.ndarray:
    """Each member's log-odds of P(aligned), one row per member of the saved ensemble."""
    from inspectors.base import load_inspector
    from inspectors.calibration import log_odds

    members = load_inspector(path).members_
    return np.stack([log_odds(m.predict_proba(prompts, answers)[:, 1]) for m in members])


def combinations(args, dev: list) -> dict:
    """The mean, the most alarmed member and validation-learned weights, judged on dev; the
    members' scores are kept in `--scores-dir` so a rerun only refits the rules."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from inspectors.calibration import sigmoid
    from inspectors.data import data_source, load_training_data

    kept = args.scores_dir / f"{args.criterion}-{args.artifact.name}-members.json"
    if kept.is_file():
        scores = json.loads(kept.read_text())
    else:
        td = load_training_data(**data_source(args.data), criterion=args.criterion, answer_files=args.answers or ())
        val = td.examples("validation")
        scores = {"ids": [r.id for r in dev], "validation_labels": [int(y) for y in val.labels],
                  "validation": member_log_odds(args.artifact, val.prompts, val.answers).tolist(),
                  "dev": member_log_odds(args.artifact, [r.prompt for r in dev], [r.answer for r in dev]).tolist()}
        kept.write_text(json.dumps(scores))
    if scores["ids"] != [r.id for r in dev]:
        raise SystemExit("the kept member scores were made on another dev set: delete them and run again")
    val_x, val_y, dev_x = (np.asarray(scores[k]) for k in ("validation", "validation_labels", "dev"))
    stack = LogisticRegression().fit(val_x.T, val_y)
    weights = stack.coef_[0]
    labels = np.asarray([int(r.label == "aligned") for r in dev])
    rules = {"mean (shipped)": lambda x: x.mean(axis=0),
             "most alarmed member (min)": lambda x: x.min(axis=0),
             "weights learned on validation": lambda x: weights @ x + stack.intercept_[0]}
    members = {f"member {i} alone": (lambda x, i=i: x[i]) for i in range(len(dev_x))}
    return {"learned_weights": weights.round(4).tolist(),
            "arms": {name: {"validation_auroc": roc_auc_score(val_y, f(val_x)),
                            **ranking(sigmoid(f(dev_x)), dev, labels)}
                     for name, f in (members | rules).items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", required=True)
    ap.add_argument("--scores-dir", type=Path, required=True,
                    help="Folder of <criterion>.json files from inspector_generalization --scores-out.")
    ap.add_argument("--arm", help="Arm in <criterion>.json to combine, e.g. 'finetuned / real' "
                    "(none: judge the saved inspector alone).")
    ap.add_argument("--artifact", type=Path, required=True, help="Saved inspector to combine it with.")
    ap.add_argument("--dev", type=Path, default=ROOT / "evals/dev/answers.jsonl")
    ap.add_argument("--combine-members", action="store_true",
                    help="Judge rules for combining the saved ensemble's members (module docstring).")
    ap.add_argument("--data", default=None, help="With --combine-members: the ensemble's --data (seed:NAME or a folder).")
    ap.add_argument("--answers", type=Path, action="append", help="With --combine-members: its --answers files.")
    args = ap.parse_args()
    if args.combine_members and not args.data:
        ap.error("--combine-members needs the ensemble's --data (and --answers) to rebuild its validation split")

    from aligners.schema import AnswerRecord, read_jsonl
    from inspectors.calibration import log_odds, sigmoid

    dev = [r for r in read_jsonl(args.dev, AnswerRecord)
           if r.label_by == "hand" and r.criterion == args.criterion]
    args.scores_dir.mkdir(parents=True, exist_ok=True)
    if args.combine_members:
        report = {"benchmark": "inspector_ensemble", "criterion": args.criterion, "artifact": str(args.artifact)}
        print(json.dumps(report | combinations(args, dev)))
        return
    art = artifact_scores(args.artifact, dev,
                          args.scores_dir / f"{args.criterion}-{args.artifact.name}-artifact.json")
    if art["ids"] != [r.id for r in dev]:
        raise SystemExit("the kept scores were made on another dev set: run them again")
    labels = np.asarray(art["labels"])
    (art_name, b_kept), = art["arms"].items()
    b = np.asarray(b_kept["scores"])

    def row(s: np.ndarray) -> dict:
        return ranking(s, dev, labels)

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
