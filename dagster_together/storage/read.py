"""Reading a whole Parquet file from a location, without ``pyarrow.dataset``.

``pyarrow.parquet.read_table`` goes through ``pyarrow.dataset``, whose import loads pandas: about
0.4 CPU seconds and tens of MB in every run process that reads a small file of keys or answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster_together.storage.urls import is_local

__all__ = ["read_parquet"]


def read_parquet(fs: Any, path: str, columns: Sequence[str] | None = None) -> Any:
    """The pyarrow table in the Parquet file at ``path`` on the fsspec filesystem ``fs``
    (only ``columns`` when given)."""
    import pyarrow.parquet as pq

    wanted = list(columns) if columns is not None else None
    if is_local(fs):  # pyarrow's own reads, not Python's
        return pq.ParquetFile(path).read(columns=wanted)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).read(columns=wanted)
