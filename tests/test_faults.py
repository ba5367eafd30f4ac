"""Faults in the sharded jobs: a worker actor killed mid-run, the driver killed mid-run and the job run again.
Whatever happens, the output holds every query exactly once and finished shards are never recomputed."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ray_router.data.routing_dataset import RoutingDataset
from ray_router.features.extraction import extract_features
from ray_router.features.schema import EncoderConfig

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

RAY_ROUTER = Path(sys.executable).with_name("ray-router")
CONFIG = EncoderConfig(encoder="smollm2-135m", layers=[2], max_tokens=64)


def _wait_for_shards(folder: Path, count: int, still_running, timeout_s: float = 240) -> list[Path]:
    """The shard files once `count` of them exist (fails when the job ends first or time runs out)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        shards = sorted((folder / "shards").glob("part-*.parquet"))
        if len(shards) >= count:
            return shards
        assert still_running(), "the job ended before it wrote the shards the test waits for"
        time.sleep(0.2)
    raise AssertionError(f"no {count} shards in {folder} after {timeout_s} s")


def _stored_ids(folder: Path) -> list[str]:
    return [q for shard in sorted((folder / "shards").glob("part-*.parquet"))
            for q in pq.read_table(shard, columns=["query_id"]).column(0).to_pylist()]


def _unchanged(shards: list[Path]) -> dict[str, int]:
    return {shard.name: shard.stat().st_mtime_ns for shard in shards}


def test_extraction_survives_a_killed_driver(small_routerbench, tmp_path):
    out = tmp_path / "features"
    command = [str(RAY_ROUTER), "extract", "--data", str(small_routerbench), "--encoder", CONFIG.encoder,
               "--layers", "2", "--max-tokens", "64", "--batch-size", "4", "--shard-rows", "16", "--out", str(out)]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a private cluster for the killed driver
    driver = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        finished = _unchanged(_wait_for_shards(out, 2, lambda: driver.poll() is None))
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert not (out / "manifest.json").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = _stored_ids(out)
    assert sorted(ids) == sorted(RoutingDataset.read(small_routerbench).query_ids)  # every query exactly once
    after = {shard.name: shard.stat().st_mtime_ns for shard in (out / "shards").glob("part-*.parquet")}
    assert {name: after.get(name) for name in finished} == finished  # finished shards kept, not recomputed
    kept_rows = sum(pq.read_metadata(out / "shards" / name).num_rows for name in finished)
    already = int(re.search(r"(\d+) already there", done.stdout).group(1))
    assert already >= kept_rows  # the rerun computed only what no shard held


def _kill_a_pool_actor(class_fragment: str) -> int:
    """SIGKILL the process of one live actor of the job's pool (as the kernel's OOM killer would); its pid."""
    from ray._private import state  # the GCS actor table of this driver's cluster (no dashboard needed)

    deadline = time.time() + 120
    while time.time() < deadline:
        alive = [a for a in state.actors().values()
                 if a["State"] == "ALIVE" and class_fragment in a["ActorClassName"] and a.get("Pid")]
        if alive:
            os.kill(alive[0]["Pid"], signal.SIGKILL)
            return alive[0]["Pid"]
        time.sleep(0.2)
    raise AssertionError(f"no live actor {class_fragment!r}")


def _run_killing_an_actor(job, folder: Path, class_fragment: str):
    """Run `job` in a thread, SIGKILL one pool actor once it has written a shard, and run `job` again if the
    first run failed; returns the shards written before the kill."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_capture(job)), daemon=True)
    thread.start()
    finished = _unchanged(_wait_for_shards(folder, 1, thread.is_alive))
    _kill_a_pool_actor(class_fragment)
    thread.join(timeout=420)
    assert not thread.is_alive(), "the job hung after its actor was killed"
    if isinstance(outcome["result"], Exception):  # the job may give up; a rerun resumes it
        job()
    return finished


def _capture(job):
    try:
        return job()
    except Exception as err:  # noqa: BLE001 - the test decides what a failed first run means
        return err


def test_extraction_survives_a_killed_worker(small_routerbench, ray_cluster, tmp_path):
    out = tmp_path / "features"

    def job():
        return extract_features(str(small_routerbench), CONFIG, str(out), batch_size=4, shard_rows=16)

    finished = _run_killing_an_actor(job, out, "EncoderWorker")
    assert sorted(_stored_ids(out)) == sorted(RoutingDataset.read(small_routerbench).query_ids)
    after = {shard.name: shard.stat().st_mtime_ns for shard in (out / "shards").glob("part-*.parquet")}
    assert {name: after.get(name) for name in finished} == finished
    assert (out / "manifest.json").exists()


def test_batch_routing_survives_a_killed_worker(small_routerbench, small_features, ray_cluster, tmp_path):
    from ray_router.batch.routing import route_queries
    from ray_router.model.router_training import RouterTrainConfig, train_router

    dataset = RoutingDataset.read(small_routerbench)
    bundle = tmp_path / "router"
    train_router(str(small_routerbench), str(small_features), str(bundle), use_ray=False,
                 blocks=dict.fromkeys(dataset.target_names, "smollm2-135m/L2_last"),
                 config=RouterTrainConfig.model_validate({"pca_k": 8, "trainer": {"n_seeds": 1, "keep_best": 1,
                                                                                    "max_epochs": 5}}))
    queries = tmp_path / "queries.parquet"
    pd.DataFrame({"qid": dataset.query_ids[:120], "text": dataset.prompts[:120]}).to_parquet(queries)
    out = tmp_path / "decisions"

    def job():
        return route_queries(str(bundle), str(queries), str(out), prompt_col="text", id_col="qid", batch_size=4,
                             shard_rows=8)

    finished = _run_killing_an_actor(job, out, "RouteWorker")
    assert sorted(_stored_ids(out)) == sorted(dataset.query_ids[:120])
    after = {shard.name: shard.stat().st_mtime_ns for shard in (out / "shards").glob("part-*.parquet")}
    assert {name: after.get(name) for name in finished} == finished
    assert (out / "manifest.json").exists() and not (out / "queue").exists()
