"""The logistic head: per target, an L2 logistic regression on that target's PCA-reduced feature block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from ray_router.errors import UserError, validated
from ray_router.evaluation.metrics import target_accuracy
from ray_router.features.schema import Features
from ray_router.model.preprocessing import Block, BlockPreprocessor, block_keys, target_blocks

MAX_ITER = 1000  # lbfgs iterations: far more than the regularised fits on <= a few hundred PCA dims need
TENSOR_NAMES = ("coef", "intercept", "constant_proba")


class LogisticRouter:
    """Predicts each target's correctness with its own L2 logistic regression on its feature block.

    X is a features mapping {key: (n, d)}. Target k has the block ``blocks[k]`` (one spec for all targets
    when ``blocks`` is a string): its features (keys joined by "+") standardised and reduced to ``pca_k``
    dimensions by PCA (capped at n - 1 and the block's width), one BlockPreprocessor fitted on all fit rows
    for the distinct blocks. Each target's regression (sklearn, lbfgs, inverse regularisation ``C``) is
    fitted on the rows where its label is known, a label >= 0.5 counting as right. A target whose known
    labels are all one class predicts its training accuracy (mean known label) for every query, and a
    target without any known label 0.5.

    Learned: ``blocks_`` [(spec, k)] per target, ``preprocessor_``, ``coef_`` (K, max k) with target k's
    coefficients in its first ``blocks_[k][1]`` columns and zeros after them, ``intercept_`` (K,), and
    ``constant_proba_`` (K,): the fixed probability of a target without a regression, NaN for the others
    (their coefficients and intercept are then 0).
    """

    kind: ClassVar[str] = "logistic"

    def __init__(self, blocks: str | Sequence[str], pca_k: int = 100, C: float = 0.01) -> None:
        self.blocks = blocks
        self.pca_k = pca_k
        self.C = C

    def fit(self, X: Features, Y: np.ndarray) -> LogisticRouter:
        """Fit the blocks' scalers and PCAs on X, then every target's regression on its known labels."""
        Y, blocks = target_blocks(self.blocks, self.pca_k, X, Y)
        preprocessor = BlockPreprocessor(blocks).fit(X)
        reduced = preprocessor.transform_blocks(X)
        coef = np.zeros((len(blocks), max(k for _, k in blocks)))
        intercept = np.zeros(len(blocks))
        constant_proba = np.full(len(blocks), np.nan)
        accuracy = target_accuracy(Y)
        for target, block in enumerate(blocks):
            known = ~np.isnan(Y[:, target])
            right = Y[known, target] >= 0.5
            if right.all() or not right.any():  # one class, or no label at all
                constant_proba[target] = 0.5 if np.isnan(accuracy[target]) else accuracy[target]
                continue
            model = LogisticRegression(C=self.C, max_iter=MAX_ITER).fit(reduced[block][known], right)
            coef[target, : block[1]], intercept[target] = model.coef_[0], model.intercept_[0]
        self._set_fitted(blocks, preprocessor, coef, intercept, constant_proba)
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        """(n, K) each target's regression probability (or its constant)."""
        if not hasattr(self, "coef_"):
            raise UserError("LogisticRouter is not fitted: call fit first (or load a router bundle)")
        reduced = self.preprocessor_.transform_blocks(X)
        n_rows = len(next(iter(reduced.values())))
        proba = np.empty((n_rows, len(self.blocks_)))
        for target, block in enumerate(self.blocks_):
            if np.isnan(self.constant_proba_[target]):
                proba[:, target] = expit(reduced[block] @ self.coef_[target, : block[1]] + self.intercept_[target])
            else:
                proba[:, target] = self.constant_proba_[target]
        return proba

    @property
    def required_keys(self) -> list[str]:
        """The features the fitted router reads, each once, in order of first use."""
        return list(dict.fromkeys(key for spec, _ in self.blocks_ for key in block_keys(spec)))

    def to_bundle(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(description, tensors): parameters and ``blocks_`` as JSON; ``coef``, ``intercept``,
        ``constant_proba`` and the preprocessor's arrays ("pre/...") as tensors."""
        if not hasattr(self, "coef_"):
            raise UserError("LogisticRouter is not fitted: nothing to store")
        description = {
            "kind": self.kind,
            "blocks": self.blocks if isinstance(self.blocks, str) else list(self.blocks),
            "pca_k": int(self.pca_k),
            "C": float(self.C),
            "blocks_": [[spec, int(k)] for spec, k in self.blocks_],
        }
        tensors = {"coef": self.coef_, "intercept": self.intercept_, "constant_proba": self.constant_proba_}
        tensors |= {f"pre/{key}": array for key, array in self.preprocessor_.to_tensors().items()}
        return description, tensors

    @classmethod
    def from_bundle(cls, description: dict, tensors: dict[str, np.ndarray]) -> LogisticRouter:
        """The fitted router that ``to_bundle`` described; UserError when description or tensors do not match."""
        stored = validated(_LogisticDescription, description, "logistic head description")
        blocks = [(spec, k) for spec, k in stored.blocks_]
        preprocessor = BlockPreprocessor.from_tensors(
            blocks, {key.removeprefix("pre/"): array for key, array in tensors.items() if key.startswith("pre/")}
        )
        expected = {*TENSOR_NAMES, *(f"pre/{key}" for key in preprocessor.to_tensors())}
        if set(tensors) != expected:
            raise UserError(f"logistic head tensors: missing {sorted(expected - set(tensors))}, "
                            f"unexpected {sorted(set(tensors) - expected)}")
        arrays = {name: np.ascontiguousarray(tensors[name], dtype=np.float64) for name in TENSOR_NAMES}
        shapes = {"coef": (len(blocks), max(k for _, k in blocks)), "intercept": (len(blocks),),
                  "constant_proba": (len(blocks),)}
        wrong = {name: arrays[name].shape for name in TENSOR_NAMES if arrays[name].shape != shapes[name]}
        if wrong:
            raise UserError(f"logistic head tensors {wrong} do not fit {len(blocks)} targets (expected {shapes})")
        router = cls(stored.blocks, stored.pca_k, stored.C)
        router._set_fitted(blocks, preprocessor, arrays["coef"], arrays["intercept"], arrays["constant_proba"])
        return router

    def _set_fitted(self, blocks: list[Block], preprocessor: BlockPreprocessor, coef: np.ndarray,
                    intercept: np.ndarray, constant_proba: np.ndarray) -> None:
        self.blocks_, self.preprocessor_ = blocks, preprocessor
        self.coef_, self.intercept_, self.constant_proba_ = coef, intercept, constant_proba


class _LogisticDescription(BaseModel):
    """What LogisticRouter.to_bundle writes as JSON."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["logistic"]
    blocks: str | list[str]
    pca_k: int = Field(ge=1)
    C: float = Field(gt=0)
    blocks_: list[tuple[str, int]] = Field(min_length=1)
