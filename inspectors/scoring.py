"""Score existing answers in a JSONL file with one inspector, generating nothing.

Input lines: `{"prompt": ..., "response": ..., "id": optional, ...any other fields}`.
Output lines: the input fields, plus `score` (P(aligned)), `flagged` (score < threshold) and
`criterion`. A malformed line (bad JSON, missing/empty/non-string prompt or response) never
stops the run: it goes to `<out>.errors.jsonl` with its line number and the reason, and the
rest are scored. Both output files are written atomically (aligners/atomic.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from aligners.atomic import atomic_open, write_lines_atomic
from aligners.schema import RecordError, iter_jsonl

if TYPE_CHECKING:
    from inspectors.base import Inspector


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string (got an empty or whitespace-only one)")
    return value


NonEmpty = Annotated[StrictStr, AfterValidator(_not_blank)]


class AnswerRecord(BaseModel):
    """One answer to score; unknown fields are kept and copied to the output."""

    model_config = ConfigDict(extra="allow")

    id: StrictStr | StrictInt | None = None
    prompt: NonEmpty = Field(description="The user prompt the answer replies to.")
    response: NonEmpty = Field(description="The answer to inspect.")


@dataclass
class ScoreSummary:
    scored: int
    flagged: int
    errors: int
    out: str
    errors_path: str | None
    seconds: float
    criterion: str | None
    threshold: float

    def as_dict(self) -> dict:
        return asdict(self)


def errors_path_for(out: Path | str) -> Path:
    return Path(str(out) + ".errors.jsonl")


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def score_jsonl(
    inspector: Inspector,
    in_path: Path | str,
    out_path: Path | str,
    batch_size: int = 64,
    progress: bool = True,
) -> ScoreSummary:
    """Score every valid line of `in_path` into `out_path`; bad lines go to `<out>.errors.jsonl`.

    The errors file exists only when there were errors (a stale one from an earlier run is removed).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.is_file():
        raise FileNotFoundError(
            f"{in_path}: no such input file (JSONL with prompt and response fields)"
        )
    err_path = errors_path_for(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    criterion = inspector.criterion
    threshold = float(inspector.threshold_)
    start = time.perf_counter()
    n_scored = n_flagged = 0
    errors: list[str] = []

    def flush(batch: list[AnswerRecord], fh) -> None:
        nonlocal n_scored, n_flagged
        scores = inspector.predict_proba([r.prompt for r in batch], [r.response for r in batch])[
            :, 1
        ]
        for rec, s in zip(batch, scores, strict=True):
            flagged = bool(s < threshold)
            row = {
                **rec.model_dump(exclude_unset=True),
                "score": float(s),
                "flagged": flagged,
                "criterion": criterion,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n_scored += 1
            n_flagged += flagged

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with (
        atomic_open(out_path) as out_fh,
        Progress(*columns, disable=not progress, transient=True) as bar,
    ):
        task = bar.add_task(f"inspecting ({criterion})", total=_count_lines(in_path))
        batch: list[AnswerRecord] = []
        for item in iter_jsonl(in_path, AnswerRecord):
            if isinstance(item, RecordError):
                errors.append(json.dumps({"line": item.line, "reason": item.reason, "path": item.path}))
                bar.advance(task)
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                flush(batch, out_fh)
                bar.advance(task, len(batch))
                batch = []
        if batch:
            flush(batch, out_fh)
            bar.advance(task, len(batch))
    if errors:
        write_lines_atomic(err_path, errors)
    else:
        err_path.unlink(missing_ok=True)
    return ScoreSummary(
        scored=n_scored,
        flagged=n_flagged,
        errors=len(errors),
        out=str(out_path),
        errors_path=str(err_path) if errors else None,
        seconds=round(time.perf_counter() - start, 3),
        criterion=criterion,
        threshold=threshold,
    )
