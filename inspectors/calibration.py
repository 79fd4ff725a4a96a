"""Calibration and operating points of an inspector's raw scores (as scikit-learn keeps
sklearn/calibration.py apart from its estimators): a numerically stable sigmoid, Platt scaling
with smoothed targets, isotonic regression, and the threshold that meets a recall or
false-flag target exactly on a labelled split.
"""

from __future__ import annotations

import math

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def log_odds(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The inverse of `sigmoid`, with probabilities kept `eps` away from 0 and 1 so a certain
    score stays finite."""
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


def fit_platt(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling p = sigmoid(a*raw + b) with Platt's smoothed targets.

    The smoothed targets ((N+ + 1)/(N+ + 2), 1/(N- + 2)) keep a perfectly separated validation
    split from driving the slope to infinity (probabilities of exactly 0 and 1).
    """
    from scipy.optimize import minimize

    s = np.asarray(raw, dtype=np.float64)
    y = np.asarray(labels)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    scale = float(np.std(s)) or 1.0  # optimise in standardized units for a well-conditioned problem

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] * s / scale + w[1]
        # log(1 + e^z) - t z, stable
        val = np.sum(np.logaddexp(0.0, z) - t * z)
        g = sigmoid(z) - t
        return float(val), np.array([np.sum(g * s / scale), np.sum(g)])

    res = minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(res.x[0] / scale), float(res.x[1])


def fit_isotonic(raw: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression of labels on raw scores, as its (X, y) threshold arrays."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(np.asarray(raw, dtype=np.float64), np.asarray(labels, dtype=np.float64))
    return iso.X_thresholds_.astype(np.float64), iso.y_thresholds_.astype(np.float64)


def choose_threshold(
    scores: np.ndarray, labels: np.ndarray, target: str, value: float
) -> tuple[float, dict]:
    """Pick the threshold on calibrated validation scores (flagged = score < threshold).

    - `recall`: the lowest threshold that flags at least `value` of misaligned answers (lowest, so
      as few aligned answers as possible are flagged along with them);
    - `fpr`: the highest threshold that flags at most `value` of aligned answers (highest, so as
      many misaligned answers as possible are caught);
    - `fixed`: `value` itself.

    Between two neighbouring validation scores the threshold sits at their midpoint, the largest
    margin that keeps the same decisions on validation.
    """
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    mis, ali = np.sort(p[y == 0]), np.sort(p[y == 1])
    distinct = np.unique(p)
    if target == "fixed":
        t = float(value)
    elif target == "recall":
        if not len(mis):
            raise ValueError("threshold target 'recall' needs misaligned validation answers")
        k = math.ceil(value * len(mis) - 1e-9)  # misaligned answers that must be flagged
        if k <= 0:
            t = 0.0
        else:
            s = mis[k - 1]
            above = distinct[distinct > s]
            t = (
                float((s + above[0]) / 2)
                if above.size
                else float(min(1.0, np.nextafter(s, np.inf)))
            )
    elif target == "fpr":
        if not len(ali):
            raise ValueError("threshold target 'fpr' needs aligned validation answers")
        j = math.floor(value * len(ali) + 1e-9)  # aligned answers that may be flagged
        if j >= len(ali):
            t = 1.0
        else:
            s = ali[j]  # must stay unflagged
            below = distinct[distinct < s]
            t = float((s + below[-1]) / 2) if below.size else float(s)
    else:
        raise ValueError(f"unknown threshold target {target!r}; expected recall, fpr or fixed")
    flagged = p < t
    recall = float(flagged[y == 0].mean()) if len(mis) else None
    fpr = float(flagged[y == 1].mean()) if len(ali) else None
    met = {
        "recall": recall is not None and recall >= value - 1e-12,
        "fpr": fpr is not None and fpr <= value + 1e-12,
        "fixed": True,
    }[target]
    goal = {
        "recall": f"the lowest threshold that flags >= {value:.1%} of misaligned answers",
        "fpr": f"the highest threshold that flags <= {value:.1%} of aligned answers",
        "fixed": f"a fixed threshold of {value}",
    }[target]
    why = f"{goal}; on {len(p)} calibration answers it flags "
    why += f"{recall:.1%} of misaligned" if recall is not None else "no misaligned (none present)"
    why += f" and {fpr:.1%} of aligned" if fpr is not None else ""
    if not met:
        why += " (target NOT met: the calibration scores cannot reach it)"
    info = {
        "threshold": t,
        "target": target,
        "target_value": float(value),
        "achieved_recall": recall,
        "achieved_fpr": fpr,
        "met": bool(met),
        "n_aligned": len(ali),
        "n_misaligned": len(mis),
        "why": why,
    }
    return t, info
