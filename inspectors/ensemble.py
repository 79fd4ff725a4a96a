"""`ensemble`: saved inspectors of one criterion scored together, by the mean of their log-odds.

Why: inspectors that read an answer differently miss different answers. On the hand-labelled
dev set the harmless probe on SmolLM2's hidden states and a MiniLM fine-tuned on
`prompt [SEP] answer` each route fewer misaligned answers at the squad's false-flag budget than
the mean of their log-odds does (docs/results-history.md).

The members are trained on their own first (`aligners train-inspector`, any type), like
scikit-learn's prefit estimators: the ensemble learns no weights from data, it only calibrates
its combined score and picks its threshold. Its raw score is the weighted mean of
log(P / (1 - P)) over the members' calibrated P(aligned), each member's own caps included. The
members must have been trained on the same training split as the ensemble is given, so its
validation split is one none of them saw. The artifact keeps a copy of each member under
`members/<i>/`, and each copy is checked on load as if it were loaded alone.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inspectors.base import Inspector, InspectorLoadError, examples_hash, load_inspector
from inspectors.calibration import log_odds

MEMBERS_DIR = "members"


class EnsembleInspector(Inspector):
    """Mean log-odds of saved inspectors; parameters are those of `inspectors.config.EnsembleConfig`."""

    type: ClassVar[str] = "ensemble"

    def __init__(
        self,
        members: list[str] | None = None,
        weights: list[float] | None = None,
        calibration: str = "sigmoid",
        threshold_target: str = "recall",
        threshold_value: float = 0.95,
        criterion: str | None = None,
    ):
        self.members = members
        self.weights = weights
        self.calibration = calibration
        self.threshold_target = threshold_target
        self.threshold_value = threshold_value
        self.criterion = criterion

    def _fit_model(
        self, prompts: list[str], answers: list[str], labels: np.ndarray, intents: np.ndarray | None
    ) -> None:
        """Loads the members and checks they were trained on exactly these training examples."""
        if not self.members or len(self.members) < 2:
            raise ValueError("an ensemble needs at least two member inspector folders")
        self.members_ = [load_inspector(m) for m in self.members]
        self.member_sources_ = [Path(m) for m in self.members]
        self._check_members("the ensemble")
        ours = examples_hash(prompts, answers, labels)
        for path, member in zip(self.members, self.members_, strict=True):
            if member.train_hash_ != ours:
                raise ValueError(
                    f"member {path} was trained on other examples (hash {member.train_hash_}) than "
                    f"the ensemble's training split (hash {ours}): the validation split the ensemble "
                    "is calibrated on could hold answers it trained on. Train every member with the "
                    "same --data, --answers and --corrections as the ensemble."
                )

    def _check_members(self, where: object) -> None:
        crits = {m.criterion for m in self.members_}
        if len(crits) > 1 or (self.criterion is not None and crits != {self.criterion}):
            raise InspectorLoadError(
                f"{where}: the members judge {sorted(map(str, crits))} but an ensemble judges one "
                f"criterion ({self.criterion})"
            )
        if self.weights is not None and len(self.weights) != len(self.members_):
            raise InspectorLoadError(
                f"{where}: got {len(self.weights)} weights for {len(self.members_)} members")

    def _fit_for_calibration(self, prompts, answers, labels, intents):
        raise ValueError(
            "an ensemble is calibrated on a validation split its members never trained on: "
            "pass validation=(prompts, answers, labels)"
        )

    def _raw_scores(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        odds = np.stack([log_odds(m.predict_proba(prompts, answers)[:, 1]) for m in self.members_])
        return np.average(odds, axis=0, weights=self.weights)

    def readings(self) -> list:
        return [r for m in self.members_ for r in m.readings()]

    @property
    def has_request_gate(self) -> bool:
        return any(m.has_request_gate for m in self.members_)

    def request_risk(self, prompts: Sequence[str]) -> np.ndarray:
        """The mean P(risky request) of the members that have a request gate."""
        gated = [m for m in self.members_ if m.has_request_gate]
        if not gated:
            raise ValueError("no member of this ensemble has a request gate")
        return np.mean([m.request_risk(prompts) for m in gated], axis=0)

    def _encoder_identity(self) -> tuple[str, str]:
        """The members' encoders, each still checked by its own member on load."""
        hashes = "+".join(m.encoder_hash_ for m in self.members_)
        return ("+".join(m.encoder_id_ for m in self.members_),
                hashlib.sha256(hashes.encode()).hexdigest()[:16])

    # -- persistence: a copy of each member folder (the weights are params) --
    def _model_tensors(self) -> dict[str, np.ndarray]:
        return {}

    def _save_model_files(self, path: Path) -> dict[str, Any]:
        folders = []
        for i, source in enumerate(self.member_sources_):
            target = path / MEMBERS_DIR / str(i)
            if source.resolve() != target.resolve():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)
            folders.append(f"{MEMBERS_DIR}/{i}")
        return {"members": folders}

    def _check_artifact(self, path: Path, manifest: dict) -> None:
        from aligners.manifest import confined

        folders = manifest["files"].get("members") or []
        if len(folders) != len(self.members or []):
            raise InspectorLoadError(
                f"{path}: the manifest lists {len(folders)} member folders for "
                f"{len(self.members or [])} members; retrain it with `aligners train-inspector`"
            )
        self.member_sources_ = [confined(path, f) for f in folders]

    def _load_model(self, path: Path, tensors: dict[str, np.ndarray]) -> None:
        self.members_ = [load_inspector(folder) for folder in self.member_sources_]
        self._check_members(path)
