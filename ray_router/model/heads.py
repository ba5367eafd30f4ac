"""The registry of router heads: every head class by its ``kind``, and rebuilding one from its bundle entry.

A head stores itself as ``to_bundle() -> (description, tensors)``: a JSON-able description whose "kind"
names the class, and numpy tensors; ``head_from_bundle`` gives the description to that class's
``from_bundle``.
"""

import numpy as np

from ray_router.errors import UserError
from ray_router.model.knn_router import BlockKnnRouter
from ray_router.model.logistic_router import LogisticRouter
from ray_router.model.proba_router import ProbaRouter
from ray_router.model.stack_router import StackRouter
from ray_router.model.trunk_router import SharedTrunkRouter

HEADS: dict[str, type] = {
    "trunk": SharedTrunkRouter,
    "knn": BlockKnnRouter,
    "logistic": LogisticRouter,
    "stack": StackRouter,
}


def head_from_bundle(description: dict, tensors: dict[str, np.ndarray]) -> ProbaRouter:
    """The fitted head that ``description`` (with its "kind") and ``tensors`` describe."""
    kind = description.get("kind") if isinstance(description, dict) else None
    if not isinstance(kind, str) or kind not in HEADS:
        raise UserError(f"unknown router head kind {kind!r} (known: {', '.join(HEADS)})")
    return HEADS[kind].from_bundle(description, tensors)
