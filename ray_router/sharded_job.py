"""The one resumable sharded job: queries stream through a Ray Data actor pool into atomic Parquet shards.

Feature extraction and batch routing are both this job, each with its own worker (a `TorchWorker`) and
output columns. Its output folder (a local path or a cloud URI) holds

    shards/part-*.parquet   query_id and the worker's columns; each shard written atomically
    manifest.json           written when every query of the run is there: rows, sha256 of the ids, shards

so an interrupted run leaves only complete shards, and the next run computes only the query ids that no
shard holds yet. The driver buffers the worker's output and writes a shard every `shard_rows` rows.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable

import pyarrow as pa
import ray
from tqdm import tqdm

from ray_router.data import storage
from ray_router.errors import UserError
from ray_router.resources import WorkerResources, set_torch_threads

SHARD_DIR = "shards"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def ids_hash(query_ids: Iterable[str]) -> str:
    """Order-independent sha256 of a set of query ids."""
    digest = hashlib.sha256()
    for qid in sorted(query_ids):
        digest.update(qid.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def check_job_options(batch_size: int, shard_rows: int, limit: int | None) -> None:
    """UserError unless batch_size and shard_rows are >= 1 and limit is None or >= 1."""
    if batch_size < 1 or shard_rows < 1:
        raise UserError(f"batch_size and shard_rows must be >= 1, got {batch_size} and {shard_rows}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")


class ShardFolder:
    """The shards and the manifest of one job's output folder; `metadata` goes into every shard's schema."""

    def __init__(self, root: str, metadata: dict[bytes, bytes] | None = None):
        self.root = str(root)
        self.metadata = metadata

    @property
    def shard_dir(self) -> str:
        return storage.join(self.root, SHARD_DIR)

    def shard_files(self) -> list[str]:
        """The complete shards, by name (oldest first)."""
        return storage.list_files(self.shard_dir, suffix=".parquet")

    def stored_ids(self) -> list[str]:
        """The query ids of every complete shard, in shard order (a repeat would be a bug)."""
        return [q for shard in self.shard_files()
                for q in storage.read_parquet(shard, columns=["query_id"]).column(0).to_pylist()]

    def write_shard(self, table: pa.Table) -> str:
        """Write one shard atomically; returns its path."""
        if self.metadata is not None:
            table = table.replace_schema_metadata(self.metadata)
        uri = storage.join(self.shard_dir, f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")
        storage.write_parquet_atomic(table, uri)
        return uri

    def finalize(self, expected_ids: Iterable[str], **fields) -> dict:
        """Check that every expected query id is stored and none twice, and write the manifest (with
        `fields` added); returns it."""
        stored = self.stored_ids()
        if len(stored) != len(set(stored)):
            raise RuntimeError(f"{self.root}: {len(stored) - len(set(stored))} query ids stored twice")
        missing = sorted(set(expected_ids) - set(stored))
        if missing:
            raise RuntimeError(f"{self.root}: {len(missing)} queries are missing (e.g. {missing[:3]})")
        manifest = {
            "format_version": FORMAT_VERSION,
            "rows": len(stored),
            "query_ids_sha256": ids_hash(stored),
            **fields,
            "shards": [s.rsplit("/", 1)[1] for s in self.shard_files()],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        storage.write_json_atomic(storage.join(self.root, MANIFEST_FILE), manifest)
        return manifest

    def manifest(self) -> dict | None:
        """The manifest of a finished run, None when there is none."""
        uri = storage.join(self.root, MANIFEST_FILE)
        return storage.read_json(uri) if storage.exists(uri) else None


class TorchWorker:
    """Base of the job's Ray Data callable classes (one instance per actor): sets the actor's torch threads,
    then a subclass builds its model; `__call__` maps a pyarrow batch (query_id, prompt) to output columns."""

    def __init__(self, torch_threads: int | None):
        set_torch_threads(torch_threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError


def run_job(
    queries: ray.data.Dataset,
    worker: type[TorchWorker],
    worker_kwargs: dict,
    folder: ShardFolder,
    resources: WorkerResources,
    *,
    batch_size: int,
    shard_rows: int,
    total: int,
    description: str,
) -> None:
    """Stream `queries` (query_id, prompt) through an actor pool of `worker(**worker_kwargs, torch_threads=...)`
    and write its output into `folder`, a shard every `shard_rows` rows, with a progress bar on terminals."""
    workers = resources.actor_pool_size()
    results = queries.map_batches(
        worker,
        fn_constructor_kwargs={**worker_kwargs, "torch_threads": resources.threads_per_worker(workers)},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=resources.num_cpus,
        num_gpus=resources.gpus_per_worker(),
    )
    buffer: list[pa.Table] = []
    with tqdm(total=total, unit="query", desc=description, disable=None) as progress:
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            buffer.append(batch)
            progress.update(len(batch))
            if sum(len(b) for b in buffer) >= shard_rows:
                folder.write_shard(pa.concat_tables(buffer))
                buffer = []
    if buffer:
        folder.write_shard(pa.concat_tables(buffer))
