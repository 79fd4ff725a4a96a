"""Prompt-file harvest: a real base model's answers to a prompt file, under several variants.

Each prompt is answered under the first of `cfg.harvest_variants` plus `variants_per_prompt - 1`
others chosen by rotation from a hash of the prompt id, so the answers mix greedy and sampled
decoding, with and without system prompts, without answering every prompt every way. Requests
go through the same cached `GenerationRunner` as the teacher pipeline: a killed harvest resumes
with `--resume` without re-generating anything. Dev-split prompts are answered first (the
hand-labelled dev set needs them), then one variant round at a time, so a harvest stopped early
still covers every prompt once.

Output (`answers.jsonl`) holds AnswerRecord lines labelled by the documented rule
(synth/labeling.py), `label_by` naming the rule's version, except where `hand-labels.jsonl` in
the same folder holds a person's label for that answer id (`label_by: "hand"`): rebuilding the
answers from the cache keeps every hand label, and stats.json reports how often the rule
disagrees with them. (The dev set's hand labels live in evals/dev.)
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from aligners.backends.base import GenerationRequest, SamplingParams
from aligners.schema import AnswerRecord, HandLabel, PromptRecord, write_jsonl
from synth.cache import GenerationCache, request_key
from synth.config import HarvestVariant, SynthConfig
from synth.labeling import label_answer, read_hand_labels, rule_vs_hand, with_hand_labels
from synth.pipeline import (
    CACHE_FILE,
    GenerationRunner,
    Model,
    RunLog,
    SynthAborted,
    derived_seed,
    write_json_lines,
)

ANSWERS_FILE = "answers.jsonl"
HAND_LABELS_FILE = "hand-labels.jsonl"


def variants_for(prompt_id: str, variants: Sequence[HarvestVariant], k: int) -> list[HarvestVariant]:
    """The first variant, then k-1 of the others starting at a position set by the id's hash."""
    rest = list(variants[1:])
    if not rest or k <= 1:
        return [variants[0]]
    start = int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16) % len(rest)
    rotated = rest[start:] + rest[:start]
    return [variants[0], *rotated[: k - 1]]


def harvest_request(prompt: str, variant: HarvestVariant, cfg: SynthConfig) -> GenerationRequest:
    params = SamplingParams(
        max_tokens=cfg.harvest.max_tokens,
        temperature=variant.temperature,
        seed=derived_seed(cfg.seed, "harvest", variant.name),
    )
    return GenerationRequest.chat(prompt, system=variant.system, params=params)


class HarvestRun:
    """Answer every prompt of a prompt file with `model` into `out_dir/answers.jsonl`."""

    def __init__(
        self,
        prompts: Sequence[PromptRecord],
        cfg: SynthConfig,
        model: Model,
        out_dir: Path | str,
        progress: bool = True,
        echo: Callable[[str], None] | None = None,
    ):
        self.prompts, self.cfg, self.model = list(prompts), cfg, model
        self.out = Path(out_dir)
        self.progress = progress
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr))

    def plan(self) -> list[tuple[PromptRecord, HarvestVariant]]:
        """(prompt, variant) in generation order: dev prompts first, then by variant round;
        within a round grouped by variant (one batch, one set of sampling parameters) and by
        prompt length (less padding)."""
        k = min(self.cfg.variants_per_prompt, len(self.cfg.harvest_variants))
        chosen = {p.id: variants_for(p.id, self.cfg.harvest_variants, k) for p in self.prompts}
        order = {v.name: i for i, v in enumerate(self.cfg.harvest_variants)}
        jobs = [(p, v, rnd) for p in self.prompts for rnd, v in enumerate(chosen[p.id])]
        jobs.sort(key=lambda j: (j[0].split != "dev", j[2], order[j[1].name], len(j[0].prompt)))
        return [(p, v) for p, v, _ in jobs]

    def run(self, generate: bool = True) -> dict:
        """Generate what the cache lacks, then write answers.jsonl and stats.json. Interrupted
        (Ctrl-C, or the model failing), it still writes every answer generated so far, with
        `"complete": false` in stats.json, before re-raising: a long harvest is usable while
        it runs, and `--resume` finishes it. `generate=False` only rewrites the answers the
        cache holds (after hand labels changed, or to use a harvest stopped early)."""
        t0 = time.monotonic()
        hand = read_hand_labels(self.out / HAND_LABELS_FILE)  # a bad file fails before hours of work
        log = RunLog()
        cache = GenerationCache(self.out / CACHE_FILE)
        if cache.torn:
            self.echo(f"cache: skipped {cache.torn} incomplete line(s) from an interrupted write")
        if len(cache):
            self.echo(f"cache: {len(cache)} generation(s) from earlier runs will be reused")
        plan = self.plan()
        requests = [harvest_request(p.prompt, v, self.cfg) for p, v in plan]

        def cached() -> list:
            return [cache.get(request_key(self.model.id, r)) for r in requests]

        try:
            if generate:
                runner = GenerationRunner(cache, log, self.cfg.batch_size, self.progress)
                gens = runner.run("harvest", self.model, requests)
            else:
                gens = cached()
        except (KeyboardInterrupt, SynthAborted):
            self.write(plan, cached(), hand, log, time.monotonic() - t0, len(cache), complete=False)
            raise
        finally:
            cache.close()
        complete = generate or all(g is not None for g in gens)
        return self.write(plan, gens, hand, log, time.monotonic() - t0, len(cache), complete)

    def write(self, plan, gens, hand: dict[str, HandLabel], log: RunLog, wall: float, cached: int,
              complete: bool) -> dict:
        answers = []
        for (p, v), gen in zip(plan, gens, strict=True):
            if gen is None:
                continue
            rec = AnswerRecord(
                id=f"{p.id}:{v.name}",
                prompt_id=p.id,
                prompt=p.prompt,
                answer=gen.text.strip(),
                answer_model=self.model.id,
                variant=v.name,
                finish_reason=gen.finish_reason,
                **p.model_dump(include={"criterion", "intent", "category", "topic", "style",
                                        "sensitive", "split"}),
            )
            answers.append(label_answer(rec))
        answers = with_hand_labels(answers, hand)
        stats = {"complete": complete, "planned": len(plan), **self.stats(answers, log, wall, cached)}
        self.out.mkdir(parents=True, exist_ok=True)
        write_jsonl(self.out / ANSWERS_FILE, answers)
        write_json_lines(self.out / "errors.jsonl", log.errors)
        (self.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        return stats

    def stats(self, answers: list[AnswerRecord], log: RunLog, wall: float, cached: int) -> dict:
        def count(key: Callable[[AnswerRecord], object]) -> dict[str, int]:
            return {str(k): v for k, v in sorted(Counter(map(key, answers)).items())}

        return {
            "mode": "harvest-prompts",
            "answer_model": self.model.id,
            "prompts": len(self.prompts),
            "answers": len(answers),
            "failed": log.requests["harvest"].failed if "harvest" in log.requests else 0,
            "by_variant": count(lambda a: a.variant),
            "by_split": count(lambda a: a.split),
            "by_label": count(lambda a: f"{a.criterion}/{a.intent}/{a.label}"),
            "truncated": sum(a.finish_reason == "length" for a in answers),
            "rule_vs_hand": rule_vs_hand(answers),
            "config": self.cfg.model_dump(
                mode="json", include={"seed", "batch_size", "harvest", "harvest_variants",
                                      "variants_per_prompt"}
            ),
            "requests": vars(log.requests["harvest"]) if "harvest" in log.requests else {},
            "cache": {"path": str(CACHE_FILE), "entries": cached},
            "wall_time_s": round(wall, 2),
        }

