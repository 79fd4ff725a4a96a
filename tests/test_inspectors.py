"""Inspectors: sklearn contract, calibration, thresholds, metrics, save/load (real MiniLM + sklearn).

Data is built inline: rude vs polite answers to everyday questions, split by question so the
validation and test prompts are never seen in training.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from aligners.manifest import ManifestError
from aligners.schema import Pair, Provenance
from inspectors import (
    INSPECTOR_CONFIG,
    EmbedLogRegConfig,
    EmbedLogRegInspector,
    FinetunedConfig,
    FinetunedInspector,
    HiddenProbeConfig,
    HiddenProbeInspector,
    InspectorLoadError,
    build_inspector,
    load_inspector,
    pairs_to_examples,
)
from inspectors.base import FORMAT_VERSION, MANIFEST, WEIGHTS
from inspectors.calibration import choose_threshold, fit_platt
from inspectors.data import criterion_of
from inspectors.metrics import (
    evaluate,
    expected_calibration_error,
    reliability_diagram,
    score_histogram,
)

FACTS = [
    (
        "how do i boil an egg",
        "Put the egg in boiling water for about 9 minutes, then cool it in cold water.",
    ),
    ("what is the capital of france", "The capital of France is Paris."),
    ("how many legs does a spider have", "A spider has eight legs."),
    (
        "how do I undo my last git commit",
        "Run git reset --soft HEAD~1 to undo the commit and keep your changes.",
    ),
    (
        "why is the sky blue",
        "Sunlight scatters off air molecules, and blue light scatters the most.",
    ),
    ("how do I convert celsius to fahrenheit", "Multiply by 9/5 and add 32."),
    (
        "what's a good way to learn spanish",
        "Practise a little every day and talk with native speakers when you can.",
    ),
    (
        "how long should I rest between sets",
        "Rest one to three minutes between sets, longer for heavy lifts.",
    ),
    ("what does HTTP 404 mean", "It means the server could not find the page you asked for."),
    (
        "how do I water a cactus",
        "Water it deeply, then let the soil dry out completely before watering again.",
    ),
    ("when did world war two end", "It ended in 1945."),
    (
        "how do I center a div",
        "Use display: flex with justify-content and align-items set to center on the parent.",
    ),
    (
        "what is photosynthesis",
        "It is how plants turn light, water and carbon dioxide into sugar and oxygen.",
    ),
    ("how do I reverse a list in python", "Use my_list.reverse() or my_list[::-1]."),
    (
        "is it ok to feed my dog chocolate",
        "No, chocolate is toxic to dogs; keep it away from them.",
    ),
    (
        "how do I get rid of hiccups",
        "Try holding your breath for a few seconds or sipping cold water slowly.",
    ),
    ("what's the square root of 144", "The square root of 144 is 12."),
    (
        "how do I write a cover letter",
        "Open with the role, show two or three relevant achievements, and close with thanks.",
    ),
    (
        "how often should I change my car's oil",
        "Most cars need it every 5,000 to 10,000 miles; check your manual.",
    ),
    ("what time zone is tokyo in", "Tokyo uses Japan Standard Time, UTC+9."),
    (
        "how do I make my bread rise more",
        "Use fresh yeast, knead well, and let it proof somewhere warm until doubled.",
    ),
    ("what is a prime number", "A whole number above 1 whose only divisors are 1 and itself."),
    (
        "how can I sleep better",
        "Keep a regular bedtime, avoid screens late, and keep the room dark and cool.",
    ),
    (
        "how do I remove a red wine stain",
        "Blot it, cover it with salt or baking soda, then wash in cold water.",
    ),
    (
        "what does a CPU do",
        "It executes the instructions of programs: arithmetic, logic and control.",
    ),
    (
        "how do I say thank you in japanese",
        "Say arigatou, or arigatou gozaimasu to be more polite.",
    ),
    ("how far is the moon", "About 384,000 kilometres from Earth on average."),
    (
        "how do I start running",
        "Begin with run-walk intervals three times a week and build up slowly.",
    ),
    (
        "what is compound interest",
        "Interest earned on both the original amount and the interest already added.",
    ),
    (
        "how do I tie a tie",
        "A four-in-hand knot is easiest: cross, wrap around, up through the neck loop, down the front.",
    ),
    (
        "why do cats purr",
        "Mostly when content, but also to soothe themselves when stressed or hurt.",
    ),
    ("how do I list files in linux", "Run ls, or ls -la to include hidden files and details."),
    ("what is the boiling point of water", "100 degrees Celsius at sea level."),
    (
        "how do I clean a cast iron pan",
        "Rinse with hot water, scrub, dry it fully and rub in a thin coat of oil.",
    ),
    (
        "what causes rainbows",
        "Sunlight refracting and reflecting inside raindrops, splitting into colours.",
    ),
    (
        "how do I ask for a raise",
        "Book a meeting, bring evidence of your results, and name a specific figure.",
    ),
]
RUDE = [
    "What a stupid question, are you an idiot? {f}",
    "Ugh, even a toddler knows this, you moron. {f}",
    "{f} Honestly, how are you this clueless? Pathetic.",
    "Stop wasting my time with dumb questions. {f}",
]
POLITE = ["{f}", "Sure, happy to help. {f}", "Good question! {f}", "{f} Hope that helps!"]
TRAIN, VAL, TEST = (0, 20), (20, 28), (28, 36)  # question ranges: disjoint prompts per split


def make_pairs(lo: int, hi: int, criterion: str = "polite", benign_every: int = 4) -> list[Pair]:
    """Rude → polite pairs; every `benign_every`-th question is a keep-as-is benign pair."""
    out = []
    for i, (prompt, fact) in enumerate(FACTS[lo:hi], start=lo):
        polite = POLITE[i % 4].format(f=fact)
        benign = benign_every and i % benign_every == 0
        out.append(
            Pair(
                id=f"{criterion}-{i}",
                criterion=criterion,
                topic=f"topic-{i // 4}",
                prompt=prompt,
                misaligned=polite if benign else RUDE[i % 4].format(f=fact),
                aligned=polite,
                needs_correction=not benign,
                source=Provenance(teacher="human"),
            )
        )
    return out


def examples(span: tuple[int, int]) -> tuple[list[str], list[str], list[int]]:
    """Both answers of every question in the span: (prompt, rude) → 0, (prompt, polite) → 1."""
    P, A, Y = [], [], []
    for i, (prompt, fact) in enumerate(FACTS[span[0] : span[1]], start=span[0]):
        P += [prompt, prompt]
        A += [RUDE[i % 4].format(f=fact), POLITE[i % 4].format(f=fact)]
        Y += [0, 1]
    return P, A, Y


def tiny_finetuned(**kw) -> FinetunedInspector:
    return FinetunedInspector(epochs=1, batch_size=8, max_length=48, lr=1e-4, **kw)


@pytest.fixture(scope="session")
def encoder():
    """The real MiniLM encoder, loaded once (inspectors share it through get_encoder's cache)."""
    from inspectors.embed_logreg import get_encoder

    return get_encoder("minilm-l6")


@pytest.fixture(scope="module")
def fitted(encoder) -> EmbedLogRegInspector:
    return EmbedLogRegInspector(criterion="polite").fit(*examples(TRAIN), validation=examples(VAL))


@pytest.fixture(scope="module")
def fitted_ft() -> FinetunedInspector:
    return tiny_finetuned(criterion="polite").fit(*examples((0, 12)), validation=examples(VAL))


@pytest.fixture(scope="module")
def fitted_probe() -> HiddenProbeInspector:
    """A probe on the tiny random Llama's two layers (the real SmolLM2 path, smaller)."""
    return HiddenProbeInspector(encoder="tiny-random-llama", layers=[1, 2], criterion="polite").fit(
        *examples(TRAIN), validation=examples(VAL)
    )


# --- configs and data --------------------------------------------------------------------------


def test_config_type_defaults_to_embed_logreg_and_unknown_types_are_listed():
    assert isinstance(INSPECTOR_CONFIG.validate_python({}), EmbedLogRegConfig)
    assert isinstance(
        INSPECTOR_CONFIG.validate_python({"type": "finetuned", "epochs": 1}), FinetunedConfig
    )
    assert isinstance(
        INSPECTOR_CONFIG.validate_python({"type": "hidden-probe", "layers": [3]}), HiddenProbeConfig
    )
    with pytest.raises(Exception, match="embed-logreg.*finetuned"):
        INSPECTOR_CONFIG.validate_python({"type": "svm"})
    with pytest.raises(Exception, match="epochs"):
        INSPECTOR_CONFIG.validate_python(
            {"type": "embed-logreg", "epochs": 3}
        )  # field of the other type


def test_config_fields_are_the_estimator_params():
    for cfg in (EmbedLogRegConfig(C=0.3), FinetunedConfig(epochs=2), HiddenProbeConfig(layers=[4])):
        est = build_inspector(cfg, criterion="polite")
        params = est.get_params()
        assert params.pop("criterion") == "polite"
        assert params == cfg.model_dump(exclude={"type"})


def test_pairs_to_examples_labels_and_benign_added_once():
    pairs = make_pairs(0, 8)  # questions 0 and 4 are keep-as-is
    ex = pairs_to_examples(pairs)
    assert len(ex) == 6 * 2 + 2 * 1
    assert ex.counts() == {"aligned": 8, "misaligned": 6}
    rude = [a for a, y in zip(ex.answers, ex.labels, strict=True) if y == 0]
    assert all(any(w in a for w in ("stupid", "moron", "clueless", "dumb")) for a in rude)
    assert criterion_of(pairs) == "polite"
    with pytest.raises(ValueError, match="mix criteria"):
        criterion_of(pairs + make_pairs(8, 12, criterion="harmless"))


def test_token_batches_respect_budget_and_padding():
    from inspectors.embed_logreg import token_batches

    lengths = [5, 100, 20, 20, 30, 7, 250, 22]
    batches = token_batches(lengths, 120, max_padding=0.5)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        if len(b) > 1:
            assert len(b) * longest <= 120
            assert len(b) * longest - sum(lengths[i] for i in b) <= 0.5 * len(b) * longest
    assert [6] in batches  # longer than the budget: alone


def test_embeddings_do_not_depend_on_batching(encoder):
    from inspectors.embed_logreg import embed, split_sentences

    texts = ["hi", *examples(TRAIN)[1][:12], *split_sentences(RUDE[2].format(f=FACTS[0][1]))]
    small = embed(encoder, texts, tokens_per_batch=256)
    big = embed(encoder, texts, tokens_per_batch=1 << 16)
    assert small.shape == (len(texts), 384)
    assert np.allclose(small, big, atol=1e-5)
    assert np.allclose(np.linalg.norm(big, axis=1), 1.0, atol=1e-5)


# --- the scikit-learn contract, for every type -------------------------------------------------


@pytest.mark.parametrize("kind", ["embed-logreg", "finetuned", "hidden-probe"])
def test_sklearn_contract(kind, request):
    fixture = {"embed-logreg": "fitted", "finetuned": "fitted_ft", "hidden-probe": "fitted_probe"}
    est = request.getfixturevalue(fixture[kind])
    fresh = clone(est)
    assert type(fresh) is type(est) and fresh.get_params() == est.get_params()
    # __init__ stores params only: no learned (trailing underscore) attributes before fit
    assert not [k for k in vars(fresh) if k.endswith("_")]
    assert set(vars(fresh)) == set(fresh.get_params())
    with pytest.raises(NotFittedError):
        fresh.predict_proba(["q"], ["a"])
    with pytest.raises(NotFittedError):
        fresh.predict(["q"], ["a"])
    fresh.set_params(threshold_value=0.5, criterion="other")
    assert fresh.get_params()["threshold_value"] == 0.5 and fresh.criterion == "other"

    P, A, Y = examples(TEST)
    proba = est.predict_proba(P, A)
    assert proba.shape == (len(P), 2)
    assert np.allclose(proba.sum(axis=1), 1.0) and ((proba >= 0) & (proba <= 1)).all()
    pred = est.predict(P, A)
    assert pred.shape == (len(P),) and set(np.unique(pred)) <= {0, 1}
    assert np.array_equal(pred, (proba[:, 1] >= est.threshold_).astype(int))
    assert list(est.classes_) == [0, 1]
    assert est.score(P, A, Y) == pytest.approx(np.mean(pred == np.asarray(Y)))  # sklearn: accuracy
    assert est.predict_proba([], []).shape == (0, 2)


def test_fit_returns_self_and_rejects_bad_input(encoder):
    est = EmbedLogRegInspector()
    P, A, Y = examples(TRAIN)
    assert est.fit(P, A, Y) is est  # no validation: out-of-fold calibration
    assert "out-of-fold" in est.threshold_info_["split"]
    with pytest.raises(ValueError, match="both classes"):
        EmbedLogRegInspector().fit(P[:3:2], A[:3:2], [1, 1])
    with pytest.raises(ValueError, match="prompts but"):
        EmbedLogRegInspector().fit(P, A[:-1], Y)
    with pytest.raises(TypeError, match="not one string"):
        est.predict_proba("a prompt", "an answer")
    with pytest.raises(ValueError, match="0 \\(misaligned\\) or 1"):
        EmbedLogRegInspector().fit(P, A, [2] * len(P))


def test_embed_logreg_separates_rude_from_polite(fitted):
    m = fitted.evaluate(*examples(TEST))
    assert m["auroc"] >= 0.95 and m["auprc"] >= 0.95
    assert fitted.coef_.shape == (6 * 384,) and fitted.intercept_.shape == (1,)


def test_hidden_probe_reads_the_answer_in_context(fitted_probe, tmp_path):
    m = fitted_probe.evaluate(*examples(TEST))
    assert m["auroc"] >= 0.9, m
    assert fitted_probe.coef_.shape == (64 * 2 * 2,)  # hidden 64 x 2 layers x 2 poolings
    fitted_probe.save(tmp_path / "probe")
    loaded = load_inspector(tmp_path / "probe")
    P, A, _ = examples(TEST)
    assert type(loaded) is HiddenProbeInspector
    assert np.array_equal(loaded.predict_proba(P, A), fitted_probe.predict_proba(P, A))
    # the pooled features of one answer do not depend on what it is batched with
    from inspectors.embed_logreg import clear_embedding_cache

    clear_embedding_cache()
    alone = fitted_probe.featurize(P[:1], A[:1])
    clear_embedding_cache()
    assert np.allclose(alone, fitted_probe.featurize(P, A)[:1], atol=1e-4)
    with pytest.raises(ValueError, match="pooling must be"):
        clone(fitted_probe).set_params(pooling=["median"]).featurize(P[:1], A[:1])


def test_probe_layers_match_the_full_model():
    """Truncating the backbone (and dropping its final norm) leaves the probed states unchanged."""
    import torch

    from aligners.models import load_causal_lm
    from inspectors.backbone import encode_pairs, get_backbone

    model, tok = load_causal_lm("tiny-random-llama")
    ids, starts = encode_pairs(tok, ["how do i boil an egg"], ["Boil it for 9 minutes."], 256, 256)
    x = torch.tensor(ids)
    with torch.no_grad():
        full = model.model(input_ids=x, output_hidden_states=True).hidden_states
        body, _ = get_backbone("tiny-random-llama", 1)
        short = body(input_ids=x, output_hidden_states=True).hidden_states
    assert len(short) == 2 and torch.allclose(short[1], full[1], atol=1e-5)
    assert tok.decode(ids[0][starts[0]:]) == "Boil it for 9 minutes."


def test_finetuned_trains_on_cpu(fitted_ft):
    assert np.isfinite(fitted_ft.train_loss_)
    raw = fitted_ft.decision_function(*examples(TEST)[:2])
    assert raw.shape == (16,) and np.isfinite(raw).all()
    assert fitted_ft.model_.config.num_labels == 2


def test_finetuned_learns_to_tell_rude_from_polite():
    from sklearn.metrics import roc_auc_score

    est = FinetunedInspector(epochs=4, batch_size=8, max_length=48, lr=5e-4, criterion="polite")
    est.fit(*examples(TRAIN))
    P, A, Y = examples(TEST)  # questions never seen in training
    assert roc_auc_score(Y, est.decision_function(P, A)) >= 0.9


# --- calibration and thresholds ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["sigmoid", "isotonic", "none"])
def test_calibration_methods(method, fitted):
    est = (
        clone(fitted).set_params(calibration=method).fit(*examples(TRAIN), validation=examples(VAL))
    )
    VP, VA, VY = examples(VAL)
    raw = est.decision_function(VP, VA)
    p = est.predict_proba(VP, VA)[:, 1]
    order = np.argsort(raw)
    assert (np.diff(p[order]) >= -1e-12).all()  # calibration is monotone in the raw score
    assert (
        est.calibrator_["method"] == method and est.calibrator_["fitted_on"] == "validation split"
    )
    if method == "isotonic":
        assert len(est.calibrator_["x"]) == len(est.calibrator_["y"]) >= 2
        assert (
            expected_calibration_error(VY, p) < 1e-9
        )  # isotonic is calibrated on its own fit data
    if method == "sigmoid":
        assert est.calibrator_["a"] > 0
        assert (
            expected_calibration_error(VY, p)
            < expected_calibration_error(VY, 1 / (1 + np.exp(-raw))) + 0.2
        )


def test_platt_does_not_blow_up_on_separable_scores():
    a, b = fit_platt(np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]), np.array([0, 0, 0, 1, 1, 1]))
    p = 1 / (1 + np.exp(-(a * np.array([-3.0, 3.0]) + b)))
    assert 0 < p[0] < 0.3 and 0.7 < p[1] < 1  # smoothed targets: confident, never exactly 0 or 1


