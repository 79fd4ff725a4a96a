"""Pair records → inspector examples (prompts, answers, labels), and where the pairs come from.

Label 1 = aligned, 0 = misaligned. A pair that needs correction gives two
examples, (prompt, misaligned) → 0 and (prompt, aligned) → 1; a keep-as-is pair
(`needs_correction=False`, misaligned == aligned) is one benign already-good answer → 1, added
once so benign answers are not double-weighted.

Each example also carries its request's intent (1 = risky: simply complying would break the
criterion; 0 = benign), which trains an inspector's request gate: a real answer's `intent`
(its prompt bank entry), else whether its pair needs correction / its answer is misaligned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aligners.schema import AnswerRecord, Pair, WrittenCorrection, read_jsonl
from synth.labeling import answers_for
from synth.paragraph_pairs import inspector_pairs

ALIGNED, MISALIGNED = 1, 0
RISKY, BENIGN = 1, 0  # request intents


@dataclass
class Examples:
    """Parallel lists of inspector inputs and labels (1 = aligned)."""

    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    intents: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        n_aligned = sum(self.labels)
        return {"aligned": n_aligned, "misaligned": len(self.labels) - n_aligned}

    def as_tuple(self) -> tuple[list[str], list[str], list[int]]:
        return self.prompts, self.answers, self.labels

    def __add__(self, other: Examples) -> Examples:
        return Examples(self.prompts + other.prompts, self.answers + other.answers,
                        self.labels + other.labels, self.intents + other.intents)

    def without_good_risky(self) -> Examples:
        """The misaligned answers and the good answers to benign requests: the set whose false
        flags are over-refusals (a flagged good answer to a risky request, e.g. a refusal, is
        rewritten into a refusal again, which harms no one)."""
        keep = [i for i, (y, g) in enumerate(zip(self.labels, self.intents, strict=True))
                if y == MISALIGNED or g == BENIGN]
        return Examples(*([xs[i] for i in keep] for xs in
                          (self.prompts, self.answers, self.labels, self.intents)))


def pairs_to_examples(pairs: Sequence[Pair]) -> Examples:
    out = Examples()
    for p in pairs:
        if p.needs_correction:
            out.prompts += [p.prompt, p.prompt]
            out.answers += [p.misaligned, p.aligned]
            out.labels += [MISALIGNED, ALIGNED]
            out.intents += [RISKY, RISKY]
        else:
            out.prompts.append(p.prompt)
            out.answers.append(p.aligned)
            out.labels.append(ALIGNED)
            out.intents.append(BENIGN)
    return out


def answers_to_examples(records: Sequence[AnswerRecord]) -> Examples:
    out = Examples()
    for r in records:
        out.prompts.append(r.prompt)
        out.answers.append(r.answer)
        out.labels.append(ALIGNED if r.label == "aligned" else MISALIGNED)
        risky = r.intent == "harmful" if r.intent is not None else r.label == "misaligned"
        out.intents.append(RISKY if risky else BENIGN)
    return out


def dev_set_examples(path: Path | str, criterion: str) -> Examples:
    """The hand-labelled answers of a dev set file for one criterion (evaluation only)."""
    records = [
        r for r in read_jsonl(path, AnswerRecord) if r.criterion == criterion and r.label_by == "hand"
    ]
    if not records:
        raise ValueError(f"{path} has no hand-labelled answers for criterion {criterion!r}")
    return answers_to_examples(records)


def benign_good_elsewhere(path: Path | str, criterion: str) -> Examples:
    """The dev set's hand-labelled good answers to benign requests of the *other* criteria, each
    counted good for `criterion` too. For a criterion whose fix is a refusal (harmless), a good
    answer to a benign privacy or etiquette request is one its squad member must not refuse; its
    own dev rows do not hold those requests (evaluation and threshold choice only)."""
    return answers_to_examples([
        r for r in read_jsonl(path, AnswerRecord)
        if r.criterion != criterion and r.label_by == "hand" and r.intent == "benign" and r.label == "aligned"
    ])


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
    """The three splits (pairs, and labelled real answers) plus where they came from."""

    splits: dict[str, list[Pair]]
    source: str
    answers: dict[str, list[AnswerRecord]] = field(default_factory=dict)

    def examples(self, split: str) -> Examples:
        ex = pairs_to_examples(self.splits[split])
        more = answers_to_examples(self.answers.get(split, []))
        return Examples(ex.prompts + more.prompts, ex.answers + more.answers,
                        ex.labels + more.labels, ex.intents + more.intents)


def data_source(spec: str) -> dict:
    """`--data` → load_training_data's arguments: a shipped seed set (`seed:NAME`) or a synth folder."""
    return {"seed_set": spec.removeprefix("seed:")} if spec.startswith("seed:") else {"data_dir": Path(spec)}


def load_training_data(
    data_dir: Path | str | None = None,
    seed_set: str | None = None,
    split_seed: int = 0,
    criterion: str | None = None,
    answer_files: Sequence[Path | str] = (),
    answer_labels: str = "any",
    correction_files: Sequence[Path | str] = (),
) -> TrainingData:
    """Read a synth output folder (train/validation/test.jsonl), or split a shipped seed set by topic.

    `criterion` keeps only that criterion's pairs needing correction (plus every keep-as-is pair).
    `answer_files` (AnswerRecord JSONL: harvested or hand-written real answers) add the labelled
    answers `answers_for` picks for the criterion (with `answer_labels`), split by topic with the
    same fractions and seed. `correction_files` (WrittenCorrection JSONL) add each hand-corrected
    answer and changed paragraph, before and after, to the training split (`inspector_pairs`).
    """
    from aligners.dataset import SPLITS, load_seed, load_split, split_by_topic

    if (data_dir is None) == (seed_set is None):
        raise ValueError(
            "give exactly one of a data folder (--data DIR) or a seed set (--data seed:NAME)"
        )
    if data_dir is not None:
        splits = {s: load_split(data_dir, s) for s in SPLITS}
        source = f"dir:{Path(data_dir).resolve()}"
    else:
        splits = split_by_topic(load_seed(seed_set), seed=split_seed)
        source = f"seed:{seed_set} (split_by_topic seed={split_seed})"
    if criterion is not None:
        splits = {
            s: [p for p in ps if not p.needs_correction or p.criterion == criterion]
            for s, ps in splits.items()
        }
    answers: dict[str, list[AnswerRecord]] = {}
    if answer_files or correction_files:  # the criterion whose answers and corrections to pick
        name = criterion or criterion_of(splits["train"] + splits["validation"])
    if answer_files:
        records = answers_for(
            name, [r for f in answer_files for r in read_jsonl(f, AnswerRecord)], answer_labels
        )
        answers = split_by_topic(records, seed=split_seed)
        source += " + answers:" + ",".join(str(Path(f)) for f in answer_files)
        source += f" (labels: {answer_labels})"
    if correction_files:
        written = inspector_pairs(name, [r for f in correction_files for r in read_jsonl(f, WrittenCorrection)])
        if not written:
            raise ValueError(f"{', '.join(map(str, correction_files))} hold no training-split correction for {name!r}")
        splits = {**splits, "train": splits["train"] + written}
        source += " + corrections:" + ",".join(str(Path(f)) for f in correction_files)
    data = TrainingData(splits=splits, source=source, answers=answers)
    for name in ("train", "validation"):
        ex = data.examples(name)
        if min(ex.counts().values()) == 0:
            raise ValueError(
                f"the {name} split ({source}) needs both aligned and misaligned answers, got {ex.counts()}"
            )
    return data
