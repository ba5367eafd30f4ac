"""Offline batch routing: stream a query file through a Ray Data actor pool of encoder + router head.

One library function, `route_queries`, behind both `jobs/batch_route.py` and `ray-router route`.
The driver streams the input (Parquet, JSONL or CSV; a file or a folder, local or cloud URI) in
record batches, gives every row its query id (the id column, or sha256(prompt) prefixes with
"-2", "-3", ... on repeats, as `ray-router data import table` does), skips the ids the output
folder already holds and writes the rest, length-sorted per file, to a queue folder. Ray Data reads
the queue and streams it (with backpressure) through `RouteWorker` actors that encode the prompts
and apply the router and the policy. The decisions stream back and are written as atomic Parquet
shards, so an interrupted run resumes where it stopped; a manifest and a summary end a complete run.
Memory stays flat in the number of rows: the driver holds one queue file's rows and the query ids.

Output folder (local path or cloud URI):
    run.json                  router id, policy and input columns; a rerun with others is refused
    queue/part-*.parquet      query_id, prompt of the queries still to route (rebuilt by each run, removed at the end)
    shards/part-*.parquet     query_id, target, fallbacks (list<string>), proba:<t>, expected_cost_usd:<t>
    manifest.json             rows, sha256 of the query ids, shards (written when every query is routed)
    summary.json              rows, share per target, expected cost vs always the most expensive target
"""

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
from ray.data.block import BlockMetadata
from tqdm import tqdm

from ray_router.data import storage
from ray_router.model.bundle import Router
from ray_router.errors import UserError
from ray_router.features.extraction import default_concurrency
from ray_router.features.store import ids_hash
from ray_router.data.importers.table import next_prompt_id
from ray_router.router import check_encoder, decide, encoder_for
from ray_router.policy.policies import PolicyConfig, allowed_mask
from ray_router.resources import DEFAULT_ACTOR_CPUS, cluster_gpus, ensure_ray, worker_torch_threads

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
SHARD_DIR = "shards"
QUEUE_DIR = "queue"
SORT_WINDOW_ROWS = 4096
READ_CPUS = 0.1  # reading the queue is light; a whole CPU per read task would starve small nodes
FORMAT_VERSION = 1
PROBA_PREFIX = "proba:"
COST_PREFIX = "expected_cost_usd:"
INPUT_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


