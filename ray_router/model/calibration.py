"""Per-target temperature scaling of predicted probabilities: p -> sigmoid(logit(p) / T).

A temperature above 1 softens over-confident probabilities towards 0.5, one below 1 sharpens
under-confident ones; the ranking of queries within a target never changes. Fit the temperatures on
rows the router was not trained on (validation), then apply them to any predictions of that router.
"""

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

PROBA_CLIP = 1e-6  # probabilities are clipped to [PROBA_CLIP, 1 - PROBA_CLIP] before the logit
TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperatures(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K,) per target, the temperature in TEMPERATURE_BOUNDS minimising the log-loss of
    sigmoid(logit(p) / T) over the target's known labels (NaN = unknown), by a bounded scalar search;
    T = 1 for a target whose known labels are not both right (>= 0.5) and wrong."""
    logits = _logits(proba)
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != logits.shape:
        raise ValueError(f"labels {y.shape} do not match probabilities {logits.shape}")
    temperatures = np.ones(y.shape[1])
    for target in range(y.shape[1]):
        known = ~np.isnan(y[:, target])
        z, right = logits[known, target], y[known, target]
        if (right >= 0.5).all() or (right < 0.5).all():
            continue
        result = minimize_scalar(lambda t, z=z, right=right: _log_loss(z / t, right), bounds=TEMPERATURE_BOUNDS,
                                 method="bounded")
        temperatures[target] = result.x
    return temperatures


def calibrate(proba: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """(n, K) sigmoid(logit(p) / T) with each target's temperature; a target with T = 1 is returned unchanged."""
    logits = _logits(proba)
    t = np.asarray(temperatures, dtype=np.float64)
    if t.shape != (logits.shape[1],) or not (t > 0).all():
        raise ValueError(f"need {logits.shape[1]} positive temperatures, got {t}")
    return np.where(t == 1, np.asarray(proba, dtype=np.float64), expit(logits / t))


def _logits(proba: np.ndarray) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (n, K), got shape {p.shape}")
    return logit(np.clip(p, PROBA_CLIP, 1 - PROBA_CLIP))


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(z) against labels y, computed from the logits (stable)."""
    return float(np.mean(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)))


def cross_fitted(proba: np.ndarray, labels: np.ndarray, folds: int = 2) -> np.ndarray:
    """`proba` calibrated with temperatures fitted on the other folds of these rows (rows assigned to folds in
    turn): an honest estimate, on validation rows, of what calibration fitted on all of them would do."""
    fold = np.arange(len(proba)) % folds
    out = np.empty_like(np.asarray(proba, dtype=np.float64))
    for f in range(folds):
        out[fold == f] = calibrate(proba[fold == f], fit_temperatures(proba[fold != f], labels[fold != f]))
    return out
