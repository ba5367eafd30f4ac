"""Input blocks for the routers' heads: selected features -> StandardScaler -> PCA(k).

A block reads one feature, or several concatenated (a multi-layer or multi-encoder block): its spec is
the features' keys joined by "+", e.g. "smollm2-135m/L8_mean+smollm2-135m/L16_mean".
"""

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler

from ray_router.errors import UserError

Block = tuple[str, int]  # (block spec: feature keys joined by "+", number of PCA components k)
BLOCK_JOIN = "+"


def block_spec(keys) -> str:
    """The spec of a block reading `keys` (concatenated in that order)."""
    return BLOCK_JOIN.join(keys)


def block_keys(spec: str) -> list[str]:
    """The feature keys a block spec reads."""
    return spec.split(BLOCK_JOIN)


def target_blocks(blocks, pca_k: int, features: dict[str, np.ndarray], labels) -> tuple[np.ndarray, list[Block]]:
    """The labels as a float (n, K) array and one block per target, for a head about to be fitted.

    `blocks` is one spec for every target or a sequence of one spec per target; each block's k is `pca_k`
    capped at n - 1 and the block's width. UserError on labels that are not (n, K), a wrong number of
    specs, or a feature the specs read that `features` lacks."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2:
        raise UserError(f"labels must be (n, K), got shape {labels.shape}")
    specs = [blocks] * labels.shape[1] if isinstance(blocks, str) else list(blocks)
    if len(specs) != labels.shape[1]:
        raise UserError(f"{len(specs)} feature blocks for {labels.shape[1]} targets")
    missing = sorted({key for spec in specs for key in block_keys(spec)} - set(features))
    if missing:
        raise UserError(f"features {missing[:3]} are missing (have: {sorted(features)[:6]}...)")
    width = {spec: sum(features[key].shape[1] for key in block_keys(spec)) for spec in set(specs)}
    return labels, [(spec, min(pca_k, len(labels) - 1, width[spec])) for spec in specs]


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
    """Builds a head's input: the given blocks, concatenated in their order.

    A block is its features' matrix (several concatenated for a multi-feature spec), standardised
    (StandardScaler) and reduced to k dimensions (PCA), both fitted by `fit` on the rows it is given
    (pass training rows only). Blocks given twice (targets that select the same spec and k) share one fit.
    `to_tensors`/`from_tensors` store the fitted numbers as plain arrays (for safetensors); the transform
    after a round-trip is bit-identical, because both sides run the same numpy code on the same arrays.
    """

    def __init__(self, blocks: list[Block]) -> None:
        if not blocks:
            raise UserError("the preprocessor needs at least one (block spec, k) block")
        for column, k in blocks:
            if int(k) < 1:
                raise UserError(f"block {column!r}: k must be >= 1, got {k}")
        self.blocks: list[Block] = [(str(column), int(k)) for column, k in blocks]
        self._params: dict[Block, _BlockParams] = {}

    @property
    def unique_blocks(self) -> list[Block]:
        """The distinct (spec, k) pairs in order of first use: each is fitted once."""
        return list(dict.fromkeys(self.blocks))

    @property
    def output_dim(self) -> int:
        """Width of the transformed matrix: the sum of the blocks' k."""
        return sum(k for _, k in self.blocks)

    def fit(self, features: dict[str, np.ndarray]) -> "BlockPreprocessor":
        """Fit every distinct block's scaler and PCA on `features` (training rows only)."""
        n_rows = _check_rows(features, self.unique_blocks)
        params = {}
        for column, k in self.unique_blocks:
            x = _block_matrix(features, column).astype(np.float64)
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
        projected = self.transform_blocks(features)
        return np.concatenate([projected[b] for b in self.blocks], axis=1).astype(np.float32)

    def transform_blocks(self, features: dict[str, np.ndarray]) -> dict[Block, np.ndarray]:
        """Each distinct block's reduced matrix, {(spec, k): (n, k) float64}."""
        if not self._params:
            raise NotFittedError("BlockPreprocessor is not fitted: call fit or from_tensors first")
        _check_rows(features, self.unique_blocks)
        projected = {}
        for block in self.unique_blocks:
            x = _block_matrix(features, block[0])
            expected = self._params[block].scaler_mean.shape[0]
            if x.shape[1] != expected:
                raise UserError(
                    f"block {block[0]!r} has {x.shape[1]} dims, the preprocessor was fitted on {expected}"
                )
            projected[block] = self._params[block].project(x)
        return projected

    def to_tensors(self) -> dict[str, np.ndarray]:
        """Fitted numbers per distinct block, keyed "<spec>.k<k>.<name>" (float64 arrays)."""
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


def _block_matrix(features: dict[str, np.ndarray], spec: str) -> np.ndarray:
    """The features a block reads, side by side."""
    keys = block_keys(spec)
    return features[keys[0]] if len(keys) == 1 else np.concatenate([features[key] for key in keys], axis=1)


def _check_rows(features: dict[str, np.ndarray], blocks: list[Block]) -> int:
    """Every needed feature is present, 2-D, and all have the same number of rows; returns it."""
    rows = {}
    for spec, _ in blocks:
        for key in block_keys(spec):
            if key not in features:
                raise UserError(f"feature {key!r} is missing (have: {sorted(features)})")
            if features[key].ndim != 2:
                raise UserError(f"feature {key!r} must be 2-D, got shape {features[key].shape}")
            rows[key] = features[key].shape[0]
    if len(set(rows.values())) > 1:
        raise UserError(f"features have different row counts: {rows}")
    return next(iter(rows.values()))
