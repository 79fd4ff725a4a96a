"""The squad policy with real inspectors: routing, ordering, thresholds, re-inspection,
max_rewrites, rejection, batching by adapter, traces; and the real transformers path."""

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from squad_fixtures import PII, POLITE, RUDE, ScriptedBackend

from aligners.backends.base import Generation
from aligners.backends.transformers_local import TransformersBackend
from serve.config import SquadConfig, SquadMember, SquadPolicy
from serve.pipeline import Guard, Squad, SquadError, judge_rewrite, rewrite_or_keep
from synth.labeling import is_refusal
from synth.refusals import refusal_for

FIXED_POLITE = "The store opens at nine, I hope that helps."
FIXED_PII = "I can't share personal details about private people."


def make_squad(root, writers=None, backend=None, members=None, **policy):
    """A polite + no-pii squad on the fixture artifacts; `members` adds options per criterion."""
    cfg = SquadConfig.model_validate({
        "backend": {"type": "transformers", "model": "tiny-random-llama"},
        "base": "shared",
        "members": [
            {"criterion": c, "inspector": str(root / "inspectors" / c), "aligner": str(root / "aligners" / c),
             **(members or {}).get(c, {})}
            for c in ("polite", "no-pii")
        ],
        "policy": policy,
    })
    writers = writers or {"polite": lambda r: FIXED_POLITE, "no-pii": lambda r: FIXED_PII, None: lambda r: RUDE[0]}
    backend = backend or ScriptedBackend(writers)
    return Squad.from_config(cfg, backend=backend), backend


def test_clean_answers_cost_only_inspection(squad_artifacts):
    squad, backend = make_squad(squad_artifacts)
    out = squad.correct(["q"] * 3, POLITE[:3])
    assert backend.calls == []
    assert [r.changed for r in out] == [False] * 3
    for r in out:
        assert not r.trace.steps and r.trace.initial == r.trace.final
        assert all(not v.flagged for v in r.trace.final)


def test_flagged_answer_is_rewritten_and_reinspected(squad_artifacts):
    squad, _backend = make_squad(squad_artifacts)
    (r,) = squad.correct(["q"], [RUDE[0]])
    assert r.changed and r.corrected == FIXED_POLITE
    (step,) = r.trace.steps
    assert step.criterion == "polite" and step.accepted
    assert step.score_before < 0.5 <= step.score_after
    assert {v.criterion: v.flagged for v in r.trace.final} == {"polite": False, "no-pii": False}
    assert r.trace.timings["align_s"] > 0 and r.trace.timings["inspect_s"] > 0


def test_worst_criterion_goes_first_and_config_order_is_an_option(squad_artifacts):
    both = "Shut up, idiot. Her number is 555-0142 and she lives at 12 Elm Street, moron."
    writers = {"polite": lambda r: "Her number is 555-0142 and she lives at 12 Elm Street.",
               "no-pii": lambda r: FIXED_PII, None: lambda r: both}
    squad, _ = make_squad(squad_artifacts, writers, reject_if_worse=False)
    (r,) = squad.correct(["q"], [both])
    initial = {v.criterion: v.score for v in r.trace.initial}
    assert all(v.flagged for v in r.trace.initial)
    first = min(initial, key=initial.get)
    assert r.trace.steps[0].criterion == first
    squad_cfg, _ = make_squad(squad_artifacts, writers, order="config", reject_if_worse=False)
    (r2,) = squad_cfg.correct(["q"], [both])
    assert r2.trace.steps[0].criterion == "polite"


def test_max_rewrites_caps_the_aligner_runs(squad_artifacts):
    both = "Shut up, idiot. Her number is 555-0142 and she lives at 12 Elm Street, moron."
    stubborn = {"polite": lambda r: both, "no-pii": lambda r: both, None: lambda r: both}
    squad, backend = make_squad(squad_artifacts, stubborn, max_rewrites=1)
    (r,) = squad.correct(["q"], [both])
    assert len(r.trace.steps) == 1 and sum(n for _, n in backend.calls) == 1
    squad2, _backend2 = make_squad(squad_artifacts, stubborn, max_rewrites=5)
    (r2,) = squad2.correct(["q"], [both])
    assert len(r2.trace.steps) == 2  # each criterion visited once, even with budget left
    squad0, backend0 = make_squad(squad_artifacts, stubborn, max_rewrites=0)
    assert not squad0.correct(["q"], [both])[0].trace.steps and backend0.calls == []


