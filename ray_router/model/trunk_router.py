"""The SharedTrunkNet router (METHOD.md) as a ProbaRouter: per-target feature blocks -> one ensemble MLP."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ray_router.errors import UserError
from ray_router.features.schema import Features
from ray_router.model.preprocessing import Block, BlockPreprocessor
from ray_router.model.training import EnsembleResult, TrainRunConfig, TrunkConfig, build_members, fit_ensemble
from ray_router.model.trunk_net import SharedTrunkNet, ensemble_proba


class SharedTrunkRouter:
    """Predicts every target's correctness from per-target feature blocks with a SharedTrunkNet ensemble.

    X is a features mapping {column: (n, d)}; target k reads `columns[k]` (one column for all targets when
    `columns` is a string), standardised and reduced to `pca_k` dimensions by PCA (capped at n - 1 and
    the column's width), the blocks concatenated (see BlockPreprocessor); `config` is the ensemble recipe.
    `fit` trains on Ray Train when `use_ray` (where and how: `run`), else in this process.

    Learned: `blocks_` [(column, k)] per target, `preprocessor_`, `members_` (the kept SharedTrunkNets,
    eval mode) and `ensemble_` (validation losses, kept seeds, curves; None for a router loaded from a bundle).
    """

    def __init__(
        self,
        columns: str | Sequence[str],
        pca_k: int = 100,
        config: TrunkConfig | None = None,
        run: TrainRunConfig | None = None,
        use_ray: bool = False,
    ) -> None:
        self.columns = columns
        self.pca_k = pca_k
        self.config = config or TrunkConfig()
        self.run = run
        self.use_ray = use_ray

    def fit(self, X: Features, Y: np.ndarray) -> SharedTrunkRouter:
        """Fit the blocks' scalers and PCAs and train the ensemble on (X, Y); Y is (n, K) with NaN = unknown."""
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim != 2:
            raise UserError(f"labels must be (n, K), got shape {Y.shape}")
        columns = [self.columns] * Y.shape[1] if isinstance(self.columns, str) else list(self.columns)
        if len(columns) != Y.shape[1]:
            raise UserError(f"{len(columns)} feature columns for {Y.shape[1]} targets")
        missing = sorted(set(columns) - set(X))
        if missing:
            raise UserError(f"feature columns {missing} are missing (have: {sorted(X)})")
        blocks = [(column, min(self.pca_k, len(Y) - 1, X[column].shape[1])) for column in columns]
        preprocessor = BlockPreprocessor(blocks).fit(X)
        ensemble = fit_ensemble(preprocessor.transform(X), Y, self.config, self.run, use_ray=self.use_ray)
        self._set_fitted(blocks, preprocessor,
                         build_members(ensemble.members, ensemble.d_in, ensemble.n_targets, self.config), ensemble)
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        """(n, K) mean sigmoid of the kept ensemble members."""
        if not hasattr(self, "members_"):
            raise UserError("SharedTrunkRouter is not fitted: call fit first (or load a router bundle)")
        return ensemble_proba(self.members_, self.preprocessor_.transform(X))

    @property
    def required_columns(self) -> list[str]:
        """The feature columns the fitted router reads, each once."""
        return list(dict.fromkeys(column for column, _ in self.blocks_))

    @classmethod
    def from_fitted(cls, blocks: list[Block], preprocessor: BlockPreprocessor, members: list[SharedTrunkNet],
                    config: TrunkConfig) -> SharedTrunkRouter:
        """A fitted router from stored state (a router bundle)."""
        router = cls([column for column, _ in blocks], config=config)
        router._set_fitted(blocks, preprocessor, members, None)
        return router

    def _set_fitted(self, blocks: list[Block], preprocessor: BlockPreprocessor, members: list[SharedTrunkNet],
                    ensemble: EnsembleResult | None) -> None:
        self.blocks_, self.preprocessor_, self.members_, self.ensemble_ = blocks, preprocessor, members, ensemble
