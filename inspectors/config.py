"""Inspector recipes (`configs/inspectors/*.yaml`): one pydantic model per `type:`.

A recipe's fields are exactly the estimator's constructor parameters (minus `type`), so a config,
an estimator's `get_params()` and the `params` block of a saved manifest are the same thing.
The criterion is not part of a recipe: one recipe trains inspectors for any criterion, which is
taken from the training data.

This module imports only pydantic, so `aligners.config` can validate recipes without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from aligners.config import StrictModel

Calibration = Literal["sigmoid", "isotonic", "none"]
ThresholdTarget = Literal["recall", "fpr", "fixed"]
Feature = Literal["prompt", "answer", "product", "absdiff", "sentence_max", "sentence_min"]

DEFAULT_TYPE = "embed-logreg"


class _CalibratedConfigBase(StrictModel):
    """Fields every inspector type shares: how raw scores become P(aligned), and the threshold."""

    calibration: Calibration = Field(
        default="sigmoid",
        description="Map raw scores to probabilities on the validation split: 'sigmoid' (Platt), "
        "'isotonic', or 'none' (the model's own probabilities).",
    )
    threshold_target: ThresholdTarget = Field(
        default="recall",
        description="How the threshold is chosen on validation: 'recall' = flag at least "
        "threshold_value of misaligned answers; 'fpr' = flag at most threshold_value of aligned "
        "answers; 'fixed' = use threshold_value itself as the threshold.",
    )
    threshold_value: float = Field(
        default=0.95,
        ge=0.0,
        le=1.0,
        description="The recall, FPR or fixed threshold (see threshold_target).",
    )


class _InspectorConfigBase(_CalibratedConfigBase):
    """Fields of the inspectors that run a model of their own: its encoder, seed and device."""

    encoder: str = Field(
        default="minilm-l6",
        description="Registry name (minilm-l6), local folder or HF id of the encoder.",
    )
    random_state: int = Field(
        default=0, description="Seed for fold splits, shuffling and head init."
    )
    device: str = Field(default="cpu", description="'cpu', 'cuda', 'cuda:0', ...")


class _LinearConfigBase(_InspectorConfigBase):
    """Fields of the feature + logistic-regression inspectors (inspectors.linear)."""

    request_gate: bool = Field(
        default=False,
        description="Also learn P(risky request) from the request alone (the training data's "
        "intents) and flag an answer only as far as its request is risky: P(misaligned) = "
        "P(risky) * P(misaligned | answer). Fewer false flags on answers to benign requests.",
    )
    request_gate_C: float = Field(
        default=1.0, gt=0, description="Inverse L2 strength of the request gate (standardized features)."
    )
    request_guard: float | None = Field(
        default=None, gt=0.5, lt=1.0,
        description="With request_gate, for criteria whose good answer to a risky request is a "
        "refusal (harmless): the P(risky request) at or above which an answer that does not open "
        "with a refusal or safe redirect scores at most 1 - P(risky). The labelling rule calls such "
        "an answer misaligned, whatever the answer model thinks of it.",
    )
    answer_model_on: Literal["all", "risky"] = Field(
        default="all",
        description="With request_gate, the answers the answer model learns from: 'risky' keeps "
        "only the answers to risky requests, so it learns compliance versus refusal rather than "
        "which requests are risky (the gate's job); the gate still reads every request.",
    )

    @model_validator(mode="after")
    def _guard_needs_gate(self) -> _LinearConfigBase:
        if self.request_guard is not None and not self.request_gate:
            raise ValueError("request_guard reads the request gate's P(risky): set request_gate: true")
        if self.answer_model_on == "risky" and not self.request_gate:
            raise ValueError("answer_model_on: risky leaves answers to benign requests to the request "
                             "gate: set request_gate: true")
        return self


class EmbedLogRegConfig(_LinearConfigBase):
    """Frozen sentence embeddings of prompt and answer + logistic regression (fast on CPU)."""

    type: Literal["embed-logreg"] = "embed-logreg"
    features: list[Feature] = Field(
        default_factory=lambda: [
            "prompt",
            "answer",
            "product",
            "absdiff",
            "sentence_max",
            "sentence_min",
        ],
        min_length=1,
        description="Blocks concatenated into the feature vector: prompt p, answer a, p*a, |p-a|, and the "
        "element-wise max / min over the answer's sentence embeddings (see inspectors/embed_logreg.py).",
    )
    answer_embedding: Literal["sentences", "whole"] = Field(
        default="sentences",
        description="The answer vector a: the normalized mean of its sentence embeddings, or one embedding of the whole text.",
    )
    C: float = Field(
        default=0.1,
        gt=0,
        description="Inverse L2 strength of LogisticRegression (on standardized features).",
    )
    max_iter: int = Field(default=2000, ge=10, description="lbfgs iterations.")
    cv_folds: int = Field(
        default=5,
        ge=2,
        description="Folds for out-of-fold calibration scores when no validation split is given.",
    )
    encode_batch_tokens: int = Field(
        default=16384,
        ge=256,
        description="Padded tokens per encoder forward pass: short sentences go in large batches, "
        "long texts in small ones (a fixed text count is slow for sentences on CPU).",
    )
    max_seq_length: int = Field(
        default=256, ge=8, le=512, description="Encoder truncation, in tokens."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Encoder compute dtype. bfloat16 is ~2.7x faster on CPUs with bf16 units (AVX512-BF16, AMX) "
        "and slower elsewhere; an inspector scores with the dtype it was trained with.",
    )

    @model_validator(mode="after")
    def _features_unique(self) -> EmbedLogRegConfig:
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features must not repeat, got {self.features}")
        return self


class FinetunedConfig(_InspectorConfigBase):
    """A sequence classifier fine-tuned end to end on `prompt [SEP] answer` (slower, more capacity)."""

    type: Literal["finetuned"] = "finetuned"
    epochs: int = Field(default=3, ge=1)
    lr: float = Field(default=5e-5, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(default=16, ge=1)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(
        default=0.1, ge=0, lt=1, description="Share of steps with linear warm-up."
    )
    max_length: int = Field(
        default=256,
        ge=8,
        le=512,
        description="Tokens of prompt+answer kept (longest first truncated).",
    )
    holdout_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Share of training pairs held out for calibration when no validation split is given.",
    )
    lora_r: int | None = Field(
        default=None,
        ge=1,
        description="Train only LoRA adapters of this rank (and the head): a few-MB artifact on the "
        "offline encoder instead of a full copy of it.",
    )
    weights_dtype: Literal["float32", "float16"] = Field(
        default="float32",
        description="How the fully fine-tuned model is stored: float16 halves the artifact (45 MB for "
        "MiniLM); the weights are rounded when training ends, so every score is the stored model's.",
    )

    @model_validator(mode="after")
    def _half_is_for_full_models(self) -> FinetunedConfig:
        if self.lora_r and self.weights_dtype != "float32":
            raise ValueError("weights_dtype applies to a fully fine-tuned model; LoRA adapters are already small")
        return self


class HiddenProbeConfig(_LinearConfigBase):
    """A logistic probe on a causal LM's own hidden states, pooled over the answer's tokens."""

    type: Literal["hidden-probe"] = "hidden-probe"
    encoder: str = Field(
        default="smollm2-135m-instruct",
        description="Causal LM whose hidden states are probed (registry name, folder or HF id).",
    )
    layers: list[int] = Field(
        default_factory=lambda: [15],
        min_length=1,
        description="Hidden-state indices to pool (1 = the first decoder layer's output); the "
        "model runs only up to the deepest one.",
    )
    pooling: list[Literal["answer_mean", "answer_max", "last"]] = Field(
        default_factory=lambda: ["answer_mean", "answer_max"],
        min_length=1,
        description="Per layer: mean / element-wise max over the answer's tokens, or the last token.",
    )
    max_prompt_tokens: int = Field(default=256, ge=8, description="Request tokens kept (its end).")
    max_answer_tokens: int = Field(default=256, ge=8, description="Answer tokens kept (its start).")
    batch_tokens: int = Field(default=8192, ge=256, description="Padded tokens per forward pass.")
    C: float = Field(default=0.05, gt=0, description="Inverse L2 strength (standardized features).")
    max_iter: int = Field(default=3000, ge=10, description="lbfgs iterations.")
    cv_folds: int = Field(default=5, ge=2, description="Folds for out-of-fold calibration.")
    dtype: Literal["float32", "bfloat16"] = Field(default="float32", description="Backbone dtype.")
    span_tagger: str | None = Field(
        default=None,
        description="A span tagger folder (`aligners train-tagger`): its evidence that some tokens of "
        "the answer are what the criterion objects to (highest and top-3 mean P(span)) joins the "
        "features; the saved inspector keeps a copy.",
    )

    @field_validator("span_tagger")
    @classmethod
    def _tagger_exists(cls, value: str | None) -> str | None:
        if value is not None and not (Path(value) / "manifest.json").is_file():
            raise ValueError(f"{value} is not a span tagger folder (no manifest.json); "
                             "train one with `aligners train-tagger`")
        return value


class GuardAdapterConfig(_InspectorConfigBase):
    """LoRA on a causal LM's upper decoder layers plus a pooled head: a guard adapter on the
    squad's own base, reading the frozen layers' states from the shared pass."""

    type: Literal["guard-adapter"] = "guard-adapter"
    encoder: str = Field(
        default="smollm2-135m-instruct",
        description="Causal LM the adapter sits on (registry name, folder or HF id).",
    )
    from_layer: PositiveInt = Field(
        default=20,
        description="Lowest tuned decoder layer (0-based); the frozen ones below are read once per "
        "answer, as hidden state from_layer (must be below the model's layer count).",
    )
    rank: PositiveInt = Field(default=8, description="LoRA rank on every linear module of the tuned layers.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training pairs (fractions allowed).")
    batch_size: PositiveInt = Field(default=8)
    lr: float = Field(default=3e-4, gt=0, description="AdamW learning rate (6 % warm-up, linear decay).")
    max_prompt_tokens: int = Field(default=256, ge=8, description="Request tokens kept (its end).")
    max_answer_tokens: int = Field(default=256, ge=8, description="Answer tokens kept (its start).")
    batch_tokens: int = Field(default=8192, ge=256, description="Padded tokens per forward pass.")
    dtype: Literal["float32", "bfloat16"] = Field(default="float32", description="Base model dtype.")
    holdout_fraction: float = Field(
        default=0.2, gt=0, lt=1,
        description="Share of training pairs held out for calibration when no validation split is given.",
    )


class EnsembleConfig(_CalibratedConfigBase):
    """Saved inspectors of one criterion scored together by the mean of their log-odds."""

    type: Literal["ensemble"] = "ensemble"
    members: list[str] = Field(
        min_length=2,
        description="Saved inspector folders (`aligners train-inspector`, any type), trained on the "
        "same data as the ensemble is given (checked when it is trained, as they may not exist yet "
        "when a recipe is read); the saved ensemble keeps a copy of each.",
    )
    weights: list[float] | None = Field(
        default=None,
        description="One positive weight per member in the mean of log-odds (default: equal).",
    )

    @model_validator(mode="after")
    def _one_weight_per_member(self) -> EnsembleConfig:
        if self.weights is not None and (
            len(self.weights) != len(self.members) or min(self.weights) <= 0
        ):
            raise ValueError(f"weights must be {len(self.members)} positive numbers, one per member")
        return self


def _type_of(value: Any) -> str | None:
    """Discriminator that defaults a missing `type:` to embed-logreg (the default inspector)."""
    if isinstance(value, dict):
        return value.get("type", DEFAULT_TYPE)
    return getattr(value, "type", None)


InspectorConfig = Annotated[
    Annotated[EmbedLogRegConfig, Tag("embed-logreg")]
    | Annotated[FinetunedConfig, Tag("finetuned")]
    | Annotated[HiddenProbeConfig, Tag("hidden-probe")]
    | Annotated[GuardAdapterConfig, Tag("guard-adapter")]
    | Annotated[EnsembleConfig, Tag("ensemble")],
    Discriminator(_type_of),
]
INSPECTOR_CONFIG: TypeAdapter[
    EmbedLogRegConfig | FinetunedConfig | HiddenProbeConfig | GuardAdapterConfig | EnsembleConfig
] = TypeAdapter(InspectorConfig)


class SpanTaggerConfig(StrictModel):
    """A span tagger (`configs/taggers/*.yaml`, inspectors/spans.py): which characters of an
    answer a criterion objects to, and what to do with them."""

    action: Literal["replace", "delete"] = Field(
        default="replace",
        description="'replace': write the span type's placeholder ('[PHONE]') in place of each "
        "span (no-pii); 'delete': drop each span with the whitespace it leaves (polite).",
    )
    placeholders: dict[str, str] = Field(
        default_factory=dict, description="Span type → the text written in its place (default '[TYPE]').",
    )
    values_only: bool = Field(
        default=False,
        description="Keep only the words of a span that hold a value (a digit, an '@', a capitalised "
        "word that opens no sentence, line or table cell) and what lies between them: free text "
        "('a rare illness', 'usually') is left as it is (no-pii).",
    )
    name_types: list[str] = Field(
        default_factory=list,
        description="Span types that are names: with values_only, a capitalised word of such a span "
        "that is no common word holds a value even where it opens a sentence ('Gerald works nights.').",
    )
    mask_repeats: bool = Field(
        default=False,
        description="Where the answer repeats what a span holds (a value with a digit or an '@', "
        "several capitalised words, each word of a name), a span there too: a name masked once "
        "and named again hides nothing.",
    )
    cut_sentence_types: list[str] = Field(
        default_factory=list,
        description="Span types whose free text no placeholder can stand for ('had a mild heart "
        "attack'): a span of one with a word of 5+ letters removes its whole sentence or line "
        "(never every sentence of an answer).",
    )
    encoder: str = Field(default="smollm2-135m-instruct", description="Causal LM whose hidden states are read.")
    layers: list[PositiveInt] = Field(
        default_factory=lambda: [21], min_length=1,
        description="Hidden-state indices read, side by side (1 = the first decoder layer's output); "
        "the model runs up to the deepest only.",
    )
    lookahead: int = Field(
        default=2, ge=0, le=8,
        description="Later tokens whose states join each token's features: a causal state has seen "
        "only what comes before, while '(' opens a phone number in view of the digits after it.",
    )
    max_prompt_tokens: int = Field(default=256, ge=8, description="Request tokens kept (its end).")
    max_answer_tokens: int = Field(
        default=2048, ge=8, description="Answer tokens tagged (its start); the rest is left as it is.",
    )
    batch_tokens: int = Field(default=8192, ge=256, description="Padded tokens per forward pass.")
    C: float = Field(default=0.05, gt=0, description="Inverse L2 strength (standardized features).")
    max_iter: int = Field(default=1000, ge=10, description="lbfgs iterations.")
    cv_folds: int = Field(default=4, ge=2, description="Answer-grouped folds for the threshold's out-of-fold scores.")
    threshold_beta: float = Field(
        default=1.0, gt=0,
        description="The threshold on P(span) maximises token F-beta out of fold: above 1 favours "
        "recall (a missed phone number is a leak), below 1 precision (a wrong deletion loses content).",
    )
    max_negative_answers: int = Field(
        default=600, ge=0, description="Answers without spans (good answers) learned from at most.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(default="float32", description="Backbone dtype.")
    random_state: int = Field(default=0, description="Seed for folds and the negative sample.")
    device: str = Field(default="cpu", description="'cpu', 'cuda', 'cuda:0', ...")
