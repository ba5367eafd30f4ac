"""The query input of batch routing: Parquet, JSONL or CSV, a file or a folder, a local path or a cloud URI,
streamed in record batches as (query_id, prompt) tables.

Every row gets its query id: the id column, or, without one, sha256(prompt) prefixes with "-2", "-3", ...
on repeats, as `ray-router data import table` does.
"""

import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from ray_router.data import storage
from ray_router.data.importers.table import next_prompt_id
from ray_router.errors import UserError

INPUT_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def iter_queries(input: str, prompt_col: str = "prompt", id_col: str | None = None,
                 rows_per_batch: int = 4096, seen_ids: set[str] | None = None) -> Iterator[pa.Table]:
    """Stream `input` as tables of (query_id, prompt), ids generated when `id_col` is None.

    Empty prompts and repeated ids raise UserError naming the file and row. `seen_ids` (default: a
    new set) receives every id yielded, so a caller that needs them does not keep a second set.
    """
    dataset = open_input(input, prompt_col, id_col)
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


def open_input(input: str, prompt_col: str, id_col: str | None) -> pads.Dataset:
    """The query input as a pyarrow dataset; UserError for a missing file or column, or an unknown format."""
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
