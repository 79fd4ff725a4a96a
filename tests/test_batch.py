"""Batch correction: order and fields kept, errors file, generation of missing responses,
and exactly-once output after repeated SIGKILLs followed by --resume."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml
from squad_fixtures import PII, POLITE, RUDE

from serve.batch import run_batch
from serve.pipeline import Squad

pytestmark = pytest.mark.timeout(600)


def squad_yaml(root, path):
    recipe = {
        "backend": {"type": "transformers", "model": "tiny-random-llama"},
        "members": [{"criterion": c, "inspector": str(root / "inspectors" / c), "aligner": str(root / "aligners" / c)}
                    for c in ("polite", "no-pii")],
        "policy": {"aligner_params": {"max_tokens": 4}, "base_params": {"max_tokens": 4}},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def write_input(path, n, bad_every=0):
    answers = POLITE + RUDE + PII
    with open(path, "w") as fh:
        for i in range(n):
            if bad_every and i % bad_every == bad_every - 1:
                fh.write(["{broken json", json.dumps({"id": i}), json.dumps({"id": i, "prompt": 5}), json.dumps([1])][i % 4] + "\n")
                continue
            rec = {"id": i, "prompt": "q", "meta": {"n": i}}
            if i % 7:
                rec["response"] = answers[i % len(answers)]
            fh.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def squad(squad_artifacts, tmp_path_factory):
    return Squad.from_config(squad_yaml(squad_artifacts, tmp_path_factory.mktemp("b") / "squad.yaml"))


def test_batch_keeps_order_fields_and_reports_bad_records(squad, tmp_path):
    src = write_input(tmp_path / "in.jsonl", 24, bad_every=6)
    summary = run_batch(squad, src, tmp_path / "out.jsonl", chunk_size=5, progress=False)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    errors = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [6, 12, 18, 24]
    assert "invalid JSON" in errors[0]["reason"] or "prompt" in errors[0]["reason"]
    assert [r["id"] for r in out] == [i for i in range(24) if i % 6 != 5]
    assert summary["records"] == 20 and summary["errors"] == 4
    for r in out:
        assert r["meta"] == {"n": r["id"]} and isinstance(r["response"], str)
        assert set(r["scores_before"]) == {"polite", "no-pii"} and "steps" in r["trace"]
    assert any(r["changed"] for r in out) and not all(r["changed"] for r in out)
    assert not (tmp_path / "out.jsonl.parts").exists()


def test_oversize_records_and_refusing_to_overwrite(squad, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "prompt": "q" * 50, "response": "ok"}) + "\n" + json.dumps({"id": 2, "prompt": "q", "response": POLITE[0]}) + "\n")
    run_batch(squad, src, tmp_path / "out.jsonl", max_chars=40, progress=False)
    errors = (tmp_path / "out.jsonl.errors.jsonl").read_text()
    assert "oversize" in errors and '"line": 1' in errors
    with pytest.raises(FileExistsError, match="--resume"):
        run_batch(squad, src, tmp_path / "out.jsonl", progress=False)


def test_parquet_and_dataset_inputs(squad, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = [{"id": str(i), "prompt": "q", "response": (POLITE + RUDE)[i]} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    run_batch(squad, tmp_path / "in.parquet", tmp_path / "a.jsonl", progress=False)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    run_batch(squad, tmp_path / "ds", tmp_path / "b.jsonl", progress=False)
    a = [json.loads(x)["corrected"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x)["corrected"] for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert a == b and len(a) == 6


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_random_points_then_resume_is_exactly_once(squad_artifacts, tmp_path):
    cfg = squad_yaml(squad_artifacts, tmp_path / "squad.yaml")
    n = 160
    src = write_input(tmp_path / "in.jsonl", n, bad_every=10)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "aligners.cli", "correct", "--squad", str(cfg), "--in", str(src),
           "--out", str(out), "--chunk-size", "4"]
    rng = random.Random(7)
    journal = tmp_path / "out.jsonl.parts" / "journal.jsonl"

    def committed() -> int:
        return len(journal.read_text().splitlines()) if journal.exists() else 0

    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen(cmd + (["--resume"] if attempt else []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill at a random point: after 1-5 more committed chunks, plus a random slice of the next
        target, deadline = committed() + rng.randint(1, 5), time.monotonic() + 300
        while proc.poll() is None and committed() < target and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    if not out.exists():
        subprocess.run(cmd + ["--resume"], check=True, capture_output=True)
    assert kills >= 5, "the job finished before it could be killed five times: make it longer"
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    errors = [json.loads(line)["line"] for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    expected = [i for i in range(n) if i % 10 != 9]
    assert ids == expected  # none lost, none duplicated, input order
    assert errors == [i + 1 for i in range(n) if i % 10 == 9]


class Interrupted(Exception):
    pass


def interrupted_run(squad, src, out, monkeypatch, after_chunks: int, **kw):
    """A run that dies after `after_chunks` committed chunks, leaving its resume state behind."""
    import serve.batch

    real, calls = serve.batch.correct_chunk, []

    def dying(squad_, records):
        calls.append(1)
        if len(calls) > after_chunks:
            raise Interrupted()
        return real(squad_, records)

    monkeypatch.setattr(serve.batch, "correct_chunk", dying)
    with pytest.raises(Interrupted):
        run_batch(squad, src, out, progress=False, **kw)
    monkeypatch.setattr(serve.batch, "correct_chunk", real)


def ids_of(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_resume_refuses_another_chunk_size_or_input_and_redoes_damaged_parts(squad, tmp_path, monkeypatch):
    from serve.batch import ResumeError

    src, out = write_input(tmp_path / "in.jsonl", 30, bad_every=10), tmp_path / "out.jsonl"
    interrupted_run(squad, src, out, monkeypatch, after_chunks=4, chunk_size=5)
    with pytest.raises(ResumeError, match="pass --chunk-size 5 to resume"):
        run_batch(squad, src, out, resume=True, chunk_size=7, progress=False)
    with pytest.raises(ResumeError, match="pass --max-chars 20000"):
        run_batch(squad, src, out, resume=True, chunk_size=5, max_chars=99, progress=False)
    changed = tmp_path / "changed.jsonl"
    changed.write_text(src.read_text().replace('"id": 3,', '"id": 33,'))
    src_text = src.read_text()
    src.write_text(changed.read_text())
    with pytest.raises(ResumeError, match="the input changed"):
        run_batch(squad, src, out, resume=True, chunk_size=5, progress=False)
    src.write_text(src_text)
    parts = tmp_path / "out.jsonl.parts"
    damaged = parts / "chunk-000001.jsonl"
    damaged.write_text(damaged.read_text()[:-40])  # a torn part is recomputed, not joined
    (parts / "chunk-000002.errors.jsonl").unlink()
    summary = run_batch(squad, src, out, resume=True, chunk_size=5, progress=False)
    assert summary["resumed_chunks"] == 2  # chunks 0 and 3 kept; 1 and 2 redone
    assert ids_of(out) == [i for i in range(30) if i % 10 != 9]
    assert len((tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()) == 3


def test_resume_checks_a_finished_output_and_repairs_a_damaged_end(squad, tmp_path):
    from serve.batch import ResumeError

    src, out = write_input(tmp_path / "in.jsonl", 14), tmp_path / "out.jsonl"
    run_batch(squad, src, out, chunk_size=4, progress=False)
    whole = out.read_bytes()

    def records(raw: bytes) -> list[tuple]:  # the trace's timings and the scores' last bits vary by batch
        rows = [json.loads(line) for line in raw.splitlines()]
        return [(r["id"], r["response"], r["corrected"], r["changed"], round(r["scores_before"]["polite"], 6))
                for r in rows]

    assert run_batch(squad, src, out, resume=True, chunk_size=4, progress=False)["status"] == "complete"
    for damage in (whole[:-25],  # a torn last line
                   whole.replace(b'"id": 6,', b'"id": 6', 1)):  # a broken line in the middle
        out.write_bytes(damage)
        with pytest.raises(FileExistsError, match="--resume"):
            run_batch(squad, src, out, chunk_size=4, progress=False)
        summary = run_batch(squad, src, out, resume=True, chunk_size=4, progress=False)
        assert summary["status"] == "repaired" and summary["recomputed_records"] >= 1
        assert records(out.read_bytes()) == records(whole)  # once each, in order (greedy: same text)
    src.write_text(src.read_text() + json.dumps({"id": 99, "prompt": "q"}) + "\n")
    with pytest.raises(ResumeError, match="the input changed"):
        run_batch(squad, src, out, resume=True, chunk_size=4, progress=False)


def test_missing_responses_are_generated_and_corrected_once(squad, tmp_path, monkeypatch):
    calls = []
    real = squad.correct
    monkeypatch.setattr(squad, "correct", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": "q"}) + "\n" for i in range(3)) +
                   json.dumps({"id": 3, "prompt": "q", "response": RUDE[0]}) + "\n")
    answered = []
    real_answer = squad.answer_with_states
    monkeypatch.setattr(squad, "answer_with_states",
                        lambda requests: answered.append(len(requests)) or real_answer(requests))
    run_batch(squad, src, tmp_path / "out.jsonl", progress=False)
    assert answered == [3] and calls == [4]  # the base answers the three once; one correct() for all four
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3] and rows[3]["response"] == RUDE[0]
    assert all(r["response"] for r in rows[:3])
