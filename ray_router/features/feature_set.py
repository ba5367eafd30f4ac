"""The feature folders of several encoders, read as one: features by key, `<encoder name>/<column>`.

Training, evaluation and the layer scan read features through it, so that one router can combine the
features of several encoders (the paper's decoupled encoders); a single folder is the one-encoder case.
"""

from __future__ import annotations

from collections.abc import Sequence

from ray_router.errors import UserError
from ray_router.features.schema import Features, FeatureSchema, feature_key
from ray_router.features.store import FeatureStore


class FeatureSet:
    """Feature folders of encoders with distinct names; `load` gives features keyed `<name>/<column>`."""

    def __init__(self, stores: Sequence[FeatureStore]):
        if not stores:
            raise UserError("give at least one feature folder")
        names = [store.schema.name for store in stores]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise UserError(f"two feature folders hold features of the encoder {repeated[0]!r}: "
                            "give each encoder's folder once")
        self.stores = list(stores)

    @classmethod
    def open(cls, roots: str | Sequence[str]) -> FeatureSet:
        """Open finished feature folders (one path, or several: one per encoder)."""
        return cls([FeatureStore.open(str(root)) for root in ([roots] if isinstance(roots, str) else roots)])

    @property
    def schemas(self) -> list[FeatureSchema]:
        return [store.schema for store in self.stores]

    @property
    def keys(self) -> list[str]:
        """Every feature key, folder by folder."""
        return [key for schema in self.schemas for key in schema.keys]

    def load(self, query_ids, keys: Sequence[str] | None = None) -> Features:
        """Features for `query_ids` (in that order): {key: (n, d) float32}, for `keys` (default: all)."""
        wanted = list(self.keys if keys is None else keys)
        unknown = sorted(set(wanted) - set(self.keys))
        if unknown:
            raise UserError(f"no feature folder holds {unknown[:3]}; the folders hold {self.keys[:6]}...")
        features: Features = {}
        for store in self.stores:
            name = store.schema.name
            columns = [c for c in store.schema.columns if feature_key(name, c) in wanted]
            if columns:
                features |= {feature_key(name, c): m for c, m in store.load(query_ids, columns).items()}
        return {key: features[key] for key in wanted}
