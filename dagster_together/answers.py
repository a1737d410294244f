"""The answer store: every answer Together gave once, kept on the user's storage by a content key
of its request, so that a request asked again is answered from it instead of paid again.

A request's key is a hash of its canonical body (model, messages, every parameter; keys sorted)
and endpoint, independent of ``custom_id``: a changed system prompt, model or parameter changes
it. Each batch adds one Parquet file (``answers/batch_id=<id>/part-0.parquet``, published
atomically), so two submits running at once never write the same file. A lookup streams the
store's ``key`` column a file and a slice at a time and matches it against a
:class:`~dagster_together.keyset.KeySet` of the wanted keys: memory follows the wanted keys
(about 22 bytes each), not the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dagster_together.arrow_values import repeated, strings
from dagster_together.storage import BatchStorageLayout, publish_parquet

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

    from dagster_together.keyset import KeySet

__all__ = ["ANSWER_COLUMNS", "AnswerStore", "key_of_text", "key_text", "request_key"]

# What an answer keeps: enough to stand in for the result row of the request it answers.
ANSWER_COLUMNS = (
    "content",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "model",
)
# A lookup reads each store file this many keys at a time, through a buffer of this many bytes
# (not a whole row group at once): its memory does not grow with the store's files.
_SLICE_ROWS = 16_384
_READ_BUFFER = 1 << 20
_RELEASE_EVERY = 4


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def key_text(endpoint: str, body: Mapping[str, Any]) -> str:
    """A request's canonical JSON: what its content key is the hash of."""
    return _CANONICAL.encode({"endpoint": endpoint, "body": body})


def key_of_text(text: str) -> str:
    """The content key of a request's canonical JSON (:func:`key_text`)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def request_key(endpoint: str, body: Mapping[str, Any]) -> str:
    """The content key of a request: 32 hex digits of the SHA-256 of its canonical JSON."""
    return key_of_text(key_text(endpoint, body))


class AnswerStore:
    """The answers under ``layout.answers_url``."""

    def __init__(self, layout: BatchStorageLayout) -> None:
        self._layout = layout

    def lookup(self, keys: pa.Array | pa.ChunkedArray) -> pa.Table:
        """``key`` and ``batch_id`` (the batch that paid; dictionary-encoded) of every wanted key
        the store holds, one row per key."""
        import numpy as np
        import pyarrow as pa

        from dagster_together.keyset import KeySet

        wanted = KeySet(keys)
        paid_by = np.full(len(wanted), -1, dtype=np.int32)  # per key: which batch, or -1
        batch_ids: list[str] = []
        for batch_id, _, groups in self.matches(wanted, []):
            if not batch_ids or batch_ids[-1] != batch_id:
                batch_ids.append(batch_id)
            new = groups[paid_by[groups] < 0]  # the first answer found stays
            paid_by[new] = len(batch_ids) - 1
        found = np.flatnonzero(paid_by >= 0)
        return pa.table(
            {
                "key": wanted.keys.take(pa.array(wanted.first(found))),
                "batch_id": pa.DictionaryArray.from_arrays(
                    pa.array(paid_by[found]), pa.array(batch_ids, pa.string())
                ),
            }
        )

    def has_answers(self) -> bool:
        """Whether the store holds any answer file (an empty or missing store does not)."""
        return next(self._files(None), None) is not None

    def matches(
        self,
        wanted: KeySet,
        columns: Sequence[str],
        batch_ids: Iterable[str] | None = None,
    ) -> Iterator[tuple[str, pa.RecordBatch, np.ndarray]]:
        """Stream the store a slice at a time: for each slice with wanted keys, its batch id,
        its rows with one (``columns`` of them) and each row's group in ``wanted``.

        Args:
            wanted: the keys looked for.
            columns: of :data:`ANSWER_COLUMNS` (and ``key``) to read for the matching rows.
            batch_ids: read only these batches' answers (None: every batch's).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if len(wanted) == 0:
            return
        read = ["key", *(c for c in columns if c != "key")]
        pool = pa.default_memory_pool()
        fs, _ = self._layout.filesystem(self._layout.answers_url)
        for batch_id, path in self._files(batch_ids):
            reader = pq.ParquetFile(
                path,
                filesystem=fs,
                buffer_size=_READ_BUFFER,
                pre_buffer=False,
            )
            slices = reader.iter_batches(batch_size=_SLICE_ROWS, columns=read, use_threads=False)
            for number, batch in enumerate(slices):
                rows, groups = wanted.match(batch.column(0))
                if len(rows):
                    yield batch_id, batch.select(list(columns)).take(rows), groups
                if number % _RELEASE_EVERY == _RELEASE_EVERY - 1:
                    # pyarrow's pool keeps what each slice freed for later; given back now and
                    # then, the memory of a stream of slices stays that of a few.
                    pool.release_unused()

    def add(self, batch_id: str, results: pa.Table, keys: pa.Table) -> int:
        """Store the succeeded rows of one batch's ``results`` (joined to ``keys``:
        ``custom_id``, ``key``); returns how many."""
        import pyarrow as pa
        import pyarrow.compute as pc

        # Matched by index rather than with Table.join: Acero's import loads pandas.
        succeeded = results.filter(pc.equal(results["status"], strings(["succeeded"])[0]))
        at = pc.index_in(succeeded["custom_id"], value_set=keys["custom_id"])
        answered = succeeded.filter(pc.is_valid(at))
        table = pa.Table.from_arrays(
            [
                keys["key"].take(at.drop_null()),
                *(answered[c] for c in ANSWER_COLUMNS),
                repeated(batch_id, answered.num_rows),
            ],
            names=["key", *ANSWER_COLUMNS, "batch_id"],
        )
        publish_parquet(table, self._layout.answers_parquet(batch_id), self._layout.storage_options)
        return table.num_rows

    def _files(self, batch_ids: Iterable[str] | None) -> Iterator[tuple[str, str]]:
        """``(batch_id, path)`` of the store's Parquet files (of ``batch_ids``), in path order.

        Listed with the filesystem, not ``pyarrow.dataset``: importing that module alone adds
        about 45 MB to a process, more than a submit's lookup needs for its keys.
        """
        from urllib.parse import unquote

        fs, root = self._layout.filesystem(self._layout.answers_url)
        if not fs.exists(root):
            return
        only = None if batch_ids is None else set(batch_ids)
        root = root.rstrip("/")
        for path in sorted(fs.find(root)):
            parts = path[len(root) :].strip("/").split("/")
            # <root>/batch_id=<id>/<file>.parquet; hidden files (pending writes) are skipped.
            if len(parts) != 2 or not parts[1].endswith(".parquet"):
                continue
            if not parts[0].startswith("batch_id=") or parts[1].startswith((".", "_")):
                continue
            batch_id = unquote(parts[0][len("batch_id=") :])
            if only is None or batch_id in only:
                yield batch_id, path
