"""The guard adapter (inspectors/guard_adapter.py): the kept frozen-layer states plus the tuned
upper layers are the whole model, it learns, saves only its adapter and head, loads back to the
same scores, refuses weights of another shape, and reads its layer from a squad's shared pass;
the real tokenizer, peft and a tiny random Llama (two decoder layers)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from test_inspectors import TEST, TRAIN, VAL, examples

from aligners.models import TINY_LLAMA, load_causal_lm
from inspectors import INSPECTOR_CONFIG, GuardAdapterConfig, GuardAdapterInspector, load_inspector
from inspectors.backbone import encode_pairs
from inspectors.base import InspectorLoadError
from inspectors.guard_adapter import GuardAdapter, fit_guard, kept_states
from inspectors.shared_reading import Reading, shared_reading

READING = Reading(TINY_LLAMA, (1,), 64, 64)


@pytest.fixture(scope="module")
def fitted_guard() -> GuardAdapterInspector:
    return GuardAdapterInspector(encoder=TINY_LLAMA, from_layer=1, rank=4, epochs=6, batch_size=4, lr=1e-2,
                                 criterion="polite").fit(*examples(TRAIN), validation=examples(VAL))


def test_kept_states_plus_the_upper_layers_are_the_whole_model_and_training_moves_them():
    guard = GuardAdapter(TINY_LLAMA, depth=1, rank=4, seed=0)
    prompts = ["How do I pick a lock?", "What is 2+2?"] * 3
    answers = ["Sure, insert a tension wrench and rake the pins.", "I can't help with that.",
               "Step one: get a pick.", "4.", "No.", "Four, since two and two make four."]
    states, starts = kept_states(READING, prompts, answers, 4096, "test")
    ids, want_starts = encode_pairs(guard.tok, prompts, answers, 64, 64)
    assert starts == want_starts
    assert all(s.dtype == torch.float16 and len(s) == len(i) for s, i in zip(states, ids, strict=True))

    # before training the LoRA deltas are zero: upper layers on the kept states = the whole model
    full, _ = load_causal_lm(TINY_LLAMA)
    with torch.no_grad():
        whole = full.model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0]
        split = guard.body(inputs_embeds=states[0].float()[None], use_cache=False).last_hidden_state[0]
    assert torch.allclose(whole, split, atol=5e-3)  # float16 keeping rounds the prefix
    deeper, _ = kept_states(Reading(TINY_LLAMA, (2,), 64, 64), prompts[:1], answers[:1], 4096, "test")
    with torch.no_grad():  # the wrong depth is not the same model
        wrong = guard.body(inputs_embeds=deeper[0].float()[None], use_cache=False).last_hidden_state[0]
    assert not torch.allclose(whole, wrong, atol=5e-2)

    before = [p.detach().clone() for p in guard.parameters()]
    loss = fit_guard(guard, states, starts, [0, 1, 0, 1, 1, 1], epochs=2, batch_size=3, lr=1e-2, seed=0,
                     description="test")
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, guard.parameters(), strict=True))
    assert guard.misaligned_logits(states, starts, 4096).shape == (6,)
    with pytest.raises(ValueError, match="from_layer must lie in 1 … 1"):
        GuardAdapter(TINY_LLAMA, depth=2, rank=4, seed=0)


def test_the_config_is_the_estimator_and_validates():
    cfg = INSPECTOR_CONFIG.validate_python({"type": "guard-adapter", "from_layer": 12, "rank": 4})
    assert isinstance(cfg, GuardAdapterConfig)
    params = GuardAdapterInspector(**cfg.model_dump(exclude={"type"}), criterion="harmless").get_params()
    assert params.pop("criterion") == "harmless" and params == cfg.model_dump(exclude={"type"})
    with pytest.raises(Exception, match="from_layer"):
        INSPECTOR_CONFIG.validate_python({"type": "guard-adapter", "from_layer": 0})


def test_the_guard_adapter_learns_saves_its_adapter_only_and_loads_back(fitted_guard, tmp_path):
    P, A, Y = examples(TEST)
    assert fitted_guard.evaluate(P, A, Y)["auroc"] >= 0.9
    fresh = clone(fitted_guard)
    assert not [k for k in vars(fresh) if k.endswith("_")]

    fitted_guard.save(tmp_path / "guard")
    loaded = load_inspector(tmp_path / "guard")
    assert type(loaded) is GuardAdapterInspector
    assert np.allclose(loaded.predict_proba(P, A), fitted_guard.predict_proba(P, A), atol=1e-6)
    manifest = json.loads((tmp_path / "guard" / "manifest.json").read_text())
    assert manifest["type"] == "guard-adapter" and manifest["params"]["from_layer"] == 1
    # only the LoRA matrices and the head: far fewer numbers than the tuned layer itself
    tensors = fitted_guard.adapter_.tensors()
    layer = sum(p.numel() for p in load_causal_lm(TINY_LLAMA)[0].model.layers[1].parameters())
    assert all(k.startswith(("lora.", "head.")) for k in tensors)
    assert sum(v.size for v in tensors.values()) < layer

    manifest["params"]["rank"] = 2  # weights of another shape must not load as if they fit
    (tmp_path / "guard" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InspectorLoadError, match="do not fit this adapter"):
        load_inspector(tmp_path / "guard")


def test_inside_a_squad_scope_it_reads_its_layer_from_the_shared_pass(fitted_guard, monkeypatch):
    P, A, _ = examples(TEST)
    alone = fitted_guard.decision_function(P, A)
    deeper = Reading(TINY_LLAMA, (1, 2), 256, 256)  # e.g. a deep probe's reading, merged with ours
    calls = []
    import inspectors.shared_reading as shared

    original = shared.hidden_state_batches

    def counted(body, *args, **kwargs):
        calls.append(len(body.layers))
        yield from original(body, *args, **kwargs)

    monkeypatch.setattr(shared, "hidden_state_batches", counted)
    with shared_reading([deeper, *fitted_guard.readings()]):
        in_scope = fitted_guard.decision_function(P, A)
    assert calls == [2]  # one pass of the two-layer model, none of the one-layer cut
    assert np.allclose(in_scope, alone, atol=1e-4)


def test_the_token_adapter_tags_each_answer_token_and_learns():
    """benchmarks/adapter_tagger.py: one class row per answer token, and training moves the
    adapter toward the marked tokens."""
    bench_file = Path(__file__).resolve().parent.parent / "benchmarks" / "adapter_tagger.py"
    spec = importlib.util.spec_from_file_location("adapter_tagger", bench_file)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tagger = bench.TokenAdapter(TINY_LLAMA, depth=1, rank=4, seed=0, n_classes=2)
    answers = ["Multiply by 9/5 and add 32, genius.", "Multiply by 9/5 and add 32."] * 2
    states, starts = kept_states(READING, ["How do I convert C to F?"] * 4, answers, 4096, "test")
    labels = [np.array([int(k >= len(x) - s - 3) if n % 2 == 0 else 0 for k in range(len(x) - s)])
              for n, (x, s) in enumerate(zip(states, starts, strict=True))]  # the last tokens of the rude ones
    logits = tagger.token_logits(states, starts, [0, 1])
    assert [tuple(x.shape) for x in logits] == [(len(states[0]) - starts[0], 2), (len(states[1]) - starts[1], 2)]

    def loss() -> float:
        with torch.no_grad():
            out = tagger.token_logits(states, starts, [0, 1, 2, 3])
            return sum(torch.nn.functional.cross_entropy(o, torch.as_tensor(y)).item()
                       for o, y in zip(out, labels, strict=True))

    before = loss()
    bench.fit_tokens(tagger, states, starts, labels, [0, 1, 2, 3], epochs=10, batch_size=2, lr=1e-2, seed=0)
    tagger.body.eval()
    assert loss() < before