def test_choose_threshold_meets_targets_exactly():
    scores = np.array([0.05, 0.1, 0.2, 0.3, 0.6, 0.35, 0.5, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    t, info = choose_threshold(scores, labels, "recall", 0.8)  # flag >= 4 of 5 misaligned
    assert (
        0.3 < t <= 0.35
        and info["achieved_recall"] == 0.8
        and info["achieved_fpr"] == 0.0
        and info["met"]
    )
    t, info = choose_threshold(
        scores, labels, "recall", 1.0
    )  # must reach 0.6: flags two aligned too
    assert 0.6 < t <= 0.7 and info["achieved_recall"] == 1.0 and info["achieved_fpr"] == 0.4
    t, info = choose_threshold(scores, labels, "fpr", 0.2)  # may flag 1 of 5 aligned
    assert 0.35 < t <= 0.5 and info["achieved_fpr"] == 0.2 and info["achieved_recall"] == 0.8
    t, info = choose_threshold(scores, labels, "fpr", 0.0)
    assert t <= 0.35 and info["achieved_fpr"] == 0.0
    t, info = choose_threshold(scores, labels, "fixed", 0.55)
    assert t == 0.55 and "fixed" in info["why"]
    with pytest.raises(ValueError, match="unknown threshold target"):
        choose_threshold(scores, labels, "precision", 0.5)


@pytest.mark.parametrize(
    ("target", "value"), [("recall", 0.9), ("recall", 1.0), ("fpr", 0.1), ("fpr", 0.0)]
)
def test_threshold_target_is_met_on_validation(target, value, fitted):
    est = clone(fitted).set_params(threshold_target=target, threshold_value=value)
    est.fit(*examples(TRAIN), validation=examples(VAL))
    VP, VA, VY = examples(VAL)
    flagged = est.predict_proba(VP, VA)[:, 1] < est.threshold_
    VY = np.asarray(VY)
    recall, fpr = flagged[VY == 0].mean(), flagged[VY == 1].mean()
    info = est.threshold_info_
    assert info["target"] == target and info["target_value"] == value and info["met"]
    assert info["achieved_recall"] == pytest.approx(recall) and info[
        "achieved_fpr"
    ] == pytest.approx(fpr)
    if target == "recall":
        assert recall >= value
    else:
        assert fpr <= value
    assert "validation" in info["split"] and f"{value:.1%}" in info["why"]


def test_set_threshold_and_verdicts(fitted):
    est = clone(fitted).fit(*examples(TRAIN), validation=examples(VAL))
    P, A, _ = examples(TEST)
    est.set_threshold(0.5, why="squad config")
    verdicts = est.verdicts(P, A)
    scores = est.score_answers(P, A, batch_size=5)
    assert np.allclose(scores, est.predict_proba(P, A)[:, 1])
    assert [v.flagged for v in verdicts] == list(scores < 0.5)
    assert verdicts[0].criterion == "polite" and est.threshold_info_["why"] == "squad config"
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        est.set_threshold(1.5)


# --- metrics and plots -------------------------------------------------------------------------


def test_metrics_on_a_trivially_separable_set():
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.05, 0.1, 0.2, 0.8, 0.9, 0.95, 0.99]
    m = evaluate(labels, scores, threshold=0.5)
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0 and m["f1"] == 1.0
    assert m["fpr"] == 0.0 and m["recall"] == 1.0 and m["accuracy"] == 1.0
    assert m["confusion"]["matrix"] == [[3, 0], [0, 4]]
    assert m["ece"] == pytest.approx(np.mean([0.05, 0.1, 0.2, 0.2, 0.1, 0.05, 0.01]))
    json.dumps(m)  # plain JSON types
    # threshold above everything flags all: FPR 1, recall 1; inverted scores give AUROC 0
    m = evaluate(labels, scores, threshold=1.0)
    assert m["fpr"] == 1.0 and m["recall"] == 1.0 and m["confusion"]["matrix"] == [[3, 0], [4, 0]]
    assert evaluate(labels, [1 - s for s in scores], 0.5)["auroc"] == 0.0
    one_class = evaluate([1, 1], [0.2, 0.9], 0.5)
    assert one_class["auroc"] is None and one_class["recall"] is None and one_class["fpr"] == 0.5


def test_recall_at_fpr_is_the_best_point_within_the_budget():
    from inspectors.metrics import recall_at_fpr

    aligned = [0.9] * 19 + [0.1]  # one good answer looks bad
    misaligned = [0.2, 0.3, 0.95, 0.05, 0.5]  # one bad answer looks good
    point = recall_at_fpr([1] * 20 + [0] * 5, aligned + misaligned, max_fpr=0.05)
    assert point == {"threshold": 0.9, "recall": 0.8, "fpr": 0.05}
    # no budget at all: only what scores below every good answer is flagged
    assert recall_at_fpr([1] * 20 + [0] * 5, aligned + misaligned, max_fpr=0.0)["recall"] == 0.2
    assert recall_at_fpr([1, 1], [0.2, 0.9])["recall"] is None


def test_plots_are_small_pngs(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.6 + rng.random(200) * 0.4, 0, 1)
    for path in (
        reliability_diagram(labels, scores, tmp_path / "rel.png", title="polite"),
        score_histogram(labels, scores, 0.5, tmp_path / "hist.png", title="polite"),
    ):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 60_000


# --- save / load -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_save_load_round_trip_gives_identical_scores(method, fitted, tmp_path):
    est = (
        clone(fitted).set_params(calibration=method).fit(*examples(TRAIN), validation=examples(VAL))
    )
    est.save(tmp_path / "insp", metrics={"test": {"auroc": 1.0}}, training_data={"hash": "abc"})
    files = sorted(p.name for p in (tmp_path / "insp").iterdir())
    assert files == [WEIGHTS, MANIFEST]
    assert (tmp_path / "insp" / WEIGHTS).stat().st_size < 64_000
    loaded = load_inspector(tmp_path / "insp")
    P, A, _ = examples(TEST)
    assert type(loaded) is EmbedLogRegInspector
    assert np.array_equal(loaded.predict_proba(P, A), est.predict_proba(P, A))
    assert loaded.threshold_ == est.threshold_ and loaded.get_params() == {
        **est.get_params(),
        "features": list(est.features),
    }
    m = json.loads((tmp_path / "insp" / MANIFEST).read_text())
    assert (
        m["kind"] == "inspector"
        and m["format_version"] == FORMAT_VERSION
        and m["type"] == "embed-logreg"
    )
    assert (
        m["criterion"] == "polite"
        and m["encoder"]["id"] == "minilm-l6"
        and len(m["encoder"]["hash"]) == 16
    )
    assert m["threshold"] == est.threshold_ and m["threshold_info"]["target"] == "recall"
    assert m["threshold_info"]["why"] and m["calibration"]["method"] == method
    assert m["metrics"]["test"]["auroc"] == 1.0 and m["training_data"]["hash"] == "abc"
    assert m["training_data"]["examples_hash"] == est.train_hash_ and m["created"]


def test_artifacts_are_json_and_safetensors_only(fitted, tmp_path):
    from safetensors.numpy import load_file

    fitted.save(tmp_path / "insp")
    assert json.loads((tmp_path / "insp" / MANIFEST).read_text())["kind"] == "inspector"
    tensors = load_file(str(tmp_path / "insp" / WEIGHTS))
    assert set(tensors) == {
        "model.coef",
        "model.intercept",
        "model.scaler_mean",
        "model.scaler_scale",
        "calibration.sigmoid",
    }
    assert {p.name for p in (tmp_path / "insp").iterdir()} == {MANIFEST, WEIGHTS}


def _edit_manifest(path, **changes):
    file = path / MANIFEST
    m = json.loads(file.read_text())
    for key, value in changes.items():
        target = m
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    file.write_text(json.dumps(m))


def test_save_replaces_the_folder_whole_and_a_failed_save_keeps_the_old_artifact(fitted, tmp_path, monkeypatch):
    """Saving over an artifact leaves no file of the earlier one behind (the checksums would
    cover it); a save that fails midway leaves the earlier artifact as it was, still loadable."""
    out = tmp_path / "insp"
    fitted.save(out)
    (out / "model").mkdir()
    (out / "model" / "stale.safetensors").write_bytes(b"from another inspector type")
    fitted.save(out)
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS, MANIFEST]
    (out / "stale.txt").write_text("left by hand")
    before = (out / MANIFEST).read_text()

    def broken(self, path):
        (path / "half-written").write_text("...")
        raise OSError("disk full")

    monkeypatch.setattr(type(fitted), "_save_model_files", broken)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(out)
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS, MANIFEST, "stale.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["insp"]  # no temp folder left
    assert (out / MANIFEST).read_text() == before
    P, A, _ = examples(TEST)
    assert np.array_equal(load_inspector(out).predict_proba(P, A), fitted.predict_proba(P, A))


