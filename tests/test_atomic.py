"""Atomic writes: the target holds the old content or the new, never half, and no temp is left."""

import pytest

from aligners.atomic import (
    atomic_dir,
    atomic_open,
    atomic_path,
    write_lines_atomic,
    write_text_atomic,
)


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.jsonl"
    write_lines_atomic(target, ["a", "b"])
    assert target.read_text() == "a\nb\n"
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half of a new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "a\nb\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.jsonl"]


def test_writers_that_take_a_path_go_through_a_temp_file(tmp_path):
    target = tmp_path / "weights.bin"
    with atomic_path(target) as tmp:
        assert tmp != target and not target.exists()
        tmp.write_bytes(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and not tmp.exists()
    assert write_text_atomic(tmp_path / "m.json", "{}\n").read_text() == "{}\n"


def test_atomic_dir_moves_a_whole_folder_into_place_or_nothing(tmp_path):
    target = tmp_path / "cache" / "model"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("killed mid-write")
    assert not target.exists() and list((tmp_path / "cache").iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("first")
    with atomic_dir(target) as tmp:  # another process finished first: its folder wins
        (tmp / "config.json").write_text("second")
    assert (target / "config.json").read_text() == "first"
    with atomic_dir(target, replace=True) as tmp:  # a checkpoint replaces the old one
        (tmp / "state.json").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["state.json"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]
