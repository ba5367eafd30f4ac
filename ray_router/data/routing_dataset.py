"""The routing dataset: one row per query, per-target correctness / cost / output tokens, as Parquet.

A routing dataset is an Arrow table with the columns `query_id` (unique string), `prompt`, `task`,
`category`, `split` ("train"/"test") and, for every target T, `correct:T` (float64 in [0, 1]),
`cost_usd:T` (float64) and `output_tokens:T` (int64). Every per-target value is null when unknown:
a missing label is never a 0. The target table (name, prices) and the source description are JSON in
the Parquet schema metadata under METADATA_KEY, with a format version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic

from ray_router.data import storage
from ray_router.errors import UserError

FORMAT_VERSION = 1
METADATA_KEY = b"ray_router.routing_data"
SPLITS = ("train", "test")
BASE_COLUMNS = ("query_id", "prompt", "task", "category", "split")


class Target(pydantic.BaseModel):
    """A target model: its name and (optional) list prices in USD per million tokens."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str = pydantic.Field(min_length=1)
    input_usd_per_mtok: float | None = pydantic.Field(default=None, ge=0)
    output_usd_per_mtok: float | None = pydantic.Field(default=None, ge=0)


def correct_column(target: str) -> str:
    """Name of the correctness column of `target`."""
    return f"correct:{target}"


def cost_column(target: str) -> str:
    """Name of the per-query cost (USD) column of `target`."""
    return f"cost_usd:{target}"


def output_tokens_column(target: str) -> str:
    """Name of the output-token-count column of `target`."""
    return f"output_tokens:{target}"


def query_hashes(query_ids: Sequence[str], salt: str = "") -> list[int]:
    """Per query, the first 8 bytes of sha256(salt + query_id) as an integer in [0, 2^64): the same on every
    machine and run, whatever the row order (what splits, holdouts and folds are drawn from)."""
    return [int.from_bytes(hashlib.sha256((salt + str(q)).encode()).digest()[:8], "big") for q in query_ids]


def hash_fraction_mask(query_ids: Sequence[str], fraction: float, salt: str = "") -> np.ndarray:
    """(n,) bool: True where the query's hash (`query_hashes`) falls below fraction x 2^64, so about `fraction`
    of the ids, the same ones on every machine and run, whatever the row order."""
    threshold = fraction * 2.0**64
    return np.array([h < threshold for h in query_hashes(query_ids, salt)], dtype=bool)


def deterministic_split(query_ids: Sequence[str], test_fraction: float = 0.15) -> np.ndarray:
    """"train"/"test" per query, from the sha256 of its query_id: stable across runs and machines."""
    if not 0.0 <= test_fraction <= 1.0:
        raise UserError(f"test fraction must be in [0, 1], got {test_fraction}")
    return np.where(hash_fraction_mask(query_ids, test_fraction), "test", "train").astype(object)


def _schema(targets: Sequence[Target]) -> pa.Schema:
    """The column types of a dataset with these targets (the metadata is added by RoutingDataset)."""
    fields = [pa.field("query_id", pa.string(), nullable=False), pa.field("prompt", pa.string(), nullable=False)]
    fields += [pa.field(name, pa.string()) for name in ("task", "category", "split")]
    fields += [pa.field(correct_column(t.name), pa.float64()) for t in targets]
    fields += [pa.field(cost_column(t.name), pa.float64()) for t in targets]
    fields += [pa.field(output_tokens_column(t.name), pa.int64()) for t in targets]
    return pa.schema(fields)


def _matrix(values: np.ndarray | None, n: int, k: int, what: str) -> np.ndarray:
    if values is None:
        return np.full((n, k), np.nan)
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n, k):
        raise ValueError(f"{what} has shape {array.shape}, expected {(n, k)}")
    return array


def _optional_strings(values: Sequence[str | None] | None, n: int, what: str) -> list[str | None]:
    if values is None:
        return [None] * n
    out = [None if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else str(v) for v in values]
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} values, expected {n}")
    return out


def _first_bad(mask: np.ndarray, query_ids: list[str], targets: Sequence[Target]) -> tuple[str, str]:
    row, col = np.argwhere(mask)[0]
    return query_ids[row], targets[col].name


