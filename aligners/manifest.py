"""`manifest.json` beside every artifact: what it is, what it was built from, how well it did.

Loaders check kind and format version here so a mismatched artifact fails with a sentence,
not with a shape error deep inside torch. The manifest also records the SHA-256 of each weights
file (`checksums`); loading verifies them (`verify_checksums`), keeps every file path inside the
artifact folder (`confined`) and refuses NaN or infinite weights (`refuse_nonfinite`), so a
damaged or tampered artifact fails at load with the file named, not mid-batch or silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aligners.atomic import write_text_atomic

log = logging.getLogger("aligners.artifacts")

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
    stamped = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    return write_text_atomic(Path(folder) / MANIFEST, json.dumps(stamped, indent=2) + "\n")


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


def confined(folder: Path | str, relative: str) -> Path:
    """`folder/relative`, refusing an absolute path or one that leaves the folder: a manifest
    may only name the artifact's own files."""
    folder = Path(folder)
    target = folder / relative
    if Path(relative).is_absolute() or not target.resolve().is_relative_to(folder.resolve()):
        raise ManifestError(
            f"{folder / MANIFEST}: the file path {relative!r} leaves the artifact folder; an artifact "
            "may only name files inside it (re-copy the artifact, or retrain it)"
        )
    return target


def checksums(folder: Path | str, files: Iterable[Path]) -> dict[str, str]:
    """{path relative to `folder`: SHA-256} of `files`, for the manifest."""
    folder = Path(folder)
    return {Path(f).relative_to(folder).as_posix(): file_sha256(f) for f in sorted(files)}


def verify_checksums(folder: Path | str, recorded: Mapping[str, str] | None, retrain: str) -> None:
    """Every file in `recorded` exists inside `folder` and has its recorded SHA-256. An artifact
    saved before checksums were recorded loads with a warning; `retrain` says how to rebuild."""
    folder = Path(folder)
    if not recorded:
        log.warning("%s records no checksums (saved by an older aligners): its weights cannot be verified; "
                    "retrain it to protect it", folder / MANIFEST)
        return
    for relative, want in recorded.items():
        path = confined(folder, relative)
        if not path.is_file():
            raise ManifestError(f"{path} is missing: re-copy the whole artifact folder, or {retrain}")
        have = file_sha256(path)
        if have != want:
            raise ManifestError(
                f"{path}: SHA-256 {have[:12]}… does not match {want[:12]}… in {MANIFEST}: the file was "
                f"changed or damaged after it was saved. Re-copy the artifact, or {retrain}"
            )


def refuse_nonfinite(tensors: Mapping[str, Any], path: Path | str, retrain: str) -> None:
    """Refuse weights holding NaN or infinity (numpy arrays or torch tensors): they would load and
    then make every score or rewrite meaningless."""
    import numpy as np

    def finite(t: Any) -> bool:
        return bool(t.isfinite().all()) if hasattr(t, "isfinite") else bool(np.isfinite(t).all())

    bad = [name for name, t in tensors.items() if not finite(t)]
    if bad:
        raise ManifestError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(sorted(bad)[:3])}): the "
            f"weights are damaged or training diverged; {retrain}"
        )
