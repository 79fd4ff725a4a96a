"""`manifest.json` beside every artifact: what it is, what it was built from, how well it did.

Loaders check kind and format version here so a mismatched artifact fails with a sentence,
not with a shape error deep inside torch.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class ManifestError(ValueError):
    """An artifact folder that is missing, of another kind, or of another format version."""


def write_manifest(folder: Path | str, data: dict[str, Any]) -> Path:
    """Write atomically (temp + rename), stamping the creation time."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_manifest(folder: Path | str, kind: str, format_version: str | None = None) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder} is not a {kind} artifact: no {MANIFEST}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if data.get("kind") != kind:
        raise ManifestError(f"{path}: expected kind {kind!r}, found {data.get('kind')!r}")
    if format_version is not None and data.get("format_version") != format_version:
        raise ManifestError(
            f"{path}: format {data.get('format_version')!r} does not match this version of "
            f"aligners ({format_version!r}); retrain or use a matching release"
        )
    return data
