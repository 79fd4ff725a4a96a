"""Aligner training on the tiny Llama: masking, layer choice, checkpoints/resume, early stopping,
TAIA view and merged export — real tokenizer, real peft, safetensors only."""

import json

import pytest
import torch
from aligner_data import toy_pairs
from safetensors.torch import load_file

from aligners import models
from aligners.artifact import AlignerArtifact, export_merged
from aligners.backends import GenerationRequest, SamplingParams
from aligners.backends.transformers_local import TransformersBackend
from aligners.config import TransformersBackendConfig
from aligners.formatting import IGNORE_INDEX, tokenize_pair
from aligners.lora import eval_pairs, training_pairs
from aligners.manifest import ManifestError
from aligners.train import train_aligner
from aligners.train_config import AlignerTrainConfig


def tiny(num_layers=2):
    return models.load_causal_lm(models.TINY_LLAMA, num_layers=num_layers)


def cfg(**kw):
    base = {"base": models.TINY_LLAMA, "layers": "all", "batch_size": 4, "max_steps": 4, "eval_every": 2,
                "lora_dropout": 0.0, "learning_rate": 5e-3, "checkpoint_every": 2}
    return AlignerTrainConfig(**{**base, **kw})


def test_loss_is_only_on_the_corrected_answer(tiny_lm):
    _, tokenizer = tiny_lm
    pair = toy_pairs(1)[0]
    ex = tokenize_pair(tokenizer, pair, max_length=256)
    n_masked = sum(1 for lab in ex.labels if lab == IGNORE_INDEX)
    target = [lab for lab in ex.labels if lab != IGNORE_INDEX]
    assert ex.labels[:n_masked] == [IGNORE_INDEX] * n_masked  # masked prefix, then the target
    assert tokenizer.decode(target) == pair.aligned + tokenizer.eos_token
    prefix = tokenizer.decode(ex.input_ids[:n_masked])
    assert pair.misaligned in prefix and pair.prompt in prefix and f"'{pair.criterion}'" in prefix
    short = tokenize_pair(tokenizer, pair, max_length=12)
    assert len(short.input_ids) == 12 and short.labels[-1] == tokenizer.eos_token_id
    assert ex.fits and not short.fits  # training leaves cut pairs out


def test_cut_answer_keeps_the_question_and_the_answers_ends_for_a_refusal(tiny_lm):
    _, tokenizer = tiny_lm
    steps = " ".join(f"Step {i}: mix part {i} with part {i + 1}." for i in range(40))
    refusal = toy_pairs(1, "harmless")[0].model_copy(update={
        "prompt": "How do I make the thing?", "misaligned": f"Sure! {steps} Enjoy your thing!",
        "aligned": "I can't help with making that; here is how to stay safe instead."})
    whole = tokenize_pair(tokenizer, refusal, max_length=1024)
    assert whole.fits and not whole.answer_cut
    limit = len(whole.input_ids) - 400  # the answer is about 640 tokens
    assert not tokenize_pair(tokenizer, refusal, max_length=limit).fits  # left out by default
    cut = tokenize_pair(tokenizer, refusal, max_length=limit, cut_answer=True)
    assert cut.fits and cut.answer_cut and len(cut.input_ids) <= limit
    prefix = tokenizer.decode([t for t, lab in zip(cut.input_ids, cut.labels, strict=True) if lab == IGNORE_INDEX])
    assert "'harmless'" in prefix and refusal.prompt in prefix  # the system prompt and question stay
    assert "Sure! Step 0: mix part 0" in prefix and "Enjoy your thing!" in prefix and "[…]" in prefix
    assert "Step 20: mix part 20" not in prefix  # the middle is what goes
    assert tokenizer.decode([lab for lab in cut.labels if lab != IGNORE_INDEX]) == refusal.aligned + tokenizer.eos_token
    # a target that copies its answer (keep-as-is) would learn to write what it cannot see: left out
    keep = refusal.model_copy(update={"aligned": refusal.misaligned})
    assert not tokenize_pair(tokenizer, keep, max_length=limit + 200, cut_answer=True).fits


def test_training_pairs_add_keep_as_is_and_cap_benign():
    pairs = toy_pairs(30)
    n_corr = sum(p.needs_correction for p in pairs)
    out = training_pairs(pairs, cfg(keep_as_is_fraction=0.5, max_benign=3))
    keep = [p for p in out if p.id.endswith("-keep")]
    assert len(keep) == round(0.5 * n_corr)
    assert all(p.misaligned == p.aligned for p in keep)
    assert sum(1 for p in out if not p.needs_correction and not p.id.endswith("-keep")) == 3


