"""Local folders and pyarrow URIs (s3://, gs://, file://, ...): the storage every sweep folder lives on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.results import write_atomic

URI_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file", "mock")


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, absolute path) for a local folder or a pyarrow URI."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def absolute(path: str) -> str:
    """A local folder as an absolute path (trials run in other working directories); a URI as it is."""
    return path if is_uri(path) else filesystem(path)[1]


def parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if is_uri(path) else str(Path(filesystem(path)[1]).parent)


def read_bytes(directory: str, name: str) -> bytes | None:
    """`directory/name`, or None if there is no such file."""
    fs, root = filesystem(directory)
    try:
        with fs.open_input_stream(f"{root}/{name}") as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def write_bytes(directory: str, name: str, data: bytes) -> None:
    """One object (one PUT on an object store): readers see the old object or the whole new one."""
    fs, root = filesystem(directory)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as f:
        f.write(data)


def read_json(directory: str, name: str) -> dict[str, Any] | None:
    data = read_bytes(directory, name)
    return None if data is None else json.loads(data)


def exists(directory: str, name: str) -> bool:
    fs, root = filesystem(directory)
    return fs.get_file_info(f"{root}/{name}").type == pafs.FileType.File


def write_table(table: pa.Table, directory: str, name: str) -> None:
    """Replace `directory/name` atomically: rename on a local disk; object stores publish a whole object."""
    fs, root = filesystem(directory)
    if isinstance(fs, pafs.LocalFileSystem):
        write_atomic(table, Path(root) / name)
    else:
        with fs.open_output_stream(f"{root}/{name}") as f:
            pq.write_table(table, f)


def read_table(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> pa.Table | None:
    """A Parquet table on `fs`, or None if it is missing or cannot be read."""
    try:
        with fs.open_input_file(path) as f:
            return pq.read_table(f, schema=schema)
    except (OSError, ValueError, pa.ArrowInvalid):
        return None


def rows(fs: pafs.FileSystem, path: str) -> int:
    """Rows of a Parquet table on `fs` (0 if it is missing or cannot be read)."""
    try:
        with fs.open_input_file(path) as f:
            return pq.read_metadata(f).num_rows
    except (OSError, ValueError, pa.ArrowInvalid):
        return 0
