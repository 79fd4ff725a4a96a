"""On-disk feature rows (ALIGNERS_FEATURE_CACHE): a second run reads what the first computed."""

from __future__ import annotations

import numpy as np

from inspectors import embed_logreg, feature_store
from inspectors.embed_logreg import cached_rows


def test_rows_survive_the_process_cache_and_skip_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv(feature_store.ENV_VAR, str(tmp_path))
    feature_store.store_for.cache_clear()
    calls: list[list] = []

    def compute(items):
        calls.append(list(items))
        return [np.full(3, float(len(p) + len(a)), dtype=np.float32) for p, a in items]

    key = ("tiny-random-llama", "hidden-probe", (1,), ("answer_mean",))
    first = cached_rows(key, [("q", "a"), ("q", "bb")], compute)
    embed_logreg.clear_embedding_cache()
    feature_store.store_for.cache_clear()  # a new process: nothing in memory
    again = cached_rows(key, [("q", "bb"), ("q", "a"), ("q", "ccc")], compute)
    assert calls == [[("q", "a"), ("q", "bb")], [("q", "ccc")]]  # only the new pair was computed
    assert np.array_equal(again[0], first[1]) and again[2][0] == 4.0
    # another setting is another store; a damaged shard is ignored, not trusted
    cached_rows((*key[:2], (2,), key[3]), [("q", "a")], compute)
    assert len(calls) == 3
    shard = min(feature_store.store_for(key).folder.glob("shard-*.safetensors"))
    shard.write_bytes(b"not a shard")  # the shard holding ("q", "a") and ("q", "bb")
    embed_logreg.clear_embedding_cache()
    feature_store.store_for.cache_clear()
    cached_rows(key, [("q", "a"), ("q", "ccc")], compute)
    assert len(calls) == 4 and calls[-1] == [("q", "a")]
    feature_store.store_for.cache_clear()


def test_off_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(feature_store.ENV_VAR, raising=False)
    feature_store.store_for.cache_clear()
    assert feature_store.store_for(("tiny-random-llama",)) is None
