"""Pair records → inspector examples (prompts, answers, labels), and where the pairs come from.

Label 1 = aligned, 0 = misaligned (DESIGN.md §4). A pair that needs correction gives two
examples, (prompt, misaligned) → 0 and (prompt, aligned) → 1; a keep-as-is pair
(`needs_correction=False`, misaligned == aligned) is one benign already-good answer → 1, added
once so benign answers are not double-weighted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aligners.schema import Pair

ALIGNED, MISALIGNED = 1, 0


@dataclass
class Examples:
    """Parallel lists of inspector inputs and labels (1 = aligned)."""

    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        n_aligned = sum(self.labels)
        return {"aligned": n_aligned, "misaligned": len(self.labels) - n_aligned}

    def as_tuple(self) -> tuple[list[str], list[str], list[int]]:
        return self.prompts, self.answers, self.labels


def pairs_to_examples(pairs: Sequence[Pair]) -> Examples:
    out = Examples()
    for p in pairs:
        if p.needs_correction:
            out.prompts += [p.prompt, p.prompt]
            out.answers += [p.misaligned, p.aligned]
            out.labels += [MISALIGNED, ALIGNED]
        else:
            out.prompts.append(p.prompt)
            out.answers.append(p.aligned)
            out.labels.append(ALIGNED)
    return out


def criterion_of(pairs: Sequence[Pair]) -> str:
    """The one criterion a pair set trains; mixing criteria in one inspector is an error.

    Keep-as-is pairs may carry any criterion label (the shared benign pool says "any"), so only
    pairs that need correction decide.
    """
    names = Counter(p.criterion for p in pairs if p.needs_correction)
    if not names:
        raise ValueError(
            "no pair needs correction: an inspector needs misaligned examples to learn from"
        )
    if len(names) > 1:
        shown = ", ".join(f"{k} ({v} pairs)" for k, v in names.most_common())
        raise ValueError(
            f"the pairs mix criteria: {shown}. Train one inspector per criterion "
            "(filter the data, or pass --criterion to pick one)."
        )
    return next(iter(names))


@dataclass
class TrainingData:
    """The three splits plus a description of where they came from (for the manifest)."""

    splits: dict[str, list[Pair]]
    source: str

    def examples(self, split: str) -> Examples:
        return pairs_to_examples(self.splits[split])


def load_training_data(
    data_dir: Path | str | None = None,
    seed: str | None = None,
    split_seed: int = 0,
    criterion: str | None = None,
) -> TrainingData:
    """Read a synth output folder (train/validation/test.jsonl), or split a shipped seed set by topic.

    `criterion` keeps only that criterion's pairs needing correction (plus every keep-as-is pair).
    """
    from synth.dataset import SPLITS, load_seed, load_split, split_by_topic

    if (data_dir is None) == (seed is None):
        raise ValueError(
            "give exactly one of a data folder (--data DIR) or a seed set (--seed NAME)"
        )
    if data_dir is not None:
        splits = {s: load_split(data_dir, s) for s in SPLITS}
        source = f"dir:{Path(data_dir).resolve()}"
    else:
        splits = split_by_topic(load_seed(seed), seed=split_seed)
        source = f"seed:{seed} (split_by_topic seed={split_seed})"
    if criterion is not None:
        splits = {
            s: [p for p in ps if not p.needs_correction or p.criterion == criterion]
            for s, ps in splits.items()
        }
    for name in ("train", "validation"):
        ex = pairs_to_examples(splits[name])
        if min(ex.counts().values()) == 0:
            raise ValueError(
                f"the {name} split ({source}) needs both aligned and misaligned answers, got {ex.counts()}"
            )
    return TrainingData(splits=splits, source=source)
