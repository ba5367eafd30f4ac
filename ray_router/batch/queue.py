"""The queue of a batch-routing run: the queries still to route, as small length-sorted Parquet files that
Ray Data reads one block per file.

The driver streams the input into OUT/queue/ (rebuilt by each run, removed when the run is complete), so
it holds one sort window of rows whatever the size of the input; Ray Data then streams the files through
the actor pool with its backpressure.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
from ray.data.block import BlockMetadata

from ray_router.batch.inputs import iter_queries
from ray_router.data import storage

SORT_WINDOW_ROWS = 4096
READ_CPUS = 0.1  # reading the queue is light; a whole CPU per read task would starve small nodes


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


def read_queue(queue: str) -> ray.data.Dataset:
    """The queue as a Ray Data dataset; a local queue is read on this node (other nodes cannot see it)."""
    fs, _ = storage.resolve(queue)
    resources = None
    if isinstance(fs, pafs.LocalFileSystem):
        resources = {f"node:{ray.util.get_node_ip_address()}": 0.001}
    source = QueueDatasource(storage.list_files(queue, suffix=".parquet"))
    return ray.data.read_datasource(source, num_cpus=READ_CPUS, resources=resources)
