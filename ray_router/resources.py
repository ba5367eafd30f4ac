"""Connecting to Ray, and the resources of the workers every job starts (see RAY_NOTES: 2-core traps).

`WorkerResources` is the one way to say how many workers a job runs and what each one gets, with the
same four names everywhere: Ray Data actors (extraction, batch routing), Ray Train workers (training) and
Ray Serve replicas (serving).
"""

from __future__ import annotations

import os

import pydantic
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


class WorkerResources(pydantic.BaseModel):
    """How many workers a job runs and what each one gets.

    Unset values are worked out from the connected cluster by the job that uses them: `num_gpus` is 1 per
    worker when the cluster has GPUs (else 0), `num_workers` depends on the job (one per GPU, or a share of
    the CPUs), `torch_threads` is the node's cores shared among its CPU workers (Ray would give a
    fractional-CPU worker a single thread).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    num_workers: int | None = pydantic.Field(None, ge=1, description="workers (default: from the cluster)")
    num_cpus: float = pydantic.Field(DEFAULT_ACTOR_CPUS, gt=0, description="CPUs per worker (fractions allowed)")
    num_gpus: float | None = pydantic.Field(
        None, ge=0, description="GPUs per worker (default: 1 when the cluster has GPUs, else 0)")
    torch_threads: int | None = pydantic.Field(None, ge=1, description="torch CPU threads per worker")

    def gpus_per_worker(self) -> float:
        """`num_gpus`, or 1 when the connected cluster has GPUs and 0 when it has none."""
        if self.num_gpus is not None:
            return self.num_gpus
        return 1.0 if cluster_gpus() > 0 else 0.0

    def device(self) -> str:
        """"cuda" when each worker gets a GPU, else "cpu"."""
        return "cuda" if self.gpus_per_worker() > 0 else "cpu"

    def actor_pool_size(self) -> int:
        """`num_workers`, else one actor per GPU, or on CPU one per 2 cores (torch uses the cores it is given),
        leaving room for the read tasks."""
        if self.num_workers is not None:
            return self.num_workers
        gpus = self.gpus_per_worker()
        if gpus > 0:
            return max(1, int(cluster_gpus() / gpus))
        return max(1, min(int(cluster_cpus() // 2), int(cluster_cpus() / self.num_cpus) - 1))

    def threads_per_worker(self, workers: int) -> int | None:
        """`torch_threads`, else for CPU workers the node's cores shared among `workers` (None on GPU workers)."""
        if self.torch_threads is not None:
            return self.torch_threads
        return None if self.gpus_per_worker() > 0 else max(1, (os.cpu_count() or 1) // workers)


def set_torch_threads(threads: int | None) -> None:
    """Set this process's torch CPU threads (nothing when `threads` is None)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