class RouteWorker:
    """Ray Data callable class: the router's encoder and head in one actor, routing batches of prompts."""

    def __init__(self, router: Router, policy: dict, device: str = "cpu", torch_threads: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.router = router
        self.policy = PolicyConfig.model_validate(policy)
        self.encoder = encoder_for(router, device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = batch.column("prompt").to_pylist()
        features = self.encoder.encode(prompts, batch_size=len(prompts))
        decisions = decide(self.router, features, prompts, self.policy)
        return decisions_table(batch.column("query_id").to_pylist(), decisions)


def decisions_table(query_ids: list[str], decisions) -> pa.Table:
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
class RoutingSummary:
    """Rows routed, share of rows per target, and expected cost against always the most expensive target."""

    rows: int
    share: dict[str, float]
    expected_cost_usd: float
    most_expensive_target: str
    most_expensive_cost_usd: float
    cost_savings: float


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
    policy: PolicyConfig | dict | None = None,
    *,
    prompt_col: str = "prompt",
    id_col: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    concurrency: int | None = None,
    num_gpus_per_worker: float | None = None,
    cpus_per_worker: float = DEFAULT_ACTOR_CPUS,
    shard_rows: int = 512,
    ray_address: str | None = None,
) -> BatchRoutingResult:
    """Route the first `limit` (default all) queries of `input` with the router `bundle` into `out`.

    `policy`: a PolicyConfig, or a dict of policy fields laid over the bundle's default policy (the
    default's parameters are kept only when `kind` is absent or the same), or None for the default.
    Reruns into the same `out` route only the queries it does not hold yet; a folder written with
    another router, policy or input columns is refused.
    """
    if batch_size < 1 or shard_rows < 1:
        raise UserError("--batch-size and shard size must be >= 1")
    if limit is not None and limit < 1:
        raise UserError("--limit must be >= 1")
    router = Router.load(bundle)
    policy = resolve_policy(router, policy)
    allowed_mask(router.targets, policy.allowed)
    _open_input(input, prompt_col, id_col)  # fails early on a missing file or column
    ensure_ray(ray_address)
    num_gpus_per_worker = (1.0 if cluster_gpus() else 0.0) if num_gpus_per_worker is None else num_gpus_per_worker
    device = "cuda" if num_gpus_per_worker > 0 else "cpu"
    check_encoder(router, device)  # a schema mismatch is a UserError here, not an actor failure
    run = {
        "format_version": FORMAT_VERSION,
        "router_id": router_id(router),
        "targets": router.targets,
        "policy": policy.model_dump(mode="json"),
        "prompt_col": prompt_col,
        "id_col": id_col,
    }
    _open_output(out, run)

    done = stored_query_ids(out)
    queue = storage.join(out, QUEUE_DIR)
    query_ids, computed = write_queue(input, queue, prompt_col, id_col, limit, done, rows_per_file=batch_size * 4)
    extra = done - query_ids
    if extra:
        raise UserError(
            f"{out} holds decisions for {len(extra)} queries that are not in {input} (e.g. {sorted(extra)[:3]}); "
            "use a new --out folder"
        )
    if computed:
        workers = concurrency or default_concurrency(num_gpus_per_worker, cpus_per_worker)
        _run_pipeline(router, policy, queue, out, device=device, total=computed, workers=workers, batch_size=batch_size,
                      num_gpus_per_worker=num_gpus_per_worker, cpus_per_worker=cpus_per_worker,
                      shard_rows=shard_rows)
    manifest = _finalize(out, query_ids)
    storage.delete_dir(queue)
    summary = summarize(out, router.targets)
    storage.write_json_atomic(storage.join(out, SUMMARY_FILE), asdict(summary))
    return BatchRoutingResult(computed=computed, already_done=len(query_ids) - computed, manifest=manifest,
                              summary=summary)


def resolve_policy(router: Router, policy: PolicyConfig | dict | None) -> PolicyConfig:
    """The policy to apply: `policy` itself, or its fields over the bundle's default policy."""
    if isinstance(policy, PolicyConfig):
        return policy
    default = dict(router.manifest.default_policy)
    values = dict(policy or {})
    if values.get("kind", default.get("kind")) != default.get("kind"):
        default = {}
    if values.get("kind") == "budget" and "lam" not in values:
        default.pop("lam", None)  # a budget lambda must be fitted on validation, never the default's
    return PolicyConfig.from_user(**{**default, **values})


def router_id(router: Router) -> str:
    """sha256 prefix of the router's manifest: identifies the bundle a decision folder was written with."""
    return hashlib.sha256(router.manifest.model_dump_json().encode()).hexdigest()[:16]


def stored_query_ids(out: str) -> set[str]:
    """Every query_id that a complete decision shard in `out` already holds."""
    done: set[str] = set()
    for shard in storage.list_files(storage.join(out, SHARD_DIR), suffix=".parquet"):
        done.update(storage.read_parquet(shard, columns=["query_id"]).column(0).to_pylist())
    return done


def iter_queries(input: str, prompt_col: str = "prompt", id_col: str | None = None,
                 rows_per_batch: int = 4096, seen_ids: set[str] | None = None) -> Iterator[pa.Table]:
    """Stream `input` as tables of (query_id, prompt), ids generated when `id_col` is None.

    Empty prompts and repeated ids raise UserError naming the file and row. `seen_ids` (default: a
    new set) receives every id yielded, so a caller that needs them does not keep a second set.
    """
    dataset = _open_input(input, prompt_col, id_col)
    columns = [prompt_col] + ([id_col] if id_col else [])
    seen_prompts: dict[str, int] = {}
    seen_ids = set() if seen_ids is None else seen_ids
    row = 0
    # Little readahead: the consumer is slower than the reader, and readahead would hold ~16 batches.
    for batch in dataset.to_batches(columns=columns, batch_size=rows_per_batch, batch_readahead=1,
                                    fragment_readahead=1, use_threads=False):
        if not batch.num_rows:
            continue
        prompts = pc.cast(batch.column(prompt_col), pa.string()).to_pylist()
        for i, prompt in enumerate(prompts):
            if prompt is None or not prompt.strip():
                raise UserError(f"{input}: row {row + i + 1}: empty prompt in column {prompt_col!r}")
        if id_col:
            ids = pc.cast(batch.column(id_col), pa.string()).to_pylist()
        else:
            ids = [next_prompt_id(p, seen_prompts) for p in prompts]
        for i, qid in enumerate(ids):
            if qid is None or not qid.strip():
                raise UserError(f"{input}: row {row + i + 1}: empty id in column {id_col!r}")
            if qid in seen_ids:
                raise UserError(f"{input}: row {row + i + 1}: id {qid!r} appears twice in column {id_col!r}")
            seen_ids.add(qid)
        row += batch.num_rows
        yield pa.table({"query_id": pa.array(ids, pa.string()), "prompt": pa.array(prompts, pa.string())})


def _open_input(input: str, prompt_col: str, id_col: str | None) -> pads.Dataset:
    if not storage.exists(input):
        raise UserError(f"{input}: no such file or folder")
    fs, path = storage.resolve(input)
    files = storage.list_files(input) if fs.get_file_info(path).type == pafs.FileType.Directory else [input]
    suffixes = {os.path.splitext(f)[1].lower() for f in files if not os.path.basename(f).startswith((".", "_"))}
    formats = {INPUT_FORMATS.get(s) for s in suffixes}
    if len(formats) != 1 or None in formats:
        raise UserError(f"{input}: expected .parquet, .jsonl or .csv files, found {sorted(suffixes) or 'none'}")
    fmt = formats.pop()
    if fmt == "csv":
        types = {c: pa.string() for c in (prompt_col, id_col) if c}
        fmt = pads.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types=types))
    try:
        dataset = pads.dataset(path, filesystem=fs, format=fmt, exclude_invalid_files=False)
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"{input}: cannot read as {INPUT_FORMATS.get(suffixes.pop())} ({err})") from None
    missing = [c for c in (prompt_col, id_col) if c and c not in dataset.schema.names]
    if missing:
        raise UserError(f"{input}: no column {missing[0]!r}; columns are {', '.join(dataset.schema.names)}")
    return dataset


