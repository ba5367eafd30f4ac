"""Shared fixtures: one local Ray cluster per test session, and the real data beside the repo."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RAY_ROUTER_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real RouterBench and MMLU-Pro files); skips when it is absent."""
    if not (SHARED_DATA / "routerbench").is_dir():
        pytest.skip(f"real routing data not found at {SHARED_DATA} (clone the repo beside ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """One private local Ray cluster for the whole session (2 CPUs, small object store)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def routerbench_data(shared_data, tmp_path_factory) -> Path:
    """The real RouterBench subset imported once per session (3,164 queries x 11 targets)."""
    from ray_router.data.importers.routerbench import import_routerbench

    path = tmp_path_factory.mktemp("data") / "routerbench.parquet"
    import_routerbench(shared_data / "routerbench").write(path)
    return path


@pytest.fixture(scope="session")
def small_routerbench(routerbench_data, tmp_path_factory) -> Path:
    """A deterministic slice of real RouterBench queries (all three tasks): 240 train + 60 test."""
    import numpy as np

    from ray_router.data.routing_dataset import RoutingDataset

    dataset = RoutingDataset.read(routerbench_data)
    splits = dataset.splits
    train = np.flatnonzero(splits == "train")[::9][:240]
    test = np.flatnonzero(splits == "test")[::15][:60]
    path = tmp_path_factory.mktemp("data") / "routerbench-small.parquet"
    dataset.select(rows=np.concatenate([train, test])).write(path)
    return path


# Features of the small slice: SmolLM2 truncated to 3 blocks, prompts cut to their last 128 tokens.
SMALL_LAYERS = [1, 2, 3]
SMALL_MAX_TOKENS = 128


@pytest.fixture(scope="session")
def small_features(small_routerbench, ray_cluster, tmp_path_factory) -> Path:
    """Prefill features of `small_routerbench` from the real Ray Data extraction job."""
    from ray_router.features.extraction import extract_features
    from ray_router.features.schema import EncoderConfig

    out = tmp_path_factory.mktemp("features") / "smollm2"
    config = EncoderConfig(encoder="smollm2-135m", layers=SMALL_LAYERS, poolings=["last", "mean"],
                           max_tokens=SMALL_MAX_TOKENS)
    extract_features(str(small_routerbench), config, str(out), batch_size=16)
    return out


GEMMA_LAYERS = [1, 2]


@pytest.fixture(scope="session")
def small_gemma_features(small_routerbench, ray_cluster, tmp_path_factory) -> Path:
    """Gemma 3 270M features of `small_routerbench` (a second encoder, truncated to 2 of its 18 blocks)."""
    from ray_router.features.extraction import extract_features
    from ray_router.features.schema import EncoderConfig

    out = tmp_path_factory.mktemp("features") / "gemma"
    config = EncoderConfig(encoder="gemma3-270m", layers=GEMMA_LAYERS, poolings=["last", "mean"],
                           max_tokens=SMALL_MAX_TOKENS)
    extract_features(str(small_routerbench), config, str(out), batch_size=16)
    return out
