"""LoRA training primitives shared by aligner training, ILA layer selection and analysis: the
training mix, tokenized batches, the answer-only loss, and LoRA on chosen layers (peft).

Foundation layer: the jobs (`aligners.train`, `aligners.importance`, `aligners.analysis`) build
on these and never on each other's loops; a squad that loads an aligner needs only `ADAPTER_DIR`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from aligners.dataset import round_robin
from aligners.formatting import IGNORE_INDEX, TokenizedExample, tokenize_pair
from aligners.prefix_cache import PrefixCache, causal_lm, decoder_slice
from aligners.schema import Pair
from aligners.train_config import AlignerTrainConfig

ADAPTER_DIR = "adapter"  # the peft adapter folder inside an aligner artifact


# --- data ----------------------------------------------------------------------------------


def training_pairs(pairs: Sequence[Pair], cfg: AlignerTrainConfig) -> list[Pair]:
    """Corrections, capped already-good pairs, and keep-as-is copies of corrections.

    Without keep-as-is examples an aligner learns "always refuse": an early version of this
    project rewrote half of the benign answers. Copies map the corrected answer to itself.
    """
    rng = random.Random(cfg.seed)
    corrections = [p for p in pairs if p.needs_correction]
    benign = [p for p in pairs if not p.needs_correction]
    rng.shuffle(benign)
    if cfg.max_benign is not None:
        benign = benign[: cfg.max_benign]
    n_keep = round(cfg.keep_as_is_fraction * len(corrections))
    keep = [
        p.model_copy(update={"id": f"{p.id}-keep", "misaligned": p.aligned, "needs_correction": False})
        for p in rng.sample(corrections, n_keep)
    ]
    out = corrections + benign + keep
    rng.shuffle(out)
    return out


def eval_pairs(validation: Sequence[Pair], n: int) -> list[Pair]:
    """Up to n validation pairs alternating corrections and already-good answers. The split lists
    pairs in topic order, and a head of only already-good answers (no-pii's was) makes the eval
    loss a near-zero copying loss that stops training early for the wrong reason."""
    fixes = [p for p in validation if p.needs_correction]
    good = [p for p in validation if not p.needs_correction]
    return round_robin([fixes, good])[:n]


def tokenize_all(tokenizer, pairs: Sequence[Pair], max_length: int, cut_answers: bool = False) -> list[TokenizedExample]:
    return [tokenize_pair(tokenizer, p, max_length, cut_answer=cut_answers) for p in pairs]


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(examples: Sequence[TokenizedExample], size: int, pad_id: int, seed: int | None):
    """Length-sorted chunks (less padding), in `epoch_order(…, seed)` when `seed` is given. The
    chunks are the same whatever the seed: training collates them once and reorders per epoch."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    chunks = [collate([examples[i] for i in order[i : i + size]], pad_id) for i in range(0, len(order), size)]
    return chunks if seed is None else [chunks[i] for i in epoch_order(len(chunks), seed)]


def epoch_order(n: int, seed: int) -> list[int]:
    """The shuffled order of n batches in the epoch seeded `seed`."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


# --- model ---------------------------------------------------------------------------------


def num_layers(model) -> int:
    return model.config.num_hidden_layers


def lora_config(cfg: AlignerTrainConfig, layers: list[int] | None):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def attach_lora(model, cfg: AlignerTrainConfig, layers: list[int] | None):
    """Wrap `model` with trainable LoRA on `layers` (None = every layer)."""
    from peft import get_peft_model

    torch.manual_seed(cfg.seed)
    return get_peft_model(model, lora_config(cfg, layers))


def answer_loss(model, batch: dict[str, torch.Tensor], prefix: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean cross-entropy over the target tokens, projecting only those positions to the vocab.

    SmolLM2's 49k-token head applied to every position dominates CPU time and memory (a batch of
    8×384 tokens makes 600 MB of logits); targets are a third of the tokens, so we skip the rest.
    Same value as the model's own `labels=` loss. `prefix` = (L, hidden states entering layer L)
    from a `PrefixCache`: the forward starts at layer L.
    """
    lm = causal_lm(model)
    if prefix is None:
        hidden = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          use_cache=False).last_hidden_state
    else:
        depth, entering = prefix
        with decoder_slice(lm.model, depth):
            hidden = lm.model(inputs_embeds=entering, attention_mask=batch["attention_mask"],
                              use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    logits = lm.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


@torch.no_grad()
def eval_loss(model, eval_batches, prefix_cache: PrefixCache | None = None) -> float:
    """Mean token loss over the target tokens of every batch (started from the cache if given)."""
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(eval_batches):
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        prefix = prefix_cache.hidden(i) if prefix_cache is not None else None
        total += answer_loss(model, batch, prefix).item() * n
        count += n
    model.train()
    return total / max(count, 1)
