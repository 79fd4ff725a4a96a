"""Offline registry: every offline model loads, unknown names fail fast, the GGUF cache is safe."""

import time

import pytest
import torch

from aligners import models


def test_tiny_random_llama_is_seeded_and_small(tiny_lm):
    model, tokenizer = tiny_lm
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    again, _ = models.load_causal_lm(models.TINY_LLAMA)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_smollm2_loads_from_wheel_with_its_chat_template(smollm2):
    model, tokenizer = smollm2
    assert model.config.num_hidden_layers == 30
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user" in text


def test_minilm_encodes_to_384_dims():
    encoder = models.load_sentence_encoder(models.MINILM)
    emb = encoder.encode(["a cat sat on the mat", "a dog lay on the rug", "tax law"])
    assert emb.shape == (3, 384)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2]  # a real encoder, not random weights


@pytest.mark.timeout(30)
def test_unknown_model_fails_fast_listing_offline_names():
    start = time.perf_counter()
    with pytest.raises(models.ModelNotFoundError) as err:
        models.load_causal_lm("some-org/definitely-not-cached-model")
    assert time.perf_counter() - start < 10
    for name in models.OFFLINE_MODELS:
        assert name in str(err.value)


def test_local_path_passes_through(tmp_path):
    assert models.resolve_path(str(tmp_path)) == tmp_path


def test_gguf_cache_converts_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNERS_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    first = models.smollm2_dir()
    convert_s = time.perf_counter() - t0
    assert (first / "config.json").is_file() and list(first.glob("*.safetensors"))
    assert first.name.startswith(f"{models.SMOLLM2}-{models.CACHE_FORMAT}-")

    def must_not_convert(target):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(models, "_convert_gguf_to_cache", must_not_convert)
    t1 = time.perf_counter()
    model, _ = models.load_causal_lm(models.SMOLLM2)
    reuse_s = time.perf_counter() - t1
    assert model.config.num_hidden_layers == 30
    print(f"gguf conversion {convert_s:.1f}s, cached load {reuse_s:.2f}s, ratio {convert_s / reuse_s:.0f}x")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp folders left


def test_gguf_cache_crash_mid_write_leaves_nothing(tmp_path, monkeypatch, tiny_lm):
    """A failure after the weights are written but before the rename leaves no (half) cache."""
    import transformers

    monkeypatch.setenv("ALIGNERS_CACHE", str(tmp_path))
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_lm[0]
    )

    def crash(self, *args, **kwargs):
        raise RuntimeError("simulated crash while writing the tokenizer")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        models.smollm2_dir()
    assert list(tmp_path.iterdir()) == []
