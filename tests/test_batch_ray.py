"""The Ray engine on a local Ray instance with 2 actor workers gives the local engine's output."""

import json

import pytest

pytest.importorskip("ray")

from test_batch import squad_yaml, write_input

from serve.batch import run_batch
from serve.pipeline import Squad
from serve.ray_batch import run_ray_batch

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]


def test_ray_engine_matches_local_engine(squad_artifacts, tmp_path):
    import ray

    cfg = squad_yaml(squad_artifacts, tmp_path / "squad.yaml")
    src = write_input(tmp_path / "in.jsonl", 30, bad_every=10)
    try:
        summary = run_ray_batch(str(cfg), src, tmp_path / "ray_out", actors=2, cpus_per_actor=0.5, batch_size=4)
    finally:
        ray.shutdown()
    shards = sorted((tmp_path / "ray_out").glob("*.json*"))
    ray_rows = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    run_batch(Squad.from_config(cfg), src, tmp_path / "local.jsonl", progress=False)
    local_rows = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert [r["id"] for r in ray_rows] == [r["id"] for r in local_rows]
    assert [r["corrected"] for r in ray_rows] == [r["corrected"] for r in local_rows]
    assert summary["records"] == 27 and summary["errors"] == 3
    local_errors = (tmp_path / "local.jsonl.errors.jsonl").read_text()
    assert (tmp_path / "ray_out.errors.jsonl").read_text() == local_errors
