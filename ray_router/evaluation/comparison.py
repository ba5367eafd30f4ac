"""Paired comparison of two probability routers on the same test queries: the difference of their mean
ROC-AUC and of their AIQ, with percentile bootstrap intervals from resampling the queries (the same
resample for both routers, so that query difficulty cancels out)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ray_router.evaluation import metrics
from ray_router.model.probes import rank_auc


@dataclass(frozen=True)
class PairedDifference:
    """A statistic of one router minus another's, with its paired bootstrap 95 % interval (NaN: undefined)."""

    difference: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class RouterComparison:
    """`router` minus `other` on the test queries: mean ROC-AUC and AIQ (over the common cost range)."""

    router: str
    other: str
    mean_auc: PairedDifference
    aiq: PairedDifference


def compare_routers(
    names: tuple[str, str],
    proba: tuple[np.ndarray, np.ndarray],
    choices: tuple[np.ndarray, np.ndarray],
    labels: np.ndarray,
    cost: np.ndarray,
    cost_range: tuple[float, float] | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> RouterComparison:
    """Compare two routers: `proba` their (n, K) test probabilities, `choices` their (P, n) chosen target per
    sweep point and query, `labels` and `cost` the test split's (n, K) (NaN labels are left out)."""
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    resamples = [np.arange(n)] + [rng.integers(0, n, n) for _ in range(n_boot)]
    per_router = []
    for p, chosen in zip(proba, choices):
        rows = np.arange(n)
        correct, spent = labels[rows, chosen], cost[rows, chosen]  # (P, n)
        per_router.append([(_mean_auc(p[r], labels[r]), _aiq(correct[:, r], spent[:, r], cost_range))
                           for r in resamples])
    stats = np.array(per_router[0]) - np.array(per_router[1])  # (1 + n_boot, 2)
    return RouterComparison(names[0], names[1], _difference(stats[:, 0]), _difference(stats[:, 1]))


def _mean_auc(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean over targets of the ROC-AUC on the known labels (targets with one class left out)."""
    aucs = []
    for k in range(labels.shape[1]):
        known = ~np.isnan(labels[:, k])
        right = (labels[known, k] >= metrics.RIGHT_THRESHOLD).astype(int)
        if 0 < right.sum() < right.size:
            aucs.append(rank_auc(right, proba[known, k]))
    return float(np.mean(aucs)) if aucs else math.nan


def _aiq(correct: np.ndarray, spent: np.ndarray, cost_range: tuple[float, float] | None) -> float:
    """AIQ of the curve whose points are the rows of (P, n) chosen labels and costs."""
    with warnings.catch_warnings():  # a point with no known label has no accuracy
        warnings.simplefilter("ignore", RuntimeWarning)
        accuracy, mean_cost = np.nanmean(correct, axis=1), np.nanmean(spent, axis=1)
    finite = np.isfinite(accuracy) & np.isfinite(mean_cost)
    return metrics.aiq(mean_cost[finite], accuracy[finite], cost_range) if finite.any() else math.nan


def _difference(values: np.ndarray) -> PairedDifference:
    """The observed difference (first value) and the 2.5 / 97.5 percentiles of the resampled ones."""
    resampled = values[1:][np.isfinite(values[1:])]
    if not np.isfinite(values[0]) or not resampled.size:
        return PairedDifference(math.nan, math.nan, math.nan)
    low, high = np.quantile(resampled, [0.025, 0.975])
    return PairedDifference(float(values[0]), float(low), float(high))
