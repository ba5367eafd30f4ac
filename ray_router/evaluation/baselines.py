"""Baseline routers to compare the prefill router against (METHOD.md, "Baselines").

Probability baselines give, like the router, an (n, K) matrix of estimated correctness per target,
so the same policies, sweeps and metrics apply to them:
- ``ray_router.model.knn_router.KnnRouter``: semantic k-nearest-neighbours on sentence embeddings, k tuned
  on validation;
- ``TaskLabelRouter``: each target's training accuracy on the query's task (it needs the task label
  at inference, so it is a reference, not a product).
Choice baselines give one target index per query directly: ``random_choice``, ``cheapest_choice``
and ``best_single_choice``; the oracle is ``metrics.oracle_choice``.

Labels follow ray_router.evaluation.metrics: (n, K) floats in [0, 1], NaN = missing (never counted as 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ray_router.evaluation.metrics import best_single, target_accuracy
from ray_router.model.knn_router import training_accuracy


class TaskLabelRouter:
    """Each target's training accuracy on the query's task. A task unseen in training (or None), and
    a target with no known label on a task, get the target's global training accuracy.

    Fitted attributes: ``global_accuracy_`` (K,), ``task_accuracy_`` {task: (K,)}.
    """

    def fit(self, X: Sequence[str | None], Y: np.ndarray) -> TaskLabelRouter:
        """Per-task and global accuracies of every target, over known labels."""
        labels = np.asarray(Y, dtype=float)
        tasks = np.asarray(X, dtype=object)
        if labels.ndim != 2 or tasks.shape != labels.shape[:1]:
            raise ValueError(f"need one task per labelled row: {tasks.shape} tasks, labels {labels.shape}")
        self.global_accuracy_ = training_accuracy(labels)
        self.task_accuracy_: dict[str, np.ndarray] = {}
        for task in sorted({t for t in tasks if t is not None}, key=str):
            accuracy = target_accuracy(labels[tasks == task])
            self.task_accuracy_[str(task)] = np.where(np.isnan(accuracy), self.global_accuracy_, accuracy)
        return self

    def predict_proba(self, X: Sequence[str | None]) -> np.ndarray:
        """(n, K) training accuracy of each target on each query's task."""
        return np.array(
            [self.task_accuracy_.get(str(task), self.global_accuracy_) if task is not None else self.global_accuracy_
             for task in X]
        ).reshape(len(X), self.global_accuracy_.size)


def random_choice(n: int, n_targets: int, seed: int = 0, allowed: np.ndarray | None = None) -> np.ndarray:
    """(n,) targets drawn uniformly (seeded) from all targets, or from the (K,) bool mask ``allowed``."""
    candidates = np.arange(n_targets) if allowed is None else np.flatnonzero(np.asarray(allowed, dtype=bool))
    if candidates.size == 0:
        raise ValueError("random_choice needs at least one allowed target")
    return np.random.default_rng(seed).choice(candidates, size=n)


def cheapest_choice(expected_cost: np.ndarray) -> np.ndarray:
    """(n,) the target with the lowest expected cost for each query of an (n, K) matrix (ties: first)."""
    cost = np.asarray(expected_cost, dtype=float)
    if cost.ndim != 2:
        raise ValueError(f"expected_cost must be (n, K), got {cost.shape}")
    return cost.argmin(axis=1)


def best_single_choice(n: int, labels_reference: np.ndarray, cost_reference: np.ndarray | None = None) -> np.ndarray:
    """(n,) always the best single target of the REFERENCE labels (training or validation, never
    test), with metrics.best_single's tie-breaking."""
    return np.full(n, best_single(labels_reference, cost_reference), dtype=int)
