"""Atomic writes: the target holds the old content or the new, never half, and no temp is left."""

import pytest

from aligners.atomic import atomic_open, atomic_path, write_lines_atomic, write_text_atomic


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
