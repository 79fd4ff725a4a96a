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

Cost: the model runs `max(layers)` of its layers over prompt + answer, ~6× MiniLM's compute per
answer for SmolLM2 at layer 15; `benchmarks/inspector_generalization.py` reports answers/s
next to MiniLM's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from inspectors.embed_logreg import cached_rows, token_batches
from inspectors.linear import LinearInspector

POOLINGS = ("answer_mean", "answer_max", "last")
_BACKBONES: dict[tuple, tuple] = {}


def get_backbone(name: str, depth: int, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) of `name` keeping only its first `depth` decoder layers (the rest are
    never needed by a probe), loaded once per process."""
    key = (name, depth, device, dtype)
    if key not in _BACKBONES:
        import torch

        from aligners.models import load_causal_lm

        model, tok = load_causal_lm(name, dtype=dtype, device=device)
        body = model.model
        if depth > len(body.layers):
            raise ValueError(f"{name} has {len(body.layers)} layers; cannot probe layer {depth}")
        body.layers = body.layers[:depth]
        body.config.num_hidden_layers = depth
        # the model returns its last hidden state after the final norm; a probed layer must
        # look the same whether or not it is the deepest one, so drop the norm
        body.norm = torch.nn.Identity()
        _BACKBONES[key] = (body, tok)
    return _BACKBONES[key]


def chat_head(tokenizer, prompt: str, max_prompt: int) -> list[int]:
    """Token ids of the chat-rendered request up to where the assistant's answer begins (the
    request's end is kept)."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_prompt:]
    head = tokenizer.apply_chat_template(
        [{"role": "user", "content": tokenizer.decode(p_ids)}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return tokenizer(head, add_special_tokens=False)["input_ids"]


def encode_pairs(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], max_prompt: int, max_answer: int
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each chat-rendered (prompt, answer) and where its answer starts."""
    ids, starts = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        head_ids = chat_head(tokenizer, prompt, max_prompt)
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer]
        if not a_ids:  # an empty answer still gets one position to pool
            a_ids = [tokenizer.eos_token_id]
        ids.append(head_ids + a_ids)
        starts.append(len(head_ids))
    return ids, starts


def hidden_state_batches(body, tok, ids: list[list[int]], starts: list[int], batch_tokens: int):
    """(batch indices, hidden states, attention mask, answer-token mask) per length-sorted batch
    of at most `batch_tokens` padded tokens; tokens from `starts[i]` on are the answer."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for batch in token_batches([len(x) for x in ids], batch_tokens):
        longest = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        answer = torch.zeros((len(batch), longest), dtype=torch.bool)
        for row, i in enumerate(batch):  # right padding: positions match unpadded runs
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
            answer[row, starts[i] : len(ids[i])] = True
        with torch.no_grad():
            states = body(
                input_ids=input_ids.to(body.device),
                attention_mask=mask.to(body.device),
                output_hidden_states=True,
            ).hidden_states
        yield batch, states, mask, answer


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
        """(n, hidden * len(layers) * len(pooling)) pooled hidden states."""
        self._check_params()
        key = (self.encoder, "hidden-probe", tuple(self.layers), tuple(self.pooling),
               self.max_prompt_tokens, self.max_answer_tokens, self.dtype, self.device)
        pairs = list(zip(prompts, answers, strict=True))
        if not pairs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(cached_rows(key, pairs, self._pooled_states))

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
        import torch

        body, tok = get_backbone(self.encoder, max(self.layers), self.device, self.dtype)
        ids = [chat_head(tok, p, self.max_prompt_tokens) for p in prompts]
        out = np.zeros((len(ids), body.config.hidden_size * len(self.layers)), dtype=np.float32)
        for batch, states, mask, _ in hidden_state_batches(body, tok, ids, [len(x) for x in ids], self.batch_tokens):
            last = (mask.sum(1) - 1).to(body.device)
            rows = torch.arange(len(batch), device=body.device)
            out[batch] = np.hstack([states[layer][rows, last].float().cpu().numpy()
                                    for layer in self.layers])
        return out

    def _pooled_states(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        body, tok = get_backbone(self.encoder, max(self.layers), self.device, self.dtype)
        ids, starts = encode_pairs(
            tok, [p for p, _ in pairs], [a for _, a in pairs], self.max_prompt_tokens,
            self.max_answer_tokens,
        )
        width = body.config.hidden_size * len(self.layers) * len(self.pooling)
        out = np.zeros((len(ids), width), dtype=np.float32)
        for batch, states, mask, answer in hidden_state_batches(body, tok, ids, starts, self.batch_tokens):
            blocks = []
            last = mask.sum(1) - 1
            sel = answer.unsqueeze(-1).to(body.device)
            for layer in self.layers:
                h = states[layer].float()
                for pool in self.pooling:
                    if pool == "answer_mean":
                        blocks.append((h * sel).sum(1) / sel.sum(1).clamp(min=1))
                    elif pool == "answer_max":
                        blocks.append(h.masked_fill(~sel, float("-inf")).amax(1))
                    else:
                        blocks.append(h[torch.arange(len(batch)), last.to(body.device)])
            out[batch] = torch.cat(blocks, dim=1).cpu().numpy()
        return out
