"""The squad: base model → inspectors → aligners, with the routing policy of the Aligners paper.

Policy (2403.04224), every knob in `SquadPolicy`: score each answer with every inspector; visit
flagged criteria worst first (ascending P(aligned)); run a criterion's aligner only while its
score is below threshold; re-score after each rewrite; stop after `max_rewrites`; optionally
undo a rewrite that newly flags another criterion. A member may defer to others
(`SquadMember.defer_to`): while one of them flags an answer and has yet to try, or has rewritten
it, it leaves the answer alone. A member whose rewrite is not kept, or is kept yet still flagged
by its own inspector, may fall back to a written refusal (`SquadMember.fallback_refusal`). A
member may route by its inspector's score capped by the request guard
(`SquadMember.request_guard`, inspectors/request_guard.py). Each result carries a trace. A member
may rewrite paragraphs instead of whole answers (`SquadMember.rewrite`, `aligners/paragraphs.py`),
cut sentences (serve.cutting) or replace the spans its tagger finds (inspectors.spans).

Batched end to end: a round inspects the whole batch, groups the items that need the same
aligner, and runs each aligner once over its group. Aligners are LoRA adapters on one backend,
so N criteria cost one base model in memory. Clean answers cost only inspection. No HTTP here:
the OpenAI-compatible server and batch correction both call this class.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from aligners.artifact import AlignerArtifact
from aligners.backends import Backend, Generation, GenerationRequest, SamplingParams, build_backend
from aligners.backends.base import TokenStates
from aligners.config import ConfigError, load_config
from aligners.facts import fact_changes
from aligners.formatting import aligner_request
from aligners.models import model_id_and_hash
from aligners.paragraphs import paragraphs, replace_body
from aligners.schema import Correction, Trace, TraceStep, Verdict
from inspectors.request_guard import request_guard_cap
from inspectors.shared_reading import Offered, Reading, shared_reading
from serve.config import (
    NON_GENERATING,
    PROMPTED_ALIGNER,
    CutOptions,
    DeclineOptions,
    SquadConfig,
    SquadMember,
    SquadPolicy,
    resolve_artifact,
)
from serve.cutting import cut_sentences
from serve.declines import mask_or_decline
from serve.degenerate import trim_loop, unusable
from synth.labeling import is_refusal
from synth.refusals import refusal_for


class SquadError(ConfigError):
    """A squad that cannot be assembled as configured (mismatched base, missing artifact...)."""


@dataclass
class Guard:
    """A loaded squad member: inspector + the adapter name of its aligner on the backend (None:
    the prompted base, or no aligner when the member cuts)."""

    criterion: str
    inspector: object  # inspectors.Inspector (sklearn API)
    adapter: str | None
    threshold_override: float | None = None  # one request's own threshold (per-request policy)
    unit: str = "answer"  # SquadMember.rewrite: "answer" | "paragraphs" | "cut" | "spans"
    cut: CutOptions = field(default_factory=CutOptions)  # how a "cut" member cuts
    tagger: object | None = None  # inspectors.spans.SpanTagger of a "spans" member
    decline: DeclineOptions | None = None  # when a "spans" member declines (SquadMember.decline)
    defer_to: tuple[str, ...] = ()  # criteria this member leaves an answer to (SquadMember.defer_to)
    fallback_refusal: str | None = None  # a written refusal to try when a rewrite is not kept
    request_guard: float | None = None  # SquadMember.request_guard: P(risky) bar of the routing cap

    def score(self, prompts: Sequence[str], answers: Sequence[str], batch_size: int) -> np.ndarray:
        """P(aligned) per answer as the squad routes it: the inspector's, capped by the request guard."""
        scores = self.inspector.score_answers(prompts, answers, batch_size=batch_size)
        if self.request_guard is None:
            return scores
        return np.minimum(scores, request_guard_cap(self.inspector.request_risk(prompts), answers, self.request_guard))

    @property
    def threshold(self) -> float:
        return float(self.inspector.threshold_ if self.threshold_override is None else self.threshold_override)