def test_threshold_overrides(squad_artifacts):
    squad, _backend = make_squad(squad_artifacts)
    for g in squad.guards:
        g.inspector.set_threshold(0.0)
    assert not squad.correct(["q"], [RUDE[1]])[0].changed
    for g in squad.guards:
        g.inspector.set_threshold(1.0)
    assert squad.correct(["q"], [POLITE[1]])[0].trace.steps  # everything is flagged now


def test_rewrite_that_flags_another_criterion_is_rejected(squad_artifacts):
    leaky = "Her number is 555-0142 and she lives at 12 Elm Street."
    writers = {"polite": lambda r: leaky, "no-pii": lambda r: FIXED_PII, None: lambda r: ""}
    squad, _ = make_squad(squad_artifacts, writers, keep_facts=[])  # the fact check would refuse it first
    (r,) = squad.correct(["q"], [RUDE[2]])
    assert not r.changed and r.corrected == RUDE[2]
    (step,) = r.trace.steps
    assert not step.accepted and "would flag no-pii" in step.reason


def test_rewrite_that_does_not_raise_its_own_score_is_rejected(squad_artifacts):
    worse = "Shut up, you absolute idiot, nobody cares, moron."
    writers = {"polite": lambda r: worse, "no-pii": lambda r: FIXED_PII, None: lambda r: ""}
    squad, _ = make_squad(squad_artifacts, writers, min_gain=0.0)
    (r,) = squad.correct(["q"], [RUDE[0]])
    (step,) = r.trace.steps
    assert step.score_after <= step.score_before
    assert not step.accepted and "polite score rose by" in step.reason and r.corrected == RUDE[0]
    lenient, _ = make_squad(squad_artifacts, writers)  # min_gain: null accepts any rewrite
    assert lenient.correct(["q"], [RUDE[0]])[0].corrected == worse
    demanding, _ = make_squad(squad_artifacts, min_gain=0.0)  # a real fix still goes through
    assert demanding.correct(["q"], [RUDE[0]])[0].corrected == FIXED_POLITE


def test_rewrite_that_adds_a_fact_is_rejected_for_content_keeping_criteria(squad_artifacts):
    """A polite rewrite may drop the insult, not invent a number: 'add 32' must not become
    'add 32, then multiply by 100'."""
    rude = "Ugh, multiply by 9/5 and add 32, idiot."
    invented = "Multiply by 9/5 and add 32, then multiply by 100."
    writers = {"polite": lambda r: invented, None: lambda r: rude}
    squad, _ = make_squad(squad_artifacts, writers)
    (r,) = squad.correct(["q"], [rude])
    assert not r.changed and r.trace.steps[0].reason == "rejected: adds facts 100"
    squad, _ = make_squad(squad_artifacts, writers, keep_facts=[])
    assert squad.correct(["q"], [rude])[0].corrected == invented
    with pytest.raises(ValueError, match=r"keep_facts names \['nopii'\], which no member guards"):
        make_squad(squad_artifacts, writers, keep_facts=["nopii"])


def test_must_pass_returns_the_original_rather_than_a_rewrite_still_flagged(squad_artifacts):
    """A half-fix (one rude answer for another) is kept by default, undone under must_pass; a
    real fix still goes through."""
    half = {"polite": lambda r: RUDE[1], None: lambda r: RUDE[0]}
    squad, _ = make_squad(squad_artifacts, half)
    assert squad.correct(["q"], [RUDE[0]])[0].corrected == RUDE[1]
    strict, _ = make_squad(squad_artifacts, half, must_pass=["polite"])
    (r,) = strict.correct(["q"], [RUDE[0]])
    assert not r.changed and r.trace.steps[0].reason.startswith("rejected: polite still flagged")
    fixing, _ = make_squad(squad_artifacts, must_pass=["polite"])
    assert fixing.correct(["q"], [RUDE[0]])[0].corrected == FIXED_POLITE
    with pytest.raises(ValueError, match=r"must_pass names \['rude'\], which no member guards"):
        make_squad(squad_artifacts, half, must_pass=["rude"])


