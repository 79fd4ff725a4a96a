"""Resumable batch correction of stored answers: every input record exactly once in the output.

The input is cut into fixed chunks by position. A finished chunk is written to
`OUT.parts/chunk-NNNNNN.jsonl` (temp file + rename), then recorded in `OUT.parts/journal.jsonl`
(append + fsync). `--resume` skips chunks in the journal whose part file exists and redoes the
rest, overwriting any part a kill left unrecorded. When all chunks are done the parts are joined
into OUT (temp + rename). So a `kill -9` at any moment loses nothing and duplicates nothing.

Bad records (invalid JSON, missing prompt, wrong types, oversize) go to `OUT.errors.jsonl` with
their line numbers and reasons; the job continues.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aligners.schema import iter_json_objects
from serve.pipeline import Squad

JOURNAL = "journal.jsonl"


class BatchInput(BaseModel):
    """One input record; unknown fields are carried through to the output untouched."""

    model_config = ConfigDict(extra="allow")

    id: str | int | None = None
    prompt: str = Field(min_length=1)
    response: str | None = None


@dataclass
class Line:
    number: int  # 1-based line (JSONL) or row (Parquet, datasets) number
    record: dict | None
    error: str | None = None


def read_records(path: Path | str) -> Iterator[Line]:
    """Lines of a JSONL file, rows of a Parquet file, or rows of a saved HF dataset folder."""
    path = Path(path)
    if path.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        for i, row in enumerate(ds, start=1):
            yield Line(i, dict(row))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield Line(i, row)
    else:
        for number, data, reason in iter_json_objects(path):
            yield Line(number, data, reason)


def validate_line(line: Line, max_chars: int) -> tuple[BatchInput | None, str | None]:
    if line.error:
        return None, line.error
    try:
        rec = BatchInput.model_validate(line.record)
    except ValidationError as exc:
        return None, "; ".join(f"{'.'.join(map(str, e['loc'])) or '<record>'}: {e['msg']}" for e in exc.errors())
    size = len(rec.prompt) + len(rec.response or "")
    if size > max_chars:
        return None, f"oversize: prompt+response is {size} characters (limit {max_chars})"
    return rec, None


def _write_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _done_chunks(parts: Path) -> set[int]:
    """Chunks recorded in the journal whose part file exists; a torn last line is ignored."""
    journal = parts / JOURNAL
    done = set()
    if journal.is_file():
        for raw in journal.read_text(encoding="utf-8").splitlines():
            try:
                k = json.loads(raw)["chunk"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if (parts / f"chunk-{k:06d}.jsonl").is_file():
                done.add(k)
    return done


def output_record(rec: BatchInput, correction) -> dict[str, Any]:
    trace = correction.trace
    return {
        **rec.model_dump(),
        "response": correction.original,
        "corrected": correction.corrected,
        "changed": correction.changed,
        "scores_before": {v.criterion: v.score for v in trace.initial},
        "scores_after": {v.criterion: v.score for v in trace.final},
        "trace": trace.model_dump(),
    }


def correct_chunk(squad: Squad, records: list[BatchInput]) -> list[dict[str, Any]]:
    """Correct one chunk: supplied responses as they are, missing ones generated first."""
    if not records:
        return []
    missing = [i for i, r in enumerate(records) if r.response is None]
    answers = [r.response for r in records]
    if missing:
        for i, c in zip(missing, squad.generate([records[i].prompt for i in missing]), strict=True):
            answers[i] = c.original
    corrections = squad.correct([r.prompt for r in records], answers)
    return [output_record(r, c) for r, c in zip(records, corrections, strict=True)]


def run_batch(
    squad: Squad,
    source: Path | str,
    out: Path | str,
    *,
    resume: bool = False,
    chunk_size: int = 64,
    max_chars: int = 20_000,
    progress: bool = True,
) -> dict[str, Any]:
    """Correct every record of `source` into `out`; returns counts and throughput."""
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    errors_path = out.with_name(out.name + ".errors.jsonl")
    if not resume and (out.exists() or parts.exists()):
        raise FileExistsError(f"{out} (or its .parts folder) exists: pass --resume to continue, or choose another --out")
    if resume and out.exists() and not parts.exists():
        raise FileExistsError(f"{out} is already complete: nothing to resume")
    parts.mkdir(parents=True, exist_ok=True)
    done = _done_chunks(parts) if resume else set()
    lines = list(read_records(source))
    n_chunks = (len(lines) + chunk_size - 1) // chunk_size
    t0 = time.perf_counter()
    processed = 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("correcting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar, open(parts / JOURNAL, "a", encoding="utf-8") as journal:
        task = bar.add_task("batch", total=len(lines), completed=sum(min(chunk_size, len(lines) - k * chunk_size) for k in done), rate="")
        for k in range(n_chunks):
            if k in done:
                continue
            chunk = lines[k * chunk_size : (k + 1) * chunk_size]
            valid, errors = [], []
            for line in chunk:
                rec, err = validate_line(line, max_chars)
                if err:
                    errors.append(json.dumps({"line": line.number, "reason": err}))
                else:
                    valid.append(rec)
            results = correct_chunk(squad, valid)
            _write_atomic(parts / f"chunk-{k:06d}.errors.jsonl", errors)
            _write_atomic(parts / f"chunk-{k:06d}.jsonl", [json.dumps(r, ensure_ascii=False) for r in results])
            journal.write(json.dumps({"chunk": k, "records": len(results), "errors": len(errors)}) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
            processed += len(chunk)
            bar.update(task, advance=len(chunk), rate=f"{processed / (time.perf_counter() - t0):.1f} rec/s")
    outputs, errs = [], []
    for k in range(n_chunks):
        outputs += (parts / f"chunk-{k:06d}.jsonl").read_text(encoding="utf-8").splitlines()
        errs += (parts / f"chunk-{k:06d}.errors.jsonl").read_text(encoding="utf-8").splitlines()
    _write_atomic(out, outputs)
    _write_atomic(errors_path, errs)
    shutil.rmtree(parts)  # only after OUT is complete: until then the parts are the resume state
    elapsed = time.perf_counter() - t0
    changed = sum(1 for line in outputs if json.loads(line)["changed"])
    return {
        "records": len(outputs), "errors": len(errs), "changed": changed, "chunks": n_chunks,
        "resumed_chunks": len(done), "seconds": elapsed,
        "records_per_s": processed / elapsed if elapsed else None,
        "out": str(out), "errors_file": str(errors_path),
    }
