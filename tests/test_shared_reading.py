"""One pass for several readers (inspectors/shared_reading.py): inside the scope, probes with other
layers and truncations, a span tagger and a request gate get the states their own passes give,
from one forward pass of the deepest model; the real tokenizer, tiny backbone and sklearn."""

import numpy as np
import pytest
from squad_fixtures import POLITE, RUDE, ScriptedBackend

from inspectors import HiddenProbeInspector
from inspectors.backbone import get_backbone
from inspectors.config import SpanTaggerConfig
from inspectors.embed_logreg import _CACHE
from inspectors.shared_reading import shared_reading
from inspectors.spans import SpanTagger
from serve.config import SquadConfig
from serve.pipeline import Squad

MODEL = "tiny-random-llama"  # two decoder layers
PROMPTS = ["How do I boil an egg?", "Where is the museum?", "How do I boil an egg?", "Tell me a long story."]
ANSWERS = ["Boil it for 9 minutes.", "Second left after the bank, it is free on Sundays.",
           "Eggs take about nine minutes at a rolling boil, then cool them in cold water.",
           " ".join(POLITE)]  # longer than the short probe's 8 answer tokens


class Passes:
    """Counts the forward passes of each cut (by depth) of a backbone the inspectors read."""

    def __init__(self, model: str = MODEL, depths: tuple[int, ...] = (1, 2)):
        self.calls = dict.fromkeys(depths, 0)
        self.hooks = [get_backbone(model, depth)[0].register_forward_hook(self._count(depth)) for depth in depths]

    def reset(self) -> None:
        self.calls = dict.fromkeys(self.calls, 0)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def _count(self, depth):
        def hook(*_):
            self.calls[depth] += 1
        return hook

    def close(self):
        for h in self.hooks:
            h.remove()


@pytest.fixture
def passes():
    counter = Passes()
    yield counter
    counter.close()


def readers():
    short = HiddenProbeInspector(encoder=MODEL, layers=[1], max_answer_tokens=8)
    deep = HiddenProbeInspector(encoder=MODEL, layers=[1, 2], pooling=["answer_mean", "answer_max", "last"])
    tagger = SpanTagger(SpanTaggerConfig(encoder=MODEL, layers=[2], lookahead=1), "no-pii")
    return short, deep, tagger


def read_all(short, deep, tagger):
    """What each reader reads (not its cached feature rows: those would hide a second pass)."""
    pairs = list(zip(PROMPTS, ANSWERS, strict=True))
    return [short._pooled_states(pairs), deep._pooled_states(pairs), *tagger.token_features(PROMPTS, ANSWERS)[0],
            deep._request_states(PROMPTS)]


def test_one_pass_serves_probes_a_tagger_and_a_request_gate(passes):
    short, deep, tagger = readers()
    alone = read_all(short, deep, tagger)
    assert passes.calls[1] > 0 and passes.calls[2] > 0  # the short probe reads its own cut model
    passes.reset()
    tagger.token_features(PROMPTS, ANSWERS)  # the longest truncation, on the deepest model
    one_pass = passes.calls[2]
    passes.reset()
    with shared_reading(short.readings() + deep.readings() + tagger.readings()):
        shared = read_all(short, deep, tagger)
    assert passes.calls == {1: 0, 2: one_pass}  # the requests' states come from it too
    assert [x.shape for x in shared] == [x.shape for x in alone]
    for a, b in zip(alone, shared, strict=True):
        assert np.allclose(a, b, atol=1e-5)
    assert not np.allclose(alone[0], read_all(HiddenProbeInspector(encoder=MODEL, layers=[1]), deep, tagger)[0])


def test_a_reading_the_scope_does_not_cover_reads_alone(passes):
    short, deep, _ = readers()
    pairs = list(zip(PROMPTS, ANSWERS, strict=True))
    passes.reset()
    alone = deep._pooled_states(pairs)
    short._pooled_states(pairs)
    own = dict(passes.calls)
    passes.reset()
    with shared_reading(short.readings()):  # layer 1 only, 8 answer tokens: deep needs more
        assert np.allclose(deep._pooled_states(pairs), alone, atol=1e-5)
        short._pooled_states(pairs)
    assert passes.calls == own  # each read as alone: the one the scope covers has no one to share with


