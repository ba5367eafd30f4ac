"""The extraction job: stream a routing dataset through a Ray Data actor pool of encoders.

One library function, `extract_features`, behind both `jobs/extract.py` and `ray-router extract`.
The driver works out which query_ids are still missing from the feature folder, Ray Data runs the
prompts through `EncoderWorker` actors (one PrefillEncoder each, GPU when asked), and the driver
writes the results as atomic Parquet shards while they stream back, so an interrupted run resumes
where it stopped.
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from ray_router.errors import UserError
from ray_router.features.store import FeatureStore
from ray_router.features.prefill_encoder import PrefillEncoder, resolve_schema
from ray_router.resources import DEFAULT_ACTOR_CPUS, cluster_cpus, cluster_gpus, ensure_ray, worker_torch_threads
from ray_router.data.routing_dataset import RoutingDataset


class EncoderWorker:
    """Ray Data callable class: one PrefillEncoder per actor, encoding batches of prompts."""

    def __init__(self, encoder_kwargs: dict, torch_threads: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.encoder = PrefillEncoder(**encoder_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = self.encoder.encode(list(batch["prompt"]), batch_size=len(batch["prompt"]))
        return {"query_id": batch["query_id"], **features}


@dataclass
class ExtractionResult:
    """What a run did: rows computed now, rows already there, and the manifest it left."""

    computed: int
    already_done: int
    manifest: dict | None


def extract_features(
    data: str,
    encoder: str,
    layers: list[int],
    poolings: list[str],
    out: str,
    *,
    limit: int | None = None,
    max_tokens: int = 2048,
    truncation_side: str = "left",
    chat_template: bool = True,
    dtype: str | None = None,
    batch_size: int = 16,
    concurrency: int | None = None,
    num_gpus_per_worker: float | None = None,
    cpus_per_worker: float = DEFAULT_ACTOR_CPUS,
    shard_rows: int = 512,
    cache_dir: str | None = None,
    ray_address: str | None = None,
) -> ExtractionResult:
    """Extract prefill features of the first `limit` (default all) queries of `data` into `out`.

    Reruns into the same `out` compute only the queries it does not hold yet; a folder holding
    another feature schema is refused. The manifest is (re)written when every query of this run
    is present.
    """
    if batch_size < 1 or shard_rows < 1:
        raise UserError("--batch-size and shard size must be >= 1")
    if limit is not None and limit < 1:
        raise UserError("--limit must be >= 1")
    dataset = RoutingDataset.read(data)
    query_ids = dataset.query_ids[:limit] if limit else dataset.query_ids
    prompts = dataset.prompts[: len(query_ids)]
    _check_prompts(query_ids, prompts, data)
    ensure_ray(ray_address)
    gpus = cluster_gpus() if num_gpus_per_worker is None else None
    num_gpus_per_worker = (1.0 if gpus else 0.0) if num_gpus_per_worker is None else num_gpus_per_worker
    on_gpu = num_gpus_per_worker > 0
    encoder_kwargs = dict(
        spec=encoder,
        layers=layers,
        poolings=poolings,
        max_tokens=max_tokens,
        truncation_side=truncation_side,
        chat_template=chat_template,
        dtype=dtype or ("bfloat16" if on_gpu else "float32"),
        device="cuda" if on_gpu else "cpu",
        cache_dir=cache_dir,
    )
    schema = resolve_schema(**encoder_kwargs)
    store = FeatureStore.create_or_resume(out, schema)

    done = store.stored_query_ids()
    todo = [i for i, q in enumerate(query_ids) if q not in done]
    if todo:
        workers = concurrency or default_concurrency(num_gpus_per_worker, cpus_per_worker)
        _run_pipeline(
            store,
            [query_ids[i] for i in todo],
            [prompts[i] for i in todo],
            encoder_kwargs,
            workers=workers,
            batch_size=batch_size,
            num_gpus_per_worker=num_gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            shard_rows=shard_rows,
        )
    stored = store.stored_query_ids()
    missing = [q for q in query_ids if q not in stored]
    if missing:
        raise RuntimeError(f"{len(missing)} queries were not extracted (e.g. {missing[:3]})")
    manifest = store.finalize(source_data_hash=dataset.content_hash())
    return ExtractionResult(computed=len(todo), already_done=len(query_ids) - len(todo), manifest=manifest)


def _check_prompts(query_ids, prompts, data: str) -> None:
    empty = [q for q, p in zip(query_ids, prompts) if not p or not p.strip()]
    if empty:
        raise UserError(f"{data}: {len(empty)} queries have an empty prompt (e.g. query_id {empty[0]!r})")


def default_concurrency(num_gpus_per_worker: float, cpus_per_worker: float) -> int:
    """One worker per GPU; on CPU one worker per 2 cores (torch already uses the cores it is given)."""
    if num_gpus_per_worker > 0:
        return max(1, int(cluster_gpus() / num_gpus_per_worker))
    return max(1, min(int(cluster_cpus() // 2), int(cluster_cpus() / cpus_per_worker) - 1))


def _run_pipeline(store, query_ids, prompts, encoder_kwargs, *, workers, batch_size, num_gpus_per_worker,
                  cpus_per_worker, shard_rows) -> None:
    # Sort by prompt length so that each batch pads little; blocks of a few batches each, so the
    # actor pool has work to share from the start.
    order = np.argsort([len(p) for p in prompts], kind="stable")
    table = pa.table({"query_id": [query_ids[i] for i in order], "prompt": [prompts[i] for i in order]})
    rows_per_block = batch_size * 4
    blocks = [table.slice(s, rows_per_block) for s in range(0, len(table), rows_per_block)]
    threads = worker_torch_threads(workers, num_gpus_per_worker)
    features = ray.data.from_arrow(blocks).map_batches(
        EncoderWorker,
        fn_constructor_kwargs={"encoder_kwargs": encoder_kwargs, "torch_threads": threads},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=num_gpus_per_worker,
    )
    buffer: list[dict[str, np.ndarray]] = []
    buffered = 0
    for batch in features.iter_batches(batch_size=None, batch_format="numpy"):
        buffer.append(batch)
        buffered += len(batch["query_id"])
        if buffered >= shard_rows:
            _flush(store, buffer)
            buffer, buffered = [], 0
    if buffer:
        _flush(store, buffer)


def _flush(store: FeatureStore, batches: list[dict[str, np.ndarray]]) -> None:
    columns = store.schema.columns
    query_ids = np.concatenate([b["query_id"] for b in batches]).tolist()
    store.write_shard(query_ids, {c: np.concatenate([b[c] for b in batches]) for c in columns})
