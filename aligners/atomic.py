"""Atomic writes: a temp file (or folder) beside the target, then renamed over it.

Every artifact, dataset split, journal part, report, model cache and checkpoint is written this
way, so a crash or a kill leaves the old one or the new one, never half of one (the batch
engine's exactly-once output depends on it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temp path to write `path` through (for writers that take a file name, like safetensors);
    renamed over `path` when the block ends without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """An open text (or, with mode "wb", binary) file that replaces `path` atomically on success."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh


def write_text_atomic(path: Path | str, text: str) -> Path:
    with atomic_open(path) as fh:
        fh.write(text)
    return Path(path)


def write_lines_atomic(path: Path | str, lines: Iterable[str]) -> Path:
    """Each line followed by a newline."""
    with atomic_open(path) as fh:
        fh.writelines(line + "\n" for line in lines)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(target: Path | str, *, replace: bool = False) -> Iterator[Path]:
    """A temp folder beside `target`, moved into place when the block ends without an error and
    removed otherwise. `replace` swaps out an existing target (a checkpoint); without it, a target
    that another process finished first wins (a cache two processes may build at once)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if replace:
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if replace or not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
