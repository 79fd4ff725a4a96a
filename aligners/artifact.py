"""A trained aligner folder, read for inference: manifest checks, TAIA view, merged export.

TAIA (2405.20192): an aligner trained with LoRA on attention and MLP can be served with its
attention deltas only. We build that view as a second peft adapter folder holding just the
attention tensors, so every backend (transformers, vLLM) loads it like any other adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aligners.atomic import atomic_dir
from aligners.formatting import FORMAT_VERSION
from aligners.lora import ADAPTER_DIR
from aligners.manifest import (
    ManifestError,
    file_sha256,
    read_manifest,
    refuse_nonfinite,
    verify_checksums,
    write_manifest,
)
from aligners.models import cache_root
from aligners.train_config import ATTENTION_MODULES

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
RETRAIN = "retrain it with `aligners train-aligner`"


@dataclass(frozen=True)
class AlignerArtifact:
    path: Path
    manifest: dict

    @classmethod
    def load(cls, path: Path | str) -> AlignerArtifact:
        """Read and verify: manifest kind and format, the adapter files' SHA-256, finite weights."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        manifest = read_manifest(path, "aligner", FORMAT_VERSION)
        weights = path / ADAPTER_DIR / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise ManifestError(f"{weights} is missing (the manifest is there): re-copy the whole folder, or {RETRAIN}")
        verify_checksums(path, manifest.get("files", {}).get("sha256"), RETRAIN)
        try:
            tensors = load_file(weights)
        except (SafetensorError, OSError) as exc:
            raise ManifestError(f"{weights}: not a readable safetensors file ({exc}); {RETRAIN}") from None
        refuse_nonfinite(tensors, weights, RETRAIN)
        return cls(path, manifest)

    @property
    def criterion(self) -> str:
        return self.manifest["criterion"]

    @property
    def base(self) -> str:
        return self.manifest["base"]

    def adapter_dir(self, taia: bool | None = None) -> Path:
        """The adapter to load: the full one, or its attention-only TAIA view.

        `taia=None` follows the manifest's `inference` field (set by `--taia` at training)."""
        if taia is None:
            taia = self.manifest.get("inference") == "taia"
        full = self.path / ADAPTER_DIR
        return attention_only_adapter(full) if taia else full


def attention_only_adapter(adapter: Path) -> Path:
    """A cached copy of `adapter` without its MLP LoRA tensors (keyed by the weights' hash)."""
    from safetensors.torch import load_file, save_file

    target = cache_root() / "taia" / file_sha256(adapter / ADAPTER_WEIGHTS)[:16]
    if (target / ADAPTER_WEIGHTS).is_file():
        return target
    weights = load_file(adapter / ADAPTER_WEIGHTS)
    kept = {k: v for k, v in weights.items() if any(f".{m}." in k for m in ATTENTION_MODULES)}
    if not kept:
        raise ValueError(f"{adapter} has no attention LoRA weights: TAIA needs attention modules")
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    config["target_modules"] = sorted(m for m in ATTENTION_MODULES if any(f".{m}." in k for k in kept))
    with atomic_dir(target) as tmp:
        save_file(kept, tmp / ADAPTER_WEIGHTS)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return target


def export_merged(aligner_dir: Path | str, out_dir: Path | str, taia: bool | None = None, model=None, tokenizer=None) -> Path:
    """Merge the adapter into its base and save a standalone model (safetensors + tokenizer)."""
    from peft import PeftModel

    from aligners.models import load_causal_lm

    art = AlignerArtifact.load(aligner_dir)
    if model is None:
        model, tokenizer = load_causal_lm(art.base)
    merged = PeftModel.from_pretrained(model, str(art.adapter_dir(taia))).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_manifest(out, {**art.manifest, "kind": "merged-aligner", "merged_from": str(art.path)})
    return out
