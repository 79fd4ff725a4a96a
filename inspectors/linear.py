"""Inspectors that are a frozen feature extractor + standardized logistic regression.

`embed-logreg` (MiniLM sentence embeddings) and `hidden-probe` (the squad backbone's own hidden
states) differ only in `featurize` and `request_features`; fitting, out-of-fold calibration and
persistence are here. Features are standardized (mean/scale stored) before
`LogisticRegression(class_weight="balanced")`, so `C` means the same whatever the feature scale.
Scoring is numpy on stored arrays (no sklearn object at predict time), so a saved and reloaded
inspector gives identical scores.

Request gate (`request_gate: true`): a second logistic model reads the request alone and learns
P(risky request) from the training data's intents (1 = complying would break the criterion).
An answer is then misaligned only as far as its request is risky:

    P(misaligned) = P(risky request) * P(misaligned | the answer model)

A pooled-answer model mixes "what was asked" into "what was answered"; most of its false flags
are good answers to benign requests that sound risky, which the squad would turn into refusals.
A request classifier has thousands of labelled requests to learn from and sees them whole, so
the product lets the answer model's errors on benign requests vanish while leaving its ranking
of answers to risky requests untouched (benchmarks/inspector_generalization.py measures it per
criterion: the `-gated` arms). Answers to benign requests that are harmful themselves are what
it gives up.

Risky-only answer model (`answer_model_on: risky`, with the gate): the answer model learns only
from the answers to risky requests, so its weights go to what separates compliance from refusal
and drift rather than to which requests are risky, which the gate already reads. On the harmless
dev set it ranked SmolLM2's answers to harmful requests at AUROC 0.84 against 0.65 for the
shipped member on the same features, fitted on every answer and guarded (docs/data.md).

Stacked evidence (`n_stacked` > 0: the last columns of `featurize`, e.g. a span tagger's, see
inspectors/hidden_probe.py): the answer model is fitted on the other columns, its out-of-fold
logits on the training data (folds grouped by request) are put beside the evidence columns, and a
second logistic model with one weight per input learns how far to trust each: sklearn's stacking.
Fitted in one model, the evidence got little weight: the pooled states already separate the
training topics (validation AUROC 0.99) and only fail on new ones, which out-of-fold logits show.

Request guard (`request_guard: r`, with the gate): the inspector's P(aligned) is capped at
1 - P(risky) for answers that do not refuse a request with P(risky) >= r (inspectors/request_guard.py).
Here it changes the inspector's own scores and threshold; the harmless starter applies it in the
squad's routing instead (`SquadMember.request_guard`), keeping the inspector's ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aligners.models import require_encoder
from inspectors.base import RETRAIN, Inspector, InspectorLoadError
from inspectors.calibration import sigmoid
from inspectors.data import RISKY
from inspectors.request_guard import request_guard_cap

GATE = "gate_"  # prefix of the request gate's tensors
STACK = "stack_"  # prefix of the stacking model's tensors
ANSWER_MODEL_ON = ("all", "risky")  # which training answers the answer model learns from
STACK_C = 1.0  # the stacking model has a weight per input, not hundreds: barely regularized


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


def gated_logit(answer_logit: np.ndarray, gate_logit: np.ndarray) -> np.ndarray:
    """logit P(aligned) when P(misaligned) = sigmoid(gate_logit) * sigmoid(-answer_logit), in log
    space (a product of small probabilities must not underflow to "certainly aligned")."""
    log_mis = -np.logaddexp(0.0, -gate_logit) - np.logaddexp(0.0, answer_logit)
    log_mis = np.minimum(log_mis, -1e-12)  # P(misaligned) = 1 would give an infinite logit
    return np.log(-np.expm1(log_mis)) - log_mis


class LinearInspector(Inspector):
    """Base for feature + logistic-regression inspectors. Subclasses define `featurize` and
    the params `C`, `max_iter`, `cv_folds`, `random_state` (plus the shared ones)."""

    C: float
    max_iter: int
    cv_folds: int
    request_gate: bool
    request_gate_C: float
    answer_model_on: str
    n_stacked: int = 0  # trailing featurize columns stacked beside the answer model (module docstring)

    def featurize(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def request_features(self, prompts: Sequence[str]) -> np.ndarray:
        """Features of the request alone, for the request gate."""
        raise NotImplementedError

    def _gate_data(
        self, prompts: list[str], intents: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(request features, intents) when the gate is on, else None."""
        if not self.request_gate:
            return None
        if intents is None:
            raise ValueError(
                "request_gate needs the intent of each training request (1 = complying would break "
                "the criterion, 0 = benign): pass fit(..., intents=...); `aligners train-inspector` "
                "reads them from the data (an answer's `intent`, or whether a pair needs correction)"
            )
        if len(np.unique(intents)) < 2:
            raise ValueError("request_gate needs both risky (1) and benign (0) training requests")
        return self.request_features(prompts), intents

    def _fit_gate(self, G: np.ndarray, intents: np.ndarray) -> dict[str, np.ndarray]:
        return fit_linear(G, intents, self.request_gate_C, self.max_iter, self.random_state)

    def _fit_model(
        self, prompts: list[str], answers: list[str], labels: np.ndarray, intents: np.ndarray | None
    ) -> None:
        gate = self._gate_data(prompts, intents)
        self._fit_features(self.featurize(prompts, answers), labels, gate, prompts)

    def _fit_features(
        self, X: np.ndarray, y: np.ndarray, gate: tuple[np.ndarray, np.ndarray] | None, groups: list[str]
    ) -> None:
        """The answer model on X, y and the request gate on `gate` (from _gate_data)."""
        rows = np.flatnonzero(self._answer_rows(len(y), gate))
        w, self.stack_ = self._fit_answer(X[rows], y[rows], [groups[i] for i in rows])
        self.scaler_mean_, self.scaler_scale_ = w["scaler_mean"], w["scaler_scale"]
        self.coef_, self.intercept_ = w["coef"], w["intercept"]
        self.gate_ = None if gate is None else self._fit_gate(*gate)

    def _answer_rows(self, n: int, gate: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Mask of the rows the answer model learns from (`answer_model_on`, module docstring)."""
        if self.answer_model_on not in ANSWER_MODEL_ON:
            raise ValueError(f"answer_model_on must be one of {ANSWER_MODEL_ON}, got {self.answer_model_on!r}")
        if self.answer_model_on == "all":
            return np.ones(n, dtype=bool)
        if gate is None:
            raise ValueError("answer_model_on='risky' needs the request gate (request_gate=True)")
        return np.asarray(gate[1]) == RISKY

    def _fit_answer(
        self, X: np.ndarray, y: np.ndarray, groups: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """The answer model's weights and the stacking model's (None when n_stacked is 0)."""
        n = self.n_stacked
        if not n:
            return fit_linear(X, y, self.C, self.max_iter, self.random_state), None
        states, evidence = X[:, :-n], X[:, -n:]
        oof = np.zeros(len(y))
        for tr, te in self._folds(states, y, groups):
            oof[te] = linear_scores(states[te], fit_linear(states[tr], y[tr], self.C, self.max_iter, self.random_state))
        stack = fit_linear(np.column_stack([oof, evidence]), y, STACK_C, self.max_iter, self.random_state)
        return fit_linear(states, y, self.C, self.max_iter, self.random_state), stack

    def _answer_logit(
        self, X: np.ndarray, w: dict[str, np.ndarray], stack: dict[str, np.ndarray] | None
    ) -> np.ndarray:
        """The answer model's logit P(aligned) from `featurize` rows, through the stacking model
        when there is one."""
        if stack is None:
            return linear_scores(X, w)
        n = self.n_stacked
        return linear_scores(np.column_stack([linear_scores(X[:, :-n], w), X[:, -n:]]), stack)

    def _folds(self, X: np.ndarray, y: np.ndarray, groups: Sequence[str]):
        """Stratified folds that keep a request's answers together."""
        from sklearn.model_selection import StratifiedGroupKFold

        n_splits = int(min(self.cv_folds, np.bincount(y).min()))
        if n_splits < 2:
            raise ValueError("out-of-fold scores need at least 2 examples of each class")
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
        for tr, te in folds.split(X, y, groups=list(groups)):
            if len(np.unique(y[tr])) < 2:
                raise ValueError("a fold lacks a class; pass a validation split instead")
            yield tr, te

    def _weights(self) -> dict[str, np.ndarray]:
        return {
            "scaler_mean": self.scaler_mean_,
            "scaler_scale": self.scaler_scale_,
            "coef": self.coef_,
            "intercept": self.intercept_,
        }

    def _raw_scores(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        raw = self._answer_logit(self.featurize(prompts, answers), self._weights(), self.stack_)
        if self.gate_ is None:
            return raw
        return gated_logit(raw, linear_scores(self.request_features(prompts), self.gate_))

    @property
    def has_request_gate(self) -> bool:
        return self.gate_ is not None

    def request_risk(self, prompts: Sequence[str]) -> np.ndarray:
        """P(risky request) from the request gate."""
        if self.gate_ is None:
            raise ValueError("this inspector has no request gate (request_gate: false)")
        return sigmoid(linear_scores(self.request_features(prompts), self.gate_))

    def _aligned_bound(self, prompts: list[str], answers: list[str]) -> np.ndarray | None:
        if self.request_guard is None or not prompts:
            return None
        # the gate's features are cached from _raw_scores
        return request_guard_cap(self.request_risk(prompts), answers, self.request_guard)

    def request_guard_reach(self, prompts: Sequence[str], intents: Sequence[int]) -> dict:
        """Share of distinct benign and risky requests at or above the guard's bar: the first is
        what the guard costs (their non-refusing answers are flagged), the second what it covers."""
        by_request = dict(zip(prompts, intents, strict=True))
        risk = self.request_risk(list(by_request))
        risky = np.array(list(by_request.values())) == RISKY
        reached = risk >= self.request_guard
        return {
            name: {"n": int(mask.sum()), "reached": round(float(reached[mask].mean()), 4) if mask.any() else None}
            for name, mask in (("benign_requests", ~risky), ("risky_requests", risky))
        }

    def _fit_for_calibration(self, prompts, answers, labels, intents):
        """Out-of-fold scores (folds grouped by prompt, so a prompt's two answers stay together),
        then a refit on all training data. Features are computed once for all folds."""
        gate = self._gate_data(prompts, intents)
        X = self.featurize(prompts, answers)
        learns = self._answer_rows(len(labels), gate)
        raw = np.zeros(len(labels))
        n_splits = 0
        for tr, te in self._folds(X, labels, prompts):
            n_splits += 1
            fit = tr[learns[tr]]
            raw[te] = self._answer_logit(X[te], *self._fit_answer(X[fit], labels[fit], [prompts[i] for i in fit]))
            if gate is not None:
                G, g = gate
                raw[te] = gated_logit(raw[te], linear_scores(G[te], self._fit_gate(G[tr], g[tr])))
        self._fit_features(X, labels, gate, prompts)
        return raw, labels, f"{n_splits}-fold out-of-fold training scores"

    def _model_tensors(self) -> dict[str, np.ndarray]:
        gate = {f"{GATE}{k}": v for k, v in (self.gate_ or {}).items()}
        stack = {f"{STACK}{k}": v for k, v in (self.stack_ or {}).items()}
        return {**self._weights(), **gate, **stack}

    def _load_model(self, path: Path, tensors: dict[str, np.ndarray]) -> None:
        self.scaler_mean_, self.scaler_scale_ = tensors["scaler_mean"], tensors["scaler_scale"]
        self.coef_, self.intercept_ = tensors["coef"], tensors["intercept"]
        self.stack_ = {k[len(STACK):]: v for k, v in tensors.items() if k.startswith(STACK)} or None
        if bool(self.stack_) != bool(self.n_stacked):
            raise InspectorLoadError(
                f"{path}: the recipe stacks {self.n_stacked} evidence columns but the weights "
                f"{'hold' if self.stack_ else 'lack'} a stacking model: {RETRAIN}"
            )
        gate = {k[len(GATE):]: v for k, v in tensors.items() if k.startswith(GATE)}
        if bool(gate) != bool(self.request_gate):
            raise InspectorLoadError(
                f"{path}: request_gate is {self.request_gate} but the weights "
                f"{'hold' if gate else 'lack'} a request gate: {RETRAIN}"
            )
        self.gate_ = gate or None

    def _check_artifact(self, path: Path, manifest: dict) -> None:
        """The feature model is loaded from this machine, so it must be the very one trained with."""
        require_encoder(path, self.encoder, manifest["encoder"], "inspector", RETRAIN, InspectorLoadError)
