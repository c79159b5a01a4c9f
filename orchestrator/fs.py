"""Local folders and pyarrow URIs (s3://, gs://, file://, ...): the storage every sweep folder lives on."""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.config import UserError
from trainables.results import replacing, write_atomic

URI_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file", "mock")


# Where pyarrow's S3 filesystem (as boto3 and the AWS CLI) finds an S3-compatible store and its keys.
S3_VARIABLES = ("AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3; MinIO and other S3-compatible stores)",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
# URI parts pyarrow would take credentials from: s3://KEY:SECRET@bucket/..., ?access_key=...&secret_key=...
_CREDENTIAL_QUERY = {"access_key", "secret_key", "session_token"}


class StorageError(UserError):
    """Sweep storage that cannot be used as given (credentials in it, unreachable, access refused)."""


def is_uri(path: str) -> bool:
    return "://" in path


def credential_problem(path: str) -> str | None:
    """Why a storage URI must not be used as it is: it embeds credentials, which would be written to
    sweep.yaml, sweep.json, MLflow params and logs. The message never repeats them."""
    if not is_uri(path):
        return None
    scheme, rest = path.split("://", 1)
    location, _, query = rest.partition("?")
    # KEY:SECRET@bucket: a secret may hold '/', so the user part is everything before the last '@'
    if "@" not in location and not {k.lower() for k in urllib.parse.parse_qs(query)} & _CREDENTIAL_QUERY:
        return None
    shown = f"{scheme}://{location.rsplit('@', 1)[-1]}"
    return (f"the storage URI {shown} carries credentials (they would be stored in sweep.yaml, sweep.json and "
            f"MLflow): remove them and set {', '.join(S3_VARIABLES[1:3])} in the environment instead")


def check_storage(path: str, write: bool = True) -> None:
    """Fail in one line, before anything launches, where URI storage cannot be reached, refuses the keys
    given, or (`write`) cannot be written: a probe object is written and deleted."""
    if (problem := credential_problem(path)) is not None:
        raise StorageError(problem)
    if not is_uri(path):
        return
    try:
        fs, root = filesystem(path)
        fs.get_file_info(root)
        if write:
            probe = f"{root.rstrip('/')}/.lth-probe-{uuid.uuid4().hex}"
            with fs.open_output_stream(probe) as f:
                f.write(b"")
            fs.delete_file(probe)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = m.group(0) if (m := re.search(r"AWS Error [A-Z_]+[^:]*", first)) else first[:160]
        raise StorageError(f"storage {path}: cannot {'write' if write else 'read'} it ({reason}); check "
                           f"{', '.join(S3_VARIABLES)} and the bucket's name and permissions") from None


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
    """Replace `directory/name`, readers seeing the old file or the whole new one: on a local disk a
    temporary file renamed over it; an object store has no rename, but publishes one whole object per PUT
    (a multipart upload too, on completion), so the object is written in place."""
    fs, root = filesystem(directory)
    fs.create_dir(root, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        with replacing(Path(root) / name) as tmp:
            tmp.write_bytes(data)
        return
    with fs.open_output_stream(f"{root}/{name}") as f:
        f.write(data)


def read_json(directory: str, name: str) -> dict[str, Any] | None:
    data = read_bytes(directory, name)
    return None if data is None else json.loads(data)


def exists(directory: str, name: str) -> bool:
    fs, root = filesystem(directory)
    return fs.get_file_info(f"{root}/{name}").type == pafs.FileType.File


def write_table(table: pa.Table, directory: str, name: str) -> None:
    """Replace `directory/name` atomically: rename on a local disk; an object store has no rename, but
    publishes one whole object per PUT, so readers never see part of a table."""
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