class Squad:
    def __init__(self, config: SquadConfig, backend: Backend, guards: list[Guard], base: Backend | None):
        self.config = config
        self.backend = backend
        self.guards = guards
        self.base = base

    # --- assembly ---------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, source: str | Path | SquadConfig, *, backend: Backend | None = None,
        config_file: str | Path | None = None,
    ) -> Squad:
        """Build from a YAML recipe or config object; `backend` injects a ready one (tests);
        relative artifact paths of a config object resolve from `config_file` when given."""
        config_file = Path(config_file) if config_file is not None else None
        if not isinstance(source, SquadConfig):
            config_file = Path(source)
            source = load_config(config_file, SquadConfig)
        cfg = source
        from inspectors import load_inspector
        from inspectors.spans import load_span_tagger

        backend = backend or build_backend(cfg.backend)
        guards = []
        for member in cfg.members:
            inspector = load_inspector(resolve_artifact(member.inspector, config_file))
            if member.threshold is not None:
                inspector.set_threshold(member.threshold, why="squad config override")
            tagger = None
            if member.tagger is not None:
                tagger = load_span_tagger(resolve_artifact(member.tagger, config_file))
                if tagger.criterion != member.criterion:
                    raise SquadError(f"{member.tagger} is a {tagger.criterion!r} tagger but is listed for {member.criterion!r}")
            if member.request_guard is not None and not inspector.has_request_gate:
                raise SquadError(f"{member.criterion}: request_guard reads a request gate, which the "
                                 f"{inspector.type} inspector {member.inspector} lacks; train one with "
                                 "request_gate: true, or remove request_guard")
            guards.append(Guard(member.criterion, inspector, _load_aligner(backend, cfg, member, config_file),
                                unit=member.rewrite, cut=member.cut, tagger=tagger,
                                decline=member.decline, defer_to=tuple(member.defer_to),
                                fallback_refusal=member.fallback_refusal, request_guard=member.request_guard))
        if cfg.base == "shared":
            base = backend
        elif cfg.base == "none":
            base = None
        else:
            base = build_backend(cfg.base)
        return cls(cfg, backend, guards, base)

    # --- inspection -------------------------------------------------------------------------

    def guards_for(self, criteria: Sequence[str] | None = None,
                   thresholds: Mapping[str, float] | None = None) -> list[Guard]:
        """The members one request runs: `criteria` (default all, in squad order) with `thresholds`
        overriding their inspectors' own; an unknown criterion is a SquadError naming the known ones."""
        known = [g.criterion for g in self.guards]
        unknown = sorted(set(criteria or ()) - set(known) | set(thresholds or {}) - set(known))
        if unknown:
            raise SquadError(f"unknown criteria {unknown}; this squad has {known}")
        chosen = [g for g in self.guards if criteria is None or g.criterion in criteria]
        return [replace(g, threshold_override=thresholds[g.criterion]) if thresholds and g.criterion in thresholds
                else g for g in chosen]

    def inspect(self, prompts: Sequence[str], answers: Sequence[str], guards: Sequence[Guard] | None = None,
                generated: Sequence[TokenStates | None] | None = None) -> np.ndarray:
        """P(aligned), shape (n_answers, n_criteria), in `guards` (default: all members) order.
        `generated`: the answers' states kept by the base while it wrote them (`generate`)."""
        guards = self.guards if guards is None else guards
        if not prompts or not guards:
            return np.zeros((len(prompts), len(guards)))
        size = self.config.policy.inspect_batch_size
        readings = self._readings(guards)
        rows = []
        for i in range(0, len(prompts), size):  # a batch at a time: the shared pass keeps its states
            offered = None
            if generated is not None and self.base is not None and self.base.states_model is not None:
                offered = Offered(self.base.states_model, {
                    (p, a): s for p, a, s in zip(prompts[i:i + size], answers[i:i + size], generated[i:i + size],
                                                 strict=True) if s is not None})
            with shared_reading(readings, offered):
                rows.append(np.column_stack([g.score(prompts[i:i + size], answers[i:i + size], size)
                                             for g in guards]))
        return np.vstack(rows)

    def _readings(self, guards: Sequence[Guard]) -> list[Reading]:
        """What the members' inspectors read of a causal LM, to be read once (policy.shared_reading)."""
        return [r for g in guards for r in g.inspector.readings()] if self.config.policy.shared_reading else []

    @staticmethod
    def _verdicts(row: np.ndarray, guards: Sequence[Guard]) -> list[Verdict]:
        return [Verdict(criterion=g.criterion, score=float(s), threshold=g.threshold) for g, s in zip(guards, row, strict=True)]

    # --- correction -------------------------------------------------------------------------

    def _next_guard(self, row: np.ndarray, visited: set[int], steps: Sequence[TraceStep],
                    guards: Sequence[Guard]) -> int | None:
        """The member to visit next, or None. An answer belongs to the members that flag it and
        have yet to try, and to those whose rewrite was kept (`steps`, the answer's trace so far);
        a member that tried and failed lets go of it, so the members that defer to it may act."""
        flagged = [j for j, g in enumerate(guards) if j not in visited and row[j] < g.threshold]
        owners = {guards[j].criterion for j in flagged} | {s.criterion for s in steps if s.accepted}
        flagged = [j for j in flagged if not owners.intersection(guards[j].defer_to)]
        if not flagged:
            return None
        if self.config.policy.order == "config":
            return flagged[0]
        return min(flagged, key=lambda j: row[j])

    def correct(self, prompts: Sequence[str], answers: Sequence[str], ids: Sequence[str | None] | None = None,
                *, criteria: Sequence[str] | None = None, thresholds: Mapping[str, float] | None = None,
                generated: Sequence[TokenStates | None] | None = None) -> list[Correction]:
        """Correct supplied answers (from any LLM); nothing is generated for clean ones. `criteria`
        and `thresholds` narrow and tune the squad for this call (see `guards_for`); `generated`:
        the states the squad's base kept while writing the answers (`answer_with_states`), which
        spare the inspectors their own pass."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        guards = self.guards_for(criteria, thresholds)
        policy = self.config.policy
        t_start = time.perf_counter()
        current = list(answers)
        scores = self.inspect(prompts, current, guards, generated)
        initial = scores.copy()
        timings = [{"inspect_s": 0.0, "align_s": 0.0} for _ in prompts]
        inspect_share = (time.perf_counter() - t_start) / max(1, len(prompts))
        for t in timings:
            t["inspect_s"] += inspect_share
        steps: list[list[TraceStep]] = [[] for _ in prompts]
        visited: list[set[int]] = [set() for _ in prompts]
        rewrites = [0] * len(prompts)
        while True:
            groups: dict[int, list[int]] = {}
            for i in range(len(prompts)):
                if rewrites[i] >= policy.max_rewrites:
                    continue
                j = self._next_guard(scores[i], visited[i], steps[i], guards)
                if j is not None:
                    groups.setdefault(j, []).append(i)
            if not groups:
                break
            for j, members in groups.items():
                guard = guards[j]
                for i in members:
                    visited[i].add(j)
                    rewrites[i] += 1
                tries = (False, True) if guard.fallback_refusal is not None else (False,)
                for fallback in tries:
                    t0 = time.perf_counter()
                    candidates = ([refusal_for(prompts[i], guard.fallback_refusal) for i in members] if fallback
                                  else self._rewrite(guard, [prompts[i] for i in members], [current[i] for i in members]))
                    align_s = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    new_scores = self.inspect([prompts[i] for i in members], candidates, guards)
                    rescore_s = time.perf_counter() - t1
                    left = []
                    for k, i in enumerate(members):
                        before, after = scores[i].copy(), new_scores[k]
                        accepted, reason = judge_rewrite(policy, guards, j, current[i], candidates[k], before, after)
                        if accepted:
                            current[i], scores[i] = candidates[k], after
                        if not accepted or (not fallback and after[j] < guard.threshold):
                            left.append(i)  # kept yet still flagged: its fallback may do better
                        timings[i]["align_s"] += align_s / len(members)
                        timings[i]["inspect_s"] += rescore_s / len(members)
                        steps[i].append(TraceStep(
                            criterion=guard.criterion, score_before=float(before[j]), score_after=float(after[j]),
                            accepted=accepted, seconds=(align_s + rescore_s) / len(members),
                            reason=f"fallback refusal {reason}" if fallback else reason,
                        ))
                    members = [i for i in left if not is_refusal(current[i])]  # a refusal needs no other
                    if not members:
                        break
        ids = list(ids) if ids is not None else [None] * len(prompts)
        return [
            Correction(
                id=ids[i], prompt=prompts[i], original=answers[i], corrected=current[i],
                changed=current[i] != answers[i],
                trace=Trace(initial=self._verdicts(initial[i], guards), steps=steps[i],
                            final=self._verdicts(scores[i], guards), timings=timings[i]),
            )
            for i in range(len(prompts))
        ]

    def _rewrite(self, guard: Guard, prompts: Sequence[str], answers: Sequence[str]) -> list[str]:
        """`guard`'s aligner's candidate for each answer: the whole answer rewritten, or (unit
        "paragraphs") only the paragraphs to rewrite, spliced back between the untouched rest. A
        rewrite that loops is cut where the loop starts; one that pastes in the request, or has
        no whole sentence before its loop, is not used (serve.degenerate). A cutting member
        generates nothing: its inspector picks the sentences to cut (serve.cutting); nor does a
        tagging member: its tagger replaces or deletes the pieces it finds (inspectors.spans),
        or, where they make a dossier, a written decline stands in (serve.declines)."""
        if guard.unit == "spans":
            return mask_or_decline(guard.tagger, prompts, answers, guard.decline)
        if guard.unit == "cut":
            target = max(guard.threshold, guard.cut.target or 0.0)
            return cut_sentences(guard.inspector, prompts, answers, target, max_cuts=guard.cut.max_cuts,
                                 which=guard.cut.sentences,
                                 batch_size=self.config.policy.inspect_batch_size)
        pieces = [paragraphs(a) if guard.unit == "paragraphs" else [a] for a in answers]
        keeps_content = guard.criterion in self.config.policy.keep_facts
        chosen = self._pieces_to_rewrite(guard, prompts, pieces)
        outs = self.backend.generate([  # stripped, as the units the aligners were trained on
            aligner_request(guard.criterion, prompts[i], pieces[i][k].strip(), guard.adapter,
                            self.config.policy.aligner_params)
            for i, k in chosen
        ])
        for (i, k), out in zip(chosen, outs, strict=True):
            new = rewrite_or_keep(pieces[i][k], out)
            if new != pieces[i][k]:
                new = trim_loop(pieces[i][k], new)
                if not new or unusable(prompts[i], pieces[i][k], new, keeps_content):
                    new = pieces[i][k]
            pieces[i][k] = new if len(pieces[i]) == 1 else replace_body(pieces[i][k], new)
        return ["".join(p) for p in pieces]

    def _pieces_to_rewrite(self, guard: Guard, prompts: Sequence[str], pieces: list[list[str]]) -> list[tuple[int, int]]:
        """(answer, piece) pairs to send to the aligner: a one-piece answer whole; of a longer one,
        the pieces the inspector flags on their own, else its lowest-scoring piece (the answer
        as a whole was flagged, so something in it is to fix)."""
        chosen = [(i, 0) for i, ps in enumerate(pieces) if len(ps) == 1]
        split = [(i, k) for i, ps in enumerate(pieces) if len(ps) > 1 for k in range(len(ps))]
        if not split:
            return chosen
        scores = guard.inspector.score_answers([prompts[i] for i, _ in split], [pieces[i][k] for i, k in split],
                                               batch_size=self.config.policy.inspect_batch_size)
        by_answer: dict[int, list[tuple[float, int]]] = {}
        for (i, k), s in zip(split, scores, strict=True):
            by_answer.setdefault(i, []).append((float(s), k))
        for i, scored in by_answer.items():
            flagged = [(i, k) for s, k in scored if s < guard.threshold]
            chosen += flagged or [(i, min(scored)[1])]
        return chosen

    def answer(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[str]:
        """The base model's answers, uncorrected (for callers that correct them with other answers)."""
        if self.base is None:
            raise SquadError("this squad has base: none; use correct(prompts, answers)")
        params = params or self.config.policy.base_params
        return [o.text for o in self.base.generate([GenerationRequest.chat(p, params=params) for p in prompts])]

    def answer_with_states(self, requests: Sequence[GenerationRequest]) -> tuple[list[Generation], list[TokenStates | None]]:
        """The base model's generations, with the states the members' inspectors read of that same
        model kept while generating (None where the base cannot keep them, or no inspector reads it)."""
        if self.base is None:
            raise SquadError("this squad has base: none; use correct(prompts, answers)")
        model = self.base.states_model
        layers = sorted({k for r in self._readings(self.guards) if (r.encoder, r.dtype, r.device) == model
                         for k in r.layers})
        if not layers:
            return self.base.generate(requests), [None] * len(requests)
        return self.base.generate_with_states(requests, layers)

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[Correction]:
        """Answer prompts with the base model, then correct the answers (their inspection reads the
        states the base kept while generating), `inspect_batch_size` prompts at a time so the
        kept states of one batch are all that is held."""
        params = params or self.config.policy.base_params
        size = self.config.policy.inspect_batch_size
        results = []
        for i in range(0, len(prompts), size):
            chunk = list(prompts[i:i + size])
            t0 = time.perf_counter()
            outs, states = self.answer_with_states([GenerationRequest.chat(p, params=params) for p in chunk])
            gen_s = (time.perf_counter() - t0) / len(chunk)
            part = self.correct(chunk, [o.text for o in outs], generated=states)
            for r in part:
                r.trace.timings["generate_s"] = gen_s
            results += part
        return results

    # --- async and streaming ------------------------------------------------------------------

    async def acorrect(self, prompts: Sequence[str], answers: Sequence[str]) -> list[Correction]:
        return await asyncio.to_thread(self.correct, prompts, answers)

    async def agenerate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[Correction]:
        return await asyncio.to_thread(self.generate, prompts, params)

    async def stream(self, prompt: str, params: SamplingParams | None = None) -> AsyncIterator[str]:
        """The final (possibly corrected) text in word-sized chunks.

        An answer must be inspected whole, so this buffers the base answer, corrects it, then
        streams the result; the first chunk arrives after the squad has finished.
        """
        result = (await self.agenerate([prompt], params))[0]
        for chunk in word_pieces(result.corrected):
            yield chunk

    def close(self) -> None:
        self.backend.close()
        if self.base is not None and self.base is not self.backend:
            self.base.close()


