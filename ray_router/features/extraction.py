"""The extraction job: prefill features of a routing dataset's prompts, as a resumable sharded job.

One library function, `extract_features`, behind both `jobs/extract.py` and `ray-router extract`. The
driver works out which query_ids the feature folder still lacks, Ray Data runs their prompts (sorted by
length, so that batches pad little) through `EncoderWorker` actors (one PrefillEncoder each, GPU when
the workers get one), and the shards are written while the features stream back (ray_router.sharded_job).
"""

from dataclasses import dataclass

import pyarrow as pa
import ray

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.errors import UserError
from ray_router.features.prefill_encoder import PrefillEncoder, resolve_schema
from ray_router.features.schema import EncoderConfig
from ray_router.features.store import FeatureStore, features_to_table
from ray_router.resources import WorkerResources, ensure_ray
from ray_router.sharded_job import TorchWorker, check_job_options, run_job

BLOCK_BATCHES = 4  # batches per Ray Data block: small blocks, so the actor pool has work to share at once


class EncoderWorker(TorchWorker):
    """One PrefillEncoder per actor, encoding batches of prompts into feature columns."""

    def __init__(self, config: EncoderConfig, device: str, cache_dir: str | None, torch_threads: int | None):
        super().__init__(torch_threads)
        self.encoder = PrefillEncoder(config, device=device, cache_dir=cache_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = batch.column("prompt").to_pylist()
        features = self.encoder.encode(prompts, batch_size=len(prompts))
        return features_to_table(batch.column("query_id").to_pylist(), features)


@dataclass
class ExtractionResult:
    """What a run did: rows computed now, rows already there, and the manifest it left."""

    computed: int
    already_done: int
    manifest: dict


def extract_features(
    data: str,
    encoder: EncoderConfig,
    out: str,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    shard_rows: int = 512,
    resources: WorkerResources | None = None,
    cache_dir: str | None = None,
    ray_address: str | None = None,
) -> ExtractionResult:
    """Extract the `encoder` features of the first `limit` (default all) queries of `data` into `out`.

    Reruns into the same `out` compute only the queries it does not hold yet; a folder holding another
    feature schema is refused. The manifest is (re)written when every query of this run is present.
    `cache_dir` is the encoder cache (converted GGUF weights; default $RAY_ROUTER_CACHE or the user cache).
    """
    check_job_options(batch_size, shard_rows, limit)
    resources = resources or WorkerResources()
    dataset = RoutingDataset.read(data)
    query_ids = dataset.query_ids[:limit] if limit else dataset.query_ids
    prompts = dataset.prompts[: len(query_ids)]
    _check_prompts(query_ids, prompts, data)
    ensure_ray(ray_address)
    device = resources.device()
    store = FeatureStore.create_or_resume(out, resolve_schema(encoder, device, cache_dir))

    done = store.stored_query_ids()
    todo = [i for i, q in enumerate(query_ids) if q not in done]
    if todo:
        order = sorted(todo, key=lambda i: len(prompts[i]))
        table = pa.table({"query_id": [query_ids[i] for i in order], "prompt": [prompts[i] for i in order]})
        rows_per_block = batch_size * BLOCK_BATCHES
        blocks = [table.slice(start, rows_per_block) for start in range(0, len(table), rows_per_block)]
        run_job(ray.data.from_arrow(blocks), EncoderWorker,
                {"config": encoder, "device": device, "cache_dir": cache_dir},
                store.shards, resources, batch_size=batch_size, shard_rows=shard_rows, total=len(todo),
                description="extracting")
    manifest = store.shards.finalize(query_ids, source_data_hash=dataset.content_hash(),
                                     schema=store.schema.model_dump(mode="json"))
    return ExtractionResult(computed=len(todo), already_done=len(query_ids) - len(todo), manifest=manifest)


def _check_prompts(query_ids, prompts, data: str) -> None:
    empty = [q for q, p in zip(query_ids, prompts) if not p or not p.strip()]
    if empty:
        raise UserError(f"{data}: {len(empty)} queries have an empty prompt (e.g. query_id {empty[0]!r})")
