"""Frozen-prefix cache: when an aligner tunes only layers L and above, layers 0…L−1 hold no
adapter and no dropout, so they compute the same hidden states for the same batch in every
epoch. We run them once per batch, keep what enters layer L, and start every later pass there.

transformers' decoders have no "start at layer L" entry point, so `decoder_slice` runs the model's
own forward over a slice of its own layer list (its causal mask, positions and rotary code stay
the ones it always uses): the cached run computes exactly what the uncached one does.

Kept in memory, or with `folder` only on disk (read back on each use) as one safetensors file per
batch under a key of the base's hash, the batches' tokens and L (a resumed or repeated run reuses
them). A cache larger
than its size limit is not built: training runs uncached and says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aligners.atomic import atomic_path

log = logging.getLogger(__name__)


def causal_lm(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_of(model):
    """The decoder stack (`.layers`, `.norm`) of a causal LM, peft-wrapped or not."""
    return causal_lm(model).model


@contextlib.contextmanager
def decoder_slice(decoder, start: int, stop: int | None = None) -> Iterator[None]:
    """Run only `decoder.layers[start:stop]`; the final norm only when the slice reaches the top."""
    layers, norm = decoder.layers, decoder.norm
    decoder.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if stop is not None and stop < len(layers):
        decoder.norm = torch.nn.Identity()
    try:
        yield
    finally:
        decoder.layers, decoder.norm = layers, norm


def unsupported_reason(model, depth: int) -> str | None:
    """Why layers below `depth` cannot be cached exactly (None when they can)."""
    decoder = decoder_of(model)
    if not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList) or not hasattr(decoder, "norm"):
        return f"{type(decoder).__name__} has no `.layers`/`.norm` decoder stack"
    for i, layer in enumerate(list(decoder.layers)[:depth]):
        if any(p.requires_grad for p in layer.parameters()):
            return f"layer {i} below the cached depth {depth} is trainable"
        if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in layer.modules()):
            return f"layer {i} has dropout, so its output differs between epochs"
    if getattr(decoder.config, "attention_dropout", 0.0):
        return "the model uses attention dropout, so the frozen layers' output differs between epochs"
    return None


class PrefixCache:
    """The hidden states entering layer `depth` for each of a fixed list of batches, computed on
    first use (`hidden(i)`) and kept; `answer_loss(..., prefix=cache.hidden(i))` starts there."""

    def __init__(self, model, depth: int, batches: Sequence[dict], *, folder: Path | None = None, key: str = ""):
        self.model, self.depth, self.batches = model, depth, batches
        self.folder = folder / self.fingerprint(key, depth, batches) if folder is not None else None
        self._kept: dict[int, torch.Tensor] = {}

    @staticmethod
    def fingerprint(key: str, depth: int, batches: Sequence[dict]) -> str:
        digest = hashlib.sha256(f"{key}|{depth}".encode())
        for batch in batches:
            digest.update(batch["input_ids"].numpy().tobytes())
            digest.update(batch["attention_mask"].numpy().tobytes())
        return digest.hexdigest()[:16]

    @staticmethod
    def size_bytes(model, batches: Sequence[dict]) -> int:
        """What the cache holds once full: one hidden vector per (padded) token."""
        config = decoder_of(model).config
        width = torch.finfo(next(model.parameters()).dtype).bits // 8
        return sum(b["input_ids"].numel() for b in batches) * config.hidden_size * width

    def hidden(self, index: int) -> tuple[int, torch.Tensor]:
        if self.folder is None:
            if index not in self._kept:
                self._kept[index] = self._computed(index)
            return self.depth, self._kept[index]
        path = self.folder / f"{index:06d}.safetensors"
        if not path.is_file():
            with atomic_path(path) as tmp:
                save_file({"hidden": self._computed(index).contiguous()}, tmp)
        return self.depth, load_file(path)["hidden"]

    def _computed(self, index: int) -> torch.Tensor:
        batch = self.batches[index]
        decoder = decoder_of(self.model)
        with torch.no_grad(), decoder_slice(decoder, 0, self.depth):
            return decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).last_hidden_state


def build_prefix_cache(model, depth: int, batches: Sequence[dict], *, max_gb: float, folder: str | None = None,
                       key: str = "") -> tuple[PrefixCache | None, dict]:
    """A cache for `batches` at `depth`, or None with the reason (recorded in the manifest)."""
    if depth <= 0 or not batches:
        return None, {"used": False, "reason": "no frozen layers below the tuned ones" if depth <= 0 else "no batches"}
    reason = unsupported_reason(model, depth)
    size = PrefixCache.size_bytes(model, batches)
    info = {"depth": depth, "gb": round(size / 2**30, 3), "where": folder or "memory"}
    if reason is None and size > max_gb * 2**30:
        reason = (f"the frozen-prefix cache needs {size / 2**20:,.1f} MB, over prefix_cache_max_gb={max_gb}; "
                  "raise it, shorten max_length, or train without the cache (prefix_cache: false)")
    if reason is not None:
        log.warning("training without the frozen-prefix cache: %s", reason)
        return None, {"used": False, "reason": reason} | info
    return PrefixCache(model, depth, batches, folder=Path(folder) if folder else None, key=key), {"used": True} | info