def test_the_squad_inspects_its_members_in_one_pass(tmp_path, passes):
    """Squad.inspect scores every member on one pass per batch, with the scores each member's
    inspector gives alone."""
    members = probe_members(tmp_path, MODEL, (("polite", [1], 8), ("harmless", [2], 256)))
    cfg = SquadConfig.model_validate({"backend": {"type": "transformers", "model": MODEL}, "base": "none",
                                      "members": members, "policy": {"inspect_batch_size": 3}})
    squad = Squad.from_config(cfg, backend=ScriptedBackend({}))
    new_prompts, new_answers = PROMPTS + ["q"], ANSWERS + ["You idiot, read the manual."]
    _CACHE.clear()
    alone = np.column_stack([g.inspector.predict_proba(new_prompts, new_answers)[:, 1] for g in squad.guards])
    _CACHE.clear()
    passes.reset()
    for i in (0, 3):  # the deep member alone, batch by batch as the squad reads
        squad.guards[1].inspector.predict_proba(new_prompts[i:i + 3], new_answers[i:i + 3])
    one_pass = passes.calls[2]
    _CACHE.clear()
    passes.reset()
    scores = squad.inspect(new_prompts, new_answers)
    assert passes.calls == {1: 0, 2: one_pass}  # the shallow member reads nothing itself
    assert np.allclose(scores, alone, atol=1e-5)


def probe_members(root, encoder, specs, **member):
    """Squad members whose hidden-probe inspectors read `encoder`, fitted on the toy rude/polite
    answers: (criterion, layers, answer tokens) each."""
    prompts = [f"question {k}" for k in range(len(RUDE) + len(POLITE))]
    answers, labels = RUDE + POLITE, [0] * len(RUDE) + [1] * len(POLITE)
    members = []
    for criterion, layers, longest in specs:
        probe = HiddenProbeInspector(encoder=encoder, layers=layers, max_answer_tokens=longest, cv_folds=2,
                                     criterion=criterion).fit(prompts, answers, labels)
        members.append({"criterion": criterion, "inspector": str(probe.save(root / criterion)), "rewrite": "cut",
                        **member})
    return members


@pytest.fixture(scope="module")
def smollm2_squad(smollm2, tmp_path_factory):
    """A squad on the real SmolLM2 whose members' probes read SmolLM2 too (base: shared), with
    nothing flagged (threshold 0): inspection only. Yields it and the `Passes` of the inspectors'
    own SmolLM2 copies."""
    from aligners import models
    from aligners.backends.transformers_local import TransformersBackend
    from aligners.config import TransformersBackendConfig

    model, tokenizer = smollm2
    members = probe_members(tmp_path_factory.mktemp("members"), models.SMOLLM2,
                            (("polite", [3], 8), ("harmless", [12, 30], 256)), threshold=0.0)
    cfg = SquadConfig.model_validate({"backend": {"type": "transformers", "model": models.SMOLLM2},
                                      "members": members, "policy": {"base_params": {"max_tokens": 40}}})
    squad = Squad.from_config(cfg, backend=TransformersBackend(TransformersBackendConfig(), model=model,
                                                               tokenizer=tokenizer))
    passes = Passes(models.SMOLLM2, (3, 30))
    yield squad, passes
    passes.close()


ASKED = ["What is the capital of France?", "What is 2+2? Answer in one short sentence."]


def test_generated_answers_are_inspected_from_the_states_kept_while_generating(smollm2_squad):
    """Squad.generate: the base keeps the members' layers while answering, and the inspection
    runs no pass of its own, with the scores a pass gives."""
    squad, passes = smollm2_squad
    _CACHE.clear()
    passes.reset()
    results = squad.generate(ASKED)
    assert passes.total == 0  # every reader served from what generation kept
    _CACHE.clear()
    read = squad.inspect(ASKED, [r.original for r in results])
    assert passes.total > 0  # the same answers, supplied: read by a pass
    kept = np.array([[v.score for v in r.trace.initial] for r in results])
    assert np.allclose(kept, read, atol=1e-4)


def test_the_proxy_inspects_its_local_base_answers_from_their_kept_states(smollm2_squad):
    """Through the OpenAI-compatible server (real HTTP): a one-message chat answered by the
    squad's own base is inspected from the states kept while generating; with a system message
    the inspectors' rendering of the request differs, so they read it themselves."""
    from test_server_reliability import aligners_server, client

    from aligners import models
    from serve.server_config import ServerConfig

    squad, passes = smollm2_squad
    with aligners_server(ServerConfig(squad="<injected>"), squad) as (root, _):
        c = client(root)
        _CACHE.clear()
        passes.reset()
        out = c.chat.completions.create(model=models.SMOLLM2, messages=[{"role": "user", "content": ASKED[0]}])
        assert "Paris" in out.choices[0].message.content and passes.total == 0
        assert set(out.aligners["choices"][0]["scores"]["before"]) == {"polite", "harmless"}
        c.chat.completions.create(model=models.SMOLLM2, messages=[{"role": "system", "content": "Be brief."},
                                                             {"role": "user", "content": ASKED[1]}])
        assert passes.total > 0
