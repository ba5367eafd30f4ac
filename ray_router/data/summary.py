"""What a routing dataset contains: per-target accuracy and cost, best single, oracle, agreement zones.

The label statistics come from ray_router.evaluation.metrics; `summarize` applies them per split of a
RoutingDataset into pydantic models (the `describe --json` output) and `format_summary` prints them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from ray_router.data.routing_dataset import FORMAT_VERSION, SPLITS, RoutingDataset
from ray_router.evaluation import metrics


def _number(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def best_single_with_accuracy(labels: np.ndarray) -> tuple[int, float]:
    """(index, accuracy) of `metrics.best_single` (cost ignored: first on ties); (-1, nan) when no
    label is known."""
    accuracy = metrics.target_accuracy(labels)
    if np.isnan(accuracy).all():
        return -1, float("nan")
    best = metrics.best_single(labels)
    return best, float(accuracy[best])


class AgreementZones(pydantic.BaseModel):
    """Shares of the complete rows (all labels known) per zone; `excluded` rows had a missing label."""

    rows: int
    excluded: int
    all_right: float | None
    all_wrong: float | None
    disagree: float | None


def agreement_summary(labels: np.ndarray) -> AgreementZones:
    """`metrics.agreement_zones` as the summary model (None for the shares when no row is complete)."""
    zones = metrics.agreement_zones(labels)
    shares = {zone: _number(zones[zone]) for zone in metrics.ZONES}
    return AgreementZones(rows=zones["n_rows"], excluded=zones["n_excluded"], **shares)


class TargetSummary(pydantic.BaseModel):
    name: str
    labels_known: int
    accuracy: float | None
    mean_cost_usd: float | None
    median_output_tokens: float | None


class SplitSummary(pydantic.BaseModel):
    rows: int
    targets: list[TargetSummary]
    best_single: str | None
    best_single_accuracy: float | None
    oracle_accuracy: float | None
    agreement: AgreementZones


class DatasetSummary(pydantic.BaseModel):
    rows: int
    targets: int
    format_version: int
    content_hash: str
    source: dict[str, Any]
    splits: dict[str, SplitSummary]  # "train", "test", "all"


def _nan_stat(values: np.ndarray, stat) -> np.ndarray:
    known = ~np.isnan(values).all(axis=0)
    out = np.full(values.shape[1], np.nan)
    if known.any():
        out[known] = stat(values[:, known], axis=0)
    return out


def summarize_split(dataset: RoutingDataset) -> SplitSummary:
    """The summary of all rows of `dataset`."""
    labels, costs, tokens = dataset.labels(), dataset.costs(), dataset.output_tokens()
    per_target = metrics.per_target_outcomes(labels)
    accuracy, known = per_target["accuracy"], per_target["n_scored"]
    mean_cost, median_tokens = _nan_stat(costs, np.nanmean), _nan_stat(tokens, np.nanmedian)
    best, best_accuracy = best_single_with_accuracy(labels)
    return SplitSummary(
        rows=len(dataset),
        targets=[
            TargetSummary(
                name=name,
                labels_known=int(known[j]),
                accuracy=_number(accuracy[j]),
                mean_cost_usd=_number(mean_cost[j]),
                median_output_tokens=_number(median_tokens[j]),
            )
            for j, name in enumerate(dataset.target_names)
        ],
        best_single=dataset.target_names[best] if best >= 0 else None,
        best_single_accuracy=_number(best_accuracy),
        oracle_accuracy=_number(metrics.oracle_accuracy(labels)),
        agreement=agreement_summary(labels),
    )


def summarize(dataset: RoutingDataset) -> DatasetSummary:
    """Per split (train, test, all): rows, per-target accuracy / mean cost, best single, oracle, zones."""
    splits = {split: summarize_split(dataset.select(split=split)) for split in SPLITS}
    splits["all"] = summarize_split(dataset)
    return DatasetSummary(
        rows=len(dataset),
        targets=len(dataset.targets),
        format_version=FORMAT_VERSION,
        content_hash=dataset.content_hash(),
        source=dataset.source,
        splits=splits,
    )


def _text_table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> list[str]:
    """Fixed-width lines: the `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]


def _cell(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_summary(summary: DatasetSummary, name: str = "dataset") -> str:
    """A terminal report: a header, one line per target (accuracy per split), one line per split."""
    splits = ["train", "test", "all"]
    source = summary.source
    lines = [
        f"{name}: {summary.rows} queries x {summary.targets} targets "
        f"(train {summary.splits['train'].rows}, test {summary.splits['test'].rows}), format {summary.format_version}",
        f"source: {source.get('format', '?')} {source.get('path', '')}; rows read {source.get('rows_read', '?')}, "
        f"duplicates merged {source.get('duplicates_merged', 0)}",
        f"content hash: {summary.content_hash}",
        "",
    ]
    per_target = [
        [
            target.name,
            str(target.labels_known),
            *(_cell(summary.splits[s].targets[j].accuracy, ".3f") for s in splits),
            _cell(target.mean_cost_usd, ".6f"),
            _cell(target.median_output_tokens, ".0f"),
        ]
        for j, target in enumerate(summary.splits["all"].targets)
    ]
    header = ["target", "labels", "acc train", "acc test", "acc all", "mean cost $", "median out tok"]
    lines += _text_table(header, per_target) + [""]
    per_split = []
    for s in splits:
        part = summary.splits[s]
        zones = part.agreement
        per_split.append(
            [
                s,
                str(part.rows),
                part.best_single or "-",
                _cell(part.best_single_accuracy, ".3f"),
                _cell(part.oracle_accuracy, ".3f"),
                *(_cell(getattr(zones, z), ".3f") for z in metrics.ZONES),
                str(zones.excluded),
            ]
        )
    header = ["split", "rows", "best single", "acc", "oracle", "all right", "all wrong", "disagree", "excluded"]
    lines += _text_table(header, per_split, left=(0, 2))
    lines.append(
        "acc: mean over known labels. oracle: a target is right. zones: over rows with every label known "
        f"('excluded' rows lack one); right = label >= {metrics.RIGHT_THRESHOLD}"
    )
    return "\n".join(lines)
