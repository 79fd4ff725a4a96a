"""Cutting members (serve.cutting): the inspector picks the sentences to cut, nothing is
generated, and every byte not cut stays as it was."""

from types import SimpleNamespace

import pytest
from squad_fixtures import POLITE, RUDE, ScriptedBackend

from serve.config import SquadConfig, SquadMember
from serve.cutting import cut_sentences
from serve.pipeline import Squad

INSULTS = ("idiot", "moron", "genius")


def insult_scorer(threshold=0.9):
    """P(aligned) falls 0.3 per insult word: a scorer whose best cut is known."""
    def score(prompts, answers, batch_size):
        return [max(0.0, 1.0 - 0.3 * sum(a.lower().count(w) for w in INSULTS)) for a in answers]
    return SimpleNamespace(threshold_=threshold, score_answers=score, calls=0)


def test_cuts_the_worst_sentences_until_the_answer_passes():
    scorer = insult_scorer()
    answer = "Opens at nine. You idiot, idiot. Bring the receipt.\n\nAsk at the desk, moron.\n\nThanks!"
    (out,) = cut_sentences(scorer, ["q"], [answer], target=0.9)
    # the double insult goes first, then the paragraph that holds the other; the breaks stay
    assert out == "Opens at nine. Bring the receipt.\n\nThanks!"
    clean = "Opens at nine. Bring the receipt."
    assert cut_sentences(scorer, ["q"], [clean], target=0.9) == [clean]


def test_limits_max_cuts_which_sentences_and_the_last_sentence():
    scorer = insult_scorer()
    answer = "Idiot. Moron. Multiply by 9/5 and add 32, genius. Fine."
    assert cut_sentences(scorer, ["q"], [answer], 0.9, max_cuts=1) == ["Moron. Multiply by 9/5 and add 32, genius. Fine."]
    assert cut_sentences(scorer, ["q"], [answer], 0.9, which="without-facts") == [
        "Multiply by 9/5 and add 32, genius. Fine."]
    assert cut_sentences(scorer, ["q"], [answer], 0.9, which="with-facts") == ["Idiot. Moron. Fine."]
    assert cut_sentences(scorer, ["q"], ["You idiot."], 0.9) == ["You idiot."]  # one sentence: nothing to cut
    # a cut that does not raise the score stops the search
    assert cut_sentences(scorer, ["q"], ["Hello there. Genius, genius."], 0.99) == ["Hello there."]


def test_a_squad_member_that_cuts_with_a_real_inspector(squad_artifacts):
    """rewrite: cut with the real MiniLM polite inspector: the rude sentence goes, the polite ones
    stay byte for byte, and no aligner runs (the backend sees no request)."""
    cfg = SquadConfig.model_validate({
        "backend": {"type": "transformers", "model": "tiny-random-llama"}, "base": "none",
        "members": [{"criterion": "polite", "inspector": str(squad_artifacts / "inspectors" / "polite"),
                     "rewrite": "cut"}],
    })
    backend = ScriptedBackend({})
    squad = Squad.from_config(cfg, backend=backend)
    answer = f"{POLITE[0]} {RUDE[3]}\n\n{POLITE[1]}"
    (r,) = squad.correct(["q"], [answer])
    assert r.changed and r.corrected == f"{POLITE[0]}\n\n{POLITE[1]}"
    assert r.trace.steps[0].accepted and r.trace.final[0].score > r.trace.initial[0].score
    assert backend.calls == []
    assert squad.correct(["q"], [POLITE[2]])[0].corrected == POLITE[2]
    # the zero-shot baseline of a cutting member is a prompted paragraph rewrite
    (prompted,) = cfg.with_prompted_aligners().members
    assert (prompted.aligner, prompted.rewrite) == ("prompted", "paragraphs")


def test_cut_members_name_no_aligner_and_others_need_one():
    base = {"criterion": "polite", "inspector": "x"}
    assert SquadMember.model_validate(base | {"rewrite": "cut", "cut": {"max_cuts": 2}}).cut.max_cuts == 2
    with pytest.raises(ValueError, match="runs no aligner"):
        SquadMember.model_validate(base | {"rewrite": "cut", "aligner": "artifacts/aligners/polite"})
    with pytest.raises(ValueError, match="aligner is required"):
        SquadMember.model_validate(base)
