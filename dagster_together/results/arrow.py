"""Small Arrow helpers that the steps of the join share.

Values are built without pyarrow's conversion of Python objects: that conversion imports pandas
when it is installed (about 0.2 s), which nothing here needs. The vectorised helpers work on
lists (their first or last element) and on sorted input positions (the first of each run, and
the take-indices that place rows at their positions).
"""

from __future__ import annotations

import array
from typing import TYPE_CHECKING, Any

from dagster_together.arrow_values import int64s, strings

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa


def _range(lo: int, hi: int) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    values = np.arange(lo, hi, dtype=np.int64)  # wrapped, not copied (pa.array imports pandas)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _null(typ: pa.DataType) -> pa.Scalar:
    import pyarrow as pa

    return pa.nulls(1, typ)[0]


def _int(value: int) -> pa.Scalar:
    return int64s(array.array("q", [value]))[0]


def _int32(value: int) -> pa.Scalar:
    import pyarrow as pa

    return pa.Array.from_buffers(pa.int32(), 1, [None, pa.py_buffer(array.array("i", [value]))])[0]


def _str(value: str) -> pa.Scalar:
    return strings([value])[0]


def _bool(value: bool) -> pa.Scalar:
    return _trues(1)[0] if value else _falses(1)[0]


def _falses(n: int) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_valid(pa.nulls(n, pa.bool_()))


def _trues(n: int) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_null(pa.nulls(n, pa.bool_()))


def _last_element(lists: Any) -> Any:
    """The last element of each list, null for a null or empty list."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.coalesce(pc.list_value_length(lists), _int(0))
    ends = pc.subtract(lists.offsets.slice(1).cast(pa.int64()), _int(1))
    return lists.values.take(pc.if_else(pc.greater(lengths, _int(0)), ends, _null(pa.int64())))


def _first_element(lists: Any) -> Any:
    """The first element of each list, null for a null or empty list."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.coalesce(pc.list_value_length(lists), _int(0))
    starts = lists.offsets.slice(0, len(lists)).cast(pa.int64())
    return lists.values.take(pc.if_else(pc.greater(lengths, _int(0)), starts, _null(pa.int64())))


def _first_of_runs(values: Any) -> Any:
    """True where a sorted array's value differs from the one before (the first of each run)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    if n == 0:
        return pa.nulls(0, pa.bool_())
    return pa.concat_arrays([_trues(1), pc.not_equal(values.slice(1), values.slice(0, n - 1))])


def _scatter(positions: Any, lo: int, hi: int) -> Any:
    """Take-indices placing the rows at sorted unique ``positions`` into ``range(lo, hi)``.

    Row ``i`` of the answer is the index of the row whose position is ``lo + i``, or null.
    Positions outside the range, and nulls, place nothing.
    """
    import numpy as np
    import pyarrow as pa

    n = hi - lo
    if isinstance(positions, pa.ChunkedArray):
        positions = positions.combine_chunks()
    if len(positions) == 0 or positions.null_count == len(positions):
        return pa.nulls(n, pa.int64())
    positions = positions.cast(pa.int64())
    # Scattered with numpy over the arrays' buffers: to_numpy would import pandas.
    at = np.frombuffer(
        positions.buffers()[1], dtype=np.int64, count=len(positions), offset=positions.offset * 8
    )
    keep = (at >= lo) & (at < hi)
    keep[1:] &= at[1:] != at[:-1]  # a repeated position: its first row, as a search would find
    if positions.null_count:
        keep &= np.unpackbits(
            np.frombuffer(positions.buffers()[0], dtype=np.uint8),
            count=positions.offset + len(at),
            bitorder="little",
        )[positions.offset :].astype(bool)
    rows = np.flatnonzero(keep)
    index = np.zeros(n, dtype=np.int64)
    placed = np.zeros(n, dtype=bool)
    index[at[rows] - lo] = rows
    placed[at[rows] - lo] = True
    validity = pa.py_buffer(np.packbits(placed, bitorder="little"))
    return pa.Array.from_buffers(pa.int64(), n, [validity, pa.py_buffer(index)])
