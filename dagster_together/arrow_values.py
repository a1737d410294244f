"""Arrow arrays made from Python values without pyarrow's object conversion.

``pyarrow.array(list)`` asks whether the list is a pandas object first, and that imports pandas
when it is installed: tens of MB and a few tenths of a second in a process that never needs it
(the submit, the join). These build the arrays from buffers instead.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["int64s", "repeated", "strings"]


def int64s(values: array.array) -> pa.Array:
    """An int64 array over an ``array('q')`` (wrapped, not copied)."""
    import pyarrow as pa

    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def strings(values: Sequence[str | None]) -> pa.Array:
    """A string array of ``values`` (None: null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = array.array("i", [0])
    for item in encoded:
        offsets.append(offsets[-1] + len(item))
    data = pa.py_buffer(b"".join(encoded))
    texts = pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), data)
    if all(v is not None for v in values):
        return texts
    valid = int64s(array.array("q", [v is not None for v in values]))
    return pc.if_else(pc.cast(valid, pa.bool_()), texts, pa.nulls(1, pa.string())[0])


def repeated(value: str, n: int) -> pa.Array:
    """A string array of ``value`` ``n`` times."""
    return strings([value]).take(int64s(array.array("q", bytes(8 * n))))
