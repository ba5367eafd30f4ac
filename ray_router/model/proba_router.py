"""The router contract: what every router in ray-router is, whatever it reads.

A router estimates, for n queries and K targets, the probability that each target answers each query
correctly. It is shaped like a scikit-learn estimator: parameters in ``__init__``, ``fit(X, Y)`` on
arrays returning the router itself, learned state in attributes ending with ``_``, and
``predict_proba(X)`` giving an (n, K) array. ``X`` is whatever the router reads, one row per query:
a features mapping {column: (n, d) array} for the SharedTrunkNet router, an (n, d) embedding matrix
for kNN, an (n,) array of task labels for the task-label router. ``Y`` is (n, K) float with 1 = right,
0 = wrong and NaN = unknown (a missing label is never a 0). A router that chooses a hyperparameter on
validation data takes it as optional extra arguments, ``fit(X, Y, X_val, Y_val)``, and gives
``rechosen(X_val, Y_val)``: a copy with that choice made again on other validation rows, nothing refitted on
the fit rows (training cross-fits the holdout with it).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ProbaRouter(Protocol):
    """fit(X, Y) -> self; predict_proba(X) -> (n, K) probabilities of a correct answer."""

    def fit(self, X: Any, Y: np.ndarray) -> ProbaRouter:
        """Learn from n queries: ``X`` as the router reads it, ``Y`` (n, K) labels with NaN for unknown."""
        ...

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, K) probability that each target answers each query correctly."""
        ...