class RoutingDataset:
    """An immutable routing dataset over a pyarrow.Table (see the module docstring for the columns)."""

    __slots__ = ("_table", "_targets", "_source")

    def __init__(self, table: pa.Table, targets: Sequence[Target], source: dict[str, Any] | None = None):
        """Wrap an already valid table; use `from_arrays` or `read` to build one from data."""
        self._targets = list(targets)
        self._source = dict(source or {})
        self._table = table.replace_schema_metadata({METADATA_KEY: json.dumps(self._metadata()).encode()})

    def _metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "targets": [t.model_dump() for t in self._targets],
            "source": self._source,
        }

    @classmethod
    def from_arrays(
        cls,
        query_ids: Sequence[str],
        prompts: Sequence[str],
        targets: Sequence[Target],
        correct: np.ndarray,
        cost_usd: np.ndarray | None = None,
        output_tokens: np.ndarray | None = None,
        task: Sequence[str | None] | None = None,
        category: Sequence[str | None] | None = None,
        split: Sequence[str | None] | None = None,
        source: dict[str, Any] | None = None,
        test_fraction: float = 0.15,
    ) -> RoutingDataset:
        """Build and validate a dataset from (n,) id/prompt sequences and (n, K) arrays (NaN = unknown).

        Raises UserError for empty or duplicate query ids, labels outside [0, 1], negative costs or
        token counts, and splits other than train/test. Queries without a split get
        `deterministic_split(query_id, test_fraction)`.
        """
        ids = [str(q) for q in query_ids]
        n, k = len(ids), len(targets)
        names = [t.name for t in targets]
        if k == 0:
            raise UserError("a routing dataset needs at least one target")
        if len(set(names)) != k:
            raise UserError(f"duplicate target names: {sorted({x for x in names if names.count(x) > 1})}")
        if any(q.strip() == "" for q in ids):
            raise UserError(f"empty query_id at row {next(i for i, q in enumerate(ids) if q.strip() == '') + 1}")
        if len(set(ids)) != n:
            seen: set[str] = set()
            duplicate = next(q for q in ids if q in seen or seen.add(q))
            raise UserError(f"duplicate query_id {duplicate!r}")
        prompt_list = list(prompts)
        if len(prompt_list) != n:
            raise ValueError(f"prompts has {len(prompt_list)} values, expected {n}")
        if any(not isinstance(p, str) for p in prompt_list):
            row = next(i for i, p in enumerate(prompt_list) if not isinstance(p, str))
            raise UserError(f"query {ids[row]!r}: prompt is missing (not a string)")

        labels = _matrix(correct, n, k, "correct")
        bad = ~np.isnan(labels) & ((labels < 0) | (labels > 1))
        if bad.any():
            query, target = _first_bad(bad, ids, targets)
            raise UserError(f"query {query!r}, target {target!r}: label {labels[bad][0]} is outside [0, 1]")
        costs = _matrix(cost_usd, n, k, "cost_usd")
        if (costs < 0).any():
            query, target = _first_bad(costs < 0, ids, targets)
            raise UserError(f"query {query!r}, target {target!r}: negative cost {costs[costs < 0][0]}")
        tokens = _matrix(output_tokens, n, k, "output_tokens")
        bad = ~np.isnan(tokens) & ((tokens < 0) | (tokens != np.round(tokens)))
        if bad.any():
            query, target = _first_bad(bad, ids, targets)
            raise UserError(f"query {query!r}, target {target!r}: output tokens {tokens[bad][0]} is not a count")

        splits = _optional_strings(split, n, "split")
        unknown = sorted({s for s in splits if s is not None and s not in SPLITS})
        if unknown:
            raise UserError(f"split values must be 'train' or 'test', got {unknown[:5]}")
        missing = [i for i, s in enumerate(splits) if s is None]
        if missing:
            for i, s in zip(missing, deterministic_split([ids[i] for i in missing], test_fraction)):
                splits[i] = s

        columns: list[pa.Array] = [
            pa.array(ids, pa.string()),
            pa.array(prompt_list, pa.string()),
            pa.array(_optional_strings(task, n, "task"), pa.string()),
            pa.array(_optional_strings(category, n, "category"), pa.string()),
            pa.array(splits, pa.string()),
        ]
        columns += [pa.array(labels[:, j], pa.float64(), from_pandas=True) for j in range(k)]
        columns += [pa.array(costs[:, j], pa.float64(), from_pandas=True) for j in range(k)]
        columns += [
            pa.array(np.nan_to_num(tokens[:, j]).astype(np.int64), pa.int64(), mask=np.isnan(tokens[:, j]))
            for j in range(k)
        ]
        return cls(pa.Table.from_arrays(columns, schema=_schema(targets)), targets, source)

    # --- read-only views -------------------------------------------------------------------------
    @property
    def table(self) -> pa.Table:
        """The Arrow table, with the metadata in its schema."""
        return self._table

    @property
    def targets(self) -> list[Target]:
        """The targets, in column order."""
        return list(self._targets)

    @property
    def source(self) -> dict[str, Any]:
        """Where the data came from and what the importer did (a JSON-able dict)."""
        return json.loads(json.dumps(self._source))

    @property
    def target_names(self) -> list[str]:
        """Target names, in column order."""
        return [t.name for t in self._targets]

    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return f"RoutingDataset({len(self)} queries x {len(self._targets)} targets)"

    @property
    def query_ids(self) -> np.ndarray:
        """(n,) object array of query ids."""
        return np.array(self._table.column("query_id").to_pylist(), dtype=object)

    @property
    def prompts(self) -> list[str]:
        """The prompts, in row order."""
        return self._table.column("prompt").to_pylist()

    @property
    def splits(self) -> np.ndarray:
        """(n,) object array of "train"/"test"."""
        return np.array(self._table.column("split").to_pylist(), dtype=object)

    def column(self, name: str) -> np.ndarray:
        """(n,) object array of a string column (task, category, split, ...); None where null."""
        return np.array(self._table.column(name).to_pylist(), dtype=object)

    def _matrix(self, column_name) -> np.ndarray:
        if not self._targets:
            return np.empty((len(self), 0))
        return np.column_stack(
            [
                pc.cast(self._table.column(column_name(t.name)), pa.float64()).to_numpy(zero_copy_only=False)
                for t in self._targets
            ]
        ).astype(np.float64)

    def labels(self) -> np.ndarray:
        """(n, K) float64 correctness, NaN where unknown."""
        return self._matrix(correct_column)

    def costs(self) -> np.ndarray:
        """(n, K) float64 cost in USD, NaN where unknown."""
        return self._matrix(cost_column)

    def output_tokens(self) -> np.ndarray:
        """(n, K) float64 output token counts, NaN where unknown."""
        return self._matrix(output_tokens_column)

    # --- derived datasets ------------------------------------------------------------------------
    def select(
        self,
        split: str | None = None,
        query_ids: Sequence[str] | None = None,
        rows: Sequence[int] | np.ndarray | None = None,
    ) -> RoutingDataset:
        """A new dataset with some rows: by `rows` (indices or boolean mask) or `query_ids` (in that
        order; unknown ids are a UserError), then restricted to `split` when given."""
        if rows is not None and query_ids is not None:
            raise ValueError("give rows or query_ids, not both")
        index = np.arange(len(self))
        if rows is not None:
            rows = np.asarray(rows)
            index = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        elif query_ids is not None:
            position = {q: i for i, q in enumerate(self._table.column("query_id").to_pylist())}
            unknown = [q for q in query_ids if q not in position]
            if unknown:
                raise UserError(f"{len(unknown)} query ids not in the dataset, e.g. {unknown[:3]}")
            index = np.array([position[q] for q in query_ids], dtype=np.int64)
        if split is not None:
            if split not in SPLITS:
                raise UserError(f"split must be one of {SPLITS}, got {split!r}")
            index = index[self.splits[index] == split]
        return RoutingDataset(self._table.take(pa.array(index, pa.int64())), self._targets, self._source)

    # --- persistence -----------------------------------------------------------------------------
    def write(self, path: str | os.PathLike) -> None:
        """Write Parquet atomically (local path or cloud URI): a temporary file, then a rename."""
        storage.write_parquet_atomic(self._table, os.fspath(path))

    @classmethod
    def read(cls, path: str | os.PathLike) -> RoutingDataset:
        """Read a dataset written by `write` (local path or cloud URI); UserError naming the file when it
        is missing, not Parquet, not a routing dataset, or written by a newer format version."""
        path = os.fspath(path)
        if not storage.is_file(path):
            raise UserError(f"{path}: no such file")
        try:
            table = storage.read_parquet(path)
        except (pa.ArrowException, OSError) as err:
            raise UserError(f"{path}: not a readable Parquet file ({err})") from None
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise UserError(
                f"{path}: not a ray-router routing dataset (no {METADATA_KEY.decode()} metadata); "
                "create one with `ray-router data import`"
            )
        try:
            metadata = json.loads(raw)
            version = int(metadata["format_version"])
            targets = [Target.model_validate(t) for t in metadata["targets"]]
        except (ValueError, KeyError, TypeError, pydantic.ValidationError) as err:
            raise UserError(f"{path}: corrupt routing-dataset metadata ({err})") from None
        if version > FORMAT_VERSION:
            raise UserError(
                f"{path}: routing-data format {version} is newer than this ray-router reads "
                f"({FORMAT_VERSION}); upgrade ray-router"
            )
        schema = _schema(targets)
        missing = [name for name in schema.names if name not in table.column_names]
        if missing:
            raise UserError(f"{path}: missing column {missing[0]!r}")
        try:
            table = table.select(schema.names).cast(schema)
        except (pa.ArrowException, ValueError) as err:
            raise UserError(f"{path}: columns do not have the routing-data types ({err})") from None
        return cls(table, targets, metadata.get("source") or {})

    def content_hash(self) -> str:
        """sha256 over (query_id, prompt) pairs in query_id order: identifies the queries, not the
        row order or the labels (the "source data hash" of manifests)."""
        ids = self._table.column("query_id").to_pylist()
        prompts = self._table.column("prompt").to_pylist()
        digest = hashlib.sha256()
        for query, prompt in sorted(zip(ids, prompts)):
            for text in (query, prompt):
                data = text.encode()
                digest.update(len(data).to_bytes(8, "big"))
                digest.update(data)
        return digest.hexdigest()
