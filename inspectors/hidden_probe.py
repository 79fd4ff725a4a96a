"""`hidden-probe`: a logistic probe on a causal LM's own hidden states (default: SmolLM2).

The (prompt, answer) pair is rendered with the model's chat template (user = prompt, assistant =
answer), the model runs up to the deepest probed layer only, and each probed layer's hidden
states are pooled over the answer's tokens. Because the answer tokens attend to the request, the
features say "what this answer does *given* this request" — compliance with a harmful request
and the same steps for a benign one look different, which a pair of independent sentence
embeddings cannot express well. It is also the representation the squad's own backbone computes,
so inspectors can share the base model (as IBM Granite Guardian and NVIDIA's guards ship
detectors as adapters on a shared base).

Pooling blocks (`pooling`): `answer_mean` (mean over answer tokens), `answer_max` (element-wise
max: one harmful step or one insult in a long answer stays visible), `last` (the final token).
Prompt and answer are truncated to `max_prompt_tokens` (keeping the request's end) and
`max_answer_tokens` (keeping the answer's start, where compliance or refusal shows).

With `request_gate`, the gate (inspectors/linear.py) reads the probed layers' states at the
request's last token, from a pass over the request alone: the same model, no second encoder.
In a squad, one pass serves the probe, its gate, its tagger and the other members' probes
(`readings`, inspectors.shared_reading).

With `span_tagger` (a tagger folder from `aligners train-tagger`), two more features per answer:
the tagger's evidence that some token of it is a span the criterion objects to (the highest and
the top-3 mean P(span), as logits; inspectors/spans.py), stacked beside the probe's out-of-fold
logit (inspectors/linear.py). A phone number or one insult is a few
tokens of a long answer, which mean and max pooling dilute; a tagger trained on tokens people
marked reads them directly. The saved inspector carries a copy of the tagger (`tagger/`), checked
like its own weights. The tagger reads its own layer, over up to 2,048 answer tokens.

Cost: the model runs `max(layers)` of its layers over prompt + answer, ~6× MiniLM's compute per
answer for SmolLM2 at layer 15; `benchmarks/inspector_generalization.py` reports answers/s
next to MiniLM's.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aligners.manifest import confined
from inspectors.calibration import log_odds
from inspectors.embed_logreg import cached_rows
from inspectors.linear import LinearInspector
from inspectors.shared_reading import Reading, pair_state_batches, request_state_rows
from inspectors.spans import load_span_tagger

POOLINGS = ("answer_mean", "answer_max", "last")
TAGGER_DIR = "tagger"  # the span tagger's copy inside a saved inspector


class HiddenProbeInspector(LinearInspector):
    """Logistic probe on a causal LM's hidden states; see the module docstring. Parameters are
    those of `inspectors.config.HiddenProbeConfig` plus `criterion`."""

    type: ClassVar[str] = "hidden-probe"

    def __init__(
        self,
        encoder: str = "smollm2-135m-instruct",
        layers: Sequence[int] = (15,),
        pooling: Sequence[str] = ("answer_mean", "answer_max"),
        max_prompt_tokens: int = 256,
        max_answer_tokens: int = 256,
        batch_tokens: int = 8192,
        C: float = 0.05,
        max_iter: int = 3000,
        cv_folds: int = 5,
        request_gate: bool = False,
        request_gate_C: float = 1.0,
        request_guard: float | None = None,
        answer_model_on: str = "all",
        span_tagger: str | None = None,
        dtype: str = "float32",
        calibration: str = "sigmoid",
        threshold_target: str = "recall",
        threshold_value: float = 0.95,
        random_state: int = 0,
        device: str = "cpu",
        criterion: str | None = None,
    ):
        self.encoder = encoder
        self.layers = layers
        self.pooling = pooling
        self.max_prompt_tokens = max_prompt_tokens
        self.max_answer_tokens = max_answer_tokens
        self.batch_tokens = batch_tokens
        self.C = C
        self.max_iter = max_iter
        self.cv_folds = cv_folds
        self.request_gate = request_gate
        self.request_gate_C = request_gate_C
        self.request_guard = request_guard
        self.answer_model_on = answer_model_on
        self.span_tagger = span_tagger
        self.dtype = dtype
        self.calibration = calibration
        self.threshold_target = threshold_target
        self.threshold_value = threshold_value
        self.random_state = random_state
        self.device = device
        self.criterion = criterion

    def _check_params(self) -> None:
        bad = [p for p in self.pooling if p not in POOLINGS]
        if bad or not self.pooling or not self.layers or min(self.layers) < 1:
            raise ValueError(
                f"pooling must be a non-empty subset of {list(POOLINGS)} and layers positive "
                f"integers (1 = the first decoder layer's output), got {self.pooling}, {self.layers}"
            )

    def featurize(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """(n, hidden * len(layers) * len(pooling)) pooled hidden states, then the span tagger's
        two evidence logits when `span_tagger` is set."""
        self._check_params()
        key = (self.encoder, "hidden-probe", tuple(self.layers), tuple(self.pooling),
               self.max_prompt_tokens, self.max_answer_tokens, self.dtype, self.device)
        pairs = list(zip(prompts, answers, strict=True))
        if not pairs:
            return np.zeros((0, 0), dtype=np.float32)
        X = np.stack(cached_rows(key, pairs, self._pooled_states))
        if self.span_tagger is None:
            return X
        return np.hstack([X, log_odds(self._tagger().evidence(prompts, answers))]).astype(np.float32)

    @property
    def n_stacked(self) -> int:
        return 0 if self.span_tagger is None else 2

    def _tagger(self):
        """The span tagger: the artifact's own copy once loaded, else the `span_tagger` folder."""
        if getattr(self, "tagger_", None) is None:
            self.tagger_dir_ = Path(self.span_tagger)
            self.tagger_ = load_span_tagger(self.tagger_dir_)
        return self.tagger_

    def _save_model_files(self, path: Path) -> dict[str, Any]:
        if self.span_tagger is None:
            return {}
        self._tagger()
        if self.tagger_dir_.resolve() != (path / TAGGER_DIR).resolve():
            shutil.copytree(self.tagger_dir_, path / TAGGER_DIR, dirs_exist_ok=True)
        return {"span_tagger": TAGGER_DIR}

    def _load_model(self, path: Path, tensors: dict[str, np.ndarray]) -> None:
        super()._load_model(path, tensors)
        if self.span_tagger is not None:
            self.tagger_dir_ = confined(path, TAGGER_DIR)
            self.tagger_ = load_span_tagger(self.tagger_dir_)

    def request_features(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, hidden * len(layers)): the probed layers' states at the request's last token (the
        end of the chat header, where the model has read the request and not yet answered).
        Causal attention makes them the same as in a pass over request + answer, so the gate
        costs a pass over the request only."""
        self._check_params()
        key = (self.encoder, "hidden-probe-request", tuple(self.layers), self.max_prompt_tokens,
               self.dtype, self.device)
        if not prompts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(cached_rows(key, list(prompts), self._request_states))

    def _request_states(self, prompts: list[str]) -> np.ndarray:
        return request_state_rows(self.reading, prompts, self.batch_tokens, f"{self.encoder} states of requests")

    @property
    def reading(self) -> Reading:
        """What this probe reads of its encoder (inspectors.shared_reading)."""
        return Reading(self.encoder, tuple(self.layers), self.max_prompt_tokens, self.max_answer_tokens,
                       self.dtype, self.device)

    def readings(self) -> list[Reading]:
        return [self.reading] + (self._tagger().readings() if self.span_tagger is not None else [])

    def _pooled_states(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(pairs)
        for batch, states, mask, answer in pair_state_batches(
                self.reading, [p for p, _ in pairs], [a for _, a in pairs], self.batch_tokens,
                description=f"{self.encoder} states of answers"):
            blocks = []
            device = states[self.layers[0]].device
            last = (mask.sum(1) - 1).to(device)
            sel = answer.unsqueeze(-1).to(device)
            for layer in self.layers:
                h = states[layer].float()
                for pool in self.pooling:
                    if pool == "answer_mean":
                        blocks.append((h * sel).sum(1) / sel.sum(1).clamp(min=1))
                    elif pool == "answer_max":
                        blocks.append(h.masked_fill(~sel, float("-inf")).amax(1))
                    else:
                        blocks.append(h[torch.arange(len(batch)), last])
            for row, i in zip(torch.cat(blocks, dim=1).cpu().numpy(), batch, strict=True):
                out[i] = row
        return np.stack(out)
