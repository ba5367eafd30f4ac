"""Load benchmark: closed-loop load on `/v1/route` and `/v1/chat/completions`, Encoder autoscaling on.

On one private local Ray cluster, one Serve app (the bundle's targets all bound to a `local` SmolLM2
stand-in answering `--max-tokens` tokens; the Encoder autoscaled between `--min-replicas` and
`--max-replicas`), after a warm-up round of each endpoint: `--clients` httpx clients, each sending its next
request as soon as the last one answered, for `--duration` seconds on `/v1/route`, then as long on
`/v1/chat/completions` (`model: "router"`). Reports requests, errors (any non-200 or exception), throughput,
p50/p99 latency per `--window` of seconds, the running replicas of every deployment (`serve.status()`,
polled every second) and the RSS of every Serve replica process at start and end, with the bound
end <= start * MEMORY_FACTOR + MEMORY_SLACK_MB per replica (a replica added by autoscaling: from its first
sample once RUNNING). Writes a JSON and a plot; exits 1 on any error or a missed bound. See bench/README.md.

    .venv/bin/python bench/load.py --bundle build/router --data build/routerbench.parquet \
        [--duration 60] [--clients 8] [--window 10] [--out PATH] [--figure PATH]
"""

import argparse
import asyncio
import itertools
import json
import re
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import psutil
import ray
from ray import serve

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.router import Router
from ray_router.serving.app import build_app

# bench/extract.py (sets Ray's environment too) and bench/serve.py
from extract import load_average, machine
from serve import REQUEST_TIMEOUT_S, _free_port

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MEMORY_FACTOR = 1.2  # end RSS of a replica <= start RSS * 1.2 + 100 MB
MEMORY_SLACK_MB = 100
MB = 2**20
AUTOSCALED = "Encoder"  # the deployment with autoscaling (build_app takes it for the Encoder only)
ENDPOINTS = {"route": "/v1/route", "chat": "/v1/chat/completions"}
REPLICA_TITLE = re.compile(r"ray::ServeReplica:[^:\s]+:(?P<deployment>[^.\s]+)")


def app_args(bundle: str, options: argparse.Namespace) -> dict:
    """Serve args as in serve_configs/local-cpu.yaml: every target a local stand-in, the Encoder autoscaled."""
    standin = {"kind": "local", "model": "smollm2-135m", "max_new_tokens": options.max_tokens, "num_cpus": 0.25}
    autoscaling = {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                   "target_ongoing_requests": options.target_ongoing}
    return {"bundle": bundle,
            "encoder": {"num_cpus": 0.25, "max_batch_size": 16, "batch_wait_timeout_s": 0.005,
                        "autoscaling": autoscaling},
            "backends": {target: standin for target in Router.load(bundle).targets}}


def body(endpoint: str, prompt: str, max_tokens: int) -> dict:
    if endpoint == "route":
        return {"prompt": prompt}
    return {"model": "router", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}


