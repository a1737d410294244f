"""Reading Parquet files through fsspec, without ``pyarrow.dataset``.

``pyarrow.parquet.read_table`` goes through ``pyarrow.dataset``, whose import loads pandas: about
0.4 CPU seconds and tens of MB in every run process that reads a small file of keys or answers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from dagster_together.storage.urls import is_local

__all__ = ["open_parquet", "read_parquet"]


@contextmanager
def open_parquet(fs: Any, path: str, **options: Any) -> Iterator[Any]:
    """A ``pyarrow.parquet.ParquetFile`` on ``path`` on the fsspec filesystem ``fs``
    (``options`` go to ``ParquetFile``), closed on exit."""
    import pyarrow.parquet as pq

    if is_local(fs):  # pyarrow's own reads, not Python's
        with pq.ParquetFile(path, **options) as parquet:
            yield parquet
        return
    with fs.open(path, "rb") as handle:
        yield pq.ParquetFile(handle, **options)


def read_parquet(fs: Any, path: str, columns: Sequence[str] | None = None) -> Any:
    """The pyarrow table in the Parquet file at ``path`` on the fsspec filesystem ``fs``
    (only ``columns`` when given)."""
    with open_parquet(fs, path) as parquet:
        return parquet.read(columns=list(columns) if columns is not None else None)