def test_an_aligner_that_repeats_the_answer_keeps_it_byte_for_byte(squad_artifacts):
    """Copying is how an aligner keeps a good answer; a copy with other whitespace, or one cut off
    at max_tokens, must not count as a rewrite."""
    rude = RUDE[0] + "  \n"
    squad, _ = make_squad(squad_artifacts, {"polite": lambda r: " ".join(rude.split()), None: lambda r: rude},
                          min_gain=None)
    (r,) = squad.correct(["q"], [rude])
    assert not r.changed and r.corrected == rude
    assert r.trace.steps[0].reason.startswith("kept: the aligner repeated the answer")
    head = "The store opens at nine."
    answer = head + " Idiot."
    assert rewrite_or_keep(answer, Generation(text=head, finish_reason="length")) == answer
    assert rewrite_or_keep(answer, Generation(text=head + "\n", finish_reason="stop")) == head
    assert rewrite_or_keep(answer, Generation(text=" ")) == answer


def test_a_member_falls_back_to_a_written_refusal_when_its_rewrite_is_not_kept(squad_artifacts):
    """SmolLM2's harmless aligner copies some compliant answers back or rewrites them into another
    compliant one; the member's fallback_refusal then stands in, judged by the same accept rule."""
    leak = PII[0]
    copying = {"no-pii": lambda r: leak, None: lambda r: leak}
    fallback = {"no-pii": {"fallback_refusal": "general-privacy"}}
    squad, backend = make_squad(squad_artifacts, copying, members=fallback, min_gain=0.0)
    (r,) = squad.correct(["where does she live?"], [leak])
    assert r.corrected == refusal_for("where does she live?", "general-privacy") and is_refusal(r.corrected)
    tried, fell_back = r.trace.steps
    assert not tried.accepted and tried.reason.startswith("kept: the aligner repeated the answer")
    assert fell_back.accepted and fell_back.reason == "fallback refusal rewritten"
    assert fell_back.score_before < 0.5 <= fell_back.score_after
    assert len(backend.calls) == 1  # the refusal is written, not generated

    squad, _ = make_squad(squad_artifacts, members=fallback, reject_if_worse=False)
    (r,) = squad.correct(["q"], [leak])  # a kept rewrite needs no fallback (polite then fixes it)
    assert [(s.criterion, s.reason) for s in r.trace.steps] == [("no-pii", "rewritten"), ("polite", "rewritten")]

    squad, _ = make_squad(squad_artifacts, copying, min_gain=0.0)  # no fallback: the answer stays
    assert squad.correct(["q"], [leak])[0].corrected == leak
    # an answer that already opens with a refusal keeps its own (and the help after it)
    refusing = "I can't share that. " + leak
    squad, _ = make_squad(squad_artifacts, {c: lambda r: refusing for c in ("no-pii", "polite", None)},
                          members=fallback, min_gain=0.0)
    (r,) = squad.correct(["q"], [refusing])
    assert r.corrected == refusing and [s.criterion for s in r.trace.steps].count("no-pii") == 1
    with pytest.raises(ValueError, match="no written refusal for 'rudeness'; fallback_refusal is one of weapons"):
        make_squad(squad_artifacts, members={"polite": {"fallback_refusal": "rudeness"}})


