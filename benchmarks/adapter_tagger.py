"""Would a span tagger that tunes the shared base find jabs or personal data better than the
shipped one, which fits a logistic model on SmolLM2's frozen layer-21 states?

The guard adapter (benchmarks/guard_adapter.py) read SmolLM2's answers better once SmolLM2's
upper layers were tuned; this asks the same of the span tagger. LoRA on the decoder layers from
`--from-layer` up and a linear token head learn each answer token's class (outside or a marked
span's type) from the same examples as `aligners train-tagger` (the marked training answers and
a seeded sample of good ones), with the same folds and seed; the frozen layers' output is kept
per example. Out of fold, on the folds asked for, it reports the figures `train-tagger` reports
(threshold at the recipe's token F-beta), `marked_answers_all_found_none_stray` among them.

Prints one JSON object (also OUT/<criterion>-folds-<folds>.json).

Usage: .venv/bin/python benchmarks/adapter_tagger.py --criterion polite --folds 0 --out benchmarks/adapter_tagger
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

from guard_adapter import ANSWERS

from inspectors.guard_adapter import GuardAdapter, kept_states, train_steps


class TokenAdapter(GuardAdapter):
    """The guard adapter's tuned upper layers with a per-token class head instead of a pooled one."""

    def __init__(self, model: str, depth: int, rank: int, seed: int, n_classes: int):
        import torch

        super().__init__(model, depth, rank, seed)
        self.head = torch.nn.Linear(self.body.config.hidden_size, n_classes)

    def token_logits(self, states: list, starts: list, batch: list) -> list:
        """Class logits of each answer token of the `batch` examples."""
        h = self.upper_states(states, batch)
        return [self.head(h[row, starts[i]: len(states[i])]) for row, i in enumerate(batch)]


def fit_tokens(tagger: TokenAdapter, states, starts, labels, train: list, epochs: int, batch_size: int,
               lr: float, seed: int) -> None:
    """Token cross-entropy, marked classes weighted 3:1 (they are rare)."""
    import torch

    rng = np.random.default_rng(seed)
    plan = [[int(i) for i in b] for _ in range(epochs)
            for b in np.array_split(rng.permutation(train), max(1, len(train) // batch_size))]
    weight = torch.full((tagger.head.out_features,), 3.0)
    weight[0] = 1.0

    def batch_loss(batch: list):
        logits = torch.cat(tagger.token_logits(states, starts, batch))
        y = torch.cat([torch.as_tensor(labels[i][: len(states[i]) - starts[i]]) for i in batch])
        return torch.nn.functional.cross_entropy(logits, y, weight=weight)

    train_steps(tagger, plan, batch_loss, lr, "token adapter")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", default="polite")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", default="0", help="comma-separated folds to hold out (0-based)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--from-layer", type=int, default=20, help="lowest tuned decoder layer (0-based)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from aligners.config import read_yaml, validate
    from aligners.schema import AnswerRecord, SpanAnnotation, WrittenCorrection, read_jsonl
    from inspectors.config import SpanTaggerConfig
    from inspectors.shared_reading import Reading
    from inspectors.span_data import tagger_examples
    from inspectors.spans import (
        SpanTagger,
        answer_offsets,
        choose_span_threshold,
        fold_assignment,
        token_labels,
    )

    torch.set_num_threads(2)
    cfg = validate(SpanTaggerConfig, read_yaml(ROOT / f"configs/taggers/{args.criterion}.yaml"), "tagger recipe")
    ex = tagger_examples(
        args.criterion, list(read_jsonl(ROOT / f"data/spans/{args.criterion}.jsonl", SpanAnnotation)),
        [r for f in ANSWERS for r in read_jsonl(ROOT / f, AnswerRecord)],
        list(read_jsonl(ROOT / f"data/corrections/{args.criterion}.jsonl", WrittenCorrection)),
        max_clean=cfg.max_negative_answers, seed=cfg.random_state)
    classes = ["O", *sorted({t for ss in ex.spans for _, _, t in ss})]
    folds_held = [int(f) for f in args.folds.split(",")]
    tagger = TokenAdapter(args.model, args.from_layer, args.rank, args.seed, len(classes))
    tok = tagger.tok
    offsets = answer_offsets(tok, ex.answers, cfg.max_answer_tokens)
    labels = [token_labels(off, ss, classes) for off, ss in zip(offsets, ex.spans, strict=True)]
    n_folds, fold_of = fold_assignment(labels, cfg.cv_folds, cfg.random_state)

    t0 = time.time()
    states, starts = kept_states(Reading(args.model, (args.from_layer,), cfg.max_prompt_tokens, cfg.max_answer_tokens),
                                 ex.prompts, ex.answers, cfg.batch_tokens, "prefix")
    seconds = {"prefix": round(time.time() - t0), "train_and_predict": 0}
    oof: dict[int, np.ndarray] = {}
    for f in folds_held:
        t0 = time.time()
        fold_tagger = tagger if f == folds_held[0] else TokenAdapter(
            args.model, args.from_layer, args.rank, args.seed, len(classes))
        fit_tokens(fold_tagger, states, starts, labels, [i for i in range(len(states)) if fold_of[i] != f],
                   args.epochs, args.batch_size, args.lr, args.seed)
        fold_tagger.body.eval()
        with torch.no_grad():
            for i in np.flatnonzero(fold_of == f):
                logits = fold_tagger.token_logits(states, starts, [int(i)])[0]
                oof[int(i)] = torch.softmax(logits, -1).numpy()[: len(offsets[i])]
        seconds["train_and_predict"] += round(time.time() - t0)

    idx = sorted(oof)
    threshold, figures = choose_span_threshold([1 - oof[i][:, 0] for i in idx], [labels[i] for i in idx],
                                               cfg.threshold_beta)
    judge = SpanTagger(cfg, args.criterion)
    judge.classes_, judge.threshold_ = classes, threshold
    figures.update(judge.span_figures([ex.answers[i] for i in idx], [offsets[i] for i in idx],
                                      [oof[i] for i in idx], [ex.spans[i] for i in idx]))
    result = {"criterion": args.criterion, "model": args.model, "from_layer": args.from_layer, "rank": args.rank,
              "epochs": args.epochs, "lr": args.lr, "folds_held_out": folds_held, "of_folds": n_folds,
              "answers": len(idx), "threshold": threshold, "out_of_fold": figures, "seconds": seconds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.criterion}-folds-{'_'.join(map(str, folds_held))}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
