"""Offline batch routing: a query file through a Ray Data actor pool of encoder + router head, as the
resumable sharded job (ray_router.sharded_job).

One library function, `route_queries`, behind both `jobs/batch_route.py` and `ray-router route`. The
driver streams the input (batch/inputs.py), skips the query ids the output folder already holds and
queues the rest (batch/queue.py); `RouteWorker` actors encode the prompts and apply the router and the
policy; the decisions stream back into shards; a manifest and a summary (batch/summary.py) end a complete
run. Memory stays flat in the number of rows: the driver holds one queue window's rows and the query ids.

Output folder (local path or cloud URI):
    run.json                  router id, policy and input columns; a rerun with others is refused
    queue/part-*.parquet      query_id, prompt of the queries still to route (removed at the end)
    shards/part-*.parquet     query_id, target, fallbacks (list<string>), proba:<t>, expected_cost_usd:<t>
    manifest.json             rows, sha256 of the query ids, shards (written when every query is routed)
    summary.json              rows, share per target, expected cost vs always the most expensive target
"""

import hashlib
from dataclasses import asdict, dataclass

import pyarrow as pa

from ray_router.batch.inputs import open_input
from ray_router.batch.queue import read_queue, write_queue
from ray_router.batch.summary import COST_PREFIX, RoutingSummary, summarize
from ray_router.data import storage
from ray_router.errors import UserError
from ray_router.policy.config import PolicyConfig, merge_policy
from ray_router.policy.policies import allowed_mask
from ray_router.resources import WorkerResources, ensure_ray
from ray_router.router import Decisions, Policy, Router
from ray_router.sharded_job import ShardFolder, TorchWorker, check_job_options, run_job

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
QUEUE_DIR = "queue"
FORMAT_VERSION = 1
PROBA_PREFIX = "proba:"
FILE_BATCHES = 4  # batches per queue file (one Ray Data block each): the actor pool has work to share


class RouteWorker(TorchWorker):
    """The router's encoder and head in one actor, routing batches of prompts."""

    def __init__(self, router: Router, policy: dict, device: str, torch_threads: int | None):
        super().__init__(torch_threads)
        self.router = router
        self.policy = PolicyConfig.model_validate(policy)
        self.encoder = router.build_encoder(device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = batch.column("prompt").to_pylist()
        features = self.encoder.encode(prompts, batch_size=len(prompts))
        return decisions_table(batch.column("query_id").to_pylist(), self.router.decide(features, prompts, self.policy))


def decisions_table(query_ids: list[str], decisions: Decisions) -> pa.Table:
    """The decision columns for `query_ids`; `fallbacks` are the allowed targets after the chosen one."""
    columns = {
        "query_id": pa.array(query_ids, pa.string()),
        "target": pa.array(decisions.chosen(), pa.string()),
        "fallbacks": pa.array([row[1:] for row in decisions.fallback_names()], pa.list_(pa.string())),
    }
    for k, name in enumerate(decisions.targets):
        columns[PROBA_PREFIX + name] = pa.array(decisions.proba[:, k], pa.float64())
    for k, name in enumerate(decisions.targets):
        columns[COST_PREFIX + name] = pa.array(decisions.expected_cost[:, k], pa.float64())
    return pa.table(columns)


@dataclass
class BatchRoutingResult:
    """What a run did: rows routed now, rows already there, the manifest and the summary."""

    computed: int
    already_done: int
    manifest: dict
    summary: RoutingSummary


def route_queries(
    bundle: str,
    input: str,
    out: str,
    policy: Policy = None,
    *,
    prompt_col: str = "prompt",
    id_col: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    shard_rows: int = 512,
    resources: WorkerResources | None = None,
    ray_address: str | None = None,
) -> BatchRoutingResult:
    """Route the first `limit` (default all) queries of `input` with the router `bundle` into `out`.

    `policy`: a PolicyConfig, or policy fields laid over the bundle's default policy (see merge_policy),
    or None for the default. Reruns into the same `out` route only the queries it does not hold yet; a
    folder written with another router, policy or input columns is refused.
    """
    check_job_options(batch_size, shard_rows, limit)
    resources = resources or WorkerResources()
    router = Router.load(bundle)
    policy = merge_policy(router.default_policy, policy)
    allowed_mask(router.targets, policy.allowed)
    open_input(input, prompt_col, id_col)  # fails early on a missing file or column
    ensure_ray(ray_address)
    device = resources.device()
    router.check_encoders(device)  # a schema mismatch is a UserError here, not an actor failure
    run = {
        "format_version": FORMAT_VERSION,
        "router_id": router_id(router),
        "targets": router.targets,
        "policy": policy.model_dump(mode="json"),
        "prompt_col": prompt_col,
        "id_col": id_col,
    }
    _open_output(out, run)

    shards = ShardFolder(out)
    done = set(shards.stored_ids())
    queue = storage.join(out, QUEUE_DIR)
    query_ids, queued = write_queue(input, queue, prompt_col, id_col, limit, done,
                                    rows_per_file=batch_size * FILE_BATCHES)
    extra = done - query_ids
    if extra:
        raise UserError(
            f"{out} holds decisions for {len(extra)} queries that are not in {input} (e.g. {sorted(extra)[:3]}); "
            "use a new output folder"
        )
    if queued:
        run_job(read_queue(queue), RouteWorker,
                {"router": router, "policy": policy.model_dump(mode="json"), "device": device},
                shards, resources, batch_size=batch_size, shard_rows=shard_rows, total=queued,
                description="routing")
    manifest = shards.finalize(query_ids)
    storage.delete_dir(queue)
    summary = summarize(shards, router.targets)
    storage.write_json_atomic(storage.join(out, SUMMARY_FILE), asdict(summary))
    return BatchRoutingResult(computed=queued, already_done=len(query_ids) - queued, manifest=manifest,
                              summary=summary)


def router_id(router: Router) -> str:
    """sha256 prefix of the router's manifest: identifies the bundle a decision folder was written with."""
    return hashlib.sha256(router.manifest.model_dump_json().encode()).hexdigest()[:16]


def stored_query_ids(out: str) -> set[str]:
    """Every query_id that a complete decision shard in `out` already holds."""
    return set(ShardFolder(out).stored_ids())


def _open_output(out: str, run: dict) -> None:
    """Write run.json into a new folder, or check that an existing one was written by the same run."""
    uri = storage.join(out, RUN_FILE)
    if storage.exists(uri):
        existing = storage.read_json(uri)
        changed = [k for k in run if existing.get(k) != run[k]]
        if changed:
            raise UserError(
                f"{out} holds decisions of another run ({', '.join(f'{k}: {existing.get(k)!r} there vs {run[k]!r} now' for k in changed)}); "
                "use a new output folder or the same settings"
            )
    else:
        storage.makedirs(out)
        storage.write_json_atomic(uri, run)
