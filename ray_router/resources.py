"""Connecting to Ray and sizing actors so that a 2-core laptop does not deadlock (see RAY_NOTES)."""

import os

import ray

# Fractional CPUs: Ray's default of 1 CPU per actor starves the read tasks on small nodes.
DEFAULT_ACTOR_CPUS = 0.5


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray once: to `address`, to the cluster this job runs in, or start a local one."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, log_to_driver=True, configure_logging=False)


def cluster_cpus() -> float:
    """CPUs the connected cluster has in total."""
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    """GPUs the connected cluster has in total (0 on a laptop)."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def worker_torch_threads(workers: int, num_gpus_per_worker: float) -> int | None:
    """Torch threads per CPU encoder actor: the node's cores shared among the pool (Ray would give one)."""
    return None if num_gpus_per_worker > 0 else max(1, (os.cpu_count() or 1) // workers)