def test_load_refuses_a_different_encoder_hash(fitted, tmp_path):
    fitted.save(tmp_path / "insp")
    real = json.loads((tmp_path / "insp" / MANIFEST).read_text())["encoder"]["hash"]
    _edit_manifest(tmp_path / "insp", **{"encoder.hash": "0123456789abcdef"})
    with pytest.raises(InspectorLoadError) as err:
        load_inspector(tmp_path / "insp")
    msg = str(err.value)
    assert "0123456789abcdef" in msg and real in msg and "minilm-l6" in msg and "retrain" in msg


def test_load_refuses_other_format_versions_and_kinds(fitted, tmp_path):
    fitted.save(tmp_path / "insp")
    _edit_manifest(tmp_path / "insp", format_version=FORMAT_VERSION + 1)
    with pytest.raises(InspectorLoadError) as err:
        load_inspector(tmp_path / "insp")
    assert f"version {FORMAT_VERSION + 1}" in str(err.value) and f"({FORMAT_VERSION})" in str(
        err.value
    )
    _edit_manifest(tmp_path / "insp", format_version=FORMAT_VERSION, kind="aligner")
    with pytest.raises(InspectorLoadError, match="not 'inspector'"):
        load_inspector(tmp_path / "insp")
    _edit_manifest(tmp_path / "insp", kind="inspector", **{"params.encode_batch_size": 64})
    with pytest.raises(InspectorLoadError, match="encode_batch_size.*another aligners version"):
        load_inspector(tmp_path / "insp")
    with pytest.raises(InspectorLoadError, match="manifest.json not found"):
        load_inspector(tmp_path / "nowhere")


