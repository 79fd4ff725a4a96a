"""Typed recipe for aligner training (`configs/aligners/*.yaml`), litgpt/trl style.

Kept apart from train.py so that loading a recipe (CLI help, config tests) never imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from aligners.config import StrictModel

ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]


class ImportanceConfig(StrictModel):
    """ILA stage 1 (2410.17875): train LoRA briefly on every layer, then freeze it and learn a
    relaxed binary gate per layer under a budget of k open gates; layers that win it matter."""

    method: Literal["gates", "grad-norm"] = Field(
        default="gates", description="'gates' (ILA) or the cheaper gradient-norm proxy."
    )
    warmup_steps: int = Field(default=40, ge=0, description="LoRA steps before gates are learned.")
    gate_steps: int = Field(default=60, ge=1, description="Steps learning the gates (LoRA frozen).")
    gate_lr: float = Field(default=0.1, gt=0)
    batches: int = Field(default=8, ge=1, description="Batches averaged by the grad-norm proxy.")
    batch_size: int = Field(default=4, ge=1, description="Examples per importance step.")
    max_length: int = Field(default=256, ge=32, description="Tokens per example while measuring.")
    top_k_fraction: float = Field(default=0.25, gt=0, le=1, description="Share of layers kept.")
    top_k: int | None = Field(default=None, ge=1, description="Absolute k; overrides the fraction.")
    cost_share: float | None = Field(
        default=None, gt=0, le=1,
        description="Cost-aware choice: the best k layers at or above the highest depth whose best k keep "
        "this share of the plain top-k's summed importance (backward stops there). None = plain ILA top-k.",
    )

    def k_for(self, num_layers: int) -> int:
        k = self.top_k if self.top_k is not None else round(self.top_k_fraction * num_layers)
        return max(1, min(num_layers, k))


class AlignerTrainConfig(StrictModel):
    """Everything that decides an aligner: data use, LoRA shape, layers, optimisation."""

    base: str = Field(default="smollm2-135m-instruct", description="Registry name, HF id or path.")
    criterion: str | None = Field(default=None, description="Defaults to the data's criterion.")
    layers: Literal["auto", "all"] | list[int] = Field(
        default="auto", description="'auto' = ILA top-k, 'all', or explicit layer indices."
    )
    importance: ImportanceConfig = Field(default_factory=ImportanceConfig)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ATTENTION_MODULES + MLP_MODULES)
    taia: bool = Field(
        default=False,
        description="TAIA (2405.20192): train attention+MLP LoRA, infer with attention deltas only.",
    )
    keep_as_is_fraction: float = Field(
        default=0.3, ge=0, le=1,
        description="Share of correction pairs also used as (x, y') → y' keep-as-is examples.",
    )
    max_benign: int | None = Field(
        default=150, ge=0, description="Cap on already-good (needs_correction=false) pairs."
    )
    max_length: int = Field(default=384, ge=32, description="Tokens per example.")
    cut_long_answers: bool = Field(
        default=False,
        description="A pair over max_length whose target is not a copy of its answer (a refusal) drops the "
        "answer's middle instead of being left out; for criteria whose corrections do not keep the answer's content.",
    )
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=3e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps; overrides epochs.")
    eval_every: int = Field(default=25, ge=1, description="Optimizer steps between validations.")
    max_eval_examples: int = Field(default=64, ge=1)
    early_stopping_patience: int = Field(default=3, ge=1, description="Evals without improvement.")
    checkpoint_every: int = Field(default=25, ge=1, description="Optimizer steps between checkpoints.")
    prefix_cache: bool = Field(
        default=True,
        description="Run the frozen layers below the lowest tuned one once per batch and start every later "
        "pass above them (exact: same losses and adapter as without it).",
    )
    prefix_cache_dir: str | None = Field(
        default=None, description="Keep that cache on disk here (reused by resumed and repeated runs); None = memory."
    )
    prefix_cache_max_gb: float = Field(
        default=2.0, gt=0, description="A cache larger than this is not built: training runs without it and says why."
    )
    seed: int = 0

    @field_validator("layers")
    @classmethod
    def _layers_non_empty(cls, v):
        if isinstance(v, list) and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError("explicit layers must be distinct, non-negative and non-empty")
        return v

    @model_validator(mode="after")
    def _taia_needs_attention_and_mlp(self) -> AlignerTrainConfig:
        if self.taia:
            has_attn = any(m in ATTENTION_MODULES for m in self.target_modules)
            has_mlp = any(m in MLP_MODULES for m in self.target_modules)
            if not (has_attn and has_mlp):
                raise ValueError("taia: true needs target_modules with attention and MLP projections")
        return self