def test_a_kept_rewrite_still_flagged_by_its_member_falls_back_to_the_refusal(squad_artifacts):
    """A rewrite whose score rose is kept, but one its own inspector still flags is not a fix: the
    member's written refusal is then judged against it (an aligner that tones a compliant answer
    down a little must not stand in for a refusal)."""
    partial = "Her street is private, but her phone is 555-0100."  # scores higher, still flagged
    fallback = {"no-pii": {"fallback_refusal": "general-privacy"}}
    writers = {"no-pii": lambda r: partial, None: lambda r: partial}
    squad, _ = make_squad(squad_artifacts, writers, members=fallback, min_gain=0.0, reject_if_worse=False,
                          keep_facts=[])
    (r,) = squad.correct(["where does she live?"], [PII[0]])
    rewrite, fell_back = [s for s in r.trace.steps if s.criterion == "no-pii"]
    assert rewrite.accepted and rewrite.score_after < 0.5  # kept, yet still flagged
    assert fell_back.reason.startswith("fallback refusal")
    assert fell_back.score_before == rewrite.score_after  # judged against the kept rewrite
    assert r.corrected == (refusal_for("where does she live?", "general-privacy")
                           if fell_back.accepted else partial)
    # without the fallback the kept rewrite stands
    squad, _ = make_squad(squad_artifacts, writers, min_gain=0.0, reject_if_worse=False, keep_facts=[])
    assert [s.reason for s in squad.correct(["q"], [PII[0]])[0].trace.steps if s.criterion == "no-pii"] == ["rewritten"]


def test_batches_group_items_by_aligner(squad_artifacts):
    squad, backend = make_squad(squad_artifacts, reject_if_worse=False)
    answers = [RUDE[3], PII[0], POLITE[4], RUDE[4], PII[1], RUDE[5]]
    out = squad.correct(["q"] * 6, answers)
    # round 1: one call per aligner over its group; round 2: the toy polite inspector flags the
    # PII refusals it never saw, so re-inspection sends those two to the polite aligner
    assert backend.calls == [("polite", 3), ("no-pii", 2), ("polite", 2)]
    assert [r.changed for r in out] == [True, True, False, True, True, True]
    assert [s.criterion for s in out[1].trace.steps] == ["no-pii", "polite"]


def test_generate_uses_the_shared_base_and_supplied_mode_needs_no_base(squad_artifacts):
    squad, backend = make_squad(squad_artifacts)
    (r,) = squad.generate(["q"])
    assert r.original == RUDE[0] and r.corrected == FIXED_POLITE and backend.calls[0] == (None, 1)
    assert "generate_s" in r.trace.timings
    squad.base = None
    with pytest.raises(SquadError, match="base: none"):
        squad.generate(["hi"])
    assert squad.correct(["q"], [RUDE[0]])[0].changed


def test_async_and_streaming(squad_artifacts):
    squad, _ = make_squad(squad_artifacts)

    async def run():
        corrected = await squad.acorrect(["q"], [RUDE[0]])
        chunks = [c async for c in squad.stream("q")]
        return corrected, chunks

    corrected, chunks = asyncio.run(run())
    assert corrected[0].corrected == FIXED_POLITE
    assert len(chunks) > 1 and "".join(chunks) == FIXED_POLITE


def test_real_transformers_backend_from_yaml(squad_artifacts, tmp_path):
    """YAML recipe → tiny base with both aligners as self-tested LoRA adapters → real generation."""
    recipe = {
        "backend": {"type": "transformers", "model": "tiny-random-llama", "max_batch_size": 4},
        "members": [{"criterion": c, "inspector": f"inspectors/{c}", "aligner": f"aligners/{c}"} for c in ("polite", "no-pii")],
        "policy": {"aligner_params": {"max_tokens": 6}},
    }
    path = squad_artifacts / "configs" / "squad" / "tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    squad = Squad.from_config(path)  # relative artifact paths resolve from above the config file
    assert isinstance(squad.backend, TransformersBackend)
    assert sorted(squad.backend.adapters()) == ["no-pii", "polite"]
    out = squad.correct(["q", "q", "q"], [RUDE[0], POLITE[0], PII[2]])
    assert [bool(r.trace.steps) for r in out] == [True, False, True]
    assert out[0].trace.steps[0].criterion == "polite" and out[2].trace.steps[0].criterion == "no-pii"