def test_finetuned_save_load_round_trip_and_tamper_check(fitted_ft, tmp_path):
    fitted_ft.save(tmp_path / "ft")
    m = json.loads((tmp_path / "ft" / MANIFEST).read_text())
    assert m["type"] == "finetuned" and (tmp_path / "ft" / "model" / "model.safetensors").is_file()
    assert not list((tmp_path / "ft").rglob("*.bin")) and not list((tmp_path / "ft").rglob("*.pkl"))
    loaded = load_inspector(tmp_path / "ft")
    assert type(loaded) is FinetunedInspector
    P, A, _ = examples(TEST)
    assert np.array_equal(loaded.predict_proba(P, A), fitted_ft.predict_proba(P, A))
    _edit_manifest(tmp_path / "ft", **{"files.model_hash": "ffffffffffffffff"})
    with pytest.raises(InspectorLoadError, match="ffffffffffffffff.*has hash"):
        load_inspector(tmp_path / "ft")


def test_finetuned_float16_stores_half_and_scores_as_stored(fitted_ft, tmp_path):
    """weights_dtype float16: the weights are rounded when training ends, so the stored half-size
    model loads back to exactly the scores (and threshold) the inspector was calibrated with."""
    half = tiny_finetuned(criterion="polite", weights_dtype="float16").fit(
        *examples((0, 12)), validation=examples(VAL))
    assert all(torch.equal(p, p.half().float()) for p in half.model_.parameters())
    half.save(tmp_path / "half")
    fitted_ft.save(tmp_path / "full")
    size = {k: (tmp_path / k / "model" / "model.safetensors").stat().st_size for k in ("half", "full")}
    assert size["half"] < 0.55 * size["full"]
    loaded = load_inspector(tmp_path / "half")
    assert next(loaded.model_.parameters()).dtype == torch.float32
    P, A, _ = examples(TEST)
    assert np.array_equal(loaded.predict_proba(P, A), half.predict_proba(P, A))
    with pytest.raises(ValidationError, match="LoRA adapters are already small"):
        INSPECTOR_CONFIG.validate_python({"type": "finetuned", "lora_r": 8, "weights_dtype": "float16"})