def replica_processes() -> dict[int, str]:
    """PID -> deployment of the Serve replicas among this process's descendants (the private cluster only)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            match = REPLICA_TITLE.match(" ".join(child.cmdline()))
        except psutil.Error:
            continue
        if match:
            found[child.pid] = match["deployment"]
    return found


def replica_rss() -> dict[int, dict]:
    """PID -> {deployment, rss_mb} of every Serve replica process now."""
    rss = {}
    for pid, deployment in replica_processes().items():
        try:
            rss[pid] = {"deployment": deployment, "rss_mb": psutil.Process(pid).memory_info().rss / MB}
        except psutil.Error:
            pass
    return rss


def running_replicas(app: str = "router") -> dict[str, int]:
    """Deployment -> replicas in state RUNNING, from serve.status()."""
    deployments = serve.status().applications[app].deployments
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in deployments.items()}


class Sampler:
    """Every `period_s` while active: running replicas per deployment and the RSS of every replica process."""

    def __init__(self, period_s: float = 1.0):
        self.period_s, self.samples = period_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            replicas, rss = running_replicas(), replica_rss()
            processes = [e["deployment"] for e in rss.values()]
            steady = {pid: e for pid, e in rss.items()  # a replica still loading or stopping is not measured
                      if processes.count(e["deployment"]) == replicas.get(e["deployment"])}
            self.samples.append({"t_s": round(time.perf_counter() - self.start, 2), "replicas": replicas,
                                 "rss": steady})
            self._stop.wait(self.period_s)


async def closed_loop(url: str, endpoint: str, prompts: list[str], clients: int, duration_s: float,
                      max_tokens: int) -> tuple[list[dict], float]:
    """`clients` workers, each sending its next request as soon as the last one answered, until `duration_s`
    has passed (requests in flight then are finished and counted). Returns one record per request and the wall
    time from the first request to the last answer."""
    cycle = itertools.cycle(prompts)
    records: list[dict] = []

    async def worker(client: httpx.AsyncClient, start: float) -> None:
        while time.perf_counter() - start < duration_s:
            t = time.perf_counter()
            try:
                response = await client.post(url, json=body(endpoint, next(cycle), max_tokens))
                error = None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as err:
                error = f"{type(err).__name__}: {err}"
            done = time.perf_counter()
            records.append({"end_s": done - start, "latency_s": done - t, "error": error})

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client, start) for _ in range(clients)))
        return records, time.perf_counter() - start


async def warm_up(base: str, prompts: list[str], clients: int, max_tokens: int) -> None:
    """One concurrent round of `clients` requests on each endpoint; any failure stops the benchmark."""
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        for endpoint, path in ENDPOINTS.items():
            responses = await asyncio.gather(*(client.post(base + path, json=body(endpoint, p, max_tokens))
                                               for p in prompts[:clients]))
            for response in responses:
                response.raise_for_status()


def _percentiles(latencies_s: list[float]) -> dict:
    ms = np.array(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))} if len(ms) else {}


def summarize(records: list[dict], wall_s: float, duration_s: float, window_s: float, samples: list[dict],
              offset_s: float) -> dict:
    """Totals, per-window latency (by completion time; the answers after `duration_s` in the last window) and
    the replica counts seen during the phase."""
    ok = [r["latency_s"] for r in records if r["error"] is None]
    errors = [r["error"] for r in records if r["error"] is not None]
    count = max(1, int(np.ceil(duration_s / window_s)))
    windows = []
    for k in range(count):
        inside = [r for r in records if min(int(r["end_s"] // window_s), count - 1) == k]
        windows.append({"start_s": k * window_s, "requests": len(inside),
                        "errors": sum(r["error"] is not None for r in inside),
                        **_percentiles([r["latency_s"] for r in inside if r["error"] is None])})
    timeline = [{"t_s": round(s["t_s"] - offset_s, 2), **s["replicas"]} for s in samples
                if offset_s <= s["t_s"] <= offset_s + wall_s]
    seen = {name: [row[name] for row in timeline] for name in (timeline[0] if timeline else {}) if name != "t_s"}
    return {"requests": len(records), "errors": len(errors), "error_examples": sorted(set(errors))[:5],
            "wall_s": wall_s, "throughput_rps": len(records) / wall_s, **_percentiles(ok),
            "replicas_seen": {name: {"min": min(v), "max": max(v)} for name, v in seen.items()},
            "windows": windows, "replicas": timeline}


def memory_check(samples: list[dict]) -> dict:
    """Per replica process: its first and last RSS sample and whether last <= first * factor + slack."""
    first, last = {}, {}
    for sample in samples:
        for pid, entry in sample["rss"].items():
            first.setdefault(pid, entry)
            last[pid] = entry
    replicas = []
    for pid, start in first.items():
        end = last[pid]["rss_mb"]
        bound = start["rss_mb"] * MEMORY_FACTOR + MEMORY_SLACK_MB
        replicas.append({"pid": pid, "deployment": start["deployment"], "start_mb": start["rss_mb"],
                         "end_mb": end, "bound_mb": bound, "met": end <= bound,
                         "alive_at_end": pid in samples[-1]["rss"]})
    return {"bound": f"end <= start * {MEMORY_FACTOR} + {MEMORY_SLACK_MB} MB, per replica process",
            "start_total_mb": sum(e["rss_mb"] for e in samples[0]["rss"].values()),
            "end_total_mb": sum(e["rss_mb"] for e in samples[-1]["rss"].values()),
            "replicas": replicas, "met": all(r["met"] for r in replicas)}


def plot(phases: dict, path: str, clients: int) -> None:
    """p50/p99 per window for each endpoint, with the running replicas of the autoscaled Encoder on a second axis."""
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4), squeeze=False)
    for ax, (endpoint, phase) in zip(axes[0], phases.items()):
        windows = [w for w in phase["windows"] if "p50_ms" in w]
        mid = [w["start_s"] + phase["window_s"] / 2 for w in windows]
        ax.plot(mid, [w["p50_ms"] for w in windows], "o-", label="p50")
        ax.plot(mid, [w["p99_ms"] for w in windows], "s-", label="p99")
        ax.set(title=f"{ENDPOINTS[endpoint]}, {clients} clients", xlabel="time in phase (s)", ylabel="latency (ms)",
               ylim=(0, 1.15 * max([w["p99_ms"] for w in windows], default=1)))
        ax.grid(alpha=0.3)
        replicas = ax.twinx()
        timeline = phase["replicas"]
        replicas.step([row["t_s"] for row in timeline], [row[AUTOSCALED] for row in timeline], where="post",
                      color="tab:green", linestyle="--", label=f"{AUTOSCALED} replicas (running)")
        replicas.set(ylabel="running replicas", ylim=(0, phase["replicas_seen"][AUTOSCALED]["max"] + 1))
        replicas.yaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = (a + b for a, b in zip(ax.get_legend_handles_labels(), replicas.get_legend_handles_labels()))
        ax.legend(handles, labels, loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    here = Path(__file__).parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True, help="routing dataset: prompts are taken from its test split")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per endpoint")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window", type=float, default=10, help="seconds per latency window")
    parser.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each chat request")
    parser.add_argument("--min-replicas", type=int, default=1, help="Encoder autoscaling")
    parser.add_argument("--max-replicas", type=int, default=2, help="Encoder autoscaling")
    parser.add_argument("--target-ongoing", type=float, default=2, help="Encoder autoscaling target_ongoing_requests")
    parser.add_argument("--out", default=str(here / "results" / "load.json"))
    parser.add_argument("--figure", default=str(here / "figures" / "load-latency.png"))
    options = parser.parse_args()
    prompts = RoutingDataset.read(options.data).select(split="test").prompts
    when, load_at_start = datetime.now(timezone.utc), load_average()

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(app_args(options.bundle, options)), name="router", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        asyncio.run(warm_up(base, prompts, options.clients, options.max_tokens))
        phases = {}
        with Sampler() as sampler:
            for endpoint, path in ENDPOINTS.items():
                offset = time.perf_counter() - sampler.start
                records, wall = asyncio.run(closed_loop(base + path, endpoint, prompts, options.clients,
                                                        options.duration, options.max_tokens))
                phases[endpoint] = {"window_s": options.window,
                                    **summarize(records, wall, options.duration, options.window,
                                                sampler.samples, offset)}
    finally:
        serve.shutdown()
        ray.shutdown()

    memory = memory_check(sampler.samples)
    result = {"when": when.isoformat(timespec="seconds"), "machine": machine(), "load_average_start": load_at_start,
              "load_average_end": load_average(), "options": vars(options), "phases": phases, "memory": memory}
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2))
    plot(phases, options.figure, options.clients)

    print(f"| endpoint | clients | duration s | requests | errors | req/s | p50 ms | p99 ms | {AUTOSCALED} replicas "
          "min-max | other deployments |\n|---|---|---|---|---|---|---|---|---|---|")
    for endpoint, p in phases.items():
        seen = p["replicas_seen"]
        others = ", ".join(f"{name} {v['min']}-{v['max']}" for name, v in seen.items() if name != AUTOSCALED)
        print(f"| {ENDPOINTS[endpoint]} | {options.clients} | {p['wall_s']:.1f} | {p['requests']} | {p['errors']} | "
              f"{p['throughput_rps']:.2f} | {p.get('p50_ms', float('nan')):.0f} | "
              f"{p.get('p99_ms', float('nan')):.0f} | {seen[AUTOSCALED]['min']}-{seen[AUTOSCALED]['max']} | {others} |")
    for endpoint, p in phases.items():
        print(f"{endpoint} per {options.window:g} s window (start s: requests, p50/p99 ms): " + "; ".join(
            f"{w['start_s']:g}: {w['requests']}, {w.get('p50_ms', float('nan')):.0f}/{w.get('p99_ms', float('nan')):.0f}"
            for w in p["windows"]))
        for example in p["error_examples"]:
            print(f"  {endpoint} error: {example}")
    for r in memory["replicas"]:
        print(f"memory {r['deployment']} (pid {r['pid']}): {r['start_mb']:.0f} -> {r['end_mb']:.0f} MB "
              f"(bound {r['bound_mb']:.0f} MB: {'met' if r['met'] else 'MISSED'})")
    errors = sum(p["errors"] for p in phases.values())
    print(f"replica RSS total {memory['start_total_mb']:.0f} -> {memory['end_total_mb']:.0f} MB; memory bound "
          f"({memory['bound']}) {'met' if memory['met'] else 'MISSED'}; errors {errors}; "
          f"written {options.out}, {options.figure}")
    if errors or not memory["met"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