def write_queue(input: str, queue: str, prompt_col: str, id_col: str | None, limit: int | None,
                done: set[str], rows_per_file: int) -> tuple[set[str], int]:
    """Stream the queries not in `done` into small Parquet files under `queue`; returns every query id
    and the number of queries queued.

    Each file is one Ray Data block (a few batches), so the actor pool has work to share; rows are
    sorted by prompt length within windows of SORT_WINDOW_ROWS, so that consecutive batches pad
    little. The driver holds one window's rows (and the query ids), whatever the size of `input`.
    """
    storage.delete_dir(queue)
    query_ids: set[str] = set()
    done_ids = pa.array(sorted(done), pa.string())
    pending: list[pa.Table] = []
    queued = files = 0
    remaining = limit

    def flush() -> None:
        nonlocal pending, queued, files
        table = pa.concat_tables(pending)
        pending = []
        order = np.argsort(pc.utf8_length(table.column("prompt")).to_numpy(), kind="stable")
        table = table.take(pa.array(order))
        for start in range(0, len(table), rows_per_file):
            storage.write_parquet_atomic(table.slice(start, rows_per_file),
                                         storage.join(queue, f"part-{files:08d}.parquet"))
            files += 1
        queued += len(table)

    for table in iter_queries(input, prompt_col, id_col, rows_per_batch=SORT_WINDOW_ROWS, seen_ids=query_ids):
        if remaining is not None:
            query_ids.difference_update(table.column("query_id").to_pylist()[remaining:])  # past the limit
            table = table.slice(0, remaining)
            remaining -= len(table)
        pending.append(table.filter(pc.invert(pc.is_in(table.column("query_id"), value_set=done_ids))))
        if sum(len(t) for t in pending) >= SORT_WINDOW_ROWS:
            flush()
        if remaining == 0:
            break
    if sum(len(t) for t in pending):
        flush()
    return query_ids, queued


class QueueDatasource(ray.data.Datasource):
    """The queue folder as a Ray Data source: one read task (and block) per queue file.

    `read_parquet` merges small files into one block, which would give the whole queue to one actor.
    """

    def __init__(self, files: list[str]):
        super().__init__()
        self.files = files

    def estimate_inmemory_data_size(self) -> None:
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None) -> list[ray.data.ReadTask]:
        return [
            ray.data.ReadTask(lambda file=file: [storage.read_parquet(file)],
                              BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(file,)),
                              per_task_row_limit=per_task_row_limit)
            for file in self.files
        ]


def _read_queue(queue: str) -> ray.data.Dataset:
    """The queue as a Ray Data dataset; a local queue is read on this node (other nodes cannot see it)."""
    fs, _ = storage.resolve(queue)
    resources = None
    if isinstance(fs, pafs.LocalFileSystem):
        resources = {f"node:{ray.util.get_node_ip_address()}": 0.001}
    source = QueueDatasource(storage.list_files(queue, suffix=".parquet"))
    return ray.data.read_datasource(source, num_cpus=READ_CPUS, resources=resources)


