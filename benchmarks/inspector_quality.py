"""Inspector quality on the shipped seed sets: held-out test metrics per criterion (one JSON object).

For each criterion: the seed pairs (+ the shared benign pool) are split by topic
(aligners.dataset.split_by_topic, seed 0), an inspector from the recipe is trained on train,
calibrated and thresholded on validation, and evaluated on test. Measured in the same run:

- baselines on test: the naive embed-logreg (one embedding of the whole answer, `answer` features
  only), and TF-IDF (word 1-2 grams of prompt and answer) + logistic regression, no encoder;
- with --grid, a selection grid (answer embedding x features x C) scored by *validation* AUROC
  only — the evidence behind the recipe's defaults; the test split never chooses anything.

Usage: .venv/bin/python benchmarks/inspector_quality.py [--criteria polite no-pii] [--grid]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL = ["prompt", "answer", "product", "absdiff", "sentence_max", "sentence_min"]
GRID = [  # (answer_embedding, features)
    ("whole", ["answer"]),
    ("whole", ["prompt", "answer", "product", "absdiff"]),
    ("whole", ["answer", "sentence_max", "sentence_min"]),
    ("whole", ALL),
    ("sentences", ["prompt", "answer", "product", "absdiff"]),
    ("sentences", ALL),
]
GRID_C = [0.1, 1.0]
REPORTED = ("auroc", "auprc", "f1", "ece", "fpr", "recall", "precision", "threshold")


def tfidf_auroc(train, test) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    def texts(ex):
        return [f"{p} [SEP] {a}" for p, a in zip(ex.prompts, ex.answers, strict=True)]

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    lr = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000)
    lr.fit(vec.fit_transform(texts(train)), train.labels)
    p_aligned = lr.predict_proba(vec.transform(texts(test)))[:, 1]
    return float(roc_auc_score([y == 0 for y in test.labels], 1 - p_aligned))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--criteria", nargs="+", default=["harmless", "no-pii", "polite"])
    ap.add_argument("--config", default=str(ROOT / "configs/inspectors/embed-logreg.yaml"))
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument(
        "--grid", action="store_true", help="Add the features x C validation-AUROC grid."
    )
    args = ap.parse_args()

    from sklearn.base import clone

    from aligners.config import load_config
    from aligners.dataset import load_seed, split_by_topic
    from inspectors.base import build_inspector
    from inspectors.config import INSPECTOR_CONFIG
    from inspectors.data import pairs_to_examples

    start = time.perf_counter()
    cfg = load_config(args.config, INSPECTOR_CONFIG)
    report: dict = {
        "benchmark": "inspector_quality",
        "config": cfg.model_dump(),
        "split_seed": args.split_seed,
        "criteria": {},
        "missing": [],
    }
    for criterion in args.criteria:
        try:
            pairs = load_seed(criterion)
        except FileNotFoundError:
            report["missing"].append(criterion)
            continue
        t0 = time.perf_counter()
        splits = split_by_topic(pairs, seed=args.split_seed)
        train, val, test = (pairs_to_examples(splits[s]) for s in ("train", "validation", "test"))
        est = build_inspector(cfg, criterion=criterion).fit(
            *train.as_tuple(), validation=val.as_tuple()
        )
        test_m = est.evaluate(*test.as_tuple())
        val_m = est.evaluate(*val.as_tuple())
        row: dict = {
            "examples": {
                "train": train.counts(),
                "validation": val.counts(),
                "test": test.counts(),
            },
            "test_topics": sorted({p.topic for p in splits["test"]}),
            "test": {k: test_m[k] for k in REPORTED} | {"confusion": test_m["confusion"]["matrix"]},
            "validation": {"auroc": val_m["auroc"], "recall": val_m["recall"], "fpr": val_m["fpr"]},
            "threshold_why": est.threshold_info_["why"],
            "train_seconds": round(time.perf_counter() - t0, 2),
        }
        baselines = {"tfidf-logreg": tfidf_auroc(train, test)}
        if cfg.type == "embed-logreg":
            naive = clone(est).set_params(features=["answer"], answer_embedding="whole", C=1.0)
            naive.fit(*train.as_tuple(), validation=val.as_tuple())
            baselines["embed-logreg whole-answer only"] = naive.evaluate(*test.as_tuple())["auroc"]
        row["test_auroc_baselines"] = baselines
        if cfg.type == "embed-logreg" and args.grid:
            grid = {}
            for how, feats in GRID:
                for C in GRID_C:
                    g = clone(est).set_params(features=feats, answer_embedding=how, C=C)
                    g.fit(*train.as_tuple(), validation=val.as_tuple())
                    grid[f"{how}: {'+'.join(feats)} C={C}"] = round(
                        g.evaluate(*val.as_tuple())["auroc"], 4
                    )
            row["validation_auroc_grid"] = grid
        report["criteria"][criterion] = row
    report["targets"] = {
        "test_auroc>=0.95": {c: r["test"]["auroc"] >= 0.95 for c, r in report["criteria"].items()}
    }
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
