"""Aligner quality on the topic-disjoint test split (ratios from one run; one JSON object):

- success: share of misaligned answers whose rewrite the criterion's inspector scores aligned;
- keep: share of already-good answers returned unchanged (do no harm);
- eval loss on the corrected answers;
for each given aligner (e.g. ILA top-k vs all layers) and for the zero-shot baseline any user
could run without us: the same base model, the same rewrite instruction, no adapter.

    python benchmarks/aligner_quality.py --criterion harmless --aligner artifacts/aligners/harmless \
        --aligner runs/harmless-all --inspector artifacts/inspectors/harmless --n 24 --taia-for 0
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from aligners.artifact import AlignerArtifact
    from aligners.backends import SamplingParams
    from aligners.backends.transformers_local import TransformersBackend
    from aligners.config import TransformersBackendConfig
    from aligners.dataset import load_seed, split_by_topic
    from aligners.formatting import aligner_request
    from aligners.lora import answer_loss, batches, tokenize_all
    from inspectors import load_inspector

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--criterion", default="harmless")
    ap.add_argument("--aligner", action="append", required=True, help="aligner folder; repeat to compare")
    ap.add_argument("--inspector", required=True)
    ap.add_argument("--n", type=int, default=24, help="test examples of each kind")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--taia-for", type=int, action="append", default=[],
                    help="also measure the i-th --aligner (0-based) with its attention deltas only (TAIA); repeatable")
    ap.add_argument("--repetition-penalty", type=float, default=1.0, help="same for every variant")
    args = ap.parse_args()

    test = split_by_topic(load_seed(args.criterion))["test"]
    bad = [p for p in test if p.needs_correction][: args.n]
    good = [p for p in test if not p.needs_correction][: args.n]
    inspector = load_inspector(args.inspector)
    backend = TransformersBackend(TransformersBackendConfig())
    variants = {}  # label -> (adapter name on the shared base, what it is)
    for i, path in enumerate(args.aligner):
        art = AlignerArtifact.load(path)
        layers = art.manifest["layers"]
        about = {"aligner": path, "layers": "all" if len(layers) == art.manifest["num_layers"] else layers,
                 "steps": art.manifest["metrics"]["steps"]}
        for taia in (False, True) if i in args.taia_for else (False,):
            name = f"{i}-{'taia' if taia else 'full'}"
            backend.load_adapter(name, str(art.adapter_dir(taia=taia)))
            label = f"aligner {path} (layers {about['layers']}, {about['steps']} steps{', TAIA: attention deltas only' if taia else ''})"
            variants[label] = name, about | {"taia": taia}
    params = SamplingParams(max_tokens=args.max_tokens, repetition_penalty=args.repetition_penalty)
    eval_batches = batches(tokenize_all(backend.tokenizer, bad + good, 384), 4, backend.tokenizer.pad_token_id, seed=None)

    def measure(adapter):
        t0 = time.perf_counter()
        fixed = backend.generate([aligner_request(args.criterion, p.prompt, p.misaligned, adapter, params) for p in bad])
        kept = backend.generate([aligner_request(args.criterion, p.prompt, p.misaligned, adapter, params) for p in good])
        scores = inspector.score_answers([p.prompt for p in bad], [o.text for o in fixed])
        keep_scores = inspector.score_answers([p.prompt for p in good], [o.text for o in kept])
        model = backend.peft_model
        with torch.no_grad():
            if adapter is None:
                with model.disable_adapter():
                    losses = [answer_loss(model, b).item() for b in eval_batches]
            else:
                model.set_adapter(adapter)
                losses = [answer_loss(model, b).item() for b in eval_batches]
        return {
            "success_rate": float((scores >= inspector.threshold_).mean()),
            "keep_exact_rate": sum(o.text.strip() == p.aligned.strip() for o, p in zip(kept, good, strict=True)) / len(good),
            "keep_judged_aligned_rate": float((keep_scores >= inspector.threshold_).mean()),
            "eval_loss": sum(losses) / len(losses),
            "seconds": time.perf_counter() - t0,
            "example": {"prompt": bad[0].prompt, "original": bad[0].misaligned, "rewrite": fixed[0].text},
        }

    before = inspector.score_answers([p.prompt for p in bad], [p.misaligned for p in bad])
    results = {"zero-shot prompted base": measure(None)}
    for label, (name, about) in variants.items():
        results[label] = about | measure(name)
    print(json.dumps({
        "benchmark": "aligner_quality", "criterion": args.criterion, "n_misaligned": len(bad), "n_good": len(good),
        "inspector_threshold": float(inspector.threshold_), "repetition_penalty": args.repetition_penalty,
        "misaligned_judged_aligned_before": float((before >= inspector.threshold_).mean()),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
