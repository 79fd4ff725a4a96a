"""On-disk generation cache, so a killed synth run resumes without paying for a request twice.

Key: sha256 of the canonical JSON of {model id, request} (sorted keys, no whitespace). The request
holds the rendered prompt (hence the template version), the sampling parameters and the per-request
seed, so any change to what would be sent is a different key; the model id is the teacher's served
model name or local model name — not its URL, so moving a server to another port keeps the cache.

Format: one append-only JSONL file, one `{"key", "model", "request", "generation"}` object per line,
written a batch at a time and fsync'ed after each batch. Chosen over one-file-per-key (temp file +
rename) because a run makes thousands of small requests: one file means one open handle, one fsync
per batch rather than per request, and a cache that is easy to copy, grep and inspect. Since the
file is only ever appended to, a crash can damage only its last line; reading skips any line that
is not a complete record (counted in `torn`), and the first append after such a crash starts a new
line so the next record is not glued onto the torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from aligners.backends.base import Generation, GenerationRequest


def request_key(model_id: str, request: GenerationRequest) -> str:
    canonical = json.dumps(
        {"model": model_id, "request": request.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class GenerationCache:
    """key → Generation, loaded from and appended to one JSONL file."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.torn = 0  # lines skipped on load: a torn last write, or damage
        self._entries: dict[str, Generation] = {}
        self._fh: IO[str] | None = None
        self._needs_newline = False
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                self._entries[rec["key"]] = Generation.model_validate(rec["generation"])
            except (ValueError, KeyError, TypeError):
                self.torn += 1
        self._needs_newline = bool(data) and not data.endswith(b"\n")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Generation | None:
        return self._entries.get(key)

    def put_many(self, items: Iterable[tuple[str, str, GenerationRequest, Generation]]) -> None:
        """Append (key, model id, request, generation) records and fsync before returning."""
        lines = []
        for key, model_id, request, gen in items:
            rec = {
                "key": key,
                "model": model_id,
                "request": request.model_dump(mode="json"),
                "generation": gen.model_dump(mode="json"),
            }
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            self._entries[key] = gen
        if not lines:
            return
        fh = self._open()
        if self._needs_newline:
            fh.write("\n")
            self._needs_newline = False
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())

    def _open(self) -> IO[str]:
        if self._fh is None:
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open; close() ends it
            if created:  # make the new directory entry itself durable
                try:
                    dir_fd = os.open(self.path.parent, os.O_RDONLY)
                except OSError:
                    pass
                else:
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> GenerationCache:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
