"""Every correction is a free preference pair: the request, the answer the squad rejected and the
one it chose. The Aligners paper's weak-to-strong loop trains on exactly these.

Pairs use trl's standard preference columns (`prompt`, `chosen`, `rejected`: plain strings, as
`DPOTrainer` reads them) plus what made each pair (`criteria` the accepted rewrites were for, the
inspectors' `scores_before`/`scores_after`, the record `id`). Only changed answers make pairs.
`aligners correct --pairs-out` writes them from a finished batch output (JSONL or Parquet); the
server appends them to `pairs_log` (JSONL) as it corrects.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from aligners.atomic import atomic_path, write_lines_atomic
from aligners.schema import Correction

PAIR_FORMATS = (".jsonl", ".parquet")


def preference_pair(correction: Correction, id: str | None = None) -> dict[str, Any] | None:
    """The pair one correction makes, or None when the squad left the answer unchanged."""
    if not correction.changed:
        return None
    trace = correction.trace
    return {
        "id": id if id is not None else correction.id,
        "prompt": correction.prompt,
        "chosen": correction.corrected,
        "rejected": correction.original,
        "criteria": [s.criterion for s in trace.steps if s.accepted],
        "scores_before": {v.criterion: v.score for v in trace.initial},
        "scores_after": {v.criterion: v.score for v in trace.final},
    }


def pairs_from_batch_output(path: Path | str) -> Iterator[dict[str, Any]]:
    """The pairs of a finished `aligners correct` output (its rows carry prompt, trace and both texts)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            correction = Correction(id=None, prompt=row["prompt"], original=row["response"],
                                    corrected=row["corrected"], changed=row["changed"], trace=row["trace"])
            pair = preference_pair(correction, id=None if row.get("id") is None else str(row["id"]))
            if pair is not None:
                yield pair


def write_pairs(pairs: Iterable[dict[str, Any]], path: Path | str) -> int:
    """Write pairs atomically as JSONL or Parquet (by the file's suffix); returns how many."""
    path = Path(path)
    if path.suffix not in PAIR_FORMATS:
        raise ValueError(f"{path}: preference pairs are written as {' or '.join(PAIR_FORMATS)}")
    rows = list(pairs)
    if path.suffix == ".jsonl":
        write_lines_atomic(path, [json.dumps(r, ensure_ascii=False) for r in rows])
        return len(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    return len(rows)


class PairLog:
    """The server's sink: one JSONL line per changed answer, appended and flushed as it happens
    (a crash loses at most the line being written), safe to call from the worker threads."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if self.path.suffix != ".jsonl":
            raise ValueError(f"{self.path}: the server's pairs_log is a .jsonl file (appended as it corrects)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, corrections: Iterable[Correction]) -> int:
        lines = [json.dumps(p, ensure_ascii=False) for c in corrections if (p := preference_pair(c)) is not None]
        if lines:
            with self._lock, open(self.path, "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
                fh.flush()
        return len(lines)
