"""Resumable batch correction of stored answers: every input record exactly once in the output.

The input is cut into fixed chunks by position; `OUT.parts/plan.json` records the input's
SHA-256 and size and the chunking. A finished chunk is written to `OUT.parts/chunk-NNNNNN.jsonl`
(temp file + rename), then recorded with the part files' SHA-256 in `OUT.parts/journal.jsonl`
(append + fsync). `--resume` refuses a changed input or chunking (the parts would no longer mean
the same records), skips journalled chunks whose parts still hash as recorded, and redoes the
rest. When all chunks are done the parts are joined into OUT (temp + rename) and
`OUT.done.json` records OUT's hash; `--resume` on a finished OUT checks it and repairs a damaged
end. So a `kill -9` at any moment, or a damaged file, loses nothing and duplicates nothing.

Bad records (invalid JSON, missing prompt, wrong types, oversize) go to `OUT.errors.jsonl` with
their line numbers and reasons; the job continues.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aligners.atomic import write_lines_atomic
from aligners.backends.base import GenerationRequest, TokenStates
from aligners.manifest import file_sha256
from aligners.schema import iter_json_objects
from serve.pipeline import Squad

JOURNAL = "journal.jsonl"
PLAN = "plan.json"  # in OUT.parts: the input's fingerprint and the chunking the parts follow
DONE_SUFFIX = ".done.json"  # OUT.done.json: the plan and OUT's hash, written once OUT is complete


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


class ResumeError(ValueError):
    """A resume that cannot be done without losing or duplicating records; says what to do."""


def input_fingerprint(path: Path | str) -> dict[str, Any]:
    """SHA-256 and size of the input (every file of a dataset folder, in name order)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        h.update(bytes.fromhex(file_sha256(f)))
    return {"sha256": h.hexdigest(), "bytes": sum(f.stat().st_size for f in files)}


def _plan(source: Path | str, chunk_size: int, max_chars: int) -> dict[str, Any]:
    """What a run's chunks mean: the same input cut the same way. Resuming needs it unchanged."""
    return {"input": str(source), **input_fingerprint(source), "chunk_size": chunk_size, "max_chars": max_chars}


def _check_same_plan(old: dict[str, Any], new: dict[str, Any], where: Path) -> None:
    if (old.get("sha256"), old.get("bytes")) != (new["sha256"], new["bytes"]):
        raise ResumeError(
            f"the input changed since {where} was written ({old.get('input')}: sha256 {str(old.get('sha256'))[:12]}…, "
            f"now {new['input']}: {new['sha256'][:12]}…): resuming would mix records of two inputs. Restore the "
            "input, or run it into a new --out")
    for knob, flag in (("chunk_size", "--chunk-size"), ("max_chars", "--max-chars")):
        if old.get(knob) != new[knob]:
            raise ResumeError(
                f"{where} was made with {flag} {old.get(knob)}, this run has {new[knob]}: pass {flag} "
                f"{old.get(knob)} to resume it")