def judge_rewrite(policy: SquadPolicy, guards: Sequence[Guard], j: int, answer: str, rewrite: str,
                  before: np.ndarray, after: np.ndarray) -> tuple[bool, str]:
    """Keep guard `j`'s `rewrite` of `answer`? (accepted, reason for the trace). The squad's whole
    accept rule, pure: scores are P(aligned) per guard before and after the rewrite."""
    criterion = guards[j].criterion
    if rewrite == answer:
        return False, "kept: the aligner repeated the answer (or looped, or copied the request)"
    if policy.min_gain is not None and after[j] - before[j] <= policy.min_gain:
        return False, f"rejected: {criterion} score rose by {after[j] - before[j]:+.3f}, needs > {policy.min_gain}"
    if criterion in policy.must_pass and after[j] < guards[j].threshold:
        return False, f"rejected: {criterion} still flagged ({after[j]:.3f} < {guards[j].threshold:.3f})"
    # a cut or a masked span only removes text, so it cannot add a fact: only generated rewrites
    # are checked (a pattern may still read a cut's seam as a new line opener)
    generated = guards[j].unit not in NON_GENERATING
    if generated and criterion in policy.keep_facts and (added := fact_changes(answer, rewrite).added):
        return False, f"rejected: adds facts {', '.join(added[:3])}"
    if policy.reject_if_worse:  # a member that defers to this one has left the answer to it
        newly = [g.criterion for m, g in enumerate(guards)
                 if m != j and criterion not in g.defer_to and before[m] >= g.threshold > after[m]]
        if newly:
            return False, f"rejected: would flag {', '.join(newly)}"
    return True, "rewritten"


