"""k-nearest-neighbour routers: a target's estimated correctness on a query is its accuracy among the query's
nearest training prompts.

- ``KnnRouter``: kNN on an (n, d) embedding matrix (the semantic baseline reads sentence embeddings);
- ``BlockKnnRouter``: a head on a features mapping: one feature block, standardised and reduced by PCA,
  then a ``KnnRouter`` on the reduced rows.

Labels are (n, K) floats in [0, 1], NaN = missing (never counted as 0).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from ray_router.errors import UserError, validated
from ray_router.evaluation.metrics import target_accuracy
from ray_router.features.schema import Features
from ray_router.model.preprocessing import BlockPreprocessor, block_keys, target_blocks

DEFAULT_K_GRID = (1, 2, 5, 10, 20, 50, 100, 200, 400)
# Probabilities are clipped to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS] inside the validation log-loss.
LOG_LOSS_EPS = 1e-6


def training_accuracy(labels: np.ndarray) -> np.ndarray:
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
        self.prior_ = training_accuracy(self.labels_)
        self.validation_log_loss_: dict[int, float] = {}
        if self.k is not None:
            self.k_ = min(self.k, self.embeddings_.shape[0])
            return self
        if X_val is None or Y_val is None:
            raise ValueError("KnnRouter without a fixed k needs X_val and Y_val to choose k")
        self._choose_k(X_val, Y_val)
        return self

    def rechosen(self, X_val: np.ndarray, Y_val: np.ndarray) -> KnnRouter:
        """A copy of the fitted router with k chosen again on (X_val, Y_val), the same training prompts; this
        router itself when ``k`` was given."""
        if self.k is not None:
            return self
        router = copy.copy(self)  # the training arrays are shared, never written
        router._choose_k(X_val, Y_val)
        return router

    def _choose_k(self, X_val: np.ndarray, Y_val: np.ndarray) -> None:
        """Set ``k_`` and ``validation_log_loss_`` from the grid's log-losses on (X_val, Y_val)."""
        grid = sorted({min(value, self.embeddings_.shape[0]) for value in self.k_grid})
        proba_by_k = self._neighbour_proba(X_val, grid)
        self.validation_log_loss_ = {k: mean_log_loss(proba_by_k[k], Y_val) for k in grid}
        self.k_ = min(grid, key=lambda k: (self.validation_log_loss_[k], k))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, K) smoothed accuracy of each target among the ``k_`` nearest training prompts."""
        return self._neighbour_proba(X, [self.k_])[self.k_]

    @classmethod
    def from_fitted(cls, embeddings: np.ndarray, labels: np.ndarray, k_: int, prior: np.ndarray,
                    validation_log_loss: dict[int, float], **params) -> KnnRouter:
        """A fitted router from stored state: ``embeddings_`` (unit rows, float32), ``labels_``, ``k_``,
        ``prior_`` and ``validation_log_loss_`` as ``fit`` left them; ``params`` as for ``__init__``."""
        router = cls(**params)
        router.embeddings_, router.labels_, router.k_, router.prior_ = embeddings, labels, k_, prior
        router.validation_log_loss_ = dict(validation_log_loss)
        return router

    def _neighbour_proba(self, emb: np.ndarray, ks: list[int]) -> dict[int, np.ndarray]:
        """{k: (n, K) proba} for every k in ``ks``, from one nearest-neighbour search in batches."""
        queries = _unit_rows(emb)
        if queries.shape[1] != self.embeddings_.shape[1]:
            raise ValueError(
                f"embeddings have {queries.shape[1]} dimensions, the training ones {self.embeddings_.shape[1]}"
            )
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


class BlockKnnRouter:
    """A ``KnnRouter`` on one feature block of prefill features.

    X is a features mapping {key: (n, d)}. The block ``block`` (feature keys joined by "+") is standardised
    and reduced to ``pca_k`` dimensions by PCA (capped at n - 1 and the block's width), fitted on the fit
    rows; a ``KnnRouter(k, k_grid, prior_strength)`` then runs on the reduced rows, choosing k on
    (X_val, Y_val) when ``k`` is None. Parameters are checked when ``fit`` builds the KnnRouter.

    Learned: ``block_`` (spec, k), ``preprocessor_``, ``knn_`` (the fitted KnnRouter on the reduced matrix).
    """

    kind: ClassVar[str] = "knn"

    def __init__(
        self,
        block: str,
        pca_k: int = 128,
        k: int | None = None,
        k_grid: Sequence[int] = DEFAULT_K_GRID,
        prior_strength: float = 1.0,
    ) -> None:
        self.block = block
        self.pca_k = pca_k
        self.k = k
        self.k_grid = k_grid
        self.prior_strength = prior_strength

    def fit(self, X: Features, Y: np.ndarray, X_val: Features | None = None,
            Y_val: np.ndarray | None = None) -> BlockKnnRouter:
        """Fit the block's scaler and PCA on X, then the kNN on the reduced rows (k chosen on the validation
        rows unless ``k`` is given)."""
        Y, (block, *_) = target_blocks(self.block, self.pca_k, X, Y)
        preprocessor = BlockPreprocessor([block]).fit(X)
        reduced_val = None if X_val is None else preprocessor.transform(X_val)
        knn = KnnRouter(self.k, self.k_grid, self.prior_strength).fit(preprocessor.transform(X), Y, reduced_val, Y_val)
        self.block_, self.preprocessor_, self.knn_ = block, preprocessor, knn
        return self

    def rechosen(self, X_val: Features, Y_val: np.ndarray) -> BlockKnnRouter:
        """A copy of the fitted router with k chosen again on (X_val, Y_val), the same reduced training rows."""
        router = copy.copy(self)
        router.knn_ = self.knn_.rechosen(self.preprocessor_.transform(X_val), Y_val)
        return router

    def predict_proba(self, X: Features) -> np.ndarray:
        """(n, K) smoothed accuracy of each target among the nearest training rows in the reduced block."""
        if not hasattr(self, "knn_"):
            raise UserError("BlockKnnRouter is not fitted: call fit first (or load a router bundle)")
        return self.knn_.predict_proba(self.preprocessor_.transform(X))

    @property
    def required_keys(self) -> list[str]:
        """The features the fitted router reads, each once."""
        return list(dict.fromkeys(block_keys(self.block_[0])))

    def to_bundle(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(description, tensors): parameters, k_, prior_ and the validation losses as JSON; the training
        embeddings (unit rows, float32), labels and the preprocessor's arrays ("pre/...") as tensors."""
        if not hasattr(self, "knn_"):
            raise UserError("BlockKnnRouter is not fitted: nothing to store")
        knn = self.knn_
        description = {
            "kind": self.kind,
            "block": self.block,
            "pca_k": int(self.pca_k),
            "k": None if self.k is None else int(self.k),
            "k_grid": list(knn.k_grid),
            "prior_strength": knn.prior_strength,
            "block_": [self.block_[0], int(self.block_[1])],
            "k_": int(knn.k_),
            "prior_": knn.prior_.tolist(),
            "validation_log_loss_": {str(k): float(loss) for k, loss in knn.validation_log_loss_.items()},
        }
        tensors = {"embeddings": np.ascontiguousarray(knn.embeddings_), "labels": np.ascontiguousarray(knn.labels_)}
        tensors |= {f"pre/{key}": array for key, array in self.preprocessor_.to_tensors().items()}
        return description, tensors

    @classmethod
    def from_bundle(cls, description: dict, tensors: dict[str, np.ndarray]) -> BlockKnnRouter:
        """The fitted router that ``to_bundle`` described; UserError when description or tensors do not match."""
        stored = validated(_KnnDescription, description, "knn head description")
        block = (stored.block_[0], stored.block_[1])
        preprocessor = BlockPreprocessor.from_tensors(
            [block], {key.removeprefix("pre/"): array for key, array in tensors.items() if key.startswith("pre/")}
        )
        expected = {"embeddings", "labels", *(f"pre/{key}" for key in preprocessor.to_tensors())}
        if set(tensors) != expected:
            raise UserError(f"knn head tensors: missing {sorted(expected - set(tensors))}, "
                            f"unexpected {sorted(set(tensors) - expected)}")
        embeddings = np.ascontiguousarray(tensors["embeddings"], dtype=np.float32)
        labels = np.ascontiguousarray(tensors["labels"], dtype=np.float64)
        n_targets = len(stored.prior_)
        if embeddings.ndim != 2 or embeddings.shape[1] != block[1] or labels.shape != (len(embeddings), n_targets):
            raise UserError(f"knn head tensors: embeddings {embeddings.shape} and labels {labels.shape} do not fit "
                            f"block k={block[1]} and {n_targets} targets")
        if stored.k_ > len(embeddings):
            raise UserError(f"knn head description: k_={stored.k_} exceeds the {len(embeddings)} stored rows")
        router = cls(stored.block, stored.pca_k, stored.k, tuple(stored.k_grid), stored.prior_strength)
        knn = KnnRouter.from_fitted(embeddings, labels, stored.k_, np.asarray(stored.prior_, dtype=np.float64),
                                    stored.validation_log_loss_, k=stored.k, k_grid=stored.k_grid,
                                    prior_strength=stored.prior_strength)
        router.block_, router.preprocessor_, router.knn_ = block, preprocessor, knn
        return router


class _KnnDescription(BaseModel):
    """What BlockKnnRouter.to_bundle writes as JSON."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["knn"]
    block: str
    pca_k: int = Field(ge=1)
    k: int | None = Field(ge=1)
    k_grid: list[int] = Field(min_length=1)
    prior_strength: float = Field(ge=0)
    block_: tuple[str, int]
    k_: int = Field(ge=1)
    prior_: list[float] = Field(min_length=1)
    validation_log_loss_: dict[int, float]

    @model_validator(mode="after")
    def _fitted_block_is_the_block(self) -> _KnnDescription:
        if self.block_[0] != self.block or self.block_[1] < 1:
            raise ValueError(f"block_ {list(self.block_)} must be [{self.block!r}, k >= 1]")
        return self


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), float32 for fast dot products."""
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings must be finite")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.finfo(np.float32).tiny)
