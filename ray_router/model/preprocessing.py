"""Per-target input blocks for SharedTrunkNet: selected features -> StandardScaler -> PCA(k)."""

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler

from ray_router.errors import UserError

Block = tuple[str, int]  # (feature column such as "L12_last", number of PCA components k)
_PARAM_NAMES = ("scaler_mean", "scaler_scale", "pca_mean", "pca_components")


@dataclass(frozen=True)
class _BlockParams:
    """The fitted numbers of one block, float64; `project` is the whole transform."""

    scaler_mean: np.ndarray  # (D,)
    scaler_scale: np.ndarray  # (D,)
    pca_mean: np.ndarray  # (D,)
    pca_components: np.ndarray  # (k, D)

    def project(self, x: np.ndarray) -> np.ndarray:
        standardised = (x.astype(np.float64) - self.scaler_mean) / self.scaler_scale
        return (standardised - self.pca_mean) @ self.pca_components.T


class BlockPreprocessor:
    """Builds the SharedTrunkNet input: per target one block, concatenated in target order.

    A block is the target's selected feature matrix, standardised (StandardScaler) and reduced to
    k dimensions (PCA), both fitted by `fit` on the rows it is given (pass training rows only).
    Targets that select the same (column, k) share one fitted block. `to_tensors`/`from_tensors`
    store the fitted numbers as plain arrays (for safetensors); the transform after a round-trip is
    bit-identical, because both sides run the same numpy code on the same arrays.
    """

    def __init__(self, blocks: list[Block]) -> None:
        if not blocks:
            raise UserError("the preprocessor needs at least one (feature column, k) block")
        for column, k in blocks:
            if int(k) < 1:
                raise UserError(f"block {column!r}: k must be >= 1, got {k}")
        self.blocks: list[Block] = [(str(column), int(k)) for column, k in blocks]
        self._params: dict[Block, _BlockParams] = {}

    @property
    def unique_blocks(self) -> list[Block]:
        """The distinct (column, k) pairs in order of first use: each is fitted once."""
        return list(dict.fromkeys(self.blocks))

    @property
    def output_dim(self) -> int:
        """Width of the transformed matrix: the sum of the targets' k."""
        return sum(k for _, k in self.blocks)

    def fit(self, features: dict[str, np.ndarray]) -> "BlockPreprocessor":
        """Fit every distinct block's scaler and PCA on `features` (training rows only)."""
        n_rows = _check_rows(features, self.unique_blocks)
        params = {}
        for column, k in self.unique_blocks:
            x = features[column].astype(np.float64)
            if k > min(x.shape):
                raise UserError(
                    f"block {column!r}: k={k} exceeds min(rows, dims) = {min(x.shape)} "
                    f"({n_rows} training rows of {x.shape[1]} dims)"
                )
            scaler = StandardScaler().fit(x)
            pca = PCA(n_components=k, random_state=0).fit(scaler.transform(x))
            # C-contiguous copies: safetensors writes an array's raw buffer, and PCA's components_
            # can be Fortran-ordered (they would be stored transposed).
            params[(column, k)] = _BlockParams(
                *(
                    np.ascontiguousarray(a, dtype=np.float64)
                    for a in (scaler.mean_, scaler.scale_, pca.mean_, pca.components_)
                )
            )
        self._params = params
        return self

    def transform(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The concatenated blocks, (n, sum of k) float32."""
        if not self._params:
            raise NotFittedError("BlockPreprocessor is not fitted: call fit or from_tensors first")
        _check_rows(features, self.unique_blocks)
        projected = {}
        for block in self.unique_blocks:
            column = block[0]
            expected = self._params[block].scaler_mean.shape[0]
            if features[column].shape[1] != expected:
                raise UserError(
                    f"feature column {column!r} has {features[column].shape[1]} dims, "
                    f"the preprocessor was fitted on {expected}"
                )
            projected[block] = self._params[block].project(features[column])
        return np.concatenate([projected[b] for b in self.blocks], axis=1).astype(np.float32)

    def to_tensors(self) -> dict[str, np.ndarray]:
        """Fitted numbers per distinct block, keyed "<column>.k<k>.<name>" (float64 arrays)."""
        if not self._params:
            raise NotFittedError("BlockPreprocessor is not fitted: nothing to store")
        return {
            _tensor_key(block, name): getattr(params, name)
            for block, params in self._params.items()
            for name in _PARAM_NAMES
        }

    @classmethod
    def from_tensors(cls, blocks: list[Block], tensors: dict[str, np.ndarray]) -> "BlockPreprocessor":
        """Rebuild a fitted preprocessor from `to_tensors` output; refuses missing or misshapen arrays."""
        preprocessor = cls(blocks)
        params = {}
        for block in preprocessor.unique_blocks:
            arrays = {}
            for name in _PARAM_NAMES:
                key = _tensor_key(block, name)
                if key not in tensors:
                    raise UserError(f"preprocessing tensors lack {key!r}")
                arrays[name] = np.ascontiguousarray(tensors[key], dtype=np.float64)
            dims = arrays["scaler_mean"].shape
            if (
                len(dims) != 1
                or arrays["scaler_scale"].shape != dims
                or arrays["pca_mean"].shape != dims
                or arrays["pca_components"].shape != (block[1], dims[0])
            ):
                shapes = {name: arrays[name].shape for name in _PARAM_NAMES}
                raise UserError(f"preprocessing tensors of block {block} have inconsistent shapes {shapes}")
            params[block] = _BlockParams(**arrays)
        preprocessor._params = params
        return preprocessor


def _tensor_key(block: Block, name: str) -> str:
    column, k = block
    return f"{column}.k{k}.{name}"


def _check_rows(features: dict[str, np.ndarray], blocks: list[Block]) -> int:
    """Every needed column is present, 2-D, and all have the same number of rows; returns it."""
    rows = {}
    for column, _ in blocks:
        if column not in features:
            raise UserError(f"feature column {column!r} is missing (have: {sorted(features)})")
        if features[column].ndim != 2:
            raise UserError(f"feature column {column!r} must be 2-D, got shape {features[column].shape}")
        rows[column] = features[column].shape[0]
    if len(set(rows.values())) > 1:
        raise UserError(f"feature columns have different row counts: {rows}")
    return next(iter(rows.values()))
