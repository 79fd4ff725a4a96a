"""The local transformers backend: batching, sampling params, stop strings, multi-LoRA routing,
cancellation, the context bound and the adapter self-test — on the tiny random Llama (real tokenizer, real peft)."""

import threading
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model

from aligners import models
from aligners.backends import BackendError, GenerationRequest, SamplingParams, build_backend
from aligners.backends.base import GenerationCancelled, PromptTooLong, cancel_scope
from aligners.backends.transformers_local import (
    AdapterSelfTestError,
    TransformersBackend,
    cut_at_stop,
)
from aligners.config import TransformersBackendConfig

GREEDY = SamplingParams(max_tokens=6)


def save_adapter(path, trained: bool, seed: int, targets=("q_proj", "v_proj")):
    """A LoRA adapter for the tiny model; `trained=False` keeps peft's zero init (a no-op)."""
    torch.manual_seed(seed)
    model, _ = models.load_causal_lm(models.TINY_LLAMA)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=not trained)
    get_peft_model(model, cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": save_adapter(root / "a", trained=True, seed=1),
        "b": save_adapter(root / "b", trained=True, seed=2),
        "noop": save_adapter(root / "noop", trained=False, seed=3),
    }


@pytest.fixture()
def backend(tiny_lm):
    model, tokenizer = models.load_causal_lm(models.TINY_LLAMA)  # fresh: peft wraps it in place
    return TransformersBackend(TransformersBackendConfig(model=models.TINY_LLAMA), model=model, tokenizer=tokenizer)


def test_batch_matches_one_by_one_and_keeps_order(backend):
    reqs = [
        GenerationRequest.chat("hello there", params=GREEDY),
        GenerationRequest.chat("a much longer question about the weather in spring", params=GREEDY),
        GenerationRequest(prompt="The cat sat", params=GREEDY),
        GenerationRequest.chat("hello there", system="Answer briefly. " * 20, params=GREEDY),
    ]
    batched = backend.generate(reqs)
    single = [backend.generate([r])[0] for r in reqs]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.completion_tokens == 6 and g.finish_reason == "length" for g in batched)
    assert batched[1].prompt_tokens > batched[0].prompt_tokens
    assert batched[3].prompt_tokens > batched[0].prompt_tokens  # the system message counts
    assert len({g.text for g in batched}) == 4  # the prompts really steer the tiny model


def test_max_batch_size_chunks_requests(tiny_lm):
    model, tokenizer = models.load_causal_lm(models.TINY_LLAMA)
    small = TransformersBackend(
        TransformersBackendConfig(model=models.TINY_LLAMA, max_batch_size=2), model=model, tokenizer=tokenizer
    )
    calls = []
    original = small._generate_batch
    small._generate_batch = lambda batch, layers: calls.append(len(batch)) or original(batch, layers)
    out = small.generate([GenerationRequest.chat(f"q{i}", params=GREEDY) for i in range(5)])
    assert len(out) == 5 and calls == [2, 2, 1]


def test_seeded_sampling_is_reproducible_and_differs_by_seed(backend):
    def sample(seed):
        p = SamplingParams(max_tokens=12, temperature=1.0, seed=seed)
        return backend.generate([GenerationRequest.chat("tell me a story", params=p)])[0].text

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1


def test_repetition_penalty_reaches_generate(backend):
    """A random tiny model rarely repeats by itself; a penalty below 1 *rewards* repeats, so it
    must collapse the output onto a few tokens if the knob reaches generate()."""
    def distinct_share(penalty):
        p = SamplingParams(max_tokens=48, repetition_penalty=penalty)
        [out] = backend.generate([GenerationRequest.chat("say something", params=p)])
        ids = backend.tokenizer(out.text, add_special_tokens=False)["input_ids"]
        return len(set(ids)) / len(ids)

    assert distinct_share(0.05) + 0.2 < distinct_share(1.0)


def test_cut_at_stop_uses_earliest_stop():
    assert cut_at_stop("abc STOP def END", ["END", "STOP"]) == ("abc ", True)
    assert cut_at_stop("no stops here", ["zz"]) == ("no stops here", False)


def test_stop_strings_on_real_smollm2(smollm2):
    model, tokenizer = smollm2
    backend = TransformersBackend(TransformersBackendConfig(), model=model, tokenizer=tokenizer)
    params = SamplingParams(max_tokens=24, stop=["Paris"])
    out = backend.generate([GenerationRequest.chat("What is the capital of France?", params=params)])[0]
    free = backend.generate([GenerationRequest.chat("What is the capital of France?", params=GREEDY.model_copy(update={"max_tokens": 24}))])[0]
    assert "Paris" in free.text and free.finish_reason == "stop"
    assert "Paris" not in out.text and out.text == free.text[: free.text.index("Paris")]


