"""The storage layer: every file the project reads or writes through fsspec goes through here.

* :mod:`~dagster_together.storage.urls`: a location (local path or fsspec URL) to a filesystem,
  and composing locations (:func:`filesystem`, :func:`is_local`, :func:`join`, :func:`parent`);
* :mod:`~dagster_together.storage.read`: Parquet files read back (:func:`open_parquet`,
  :func:`read_parquet`);
* :mod:`~dagster_together.storage.publish`: atomic publishing, the one way files are written
  (:func:`open_pending`, :func:`publish_file`, :func:`publish_parquet`, :class:`ParquetParts`,
  :func:`commit_all`);
* :mod:`~dagster_together.storage.layout`: where a batch pipeline keeps its files
  (:class:`BatchStorageLayout`).

This is the one place that knows fsspec's quirks. It imports neither Dagster, httpx nor pyarrow,
and fsspec only when a filesystem is first needed.
"""

from __future__ import annotations

from dagster_together.storage.layout import BatchStorageLayout
from dagster_together.storage.publish import (
    REMOTE_BLOCK_SIZE,
    LocalPendingFile,
    ParquetParts,
    PendingFile,
    RemotePendingFile,
    commit_all,
    open_pending,
    publish_file,
    publish_parquet,
)
from dagster_together.storage.read import open_parquet, read_parquet
from dagster_together.storage.urls import filesystem, is_local, join, parent

__all__ = [
    "REMOTE_BLOCK_SIZE",
    "BatchStorageLayout",
    "LocalPendingFile",
    "ParquetParts",
    "PendingFile",
    "RemotePendingFile",
    "commit_all",
    "filesystem",
    "is_local",
    "join",
    "open_parquet",
    "open_pending",
    "parent",
    "publish_file",
    "publish_parquet",
    "read_parquet",
]