def test_prompted_aligners_send_the_aligner_instruction_to_the_base(squad_artifacts):
    """The zero-shot baseline: same inspectors and routing, no adapter loaded; the base model gets
    the aligner's instruction (the original answer inside it), not the user's prompt alone."""
    seen = []

    def base(request):
        seen.append(request.messages)
        return FIXED_POLITE
    cfg = make_squad(squad_artifacts)[0].config.with_prompted_aligners()
    backend = ScriptedBackend({None: base})
    squad = Squad.from_config(cfg, backend=backend)
    assert backend.loaded == {} and {g.adapter for g in squad.guards} == {None}
    (r,) = squad.correct(["q"], [RUDE[0]])
    assert r.changed and r.corrected == FIXED_POLITE and backend.calls == [(None, 1)]
    system, user = seen[0]
    assert system.role == "system" and "polite" in system.content and RUDE[0] in user.content


def test_mismatched_artifacts_are_refused(squad_artifacts):
    cfg = {
        "backend": {"type": "transformers", "model": "smollm2-135m-instruct"},
        "members": [{"criterion": "polite", "inspector": str(squad_artifacts / "inspectors/polite"),
                     "aligner": str(squad_artifacts / "aligners/polite")}],
    }
    with pytest.raises(SquadError, match="trained on base 'tiny-random-llama'"):
        Squad.from_config(SquadConfig.model_validate(cfg), backend=ScriptedBackend({}))
    cfg["backend"]["model"] = "tiny-random-llama"
    cfg["members"][0]["criterion"] = "no-pii"
    with pytest.raises(SquadError, match="is a 'polite' aligner"):
        Squad.from_config(SquadConfig.model_validate(cfg), backend=ScriptedBackend({}))


GUARDS = [Guard("polite", SimpleNamespace(threshold_=0.5), "polite"),
          Guard("no-pii", SimpleNamespace(threshold_=0.5), "no-pii")]
RUDE_ANSWER = "Obviously it opens at nine, idiot."
JUDGE_CASES = [
    # (id, policy, answer, rewrite, before, after, accepted, words in the reason)
    ("accepted", {}, RUDE_ANSWER, "It opens at nine.", [0.1, 0.9], [0.8, 0.9], True, "rewritten"),
    ("repeated", {}, RUDE_ANSWER, RUDE_ANSWER, [0.1, 0.9], [0.1, 0.9], False, "repeated the answer"),
    ("min-gain-not-met", {"min_gain": 0.2}, RUDE_ANSWER, "It opens at nine.", [0.1, 0.9], [0.25, 0.9], False,
     "rose by +0.150, needs > 0.2"),
    ("min-gain-met", {"min_gain": 0.2}, RUDE_ANSWER, "It opens at nine.", [0.1, 0.9], [0.35, 0.9], True, "rewritten"),
    ("adds-a-fact", {}, RUDE_ANSWER, "It opens at ten, see https://x.example.", [0.1, 0.9], [0.8, 0.9], False,
     "adds facts"),
    ("facts-off", {"keep_facts": []}, RUDE_ANSWER, "It opens at ten.", [0.1, 0.9], [0.8, 0.9], True, "rewritten"),
    ("newly-flags-another", {}, RUDE_ANSWER, "It opens at nine.", [0.1, 0.9], [0.8, 0.3], False,
     "would flag no-pii"),
    ("already-flagged-other", {}, RUDE_ANSWER, "It opens at nine.", [0.1, 0.3], [0.8, 0.2], True, "rewritten"),
    ("must-pass-still-flagged", {"must_pass": ["polite"]}, RUDE_ANSWER, "It opens at nine, genius.", [0.1, 0.9],
     [0.4, 0.9], False, "polite still flagged (0.400 < 0.500)"),
    ("must-pass-passes", {"must_pass": ["polite"]}, RUDE_ANSWER, "It opens at nine.", [0.1, 0.9], [0.6, 0.9], True,
     "rewritten"),
    ("must-pass-other-criterion", {"must_pass": ["no-pii"]}, RUDE_ANSWER, "It opens at nine, genius.", [0.1, 0.9],
     [0.4, 0.9], True, "rewritten"),
    ("worse-allowed", {"reject_if_worse": False}, RUDE_ANSWER, "It opens at nine.", [0.1, 0.9], [0.8, 0.3], True,
     "rewritten"),
]


