"""Feature rows kept on disk between runs, so the same answers are not encoded twice.

A hidden-state probe spends nearly all its training time running SmolLM2 over thousands of
answers, and every run over the same data (each starter inspector, each benchmark arm, a refit
with another C) used to pay it again. With `ALIGNERS_FEATURE_CACHE=DIR` set, rows computed under
a cache key are appended to DIR/<key hash>/ as safetensors shards (a `rows` matrix, the item
hashes in the metadata) and read back by later runs. Off by default: tests and one-off scoring
keep nothing on disk. The key names the encoder and every setting that changes a row; the
encoder's content hash is added to it, so a changed model never reuses old rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aligners.atomic import atomic_path

ENV_VAR = "ALIGNERS_FEATURE_CACHE"


def item_hash(item) -> str:
    return hashlib.sha256(json.dumps(item, ensure_ascii=False).encode()).hexdigest()


def _encoder_hash(name: str) -> str:
    from aligners.models import model_id_and_hash

    return model_id_and_hash(name)[1]


class FeatureStore:
    """item → row for one cache key, backed by the shards in one folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.index: dict[str, tuple[Path, int]] = {}
        self._loaded: dict[Path, np.ndarray] = {}
        for shard in sorted(folder.glob("shard-*.safetensors")):
            self._index_shard(shard)

    def _index_shard(self, shard: Path) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(shard), "np") as fh:
                keys = json.loads(fh.metadata()["keys"])
        except (SafetensorError, OSError, KeyError, TypeError, ValueError):
            return  # a damaged shard is skipped: its rows are computed again
        for row, key in enumerate(keys):
            self.index[key] = (shard, row)

    def get(self, items: Sequence) -> dict[int, np.ndarray]:
        """Rows found on disk, by position in `items`."""
        from safetensors.numpy import load_file

        out = {}
        for i, item in enumerate(items):
            hit = self.index.get(item_hash(item))
            if hit is None:
                continue
            shard, row = hit
            if shard not in self._loaded:
                self._loaded[shard] = load_file(str(shard))["rows"]
            out[i] = self._loaded[shard][row]
        return out

    def put(self, items: Sequence, rows: Sequence[np.ndarray]) -> None:
        """Append one shard (temp file + rename: a crash leaves no half shard)."""
        from safetensors.numpy import save_file

        if not items:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = [item_hash(x) for x in items]
        n = len(list(self.folder.glob("shard-*.safetensors")))
        shard = self.folder / f"shard-{n:05d}-{keys[0][:8]}.safetensors"
        with atomic_path(shard) as tmp:
            save_file({"rows": np.stack(rows).astype(np.float32)}, str(tmp), metadata={"keys": json.dumps(keys)})
        self._index_shard(shard)


@functools.lru_cache(maxsize=32)
def store_for(cache_key: tuple) -> FeatureStore | None:
    """The on-disk store for `cache_key` (whose first element names the encoder), or None when
    ALIGNERS_FEATURE_CACHE is unset."""
    root = os.environ.get(ENV_VAR)
    if not root or not cache_key:
        return None
    full = json.dumps([[str(k) for k in cache_key], _encoder_hash(str(cache_key[0]))])
    return FeatureStore(Path(root) / hashlib.sha256(full.encode()).hexdigest()[:16])
