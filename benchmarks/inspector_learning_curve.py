"""Would labelling more real answers help an inspector? Its dev figures against how many it learns from.

Hand labels cost a person's time, one answer at a time; before asking for more, this measures
whether the ones we have still pay. The inspector recipe (`--config`) is trained as its starter is
(seed pairs + `--answers`, dev topics excluded, calibrated on the full validation split) on
fractions of the training split's hand-labelled answers of one model (`--model`, default
SmolLM2's), every other training example kept. Fractions are drawn by topic (a prompt and all its
answers go together) from a hash of the topic and `--salt`, so each fraction holds the smaller
ones of the same salt; another salt draws other topics (the spread between draws is the noise).
Judged by the dev set's hand labels, as `inspector_generalization.py` judges (AUROC per part,
over the labels nobody doubted, recall at the squad's point). With `ALIGNERS_FEATURE_CACHE` set,
a feature-based recipe encodes each answer once, so every fraction after the first takes
seconds. Prints one JSON object.

Usage: ALIGNERS_FEATURE_CACHE=runs/feature-cache .venv/bin/python benchmarks/inspector_learning_curve.py \\
    --criterion harmless --config configs/inspectors/hidden-probe-deep-risky.yaml \\
    --answers data/harvest-smollm2/answers.jsonl --answers data/assistant-style/answers.jsonl \\
    --fractions 0 0.1 0.25 0.5 1 --salt "" --salt a --salt b
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def draw(topic: str, salt: str) -> float:
    """A topic's place in [0, 1) for one salt: a fraction f keeps the topics placed below f."""
    return int(hashlib.sha256(f"{salt}{topic}".encode()).hexdigest()[:8], 16) / 16**8


def topic_of(record) -> str:
    """The prompt an answer was given to (the id before the variant: `<prompt id>:<variant>`)."""
    return record.id.split(":")[0]


def plot(report: dict, path: Path) -> None:
    """Dev AUROC (all answers, SmolLM2's, the sure labels) against the hand-labelled answers kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    runs = sorted(report["runs"], key=lambda r: r["hand_labelled_answers"])
    for key, name in (("auroc", "dev, all"), ("auroc_smollm2", "dev, SmolLM2's answers"),
                      ("auroc_sure_labels", "dev, labels nobody doubted")):
        ax.plot([r["hand_labelled_answers"] for r in runs], [r[key] for r in runs], "o-", label=name, alpha=0.8)
    ax.set_xlabel(f"hand-labelled training answers kept ({report['thinned'].split(' of ')[-1]})")
    ax.set_ylabel("AUROC")
    ax.set_title(f"{report['criterion']}: {Path(report['config']).stem}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", required=True)
    ap.add_argument("--config", type=Path, required=True, help="Inspector recipe (YAML).")
    ap.add_argument("--data", default=None, help="Seed set or synth folder (default: seed:<criterion>).")
    ap.add_argument("--answers", type=Path, action="append", required=True, help="Labelled answer files.")
    ap.add_argument("--dev", type=Path, default=ROOT / "evals/dev/answers.jsonl")
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="Whose hand-labelled answers are thinned (`answer_model`).")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--salt", action="append", help="One draw of topics per salt (default: one, '').")
    ap.add_argument("--out", type=Path, help="Also write the JSON here, and its plot beside it (.png).")
    args = ap.parse_args()
    if any(not 0 <= f <= 1 for f in args.fractions):
        ap.error("fractions lie in [0, 1]")

    from inspector_generalization import judge

    from aligners.config import read_yaml, validate
    from aligners.schema import AnswerRecord, read_jsonl
    from inspectors.base import build_inspector
    from inspectors.config import INSPECTOR_CONFIG
    from inspectors.data import data_source, load_training_data

    td = load_training_data(**data_source(args.data or f"seed:{args.criterion}"),
                            criterion=args.criterion, answer_files=args.answers)
    cfg = validate(INSPECTOR_CONFIG, read_yaml(args.config), str(args.config))
    dev = [r for r in read_jsonl(args.dev, AnswerRecord) if r.label_by == "hand" and r.criterion == args.criterion]
    labels = np.asarray([int(r.label == "aligned") for r in dev])
    val = td.examples("validation")

    def thinned(record) -> bool:
        return record.label_by == "hand" and record.answer_model == args.model

    runs = []
    salts = args.salt or [""]
    for salt in salts:
        for fraction in args.fractions:
            if salt != salts[0] and fraction in (0, 1):
                continue  # none or all of the topics: every salt draws the same set
            kept = [r for r in td.answers["train"] if not thinned(r) or draw(topic_of(r), salt) < fraction]
            train = dataclasses.replace(td, answers={**td.answers, "train": kept}).examples("train")
            est = build_inspector(cfg, criterion=args.criterion)
            est.fit(train.prompts, train.answers, train.labels, validation=val.as_tuple(), intents=train.intents)
            scores = est.predict_proba([r.prompt for r in dev], [r.answer for r in dev])[:, 1]
            figures = judge(scores, est.threshold_, dev, labels)
            runs.append({"salt": salt, "fraction": fraction, "hand_labelled_answers": sum(map(thinned, kept)),
                         "validation_auroc": est.evaluate(*val.as_tuple())["auroc"],
                         **{k: figures[k] for k in ("auroc", "auroc_smollm2", "auroc_assistant-style",
                                                    "auroc_sure_labels", "at_5pct_fpr", "at_2pct_benign_flagged")
                            if k in figures}})
            print(json.dumps({k: runs[-1][k] for k in ("salt", "fraction", "hand_labelled_answers", "auroc")}),
                  file=sys.stderr, flush=True)
    report = {"benchmark": "inspector_learning_curve", "criterion": args.criterion, "config": str(args.config),
              "thinned": f"hand-labelled training answers of {args.model}", "runs": runs}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        plot(report, args.out.with_suffix(".png"))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
