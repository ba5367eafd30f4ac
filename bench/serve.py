"""Serving benchmark: `/v1/route` on Ray Serve under closed-loop load, next to the in-process router call.

On one private local Ray cluster, for the same real prompts:
  (a) the floor: `Router.route` in this process, one prompt per call (what a caller would pay without Serve),
      measured before and after the Serve runs; the faster of the two is the floor (on a shared machine
      load drifts, and the faster floor gives the larger, conservative overhead);
  (b) `POST /v1/route` (one prompt per request) over loopback HTTP, closed loop at each concurrency, a
      fixed number of requests each: p50/p95/p99 latency and throughput, with dynamic batching on
      (max_batch_size 16) and off (max_batch_size 1).
Reports the Serve overhead at concurrency 1 (p50 ratio to the floor; goal < 2x) and the batching gain at
the highest concurrency (throughput ratio). See bench/README.md.

    .venv/bin/python bench/serve.py --bundle build/router --data build/routerbench.parquet \
        [--requests 64] [--concurrency 1,8,32] [--out PATH]
"""

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

for _name, _value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
                      "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_name, _value)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from ray_router.data.routing_dataset import RoutingDataset  # noqa: E402
from ray_router.router import Router  # noqa: E402
from ray_router.serving.app import build_app  # noqa: E402

GOAL_OVERHEAD_C1 = 2.0  # Serve p50 at concurrency 1 under 2x the in-process call
REQUEST_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(latencies_s: list[float], wall_s: float) -> dict:
    ms = np.array(latencies_s) * 1000
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "throughput_rps": len(ms) / wall_s}


def in_process(router: Router, prompts: list[str]) -> dict:
    """The floor: Router.route on one prompt per call, sequentially, after one warm-up call."""
    router.route(prompts[:1])
    latencies, start = [], time.perf_counter()
    for prompt in prompts:
        t = time.perf_counter()
        router.route([prompt])
        latencies.append(time.perf_counter() - t)
    return _summary(latencies, time.perf_counter() - start)


async def closed_loop(url: str, prompts: list[str], concurrency: int) -> dict:
    """`concurrency` workers, each sending its next request as soon as the last one answered."""
    queue = list(reversed(prompts))
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            prompt = queue.pop()
            t = time.perf_counter()
            response = await client.post(url, json={"prompt": prompt})
            response.raise_for_status()
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        await client.post(url, json={"prompt": prompts[0]})  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return _summary(latencies, time.perf_counter() - start)


def served(bundle: str, prompts: list[str], concurrencies: list[int], max_batch_size: int, port: int) -> dict:
    args = {"bundle": bundle, "encoder": {"num_cpus": 0.25, "max_batch_size": max_batch_size,
                                          "batch_wait_timeout_s": 0.005}}
    serve.run(build_app(args), name="router", route_prefix="/")
    try:
        url = f"http://127.0.0.1:{port}/v1/route"
        return {str(c): asyncio.run(closed_loop(url, prompts, c)) for c in concurrencies}
    finally:
        serve.delete("router")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True, help="routing dataset: prompts are taken from its test split")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    options = parser.parse_args()
    concurrencies = [int(c) for c in options.concurrency.split(",")]
    prompts = RoutingDataset.read(options.data).select(split="test").prompts[: options.requests]
    if len(prompts) < options.requests:
        sys.exit(f"only {len(prompts)} test prompts in {options.data}")

    router = Router.load(options.bundle)
    floor_before = in_process(router, prompts)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        batched = served(options.bundle, prompts, concurrencies, 16, port)
        unbatched = served(options.bundle, prompts, concurrencies, 1, port)
    finally:
        serve.shutdown()
        ray.shutdown()
    floor_after = in_process(router, prompts)
    floor = min(floor_before, floor_after, key=lambda s: s["p50_ms"])

    top = str(concurrencies[-1])
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "requests": options.requests, "bundle": options.bundle,
        "in_process_before": floor_before, "in_process_after": floor_after, "in_process": floor,
        "serve_batched": batched, "serve_unbatched": unbatched,
        "overhead_p50_c1": batched[str(concurrencies[0])]["p50_ms"] / floor["p50_ms"],
        "batching_throughput_gain": batched[top]["throughput_rps"] / unbatched[top]["throughput_rps"],
    }
    result["goal_overhead_met"] = result["overhead_p50_c1"] < GOAL_OVERHEAD_C1
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2))

    print("| setup | concurrency | p50 ms | p95 ms | p99 ms | req/s |\n|---|---|---|---|---|---|")
    for name, s in (("in-process, before", floor_before), ("in-process, after", floor_after)):
        print(f"| {name} | 1 | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {s['throughput_rps']:.1f} |")
    for name, runs in (("serve, batching on", batched), ("serve, batching off", unbatched)):
        for c, s in runs.items():
            print(f"| {name} | {c} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | "
                  f"{s['throughput_rps']:.1f} |")
    print(f"overhead p50 at c={concurrencies[0]}: {result['overhead_p50_c1']:.2f}x (goal < {GOAL_OVERHEAD_C1}x); "
          f"batching gain at c={top}: {result['batching_throughput_gain']:.2f}x; written {options.out}")


if __name__ == "__main__":
    main()