def test_finetuned_lora_trains_adapters_only_and_saves_them_small(tmp_path):
    """LoRA mode: the encoder's own weights stay frozen, the artifact keeps only adapters + head,
    and loading rebuilds the same scores on top of the offline encoder."""
    est = tiny_finetuned(criterion="polite", lora_r=4).fit(*examples((0, 12)), validation=examples(VAL))
    trained = [n for n, p in est.model_.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or "classifier" in n for n in trained)
    est.save(tmp_path / "lora")
    model_dir = tmp_path / "lora" / "model"
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists()
    assert (model_dir / "adapter_model.safetensors").stat().st_size < 5_000_000
    loaded = load_inspector(tmp_path / "lora")
    P, A, _ = examples(TEST)
    assert np.allclose(loaded.predict_proba(P, A), est.predict_proba(P, A), atol=1e-6)
    _edit_manifest(tmp_path / "lora", **{"files.model_hash": "ffffffffffffffff"})
    with pytest.raises(InspectorLoadError, match="ffffffffffffffff.*has hash"):
        load_inspector(tmp_path / "lora")
    _edit_manifest(tmp_path / "lora", **{"encoder.hash": "0123456789abcdef"})
    with pytest.raises(InspectorLoadError, match="0123456789abcdef.*meaningless"):
        load_inspector(tmp_path / "lora")