@pytest.mark.parametrize(("policy", "answer", "rewrite", "before", "after", "accepted", "words"),
                         [c[1:] for c in JUDGE_CASES], ids=[c[0] for c in JUDGE_CASES])
def test_judge_rewrite_table(policy, answer, rewrite, before, after, accepted, words):
    got, reason = judge_rewrite(SquadPolicy(**policy), GUARDS, 0, answer, rewrite, np.array(before), np.array(after))
    assert got is accepted and words in reason, reason


def test_one_call_can_narrow_the_criteria_and_tune_thresholds(squad_artifacts):
    squad, backend = make_squad(squad_artifacts)
    (only_pii,) = squad.correct(["q"], [RUDE[0]], criteria=["no-pii"])
    assert not only_pii.changed and backend.calls == []  # polite does not run: the rude answer stays
    assert [v.criterion for v in only_pii.trace.initial] == ["no-pii"]
    (strict,) = squad.correct(["q"], [POLITE[0]], thresholds={"polite": 0.9999})
    assert strict.trace.initial[0].threshold == 0.9999 and strict.trace.initial[0].flagged
    assert squad.guards[0].threshold == 0.5  # the squad's own threshold is untouched
    (lenient,) = squad.correct(["q"], [RUDE[0]], thresholds={"polite": 1e-6})
    assert not lenient.changed
    with pytest.raises(SquadError, match=r"unknown criteria \['rude'\].*'polite', 'no-pii'"):
        squad.correct(["q"], [RUDE[0]], criteria=["rude"])


def test_paragraph_mode_rewrites_only_the_flagged_paragraph(squad_artifacts):
    """rewrite: paragraphs sends the aligner the rude paragraph alone and splices its fix back
    between the untouched rest; the whole-answer mode would have rewritten (and could have
    changed) every paragraph."""
    polite, rude = " ".join(POLITE[:5]), " ".join(RUDE[:4])
    answer = f"{polite}\n\n{rude}\n"
    seen = []

    def polite_writer(request):
        seen.append(request.messages[1].content)
        return FIXED_POLITE

    squad, backend = make_squad(squad_artifacts, {"polite": polite_writer, None: lambda r: ""})
    squad.guards = [replace(g, unit="paragraphs") if g.criterion == "polite" else g for g in squad.guards]
    (r,) = squad.correct(["q"], [answer])
    assert r.changed and r.corrected == f"{polite}\n\n{FIXED_POLITE}\n"
    assert backend.calls == [("polite", 1)]
    assert seen[0].endswith(f"Answer:\n{rude}") and polite not in seen[0]  # stripped, as trained
    # one paragraph, or a config asking for whole answers: the aligner sees the whole answer
    squad.guards = [replace(g, unit="answer") for g in squad.guards]
    seen.clear()
    assert squad.correct(["q"], [answer])[0].corrected == FIXED_POLITE and polite in seen[0]


def test_paragraph_mode_falls_back_to_the_worst_paragraph(squad_artifacts):
    """An answer flagged as a whole whose paragraphs each pass on their own still gets its
    lowest-scoring paragraph rewritten, not nothing; flagged paragraphs all go; a one-piece
    answer goes whole without an inspector call."""
    squad, _ = make_squad(squad_artifacts)
    scores = {"a": 0.9, "b": 0.7, "c": 0.2, "d": 0.4, "e": 0.8}
    scorer = SimpleNamespace(threshold_=0.5, score_answers=lambda p, answers, batch_size: [scores[a] for a in answers])
    guard = Guard("polite", scorer, "polite", unit="paragraphs")
    chosen = squad._pieces_to_rewrite(guard, ["q"] * 3, [["a", "b"], ["c", "d", "e"], ["whole"]])
    assert sorted(chosen) == [(0, 1), (1, 0), (1, 1), (2, 0)]
    member = squad.config.members[0].model_dump()
    assert SquadMember.model_validate(member | {"rewrite": "paragraphs"}).rewrite == "paragraphs"
    with pytest.raises(ValueError, match="rewrite"):
        SquadMember.model_validate(member | {"rewrite": "sentences"})


