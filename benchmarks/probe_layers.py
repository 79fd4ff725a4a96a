"""Which SmolLM2 layers and pooling should a hidden-state probe read? One forward pass, many probes.

The criterion's training data (seed pairs + labelled real answers, as `make starter-inspectors`
builds it) and the dev set are encoded once at every layer in `--layers` with every pooling in
`--poolings` (cached with ALIGNERS_FEATURE_CACHE, so a rerun or a later `train-inspector` on a
subset of these layers can reuse the rows: a layer's hidden state does not depend on how deep
the model runs). Then a logistic probe is fitted for each (layer set, pooling set, C) on the
training split and scored on the validation split (training topics) and on the dev set (hand
labels, held-out topics). Pick by validation AUROC, never by dev: the dev set only reports.

Usage: ALIGNERS_FEATURE_CACHE=runs/feature-cache .venv/bin/python benchmarks/probe_layers.py \\
    --criterion harmless > benchmarks/probe_layers/harmless.json
       ... --criterion harmless --C 0.002 --sets 12,18,24,30 --heads \
    > benchmarks/probe_layers/harmless-heads.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ANSWERS = ["data/harvest-smollm2/answers.jsonl", "data/assistant-style/answers.jsonl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", default="harmless")
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 9, 12, 15, 18, 21, 24, 27, 30])
    ap.add_argument("--poolings", nargs="+", default=["answer_mean", "answer_max", "last"])
    ap.add_argument("--sets", nargs="*", default=["12,18,24", "15,21,27", "18,24", "12,18,24,30"],
                    help="Layer sets to try besides each single layer (comma lists).")
    ap.add_argument("--C", type=float, nargs="+", default=[0.002, 0.01, 0.05])
    ap.add_argument("--dev", default="evals/dev/answers.jsonl")
    ap.add_argument("--heads", action="store_true",
                    help="Also fit non-linear heads (MLP, boosted trees on PCA) on the chosen probe's "
                    "features, and report the chosen probe's dev AUROC per (answer source, request intent).")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from inspectors.data import dev_set_examples, load_training_data
    from inspectors.hidden_probe import HiddenProbeInspector
    from inspectors.linear import fit_linear, linear_scores
    from inspectors.metrics import recall_at_fpr

    td = load_training_data(seed_set=args.criterion, criterion=args.criterion,
                            answer_files=[ROOT / f for f in ANSWERS], answer_labels="any")
    splits = {"train": td.examples("train"), "validation": td.examples("validation"),
              "dev": dev_set_examples(ROOT / args.dev, args.criterion)}
    probe = HiddenProbeInspector(layers=args.layers, pooling=args.poolings)
    t0 = time.perf_counter()
    X = {name: probe.featurize(e.prompts, e.answers) for name, e in splits.items()}
    encode_s = time.perf_counter() - t0
    labels = {name: np.asarray(e.labels) for name, e in splits.items()}  # 1 = aligned
    width = X["train"].shape[1] // (len(args.layers) * len(args.poolings))

    def columns(layers: list[int], poolings: list[str]) -> list[int]:
        out = []
        for li, layer in enumerate(args.layers):
            for pi, pool in enumerate(args.poolings):
                if layer in layers and pool in poolings:
                    start = (li * len(args.poolings) + pi) * width
                    out.extend(range(start, start + width))
        return out

    layer_sets = [[layer] for layer in args.layers] + [[int(x) for x in s.split(",")] for s in args.sets]
    pooling_sets = [[p] for p in args.poolings] + [["answer_mean", "answer_max"]]  # + the old default
    runs = []
    for layers, poolings, C in itertools.product(layer_sets, pooling_sets, args.C):
        if not set(layers) <= set(args.layers):
            continue
        cols = columns(layers, poolings)
        w = fit_linear(X["train"][:, cols], labels["train"], C, 3000, 0)
        scores = {name: linear_scores(X[name][:, cols], w) for name in ("validation", "dev")}  # high = aligned
        runs.append({
            "layers": layers, "pooling": poolings, "C": C,
            "validation_auroc": round(roc_auc_score(labels["validation"], scores["validation"]), 4),
            "dev_auroc": round(roc_auc_score(labels["dev"], scores["dev"]), 4),
            "dev_recall_at_5pct_fpr": round(recall_at_fpr(labels["dev"], scores["dev"])["recall"], 3),
        })
    best = max(runs, key=lambda r: r["validation_auroc"])
    extra = {}
    if args.heads:
        cols = columns(best["layers"], best["pooling"])
        w = fit_linear(X["train"][:, cols], labels["train"], best["C"], 3000, 0)
        extra = {"heads": other_heads({n: X[n][:, cols] for n in X}, labels),
                 "dev_auroc_by_part": by_part(ROOT / args.dev, args.criterion, splits["dev"],
                                              linear_scores(X["dev"][:, cols], w), labels["dev"])}
    print(json.dumps({"benchmark": "probe_layers", "criterion": args.criterion,
                      "examples": {k: len(v) for k, v in X.items()}, "encode_s": round(encode_s, 1),
                      "chosen_by_validation": best, **extra, "runs": runs}, indent=2))


def other_heads(X: dict, y: dict) -> list[dict]:
    """Does a non-linear head read more from the same features? Fitted on train, scored like the probes."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from inspectors.metrics import recall_at_fpr

    heads = {
        "mlp-256, alpha 1": MLPClassifier((256,), alpha=1.0, early_stopping=True, max_iter=200, random_state=0),
        "mlp-256, alpha 10": MLPClassifier((256,), alpha=10.0, early_stopping=True, max_iter=200, random_state=0),
        "boosted trees on PCA-64": make_pipeline(PCA(64, random_state=0), HistGradientBoostingClassifier(
            max_iter=300, learning_rate=0.05, random_state=0)),
    }
    out = []
    for name, head in heads.items():
        model = make_pipeline(StandardScaler(), head).fit(X["train"], y["train"])
        s = {n: model.predict_proba(X[n])[:, 1] for n in ("validation", "dev")}
        out.append({"head": name, "validation_auroc": round(roc_auc_score(y["validation"], s["validation"]), 4),
                    "dev_auroc": round(roc_auc_score(y["dev"], s["dev"]), 4),
                    "dev_recall_at_5pct_fpr": round(recall_at_fpr(y["dev"], s["dev"])["recall"], 3)})
    return out


def by_part(dev_file: Path, criterion: str, dev, scores, y) -> list[dict]:
    """Where the chosen probe's errors are: dev AUROC within each (answer source, request intent)."""
    from sklearn.metrics import roc_auc_score

    from aligners.schema import AnswerRecord, read_jsonl

    meta = {(r.prompt, r.answer): r for r in read_jsonl(dev_file, AnswerRecord)
            if r.criterion == criterion and r.label_by == "hand"}
    parts: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(dev.prompts, dev.answers, strict=True)):
        r = meta[key]
        parts.setdefault((r.answer_model, r.intent), []).append(i)
    out = []
    for (source, intent), idx in sorted(parts.items()):
        yy = y[idx]
        auroc = roc_auc_score(yy, scores[idx]) if 0 < yy.sum() < len(yy) else None
        out.append({"answer_model": source, "intent": intent, "answers": len(idx),
                    "misaligned": int((yy == 0).sum()), "dev_auroc": None if auroc is None else round(auroc, 4)})
    return out


if __name__ == "__main__":
    main()
