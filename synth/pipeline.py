"""The synth pipeline: criterion → topics → questions → (y, critique, y′) → filters → splits.

Teacher mode (the Aligners paper, 2403.04224): the teacher proposes topics, then questions per
topic, then — in one prompt per question — a misaligned answer y, a critique and a corrected y′.
Harvest mode: a real base model answers the questions (the y a deployed model really produces),
and the teacher judges each answer: a VIOLATES verdict gives a critique and y′, a SATISFIES verdict
gives a keep-as-is pair (needs_correction=false, y′ = y).

Every model call goes through `GenerationRunner`: requests are looked up in the on-disk cache
(synth/cache.py), the misses are sent to the backend in batches (so an HTTP backend runs them
concurrently), and each finished batch is appended to the cache before the next one starts. The
whole pipeline is a deterministic function of the config and the cached generations, so a run
killed at any point is resumed by running it again: cached requests are not re-sent, every later
stage is recomputed, and the outputs are written at the end, each file atomically.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aligners.atomic import write_lines_atomic
from aligners.backends.base import (
    Backend,
    BackendError,
    Generation,
    GenerationRequest,
    SamplingParams,
)
from aligners.dataset import pair_id, save_splits, split_by_topic
from aligners.schema import Criterion, Pair, Provenance
from synth import prompts
from synth.cache import GenerationCache, request_key
from synth.config import FilterConfig, StageConfig, SynthConfig
from synth.filters import (
    DropReport,
    dedup_exact,
    dedup_near,
    length_stats,
    normalize,
    pair_similarity,
    within,
)
from synth.parse import (
    ParseError,
    clean_question,
    clean_topic,
    parse_list,
    parse_pair,
    parse_review,
)

CACHE_FILE = Path("cache") / "generations.jsonl"
MAX_CONSECUTIVE_FAILURES = 3  # requests failing one after another → the model is down: stop


class SynthError(RuntimeError):
    """A run that cannot produce data (no usable topics, bad inputs); the message says why."""


class SynthAborted(SynthError):
    """The teacher or base model kept failing; finished generations are cached for --resume."""


@dataclass
class Model:
    """A backend and the id its generations are cached and credited under (served model name
    for HTTP, registry name / HF id for local models)."""

    backend: Backend
    id: str


@dataclass
class StageCounts:
    requested: int = 0
    cached: int = 0
    sent: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Question:
    topic: str
    text: str


@dataclass
class RunLog:
    """What the run saw besides the kept pairs: drops, unparseable outputs, failures."""

    drops: DropReport = field(default_factory=DropReport)
    unparseable: Counter = field(default_factory=Counter)
    errors: list[dict] = field(default_factory=list)
    requests: dict[str, StageCounts] = field(default_factory=dict)

    def error(self, stage: str, reason: str, **detail: object) -> None:
        self.errors.append({"stage": stage, "reason": reason, **detail})

    def unparseable_output(self, stage: str, reason: str, prompt: str, output: str) -> None:
        self.unparseable[stage] += 1
        self.error(stage, f"unparseable: {reason}", prompt=prompt, output=output)


# --- model calls ------------------------------------------------------------------------------


class GenerationRunner:
    """Cached, batched generation with a progress bar (rate and ETA) per stage."""

    def __init__(
        self, cache: GenerationCache, log: RunLog, batch_size: int = 16, progress: bool = True
    ):
        self.cache, self.log, self.batch_size, self.progress = cache, log, batch_size, progress
        self._consecutive_failures = 0

    def run(
        self, stage: str, model: Model, requests: Sequence[GenerationRequest]
    ) -> list[Generation | None]:
        """One generation per request, in order; None where the request failed."""
        from tqdm import tqdm

        counts = self.log.requests.setdefault(stage, StageCounts())
        keys = [request_key(model.id, r) for r in requests]
        todo: dict[str, GenerationRequest] = {}
        for key, req in zip(keys, requests, strict=True):
            if key not in self.cache and key not in todo:
                todo[key] = req
        unique = len(set(keys))
        counts.requested += unique
        counts.cached += unique - len(todo)
        failed: set[str] = set()
        items = list(todo.items())
        with tqdm(
            total=unique,
            initial=unique - len(todo),
            desc=f"{stage} ({model.id})",
            unit="req",
            disable=not self.progress or not requests,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
        ) as bar:
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                gens = self._generate(stage, model, [req for _, req in batch])
                done = [(k, model.id, req, g) for (k, req), g in zip(batch, gens, strict=True) if g]
                self.cache.put_many(done)
                failed.update(k for (k, _), g in zip(batch, gens, strict=True) if g is None)
                counts.sent += len(batch)
                counts.failed += len(batch) - len(done)
                bar.update(len(batch))
        out = [None if k in failed else self.cache.get(k) for k in keys]
        for gen in {k: g for k, g in zip(keys, out, strict=True) if g}.values():
            counts.prompt_tokens += gen.prompt_tokens
            counts.completion_tokens += gen.completion_tokens
        return out

    def _generate(
        self, stage: str, model: Model, batch: list[GenerationRequest]
    ) -> list[Generation | None]:
        """The whole batch at once; if it fails, each request alone, so one bad request costs
        only itself. Several failures in a row mean the model is unreachable: abort."""
        if len(batch) > 1:
            try:
                gens = model.backend.generate(batch)
            except BackendError:
                pass
            else:
                self._consecutive_failures = 0
                return list(gens)
        out: list[Generation | None] = []
        for req in batch:
            try:
                [gen] = model.backend.generate([req])
            except BackendError as exc:
                self._consecutive_failures += 1
                self.log.error(stage, "request failed", prompt=_user_text(req), detail=str(exc))
                if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    raise SynthAborted(
                        f"{model.id} failed {self._consecutive_failures} requests in a row during "
                        f"stage {stage!r}; last error: {exc}"
                    ) from exc
                out.append(None)
            else:
                self._consecutive_failures = 0
                out.append(gen)
        return out


def _user_text(req: GenerationRequest) -> str:
    if req.messages:
        return req.messages[-1].content
    return req.prompt or ""


def derived_seed(base: int, *parts: str) -> int:
    """A sampling seed derived from the run seed, stable across reruns (so cache keys are too).

    Stages share one seed per stage, not one per request: the prompts already differ, and the
    local transformers backend batches only requests with identical sampling parameters, so
    per-request seeds would make it generate one request at a time. Topic rounds get one seed
    each, since a retried round can have the very same prompt."""
    h = hashlib.sha256(json.dumps([base, *parts]).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def chat(text: str, stage: StageConfig, seed: int) -> GenerationRequest:
    params = SamplingParams(max_tokens=stage.max_tokens, temperature=stage.temperature, seed=seed)
    return GenerationRequest.chat(text, params=params)


# --- filters shared by synth and seed runs ------------------------------------------------------


def filter_prompts(items: list, text: Callable[[object], str], fc: FilterConfig, log: RunLog) -> list:
    """Exact duplicates, near duplicates, then prompt length; drops are logged by reason."""
    kept, dropped = dedup_exact(items, text)
    for d in dropped:
        log.drops.add("question_exact_duplicate", {"prompt": text(d.item), "detail": d.detail})
    kept, dropped = dedup_near(
        kept, text, fc.near_dup_threshold, fc.shingle_chars, fc.minhash_perms
    )
    for d in dropped:
        log.drops.add("question_near_duplicate", {"prompt": text(d.item), "detail": d.detail})
    out = []
    for item in kept:
        if within(text(item), fc.min_prompt_chars, fc.max_prompt_chars):
            out.append(item)
        else:
            log.drops.add("prompt_length", {"prompt": text(item), "detail": f"{len(text(item))} chars"})
    return out


def filter_pairs(pairs: list[Pair], fc: FilterConfig, log: RunLog, check_similarity: bool = True) -> list[Pair]:
    """Answer length (y and y′), then (`check_similarity`) near-identical y/y′ for pairs that
    need correction."""
    sized = []
    for p in pairs:
        bad = [
            f"{name} {len(t.strip())} chars"
            for name, t in (("misaligned", p.misaligned), ("aligned", p.aligned))
            if not within(t, fc.min_answer_chars, fc.max_answer_chars)
        ]
        if bad:
            log.drops.add("answer_length", {"id": p.id, "prompt": p.prompt, "detail": ", ".join(bad)})
        else:
            sized.append(p)
    check = [i for i, p in enumerate(sized) if p.needs_correction and check_similarity]
    sims = pair_similarity(
        [(sized[i].misaligned, sized[i].aligned) for i in check],
        fc.pair_similarity,
        fc.embed_min_jaccard,
    )
    too_similar = {i: s for i, s in zip(check, sims, strict=True) if s >= fc.identical_pair_threshold}
    out = []
    for i, p in enumerate(sized):
        if i in too_similar:
            log.drops.add(
                "identical_pair",
                {"id": p.id, "prompt": p.prompt, "detail": f"similarity {too_similar[i]:.3f}"},
            )
        else:
            out.append(p)
    return out


# --- the run ------------------------------------------------------------------------------------


class SynthRun:
    """One synth run into `out_dir` (teacher mode, or harvest mode when `harvest` is given)."""

    def __init__(
        self,
        criterion: Criterion,
        cfg: SynthConfig,
        teacher: Model,
        out_dir: Path | str,
        harvest: Model | None = None,
        progress: bool = True,
        echo: Callable[[str], None] | None = None,
        questions: list[Question] | None = None,
    ):
        self.criterion, self.cfg, self.teacher, self.harvest = criterion, cfg, teacher, harvest
        self.given_questions = questions  # from a prompt file: no topic or question stage
        self.out = Path(out_dir)
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr))
        self.log = RunLog()
        self.cache = GenerationCache(self.out / CACHE_FILE)
        self.runner = GenerationRunner(self.cache, self.log, cfg.batch_size, progress)
        self.versions = prompts.template_versions()
        self.counts: dict[str, int] = {}

    # --- stages ---------------------------------------------------------------------------

    def make_topics(self) -> list[str]:
        cfg, crit = self.cfg, self.criterion
        topics: list[str] = []
        seen: set[str] = set()
        for rnd in range(cfg.topic_rounds):
            need = cfg.n_topics - len(topics)
            if need <= 0:
                break
            _, text = prompts.topics_prompt(crit, need, avoid=topics)
            req = chat(text, cfg.topics, derived_seed(cfg.seed, "topics", str(rnd)))
            [gen] = self.runner.run("topics", self.teacher, [req])
            if gen is None:
                continue
            try:
                items = parse_list(gen.text, kind="topic", split_commas=True).items
            except ParseError as exc:
                self.log.unparseable_output("topics", str(exc), f"round {rnd}", gen.text)
                continue
            if gen.finish_reason == "length" and len(items) > 1:
                self.log.drops.add("truncated", {"stage": "topics", "item": items.pop()})
            for item in items:
                topic = clean_topic(item)
                if not topic:
                    self.log.error("topics", "unusable topic line", output=item)  # noqa: PLE1205 - our RunLog, not logging
                    continue
                if normalize(topic) in seen:
                    self.log.drops.add("topic_duplicate", {"topic": topic})
                    continue
                seen.add(normalize(topic))
                topics.append(topic)
        topics = topics[: cfg.n_topics]
        self.counts["topics_from_teacher"] = len(topics)
        fill = [t for t in crit.topics if normalize(t) not in seen][: cfg.n_topics - len(topics)]
        if fill:
            self.echo(
                f"the teacher gave {len(topics)} usable topic(s) of {cfg.n_topics}; adding "
                f"{len(fill)} from the criterion's topics list"
            )
        topics += fill
        self.counts["topics_from_criterion"] = len(fill)
        self.counts["topics"] = len(topics)
        if not topics:
            raise SynthError(
                "the teacher produced no usable topics and the criterion lists none; see "
                f"{self.out / 'errors.jsonl'} for its outputs, or add `topics:` to the criterion"
            )
        return topics

    def make_questions(self, topics: list[str]) -> list[Question]:
        cfg = self.cfg
        reqs = [
            chat(
                prompts.questions_prompt(self.criterion, t, cfg.per_topic)[1],
                cfg.questions,
                derived_seed(cfg.seed, "questions"),
            )
            for t in topics
        ]
        gens = self.runner.run("questions", self.teacher, reqs)
        out: list[Question] = []
        for topic, gen in zip(topics, gens, strict=True):
            if gen is None:
                continue
            try:
                items = parse_list(gen.text, kind="question").items
            except ParseError as exc:
                self.log.unparseable_output("questions", str(exc), topic, gen.text)
                continue
            if gen.finish_reason == "length" and len(items) > 1:
                self.log.drops.add("truncated", {"stage": "questions", "topic": topic, "item": items.pop()})
            items = [q for q in (clean_question(i) for i in items) if q]
            out += [Question(topic, q) for q in items[: cfg.per_topic]]
        self.counts["questions_generated"] = len(out)
        return out

    def teacher_pairs(self, questions: list[Question]) -> list[Pair]:
        cfg = self.cfg
        reqs = [
            chat(
                prompts.pair_prompt(self.criterion, q.text)[1],
                cfg.pairs,
                derived_seed(cfg.seed, "pairs"),
            )
            for q in questions
        ]
        gens = self.runner.run("pairs", self.teacher, reqs)
        source = Provenance(
            teacher=self.teacher.id, template_version=self.chain("pair"), seed=cfg.seed
        )
        pairs = []
        for q, gen in zip(questions, gens, strict=True):
            p = self._parse_generation("pairs", q.text, gen, parse_pair)
            if p is None:
                continue
            pairs.append(self._pair(q, p.misaligned, p.critique, p.aligned, True, source))
        return pairs

    def _parse_generation(self, stage: str, prompt: str, gen, parse):
        """`parse(gen.text)`, or None after logging why: no generation (a failed request),
        cut off at max_tokens (dropped as truncated), or unparseable (counted with the output)."""
        if gen is None:
            return None
        if gen.finish_reason == "length":
            self.log.drops.add("truncated", {"stage": stage, "prompt": prompt, "output": gen.text})
            return None
        try:
            return parse(gen.text)
        except ParseError as exc:
            self.log.unparseable_output(stage, str(exc), prompt, gen.text)
            return None

    def harvest_pairs(self, questions: list[Question]) -> list[Pair]:
        cfg, base = self.cfg, self.harvest
        assert base is not None
        reqs = [chat(q.text, cfg.harvest, derived_seed(cfg.seed, "harvest")) for q in questions]
        answers = self.runner.run("harvest", base, reqs)
        answered: list[tuple[Question, str]] = []
        for q, gen in zip(questions, answers, strict=True):
            if gen is None:
                continue
            if not gen.text.strip():
                self.log.unparseable_output("harvest", "empty answer", q.text, gen.text)
                continue
            answered.append((q, gen.text.strip()))
        reqs = [
            chat(
                prompts.review_prompt(self.criterion, q.text, y)[1],
                cfg.review,
                derived_seed(cfg.seed, "review"),
            )
            for q, y in answered
        ]
        reviews = self.runner.run("review", self.teacher, reqs)
        source = Provenance(
            teacher=self.teacher.id, template_version=self.chain("review"), seed=cfg.seed
        )
        pairs = []
        for (q, y), gen in zip(answered, reviews, strict=True):
            r = self._parse_generation("review", q.text, gen, parse_review)
            if r is None:
                continue
            aligned = y if r.satisfies else r.aligned
            pairs.append(self._pair(q, y, r.critique, aligned, not r.satisfies, source))
        return pairs

    def _pair(
        self, q: Question, y: str, critique: str, y2: str, needs: bool, source: Provenance
    ) -> Pair:
        return Pair(
            id=pair_id(self.criterion.name, q.text),
            criterion=self.criterion.name,
            topic=q.topic,
            prompt=q.text,
            misaligned=y,
            critique=critique,
            aligned=y2,
            needs_correction=needs,
            source=source,
        )

    def chain(self, last: str) -> str:
        """The template versions a record went through, e.g. 'topics-v1+questions-v1+pair-v1'
        ('prompt-file+pair-v1' when the questions came from a prompt file)."""
        if self.given_questions is not None:
            return f"prompt-file+{self.versions[last]}"
        return "+".join(self.versions[n] for n in ("topics", "questions", last))

    # --- whole run ------------------------------------------------------------------------

    def run(self) -> dict:
        t0 = time.monotonic()
        if self.cache.torn:
            self.echo(f"cache: skipped {self.cache.torn} incomplete line(s) from an interrupted write")
        if len(self.cache):
            self.echo(f"cache: {len(self.cache)} generation(s) from earlier runs will be reused")
        try:
            if self.given_questions is None:
                questions = self.make_questions(self.make_topics())
            else:
                questions = self.given_questions
                self.counts["questions_from_file"] = len(questions)
            questions = filter_prompts(questions, lambda q: q.text, self.cfg.filters, self.log)
            self.counts["questions_kept"] = len(questions)
            if self.harvest is not None:
                pairs = self.harvest_pairs(questions)
            else:
                pairs = self.teacher_pairs(questions)
        finally:
            self.cache.close()
        self.counts["pairs_generated"] = len(pairs)
        pairs = filter_pairs(pairs, self.cfg.filters, self.log)
        stats = self.stats(pairs, time.monotonic() - t0)
        write_outputs(self.out, pairs, self.cfg, stats, self.log)
        return json.loads((self.out / "stats.json").read_text())

    def stats(self, pairs: list[Pair], wall: float) -> dict:
        stages = ("topics", "questions", *(("harvest", "review") if self.harvest else ("pairs",)))
        return {
            "mode": "harvest" if self.harvest else "teacher",
            "criterion": self.criterion.name,
            "teacher": self.teacher.id,
            "harvest_with": self.harvest.id if self.harvest else None,
            "templates": {
                k: v for k, v in self.versions.items() if k != ("pair" if self.harvest else "review")
            },
            "seed": self.cfg.seed,
            "config": self.cfg.model_dump(mode="json"),
            "counts": {**self.counts, **pair_counts(pairs)},
            "unparseable": {s: self.log.unparseable.get(s, 0) for s in stages},
            "requests": {
                s: vars(self.log.requests.get(s, StageCounts())) for s in stages
            },
            "cache": {
                "path": str(CACHE_FILE),
                "entries": len(self.cache),
                "torn_lines_skipped": self.cache.torn,
            },
            "wall_time_s": round(wall, 2),
        }


def pair_counts(pairs: list[Pair]) -> dict[str, int]:
    n_fix = sum(p.needs_correction for p in pairs)
    return {"pairs_kept": len(pairs), "needs_correction": n_fix, "keep_as_is": len(pairs) - n_fix}


def write_outputs(out: Path, pairs: list[Pair], cfg: SynthConfig, stats: dict, log: RunLog) -> None:
    """Splits by topic + the standard folder layout (aligners.dataset.save_splits), with the drop
    report and length stats in stats.json, errors.jsonl and dropped.jsonl beside it."""
    splits = split_by_topic(pairs, cfg.split_fractions, cfg.seed)
    stats = {
        **stats,
        "dropped": dict(log.drops.counts),
        "dropped_total": log.drops.total,
        "lengths": {
            "prompt": length_stats([len(p.prompt) for p in pairs]),
            "misaligned": length_stats([len(p.misaligned) for p in pairs]),
            "critique": length_stats([len(p.critique) for p in pairs]),
            "aligned": length_stats([len(p.aligned) for p in pairs]),
        },
        "topics_per_split": {
            name: len({p.topic for p in ps}) for name, ps in splits.items()
        },
    }
    save_splits(out, splits, stats)
    write_json_lines(out / "errors.jsonl", log.errors)
    write_json_lines(out / "dropped.jsonl", log.drops.records)


def write_json_lines(path: Path, rows: list[dict]) -> None:
    write_lines_atomic(path, (json.dumps(row, ensure_ascii=False) for row in rows))


def run_from_pairs(
    pairs: list[Pair], criterion: str, mode: str, out_dir: Path | str, cfg: SynthConfig,
    answer_pairs: Sequence[Pair] = (), extra: dict | None = None, rewritten_pairs: Sequence[Pair] = (),
) -> dict:
    """Hand-written pairs (the seed sets, or a user's own file) through the filters and splits.

    `answer_pairs` (made from real answers, synth.corrections) skip the prompt de-duplication:
    there the answer is the unit, and two real answers to one request are both worth learning.
    `rewritten_pairs` (paragraphs corrected by hand, synth.paragraph_pairs) skip the near-identical
    check too: there removing one ", genius" from a long paragraph is the whole lesson.
    `extra` goes into stats.json as is (how the answer pairs were made).
    """
    t0 = time.monotonic()
    log = RunLog()
    loaded = len(pairs) + len(answer_pairs) + len(rewritten_pairs)
    # Prompts are deduplicated within each kind only: a seed set may hold the same question
    # with a bad answer to correct and, in the shared benign pool, with a good answer to keep —
    # a contrast worth keeping, not a duplicate.
    pairs = [
        p
        for needs in (True, False)
        for p in filter_prompts(
            [p for p in pairs if p.needs_correction == needs], lambda p: p.prompt, cfg.filters, log
        )
    ]
    pairs = filter_pairs([*pairs, *answer_pairs], cfg.filters, log)
    pairs += filter_pairs(list(rewritten_pairs), cfg.filters, log, check_similarity=False)
    stats = {
        "mode": mode,
        "criterion": criterion,
        "teacher": "human",
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "counts": {"seed_pairs": loaded, **pair_counts(pairs)},
        "unparseable": {},
        "wall_time_s": round(time.monotonic() - t0, 2),
        **(extra or {}),
    }
    out = Path(out_dir)
    write_outputs(out, pairs, cfg, stats, log)
    return json.loads((out / "stats.json").read_text())
