"""Batch correction on Ray Data: the same squad and record handling as serve/batch.py, one squad
per actor in an actor pool, reading and writing through Ray's JSON/Parquet I/O.

Input (JSONL, Parquet or a saved dataset) is read on the driver with the local engine's reader,
so bad records keep their line numbers for the errors file and validation is the same code; the
correction runs in the actor pool and the output is a folder of JSONL shards written by Ray's
`Dataset.write_json`, in input order. Resuming is the local
engine's job: a Ray run that dies is simply re-run.

On a 2-core machine an actor at Ray's default of 1 CPU starves the read tasks and hangs
(measured here), so CPUs per actor are configurable and default to 0.5.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from serve.batch import Line, correct_chunk, read_records, validate_line


class SquadActor:
    """Holds one squad for the actor's lifetime; corrects one pandas batch per call."""

    def __init__(self, squad_config: str, max_chars: int):
        from serve.pipeline import Squad

        self.squad = Squad.from_config(squad_config)
        self.max_chars = max_chars

    def __call__(self, batch):
        import pandas as pd

        records, rows, errors = [], [], []
        for line_no, raw in zip(batch["line"], batch["record"], strict=True):
            rec, err = validate_line(Line(int(line_no), json.loads(raw)), self.max_chars)
            if err:
                errors.append({"line": int(line_no), "reason": err})
            else:
                records.append(rec)
                rows.append(int(line_no))
        results = correct_chunk(self.squad, records)
        out = [{"line": n, "ok": True, "result": json.dumps(r, ensure_ascii=False)} for n, r in zip(rows, results, strict=True)]
        out += [{"line": e["line"], "ok": False, "result": json.dumps(e)} for e in errors]
        out.sort(key=lambda r: r["line"])
        return pd.DataFrame(out, columns=["line", "ok", "result"])


def run_ray_batch(
    squad_config: str,
    source: Path | str,
    out: Path | str,
    *,
    actors: int = 2,
    cpus_per_actor: float = 0.5,
    batch_size: int = 16,
    max_chars: int = 20_000,
    address: str | None = None,
) -> dict[str, Any]:
    """Correct `source` into the folder `out` with an actor pool; errors to OUT.errors.jsonl."""
    import ray

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another --out (the ray engine does not resume)")
    t0 = time.perf_counter()
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    lines = list(read_records(source))
    read_errors = [{"line": ln.number, "reason": ln.error} for ln in lines if ln.error]
    ds = ray.data.from_items([{"line": ln.number, "record": json.dumps(ln.record, default=str)} for ln in lines if not ln.error])
    corrected = ds.map_batches(
        SquadActor,
        fn_constructor_args=(str(squad_config), max_chars),
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
    ).materialize()
    errors = read_errors + [json.loads(r["result"]) for r in corrected.filter(lambda r: not r["ok"]).take_all()]
    errors.sort(key=lambda e: e["line"])
    corrected.filter(lambda r: r["ok"]).map(lambda r: json.loads(r["result"])).write_json(str(out))
    errors_path = out.with_name(out.name + ".errors.jsonl")
    errors_path.write_text("".join(json.dumps(e) + "\n" for e in errors))
    n_ok = corrected.count() - (len(errors) - len(read_errors))
    elapsed = time.perf_counter() - t0
    return {
        "records": n_ok, "errors": len(errors), "seconds": elapsed,
        "records_per_s": (n_ok + len(errors)) / elapsed, "out": str(out),
        "errors_file": str(errors_path), "actors": actors,
    }