def rewrite_or_keep(answer: str, rewrite: Generation) -> str:
    """The aligner's rewrite, or `answer` itself when the rewrite is empty, the same text up to
    whitespace, or a copy of the answer's beginning cut off at max_tokens: an aligner keeps a good
    answer by copying it, and a copy is no correction. (A complete rewrite that ends early, like
    a polite fix dropping a closing insult, is kept.)"""
    new, old = " ".join(rewrite.text.split()), " ".join(answer.split())
    if not new or new == old or (rewrite.finish_reason == "length" and old.startswith(new)):
        return answer
    return rewrite.text.strip()


_PIECE = re.compile(r"\s*\S+\s*|\s+")


def word_pieces(text: str) -> list[str]:
    """Word-sized stream pieces (whitespace kept, newlines included) that join back to exactly `text`."""
    return _PIECE.findall(text)


def _load_aligner(backend: Backend, cfg: SquadConfig, member: SquadMember, config_file: Path | None) -> str | None:
    """Register a member's aligner on the backend under its criterion name; returns that name
    (None for the prompted base, which needs no adapter, and for a cutting member)."""
    if member.aligner in (None, PROMPTED_ALIGNER):
        return None
    name = member.criterion
    if cfg.backend.type == "openai_http":
        backend.load_adapter(name, member.served_name or name)
        return name
    art = AlignerArtifact.load(resolve_artifact(member.aligner, config_file))
    if art.criterion != member.criterion:
        raise SquadError(f"{art.path} is a {art.criterion!r} aligner but is listed for {member.criterion!r}")
    if cfg.backend.type == "transformers" and art.base != cfg.backend.model:
        raise SquadError(
            f"{art.path} was trained on base {art.base!r}, but the squad backend runs {cfg.backend.model!r}: "
            "adapters only work on the base they were trained on"
        )
    if cfg.backend.type == "transformers" and art.manifest.get("base_hash") != model_id_and_hash(art.base)[1]:
        raise SquadError(
            f"{art.path} was trained on {art.base} with weights hash {art.manifest.get('base_hash')}, but the "
            f"{art.base} installed here has hash {model_id_and_hash(art.base)[1]}: the adapter would steer "
            "other weights. Install the base it was trained on, or retrain it with `aligners train-aligner`"
        )
    backend.load_adapter(name, str(art.adapter_dir(member.taia)))
    return name
