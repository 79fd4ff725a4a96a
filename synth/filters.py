"""Quality filters for synthetic data, each reporting what it dropped and why.

- exact duplicates: questions equal after case/punctuation/whitespace normalisation;
- near duplicates: MinHash LSH (datasketch) over character shingles, verified by the MinHash
  Jaccard estimate. Chosen over MiniLM cosine for questions because it needs no model, is
  deterministic and linear-time, and near-duplicate *questions* from a teacher are mostly
  lexical rewrites ("How do I X?" / "How can I X?"), which shingles catch well;
- identical pairs: y and y′ that barely differ teach nothing (needs_correction pairs only); MiniLM
  cosine as in the Aligners paper, or difflib's ratio when no model load is wanted;
- length limits on the prompt and on both answers.

Every filter keeps the first of a group and is order-stable, so reruns (resume) drop the same items.
"""

from __future__ import annotations

import difflib
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Generic, TypeVar

T = TypeVar("T")

DROP_REASONS = (
    "topic_duplicate",
    "question_exact_duplicate",
    "question_near_duplicate",
    "prompt_length",
    "answer_length",
    "identical_pair",
    "truncated",
)


@dataclass
class DropReport:
    """How many items each filter dropped, plus the dropped items for `dropped.jsonl`."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    records: list[dict] = field(default_factory=list)

    def add(self, reason: str, item: dict) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.records.append({"reason": reason, **item})

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Dropped(Generic[T]):
    item: T
    detail: str = ""


_NON_WORD = re.compile(r"[^\w\s]+")
_APOSTROPHE = re.compile(r"(?<=\w)['’](?=\w)")


def normalize(text: str) -> str:
    """Case-folded, punctuation-free, single-spaced text: the key for exact duplicates
    ("Don't" and "dont" agree; other punctuation separates words)."""
    return " ".join(_NON_WORD.sub(" ", _APOSTROPHE.sub("", text.casefold())).split())


def dedup_exact(items: Sequence[T], text: Callable[[T], str]) -> tuple[list[T], list[Dropped[T]]]:
    seen: dict[str, int] = {}
    kept: list[T] = []
    dropped: list[Dropped[T]] = []
    for item in items:
        key = normalize(text(item))
        if key in seen:
            dropped.append(Dropped(item, f"same as kept item #{seen[key]}"))
        else:
            seen[key] = len(kept)
            kept.append(item)
    return kept, dropped


def shingles(text: str, k: int) -> set[str]:
    t = normalize(text)
    if len(t) <= k:
        return {t}
    return {t[i : i + k] for i in range(len(t) - k + 1)}


def minhash(text: str, shingle_chars: int = 5, num_perm: int = 128, seed: int = 1):
    """datasketch MinHash of the text's character shingles (after `normalize`)."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    m.update_batch([s.encode("utf-8") for s in sorted(shingles(text, shingle_chars))])
    return m


def dedup_near(
    items: Sequence[T],
    text: Callable[[T], str],
    threshold: float = 0.7,
    shingle_chars: int = 5,
    num_perm: int = 128,
    seed: int = 1,
) -> tuple[list[T], list[Dropped[T]]]:
    """Drop items whose estimated Jaccard similarity to an earlier kept item is ≥ threshold."""
    if threshold >= 1.0 or len(items) < 2:
        return list(items), []
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sketches: dict = {}
    kept: list[T] = []
    dropped: list[Dropped[T]] = []
    for item in items:
        m = minhash(text(item), shingle_chars, num_perm, seed)
        best, best_sim = None, 0.0
        for cand in lsh.query(m):  # LSH candidates are approximate: confirm with the estimate
            sim = m.jaccard(sketches[cand])
            if sim >= threshold and sim > best_sim:
                best, best_sim = cand, sim
        if best is not None:
            dropped.append(Dropped(item, f"~{best_sim:.2f} Jaccard with kept item #{best}"))
            continue
        name = str(len(kept))
        lsh.insert(name, m)
        sketches[name] = m
        kept.append(item)
    return kept, dropped


def within(text: str, lo: int, hi: int) -> bool:
    return lo <= len(text.strip()) <= hi


@lru_cache(maxsize=1)
def sentence_encoder():
    """MiniLM, loaded once per process (pair similarity, paraphrase checks)."""
    from aligners.models import load_sentence_encoder

    return load_sentence_encoder()


def word_jaccard(a: str, b: str) -> float:
    x, y = set(normalize(a).split()), set(normalize(b).split())
    return len(x & y) / len(x | y) if x | y else 1.0


def pair_similarity(
    pairs: Sequence[tuple[str, str]], method: str = "minilm", embed_min_jaccard: float = 0.0
) -> list[float]:
    """Similarity of each (y, y′): 1.0 when equal after normalisation, else MiniLM cosine or
    difflib ratio.

    With `embed_min_jaccard` > 0, MiniLM only sees pairs whose word-set Jaccard reaches it; the
    others score 0.0 without a model load. Measured on the hand-written seed sets (907 pairs):
    pairs below 0.25 Jaccard never exceeded 0.92 cosine, while the identical-pair threshold is
    0.98 — so the shortcut changes no decision there and makes `--pairs seed:harmless` (refusals
    share almost no words with the harmful answers) skip the ~10 s MiniLM load entirely.
    """
    sims: list[float | None] = [1.0 if normalize(a) == normalize(b) else None for a, b in pairs]
    if method == "minilm" and embed_min_jaccard > 0:
        for i, (a, b) in enumerate(pairs):
            if sims[i] is None and word_jaccard(a, b) < embed_min_jaccard:
                sims[i] = 0.0
    todo = [i for i, s in enumerate(sims) if s is None]
    if todo and method == "minilm":
        enc = sentence_encoder()
        texts = [pairs[i][0] for i in todo] + [pairs[i][1] for i in todo]
        emb = enc.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        a, b = emb[: len(todo)], emb[len(todo) :]
        for i, cos in zip(todo, (a * b).sum(axis=1).tolist(), strict=True):
            sims[i] = float(cos)
    elif todo:
        for i in todo:
            y, y2 = pairs[i]
            sims[i] = difflib.SequenceMatcher(None, y, y2, autojunk=False).ratio()
    return [float(s) for s in sims]  # type: ignore[arg-type]


def length_stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 1),
        "max": max(values),
    }