def _run_pipeline(router, policy, queue, out, *, device, total, workers, batch_size, num_gpus_per_worker, cpus_per_worker,
                  shard_rows) -> None:
    threads = worker_torch_threads(workers, num_gpus_per_worker)
    decisions = _read_queue(queue).map_batches(
        RouteWorker,
        fn_constructor_kwargs={"router": router, "policy": policy.model_dump(mode="json"),
                               "device": device, "torch_threads": threads},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=num_gpus_per_worker,
    )
    buffer: list[pa.Table] = []
    with tqdm(total=total, unit="query", desc="routing", disable=None) as progress:
        for batch in decisions.iter_batches(batch_size=None, batch_format="pyarrow"):
            buffer.append(batch)
            progress.update(len(batch))
            if sum(len(b) for b in buffer) >= shard_rows:
                _write_shard(out, pa.concat_tables(buffer))
                buffer = []
    if buffer:
        _write_shard(out, pa.concat_tables(buffer))


def _write_shard(out: str, table: pa.Table) -> None:
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    storage.write_parquet_atomic(table, storage.join(out, SHARD_DIR, name))


def _open_output(out: str, run: dict) -> None:
    """Write run.json into a new folder, or check that an existing one was written by the same run."""
    uri = storage.join(out, RUN_FILE)
    if storage.exists(uri):
        existing = storage.read_json(uri)
        changed = [k for k in run if existing.get(k) != run[k]]
        if changed:
            raise UserError(
                f"{out} holds decisions of another run ({', '.join(f'{k}: {existing.get(k)!r} there vs {run[k]!r} now' for k in changed)}); "
                "use a new --out folder or the same settings"
            )
    else:
        storage.makedirs(out)
        storage.write_json_atomic(uri, run)


def _finalize(out: str, query_ids: set[str]) -> dict:
    """Check every query of the run is stored exactly once and write the manifest; returns it."""
    shards = storage.list_files(storage.join(out, SHARD_DIR), suffix=".parquet")
    stored: list[str] = []
    for shard in shards:
        stored.extend(storage.read_parquet(shard, columns=["query_id"]).column(0).to_pylist())
    if len(stored) != len(set(stored)):
        raise RuntimeError(f"{out}: {len(stored) - len(set(stored))} query_ids stored twice")
    missing = query_ids - set(stored)
    if missing:
        raise RuntimeError(f"{len(missing)} queries were not routed (e.g. {sorted(missing)[:3]})")
    manifest = {
        "format_version": FORMAT_VERSION,
        "rows": len(stored),
        "query_ids_sha256": ids_hash(stored),
        "shards": [s.rsplit("/", 1)[1] for s in shards],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_json_atomic(storage.join(out, MANIFEST_FILE), manifest)
    return manifest


def summarize(out: str, targets: list[str]) -> RoutingSummary:
    """Summary of a decision folder, read shard by shard (memory flat)."""
    counts = dict.fromkeys(targets, 0)
    routed_cost = 0.0
    cost_per_target = np.zeros(len(targets))
    rows = 0
    cost_columns = [COST_PREFIX + t for t in targets]
    for shard in storage.list_files(storage.join(out, SHARD_DIR), suffix=".parquet"):
        table = storage.read_parquet(shard, columns=["target", *cost_columns])
        chosen = table.column("target").to_pylist()
        costs = np.column_stack([table.column(c).to_numpy() for c in cost_columns])
        index = np.array([targets.index(t) for t in chosen], dtype=int)
        routed_cost += float(costs[np.arange(len(chosen)), index].sum())
        cost_per_target += costs.sum(axis=0)
        for t in chosen:
            counts[t] += 1
        rows += len(chosen)
    priciest = int(np.argmax(cost_per_target))
    most_expensive = float(cost_per_target[priciest])
    return RoutingSummary(
        rows=rows,
        share={t: (c / rows if rows else 0.0) for t, c in counts.items()},
        expected_cost_usd=routed_cost,
        most_expensive_target=targets[priciest],
        most_expensive_cost_usd=most_expensive,
        cost_savings=1.0 - routed_cost / most_expensive if most_expensive > 0 else 0.0,
    )


def format_summary(summary: RoutingSummary) -> str:
    """The summary as a few lines of text for the terminal."""
    lines = [f"{summary.rows} queries routed"]
    width = max(len(t) for t in summary.share)
    for target, share in sorted(summary.share.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {target:<{width}}  {share:7.2%}")
    lines.append(
        f"expected cost ${summary.expected_cost_usd:.4f} vs ${summary.most_expensive_cost_usd:.4f} always "
        f"{summary.most_expensive_target} (savings {summary.cost_savings:.1%})"
    )
    return "\n".join(lines)
