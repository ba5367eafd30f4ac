"""The routing policy a router applies (`PolicyConfig`), and the one rule that lays overrides over a default.

A router bundle stores its default policy; batch routing, the Serve app and each request may override
fields of it, always through `merge_policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import pydantic

from ray_router.errors import validated

PolicyKind = Literal["argmax", "tolerance", "utility", "budget", "anchored"]
SWEEPABLE = {"tolerance": "tau", "utility": "lam", "anchored": "lam"}
PARAMETERS = ("tau", "lam", "budget", "anchor", "margin")


class PolicyConfig(pydantic.BaseModel):
    """Which policy to apply and its parameter.

    - ``argmax``: the target with the highest p.
    - ``tolerance``: the cheapest target with p >= (max p over allowed targets) - ``tau``.
    - ``utility``: the target maximising p - ``lam`` * c_norm, with c_norm the expected cost scaled
      to [0, 1] per query over the allowed targets (cheapest 0, most expensive 1).
    - ``budget``: ``utility`` with the ``lam`` fitted on validation data by ``fit_budget_lambda`` so that
      the mean cost per query stays <= ``budget``; ``lam`` must be given explicitly for this kind.
    - ``anchored``: ``utility`` with the ``anchor`` target's p raised by ``margin``: the target maximising
      p + ``margin`` * [anchor] - ``lam`` * c_norm, the anchor on ties (``lam`` defaults to 0 for this kind).
      At lam = 0 that is the anchor (the best single target on the training labels) unless another target's
      p beats the anchor's by more than ``margin`` (then the highest p); a margin of 1 or more (or none) never
      leaves it there. ``margin`` is fitted on validation data by ``fit_anchored``, so that at lam = 0
      validation accuracy is never below the anchor's; lam > 0 trades accuracy for cost as utility does, the
      anchor keeping its margin.
    ``allowed`` restricts every policy to a subset of target names (None: all targets).
    """

    model_config = pydantic.ConfigDict(extra="forbid", ser_json_inf_nan="strings")

    kind: PolicyKind = "tolerance"
    tau: float = pydantic.Field(0.20, ge=0, description="tolerance: max probability given up for cost")
    lam: float = pydantic.Field(0.20, ge=0, description="utility/budget: weight of normalised cost")
    budget: float | None = pydantic.Field(None, gt=0, description="budget: mean cost per query")
    anchor: str | None = pydantic.Field(None, description="anchored: the target to stay on")
    margin: float | None = pydantic.Field(
        None, ge=0, description="anchored: probability advantage needed to leave the anchor (None: never)")
    allowed: list[str] | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _anchored_stays_by_default(cls, data: object) -> object:
        """lam and tau default to 0 for ``anchored`` (stay on the anchor); 0.2 for the other kinds."""
        if isinstance(data, dict) and data.get("kind") == "anchored":
            data = {"tau": 0.0, "lam": 0.0, **data}
        return data

    @pydantic.field_validator("allowed")
    @classmethod
    def _allowed_is_a_nonempty_set(cls, allowed: list[str] | None) -> list[str] | None:
        if allowed is None:
            return None
        if not allowed:
            raise ValueError("allowed must name at least one target (or be omitted for all targets)")
        duplicates = sorted({name for name in allowed if allowed.count(name) > 1})
        if duplicates:
            raise ValueError(f"allowed names a target twice: {', '.join(duplicates)}")
        return allowed

    @pydantic.model_validator(mode="after")
    def _budget_is_complete(self) -> PolicyConfig:
        if self.kind == "budget":
            if self.budget is None:
                raise ValueError("kind 'budget' needs budget (mean cost per query, > 0)")
            if "lam" not in self.model_fields_set:
                raise ValueError(
                    "kind 'budget' needs lam fitted on validation data (fit_budget_lambda(...).lam)"
                )
        if self.kind == "anchored" and self.anchor is None:
            raise ValueError("kind 'anchored' needs anchor (and margin) fitted on validation data (fit_anchored)")
        if self.kind == "anchored" and self.tau > 0:
            raise ValueError("kind 'anchored' trades accuracy for cost with lam (the weight of normalised cost), "
                             "not tau")
        return self

    @classmethod
    def from_user(cls, **values: object) -> PolicyConfig:
        """Build a config from user input; invalid values raise UserError naming the field."""
        return validated(cls, values, "routing policy")


def merge_policy(base: PolicyConfig, overrides: PolicyConfig | Mapping[str, object] | None) -> PolicyConfig:
    """The policy to apply: `overrides` itself when it is a PolicyConfig, `base` when it is None, else its
    fields laid over `base` (UserError naming a bad field).

    A parameter of `base` (tau, lam, budget) is kept only while the kind stays the same; `allowed` is kept
    unless overridden. A budget policy's lam was fitted for its budget: a new budget needs its own lam.
    """
    if overrides is None:
        return base
    if isinstance(overrides, PolicyConfig):
        return overrides
    values = dict(overrides)
    inherited = base.model_dump()
    if values.get("kind", base.kind) != base.kind:
        for name in PARAMETERS:
            inherited.pop(name)
    elif base.kind == "budget" and "budget" in values and "lam" not in values:
        inherited.pop("lam")
    return PolicyConfig.from_user(**inherited | values)
