"""Pair datasets on disk: topic-disjoint splits, the shipped seed sets, and one folder layout.

A synth output folder holds `train.jsonl`, `validation.jsonl`, `test.jsonl` (Pair records), the
same splits as an HF `datasets` DatasetDict under `dataset/`, `pairs.jsonl` with every kept pair,
and `stats.json`. Inspectors and aligners read the JSONL splits through `load_split`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from itertools import zip_longest
from pathlib import Path

from aligners.schema import Pair, read_jsonl, write_jsonl

SPLITS = ("train", "validation", "test")
SHARED_BENIGN = "benign"  # seeds/benign.jsonl: already-good answers used by every criterion


def split_by_topic(
    pairs: Sequence[Pair], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Pair]]:
    """Assign whole topics to splits, so a test topic is never seen in training (any records
    with a `topic`: pairs, or labelled answers).

    Topics are shuffled with `seed` and filled greedily into the split furthest below its target
    share of records; validation and test each get at least one topic when there are enough.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    by_topic: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_topic[p.topic].append(p)
    topics = sorted(by_topic)
    random.Random(seed).shuffle(topics)
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    total = len(pairs)
    for i, topic in enumerate(topics):
        if i < 2 and len(topics) >= 3:  # guarantee non-empty held-out splits
            name = ("test", "validation")[i]
        else:
            deficit = {s: fractions[k] * total - len(out[s]) for k, s in enumerate(SPLITS)}
            name = max(deficit, key=deficit.get)
        out[name].extend(by_topic[topic])
    return out


def seed_path(name: str) -> Path:
    path = Path(str(resources.files("synth") / "seeds" / f"{name}.jsonl"))
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.jsonl") if p.stem != SHARED_BENIGN)
        raise FileNotFoundError(f"no seed set {name!r}; shipped seed sets: {', '.join(known)}")
    return path


def load_seed(criterion: str, with_shared_benign: bool = True) -> list[Pair]:
    """The hand-written seed pairs for `criterion`, plus the shared benign pool relabelled to it."""
    pairs = read_jsonl(seed_path(criterion), Pair)
    if with_shared_benign:
        for p in read_jsonl(seed_path(SHARED_BENIGN), Pair):
            pairs.append(p.model_copy(update={"criterion": criterion, "id": f"{criterion}-{p.id}"}))
    return pairs


def pair_id(criterion: str, prompt: str) -> str:
    return f"{criterion}-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}"


def load_user_pairs(path: Path | str, criterion: str) -> list[Pair]:
    """A user's own hand-written pairs: JSONL objects with `prompt`, `misaligned` and `aligned`
    (optional `critique`, `topic`, `id`). `misaligned == aligned` marks a good answer to keep.
    Every bad line is reported with its number before anything runs."""
    from aligners.schema import Provenance, RecordError, iter_json_objects

    allowed = {"id", "prompt", "misaligned", "aligned", "critique", "topic"}
    pairs, problems = [], []
    for lineno, obj, reason in iter_json_objects(path):
        if reason is None:
            missing = {"prompt", "misaligned", "aligned"} - set(obj)
            extra = set(obj) - allowed
            if missing or extra:
                reason = "; ".join(
                    [f"missing {sorted(missing)}"] * bool(missing)
                    + [f"unknown keys {sorted(extra)} (allowed: {sorted(allowed)})"] * bool(extra)
                )
        if reason is None:
            try:
                pairs.append(
                    Pair(
                        id=obj.get("id") or pair_id(criterion, obj["prompt"]),
                        criterion=criterion,
                        topic=obj.get("topic") or "user",
                        prompt=obj["prompt"],
                        misaligned=obj["misaligned"],
                        critique=obj.get("critique", ""),
                        aligned=obj["aligned"],
                        needs_correction=obj["misaligned"] != obj["aligned"],
                        source=Provenance(teacher="human", template_version="user-pairs"),
                    )
                )
            except ValueError as exc:
                reason = str(exc).splitlines()[0]
        if reason is not None:
            problems.append(RecordError(path, lineno, reason))
    if problems:
        raise RecordError(
            path, problems[0].line, "; ".join(f"line {e.line}: {e.reason}" for e in problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    if not pairs:
        raise RecordError(path, 0, "no pairs in the file")
    return pairs


def data_hash(pairs: Sequence[Pair]) -> str:
    """Content hash of a pair list, recorded in artifact manifests."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(p.model_dump_json().encode())
    return h.hexdigest()[:16]


def save_splits(out_dir: Path | str, splits: dict[str, list[Pair]], stats: dict) -> Path:
    """Write the folder layout described in the module docstring."""
    from datasets import Dataset, DatasetDict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_jsonl(out / f"{name}.jsonl", splits.get(name, []))
    write_jsonl(out / "pairs.jsonl", [p for name in SPLITS for p in splits.get(name, [])])

    def rows(ps: list[Pair]) -> list[dict]:
        return [{**p.model_dump(exclude={"source"}), "source": p.source.model_dump_json()} for p in ps]

    non_empty = {n: Dataset.from_list(rows(ps)) for n, ps in splits.items() if ps}
    DatasetDict(non_empty).save_to_disk(str(out / "dataset"))
    stats = {**stats, "splits": {n: len(splits.get(n, [])) for n in SPLITS}}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return out


def load_split(data_dir: Path | str, split: str) -> list[Pair]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {data_dir} a synth output folder? "
            "Make one with `aligners synth --pairs seed:harmless --out DIR`."
        )
    return read_jsonl(path, Pair)


def resolve_data(spec: str, seed: int = 0) -> dict[str, list[Pair]]:
    """CLI data argument → splits: a synth output folder, or `seed:<criterion>` for the shipped
    seed set split by topic (the same topics as `aligners synth --pairs seed:NAME`, which also applies
    the quality filters)."""
    if spec.startswith("seed:"):
        return split_by_topic(load_seed(spec.removeprefix("seed:")), seed=seed)
    return {name: load_split(spec, name) for name in SPLITS}


def round_robin(lists: Sequence[Sequence]) -> list:
    """One item from each list in turn until all run out, so any prefix mixes every list
    (validation pairs of both kinds; eval prompts of every criterion)."""
    return [x for row in zip_longest(*lists) for x in row if x is not None]
