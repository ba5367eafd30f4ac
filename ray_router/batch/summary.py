"""What a batch-routing run decided, in a few numbers: the share of queries per target and the expected
cost against always calling the most expensive target (read from the decision shards, memory flat)."""

from dataclasses import dataclass

import numpy as np

from ray_router.data import storage
from ray_router.sharded_job import ShardFolder

COST_PREFIX = "expected_cost_usd:"


@dataclass
class RoutingSummary:
    """Rows routed, share of rows per target, and expected cost against always the most expensive target."""

    rows: int
    share: dict[str, float]
    expected_cost_usd: float
    most_expensive_target: str
    most_expensive_cost_usd: float
    cost_savings: float


def summarize(shards: ShardFolder, targets: list[str]) -> RoutingSummary:
    """Summary of a decision folder, read shard by shard (memory flat)."""
    counts = dict.fromkeys(targets, 0)
    routed_cost = 0.0
    cost_per_target = np.zeros(len(targets))
    rows = 0
    cost_columns = [COST_PREFIX + t for t in targets]
    for shard in shards.shard_files():
        table = storage.read_parquet(shard, columns=["target", *cost_columns])
        chosen = table.column("target").to_pylist()
        costs = np.column_stack([table.column(c).to_numpy() for c in cost_columns])
        index = np.array([targets.index(t) for t in chosen], dtype=int)
        routed_cost += float(costs[np.arange(len(chosen)), index].sum())
        cost_per_target += costs.sum(axis=0)
        for t in chosen:
            counts[t] += 1
        rows += len(chosen)
    priciest = int(np.argmax(cost_per_target))
    most_expensive = float(cost_per_target[priciest])
    return RoutingSummary(
        rows=rows,
        share={t: (c / rows if rows else 0.0) for t, c in counts.items()},
        expected_cost_usd=routed_cost,
        most_expensive_target=targets[priciest],
        most_expensive_cost_usd=most_expensive,
        cost_savings=1.0 - routed_cost / most_expensive if most_expensive > 0 else 0.0,
    )


def format_summary(summary: RoutingSummary) -> str:
    """The summary as a few lines of text for the terminal."""
    lines = [f"{summary.rows} queries routed"]
    width = max(len(t) for t in summary.share)
    for target, share in sorted(summary.share.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {target:<{width}}  {share:7.2%}")
    lines.append(
        f"expected cost ${summary.expected_cost_usd:.4f} vs ${summary.most_expensive_cost_usd:.4f} always "
        f"{summary.most_expensive_target} (savings {summary.cost_savings:.1%})"
    )
    return "\n".join(lines)
