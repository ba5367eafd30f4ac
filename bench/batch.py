"""Batch routing benchmark: queries/s with 1 and 2 encoder workers, peak memory at N and 4N rows, encoder share.

    .venv/bin/python bench/batch.py [--bundle build/router] [--rows 200] [--batch-size 16]
        [--out bench/results/batch.json]

Runs `route_queries` (what `ray-router route` runs) on a private local Ray cluster, on real
RouterBench prompts (the deterministic sample of bench/extract.py, as a Parquet query file), with
the router bundle of `make demo` by default:

- after a warm-up run (one batch), (a) 1 worker on N rows, (c) 1 worker on 4N rows, (b) 2 workers
  on N rows; each run into a new folder, so actor start and model load are in every run's wall
  time. Steady queries/s of one worker = 3N / (wall(c) - wall(a)), which cancels the fixed cost.
- Peak memory of every run: the driver's RSS and the summed RSS of the private cluster's processes
  (GCS, raylet, object store, workers; all children of this process), sampled every 0.2 s, and the
  object store's shared memory in use. Streaming means (c) peaks where (a) does.
- (d) The driver's share at scale, without the encoder: `write_queue` (what the driver does before
  Ray Data takes over) on M and 4M rows (the sample's prompts repeated under distinct ids, default
  M = 100,000), peak growth of this process's RSS during the call. It grows only by the query ids
  kept for resume (bytes a row = growth difference / 3M).
- Encoder share: the router's PrefillEncoder alone, in this process with the same threads, on the
  same N prompts, over the steady time of N rows in the pipeline. The rest is Ray Data, the queue,
  the router head and policy, and the decision shards.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from ray_router.batch.queue import write_queue
from ray_router.batch.routing import route_queries
from ray_router.resources import WorkerResources
from ray_router.router import Router

from extract import load_average, machine, sample_prompts  # bench/extract.py (sets Ray's environment too)


class PeakMemory:
    """Samples, every 0.2 s while active, the driver's RSS and the summed RSS of its child processes."""

    def __init__(self):
        self.driver = self.cluster = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            rss = 0
            for child in me.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            self.driver = max(self.driver, me.memory_info().rss)
            self.cluster = max(self.cluster, rss)
            self._stop.wait(0.2)


def object_store_used() -> int:
    """Bytes of the object store in use (cluster total minus available)."""
    total = ray.cluster_resources().get("object_store_memory", 0)
    return int(total - ray.available_resources().get("object_store_memory", total))


def routing_run(bundle: str, queries: Path, rows: int, workers: int, batch_size: int, work: Path) -> dict:
    out = work / f"decisions-{rows}-{workers}w"
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = route_queries(bundle, str(queries), str(out), limit=rows, batch_size=batch_size,
                               resources=WorkerResources(num_workers=workers, num_cpus=0.5))
        wall = time.perf_counter() - started
    assert result.computed == rows, result
    return {"rows": rows, "workers": workers, "wall_s": round(wall, 2), "queries_per_s": round(rows / wall, 2),
            "peak_driver_rss_mb": round(memory.driver / 2**20), "peak_cluster_rss_mb": round(memory.cluster / 2**20),
            "object_store_used_after_mb": round(object_store_used() / 2**20, 1), "load_average_after": load_average()}


def queue_run(prompts: list[str], rows: int, work: Path) -> dict:
    """Peak RSS growth of this process while `write_queue` queues `rows` rows (prompts repeated, distinct ids)."""
    source = work / f"queue-input-{rows}.parquet"
    schema = pa.schema({"query_id": pa.string(), "prompt": pa.string()})
    with pq.ParquetWriter(source, schema) as writer:  # written in chunks: the input never sits in memory
        for start in range(0, rows, 10_000):
            ids = range(start, min(rows, start + 10_000))
            writer.write_table(pa.table({"query_id": [f"q{i}" for i in ids],
                                         "prompt": [prompts[i % len(prompts)] for i in ids]}, schema=schema))
    before = psutil.Process().memory_info().rss
    with PeakMemory() as memory:
        started = time.perf_counter()
        _, queued = write_queue(str(source), str(work / f"queue-{rows}"), "prompt", "query_id", None, set(),
                                rows_per_file=64)
        wall = time.perf_counter() - started
    assert queued == rows
    return {"rows": rows, "wall_s": round(wall, 2), "driver_rss_before_mb": round(before / 2**20),
            "peak_driver_rss_growth_mb": round((memory.driver - before) / 2**20, 1)}