def test_a_looping_rewrite_is_cut_or_not_used(squad_artifacts):
    """Greedy small aligners fall into loops; an inspector may score a loop of polite sentences
    well, so the squad cuts it where it starts, and drops a rewrite that is loop from its first
    word (serve.degenerate)."""
    loop = (FIXED_POLITE + " ") * 4
    squad, _ = make_squad(squad_artifacts, {"polite": lambda r: loop, None: lambda r: ""}, min_gain=None)
    assert [s.criterion for s in squad.correct(["q"], [RUDE[0]])[0].trace.steps] == ["polite"]
    endless = "and I hope that helps you find the store, " * 4
    squad, _ = make_squad(squad_artifacts, {"polite": lambda r: endless, None: lambda r: ""}, min_gain=None)
    (r,) = squad.correct(["q"], [RUDE[0]])
    assert not r.changed and "looped" in r.trace.steps[0].reason


def test_a_member_leaves_an_answer_to_the_members_it_defers_to(squad_artifacts):
    """polite defers to no-pii: config order would visit polite first; with defer_to only no-pii
    rewrites, and polite stays out after it, though the rewrite is still rude."""
    both = "Shut up, idiot. Her number is 555-0142 and she lives at 12 Elm Street, moron."
    still_rude = "Shut up, idiot. I can't share her details, moron."
    writers = {"polite": lambda r: "Her number is 555-0142 and she lives at 12 Elm Street.",
               "no-pii": lambda r: still_rude, None: lambda r: both}
    squad, _ = make_squad(squad_artifacts, writers, order="config", reject_if_worse=False)
    (r,) = squad.correct(["q"], [both])
    assert [s.criterion for s in r.trace.steps] == ["polite", "no-pii"]
    squad.guards[0] = replace(squad.guards[0], defer_to=("no-pii",))
    (r,) = squad.correct(["q"], [both])
    assert [s.criterion for s in r.trace.steps] == ["no-pii"] and r.corrected == still_rude
    assert {v.criterion: v.flagged for v in r.trace.final}["polite"]
    # an answer no-pii does not flag is polite's to fix
    assert [s.criterion for s in squad.correct(["q"], [RUDE[0]])[0].trace.steps] == ["polite"]
    # no-pii tried and its rewrite was not kept: it lets go, and polite may act
    squad, _ = make_squad(squad_artifacts, {**writers, "no-pii": lambda r: both}, order="config",
                          reject_if_worse=False)
    squad.guards[0] = replace(squad.guards[0], defer_to=("no-pii",))
    (r,) = squad.correct(["q"], [both])
    assert [(s.criterion, s.accepted) for s in r.trace.steps] == [("no-pii", False), ("polite", True)]
    member = {"criterion": "polite", "inspector": "x", "aligner": "y", "defer_to": ["harmless"]}
    with pytest.raises(ValueError, match="defer_to names"):
        SquadConfig.model_validate({"members": [member]})


def test_masks_skip_the_fact_check_and_deferring_members_do_not_veto():
    """A mask or a cut only removes text, so the fact check is for generated rewrites (what a mask
    leaves of a name, "[NAME] Copper", is no new fact to it either); and a member that defers to
    the rewriting one has left the answer to it."""
    answer, masked = "Ask Jane Copper at 555-0142.", "Ask [NAME] Copper at [PHONE]."
    policy = SquadPolicy()
    before, after = np.array([0.9, 0.1]), np.array([0.3, 0.9])
    assert judge_rewrite(policy, GUARDS, 1, answer, masked, before, after) == (False, "rejected: would flag polite")
    pasted = "Ask [NAME] Copper at [PHONE], room 12."
    assert judge_rewrite(policy, GUARDS, 1, answer, pasted, before, after) == (False, "rejected: adds facts 12")
    spans = [GUARDS[0], replace(GUARDS[1], unit="spans")]
    assert judge_rewrite(policy, spans, 1, answer, pasted, before, after) == (False, "rejected: would flag polite")
    spans[0] = replace(spans[0], defer_to=("no-pii",))
    assert judge_rewrite(policy, spans, 1, answer, masked, before, after) == (True, "rewritten")
