"""Inspectors that are a frozen feature extractor + standardized logistic regression.

`embed-logreg` (MiniLM sentence embeddings) and `hidden-probe` (the squad backbone's own hidden
states) differ only in `featurize`; fitting, out-of-fold calibration and persistence are here.
Features are standardized (mean/scale stored) before `LogisticRegression(class_weight=
"balanced")`, so `C` means the same whatever the feature scale. Scoring is numpy on stored arrays
(no sklearn object at predict time), so a saved and reloaded inspector gives identical scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aligners.models import model_id_and_hash
from inspectors.base import Inspector, InspectorLoadError


def fit_linear(
    X: np.ndarray, y: np.ndarray, C: float, max_iter: int, random_state: int
) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    mean = X.mean(axis=0, dtype=np.float64)
    scale = X.std(axis=0, dtype=np.float64)
    scale[scale < 1e-12] = 1.0
    lr = LogisticRegression(
        C=C, class_weight="balanced", max_iter=max_iter, random_state=random_state
    )
    lr.fit((X - mean) / scale, y)
    return {
        "scaler_mean": mean,
        "scaler_scale": scale,
        "coef": lr.coef_.ravel().astype(np.float64),
        "intercept": lr.intercept_.astype(np.float64),
    }


def linear_scores(X: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    Z = (X.astype(np.float64) - w["scaler_mean"]) / w["scaler_scale"]
    return Z @ w["coef"] + w["intercept"][0]


class LinearInspector(Inspector):
    """Base for feature + logistic-regression inspectors. Subclasses define `featurize` and
    the params `C`, `max_iter`, `cv_folds`, `random_state` (plus the shared ones)."""

    C: float
    max_iter: int
    cv_folds: int

    def featurize(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def _fit_model(self, prompts: list[str], answers: list[str], labels: np.ndarray) -> None:
        self._fit_features(self.featurize(prompts, answers), labels)

    def _fit_features(self, X: np.ndarray, y: np.ndarray) -> None:
        w = fit_linear(X, y, self.C, self.max_iter, self.random_state)
        self.scaler_mean_, self.scaler_scale_ = w["scaler_mean"], w["scaler_scale"]
        self.coef_, self.intercept_ = w["coef"], w["intercept"]

    def _weights(self) -> dict[str, np.ndarray]:
        return {
            "scaler_mean": self.scaler_mean_,
            "scaler_scale": self.scaler_scale_,
            "coef": self.coef_,
            "intercept": self.intercept_,
        }

    def _raw_scores(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        return linear_scores(self.featurize(prompts, answers), self._weights())

    def _fit_for_calibration(self, prompts, answers, labels):
        """Out-of-fold scores (folds grouped by prompt, so a prompt's two answers stay together),
        then a refit on all training data. Features are computed once for all folds."""
        from sklearn.model_selection import StratifiedGroupKFold

        X = self.featurize(prompts, answers)
        n_splits = int(min(self.cv_folds, np.bincount(labels).min()))
        if n_splits < 2:
            raise ValueError("out-of-fold calibration needs at least 2 examples of each class")
        folds = StratifiedGroupKFold(
            n_splits=n_splits, shuffle=True, random_state=self.random_state
        )
        raw = np.zeros(len(labels))
        for tr, te in folds.split(X, labels, groups=prompts):
            if len(np.unique(labels[tr])) < 2:
                raise ValueError(
                    "a calibration fold lacks a class; pass a validation split instead"
                )
            raw[te] = linear_scores(
                X[te], fit_linear(X[tr], labels[tr], self.C, self.max_iter, self.random_state)
            )
        self._fit_features(X, labels)
        return raw, labels, f"{n_splits}-fold out-of-fold training scores"

    def _model_tensors(self) -> dict[str, np.ndarray]:
        return self._weights()

    def _load_model(self, path: Path, tensors: dict[str, np.ndarray]) -> None:
        self.scaler_mean_, self.scaler_scale_ = tensors["scaler_mean"], tensors["scaler_scale"]
        self.coef_, self.intercept_ = tensors["coef"], tensors["intercept"]

    def _check_artifact(self, path: Path, manifest: dict) -> None:
        """The feature model is loaded from this machine, so it must be the very one trained with."""
        want_id, want_hash = manifest["encoder"]["id"], manifest["encoder"]["hash"]
        have_id, have_hash = model_id_and_hash(self.encoder)
        if (have_id, have_hash) != (want_id, want_hash):
            raise InspectorLoadError(
                f"{path}: the inspector was trained on encoder {want_id} with hash {want_hash}, but the "
                f"encoder available here ({have_id}) has hash {have_hash}. Its features would be "
                "meaningless: retrain it with `aligners train-inspector`, or install the encoder "
                "version it was trained with."
            )
