"""A folder of prefill features: the sharded job's output folder, plus the feature schema.

Layout of a feature folder (local path or cloud URI):
    schema.json              the FeatureSchema, written before the first shard
    shards/part-*.parquet    query_id + one fixed-size float32 column per (layer, pooling);
                             each shard carries the schema in its Parquet metadata
    manifest.json            written when a run finishes: rows, schema, source data hash

Shards are written atomically (see ray_router.sharded_job), so an interrupted run leaves only complete
shards, and the next run computes only the query_ids that no shard holds yet.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_router.data import storage
from ray_router.errors import UserError
from ray_router.features.schema import Features, FeatureSchema
from ray_router.sharded_job import MANIFEST_FILE, ShardFolder

SCHEMA_FILE = "schema.json"
SCHEMA_METADATA_KEY = b"ray_router.feature_schema"



def features_to_table(query_ids, features: Features) -> pa.Table:
    """Arrow table with query_id and one FixedSizeList<float32> column per feature column."""
    arrays = {"query_id": pa.array(list(query_ids), pa.string())}
    for name, matrix in features.items():
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        flat = pa.array(matrix.reshape(-1), pa.float32())
        arrays[name] = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
    return pa.table(arrays)


def _column_matrix(column: pa.ChunkedArray) -> np.ndarray:
    column = column.combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


class FeatureStore:
    """Read/write access to one feature folder with a fixed FeatureSchema."""

    def __init__(self, root: str, schema: FeatureSchema):
        self.root = str(root)
        self.schema = schema
        self.shards = ShardFolder(self.root, {SCHEMA_METADATA_KEY: schema.model_dump_json().encode()})

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create_or_resume(cls, root: str, schema: FeatureSchema) -> "FeatureStore":
        """Open `root` for writing features of `schema`; refuse a folder holding another schema."""
        schema_uri = storage.join(str(root), SCHEMA_FILE)
        if storage.exists(schema_uri):
            existing = FeatureSchema.model_validate(storage.read_json(schema_uri))
            if existing.schema_id != schema.schema_id:
                raise UserError(
                    f"{root} holds features of another feature schema "
                    f"({', '.join(schema.differences(existing, 'now', 'there')[:4])}); "
                    "use a new output folder or the same settings"
                )
        else:
            storage.makedirs(str(root))
            storage.write_json_atomic(schema_uri, schema.model_dump(mode="json"))
        return cls(root, schema)

    @classmethod
    def open(cls, root: str, require_complete: bool = True) -> "FeatureStore":
        """Open an existing feature folder for reading (UserError when it is not one)."""
        schema_uri = storage.join(str(root), SCHEMA_FILE)
        if not storage.exists(schema_uri):
            raise UserError(f"{root} is not a feature folder (no {SCHEMA_FILE}); run `ray-router extract` first")
        if require_complete and not storage.exists(storage.join(str(root), MANIFEST_FILE)):
            raise UserError(f"{root}: extraction has not finished (no {MANIFEST_FILE}); rerun the same extract command")
        return cls(root, FeatureSchema.model_validate(storage.read_json(schema_uri)))

    # -- shards ----------------------------------------------------------------------------------
    def shard_files(self) -> list[str]:
        return self.shards.shard_files()

    def stored_query_ids(self) -> set[str]:
        """Every query_id that a complete shard already holds."""
        return set(self.shards.stored_ids())

    def manifest(self) -> dict | None:
        return self.shards.manifest()

    # -- reading ---------------------------------------------------------------------------------
    def load(self, query_ids, columns: list[str] | None = None) -> Features:
        """Features for `query_ids` (in that order) as {column: (n, d) float32}."""
        columns = list(columns or self.schema.columns)
        unknown = sorted(set(columns) - set(self.schema.columns))
        if unknown:
            raise UserError(f"{self.root} has no feature columns {unknown}; it has {self.schema.columns}")
        tables = [storage.read_parquet(s, columns=["query_id", *columns]) for s in self.shard_files()]
        if not tables:
            raise UserError(f"{self.root} holds no features yet")
        table = pa.concat_tables(tables)
        wanted = pa.array([str(q) for q in query_ids], pa.string())
        position = pc.index_in(wanted, value_set=table.column("query_id"))
        if position.null_count:
            missing = [q for q, p in zip(wanted.to_pylist(), position.to_pylist()) if p is None]
            raise UserError(
                f"{self.root} has no features for {len(missing)} of the requested queries "
                f"(e.g. {missing[:3]}); extract them first"
            )
        table = table.take(position)
        return {name: _column_matrix(table.column(name)) for name in columns}
