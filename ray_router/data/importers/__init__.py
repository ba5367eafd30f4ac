"""Importers: turn a benchmark's files into a RoutingDataset.

Each format has a module with one `import_<format>(source, ...) -> RoutingDataset` function. What the
importer did (files read, rows read, duplicate ids merged, notes) is recorded in `dataset.source`, which
is stored with the dataset and printed by the CLI. This module holds what the importers share:
rows before duplicate merging, the merge itself, and the prices file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ray_router.data.routing_dataset import RoutingDataset, Target
from ray_router.errors import UserError

PRICE_COLUMNS = ("model", "input_usd_per_mtok", "output_usd_per_mtok")
_LIST_FIELDS = ("query_ids", "prompts", "origins", "task", "category", "split")
_ARRAY_FIELDS = ("correct", "cost_usd", "output_tokens")


@dataclass
class QueryRows:
    """Rows as read from a source, before rows with the same query id are merged.

    Per-target arrays are (n, K) float64 with NaN for unknown; `origins` says where each row came from
    ("file.csv row 12") for error messages.
    """

    query_ids: list[str]
    prompts: list[str]
    origins: list[str]
    correct: np.ndarray
    cost_usd: np.ndarray
    output_tokens: np.ndarray
    task: list[str | None]
    category: list[str | None]
    split: list[str | None]

    def take(self, index: list[int]) -> QueryRows:
        """The rows at `index`, in that order."""
        lists = {name: [getattr(self, name)[i] for i in index] for name in _LIST_FIELDS}
        arrays = {name: getattr(self, name)[index] for name in _ARRAY_FIELDS}
        return QueryRows(**lists, **arrays)


def merge_duplicate_ids(rows: QueryRows, target_names: list[str]) -> tuple[QueryRows, int]:
    """Merge rows that share a query id into one query; returns the merged rows and how many rows merged away.

    Per target, the label (with its cost and output tokens) comes from the row that has it; prompt,
    task, category and split come from the row with the most known labels (the first on ties). Two
    different known labels for the same query and target are a UserError naming both rows.
    """
    groups: dict[str, list[int]] = {}
    for i, query in enumerate(rows.query_ids):
        groups.setdefault(query, []).append(i)
    if len(groups) == len(rows.query_ids):
        return rows, 0
    known = ~np.isnan(rows.correct)
    primaries = [max(group, key=lambda i: (known[i].sum(), -i)) for group in groups.values()]
    merged = rows.take(primaries)
    for out, (query, group) in enumerate(groups.items()):
        if len(group) == 1:
            continue
        for j, target in enumerate(target_names):
            holders = [i for i in group if known[i, j]]
            values = {float(rows.correct[i, j]) for i in holders}
            if len(values) > 1:
                a, b = holders[0], next(i for i in holders if rows.correct[i, j] != rows.correct[holders[0], j])
                raise UserError(
                    f"query id {query!r}: conflicting labels for target {target!r}: "
                    f"{rows.origins[a]} has {rows.correct[a, j]:g}, {rows.origins[b]} has {rows.correct[b, j]:g}"
                )
            if holders and not known[primaries[out], j]:
                merged.correct[out, j] = rows.correct[holders[0], j]
                merged.cost_usd[out, j] = rows.cost_usd[holders[0], j]
                merged.output_tokens[out, j] = rows.output_tokens[holders[0], j]
    return merged, len(rows.query_ids) - len(groups)


def rows_to_dataset(rows: QueryRows, targets: list[Target], source: dict[str, Any]) -> RoutingDataset:
    """A RoutingDataset from merged rows (queries without a split get the deterministic split)."""
    return RoutingDataset.from_arrays(
        rows.query_ids,
        rows.prompts,
        targets,
        rows.correct,
        cost_usd=rows.cost_usd,
        output_tokens=rows.output_tokens,
        task=rows.task,
        category=rows.category,
        split=rows.split,
        source=source,
    )


def read_prices(path: str | Path, models: list[str]) -> list[Target]:
    """Targets with prices from a CSV with columns model, input_usd_per_mtok, output_usd_per_mtok
    (more columns are ignored). Every model in `models` must be listed: UserError naming the first missing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such prices file")
    try:
        prices = pd.read_csv(path, dtype={"model": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({err})") from None
    require_columns(prices, list(PRICE_COLUMNS), str(path))
    by_model: dict[str, tuple[float, float]] = {}
    for row, (model, price_in, price_out) in enumerate(prices[list(PRICE_COLUMNS)].itertuples(index=False), 1):
        try:
            values = (float(price_in), float(price_out))
        except ValueError:
            raise UserError(f"{path} row {row}: prices of {model!r} are not numbers") from None
        if not all(np.isfinite(values)) or min(values) < 0:
            raise UserError(f"{path} row {row}: prices of {model!r} must be non-negative numbers")
        if model in by_model:
            raise UserError(f"{path} row {row}: model {model!r} is listed twice")
        by_model[model] = values
    missing = [m for m in models if m not in by_model]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{path}: no prices for model {missing[0]!r}{more}")
    return [Target(name=m, input_usd_per_mtok=by_model[m][0], output_usd_per_mtok=by_model[m][1]) for m in models]


NULL_TOKENS = frozenset({"", "nan", "NaN", "NA", "N/A", "null", "None", "none"})


def numeric_column(values: pd.Series, where: str, column: str, labels: bool = False) -> np.ndarray:
    """(n,) float64 from a column of numbers, booleans or number strings; empty/NaN/null -> NaN.

    A value that is not a number (or, with `labels`, a number outside [0, 1]) is a UserError naming
    `where` (the file), the 1-based row and the column."""
    raw = values.reset_index(drop=True)
    if raw.dtype == bool:
        raw = raw.astype(np.float64)
    text = raw.astype(str).str.strip()
    is_null = raw.isna() | text.isin(NULL_TOKENS)
    numbers = pd.to_numeric(raw.where(~is_null), errors="coerce").astype(np.float64)
    bad = numbers.isna() & ~is_null
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{where} row {row + 1}, column {column!r}: {raw[row]!r} is not a number")
    result = numbers.to_numpy()
    if labels:
        outside = ~np.isnan(result) & ((result < 0) | (result > 1))
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise UserError(f"{where} row {row + 1}, column {column!r}: label {result[row]:g} is outside [0, 1]")
    return result


def require_columns(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    """UserError naming the file and the first column of `columns` that `frame` lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        present = ", ".join(map(str, frame.columns[:12])) + (", ..." if len(frame.columns) > 12 else "")
        raise UserError(f"{where}: no column {missing[0]!r} (columns: {present})")