def test_training_lowers_eval_loss_and_writes_a_safetensors_artifact(tmp_path):
    model, tokenizer = tiny()
    manifest = train_aligner(cfg(max_steps=30, eval_every=10), toy_pairs(24), toy_pairs(8), tmp_path,
                             model=model, tokenizer=tokenizer, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    assert evals[-1] < evals[0]
    assert manifest["metrics"]["best_eval_loss"] == min(evals)
    assert 0 < manifest["metrics"]["eval_s"] < manifest["metrics"]["wall_s"]  # three evaluations, timed apart
    assert manifest["layers"] == [0, 1] and manifest["criterion"] == "polite"
    data = json.loads((tmp_path / "manifest.json").read_text())["data"]
    assert data["train_pairs"] == 24 and data["too_long"] == 0
    files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pickle")) for f in files)
    assert not (tmp_path / "checkpoint").exists()


def test_cut_long_answers_trains_on_refusals_that_do_not_fit(tmp_path):
    model, tokenizer = tiny()
    rant = " Honestly, how do you not know this already?" * 4
    pairs = [p.model_copy(update={"misaligned": p.misaligned + rant}) if p.needs_correction else p for p in toy_pairs(12)]
    fixes = [p for p in pairs if p.needs_correction]
    limit = min(len(tokenize_pair(tokenizer, p, 4096).input_ids) for p in fixes) - 10  # the good ones fit
    dropped = train_aligner(cfg(max_steps=1, max_length=limit), pairs, pairs[:4], tmp_path / "a",
                            model=model, tokenizer=tokenizer, progress=False)["data"]
    kept = train_aligner(cfg(max_steps=1, max_length=limit, cut_long_answers=True), pairs, pairs[:4], tmp_path / "b",
                         model=model, tokenizer=tokenizer, progress=False)["data"]
    assert dropped["too_long"] == len(fixes) and dropped["answers_cut"] == 0
    assert kept["too_long"] == 0 and kept["answers_cut"] == len(fixes)
    assert kept["examples"] == dropped["examples"] + len(fixes)


def test_explicit_layers_limit_the_adapter(tmp_path):
    model, tokenizer = tiny(num_layers=4)
    train_aligner(cfg(layers=[1, 3]), toy_pairs(12), toy_pairs(4), tmp_path, model=model, tokenizer=tokenizer, progress=False)
    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    layers = {int(k.split(".layers.")[1].split(".")[0]) for k in keys}
    assert layers == {1, 3}
    with pytest.raises(ValueError, match="do not exist"):
        train_aligner(cfg(layers=[7]), toy_pairs(12), toy_pairs(4), tmp_path / "x", model=tiny()[0], tokenizer=tokenizer)


def test_refuses_to_overwrite_and_resume_needs_a_checkpoint(tmp_path):
    model, tokenizer = tiny()
    train_aligner(cfg(max_steps=1), toy_pairs(8), toy_pairs(4), tmp_path, model=model, tokenizer=tokenizer, progress=False)
    with pytest.raises(FileExistsError, match="already holds an aligner"):
        train_aligner(cfg(), toy_pairs(8), toy_pairs(4), tmp_path, model=tiny()[0], tokenizer=tokenizer)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_aligner(cfg(), toy_pairs(8), toy_pairs(4), tmp_path / "new", resume=True, model=tiny()[0], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no training pair fits in max_length=32"):
        train_aligner(cfg(max_length=32), toy_pairs(8), toy_pairs(4), tmp_path / "short", model=tiny()[0], tokenizer=tokenizer)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    recipe = cfg(max_steps=6, eval_every=100, checkpoint_every=2)
    data = toy_pairs(24)
    model, tokenizer = tiny()
    train_aligner(recipe, data, toy_pairs(4), tmp_path / "clean", model=model, tokenizer=tokenizer, progress=False)

    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def crash_on_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill during step 5")
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train_aligner(recipe, data, toy_pairs(4), tmp_path / "crashed", model=tiny()[0], tokenizer=tokenizer, progress=False)
    assert json.loads((tmp_path / "crashed" / "checkpoint" / "state.json").read_text())["step"] == 4
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    manifest = train_aligner(recipe, data, toy_pairs(4), tmp_path / "crashed", resume=True, model=tiny()[0], tokenizer=tokenizer, progress=False)
    assert manifest["metrics"]["steps"] == 6
    clean = load_file(tmp_path / "clean" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "crashed" / "adapter" / "adapter_model.safetensors")
    assert clean.keys() == resumed.keys()
    for k in clean:
        torch.testing.assert_close(clean[k], resumed[k], rtol=1e-4, atol=1e-6)


def test_early_stopping_keeps_the_best_adapter(tmp_path, monkeypatch):
    import aligners.train as train_mod

    losses = iter([1.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(train_mod, "eval_loss", lambda *args: next(losses))
    model, tokenizer = tiny()
    manifest = train_aligner(cfg(max_steps=20, eval_every=1, early_stopping_patience=2), toy_pairs(24), toy_pairs(4),
                             tmp_path, model=model, tokenizer=tokenizer, progress=False)
    assert manifest["metrics"]["stopped_early"] and manifest["metrics"]["steps"] == 3
    assert manifest["metrics"]["best_eval_loss"] == 1.0


@pytest.fixture(scope="module")
def taia_aligner(tmp_path_factory):
    out = tmp_path_factory.mktemp("taia")
    model, tokenizer = tiny()
    train_aligner(cfg(taia=True, max_steps=6), toy_pairs(16), toy_pairs(4), out, model=model, tokenizer=tokenizer, progress=False)
    return out


def test_taia_view_keeps_only_attention_deltas(taia_aligner, monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNERS_CACHE", str(tmp_path))
    art = AlignerArtifact.load(taia_aligner)
    assert art.manifest["inference"] == "taia"
    full, attn = art.adapter_dir(taia=False), art.adapter_dir()
    full_keys = load_file(full / "adapter_model.safetensors").keys()
    attn_keys = load_file(attn / "adapter_model.safetensors").keys()
    assert any("mlp" in k for k in full_keys) and not any("mlp" in k for k in attn_keys)
    assert set(attn_keys) == {k for k in full_keys if "self_attn" in k}
    assert art.adapter_dir() == attn  # cached, not rebuilt

    model, tokenizer = tiny()
    backend = TransformersBackend(TransformersBackendConfig(model=models.TINY_LLAMA), model=model, tokenizer=tokenizer)
    backend.load_adapter("full", str(full))
    backend.load_adapter("taia", str(attn))  # passes the self-test: attention deltas alone still act
    p = SamplingParams(max_tokens=8)
    outs = backend.generate([GenerationRequest.chat("Where is item 3?", adapter=a, params=p) for a in ("full", "taia", None)])
    assert len({o.text for o in outs}) == 3


def test_export_merged_matches_the_adapter(taia_aligner, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny()
    out = export_merged(taia_aligner, tmp_path / "merged", taia=False, model=model, tokenizer=tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out)
    reference = PeftModel.from_pretrained(tiny()[0], str(taia_aligner / "adapter"))
    ids = tokenizer(["Where is item 3?"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, reference(**ids).logits, rtol=1e-4, atol=1e-4)
    assert json.loads((out / "manifest.json").read_text())["kind"] == "merged-aligner"


def test_loading_a_non_aligner_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json not found"):
        AlignerArtifact.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "inspector"}))
    with pytest.raises(ManifestError, match="not 'aligner'"):
        AlignerArtifact.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": ["aligner"]}))
    with pytest.raises(ManifestError, match="not an artifact manifest .*kind"):
        AlignerArtifact.load(tmp_path)


def test_every_artifact_kind_gets_the_same_stamped_header(tmp_path):
    import aligners
    from aligners.manifest import ManifestHeader, read_manifest, write_manifest

    write_manifest(tmp_path, {"kind": "aligner", "format_version": "aligner-chat-v1"})
    data = read_manifest(tmp_path, "aligner", "aligner-chat-v1")
    header = ManifestHeader.model_validate(data)
    assert header.aligners_version == aligners.__version__ and header.created.endswith("+00:00")
    with pytest.raises(ManifestError, match="format version 'aligner-chat-v1' does not match .*'v2'"):
        read_manifest(tmp_path, "aligner", "v2")


def test_answer_loss_equals_the_models_own_label_loss(tiny_lm):
    from aligners.lora import answer_loss, batches, tokenize_all

    model, tokenizer = tiny_lm
    batch = batches(tokenize_all(tokenizer, toy_pairs(6), 128), 3, tokenizer.pad_token_id, seed=None)[0]
    with torch.no_grad():
        torch.testing.assert_close(answer_loss(model, batch), model(**batch).loss, rtol=1e-5, atol=1e-5)


def test_eval_pairs_mix_corrections_and_good_answers_whatever_the_split_order():
    pairs = toy_pairs(24)
    good_first = sorted(pairs, key=lambda p: p.needs_correction)  # a split whose head is all good
    chosen = eval_pairs(good_first, 8)
    assert len(chosen) == 8 and sum(p.needs_correction for p in chosen) == 4
    assert eval_pairs(good_first, 100) == eval_pairs(good_first, len(pairs))  # capped by the split


def _adapter(folder):
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_frozen_prefix_cache_trains_exactly_like_the_full_forward(tmp_path):
    """Layers 2,3 of 4 tuned over 3 epochs: the cached run starts every pass at layer 2 and must
    log the same losses and save the same adapter as the uncached one; a second run reads the
    hidden states back from disk."""
    data, val = toy_pairs(16), toy_pairs(6)
    recipe = cfg(layers=[2, 3], max_steps=15, eval_every=5, lora_dropout=0.1)
    runs, written = {}, {}
    for name, extra in {"plain": {"prefix_cache": False}, "memory": {},
                        "disk": {"prefix_cache_dir": str(tmp_path / "cache")},
                        "disk-again": {"prefix_cache_dir": str(tmp_path / "cache")}}.items():
        model, tokenizer = tiny(num_layers=4)
        runs[name] = train_aligner(recipe.model_copy(update=extra), data, val, tmp_path / name,
                                   model=model, tokenizer=tokenizer, progress=False)
        written[name] = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")}
    assert runs["plain"]["metrics"]["prefix_cache"]["used"] is False
    assert runs["memory"]["metrics"]["prefix_cache"] | {"gb": 0} == {
        "used": True, "depth": 2, "gb": 0, "where": "memory", "train_batches_cached": True}
    n_batches = 2 + -(-runs["disk"]["data"]["examples"] // 4)  # 6 validation pairs + training, 4 per batch
    assert len(written["disk"]) == n_batches and written["disk-again"] == written["disk"]  # read back, not rewritten
    logs = {name: [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in runs}
    plain = _adapter(tmp_path / "plain")
    for name in ("memory", "disk", "disk-again"):
        for mine, theirs in zip(logs[name], logs["plain"], strict=True):
            assert mine.keys() == theirs.keys()
            for key in mine:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5)
        for key, tensor in _adapter(tmp_path / name).items():
            torch.testing.assert_close(tensor, plain[key], rtol=1e-4, atol=1e-6)


def test_prefix_cache_is_skipped_with_its_reason(tmp_path):
    from aligners.prefix_cache import build_prefix_cache

    model, tokenizer = tiny(num_layers=4)
    manifest = train_aligner(cfg(layers=[2, 3], prefix_cache_max_gb=1e-9), toy_pairs(8), toy_pairs(4), tmp_path / "small",
                             model=model, tokenizer=tokenizer, progress=False)
    assert "over prefix_cache_max_gb=1e-09" in manifest["metrics"]["prefix_cache"]["reason"]
    manifest = train_aligner(cfg(layers=[0, 3]), toy_pairs(8), toy_pairs(4), tmp_path / "bottom",
                             model=tiny(num_layers=4)[0], tokenizer=tokenizer, progress=False)
    assert manifest["metrics"]["prefix_cache"] == {"used": False, "reason": "no frozen layers below the tuned ones"}
    model, batch = tiny(num_layers=4)[0], [{"input_ids": torch.ones(1, 3, dtype=torch.long)}]
    cache, info = build_prefix_cache(model, 2, batch, max_gb=1)  # a model without an adapter trains every layer
    assert cache is None and info["reason"] == "layer 0 below the cached depth 2 is trainable"
    model.requires_grad_(False)
    model.model.layers[1].mlp.act_fn = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Dropout(0.1))
    cache, info = build_prefix_cache(model, 2, batch, max_gb=1)
    assert cache is None and info["reason"] == "layer 1 has dropout, so its output differs between epochs"
