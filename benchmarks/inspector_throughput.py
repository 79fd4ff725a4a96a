"""Inspector scoring throughput on CPU (one JSON object).

Scores N unique (prompt, answer) pairs with ~100-token answers at batch 64 through the public
paths — `Inspector.score_answers` (Python API) and `score_jsonl` (what `aligners inspect` runs,
JSON parsing and writing included) — plus the cheaper whole-answer feature set (no sentence
blocks) and optionally bfloat16; as the baseline measured in the same run, the bare
sentence encoder embedding the same answers once (`SentenceTransformer.encode`, batch 64), the
floor cost of any MiniLM-based inspector. Every sentence of every answer is unique and the
embedding cache is cleared before every timed run, so nothing is served from memory.

Usage: .venv/bin/python benchmarks/inspector_throughput.py [--n 512] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCES = [
    "Start by checking the settings menu and make sure the option called {w} is turned on.",
    "Most people find that {n} minutes a day is enough to see steady progress within a month.",
    "If that does not work, restart the device and try the same steps again from the beginning.",
    "A good rule of thumb is to keep the temperature around {n} degrees while it rests.",
    "You can also ask a colleague or a friend who has done this before for a second opinion.",
    "The main difference between the two is that the {w} version is cheaper but less durable.",
    "Write down what you changed at each step so you can undo it later if something breaks.",
    "In most countries the rules are similar, but check the official website for {w} details.",
    "Keep the receipts, because you may need them if you decide to return the {w} within {n} days.",
    "Avoid doing this late in the evening, since it tends to make it harder to fall asleep.",
    "Practice the hardest part slowly at first, then speed up once it feels comfortable.",
    "For a quick fix, a little vinegar and warm water usually removes most of the stain.",
]
WORDS = [
    "advanced",
    "basic",
    "wireless",
    "seasonal",
    "regional",
    "premium",
    "standard",
    "portable",
    "classic",
]
PROMPTS = [
    "How do I fix this problem with my {w} setup?",
    "What's the best way to get started with this?",
    "Any tips for doing this more efficiently?",
    "Can you explain how this works in simple terms?",
]


def make_records(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    prompts, answers = [], []
    for i in range(n):
        fill = {"w": rng.choice(WORDS), "n": rng.randint(2, 90)}
        prompts.append(rng.choice(PROMPTS).format(**fill) + f" (case {i})")
        # every sentence unique (a per-sentence number), so no embedding is ever reused
        parts = [
            s.format(w=rng.choice(WORDS), n=rng.randint(2, 90))[:-1] + f" (note {i * 10 + k})."
            for k, s in enumerate(rng.sample(SENTENCES, 5))
        ]
        answers.append(" ".join(parts))
    return prompts, answers


def timed(fn, repeats: int) -> float:
    """Best of `repeats` wall times (seconds), clearing the embedding cache before each."""
    from inspectors.embed_logreg import clear_embedding_cache

    best = float("inf")
    for _ in range(repeats):
        clear_embedding_cache()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=512, help="Answers scored per timed run.")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="Also time dtype=bfloat16.")
    args = ap.parse_args()

    import torch
    from sklearn.base import clone

    from inspectors.embed_logreg import EmbedLogRegInspector, get_encoder
    from inspectors.scoring import score_jsonl

    prompts, answers = make_records(args.n)
    encoder = get_encoder("minilm-l6")
    tokens = [len(encoder.tokenizer(a)["input_ids"]) for a in answers]
    # Any fitted weights score at the same speed: fit on a few labelled records of the same kind.
    fit_p, fit_a = make_records(64, seed=1)
    base = EmbedLogRegInspector(criterion="bench").fit(fit_p, fit_a, [i % 2 for i in range(64)])

    def api(est):
        return lambda: est.score_answers(prompts, answers, batch_size=args.batch_size)

    report: dict = {
        "benchmark": "inspector_throughput",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "n_answers": args.n,
        "batch_size": args.batch_size,
        "answer_tokens_mean": round(sum(tokens) / len(tokens), 1),
        "features": list(base.features),
    }
    enc_s = timed(
        lambda: encoder.encode(answers, batch_size=args.batch_size, normalize_embeddings=True),
        args.repeats,
    )
    report["baseline_encoder_only_answers_per_s"] = round(args.n / enc_s, 1)
    api_s = timed(api(base), args.repeats)
    report["embed_logreg_answers_per_s"] = round(args.n / api_s, 1)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "answers.jsonl"
        src.write_text(
            "".join(
                json.dumps({"prompt": p, "response": a}) + "\n"
                for p, a in zip(prompts, answers, strict=True)
            )
        )
        cli_s = timed(
            lambda: score_jsonl(
                base, src, Path(tmp) / "scores.jsonl", args.batch_size, progress=False
            ),
            args.repeats,
        )
    report["score_jsonl_answers_per_s"] = round(args.n / cli_s, 1)
    report["ratio_inspector_to_encoder_only"] = round(enc_s / api_s, 3)
    whole = clone(base).set_params(
        answer_embedding="whole", features=["prompt", "answer", "product", "absdiff"]
    )
    whole.fit(fit_p, fit_a, [i % 2 for i in range(64)])
    report["embed_logreg_whole_answer_features_answers_per_s"] = round(
        args.n / timed(api(whole), args.repeats), 1
    )
    if args.bf16:
        bf16 = (
            clone(base).set_params(dtype="bfloat16").fit(fit_p, fit_a, [i % 2 for i in range(64)])
        )
        report["embed_logreg_bf16_answers_per_s"] = round(
            args.n / timed(api(bf16), args.repeats), 1
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
