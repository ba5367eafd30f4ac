"""Faults in the sharded jobs: a worker actor killed mid-run, the driver killed mid-run and the job run again.
Whatever happens, the output holds every query exactly once and finished shards are never recomputed. And a
training run whose driver is killed mid-way resumes from its checkpoint to the bundle an uninterrupted run writes."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.numpy import load_file

from ray_router import Router
from ray_router.data.routing_dataset import RoutingDataset
from ray_router.features.extraction import extract_features
from ray_router.features.feature_set import FeatureSet
from ray_router.features.schema import EncoderConfig
from ray_router.model.router_training import RouterTrainConfig, train_router
from ray_router.model.training import MEMBER_FILE_GLOB, Member

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


def _kill_session(session: int) -> None:
    """SIGKILL every process of `session`: a driver started with start_new_session=True and the local Ray cluster
    it started. Ray puts each worker in a process group of its own, so killing the driver's group alone would
    leave the Ray Train controller and workers training (and checkpointing) for a while."""
    for _ in range(100):
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, _ppid, _pgrp, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
            except (OSError, IndexError):  # gone meanwhile
                continue
            if int(sid) == session and state not in "ZX":  # zombies are dead already
                alive.append(int(stat.parent.name))
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"processes of session {session} survive SIGKILL: {alive}")


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
        _kill_session(driver.pid)  # the driver and its whole Ray cluster, as when its machine dies
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
    # the GCS actor table of this driver's cluster (no dashboard needed)
    from ray._private import state

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


# A small, fully reproducible ensemble: 6 seeds x 10 epochs on 2 Ray Train workers reporting every epoch, so a
# checkpoint follows each round of finished members (2, 4, then all 6): the test kills the driver after the first.
TRAIN_CONFIG = {
    "pca_k": 16, "blocks": "all-layers", "calibrate": False,
    "trainer": {"hidden": [32, 16], "dropout": [0.1, 0.1], "batch_size": 64, "max_epochs": 10, "patience": 10,
                "n_seeds": 6, "keep_best": 3},
    "run": {"num_workers": 2, "report_interval_s": 0},
}


def _train_config(storage: Path) -> dict:
    return {**TRAIN_CONFIG, "run": {**TRAIN_CONFIG["run"], "storage_path": str(storage)}}


def _latest_checkpoint(storage: Path, run: str = "*") -> Path | None:
    """The checkpoint folder that the snapshot of the Ray Train run folder `run` under `storage` names as the latest
    (None: none yet); by default of the first run folder found (a train command makes one per fit: the head's,
    then one per policy fold)."""
    for snapshot in storage.glob(f"{run}/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        except (ValueError, KeyError):  # being written
            return None
        return snapshot.parent / latest["checkpoint_dir_name"] if latest else None
    return None


def _members(checkpoint: Path | None) -> dict[int, Member]:
    """The ensemble members a checkpoint holds, by seed."""
    paths = sorted(checkpoint.glob(MEMBER_FILE_GLOB)) if checkpoint else []
    return {member.seed_index: member for member in map(Member.load, paths)}


def test_training_resumes_after_a_killed_driver_to_the_same_bundle(small_routerbench, small_features, ray_cluster,
                                                                  tmp_path):
    n_seeds = TRAIN_CONFIG["trainer"]["n_seeds"]
    storage, bundle, config_path = tmp_path / "train-A", tmp_path / "router-A", tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(_train_config(storage)))
    command = [str(RAY_ROUTER), "train", "--data", str(small_routerbench), "--features", str(small_features),
               "--out", str(bundle), "--config", str(config_path)]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a private cluster for the killed driver
    driver = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not _members(_latest_checkpoint(storage)):  # kill it once a checkpoint holds a finished member
            assert driver.poll() is None, "the training ended before its first checkpoint"
            assert time.time() < deadline, f"no checkpoint under {storage} after 240 s"
            time.sleep(0.05)
    finally:
        _kill_session(driver.pid)  # the driver and its whole Ray cluster, as when its machine dies
        driver.wait()
    run = _latest_checkpoint(storage).parent.name  # the head's run, the only one started before the kill
    before = _members(_latest_checkpoint(storage, run))  # what the rerun resumes from (a later one may have come)
    assert 1 <= len(before) < n_seeds and not bundle.exists()  # killed mid-way

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "A run snapshot was found" in done.stderr  # Ray Train's log: it resumed the run, not a fresh one
    after = _members(_latest_checkpoint(storage, run))
    assert sorted(after) == list(range(n_seeds))
    for seed, member in before.items():  # loaded from the killed run's checkpoint, not trained again
        assert after[seed].trained_in == member.trained_in
        assert all(torch.equal(after[seed].state_dict[k], v) for k, v in member.state_dict.items())
    rerun_ids = {after[s].trained_in for s in after if s not in before}  # only the missing seeds were trained
    assert len(rerun_ids) == 1 and rerun_ids.isdisjoint(m.trained_in for m in before.values())

    reference = tmp_path / "router-B"  # the same training, never interrupted, in its own run folder
    uninterrupted = train_router(str(small_routerbench), str(small_features), str(reference), use_ray=True,
                                 config=RouterTrainConfig.model_validate(_train_config(tmp_path / "train-B")))
    assert uninterrupted.model.ensemble_.resumed == []

    resumed, expected = Router.load(bundle), Router.load(reference)
    tensors, expected_tensors = load_file(bundle / "head.safetensors"), load_file(reference / "head.safetensors")
    assert sorted(tensors) == sorted(expected_tensors)
    assert all(np.array_equal(tensors[name], expected_tensors[name]) for name in expected_tensors)  # bit for bit
    assert resumed.manifest.validation == expected.manifest.validation  # member losses, kept seeds, holdout scores
    features = FeatureSet.open(str(small_features)).load(RoutingDataset.read(small_routerbench).query_ids[::5],
                                                          expected.required_keys)
    np.testing.assert_array_equal(resumed.predict_proba(features), expected.predict_proba(features))
