"""Layer-probe statistics: how well one layer's features separate "target right" from "target wrong".

All functions take plain numpy arrays: features Z of shape (n, k) (already reduced with
`reduce_features`) and binary labels y of shape (n,) with values 0/1 (no missing values: the caller
drops the rows whose label is unknown).
"""

import math

import numpy as np
import scipy.linalg
import scipy.stats
import sklearn
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler


def reduce_features(X: np.ndarray, k: int) -> np.ndarray:
    """Standardise the columns of X, then project on its first k principal components.

    Fit on X itself: pass training rows only. k is capped at min(n - 1, d). Returns float64 (n, k).
    The randomized PCA solver is seeded, so the result is deterministic.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"reduce_features needs a 2-D array with at least 2 rows, got shape {X.shape}")
    n_components = max(1, min(k, X.shape[0] - 1, X.shape[1]))
    standardised = StandardScaler().fit_transform(X)
    with np.errstate(invalid="ignore", divide="ignore"):  # constant features: no variance to explain
        return PCA(n_components=n_components, random_state=0).fit_transform(standardised)


def _binary_labels(y: np.ndarray, n_rows: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n_rows,):
        raise ValueError(f"labels must have shape ({n_rows},), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (drop the rows with a missing label first)")
    return y.astype(np.int64)


def fisher_separability(Z: np.ndarray, y: np.ndarray, shrinkage: float = 1e-3) -> float:
    """Fisher separability J = (mu1 - mu0)^T (S_W + eps I)^-1 (mu1 - mu0).

    mu_c are the class means, S_W the pooled within-class covariance (scatter of both classes
    around their own means, divided by n - 2), eps = shrinkage * trace(S_W) / k. Solved with a
    Cholesky factorisation, never an explicit inverse. Both classes need at least one row. Features
    that do not vary within the classes (S_W = 0, e.g. the embedding of a template's fixed last token)
    give 0 when the class means agree too, and infinity when they differ.
    """
    Z = np.asarray(Z, dtype=np.float64)
    y = _binary_labels(y, Z.shape[0])
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0 or Z.shape[0] < 3:
        raise ValueError(f"fisher_separability needs both classes and n >= 3, got class counts {counts.tolist()}")
    class_means = np.stack([Z[y == c].mean(axis=0) for c in (0, 1)])
    within = Z - class_means[y]
    pooled_cov = within.T @ within / (Z.shape[0] - 2)
    k = Z.shape[1]
    eps = shrinkage * np.trace(pooled_cov) / k
    diff = class_means[1] - class_means[0]
    if eps <= 0:
        return 0.0 if np.allclose(diff, 0) else math.inf
    solution = scipy.linalg.solve(pooled_cov + eps * np.eye(k), diff, assume_a="pos")
    return float(diff @ solution)


def effective_dimensionality(Z: np.ndarray) -> float:
    """Participation ratio (sum l_i)^2 / sum l_i^2 of the eigenvalues l_i of the covariance of Z.

    Uses the identity sum l_i = trace(C) and sum l_i^2 = ||C||_F^2, so no eigendecomposition is
    needed. Ranges from 1 (one direction carries all variance) to k (isotropic).
    """
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 2:
        raise ValueError(f"effective_dimensionality needs a 2-D array with at least 2 rows, got shape {Z.shape}")
    cov = np.atleast_2d(np.cov(Z, rowvar=False))
    frobenius_sq = float(np.sum(cov * cov))
    if frobenius_sq == 0.0:
        return 0.0
    return float(np.trace(cov) ** 2 / frobenius_sq)


def probe_auc(Z: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC-AUC of a logistic-regression probe: the MEAN of the per-fold AUCs.

    The columns of Z are standardised once over all rows (unsupervised, like the PCA before it;
    only the labels are held out). Stratified `folds`-fold split shuffled with `seed`; in each fold
    an L2 logistic regression (C = 1, lbfgs) is fit on the training part and scored by ROC-AUC on
    the held-out part. Each class needs at least `folds` rows.
    """
    Z = np.asarray(Z, dtype=np.float64)
    y = _binary_labels(y, Z.shape[0])
    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        raise ValueError(f"probe_auc needs at least {folds} rows per class, got class counts {counts.tolist()}")
    if not np.isfinite(Z).all():
        raise ValueError("probe_auc got non-finite features")
    standardised = StandardScaler().fit_transform(Z)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_aucs = []
    # Inputs are checked above; skipping sklearn's per-call validation cuts the cost of a fit.
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for train_idx, test_idx in splitter.split(standardised, y):
            probe = LogisticRegression(max_iter=1000).fit(standardised[train_idx], y[train_idx])
            fold_aucs.append(rank_auc(y[test_idx], probe.decision_function(standardised[test_idx])))
    return float(np.mean(fold_aucs))


def rank_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney U statistic over (average) ranks: equal to sklearn's roc_auc_score,
    without its per-call input checks that cost 20x the computation."""
    ranks = scipy.stats.rankdata(scores)
    positives = int(y.sum())
    negatives = y.size - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))
