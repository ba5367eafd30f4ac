"""Expected cost of sending a query to each target, known before any target runs.

Two ways, chosen per target from what the training data offers (METHOD.md, "Cost"):
- `prices`: input price x prompt tokens + output price x the target's median output tokens on
  the training data (the paper's verbosity proxy: output length is unknown before generation);
  prompt tokens are counted with the same tokenizer the importers use for true costs;
- `mean_cost`: the target's mean per-query cost on the training data, when the data gives cost
  directly but not prices and output lengths (e.g. RouterBench).
"""

from typing import Literal

import numpy as np
from pydantic import BaseModel

from ray_router.data.importers.token_count import TOKENIZER_NAME, count_tokens
from ray_router.data.routing_dataset import RoutingDataset


class TargetCost(BaseModel):
    """Cost parameters of one target."""

    name: str
    mode: Literal["prices", "mean_cost", "unknown"]
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    median_output_tokens: float | None = None
    mean_cost_usd: float | None = None


class CostModel(BaseModel):
    """Per-target cost parameters, fitted on training rows; `expected_cost` gives (n, K) USD."""

    targets: list[TargetCost]
    prompt_tokenizer: str = TOKENIZER_NAME

    @classmethod
    def fit(cls, dataset: RoutingDataset) -> "CostModel":
        """Fit on `dataset` (pass the training rows)."""
        costs, out_tokens = dataset.costs(), dataset.output_tokens()
        fitted = []
        for k, target in enumerate(dataset.targets):
            known_out = out_tokens[:, k][~np.isnan(out_tokens[:, k])]
            known_cost = costs[:, k][~np.isnan(costs[:, k])]
            has_prices = target.input_usd_per_mtok is not None and target.output_usd_per_mtok is not None
            if has_prices and known_out.size:
                fitted.append(TargetCost(
                    name=target.name, mode="prices",
                    input_usd_per_mtok=target.input_usd_per_mtok, output_usd_per_mtok=target.output_usd_per_mtok,
                    median_output_tokens=float(np.median(known_out)),
                ))
            elif known_cost.size:
                fitted.append(TargetCost(name=target.name, mode="mean_cost", mean_cost_usd=float(known_cost.mean())))
            else:
                fitted.append(TargetCost(name=target.name, mode="unknown"))
        return cls(targets=fitted)

    def expected_cost(self, prompts: list[str]) -> np.ndarray:
        """(n, K) expected USD per query and target; targets of unknown cost get 0."""
        n = len(prompts)
        if any(t.mode == "prices" for t in self.targets):
            prompt_tokens = count_tokens(prompts).astype(np.float64)
        out = np.zeros((n, len(self.targets)))
        for k, t in enumerate(self.targets):
            if t.mode == "prices":
                out[:, k] = (t.input_usd_per_mtok * prompt_tokens + t.output_usd_per_mtok * t.median_output_tokens) / 1e6
            elif t.mode == "mean_cost":
                out[:, k] = t.mean_cost_usd
        return out
