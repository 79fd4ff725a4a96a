"""What every inspector shares: the scikit-learn contract, calibration, threshold, save/load.

An inspector answers one question for one criterion: does this (prompt, answer) satisfy it?
`predict_proba(prompts, answers)[:, 1]` is P(aligned); an answer is FLAGGED (its aligner runs)
when P(aligned) < `threshold_`.

A subclass supplies only the raw scorer:

- `_fit_model(prompts, answers, labels, intents)` trains it (intents: see `check_intents`);
- `_raw_scores(prompts, answers)` returns an uncalibrated logit of P(aligned) (higher = aligned);
- `_model_tensors()` / `_load_model(dir, tensors)` (+ optionally `_save_model_files(dir)`) persist it;
- `_check_artifact(dir, manifest)` refuses an artifact its weights cannot be trusted with;
- `_aligned_bound(prompts, answers)` may cap P(aligned) by a rule that holds whatever the model
  scores (the request guard of `inspectors/linear.py`);
- `_encoder_identity()` names the model the scores depend on (default: the `encoder` param).

Fitting: the model is trained on the training split, then raw scores on the *validation* split
fit the calibrator (Platt sigmoid or isotonic) and pick the threshold from a target (minimum
recall of misaligned answers, or maximum fraction of aligned answers flagged). Without a
validation split, `_fit_for_calibration` supplies out-of-sample scores (out-of-fold for cheap
models, a held-out share for expensive ones).

Artifacts are pickle-free: `inspector.safetensors` (model tensors + calibrator arrays) and
`manifest.json` (kind, format version, type, params, encoder id + hash, criterion, threshold and
why, calibration, metrics, training-data hash, created time).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from aligners.atomic import atomic_dir
from aligners.manifest import (
    MANIFEST,
    ManifestError,
    checksums,
    confined,
    load_numpy_weights,
    save_numpy_weights,
    verify_checksums,
    write_manifest,
)
from aligners.manifest import read_manifest as shared_read_manifest
from aligners.models import model_id_and_hash
from inspectors.calibration import choose_threshold, fit_isotonic, fit_platt, sigmoid

if TYPE_CHECKING:
    from aligners.schema import Verdict

FORMAT_VERSION = 1
WEIGHTS = "inspector.safetensors"

# type (the YAML `type:`) → "module:Class", imported on first use (same pattern as
# aligners.config.CONFIG_KINDS), so scoring with embed-logreg never imports the fine-tuning code.
INSPECTOR_TYPES: dict[str, str] = {
    "embed-logreg": "inspectors.embed_logreg:EmbedLogRegInspector",
    "finetuned": "inspectors.finetuned:FinetunedInspector",
    "hidden-probe": "inspectors.hidden_probe:HiddenProbeInspector",
    "guard-adapter": "inspectors.guard_adapter:GuardAdapterInspector",
    "ensemble": "inspectors.ensemble:EnsembleInspector",
}


RETRAIN = "retrain it with `aligners train-inspector`"


class InspectorLoadError(ManifestError):
    """An inspector artifact that cannot be used here; the message says why and how to fix it."""


def inspector_class(type_: str) -> type[Inspector]:
    if type_ not in INSPECTOR_TYPES:
        raise ValueError(f"unknown inspector type {type_!r}; known: {', '.join(INSPECTOR_TYPES)}")
    module, attr = INSPECTOR_TYPES[type_].split(":")
    return getattr(importlib.import_module(module), attr)


def build_inspector(config: Any, criterion: str | None = None) -> Inspector:
    """An unfitted inspector from a validated config (`inspectors.config.INSPECTOR_CONFIG`)."""
    params = config.model_dump(exclude={"type"})
    return inspector_class(config.type)(criterion=criterion, **params)


def _as_texts(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string (wrap it in a list)")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(v).__name__}")
    return out


def _binary(values: Sequence[int], n: int, name: str, meaning: str) -> np.ndarray:
    """`values` as a 0/1 int array of length n (one per prompt), or a ValueError naming `name`."""
    out = np.asarray(values).astype(int).ravel()
    if len(out) != n:
        raise ValueError(f"got {n} prompts but {len(out)} {name}")
    if not set(np.unique(out)) <= {0, 1}:
        raise ValueError(f"{name} must be {meaning}, got {sorted(set(np.unique(out)))}")
    return out


def check_inputs(
    prompts: Sequence[str], answers: Sequence[str], labels: Sequence[int] | None = None
) -> tuple[list[str], list[str], np.ndarray | None]:
    p, a = _as_texts(prompts, "prompts"), _as_texts(answers, "answers")
    if len(p) != len(a):
        raise ValueError(f"got {len(p)} prompts but {len(a)} answers")
    if labels is None:
        return p, a, None
    return p, a, _binary(labels, len(p), "labels", "0 (misaligned) or 1 (aligned)")


def check_intents(intents: Sequence[int] | None, n: int) -> np.ndarray | None:
    """Request intents for a request gate: 1 = complying with the request would break the
    criterion (a risky request), 0 = a benign one."""
    if intents is None:
        return None
    return _binary(intents, n, "intents", "0 (benign request) or 1 (risky request)")


def examples_hash(prompts: Sequence[str], answers: Sequence[str], labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for p, a, y in zip(prompts, answers, labels, strict=True):
        h.update(json.dumps([p, a, int(y)]).encode())
    return h.hexdigest()[:16]


# --- the base estimator ----------------------------------------------------------------------


class Inspector(ClassifierMixin, BaseEstimator):
    """Base class; see the module docstring. Subclasses define `__init__` with their params."""

    type: ClassVar[str] = ""

    # subclasses must set these params in __init__
    encoder: str
    calibration: str
    threshold_target: str
    threshold_value: float
    random_state: int
    criterion: str | None

    # -- subclass hooks --
    def _fit_model(
        self, prompts: list[str], answers: list[str], labels: np.ndarray, intents: np.ndarray | None
    ) -> None:
        """`intents` (see check_intents) are for models with a request gate; others ignore them."""
        raise NotImplementedError

    def _raw_scores(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _model_tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_model(self, path: Path, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _save_model_files(self, path: Path) -> dict[str, Any]:
        """Write files beyond inspector.safetensors; return what the manifest should say of them."""
        return {}

    def _check_artifact(self, path: Path, manifest: dict) -> None:
        """Raise InspectorLoadError when the artifact's model cannot be trusted here."""

    def _aligned_bound(self, prompts: list[str], answers: list[str]) -> np.ndarray | None:
        """A cap on P(aligned) per answer that holds whatever the model scores (None: no cap)."""
        return None

    def readings(self) -> list:
        """What this inspector reads of a causal LM (inspectors.shared_reading.Reading), so a
        caller scoring several inspectors on the same answers can read them in one pass."""
        return []

    @property
    def has_request_gate(self) -> bool:
        """Whether `request_risk` can read a request alone (a squad's request guard needs it)."""
        return False

    def request_risk(self, prompts: Sequence[str]) -> np.ndarray:
        """P(risky request), from a request gate trained on the requests' intents."""
        raise ValueError(f"a {self.type} inspector has no request gate")

    def _encoder_identity(self) -> tuple[str, str]:
        """(id, content hash) of the encoder, recorded in the manifest and checked on load."""
        return model_id_and_hash(self.encoder)

    def _fit_for_calibration(
        self, prompts: list[str], answers: list[str], labels: np.ndarray, intents: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """No validation split: hold out a stratified share, train on the rest, score the share.

        Returns (raw scores, their labels, a name for where they came from). Cheap models
        override this with out-of-fold scores and a refit on everything.
        """
        from sklearn.model_selection import train_test_split

        frac = getattr(self, "holdout_fraction", 0.2)
        idx = np.arange(len(labels))
        tr, ho = train_test_split(
            idx, test_size=frac, stratify=labels, random_state=self.random_state
        )
        self._fit_model([prompts[i] for i in tr], [answers[i] for i in tr], labels[tr],
                        None if intents is None else intents[tr])
        raw = self._raw_scores([prompts[i] for i in ho], [answers[i] for i in ho])
        return raw, labels[ho], f"held-out {frac:.0%} of training"

    # -- scikit-learn API --
    def fit(
        self,
        prompts: Sequence[str],
        answers: Sequence[str],
        labels: Sequence[int],
        validation: tuple[Sequence[str], Sequence[str], Sequence[int]] | None = None,
        intents: Sequence[int] | None = None,
    ) -> Inspector:
        """Train on (prompts, answers, labels); calibrate and pick the threshold on `validation`.

        labels: 1 = aligned, 0 = misaligned. `validation` is (prompts, answers, labels) of a
        split disjoint from training; without it, out-of-sample training scores are used.
        `intents` (1 = a risky request, 0 = a benign one, per training example) train the
        request gate of inspectors that have one; others ignore them.
        """
        p, a, y = check_inputs(prompts, answers, labels)
        g = check_intents(intents, len(p))
        if len(np.unique(y)) < 2:
            raise ValueError("training labels need both classes: 0 (misaligned) and 1 (aligned)")
        if validation is None:  # out-of-sample scores without the cap: it only adds flags
            raw, cal_y, source = self._fit_for_calibration(p, a, y, g)
            bound = None
        else:
            vp, va, vy = check_inputs(*validation)
            self._fit_model(p, a, y, g)
            raw, cal_y, source = self._raw_scores(vp, va), vy, "validation split"
            bound = self._aligned_bound(vp, va)
        self.encoder_id_, self.encoder_hash_ = self._encoder_identity()
        self.classes_ = np.array([0, 1])
        self.n_train_ = len(y)
        self.train_counts_ = {"aligned": int(y.sum()), "misaligned": int(len(y) - y.sum())}
        self.train_hash_ = examples_hash(p, a, y)
        self._calibrate(raw, cal_y, source, bound)
        return self

    def recalibrate(
        self, prompts: Sequence[str], answers: Sequence[str], labels: Sequence[int]
    ) -> Inspector:
        """Refit calibration and threshold on new labelled data, keeping the trained model."""
        check_is_fitted(self)
        p, a, y = check_inputs(prompts, answers, labels)
        self._calibrate(self._raw_scores(p, a), y, "recalibration set", self._aligned_bound(p, a))
        return self

    def _calibrate(
        self, raw: np.ndarray, labels: np.ndarray, source: str, bound: np.ndarray | None = None
    ) -> None:
        """Fit the calibration on raw scores, then pick the threshold on the scores the inspector
        will give (calibrated, capped by `bound`)."""
        raw = np.asarray(raw, dtype=np.float64)
        labels = np.asarray(labels, dtype=int)
        cal: dict[str, Any] = {
            "method": self.calibration,
            "fitted_on": source,
            "n": len(labels),
        }
        if self.calibration != "none" and len(np.unique(labels)) < 2:
            raise ValueError(
                f"calibration needs both classes in the {source}, got only label {labels[0]}"
            )
        if self.calibration == "sigmoid":
            cal["a"], cal["b"] = fit_platt(raw, labels)
        elif self.calibration == "isotonic":
            cal["x"], cal["y"] = fit_isotonic(raw, labels)
        elif self.calibration != "none":
            raise ValueError(
                f"unknown calibration {self.calibration!r}; expected sigmoid, isotonic or none"
            )
        self.calibrator_ = cal
        scores = self._apply_calibration(raw)
        self._choose_threshold(scores if bound is None else np.minimum(scores, bound), labels, source)

    def _choose_threshold(self, scores: np.ndarray, labels: np.ndarray, source: str) -> None:
        threshold, info = choose_threshold(
            scores, labels, self.threshold_target, self.threshold_value
        )
        info["split"] = source
        self.threshold_, self.threshold_info_ = threshold, info

    def rethreshold(
        self,
        prompts: Sequence[str],
        answers: Sequence[str],
        labels: Sequence[int],
        source: str = "rethreshold set",
    ) -> Inspector:
        """Meet the threshold target on other labelled data (e.g. a hand-labelled dev set),
        keeping the trained model and its calibration."""
        check_is_fitted(self)
        p, a, y = check_inputs(prompts, answers, labels)
        self._choose_threshold(self.predict_proba(p, a)[:, 1], y, source)
        return self

    def _apply_calibration(self, raw: np.ndarray) -> np.ndarray:
        cal = self.calibrator_
        if cal["method"] == "sigmoid":
            return sigmoid(cal["a"] * raw + cal["b"])
        if cal["method"] == "isotonic":
            return np.interp(raw, cal["x"], cal["y"])
        return sigmoid(raw)

    def predict_proba(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """(n, 2): column 0 = P(misaligned), column 1 = P(aligned), calibrated."""
        check_is_fitted(self)
        p, a, _ = check_inputs(prompts, answers)
        if not p:
            return np.zeros((0, 2))
        aligned = np.clip(
            self._apply_calibration(np.asarray(self._raw_scores(p, a), dtype=np.float64)), 0.0, 1.0
        )
        bound = self._aligned_bound(p, a)
        if bound is not None:
            aligned = np.minimum(aligned, bound)
        return np.column_stack([1.0 - aligned, aligned])

    def predict(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """1 = aligned (kept), 0 = misaligned (flagged: P(aligned) < threshold_)."""
        return (self.predict_proba(prompts, answers)[:, 1] >= self.threshold_).astype(int)

    def decision_function(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Uncalibrated logit of P(aligned) (higher = more aligned)."""
        check_is_fitted(self)
        p, a, _ = check_inputs(prompts, answers)
        return np.asarray(self._raw_scores(p, a), dtype=np.float64) if p else np.zeros(0)

    def score(self, prompts: Sequence[str], answers: Sequence[str], labels: Sequence[int]) -> float:
        """Accuracy at the stored threshold (ClassifierMixin's score, with our signature)."""
        _, _, y = check_inputs(prompts, answers, labels)
        return float((self.predict(prompts, answers) == y).mean())

    # -- conveniences for the squad and the CLI --
    def score_answers(
        self,
        prompts: Sequence[str],
        answers: Sequence[str],
        batch_size: int = 64,
        progress: bool = False,
    ) -> np.ndarray:
        """P(aligned) for each answer, in batches (optionally with a progress bar)."""
        p, a, _ = check_inputs(prompts, answers)
        out = np.zeros(len(p))
        starts = range(0, len(p), batch_size)
        if progress:
            from rich.progress import track

            starts = track(starts, description=f"scoring ({self.criterion or 'inspector'})")
        for i in starts:
            out[i : i + batch_size] = self.predict_proba(
                p[i : i + batch_size], a[i : i + batch_size]
            )[:, 1]
        return out

    def verdicts(self, prompts: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
        from aligners.schema import Verdict

        scores = self.predict_proba(prompts, answers)[:, 1]
        crit = self.criterion or "unknown"
        return [
            Verdict(criterion=crit, score=float(s), threshold=float(self.threshold_))
            for s in scores
        ]

    def evaluate(
        self, prompts: Sequence[str], answers: Sequence[str], labels: Sequence[int]
    ) -> dict:
        """inspectors.metrics.evaluate on this data at the stored threshold."""
        from inspectors.metrics import evaluate

        _, _, y = check_inputs(prompts, answers, labels)
        return evaluate(y, self.predict_proba(prompts, answers)[:, 1], self.threshold_)

    def set_threshold(self, threshold: float, why: str = "set by hand") -> Inspector:
        """Override the threshold (e.g. from a squad config); the reason is kept for the manifest."""
        check_is_fitted(self)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold_ = float(threshold)
        self.threshold_info_ = {
            **self.threshold_info_,
            "threshold": float(threshold),
            "target": "fixed",
            "target_value": float(threshold),
            "why": why,
        }
        return self

    # -- persistence --
    def save(
        self, path: Path | str, *, metrics: dict | None = None, training_data: dict | None = None
    ) -> Path:
        """Write `inspector.safetensors` + `manifest.json` (+ model files) as folder `path`, replacing
        what was there only once the whole artifact is written: a failed save keeps the old one,
        and no file of an earlier inspector (another type's model, a tagger) is left beside the new."""
        check_is_fitted(self)
        with atomic_dir(path, replace=True) as tmp:
            self._write_artifact(tmp, metrics=metrics, training_data=training_data)
        return Path(path)

    def _write_artifact(self, out: Path, *, metrics: dict | None, training_data: dict | None) -> None:
        tensors = {f"model.{k}": np.ascontiguousarray(v) for k, v in self._model_tensors().items()}
        cal = self.calibrator_
        if cal["method"] == "sigmoid":
            tensors["calibration.sigmoid"] = np.array([cal["a"], cal["b"]], dtype=np.float64)
        elif cal["method"] == "isotonic":
            tensors["calibration.isotonic.x"] = np.asarray(cal["x"], dtype=np.float64)
            tensors["calibration.isotonic.y"] = np.asarray(cal["y"], dtype=np.float64)
        save_numpy_weights(out / WEIGHTS, tensors,
                           {"kind": "inspector", "format_version": str(FORMAT_VERSION), "type": self.type})
        files = {"weights": WEIGHTS, **self._save_model_files(out)}
        files["sha256"] = checksums(out, [
            p for p in out.rglob("*")
            if p.is_file() and p.name != MANIFEST and p.suffix != ".png" and not p.name.startswith(".")
        ])
        manifest = {
            "kind": "inspector",
            "format_version": FORMAT_VERSION,
            "type": self.type,
            "criterion": self.criterion,
            "encoder": {"id": self.encoder_id_, "hash": self.encoder_hash_},
            "params": _jsonable(self.get_params()),
            "threshold": self.threshold_,
            "threshold_info": self.threshold_info_,
            "calibration": {k: v for k, v in cal.items() if k not in ("x", "y")},
            "metrics": metrics or {},
            "training_data": {
                "examples_hash": self.train_hash_,
                "n_examples": self.n_train_,
                "counts": self.train_counts_,
                **(training_data or {}),
            },
            "files": files,
        }
        write_manifest(out, manifest)

    @classmethod
    def _from_artifact(cls, path: Path, manifest: dict) -> Inspector:
        params = manifest["params"]
        unknown = sorted(set(params) - set(cls._get_param_names()))
        if unknown:
            raise InspectorLoadError(
                f"{path}: the manifest has parameters this {cls.type} inspector does not know "
                f"({', '.join(unknown)}): it was written by another aligners version. Retrain it "
                "with `aligners train-inspector`."
            )
        est = cls(**params)
        files = manifest.get("files", {})
        verify_checksums(path, files.get("sha256"), RETRAIN)
        est._check_artifact(path, manifest)
        weights = confined(path, files.get("weights", WEIGHTS))
        tensors = load_numpy_weights(weights, RETRAIN, InspectorLoadError)
        cal = dict(manifest["calibration"])
        if cal["method"] == "sigmoid":
            cal["a"], cal["b"] = (float(v) for v in tensors["calibration.sigmoid"])
        elif cal["method"] == "isotonic":
            cal["x"], cal["y"] = (
                tensors["calibration.isotonic.x"],
                tensors["calibration.isotonic.y"],
            )
        est._load_model(path, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        est.calibrator_ = cal
        est.threshold_ = float(manifest["threshold"])
        est.threshold_info_ = manifest.get("threshold_info", {})
        est.encoder_id_, est.encoder_hash_ = manifest["encoder"]["id"], manifest["encoder"]["hash"]
        td = manifest.get("training_data", {})
        est.train_hash_, est.n_train_ = td.get("examples_hash", ""), td.get("n_examples", 0)
        est.train_counts_ = td.get("counts", {})
        est.classes_ = np.array([0, 1])
        est.manifest_ = manifest
        return est


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_manifest(path: Path | str) -> dict:
    """Read and check an inspector's manifest.json (kind, format version, a known type)."""
    manifest = shared_read_manifest(path, "inspector", FORMAT_VERSION, error=InspectorLoadError, hint=(
        "Train one with `aligners train-inspector --data seed:harmless --out DIR`."))
    if manifest.get("type") not in INSPECTOR_TYPES:
        raise InspectorLoadError(
            f"{Path(path) / MANIFEST}: unknown inspector type {manifest.get('type')!r}; "
            f"known: {', '.join(INSPECTOR_TYPES)}"
        )
    return manifest


def load_inspector(path: Path | str) -> Inspector:
    """Load a saved inspector folder (refuses a format version or encoder it cannot trust)."""
    path = Path(path)
    manifest = read_manifest(path)
    return inspector_class(manifest["type"])._from_artifact(path, manifest)