def encoder_alone(bundle: str, prompts: list[str], batch_size: int) -> float:
    """Seconds the router's encoder takes on `prompts` in this process (after one warm-up batch)."""
    encoder = Router.load(bundle).build_encoder()
    encoder.encode(prompts[:batch_size], batch_size=batch_size)
    started = time.perf_counter()
    encoder.encode(prompts, batch_size=batch_size)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="build/router", help="Router bundle (default: the one `make demo` trains).")
    parser.add_argument("--rows", type=int, default=200, help="N: rows of runs (a) and (b); run (c) routes 4N.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--queue-rows", type=int, default=100_000, help="M: rows of the driver-only run (d); 4M too.")
    parser.add_argument("--out", default="bench/results/batch.json")
    args = parser.parse_args()
    if not (Path(args.bundle) / "router.json").exists():
        sys.exit(f"{args.bundle}: no router bundle; run `make demo` first or pass --bundle")

    n = args.rows
    sample = sample_prompts(4 * n)
    prompts = list(sample.prompts)
    schemas = [schema.model_dump(mode="json") for schema in Router.load(args.bundle).feature_schemas]
    results = {"bundle": args.bundle, "feature_schemas": schemas,
               "rows": n, "batch_size": args.batch_size, "machine": machine(), "load_average_start": load_average(),
               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        queries = work / "queries.parquet"
        pq.write_table(pa.table({"query_id": list(sample.query_ids), "prompt": prompts}), queries)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
        # A warm-up run first, so that Ray Data's own actors exist before any measured run starts.
        routing_run(args.bundle, queries, args.batch_size, 1, args.batch_size, work)
        runs = [routing_run(args.bundle, queries, rows, workers, args.batch_size, work)
                for rows, workers in ((n, 1), (4 * n, 1), (n, 2))]
        ray.shutdown()
        queue_runs = [queue_run(prompts, rows, work) for rows in (args.queue_rows, 4 * args.queue_rows)]
    one, large, two = runs
    steady_qps = 3 * n / (large["wall_s"] - one["wall_s"])
    torch.set_num_threads(os.cpu_count())
    encoder_s = encoder_alone(args.bundle, prompts[:n], args.batch_size)
    results.update({
        "runs": runs,
        "queue_runs": queue_runs,
        "queue_driver_growth_bytes_per_row": round(
            (queue_runs[1]["peak_driver_rss_growth_mb"] - queue_runs[0]["peak_driver_rss_growth_mb"]) * 2**20
            / (3 * args.queue_rows), 1),
        "steady_queries_per_s_1_worker": round(steady_qps, 2),
        "fixed_cost_s": round(one["wall_s"] - n / steady_qps, 1),
        "scaling_2_vs_1_workers": round(two["queries_per_s"] / one["queries_per_s"], 3),
        "peak_cluster_rss_4n_over_n": round(large["peak_cluster_rss_mb"] / one["peak_cluster_rss_mb"], 3),
        "peak_driver_rss_4n_over_n": round(large["peak_driver_rss_mb"] / one["peak_driver_rss_mb"], 3),
        "encoder_alone_s": round(encoder_s, 2),
        "encoder_share": round(encoder_s / (n / steady_qps), 3),
        "load_average_end": load_average(),
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"{'run':<22}{'wall s':>8}{'q/s':>8}{'driver MB':>11}{'cluster MB':>12}")
    for run in runs:
        print(f"{run['rows']:>5} rows, {run['workers']} worker(s){run['wall_s']:>8}{run['queries_per_s']:>8}"
              f"{run['peak_driver_rss_mb']:>11}{run['peak_cluster_rss_mb']:>12}")
    for run in queue_runs:
        print(f"queue only, {run['rows']} rows: {run['wall_s']} s, driver RSS growth {run['peak_driver_rss_growth_mb']} MB")
    for key in ("queue_driver_growth_bytes_per_row", "steady_queries_per_s_1_worker", "fixed_cost_s", "scaling_2_vs_1_workers",
                "peak_cluster_rss_4n_over_n", "peak_driver_rss_4n_over_n", "encoder_share"):
        print(f"{key}: {results[key]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
