"""`manifest.json` beside every artifact: what it is, what it was built from, how well it did.

Loaders check kind and format version here so a mismatched artifact fails with a sentence,
not with a shape error deep inside torch. The manifest also records the SHA-256 of each weights
file (`checksums`); loading verifies them (`verify_checksums`), keeps every file path inside the
artifact folder (`confined`) and refuses NaN or infinite weights (`refuse_nonfinite`), so a
damaged or tampered artifact fails at load with the file named, not mid-batch or silently.
`save_numpy_weights` / `load_numpy_weights` are the one way the numpy artifacts (inspectors, span
taggers) write and read their safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from aligners.atomic import atomic_path, write_text_atomic

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


class ManifestHeader(BaseModel):
    """The fields every artifact's manifest.json carries, whatever its kind; the rest is the kind's own."""

    model_config = ConfigDict(extra="allow")

    kind: str
    format_version: int | str | None = None
    created: str | None = None  # ISO 8601, UTC
    aligners_version: str | None = None


def write_manifest(folder: Path | str, data: dict[str, Any]) -> Path:
    """Write atomically (temp + rename), stamping the creation time and the aligners version."""
    import aligners

    stamped = {**data, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "aligners_version": aligners.__version__}
    ManifestHeader.model_validate(stamped)
    return write_text_atomic(Path(folder) / MANIFEST, json.dumps(stamped, indent=2) + "\n")


def read_manifest(folder: Path | str, kind: str, format_version: int | str | None = None, *,
                  error: type[ManifestError] = ManifestError, hint: str = "") -> dict[str, Any]:
    """Read and check `folder/manifest.json`: present, JSON, the expected kind and format version.
    `error` is the kind's own ManifestError subclass; `hint` says how to make such an artifact."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise error(f"{path} not found: {folder} is not a {kind} artifact. {hint}".rstrip())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        header = ManifestHeader.model_validate(data)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise error(f"{path}: not an artifact manifest ({exc.errors()[0]['msg']} at "
                    f"{'.'.join(map(str, exc.errors()[0]['loc'])) or 'top level'})") from None
    if header.kind != kind:
        raise error(f"{path}: kind is {header.kind!r}, not {kind!r}")
    if format_version is not None and header.format_version != format_version:
        raise error(
            f"{path}: format version {header.format_version!r} does not match the version this aligners "
            f"reads ({format_version!r}). Retrain it, or use the aligners release that wrote it. {hint}".rstrip()
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


def save_numpy_weights(path: Path | str, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Write numpy `tensors` to the safetensors file `path` atomically, readable by everyone
    (safetensors creates files owner-only; artifacts are meant to be shared)."""
    from safetensors.numpy import save_file

    with atomic_path(Path(path)) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        tmp.chmod(0o644)


def load_numpy_weights(path: Path | str, retrain: str, error: type[ManifestError] = ManifestError) -> dict[str, Any]:
    """The numpy tensors of the safetensors file `path`; `error` names an unreadable file,
    `refuse_nonfinite` NaN or infinite weights."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise error(f"{path}: not a readable safetensors file ({exc}); {retrain}") from None
    refuse_nonfinite(tensors, path, retrain)
    return tensors
