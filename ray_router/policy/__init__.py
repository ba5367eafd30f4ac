"""Routing policies: from per-target probabilities and expected costs to a ranked choice of targets."""
