"""Inspectors: calibrated binary classifiers, one per criterion, scoring P(aligned | prompt, answer).

    from inspectors import EmbedLogRegInspector, load_inspector
    insp = EmbedLogRegInspector(criterion="polite").fit(prompts, answers, labels, validation=(vp, va, vl))
    insp.predict_proba(prompts, answers)[:, 1]   # P(aligned); flagged when < insp.threshold_
    insp.save("artifacts/inspectors/polite"); load_inspector("artifacts/inspectors/polite")

Exports are resolved lazily (PEP 562) so importing `inspectors.commands` for the CLI does not pull
in sklearn, torch or the encoder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Inspector": "inspectors.base",
    "InspectorLoadError": "inspectors.base",
    "INSPECTOR_TYPES": "inspectors.base",
    "FORMAT_VERSION": "inspectors.base",
    "build_inspector": "inspectors.base",
    "inspector_class": "inspectors.base",
    "load_inspector": "inspectors.base",
    "read_manifest": "inspectors.base",
    "EmbedLogRegInspector": "inspectors.embed_logreg",
    "EnsembleInspector": "inspectors.ensemble",
    "FinetunedInspector": "inspectors.finetuned",
    "HiddenProbeInspector": "inspectors.hidden_probe",
    "GuardAdapterInspector": "inspectors.guard_adapter",
    "GuardAdapterConfig": "inspectors.config",
    "HiddenProbeConfig": "inspectors.config",
    "INSPECTOR_CONFIG": "inspectors.config",
    "EmbedLogRegConfig": "inspectors.config",
    "EnsembleConfig": "inspectors.config",
    "FinetunedConfig": "inspectors.config",
    "pairs_to_examples": "inspectors.data",
    "load_training_data": "inspectors.data",
    "evaluate": "inspectors.metrics",
    "score_jsonl": "inspectors.scoring",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from inspectors.base import (  # noqa: F401
        FORMAT_VERSION,
        INSPECTOR_TYPES,
        Inspector,
        InspectorLoadError,
        build_inspector,
        inspector_class,
        load_inspector,
        read_manifest,
    )
    from inspectors.config import (  # noqa: F401
        INSPECTOR_CONFIG,
        EmbedLogRegConfig,
        EnsembleConfig,
        FinetunedConfig,
        GuardAdapterConfig,
        HiddenProbeConfig,
    )
    from inspectors.data import load_training_data, pairs_to_examples  # noqa: F401
    from inspectors.embed_logreg import EmbedLogRegInspector  # noqa: F401
    from inspectors.ensemble import EnsembleInspector  # noqa: F401
    from inspectors.finetuned import FinetunedInspector  # noqa: F401
    from inspectors.guard_adapter import GuardAdapterInspector  # noqa: F401
    from inspectors.hidden_probe import HiddenProbeInspector  # noqa: F401
    from inspectors.metrics import evaluate  # noqa: F401
    from inspectors.scoring import score_jsonl  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'inspectors' has no attribute {name!r}")
