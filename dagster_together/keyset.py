"""A set of content keys that columns of keys read from storage are matched against, in memory
that follows the set, not the columns.

Content keys are 32 hex digits (:func:`dagster_together.answers.request_key`). Each gets a
64-bit fingerprint from its first 16 characters; the set keeps its fingerprints sorted (8 bytes
a key) and a table of which fingerprint buckets are taken (1 byte a key), so that most keys of
a column are ruled out by one read of the table and the rest by a binary search and a
comparison of the whole key. Different keys with the same fingerprint (about once in 10^7 sets
of a million keys) are told apart by that comparison too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

__all__ = ["KEY_LENGTH", "KeySet"]

KEY_LENGTH = 32
_WORDS = KEY_LENGTH // 8
# Odd multipliers (golden ratio, splitmix64): they carry every input bit into the top bits, so
# the fingerprint's top bits index the bucket table evenly.
_MIX_A = 0x9E3779B97F4A7C15
_MIX_B = 0xBF58476D1CE4E5B9
_BUCKETS_PER_KEY = 16  # bits of the table per distinct key: about 1 in 16 others pass it


class KeySet:
    """The distinct keys among ``keys`` (a string array; nulls and other strings than
    32-character keys are never matched).

    :meth:`match` finds which rows of a column hold one of them, and which one as a *group*
    number (one per distinct key); :meth:`first` gives an index in ``keys`` of each group's
    key, :meth:`members` every index in ``keys`` of some groups.
    """

    def __init__(self, keys: pa.Array | pa.ChunkedArray) -> None:
        import numpy as np

        self.keys: pa.Array = _plain(keys)
        # Indices into keys of the entries that are keys (None: all of them).
        self._valid = np.flatnonzero(_is_key(self.keys)) if _irregular(self.keys) else None
        self._words = _words(_compact(self.keys, self._valid))
        fingerprints = _fingerprints(self._words)
        self._order = _small(np.argsort(fingerprints))  # indices into _words, by fingerprint
        sorted_fp = fingerprints[self._order]
        new = np.empty(len(sorted_fp), dtype=bool)
        new[:1] = True
        np.not_equal(sorted_fp[1:], sorted_fp[:-1], out=new[1:])
        same = np.flatnonzero(~new)  # the same fingerprint as the key before
        if len(same) and self._differ(same).any():
            # Different keys, one fingerprint: sorted by the whole key too, equal keys meet.
            words = self._words
            columns = (*(words[:, i] for i in range(_WORDS - 1, -1, -1)), fingerprints)
            self._order = _small(np.lexsort(columns))
            sorted_fp = fingerprints[self._order]
            np.not_equal(sorted_fp[1:], sorted_fp[:-1], out=new[1:])
            same = np.flatnonzero(~new)
            new[same] = self._differ(same)
        del fingerprints, same
        # Where each group begins in _order (None: every key is a group of its own).
        self._starts = None if new.all() else _small(np.flatnonzero(new))
        self._fingerprints = sorted_fp if self._starts is None else sorted_fp[new]
        del new, sorted_fp
        bits = max(10, (len(self._fingerprints) * _BUCKETS_PER_KEY - 1).bit_length())
        self._shift = np.uint64(64 - bits)
        self._taken = np.zeros(1 << (bits - 3), dtype=np.uint8)  # one bit a bucket
        slots = self._fingerprints >> self._shift
        np.bitwise_or.at(self._taken, slots >> np.uint64(3), _bit(slots))

    def __len__(self) -> int:
        """How many distinct keys."""
        return len(self._fingerprints)

    def match(self, column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, groups)``: the rows of ``column`` whose key is in the set (ascending), and
        the group of each."""
        import numpy as np

        column = _plain(column)
        rows = np.flatnonzero(_is_key(column)) if _irregular(column) else None
        words = _words(_compact(column, rows))
        fingerprints = _fingerprints(words)
        slots = fingerprints >> self._shift
        candidates = np.flatnonzero(self._taken[slots >> np.uint64(3)] & _bit(slots))
        del slots
        wanted = fingerprints[candidates]
        del fingerprints
        groups = self._search(wanted)
        found_rows, found_groups = [], []
        while len(candidates):
            np.minimum(groups, len(self._fingerprints) - 1, out=groups)
            same = self._fingerprints[groups] == wanted
            candidates, groups, wanted = candidates[same], groups[same], wanted[same]
            whole = (words[candidates] == self._words[self._first(groups)]).all(axis=1)
            found_rows.append(candidates[whole])
            found_groups.append(groups[whole])
            # A fingerprint shared by several keys: the next group may hold the key.
            rest = ~whole & (groups + 1 < len(self._fingerprints))
            candidates, groups, wanted = candidates[rest], groups[rest] + 1, wanted[rest]
        if len(found_rows) <= 1:
            candidates = found_rows[0] if found_rows else candidates
            groups = found_groups[0] if found_groups else groups
        else:
            candidates = np.concatenate(found_rows)
            order = np.argsort(candidates, kind="stable")
            candidates, groups = candidates[order], np.concatenate(found_groups)[order]
        return (candidates if rows is None else rows[candidates]), groups

    def first(self, groups: np.ndarray) -> np.ndarray:
        """An index in ``keys`` of each group's key (the same key for every index of a group)."""
        first = self._first(groups)
        return first if self._valid is None else self._valid[first]

    def members(self, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, which)``: every index in ``keys`` holding one of ``groups``' keys, and
        for each, the position in ``groups`` of its group."""
        import numpy as np

        if self._starts is None:
            return self.first(groups), np.arange(len(groups))
        ends = np.append(self._starts[1:], len(self._order))
        begin = self._starts[groups]
        counts = ends[groups] - begin
        which = np.repeat(np.arange(len(groups)), counts)
        within = np.arange(len(which)) - np.repeat(np.cumsum(counts) - counts, counts)
        indices = self._order[begin[which] + within]
        return (indices if self._valid is None else self._valid[indices]), which

    def _first(self, groups: np.ndarray) -> np.ndarray:
        """The row in ``_words`` of each group's first key."""
        return self._order[groups if self._starts is None else self._starts[groups]]

    def _search(self, fingerprints: np.ndarray) -> np.ndarray:
        """The first group whose fingerprint is not below each of ``fingerprints``."""
        import numpy as np

        # Searched in ascending order, a binary search stays in the cache's reach.
        order = np.argsort(fingerprints)
        groups = np.empty(len(fingerprints), dtype=np.intp)
        groups[order] = np.searchsorted(self._fingerprints, fingerprints[order])
        return groups

    def _differ(self, same: np.ndarray) -> np.ndarray:
        """Whether the key at each of ``same`` (in ``_order``) differs from the one before."""
        order = self._order
        return (self._words[order[same]] != self._words[order[same - 1]]).any(axis=1)


