"""A folder of prefill features: Parquet shards + the feature schema + a manifest when complete.

Layout of a feature folder (local path or cloud URI):
    schema.json              the FeatureSchema, written before the first shard
    shards/part-*.parquet    query_id + one fixed-size float32 column per (layer, pooling);
                             each shard carries the schema in its Parquet metadata
    manifest.json            written when a run finishes: rows, schema, source data hash

Shards are written atomically, so an interrupted run leaves only complete shards, and the next
run computes only the query_ids that no shard holds yet.
"""

import hashlib
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_router.data import storage
from ray_router.errors import UserError
from ray_router.features.schema import FeatureSchema

SCHEMA_FILE = "schema.json"
MANIFEST_FILE = "manifest.json"
SHARD_DIR = "shards"
SCHEMA_METADATA_KEY = b"ray_router.feature_schema"
FORMAT_VERSION = 1


def ids_hash(query_ids) -> str:
    """Order-independent sha256 of a set of query ids."""
    digest = hashlib.sha256()
    for qid in sorted(query_ids):
        digest.update(qid.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def features_to_table(query_ids, features: dict[str, np.ndarray], schema: FeatureSchema) -> pa.Table:
    """Arrow table with query_id and one FixedSizeList<float32> column per feature column."""
    arrays = {"query_id": pa.array(list(query_ids), pa.string())}
    for name, matrix in features.items():
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        flat = pa.array(matrix.reshape(-1), pa.float32())
        arrays[name] = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
    table = pa.table(arrays)
    return table.replace_schema_metadata({SCHEMA_METADATA_KEY: schema.model_dump_json().encode()})


def _column_matrix(column: pa.ChunkedArray) -> np.ndarray:
    column = column.combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


class FeatureStore:
    """Read/write access to one feature folder with a fixed FeatureSchema."""

    def __init__(self, root: str, schema: FeatureSchema):
        self.root = str(root)
        self.schema = schema

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create_or_resume(cls, root: str, schema: FeatureSchema) -> "FeatureStore":
        """Open `root` for writing features of `schema`; refuse a folder holding another schema."""
        schema_uri = storage.join(str(root), SCHEMA_FILE)
        if storage.exists(schema_uri):
            existing = FeatureSchema.model_validate(storage.read_json(schema_uri))
            if existing.schema_id != schema.schema_id:
                raise UserError(
                    f"{root} holds features of another feature schema ({_schema_diff(existing, schema)}); "
                    "use a new --out folder or the same settings"
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
    @property
    def shard_dir(self) -> str:
        return storage.join(self.root, SHARD_DIR)

    def shard_files(self) -> list[str]:
        return storage.list_files(self.shard_dir, suffix=".parquet")

    def stored_query_ids(self) -> set[str]:
        """Every query_id that a complete shard already holds."""
        done: set[str] = set()
        for shard in self.shard_files():
            done.update(storage.read_parquet(shard, columns=["query_id"]).column(0).to_pylist())
        return done

    def write_shard(self, query_ids, features: dict[str, np.ndarray]) -> str:
        """Write one shard atomically; returns its path."""
        expected = set(self.schema.columns)
        if set(features) != expected:
            raise ValueError(f"feature columns {sorted(features)} do not match the schema's {sorted(expected)}")
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        uri = storage.join(self.shard_dir, name)
        storage.write_parquet_atomic(features_to_table(query_ids, features, self.schema), uri)
        return uri

    def finalize(self, source_data_hash: str) -> dict:
        """Check every stored query_id is unique and write the manifest; returns it."""
        ids: list[str] = []
        for shard in self.shard_files():
            ids.extend(storage.read_parquet(shard, columns=["query_id"]).column(0).to_pylist())
        if len(ids) != len(set(ids)):
            raise RuntimeError(f"{self.root}: {len(ids) - len(set(ids))} query_ids stored twice")
        manifest = {
            "format_version": FORMAT_VERSION,
            "rows": len(ids),
            "query_ids_sha256": ids_hash(ids),
            "source_data_hash": source_data_hash,
            "schema": self.schema.model_dump(mode="json"),
            "shards": [s.rsplit("/", 1)[1] for s in self.shard_files()],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        storage.write_json_atomic(storage.join(self.root, MANIFEST_FILE), manifest)
        return manifest

    def manifest(self) -> dict | None:
        uri = storage.join(self.root, MANIFEST_FILE)
        return storage.read_json(uri) if storage.exists(uri) else None

    # -- reading ---------------------------------------------------------------------------------
    def load(self, query_ids, columns: list[str] | None = None) -> dict[str, np.ndarray]:
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


def _schema_diff(a: FeatureSchema, b: FeatureSchema) -> str:
    da, db = a.model_dump(), b.model_dump()
    changed = [k for k in da if da.get(k) != db.get(k)]
    return ", ".join(f"{k}: {da[k]!r} there vs {db[k]!r} now" for k in changed[:4]) or "schema ids differ"
