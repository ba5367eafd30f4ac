"""The stacked head: a per-target convex blend of several routers' probabilities, weighted on validation rows."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_router.errors import UserError, validated
from ray_router.model.knn_router import LOG_LOSS_EPS
from ray_router.model.proba_router import ProbaRouter

DEFAULT_WEIGHT_GRID = tuple(np.linspace(0, 1, 21).tolist())
WEIGHT_SUM_TOLERANCE = 1e-9


class StackRouter:
    """Blends the probabilities of two or more routers that read the same X, with weights per target.

    ``fit(X, Y, X_val, Y_val)`` fits a copy of every part on (X, Y) (passing X_val and Y_val to the parts
    whose ``fit`` takes them, e.g. a kNN choosing its k), then, per target, chooses the convex weights of
    the parts' probabilities with the lowest log-loss on that target's known VALIDATION labels: an
    exhaustive search over the weight vectors whose first n_parts - 1 entries are values of ``grid`` summing
    to at most 1, the last part getting the rest (two parts: w in ``grid`` and 1 - w; the number of
    candidates grows as len(grid) ** (n_parts - 1)). Ties go to the first candidate in grid order; a target
    without any validation label gets equal weights. The weights see no data but the validation rows.

    Learned: ``parts_`` (the fitted copies, ``parts`` stay as given), ``weights_`` (K, n_parts).
    """

    kind: ClassVar[str] = "stack"

    def __init__(self, parts: Sequence[ProbaRouter], grid: Sequence[float] = DEFAULT_WEIGHT_GRID) -> None:
        self.parts = parts
        self.grid = grid

    def fit(self, X: Any, Y: np.ndarray, X_val: Any, Y_val: np.ndarray) -> StackRouter:
        """Fit every part on (X, Y) and choose each target's weights on (X_val, Y_val)."""
        if len(self.parts) < 2:
            raise UserError(f"a stack needs at least two parts, got {len(self.parts)}")
        grid = np.asarray(self.grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0 or (grid < 0).any() or (grid > 1).any():
            raise UserError(f"the weight grid must be values in [0, 1], got {self.grid}")
        self.parts_ = [_fit_part(copy.deepcopy(part), X, Y, X_val, Y_val) for part in self.parts]
        self._choose_weights(X_val, Y_val)
        return self

    def rechosen(self, X_val: Any, Y_val: np.ndarray) -> StackRouter:
        """A copy of the fitted stack with what it chose on validation chosen again on (X_val, Y_val): each
        part's own choice (a kNN's k: parts with a ``rechosen``), then the weights; nothing is fitted again on
        the fit rows."""
        stack = copy.copy(self)
        stack.parts_ = [part.rechosen(X_val, Y_val) if hasattr(part, "rechosen") else part for part in self.parts_]
        stack._choose_weights(X_val, Y_val)
        return stack

    def _choose_weights(self, X_val: Any, Y_val: np.ndarray) -> None:
        """Set ``weights_``: per target, the grid's convex weights of the fitted parts with the lowest log-loss
        on (X_val, Y_val)."""
        labels = np.asarray(Y_val, dtype=np.float64)
        val_proba = np.stack([part.predict_proba(X_val) for part in self.parts_])  # (n_parts, n_val, K)
        if labels.shape != val_proba.shape[1:]:
            raise UserError(f"validation labels {labels.shape} do not match the parts' predictions "
                            f"{val_proba.shape[1:]}")
        candidates = simplex_candidates(np.asarray(self.grid, dtype=np.float64), len(self.parts_))
        self.weights_ = np.array([_best_weights(candidates, val_proba[:, :, target], labels[:, target])
                                  for target in range(labels.shape[1])])

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, K) per target, the weighted sum of the parts' probabilities (clipped to [0, 1])."""
        if not hasattr(self, "weights_"):
            raise UserError("StackRouter is not fitted: call fit first (or load a router bundle)")
        blended = 0.0
        for part, weight in zip(self.parts_, self.weights_.T, strict=True):
            proba = part.predict_proba(X)
            if proba.ndim != 2 or proba.shape[1] != len(weight):
                raise UserError(f"a {type(part).__name__} part predicts {proba.shape}, the stack has "
                                f"{len(weight)} targets")
            blended = blended + weight * proba
        return np.clip(blended, 0.0, 1.0)

    @property
    def required_keys(self) -> list[str]:
        """The features the fitted parts read, each once, in order of first use."""
        return list(dict.fromkeys(key for part in self.parts_ for key in part.required_keys))

    def to_bundle(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(description, tensors): {"kind", "grid", "parts": [each part's description], "weights": (K, n_parts)}
        and every part's tensors, those of part i keyed "part{i}/<its key>"."""
        if not hasattr(self, "weights_"):
            raise UserError("StackRouter is not fitted: nothing to store")
        descriptions, tensors = [], {}
        for index, part in enumerate(self.parts_):
            description, part_tensors = part.to_bundle()
            descriptions.append(description)
            tensors |= {f"part{index}/{key}": array for key, array in part_tensors.items()}
        description = {"kind": self.kind, "grid": [float(w) for w in self.grid], "parts": descriptions,
                       "weights": self.weights_.tolist()}
        return description, tensors

    @classmethod
    def from_bundle(cls, description: dict, tensors: dict[str, np.ndarray]) -> StackRouter:
        """The fitted stack that ``to_bundle`` described, its parts rebuilt by ``heads.head_from_bundle``;
        UserError when the description or tensors do not match."""
        from ray_router.model.heads import head_from_bundle  # heads imports this module

        stored = validated(_StackDescription, description, "stack head description")
        prefixes = [f"part{index}/" for index in range(len(stored.parts))]
        stray = sorted(key for key in tensors if not key.startswith(tuple(prefixes)))
        if stray:
            raise UserError(f"stack head tensors {stray[:3]} belong to none of its {len(prefixes)} parts")
        parts = [
            head_from_bundle(part, {key.removeprefix(prefix): array for key, array in tensors.items()
                                    if key.startswith(prefix)})
            for prefix, part in zip(prefixes, stored.parts, strict=True)
        ]
        router = cls(parts, tuple(stored.grid))
        router.parts_, router.weights_ = parts, np.array(stored.weights, dtype=np.float64)
        return router


def simplex_candidates(grid: np.ndarray, n_parts: int) -> np.ndarray:
    """(C, n_parts) the weight vectors whose first n_parts - 1 entries are grid values summing to at most 1,
    the last entry being the rest, in grid order."""
    heads = [()]
    for _ in range(n_parts - 1):
        heads = [head + (w,) for head in heads for w in grid if sum(head) + w <= 1 + WEIGHT_SUM_TOLERANCE]
    return np.array([head + (max(1.0 - sum(head), 0.0),) for head in heads])


def _fit_part(part: ProbaRouter, X: Any, Y: np.ndarray, X_val: Any, Y_val: np.ndarray) -> ProbaRouter:
    """``part`` fitted on (X, Y), given the validation rows when its ``fit`` takes them."""
    if "X_val" in inspect.signature(part.fit).parameters:
        return part.fit(X, Y, X_val=X_val, Y_val=Y_val)
    return part.fit(X, Y)


def _best_weights(candidates: np.ndarray, proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The candidate (row of ``candidates``) whose blend of ``proba`` (n_parts, n) has the lowest log-loss
    over the known ``labels`` (n,); equal weights when no label is known."""
    known = ~np.isnan(labels)
    if not known.any():
        return np.full(candidates.shape[1], 1.0 / candidates.shape[1])
    blended = np.clip(candidates @ proba[:, known], LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)  # (C, n_known)
    y = labels[known]
    loss = -(y * np.log(blended) + (1 - y) * np.log1p(-blended)).mean(axis=1)
    return candidates[np.argmin(loss)]


class _StackDescription(BaseModel):
    """What StackRouter.to_bundle writes as JSON (the parts' descriptions are checked by their own heads)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["stack"]
    grid: list[float] = Field(min_length=1)
    parts: list[dict[str, Any]] = Field(min_length=2)
    weights: list[list[float]] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights_are_convex(self) -> _StackDescription:
        for target, row in enumerate(self.weights):
            if len(row) != len(self.parts) or min(row) < 0 or abs(sum(row) - 1) > WEIGHT_SUM_TOLERANCE:
                raise ValueError(f"weights[{target}] = {row} must be {len(self.parts)} weights >= 0 summing to 1")
        return self
