"""Baseline routers to compare the prefill router against (METHOD.md, "Baselines").

Probability baselines give, like the router, an (n, K) matrix of estimated correctness per target,
so the same policies, sweeps and metrics apply to them:
- ``KnnRouter``: semantic k-nearest-neighbours on sentence embeddings, k tuned on validation;
- ``TaskLabelRouter``: each target's training accuracy on the query's task (it needs the task label
  at inference, so it is a reference, not a product).
Choice baselines give one target index per query directly: ``random_choice``, ``cheapest_choice``
and ``best_single_choice``; the oracle is ``metrics.oracle_choice``.

Labels follow ray_router.evaluation.metrics: (n, K) floats in [0, 1], NaN = missing (never counted as 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from ray_router.evaluation.metrics import best_single, target_accuracy

DEFAULT_K_GRID = (1, 2, 5, 10, 20, 50, 100, 200, 400)
# Probabilities are clipped to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS] inside the validation log-loss.
LOG_LOSS_EPS = 1e-6


def _training_accuracy(labels: np.ndarray) -> np.ndarray:
    """(K,) metrics.target_accuracy; ValueError when a target has no known label (nothing can be
    estimated for it)."""
    accuracy = target_accuracy(labels)
    if np.isnan(accuracy).any():
        raise ValueError(f"target(s) {np.flatnonzero(np.isnan(accuracy)).tolist()} have no known label")
    return accuracy


def mean_log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    """Binary cross-entropy per target over its known labels, then averaged over the targets that
    have any (each target counts once, whatever its number of labels)."""
    p = np.clip(np.asarray(proba, dtype=float), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    y = np.asarray(labels, dtype=float)
    known = ~np.isnan(y)
    cell_loss = -(np.where(known, y, 0) * np.log(p) + np.where(known, 1 - y, 0) * np.log1p(-p))
    per_target = cell_loss.sum(axis=0)[known.any(axis=0)] / known.sum(axis=0)[known.any(axis=0)]
    if per_target.size == 0:
        raise ValueError("no known label to compute a log-loss on")
    return float(per_target.mean())


class KnnRouter:
    """Semantic kNN router: a target's estimated correctness on a query is its accuracy among the k
    nearest training prompts by cosine similarity of sentence embeddings.

    Per target, only neighbours with a known label count. The accuracy is smoothed towards the
    target's global training accuracy ``prior`` with ``prior_strength`` pseudo-labels:
    p = (sum of neighbour labels + prior_strength * prior) / (known neighbours + prior_strength),
    which keeps p off 0 and 1 and gives the prior when no neighbour has a label.

    k is ``k`` when given, else chosen on validation data from ``k_grid`` (values above the number of
    training prompts are capped at it) by the lowest mean per-target log-loss (``mean_log_loss``): a
    proper score of the probabilities, which the policies compare across targets (ROC-AUC only ranks
    queries within one target). Ties go to the smaller k. Neighbours always come from the training
    prompts passed to ``fit``.

    Fitted attributes: ``embeddings_`` (unit rows), ``labels_``, ``k_``, ``prior_`` (K,), ``validation_log_loss_``
    {k: loss} (empty when k is given).
    """

    def __init__(
        self,
        k: int | None = None,
        k_grid: Sequence[int] = DEFAULT_K_GRID,
        prior_strength: float = 1.0,
        batch_size: int = 256,
    ) -> None:
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not k_grid or min(k_grid) < 1:
            raise ValueError(f"k_grid must hold values >= 1, got {k_grid}")
        if prior_strength < 0:
            raise ValueError(f"prior_strength must be >= 0, got {prior_strength}")
        self.k = k
        self.k_grid = tuple(int(value) for value in k_grid)
        self.prior_strength = float(prior_strength)
        self.batch_size = int(batch_size)

    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        X_val: np.ndarray | None = None,
        Y_val: np.ndarray | None = None,
    ) -> KnnRouter:
        """Store the normalised training embeddings X (n, d) and labels Y (n, K); choose k on (X_val, Y_val)
        unless ``k`` was given (then validation data is not needed)."""
        self.embeddings_ = _unit_rows(X)
        self.labels_ = np.asarray(Y, dtype=float)
        if self.labels_.ndim != 2 or self.labels_.shape[0] != self.embeddings_.shape[0]:
            raise ValueError(f"Y must be ({self.embeddings_.shape[0]}, K), got {self.labels_.shape}")
        self.prior_ = _training_accuracy(self.labels_)
        n_train = self.embeddings_.shape[0]
        self.validation_log_loss_: dict[int, float] = {}
        if self.k is not None:
            self.k_ = min(self.k, n_train)
            return self
        if X_val is None or Y_val is None:
            raise ValueError("KnnRouter without a fixed k needs X_val and Y_val to choose k")
        grid = sorted({min(value, n_train) for value in self.k_grid})
        proba_by_k = self._neighbour_proba(X_val, grid)
        self.validation_log_loss_ = {k: mean_log_loss(proba_by_k[k], Y_val) for k in grid}
        self.k_ = min(grid, key=lambda k: (self.validation_log_loss_[k], k))
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, K) smoothed accuracy of each target among the ``k_`` nearest training prompts."""
        return self._neighbour_proba(X, [self.k_])[self.k_]

    def _neighbour_proba(self, emb: np.ndarray, ks: list[int]) -> dict[int, np.ndarray]:
        """{k: (n, K) proba} for every k in ``ks``, from one nearest-neighbour search in batches."""
        queries = _unit_rows(emb)
        if queries.shape[1] != self.embeddings_.shape[1]:
            raise ValueError(f"embeddings have {queries.shape[1]} dimensions, the training ones {self.embeddings_.shape[1]}")
        n, n_train = queries.shape[0], self.embeddings_.shape[0]
        k_max = max(ks)
        known = ~np.isnan(self.labels_)
        label_sum = np.where(known, self.labels_, 0.0)
        out = {k: np.empty((n, self.labels_.shape[1])) for k in ks}
        starts = range(0, n, self.batch_size)
        for start in tqdm(starts, desc="kNN", unit="batch", disable=None, leave=False):
            similarity = queries[start : start + self.batch_size] @ self.embeddings_.T
            nearest = np.argpartition(-similarity, k_max - 1, axis=1)[:, :k_max] if k_max < n_train else (
                np.broadcast_to(np.arange(n_train), similarity.shape)
            )
            nearest_similarity = np.take_along_axis(similarity, nearest, axis=1)
            by_similarity = np.lexsort((nearest, -nearest_similarity), axis=1)  # ties: lower index
            nearest = np.take_along_axis(nearest, by_similarity, axis=1)
            sums = np.cumsum(label_sum[nearest], axis=1)  # (batch, k_max, K)
            counts = np.cumsum(known[nearest], axis=1)
            for k in ks:
                numerator = sums[:, k - 1] + self.prior_strength * self.prior_
                denominator = counts[:, k - 1] + self.prior_strength
                out[k][start : start + self.batch_size] = np.divide(
                    numerator, denominator, out=np.broadcast_to(self.prior_, numerator.shape).copy(),
                    where=denominator > 0,
                )
        return out


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
        self.global_accuracy_ = _training_accuracy(labels)
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


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), float32 for fast dot products."""
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings must be finite")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.finfo(np.float32).tiny)
