"""The prompt bank: requests written by the project, and user prompt files read the same way.

Layout: `synth/bank/<group>/<category>.jsonl`, one PromptRecord per line. Groups: `harmless`
(harmful requests), `benign` (everyday and sensitive-but-benign requests), `no-pii` and
`polite` (requests that invite personal data or a rude reply, plus benign neighbours).

Every record carries a stable `id` and a `split`. Whole topics are held out as `dev`: the
hand-labelled dev set (evals/) is built from answers to dev prompts, and training data never
includes them. `python -m synth.bank` fills in what a maintainer leaves out when adding prompts
(an id, and a split per new topic: about DEV_SHARE of each category's topics, chosen by a hash
so the choice does not depend on file order) and checks the whole bank.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from aligners.schema import PromptRecord, RecordError, read_jsonl, write_jsonl

DEV_SHARE = 0.15  # share of each category's topics held out for the dev set
GROUPS = ("harmless", "benign", "no-pii", "polite")


def bank_dir() -> Path:
    return Path(str(resources.files("synth") / "bank"))


def prompt_id(category: str, prompt: str) -> str:
    return f"{category}-{hashlib.sha256(prompt.encode()).hexdigest()[:10]}"


def bank_files(groups: Iterable[str] | None = None) -> list[Path]:
    groups = list(groups or GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown bank group(s) {unknown}; groups: {', '.join(GROUPS)}")
    return [f for g in groups for f in sorted((bank_dir() / g).glob("*.jsonl"))]


def load_bank(groups: Iterable[str] | None = None) -> list[PromptRecord]:
    """Every bank prompt of `groups` (all by default), in file order."""
    return [r for f in bank_files(groups) for r in read_jsonl(f, PromptRecord)]


def load_prompts(spec: str, criterion: str = "") -> list[PromptRecord]:
    """A `--prompts` argument → records: `bank` or `bank:GROUP[,GROUP]` for the shipped bank,
    a `.jsonl` file of PromptRecord objects (only `prompt` required), or a text file with one
    prompt per line. Missing ids are derived from the prompt; `criterion` fills empty ones."""
    if spec == "bank" or spec.startswith("bank:"):
        groups = spec.removeprefix("bank").removeprefix(":")
        records = load_bank(groups.split(",") if groups else None)
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(
                f"prompt file {spec} not found; give a .jsonl file of {{\"prompt\": ...}} objects, "
                "a text file with one prompt per line, or `bank` / `bank:harmless,benign`"
            )
        if path.suffix == ".jsonl":
            records = read_jsonl(path, PromptRecord)
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            records = [PromptRecord(prompt=line.strip()) for line in lines if line.strip()]
        if not records:
            raise RecordError(path, 0, "no prompts in the file")
    out, seen = [], set()
    for r in records:
        r = r.model_copy(
            update={
                "id": r.id or prompt_id(r.category, r.prompt),
                "criterion": r.criterion or criterion,
            }
        )
        if r.id in seen:
            raise ValueError(f"{spec}: prompt id {r.id!r} appears twice (same prompt twice?)")
        seen.add(r.id)
        out.append(r)
    return out


def _topic_rank(category: str, topic: str) -> str:
    return hashlib.sha256(f"{category}/{topic}".encode()).hexdigest()


def assign_splits(records: Sequence[PromptRecord], share: float = DEV_SHARE) -> list[PromptRecord]:
    """Fill empty ids and give every topic one split. A topic that already has records keeps
    their split; among a category's topics, the lowest-hash ones become `dev` until about
    `share` of the category's topics are (at least one when it has four or more)."""
    known: dict[tuple[str, str], str] = {}
    for r in records:
        if "split" in r.model_fields_set:
            known.setdefault((r.category, r.topic), r.split)
    topics: dict[str, set[str]] = defaultdict(set)
    for r in records:
        topics[r.category].add(r.topic)
    for category, names in topics.items():
        want = max(1, round(share * len(names))) if len(names) >= 4 else 0
        have = sum(known.get((category, t)) == "dev" for t in names)
        for topic in sorted(names, key=lambda t: _topic_rank(category, t)):
            if (category, topic) in known:
                continue
            known[(category, topic)] = "dev" if have < want else "train"
            have += known[(category, topic)] == "dev"
    return [
        r.model_copy(
            update={
                "id": r.id or prompt_id(r.category, r.prompt),
                "split": known[(r.category, r.topic)],
            }
        )
        for r in records
    ]


def normalize_bank() -> dict[str, int]:
    """Rewrite each bank file with ids and splits filled in (records keep their order); returns
    prompt counts per group and split."""
    counts: dict[str, int] = defaultdict(int)
    for group in GROUPS:
        files = bank_files([group])
        per_file = {f: read_jsonl(f, PromptRecord) for f in files}
        for f, recs in per_file.items():
            stray = {r.category for r in recs} - {f.stem}
            if stray:
                raise RecordError(f, 0, f"category {sorted(stray)} differs from the file name")
        done = assign_splits([r for recs in per_file.values() for r in recs])
        i = 0
        for f, recs in per_file.items():
            write_jsonl(f, done[i : i + len(recs)])
            i += len(recs)
        for r in done:
            counts[f"{group}/{r.split}"] += 1
    return dict(counts)


if __name__ == "__main__":
    print(json.dumps(normalize_bank(), indent=2))
