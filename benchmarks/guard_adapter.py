"""Would a guard adapter on the shared base read SmolLM2's answers better than the frozen probe?

IBM and NVIDIA ship their guards as adapters on a shared base. This experiment trains the model of
the `guard-adapter` inspector (inspectors/guard_adapter.py) for a criterion on the same examples
as the starter inspector (`train-inspector --data seed:NAME --answers ...`: seed pairs plus the
labelled real answers, dev topics never train), without its calibration: LoRA on
SmolLM2's decoder layers from `--from-layer` up, plus a linear head on the final hidden states
pooled over the answer tokens (mean and max), trained with class-balanced log loss. The layers
below are frozen, so their output is computed once per example and kept (the frozen-prefix idea
of aligners/prefix_cache.py, here in memory as float16): a 2-core machine can then afford an
epoch. The dev set's hand labels judge it, as benchmarks/inspector_generalization.py does, and
its dev scores are kept in that script's `--scores-out` format, so benchmarks/inspector_ensemble.py
can combine it with the shipped inspector.

Prints one JSON object (also written to OUT/result.json); OUT/<criterion>.json keeps the dev
scores, and a second run with the same OUT reuses them instead of training again (an hour on 2
cores). `--members` judges saved inspectors beside it and the mean of their log-odds with and
without it. It measured whether the idea was worth an inspector type; the shipped member is
trained by `aligners train-inspector` (configs/inspectors/guard-adapter.yaml).

Usage: .venv/bin/python benchmarks/guard_adapter.py --criterion harmless --out runs/guard-adapter \\
    --members artifacts/inspectors/harmless/members/0 artifacts/inspectors/harmless/members/1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ANSWERS = ("data/harvest-smollm2/answers.jsonl", "data/assistant-style/answers.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", default="harmless")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the shared base (registry name or path)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--from-layer", type=int, default=20, help="lowest tuned decoder layer (0-based)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--max-prompt", type=int, default=256)
    ap.add_argument("--max-answer", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--limit", type=int, help="this many examples of each split only (a timing try)")
    ap.add_argument("--dev", type=Path, default=ROOT / "evals/dev/answers.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members", type=Path, nargs="*", default=[],
                    help="saved inspectors of the criterion to judge beside it and to average it with "
                    "(e.g. the shipped ensemble's members, artifacts/inspectors/harmless/members/*)")
    args = ap.parse_args()

    import torch
    from inspector_generalization import kept_scores

    from aligners.schema import AnswerRecord, read_jsonl
    from inspectors.data import load_training_data

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "log.txt").open("a")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
        print(msg, file=log_file, flush=True)

    data = load_training_data(seed_set=args.criterion, criterion=args.criterion,
                              answer_files=[ROOT / f for f in ANSWERS])
    train, val = data.examples("train"), data.examples("validation")
    dev = [r for r in read_jsonl(args.dev, AnswerRecord)
           if r.criterion == args.criterion and r.label_by == "hand"]
    if args.limit:  # a random share of every split
        rng = np.random.default_rng(args.seed)
        for ex in (train, val):
            keep = rng.permutation(len(ex))[: args.limit]
            ex.prompts, ex.answers, ex.labels, ex.intents = (
                [xs[i] for i in keep] for xs in (ex.prompts, ex.answers, ex.labels, ex.intents))
        dev = [dev[i] for i in rng.permutation(len(dev))[: args.limit]]
    dev_labels = np.array([int(r.label == "aligned") for r in dev])
    log(f"train {train.counts()} validation {val.counts()} dev {len(dev)}")

    scores_file, result_file = args.out / f"{args.criterion}.json", args.out / "result.json"
    if scores_file.is_file() and result_file.is_file():  # trained before: an hour on 2 cores
        log(f"reusing {result_file} and {scores_file}")
        result = json.loads(result_file.read_text())
        kept_dev = json.loads(scores_file.read_text())
        if kept_dev["ids"] != [r.id for r in dev]:
            raise SystemExit(f"{scores_file} scored other dev answers; remove it to train again")
        dev_scores = np.array(next(iter(kept_dev["arms"].values()))["scores"])
    else:
        result, dev_scores = train_and_score(args, train, val, dev, dev_labels, log)
        arm = f"guard-adapter L{args.from_layer} r{args.rank}"
        scores_file.write_text(json.dumps(kept_scores(dev, dev_labels, {arm: (dev_scores, 0.5)})))
    if args.members:
        result["with_members"] = beside_members(dev_scores, args.members, dev, dev_labels)
    result_file.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def train_and_score(args, train, val, dev, dev_labels, log) -> tuple[dict, np.ndarray]:
    """Keep the prefix states, fit the adapter, score validation and dev: (result, dev scores)."""
    from inspector_generalization import judge

    from inspectors.calibration import sigmoid
    from inspectors.guard_adapter import GuardAdapter, fit_guard, kept_states
    from inspectors.metrics import evaluate
    from inspectors.shared_reading import Reading

    guard = GuardAdapter(args.model, args.from_layer, args.rank, args.seed)
    reading = Reading(args.model, (args.from_layer,), args.max_prompt, args.max_answer)
    kept = {}
    t0 = time.time()
    for name, prompts, answers in (("train", train.prompts, train.answers), ("validation", val.prompts, val.answers),
                                   ("dev", [r.prompt for r in dev], [r.answer for r in dev])):
        kept[name] = kept_states(reading, prompts, answers, args.batch_tokens, f"prefix {name}")
    prefix_s = time.time() - t0
    log(f"prefix states in {prefix_s:.0f}s")

    t0 = time.time()
    loss = fit_guard(guard, *kept["train"], train.labels, args.epochs, args.batch_size, args.lr, args.seed,
                     "guard adapter")
    train_s = time.time() - t0
    log(f"trained in {train_s:.0f}s, final loss {loss:.4f}")

    t0 = time.time()
    val_scores, dev_scores = (sigmoid(-guard.misaligned_logits(*kept[name], args.batch_tokens))
                              for name in ("validation", "dev"))
    score_s = time.time() - t0
    val_auroc = evaluate(np.array(val.labels), val_scores, 0.5)["auroc"]
    # the threshold only matters for the figures judge() prints at it; the operating points it
    # reports (recall at 5 % and at the squad's 2 %) are threshold-free
    return {
        "criterion": args.criterion, "model": args.model, "from_layer": args.from_layer, "rank": args.rank,
        "epochs": args.epochs, "lr": args.lr, "train_examples": len(train),
        "validation_auroc": round(val_auroc, 4),
        "dev": judge(dev_scores, 0.5, dev, dev_labels),
        "seconds": {"prefix": round(prefix_s), "train": round(train_s), "score": round(score_s)},
    }, dev_scores


def beside_members(guard_scores: np.ndarray, members: list[Path], dev, dev_labels) -> dict:
    """Each saved inspector alone on dev, the members' mean log-odds (what an ensemble of them
    ranks by), and the same mean with the guard adapter added: weights 1:1, chosen before looking."""
    from inspector_generalization import judge

    from inspectors.base import load_inspector
    from inspectors.calibration import log_odds, sigmoid

    scores = {str(m): log_odds(load_inspector(m).predict_proba([r.prompt for r in dev], [r.answer for r in dev])[:, 1])
              for m in members}
    arms = {**scores, "members (mean log-odds)": np.mean(list(scores.values()), axis=0),
            "members + guard adapter (mean log-odds)": np.mean([*scores.values(), log_odds(guard_scores)], axis=0)}
    return {name: judge(sigmoid(lo), 0.5, dev, dev_labels) for name, lo in arms.items()}


if __name__ == "__main__":
    main()
