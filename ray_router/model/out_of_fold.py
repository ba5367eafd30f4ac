"""Out-of-fold predictions: every row predicted by a copy of the router fitted without it.

The holdout alone is a small sample to choose policy parameters on (a lucky holdout makes a cheap target
look better than it is). The fit rows are several times as many; predicted out of fold, each by a copy of
the head that never saw it, they can join the holdout as validation rows. Folds come from a salted hash of
query_id, so training and evaluation draw the same ones for the same rows, on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from ray_router.data.routing_dataset import query_hashes
from ray_router.errors import UserError
from ray_router.model.proba_router import ProbaRouter

FOLD_SALT = "ray-router-fold:"


def fold_ids(query_ids: Sequence[str], folds: int) -> np.ndarray:
    """(n,) fold of each query in [0, folds): its hash (`query_hashes` with FOLD_SALT) modulo folds."""
    return np.array([h % folds for h in query_hashes(query_ids, FOLD_SALT)], dtype=np.int64)


def rows_sha256(query_ids: Sequence[str]) -> str:
    """sha256 of the query ids in order: which rows, in which order, a stored prediction belongs to."""
    return hashlib.sha256("\n".join(map(str, query_ids)).encode()).hexdigest()


def take_rows(X, rows: np.ndarray):
    """The rows `rows` of what a router reads: an array, or a dict of arrays {key: (n, d)}."""
    return {key: value[rows] for key, value in X.items()} if isinstance(X, dict) else X[rows]


def out_of_fold_proba(fit: Callable[[np.ndarray], ProbaRouter], X, folds: np.ndarray, n_targets: int) -> np.ndarray:
    """(n, n_targets) probabilities of the rows of X, each fold's from `fit(train_rows)`, a router fitted on the
    rows of the other folds (their indices) and predicting that fold's rows of X."""
    folds = np.asarray(folds)
    proba = np.full((len(folds), n_targets), np.nan)
    for fold in np.unique(folds):
        held = np.flatnonzero(folds == fold)
        if len(held) == len(folds):
            raise UserError("out-of-fold predictions need at least two non-empty folds")
        proba[held] = fit(np.flatnonzero(folds != fold)).predict_proba(take_rows(X, held))
    return proba