def test_adapters_route_per_request_in_mixed_batches(backend, adapters):
    backend.load_adapter("a", adapters["a"])
    backend.load_adapter("b", adapters["b"])
    assert backend.adapters() == ["a", "b"]
    prompt = "hello there"
    reqs = [GenerationRequest.chat(prompt, adapter=name, params=GREEDY) for name in (None, "a", "b")]
    mixed = [g.text for g in backend.generate(reqs)]
    alone = [backend.generate([r])[0].text for r in reqs]
    assert mixed == alone
    assert len(set(mixed)) == 3  # base, a and b each answer differently
    # the states kept per request come from the model that request ran on (the read-back step included)
    outs, kept = backend.generate_with_states(reqs, [1])
    assert [o.text for o in outs] == mixed
    with torch.no_grad(), backend.peft_model.disable_adapter():
        passes = [backend.model.model(input_ids=torch.tensor([k.ids]), output_hidden_states=True).hidden_states[1][0]
                  for k in kept]
    assert torch.allclose(kept[0].states[1], passes[0], atol=1e-4)
    assert not torch.allclose(kept[1].states[1], passes[1], atol=1e-4)  # adapter a's own layer output


def test_self_test_rejects_noop_adapter_and_unloads_it(backend, adapters):
    with pytest.raises(AdapterSelfTestError, match="does not change"):
        backend.load_adapter("noop", adapters["noop"])
    assert backend.adapters() == []
    backend.load_adapter("a", adapters["a"])  # the backend is still usable afterwards
    with pytest.raises(AdapterSelfTestError):
        backend.load_adapter("noop", adapters["noop"])
    assert backend.adapters() == ["a"]
    assert backend.self_test("a") > 1e-6


def test_unknown_adapter_and_bad_path_are_clear_errors(backend, tmp_path):
    with pytest.raises(BackendError, match="unknown adapter 'nope'"):
        backend.generate([GenerationRequest.chat("hi", adapter="nope", params=GREEDY)])
    with pytest.raises(BackendError, match="cannot load adapter"):
        backend.load_adapter("x", str(tmp_path / "missing"))


def test_build_backend_from_config_dict_loads_adapters(adapters, tiny_lm):
    backend = build_backend({"type": "transformers", "model": "tiny-random-llama", "adapters": {"a": adapters["a"]}})
    assert backend.adapters() == ["a"]
    out = backend.generate([GenerationRequest(prompt="x", adapter="a", params=GREEDY)])
    assert out[0].completion_tokens == 6


def test_async_generate_matches_sync(backend):
    import asyncio

    reqs = [GenerationRequest.chat("hi", params=GREEDY)]
    assert asyncio.run(backend.agenerate(reqs))[0].text == backend.generate(reqs)[0].text


def test_a_set_cancel_event_stops_generation_within_a_step(backend):
    long = GenerationRequest.chat("q", params=SamplingParams(max_tokens=400, temperature=1.0, seed=1))
    event = threading.Event()
    threading.Timer(0.2, event.set).start()
    t0 = time.monotonic()
    with pytest.raises(GenerationCancelled), cancel_scope(event):
        backend.generate([long, long])
    cancelled_s = time.monotonic() - t0
    t0 = time.monotonic()
    full = backend.generate([long])[0]  # outside any scope: runs to max_tokens
    assert full.completion_tokens == 400
    assert cancelled_s < 0.2 + (time.monotonic() - t0) / 4, "the cancelled run went on generating"


def test_a_prompt_longer_than_the_context_is_refused_before_generating(backend):
    too_long = GenerationRequest.chat("word " * 2000, params=SamplingParams(max_tokens=4))
    with pytest.raises(PromptTooLong, match=r"the prompt is \d+ tokens and max_tokens is 4.*context holds 1024"):
        backend.generate([too_long])
    fits_only_without_room = GenerationRequest.chat("word " * 500, params=SamplingParams(max_tokens=600))
    with pytest.raises(PromptTooLong, match="max_tokens is 600"):
        backend.generate([fits_only_without_room])
    assert backend.generate([GenerationRequest.chat("word " * 500, params=GREEDY)])[0].completion_tokens == 6


def test_states_kept_while_generating_match_one_pass_over_the_sequence(smollm2, backend):
    """generate_with_states: each answer's layer outputs from its own generation, as one forward
    pass over request + answer computes them (left padding and all), an answer cut at max_tokens
    included."""
    model, tokenizer = smollm2
    real = TransformersBackend(TransformersBackendConfig(), model=model, tokenizer=tokenizer)
    params = SamplingParams(max_tokens=40)
    requests = [GenerationRequest.chat(q, params=params) for q in (
        "What is the capital of France?", "What is 2+2? Answer in one short sentence.", "Tell me a long story.")]
    outs, kept = real.generate_with_states(requests, [3, 30])
    assert [o.text for o in outs] == [o.text for o in real.generate(requests)]
    assert [o.finish_reason for o in outs] == ["stop", "stop", "length"]
    for out, states in zip(outs, kept, strict=True):
        assert states.states.keys() == {3, 30}
        answer = tokenizer(out.text, add_special_tokens=False)["input_ids"]
        assert states.ids[-len(answer):] == answer
        with torch.no_grad():
            one_pass = model.model(input_ids=torch.tensor([states.ids]), output_hidden_states=True).hidden_states
        assert states.states[3].shape == (len(states.ids), model.config.hidden_size)
        assert torch.allclose(states.states[3], one_pass[3][0], rtol=1e-4, atol=1e-3)
        # the last entry of output_hidden_states has the final norm applied; the kept output has not
        assert torch.allclose(model.model.norm(states.states[30]), one_pass[30][0], rtol=1e-4, atol=1e-3)
    with pytest.raises(BackendError, match="layers must be within"):
        real.generate_with_states(requests, [31])
    assert backend.states_model == (models.TINY_LLAMA, "float32", "cpu")
