"""Paths that may be local folders or cloud URIs (s3://, gs://, ...), with atomic writes.

On a real cluster, workers do not share the submitter's disk, so every job output goes through
pyarrow filesystems. Writes go to a temporary name first and are then moved into place, so an
interrupted run never leaves a file that looks complete.
"""

import json
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or a URI."""
    uri = os.fspath(uri)
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and URIs alike."""
    return "/".join([base.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def delete_dir(uri: str) -> None:
    """Remove a folder and everything in it; nothing happens when it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Full URIs/paths of the files directly in a folder ending with `suffix`, sorted by name."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
    return [join(os.fspath(uri), n) for n in names]


def _atomic(uri: str, write) -> None:
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
    try:
        write(fs, tmp)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` to `uri` so that readers see the old file or the whole new one, never a part."""

    def write(fs, tmp):
        with fs.open_output_stream(tmp) as out:
            out.write(data)

    _atomic(uri, write)


def write_json_atomic(uri: str, obj) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_parquet_atomic(table: pa.Table, uri: str) -> None:
    """Write a Parquet file atomically (temporary name, then move)."""
    _atomic(uri, lambda fs, tmp: pq.write_table(table, tmp, filesystem=fs))


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def read_parquet_schema(uri: str) -> pa.Schema:
    fs, path = resolve(uri)
    return pq.read_schema(path, filesystem=fs)