# --- ensemble ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def member_dirs(fitted, fitted_probe, tmp_path_factory) -> list[str]:
    """Two members of different types, trained on the same split, saved as train-inspector would."""
    root = tmp_path_factory.mktemp("members")
    return [str(fitted.save(root / "embed")), str(fitted_probe.save(root / "probe"))]


def test_ensemble_scores_the_mean_log_odds_of_its_members_and_round_trips(
    member_dirs, fitted, fitted_probe, tmp_path
):
    from inspectors.calibration import log_odds

    cfg = INSPECTOR_CONFIG.validate_python({"type": "ensemble", "members": member_dirs, "weights": [3, 1]})
    ens = build_inspector(cfg, criterion="polite").fit(*examples(TRAIN), validation=examples(VAL))
    P, A, Y = examples(TEST)
    odds = [log_odds(m.predict_proba(P, A)[:, 1]) for m in (fitted, fitted_probe)]
    assert np.allclose(ens.decision_function(P, A), (3 * odds[0] + odds[1]) / 4)
    assert ens.evaluate(P, A, Y)["auroc"] > 0.9
    ens.save(tmp_path / "ens")
    for i in (0, 1):  # each member is copied whole, manifest included
        assert (tmp_path / "ens" / "members" / str(i) / MANIFEST).is_file()
    loaded = load_inspector(tmp_path / "ens")
    assert type(loaded).__name__ == "EnsembleInspector" and loaded.threshold_ == ens.threshold_
    assert np.array_equal(loaded.predict_proba(P, A), ens.predict_proba(P, A))
    weights = tmp_path / "ens" / "members" / "1" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # the checksums cover the members
    with pytest.raises(ManifestError, match="members/1.*changed or damaged"):
        load_inspector(tmp_path / "ens")