def _verified_chunks(parts: Path) -> dict[int, dict[str, Any]]:
    """Journal entries whose part files still hash as recorded; a torn last line, a missing or
    damaged part (or an entry from a journal without hashes) is left out, so it is redone."""
    journal = parts / JOURNAL
    done: dict[int, dict[str, Any]] = {}
    if not journal.is_file():
        return done
    for raw in journal.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(raw)
            k, hashes = int(entry["chunk"]), entry["sha256"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        files = _part_files(parts, k)
        if all(f.is_file() and file_sha256(f) == hashes.get(f.name) for f in files):
            done[k] = entry
    return done


def _part_files(parts: Path, k: int) -> tuple[Path, Path]:
    return parts / f"chunk-{k:06d}.jsonl", parts / f"chunk-{k:06d}.errors.jsonl"


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
    """Correct one chunk in one squad call: supplied responses as they are, missing ones answered
    by the base first (`Squad.answer_with_states`: their inspection reads what the base kept), so
    every answer is inspected and corrected exactly once."""
    responses = [r.response for r in records]
    generated: list[TokenStates | None] = [None] * len(records)
    missing = [i for i, r in enumerate(records) if r.response is None]
    if missing:
        t0 = time.perf_counter()
        params = squad.config.policy.base_params
        outs, states = squad.answer_with_states([GenerationRequest.chat(records[i].prompt, params=params)
                                                 for i in missing])
        for i, out, kept in zip(missing, outs, states, strict=True):
            responses[i], generated[i] = out.text, kept
        gen_s = (time.perf_counter() - t0) / len(missing)
    corrections = squad.correct([r.prompt for r in records], responses, generated=generated)
    for i in missing:
        corrections[i].trace.timings["generate_s"] = gen_s
    return [output_record(r, c) for r, c in zip(records, corrections, strict=True)]


def _validated(lines: list[Line], max_chars: int) -> tuple[list[BatchInput], list[str]]:
    valid, errors = [], []
    for line in lines:
        rec, err = validate_line(line, max_chars)
        if err:
            errors.append(json.dumps({"line": line.number, "reason": err}))
        else:
            valid.append(rec)
    return valid, errors


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
    """Correct every record of `source` into `out`; returns counts and throughput.

    `resume` continues an interrupted run (the input and chunking must be unchanged: refused
    otherwise), redoing any chunk whose part file is missing or damaged; on a finished `out` it
    checks the output against its completion record and repairs a damaged end."""
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    errors_path = out.with_name(out.name + ".errors.jsonl")
    done_path = out.with_name(out.name + DONE_SUFFIX)
    if not resume and (out.exists() or parts.exists()):
        raise FileExistsError(f"{out} (or its .parts folder) exists: pass --resume to continue or check it, or "
                              "choose another --out")
    plan = _plan(source, chunk_size, max_chars)
    lines = list(read_records(source))
    if resume and out.exists() and not parts.exists():
        return _check_or_repair(squad, lines, plan, out, errors_path, done_path, progress)
    if resume and (parts / PLAN).is_file():
        _check_same_plan(json.loads((parts / PLAN).read_text(encoding="utf-8")), plan, parts)
    elif resume and parts.exists():
        raise ResumeError(f"{parts} has no {PLAN} (written by an older aligners): its chunks cannot be matched "
                          "to the input; delete it and run again")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        write_lines_atomic(parts / PLAN, [json.dumps(plan)])
    done = _verified_chunks(parts) if resume else {}
    n_chunks = (len(lines) + chunk_size - 1) // chunk_size
    t0 = time.perf_counter()
    processed = 0
    with _progress(progress, len(lines)) as (bar, task), open(parts / JOURNAL, "a", encoding="utf-8") as journal:
        bar.update(task, completed=sum(min(chunk_size, len(lines) - k * chunk_size) for k in done))
        for k in range(n_chunks):
            if k in done:
                continue
            chunk = lines[k * chunk_size : (k + 1) * chunk_size]
            valid, errors = _validated(chunk, max_chars)
            results = correct_chunk(squad, valid)
            out_part, err_part = _part_files(parts, k)
            write_lines_atomic(err_part, errors)
            write_lines_atomic(out_part, [json.dumps(r, ensure_ascii=False) for r in results])
            hashes = {f.name: file_sha256(f) for f in (out_part, err_part)}
            journal.write(json.dumps({"chunk": k, "records": len(results), "errors": len(errors), "sha256": hashes}) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
            processed += len(chunk)
            bar.update(task, advance=len(chunk), rate=f"{processed / (time.perf_counter() - t0):.1f} rec/s")
    outputs, errs = [], []
    for k in range(n_chunks):
        out_part, err_part = _part_files(parts, k)
        outputs += out_part.read_text(encoding="utf-8").splitlines()
        errs += err_part.read_text(encoding="utf-8").splitlines()
    _commit(out, errors_path, done_path, outputs, errs, plan)
    shutil.rmtree(parts)  # only after OUT is complete: until then the parts are the resume state
    elapsed = time.perf_counter() - t0
    return _summary(outputs, errs, out, errors_path, chunks=n_chunks, resumed_chunks=len(done),
                    seconds=elapsed, records_per_s=processed / elapsed if elapsed else None)


def _commit(out: Path, errors_path: Path, done_path: Path, outputs: list[str], errs: list[str],
            plan: dict[str, Any]) -> None:
    """OUT and its errors file, then the completion record that lets `--resume` check them."""
    write_lines_atomic(out, outputs)
    write_lines_atomic(errors_path, errs)
    record = {"plan": plan, "records": len(outputs), "errors": len(errs), "output_sha256": file_sha256(out)}
    write_lines_atomic(done_path, [json.dumps(record)])


def _check_or_repair(squad: Squad, lines: list[Line], plan: dict[str, Any], out: Path, errors_path: Path,
                     done_path: Path, progress: bool) -> dict[str, Any]:
    """`--resume` on a finished OUT: unchanged → nothing to do; otherwise keep the longest start
    of OUT whose lines are whole records of the input in order, and correct the rest again."""
    if not done_path.is_file():
        raise ResumeError(f"{out} has no completion record ({done_path.name}), so it cannot be checked against "
                          "the input: move it away and run again")
    record = json.loads(done_path.read_text(encoding="utf-8"))
    _check_same_plan(record["plan"], plan, out)
    valid, errs = _validated(lines, plan["max_chars"])
    t0 = time.perf_counter()
    if file_sha256(out) == record["output_sha256"]:
        return _summary(out.read_text(encoding="utf-8").splitlines(), errs, out, errors_path, status="complete",
                        seconds=time.perf_counter() - t0)
    raw = out.read_bytes().decode("utf-8", errors="replace")
    kept = []
    for text, rec in zip(raw.split("\n")[:-1], valid, strict=False):  # [:-1]: a last line without \n is torn
        try:
            got = json.loads(text)
        except json.JSONDecodeError:
            break
        if not isinstance(got, dict) or (got.get("id"), got.get("prompt")) != (rec.id, rec.prompt):
            break
        kept.append(text)
    todo = valid[len(kept):]
    chunk_size = plan["chunk_size"]
    with _progress(progress, len(todo)) as (bar, task):
        for start in range(0, len(todo), chunk_size):
            results = correct_chunk(squad, todo[start : start + chunk_size])
            kept += [json.dumps(r, ensure_ascii=False) for r in results]
            bar.update(task, advance=len(results))
    _commit(out, errors_path, done_path, kept, errs, plan)
    return _summary(kept, errs, out, errors_path, status="repaired", recomputed_records=len(todo),
                    seconds=time.perf_counter() - t0)


def _summary(outputs: list[str], errs: list[str], out: Path, errors_path: Path, **extra: Any) -> dict[str, Any]:
    changed = sum(1 for line in outputs if json.loads(line)["changed"])
    return {"records": len(outputs), "errors": len(errs), "changed": changed, **extra,
            "out": str(out), "errors_file": str(errors_path)}


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("correcting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not enabled) as bar:
        yield bar, bar.add_task("batch", total=total, rate="")
