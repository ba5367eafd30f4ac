"""The SharedTrunkNet router (METHOD.md) as a ProbaRouter: per-target feature blocks -> one ensemble MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import pydantic
import torch

from ray_router.errors import UserError, validation_message
from ray_router.features.schema import Features
from ray_router.model.preprocessing import Block, BlockPreprocessor, block_keys, target_blocks
from ray_router.model.training import (
    EnsembleResult,
    TrainRunConfig,
    TrunkConfig,
    build_members,
    build_model,
    fit_ensemble,
)
from ray_router.model.trunk_net import SharedTrunkNet, ensemble_proba


class TrunkHead(pydantic.BaseModel):
    """How a bundle describes a fitted SharedTrunkRouter (its arrays are in the bundle's tensors)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    kind: Literal["trunk"] = "trunk"
    blocks: list[tuple[str, int]] = pydantic.Field(description="per target: (block spec, k)")
    inputs: list[tuple[str, int]] = pydantic.Field(description="the blocks the network reads, in order")
    config: TrunkConfig
    n_members: int = pydantic.Field(ge=1)


class SharedTrunkRouter:
    """Predicts every target's correctness from feature blocks with a SharedTrunkNet ensemble.

    X is a features mapping {key: (n, d)}. Target k has the block `blocks[k]` (one spec for all targets
    when `blocks` is a string): the features it names (keys joined by "+"), standardised and reduced to
    `pca_k` dimensions by PCA (capped at n - 1 and the block's width). The network reads the targets'
    blocks concatenated in target order, or with `unique_inputs` each distinct block once (targets that
    share a block then share its input columns). `config` is the ensemble recipe; `fit` trains on Ray
    Train when `use_ray` (where and how: `run`), else in this process.

    Learned: `blocks_` [(spec, k)] per target, `inputs_` (the blocks the network reads, in order),
    `preprocessor_`, `members_` (the kept SharedTrunkNets, eval mode) and `ensemble_` (validation losses,
    kept seeds, curves; None for a router loaded from a bundle).
    """

    kind: ClassVar[str] = "trunk"

    def __init__(
        self,
        blocks: str | Sequence[str],
        pca_k: int = 100,
        config: TrunkConfig | None = None,
        run: TrainRunConfig | None = None,
        use_ray: bool = False,
        unique_inputs: bool = False,
    ) -> None:
        self.blocks = blocks
        self.pca_k = pca_k
        self.config = config or TrunkConfig()
        self.run = run
        self.use_ray = use_ray
        self.unique_inputs = unique_inputs

    def fit(self, X: Features, Y: np.ndarray) -> SharedTrunkRouter:
        """Fit the blocks' scalers and PCAs and train the ensemble on (X, Y); Y is (n, K) with NaN = unknown."""
        Y, blocks = target_blocks(self.blocks, self.pca_k, X, Y)
        inputs = list(dict.fromkeys(blocks)) if self.unique_inputs else blocks
        preprocessor = BlockPreprocessor(inputs).fit(X)
        ensemble = fit_ensemble(preprocessor.transform(X), Y, self.config, self.run, use_ray=self.use_ray)
        members = build_members(ensemble.members, ensemble.d_in, ensemble.n_targets, self.config)
        self._set_fitted(blocks, preprocessor, members, ensemble)
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        """(n, K) mean sigmoid of the kept ensemble members."""
        if not hasattr(self, "members_"):
            raise UserError("SharedTrunkRouter is not fitted: call fit first (or load a router bundle)")
        return ensemble_proba(self.members_, self.preprocessor_.transform(X))

    @property
    def required_keys(self) -> list[str]:
        """The features the fitted router reads, each once."""
        return list(dict.fromkeys(key for spec, _ in self.blocks_ for key in block_keys(spec)))

    def to_bundle(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The fitted router as a JSON-able description (TrunkHead) and numpy tensors: the preprocessor's
        (prefixed "pre/") and each kept member's weights ("member<i>/<parameter>")."""
        description = TrunkHead(blocks=self.blocks_, inputs=self.inputs_, config=self.config,
                                n_members=len(self.members_))
        tensors = {f"pre/{name}": array for name, array in self.preprocessor_.to_tensors().items()}
        tensors |= {f"member{i}/{name}": value.detach().cpu().numpy()
                    for i, member in enumerate(self.members_) for name, value in member.state_dict().items()}
        return description.model_dump(mode="json"), tensors

    @classmethod
    def from_bundle(cls, description: dict, tensors: dict[str, np.ndarray]) -> SharedTrunkRouter:
        """The fitted router `to_bundle` described; UserError naming what does not match."""
        try:
            head = TrunkHead.model_validate(description)
        except pydantic.ValidationError as err:
            raise UserError(f"invalid trunk head: {validation_message(err)}") from None
        try:
            preprocessor = BlockPreprocessor.from_tensors(
                head.inputs, {name[4:]: array for name, array in tensors.items() if name.startswith("pre/")})
        except (KeyError, ValueError, UserError) as err:
            raise UserError(f"the preprocessing tensors do not match the trunk head ({err})") from None
        members = [_member(head, preprocessor.output_dim, tensors, i) for i in range(head.n_members)]
        router = cls([spec for spec, _ in head.blocks], config=head.config, unique_inputs=head.inputs != head.blocks)
        router._set_fitted([tuple(b) for b in head.blocks], preprocessor, members, None)
        return router

    def _set_fitted(self, blocks: list[Block], preprocessor: BlockPreprocessor, members: list[SharedTrunkNet],
                    ensemble: EnsembleResult | None) -> None:
        self.blocks_, self.inputs_ = blocks, preprocessor.blocks
        self.preprocessor_, self.members_, self.ensemble_ = preprocessor, members, ensemble


def _member(head: TrunkHead, d_in: int, tensors: dict[str, np.ndarray], i: int) -> SharedTrunkNet:
    """Ensemble member `i`, rebuilt from its tensors."""
    net = build_model(d_in, len(head.blocks), head.config)
    prefix = f"member{i}/"
    state = {name[len(prefix):]: torch.from_numpy(array) for name, array in tensors.items() if name.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"member {i} does not match the trunk head ({str(err).splitlines()[0]})") from None
    return net.eval()
