"""SharedTrunkNet: one multi-output MLP predicting every target's correctness, and its masked losses."""

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class SharedTrunkNet(nn.Module):
    """Linear-ReLU-Dropout blocks (the shared trunk) then one Linear head with a logit per target.

    With the defaults this is METHOD.md's network: Linear(d_in, 256) - ReLU - Dropout(0.3) -
    Linear(256, 128) - ReLU - Dropout(0.2) - Linear(128, n_targets).
    """

    def __init__(
        self,
        d_in: int,
        n_targets: int,
        hidden: tuple[int, ...] = (256, 128),
        dropout: tuple[float, ...] = (0.3, 0.2),
    ) -> None:
        super().__init__()
        if len(hidden) != len(dropout):
            raise ValueError(f"hidden {hidden} and dropout {dropout} must have the same length")
        layers: list[nn.Module] = []
        width = d_in
        for size, rate in zip(hidden, dropout):
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(rate)]
            width = size
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, n_targets)."""
        return self.head(self.trunk(x))


def masked_bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the known labels only.

    `labels` is float with NaN where a label is missing. A missing label is never treated as 0:
    its entry is excluded from both the sum and the count, so it contributes no gradient. With no
    known label at all the loss is 0 (and its gradient too).
    """
    known = ~torch.isnan(labels)
    targets = torch.where(known, labels, torch.zeros_like(labels))
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    per_entry = torch.where(known, per_entry, torch.zeros_like(per_entry))
    return per_entry.sum() / known.sum().clamp(min=1)


def masked_pairwise_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A ranking loss between the targets of each query (RankNet): for every pair where target a's label is
    above target b's, softplus(logit_b - logit_a), weighted by the label difference and averaged by the total
    weight. Only the queries on which targets disagree count, and only the differences of their logits: what
    routing decides on. A pair with a missing label is left out; with no such pair the loss is 0.
    """
    gaps = labels[:, :, None] - labels[:, None, :]  # (batch, K, K): label a - label b, NaN where one is missing
    weights = torch.where(gaps > 0, gaps, torch.zeros_like(gaps))  # NaN > 0 is False
    per_pair = F.softplus(logits[:, None, :] - logits[:, :, None])  # softplus(logit b - logit a)
    return (weights * per_pair).sum() / weights.sum().clamp(min=1e-12)


def ensemble_proba(models: Sequence[nn.Module], x: np.ndarray) -> np.ndarray:
    """The ensemble's prediction rule: mean of the models' sigmoid outputs, (n, K) float64.

    Puts the models in eval mode (no dropout). Each model's float32 probabilities are summed in
    float64, so any holder of the same weights (training result, loaded bundle) gets the same numbers.
    """
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    total = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for model in models:
            total = total + torch.sigmoid(model.eval()(inputs)).double()
    return (total / len(models)).numpy()
