"""`SynthConfig`: everything a synth run needs besides the criterion and the models.

Loaded from `configs/synth/*.yaml` (`aligners synth --config ...`); command-line flags override
single fields. Every field has a default, so an empty file is a valid recipe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from aligners.config import StrictModel


class StageConfig(StrictModel):
    """Sampling for one generation stage."""

    temperature: float = Field(ge=0.0, le=2.0, description="0 = greedy.")
    max_tokens: int = Field(ge=1, le=32768, description="Completion length cap for this stage.")


class FilterConfig(StrictModel):
    """Quality filters; each drop is counted under its own reason in stats.json."""

    near_dup_threshold: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="Drop a question whose estimated Jaccard similarity (MinHash over character "
        "shingles) with an earlier kept one is at least this; 1.0 keeps all but exact duplicates.",
    )
    shingle_chars: int = Field(default=5, ge=1, le=20, description="Character n-gram size.")
    minhash_perms: int = Field(default=128, ge=16, le=1024, description="MinHash permutations.")
    pair_similarity: Literal["minilm", "lexical"] = Field(
        default="minilm",
        description="How y and y' are compared: MiniLM cosine (as in the Aligners paper) or "
        "difflib's character ratio (no model load).",
    )
    identical_pair_threshold: float = Field(
        default=0.98,
        gt=0.0,
        le=1.0,
        description="Drop a needs_correction pair whose y and y' are at least this similar. "
        "Tone-only criteria need a high value: hand-written `polite` corrections keep the facts "
        "and reach 0.975 MiniLM cosine.",
    )
    embed_min_jaccard: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="MiniLM only embeds pairs whose word-set Jaccard reaches this; the rest "
        "count as different (on the seed sets such pairs stay below 0.92 cosine). 0 embeds all.",
    )
    min_prompt_chars: int = Field(default=10, ge=1)
    max_prompt_chars: int = Field(default=1000, ge=1)
    min_answer_chars: int = Field(default=15, ge=1, description="Applies to y and y'.")
    max_answer_chars: int = Field(default=4000, ge=1, description="Applies to y and y'.")

    @model_validator(mode="after")
    def _ranges(self) -> FilterConfig:
        if self.min_prompt_chars > self.max_prompt_chars:
            raise ValueError("min_prompt_chars must not exceed max_prompt_chars")
        if self.min_answer_chars > self.max_answer_chars:
            raise ValueError("min_answer_chars must not exceed max_answer_chars")
        return self


class HarvestVariant(StrictModel):
    """One way of asking the base model, so one prompt yields several answer styles."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$", description="Short slug, e.g. 'greedy'.")
    temperature: float = Field(ge=0.0, le=2.0, description="0 = greedy.")
    system: str | None = Field(
        default=None, description="System prompt (e.g. one that pushes toward compliance)."
    )


class SynthConfig(StrictModel):
    """A synth recipe: sizes, sampling per stage, filters, splits."""

    n_topics: int = Field(default=20, ge=1, description="Topics the teacher proposes.")
    per_topic: int = Field(default=10, ge=1, description="Questions asked per topic.")
    topic_rounds: int = Field(
        default=3,
        ge=1,
        description="Topic requests at most; later rounds ask only for the missing ones. If the "
        "teacher still gives too few, the criterion's own `topics:` fill the gap.",
    )
    seed: int = Field(default=0, description="Run seed: per-request sampling seeds and splits.")
    batch_size: int = Field(
        default=16, ge=1, le=1024, description="Requests handed to the backend at once."
    )
    topics: StageConfig = Field(default_factory=lambda: StageConfig(temperature=0.9, max_tokens=512))
    questions: StageConfig = Field(
        default_factory=lambda: StageConfig(temperature=0.9, max_tokens=768)
    )
    pairs: StageConfig = Field(
        default_factory=lambda: StageConfig(temperature=0.7, max_tokens=1024),
        description="Teacher mode: one generation holds y, the critique and y'.",
    )
    harvest: StageConfig = Field(
        default_factory=lambda: StageConfig(temperature=0.7, max_tokens=384),
        description="Harvest mode: the base model's answers y.",
    )
    review: StageConfig = Field(
        default_factory=lambda: StageConfig(temperature=0.3, max_tokens=768),
        description="Harvest mode: the teacher's verdict, critique and y'.",
    )
    harvest_variants: list[HarvestVariant] = Field(
        default_factory=lambda: [HarvestVariant(name="t0.7", temperature=0.7)],
        min_length=1,
        description="Prompt-file harvest (`--prompts` without a teacher): the sampling variants. "
        "Every prompt gets the first; the others rotate over prompts (see variants_per_prompt). "
        "The length cap is `harvest.max_tokens`.",
    )
    variants_per_prompt: int = Field(
        default=1, ge=1, description="Variants each prompt is answered under (at most all)."
    )
    filters: FilterConfig = Field(default_factory=FilterConfig)
    split_fractions: tuple[float, float, float] = Field(
        default=(0.8, 0.1, 0.1), description="train / validation / test shares, by topic."
    )

    @field_validator("harvest_variants")
    @classmethod
    def _unique_variants(cls, v: list[HarvestVariant]) -> list[HarvestVariant]:
        names = [x.name for x in v]
        if len(set(names)) != len(names):
            raise ValueError(f"harvest_variants names must be unique, got {names}")
        return v

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {v}")
        return v
