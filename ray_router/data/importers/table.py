"""Import any wide table (CSV, JSONL, Parquet) with a small mapping from columns to routing fields.

The mapping names the prompt column, optionally the id / split / task / category columns, and per
target the correctness column (required) and cost / output-token columns (optional). It comes from
CLI options or a YAML file with the same keys (see TableMapping). Without an id column, ids are the
first 16 hex digits of sha256(prompt) (plus "-2", "-3", ... for repeated prompts), so they do not
depend on the row order. Rows with the same id are merged like RouterBench's duplicates.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import yaml

from ray_router.data.importers import (
    QueryRows,
    merge_duplicate_ids,
    numeric_column,
    read_prices,
    require_columns,
    rows_to_dataset,
)
from ray_router.data.routing_dataset import RoutingDataset, Target
from ray_router.errors import UserError

READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


class TableMapping(pydantic.BaseModel):
    """Which column holds what. `correct`/`cost`/`output_tokens` map target name -> column."""

    model_config = pydantic.ConfigDict(extra="forbid")

    prompt: str
    id: str | None = None
    split: str | None = None
    task: str | None = None
    category: str | None = None
    correct: dict[str, str] = pydantic.Field(min_length=1)
    cost: dict[str, str] = {}
    output_tokens: dict[str, str] = {}

    @pydantic.model_validator(mode="after")
    def _targets_have_labels(self) -> TableMapping:
        for kind in ("cost", "output_tokens"):
            extra = sorted(set(getattr(self, kind)) - set(self.correct))
            if extra:
                raise ValueError(f"{kind} is given for target {extra[0]!r}, which has no correct column")
        return self


def load_mapping(path: str | Path) -> dict:
    """The mapping dict of a YAML file (validated later, together with the CLI options)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such mapping file")
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(mapping, dict):
        raise UserError(f"{path}: expected a YAML mapping (prompt: ..., correct: {{target: column}})")
    return mapping


def build_mapping(values: dict, where: str = "mapping") -> TableMapping:
    """Validate a mapping dict; the first problem becomes a one-line UserError."""
    try:
        return TableMapping.model_validate(values)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        field = "".join(f"{part}: " for part in first["loc"])
        raise UserError(f"{where}: {field}{first['msg'].removeprefix('Value error, ')}") from None


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV/TSV/JSONL/JSON/Parquet file as a DataFrame; CSV cells are read as text (converted later)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown table type {path.suffix!r} (use {', '.join(READERS)})")
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(path, sep="," if kind == "csv" else "\t", dtype=str, keep_default_na=False)
        if kind in ("jsonl", "json"):
            return pd.read_json(path, lines=kind == "jsonl", dtype=False)
        return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise UserError(f"{path}: not a readable {kind} file ({str(err).splitlines()[0]})") from None


def _text(value: object, strip: bool) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    return str(value).strip() if strip else str(value)


def _text_column(frame: pd.DataFrame, column: str | None, strip: bool = True) -> list[str | None]:
    """The column's values as text, None where empty/null (all None without a column)."""
    return [None] * len(frame) if column is None else [_text(v, strip) for v in frame[column]]


def next_prompt_id(prompt: str, seen: dict[str, int]) -> str:
    """The id of `prompt` given the prompts seen before it (`seen` is updated): sha256 prefix,
    "-2", "-3", ... on repeats. Streaming callers keep one `seen` across batches."""
    base = hashlib.sha256(prompt.encode()).hexdigest()[:16]
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base}-{seen[base]}"


def prompt_ids(prompts: list[str]) -> list[str]:
    """Deterministic ids from prompt text, in order (see next_prompt_id)."""
    seen: dict[str, int] = {}
    return [next_prompt_id(p, seen) for p in prompts]


def _split_column(frame: pd.DataFrame, column: str | None, where: str) -> list[str | None]:
    splits = [None if s is None else s.lower() for s in _text_column(frame, column)]
    bad = next((i for i, s in enumerate(splits) if s is not None and s not in ("train", "test")), None)
    if bad is not None:
        raise UserError(f"{where} row {bad + 1}, column {column!r}: split {splits[bad]!r} is not 'train' or 'test'")
    return splits


def import_table(source: str | Path, mapping: TableMapping, prices: str | Path | None = None) -> RoutingDataset:
    """Import a wide table with `mapping`; `prices` (optional CSV) gives every target's list prices."""
    frame = read_table(source)
    where = str(source)
    targets = list(mapping.correct)
    columns = [mapping.prompt, *mapping.correct.values(), *mapping.cost.values(), *mapping.output_tokens.values()]
    columns += [c for c in (mapping.id, mapping.split, mapping.task, mapping.category) if c is not None]
    require_columns(frame, columns, where)
    n = len(frame)
    if n == 0:
        raise UserError(f"{where}: the table has no rows")

    prompts = _text_column(frame, mapping.prompt, strip=False)
    if None in prompts:
        raise UserError(f"{where} row {prompts.index(None) + 1}, column {mapping.prompt!r}: empty prompt")
    if mapping.id is None:
        ids = prompt_ids(prompts)
    else:
        ids = _text_column(frame, mapping.id)
        if None in ids:
            raise UserError(f"{where} row {ids.index(None) + 1}, column {mapping.id!r}: empty id")

    def per_target(columns: dict[str, str], labels: bool = False) -> np.ndarray:
        """(n, K): the mapped column of each target, NaN for targets without one."""
        empty = np.full(n, np.nan)
        return np.column_stack(
            [numeric_column(frame[columns[t]], where, columns[t], labels) if t in columns else empty for t in targets]
        )

    rows = QueryRows(
        query_ids=ids,
        prompts=prompts,
        origins=[f"{Path(source).name} row {i + 1}" for i in range(n)],
        correct=per_target(mapping.correct, labels=True),
        cost_usd=per_target(mapping.cost),
        output_tokens=per_target(mapping.output_tokens),
        task=_text_column(frame, mapping.task),
        category=_text_column(frame, mapping.category),
        split=_split_column(frame, mapping.split, where),
    )
    merged, n_merged = merge_duplicate_ids(rows, targets)
    target_list = read_prices(prices, targets) if prices is not None else [Target(name=t) for t in targets]
    notes = [f"read {n} rows, {len(targets)} targets"]
    if n_merged:
        notes.append(f"merged {n_merged} rows with a repeated id -> {len(merged.query_ids)} unique queries")
    if mapping.id is None:
        notes.append("no id column: ids are sha256(prompt) prefixes")
    if mapping.split is None or any(s is None for s in merged.split):
        notes.append("queries without a split got the deterministic hash split")
    source_info = {
        "format": "table",
        "path": where,
        "files": [Path(source).name],
        "prices": None if prices is None else str(prices),
        "mapping": mapping.model_dump(),
        "rows_read": n,
        "duplicates_merged": n_merged,
        "notes": notes,
    }
    try:
        return rows_to_dataset(merged, target_list, source_info)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