def _compact(column: pa.Array, rows: np.ndarray | None) -> pa.Array:
    import pyarrow as pa

    return column if rows is None else column.take(pa.array(rows))


def _small(indices: np.ndarray) -> np.ndarray:
    """Indices as 32-bit integers when they fit (half the memory)."""
    import numpy as np

    return indices.astype(np.int32) if len(indices) < 2**31 else indices


def _bit(slots: np.ndarray) -> np.ndarray:
    """The bit of each slot within its byte of the table."""
    import numpy as np

    return np.left_shift(np.uint8(1), (slots & np.uint64(7)).astype(np.uint8))


def _plain(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    import pyarrow as pa

    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    return keys.cast(pa.string()) if keys.type != pa.string() else keys


def _is_key(column: pa.Array) -> np.ndarray:
    """Which entries are keys at all (not null, 32 characters)."""
    import numpy as np
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(pc.binary_length(column), 0)) == KEY_LENGTH


def _irregular(column: pa.Array) -> bool:
    """Whether some entry is null or not 32 characters long."""
    import numpy as np

    if column.null_count:
        return True
    offsets = _offsets(column)
    return bool(len(column)) and not bool((np.diff(offsets) == KEY_LENGTH).all())


def _offsets(column: pa.Array) -> np.ndarray:
    import numpy as np

    return np.frombuffer(
        column.buffers()[1], dtype=np.int32, count=len(column) + 1, offset=4 * column.offset
    )


def _words(column: pa.Array) -> np.ndarray:
    """The bytes of a column of 32-character keys as ``(n, 4)`` 64-bit words, without a copy."""
    import numpy as np

    n = len(column)
    data = column.buffers()[2]
    if n == 0 or data is None:
        return np.empty((0, _WORDS), dtype=np.uint64)
    start = int(_offsets(column)[0])
    raw = np.frombuffer(data, dtype=np.uint8, count=n * KEY_LENGTH, offset=start)
    return raw.view(np.uint64).reshape(n, _WORDS)


def _fingerprints(words: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each key, from its first 16 characters (64 bits of hex)."""
    import numpy as np

    fp = np.multiply(words[:, 0], np.uint64(_MIX_A))
    step = 1 << 16  # the second word's product a slice at a time: no second array as large
    for start in range(0, len(fp), step):
        fp[start : start + step] ^= words[start : start + step, 1] * np.uint64(_MIX_B)
    return fp
