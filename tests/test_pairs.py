"""Preference-pair export: `aligners correct --pairs-out` (JSONL and Parquet) and the server's
`pairs_log`, loaded back with `datasets` in the columns trl's DPOTrainer reads."""

import json

import datasets
import pytest
import yaml
from pydantic import ValidationError
from squad_fixtures import POLITE, RUDE
from test_server import FIXED, Base, Q, scripted_squad
from test_server_reliability import aligners_server, client
from typer.testing import CliRunner

from aligners.cli import app
from serve.batch import run_batch
from serve.pairs import pairs_from_batch_output, write_pairs
from serve.server_config import ServerConfig

pytestmark = pytest.mark.timeout(300)
TRL_COLUMNS = {"prompt", "chosen", "rejected"}


def write_answers(path, answers):
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "q", "response": a}) + "\n"
                            for i, a in enumerate(answers)))
    return path


def test_batch_pairs_load_into_datasets_with_trl_columns(squad_artifacts, tmp_path):
    answers = RUDE[:3] + POLITE[:3]
    out = tmp_path / "out.jsonl"
    run_batch(scripted_squad(squad_artifacts, Base(FIXED)), write_answers(tmp_path / "in.jsonl", answers), out,
              progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    changed = [r for r in rows if r["changed"]]
    assert {r["response"] for r in changed} == set(RUDE[:3])  # the toy inspectors flag exactly the rude ones

    for name in ("pairs.jsonl", "pairs.parquet"):
        n = write_pairs(pairs_from_batch_output(out), tmp_path / name)
        ds = (datasets.Dataset.from_parquet(str(tmp_path / name)) if name.endswith(".parquet")
              else datasets.load_dataset("json", data_files=str(tmp_path / name), split="train"))
        assert n == len(ds) == len(changed) and TRL_COLUMNS <= set(ds.column_names)
        assert ds.features["chosen"].dtype == ds.features["rejected"].dtype == "string"
        assert list(ds["rejected"]) == [r["response"] for r in changed]
        assert list(ds["chosen"]) == [FIXED] * len(changed) and list(ds["id"]) == [r["id"] for r in changed]
        assert all(c == ["polite"] for c in ds["criteria"])
        assert all(before["polite"] < after["polite"] for before, after in zip(ds["scores_before"], ds["scores_after"],
                                                                                strict=True))


def test_correct_cli_writes_pairs_and_refuses_an_unknown_format(squad_artifacts, tmp_path):
    recipe = {
        "backend": {"type": "transformers", "model": "tiny-random-llama"},
        "members": [{"criterion": c, "inspector": str(squad_artifacts / "inspectors" / c),
                     "aligner": str(squad_artifacts / "aligners" / c)} for c in ("polite", "no-pii")],
        "policy": {"aligner_params": {"max_tokens": 4}},
    }
    (tmp_path / "squad.yaml").write_text(yaml.safe_dump(recipe))
    src, out, pairs = write_answers(tmp_path / "in.jsonl", RUDE[:4]), tmp_path / "out.jsonl", tmp_path / "p.parquet"
    base = ["correct", "--squad", str(tmp_path / "squad.yaml"), "--in", str(src), "--out", str(out)]
    bad = CliRunner().invoke(app, [*base, "--pairs-out", str(tmp_path / "p.csv")])
    assert bad.exit_code == 2 and ".jsonl or .parquet" in bad.output and not out.exists()
    result = CliRunner().invoke(app, [*base, "--pairs-out", str(pairs)])
    assert result.exit_code == 0, result.output
    changed = sum(json.loads(line)["changed"] for line in out.read_text().splitlines())
    assert f"preference_pairs={changed}" in result.output
    assert len(datasets.Dataset.from_parquet(str(pairs))) == changed


def test_server_appends_a_pair_per_changed_answer(squad_artifacts, tmp_path):
    log = tmp_path / "logs" / "pairs.jsonl"
    base = Base(RUDE[0], POLITE[0])
    squad = scripted_squad(squad_artifacts, base)
    with aligners_server(ServerConfig(squad="<injected>", pairs_log=str(log)), squad) as (root, _):
        first = client(root).chat.completions.create(model="tiny-random-llama", messages=Q)
        client(root).chat.completions.create(model="tiny-random-llama", messages=Q)  # polite: unchanged
    assert first.choices[0].message.content == FIXED
    pairs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(pairs) == 1
    assert pairs[0]["prompt"] == "q" and pairs[0]["rejected"] == RUDE[0] and pairs[0]["chosen"] == FIXED
    assert TRL_COLUMNS <= set(datasets.load_dataset("json", data_files=str(log), split="train").column_names)
    with pytest.raises(ValidationError, match="pairs_log"):
        ServerConfig(squad="<injected>", pairs_log=str(tmp_path / "pairs.txt"))
