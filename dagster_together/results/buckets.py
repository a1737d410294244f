"""Result rows spilled by input position to one local file, read back one bucket at a time.

A bucket is a consecutive range of inputs, about ``_BUCKET_BYTES`` of output (``_MAX_BUCKETS``
at most): what one step of the assembly holds in memory. See :class:`_Buckets`.
"""

from __future__ import annotations

import array
import math
import os
from typing import TYPE_CHECKING, Any

from dagster_together.arrow_values import int64s
from dagster_together.results import outputs
from dagster_together.results.arrow import _int, _int32
from dagster_together.results.inputs import _Inputs
from dagster_together.results.outputs import _Report, _row_schema

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa


_BUCKET_BYTES = 4 * 1024 * 1024  # output bytes per bucket: what one assembly step holds
_MAX_BUCKETS = 256


class _Buckets:
    """Result rows spilled to one local file in segments, read back bucket by bucket.

    A bucket is a consecutive range of inputs (about ``_BUCKET_BYTES`` of output). Each block of
    rows is sorted by bucket, and each bucket's rows are appended as one segment: for every
    column, its validity bytes, then its fixed-width values or its string lengths and bytes,
    all written by one ``writev`` straight from the Arrow buffers. Reading a bucket is one
    ``preadv`` per segment straight into the buffers of the new arrays. So the cost grows with
    the rows, not with blocks x buckets, and memory holds one block or one bucket at a time.

    Segments are appended in read order (output files, then error files), so within a bucket
    that order is kept and "first occurrence wins" needs no sequence number.
    """

    def __init__(self, n_inputs: int, result_bytes: int, spill_dir: str) -> None:
        import pyarrow as pa

        count = max(1, min(math.ceil(result_bytes / _BUCKET_BYTES), _MAX_BUCKETS, n_inputs or 1))
        self.size = max(1, math.ceil(n_inputs / count))  # inputs per bucket
        self.count = max(1, math.ceil(n_inputs / self.size))
        self.schema = pa.schema([*list(_row_schema())[1:], pa.field("idx", pa.int64())])
        self.strings = [pa.types.is_string(f.type) for f in self.schema]
        self.path = os.path.join(spill_dir, "results.spill")
        self.fd: int | None = None
        self.end = 0  # bytes written so far
        # Per bucket: (file offset, rows, byte length of each string column) of each segment.
        # Kept flat in int64 arrays (a million inputs make tens of thousands of segments):
        # offset, rows, then the byte length of each string column, per segment.
        self.width = 2 + sum(self.strings)
        self.segments = [array.array("q") for _ in range(self.count)]

    def bounds(self, n: int) -> list[tuple[int, int]]:
        return [(lo, min(lo + self.size, n)) for lo in range(0, n, self.size)] or [(0, 0)]

    def add(self, rows: pa.Table, ins: _Inputs, report: _Report) -> None:
        """Spill a block of extracted rows, one segment per bucket it touches."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = rows.column("custom_id").combine_chunks()
        idx = ins.lookup(ids)
        if idx.null_count:
            unknown = pc.is_null(idx)
            examples = ids.filter(unknown).slice(0, outputs._MAX_RECORDED).to_pylist()
            report.unknown_ids(idx.null_count, examples)
            known = pc.invert(unknown)
            rows, idx = rows.filter(known), idx.filter(known)
        if not rows.num_rows:
            return
        rows = rows.drop_columns(["custom_id"]).append_column("idx", idx)
        bucket = pc.divide(idx, _int(self.size))
        order = pc.sort_indices(bucket)  # stable: read order is kept within a bucket
        # Each column made one chunk, then taken: take() over several chunks concatenates them
        # inside and is about twice as slow; a column at a time keeps one extra copy alive.
        rows = pa.Table.from_arrays(
            [column.combine_chunks().take(order) for column in rows.columns], schema=rows.schema
        )
        bucket = bucket.take(order)
        counts = pc.value_counts(bucket)
        buckets = counts.field("values").to_pylist()
        cuts = [0]
        for count in counts.field("counts").to_pylist():
            cuts.append(cuts[-1] + count)
        # Per column: the buffers to slice, and for strings the byte offset of every cut.
        parts: list[tuple[memoryview, memoryview, memoryview | None, Any]] = []
        cut_array = int64s(array.array("q", cuts))
        for column, is_string in zip(rows.columns, self.strings, strict=True):
            arr = column.chunk(0)
            valid = memoryview(pc.is_valid(arr).cast(pa.uint8()).buffers()[1])
            if is_string:
                lengths = pc.coalesce(pc.binary_length(arr), _int32(0)).buffers()[1]
                offsets = pa.Array.from_buffers(
                    pa.int32(), arr.offset + len(arr) + 1, [None, arr.buffers()[1]]
                )
                at = offsets.take(pc.add(cut_array, _int(arr.offset))).to_pylist()
                parts.append((valid, memoryview(lengths), memoryview(arr.buffers()[2]), at))
            else:
                values = memoryview(arr.buffers()[1])[arr.offset * 8 :]
                parts.append((valid, values, None, None))
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for k, b in enumerate(buckets):
            lo, hi = cuts[k], cuts[k + 1]
            views = []
            text_sizes = []
            for valid, values, data, at in parts:
                views.append(valid[lo:hi])
                if data is None:
                    views.append(values[lo * 8 : hi * 8])
                else:
                    views.append(values[lo * 4 : hi * 4])
                    views.append(data[at[k] : at[k + 1]])
                    text_sizes.append(at[k + 1] - at[k])
            size = _write_all(self.fd, views)
            self.segments[b].extend((self.end, hi - lo, *text_sizes))
            self.end += size

    def close_writers(self) -> None:
        """Finish writing (closing twice is harmless)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self, bucket: int) -> pa.Table | None:
        """The rows of one bucket (None if it has none), read straight into new buffers."""
        import pyarrow as pa
        import pyarrow.compute as pc

        flat = self.segments[bucket] if bucket < self.count else array.array("q")
        w = self.width
        segments = [(flat[i], flat[i + 1], flat[i + 2 : i + w]) for i in range(0, len(flat), w)]
        if not segments:
            return None
        n = sum(rows for _, rows, _ in segments)
        texts = [sum(sizes[i] for _, _, sizes in segments) for i in range(sum(self.strings))]
        # Arrow's own memory (not Python's heap): freed blocks go back to one allocator.
        buffers = []  # per column: [valid, values or lengths, (data)]
        t = 0
        for is_string in self.strings:
            if is_string:
                buffer_sizes: tuple[int, ...] = (n, 4 * n, texts[t])
                t += 1
            else:
                buffer_sizes = (n, 8 * n)
            buffers.append([pa.allocate_buffer(size) for size in buffer_sizes])
        views = [[memoryview(b).cast("B") for b in column] for column in buffers]
        row = 0
        text_at = [0] * len(texts)
        with open(self.path, "rb", buffering=0) as handle:
            for offset, rows, sizes in segments:
                targets = []
                t = 0
                for is_string, column in zip(self.strings, views, strict=True):
                    targets.append(column[0][row : row + rows])
                    if is_string:
                        targets.append(column[1][4 * row : 4 * (row + rows)])
                        targets.append(column[2][text_at[t] : text_at[t] + sizes[t]])
                        text_at[t] += sizes[t]
                        t += 1
                    else:
                        targets.append(column[1][8 * row : 8 * (row + rows)])
                _read_all(handle, targets, offset)
                row += rows
        arrays = []
        for spec, is_string, column in zip(self.schema, self.strings, buffers, strict=True):
            valid = pa.Array.from_buffers(pa.uint8(), n, [None, column[0]])
            validity = None
            if pc.min(valid).as_py() == 0:
                validity = pc.not_equal(valid, _int(0)).buffers()[1]
            if is_string:
                lengths = pa.Array.from_buffers(pa.int32(), n, [None, column[1]])
                ends = pc.cumulative_sum(lengths.cast(pa.int64()))
                offsets = pa.concat_arrays([int64s(array.array("q", [0])), ends])
                arrays.append(
                    pa.StringArray.from_buffers(
                        n,
                        offsets.cast(pa.int32()).buffers()[1],
                        column[2],
                        validity,
                    )
                )
            else:
                arrays.append(pa.Array.from_buffers(spec.type, n, [validity, column[1]]))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def close(self) -> None:
        self.close_writers()


def _write_all(fd: int, views: list[memoryview]) -> int:
    """Write every view at the end of ``fd`` (one ``writev`` where there is one); bytes written."""
    total = sum(v.nbytes for v in views)
    if hasattr(os, "writev"):
        done = os.writev(fd, views)
        if done == total:
            return total
    else:
        done = 0
    # A short write (rare, e.g. a full disk): the rest, piece by piece, raising on failure.
    data = b"".join(views)[done:]
    while data:
        written = os.write(fd, data)
        data = data[written:]
    return total


def _read_all(handle: Any, targets: list[memoryview], offset: int) -> None:
    """Fill ``targets`` with the bytes at ``offset`` (one ``preadv`` where there is one)."""
    total = sum(t.nbytes for t in targets)
    if hasattr(os, "preadv"):
        if os.preadv(handle.fileno(), targets, offset) == total:
            return
    handle.seek(offset)
    for target in targets:
        view = target
        while view.nbytes:
            got = handle.readinto(view)
            if not got:
                raise OSError(f"spill file ended early at {offset}: not the bytes written")
            view = view[got:]