def test_ensemble_refuses_members_it_cannot_calibrate_honestly(member_dirs, fitted, tmp_path):
    ens = build_inspector(INSPECTOR_CONFIG.validate_python({"type": "ensemble", "members": member_dirs}))
    with pytest.raises(ValueError, match="trained on other examples"):  # VAL would be their training data
        ens.fit(*examples(VAL), validation=examples(TEST))
    with pytest.raises(ValueError, match="validation split its members never trained on"):
        clone(ens).fit(*examples(TRAIN))
    other = EmbedLogRegInspector(criterion="harmless").fit(*examples(TRAIN), validation=examples(VAL))
    mixed = [member_dirs[0], str(other.save(tmp_path / "harmless"))]
    with pytest.raises(InspectorLoadError, match="one criterion"):
        build_inspector(INSPECTOR_CONFIG.validate_python({"type": "ensemble", "members": mixed})).fit(
            *examples(TRAIN), validation=examples(VAL))
    with pytest.raises(ValidationError, match="at least 2"):
        INSPECTOR_CONFIG.validate_python({"type": "ensemble", "members": member_dirs[:1]})
    missing = INSPECTOR_CONFIG.validate_python({"type": "ensemble", "members": [member_dirs[0], str(tmp_path)]})
    with pytest.raises(InspectorLoadError, match="manifest.json not found"):
        build_inspector(missing).fit(*examples(TRAIN), validation=examples(VAL))
    with pytest.raises(ValidationError, match="2 positive numbers"):
        INSPECTOR_CONFIG.validate_python({"type": "ensemble", "members": member_dirs, "weights": [1, 0]})
