"""Submitting a prompts table from inside a Dagster run: build and validate every request file,
upload, create (or reuse) one batch per file, keep the inputs next to where the answers will land.

:meth:`TogetherResource.submit_batches <dagster_together.TogetherResource.submit_batches>` and
``submit_and_wait`` call :func:`submit_prompts`; it knows nothing of partitions or sensors: the
caller says what to do with each batch once it exists (``on_batch``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from dagster_together.answers import AnswerStore, request_key
from dagster_together.arrow_values import strings
from dagster_together.cost import BudgetExceededError, CostEstimate, CostOptions
from dagster_together.memory import give_back_memory
from dagster_together.options import BatchingOptions, ResubmitOptions
from dagster_together.requests.rows import ROW_GROUP_ROWS, RequestRows, RowStream, TableSpill
from dagster_together.requests.table import TableRequests
from dagster_together.storage import BatchStorageLayout, ParquetParts, read_parquet
from dagster_together.submissions import (
    BatchRecord,
    Submissions,
    retryable_rows,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from dagster_together.client import BatchJob, TogetherClient
    from dagster_together.requests import AudioTemplate, RequestChunk, RequestTemplate

__all__ = [
    "Submission",
    "SubmittedBatch",
    "prove_writable",
    "submission_metadata",
    "submit_prompts",
]

# A batch in one of these states will never produce (more) results: a re-submit of the same
# input must create a new batch rather than reuse it.
_NOT_REUSABLE = frozenset({"FAILED", "EXPIRED", "CANCELLED", "CANCELING"})
_OVERVIEW_ROWS = 50


@dataclass(frozen=True)
class SubmittedBatch:
    """One batch of a submission.

    Attributes:
        batch_id: Together's batch id (the results partition key).
        input_file_id: the uploaded request file.
        n_requests: requests in the batch.
        status: the batch status when it was created or found.
        reused: True when a batch created earlier for the same input file was reused.
        input_copy: where the request file was copied on the user's storage.
    """

    batch_id: str
    input_file_id: str
    n_requests: int
    status: str
    reused: bool
    input_copy: str


@dataclass(frozen=True)
class Submission:
    """What a submit did: its batches, and what it was estimated to cost.

    Attributes:
        batches: one per request file, in order.
        estimate: tokens counted per model while the requests were built.
        estimated_cost: dollars, for the models the price table knows.
        unpriced_models: models the price table does not know (not in the estimate).
        submission_id: the submission these batches answer.
        n_rows: rows of the prompts table.
        n_cached: rows the answer store answered (not sent).
    """

    batches: list[SubmittedBatch]
    estimate: CostEstimate
    estimated_cost: float
    unpriced_models: list[str]
    submission_id: str = ""
    n_rows: int = 0
    n_cached: int = 0


def endpoint_of(template: RequestTemplate | AudioTemplate | None, batching: BatchingOptions) -> str:
    """The endpoint every request targets: ``batching.endpoint``, the template's, or chat."""
    if batching.endpoint is None:
        return template.endpoint if template is not None else "/v1/chat/completions"
    if template is not None and template.endpoint != batching.endpoint:
        raise ValueError(
            f"endpoint={batching.endpoint!r} contradicts the template's endpoint "
            f"{template.endpoint!r}; set it in one place."
        )
    return batching.endpoint


def submit_prompts(
    context: dg.AssetExecutionContext,
    client: TogetherClient,
    prompts: Any,
    *,
    layout: BatchStorageLayout,
    template: RequestTemplate | AudioTemplate | None,
    id_column: str | None,
    batching: BatchingOptions,
    cost: CostOptions,
    resubmit: ResubmitOptions,
    submission_id: str,
    file_prefix: str,
    on_batch: Callable[[str], None] | None = None,
) -> Submission:
    """Validate, look up, estimate, upload and create the batches of ``prompts`` (none for an
    empty table, or one the answer store answers whole).

    Nothing reaches the API before every request is built and validated, the answer store has
    been asked (with ``resubmit.use_answer_cache``) and the estimate of what is left is within
    ``cost.max_estimated_cost``. ``on_batch(batch_id)`` runs once a batch exists and its inputs
    are stored: the submit asset registers the results partition there. A crash before that is
    healed by a re-run: the same request bytes get the same file id, and the batch on it is
    found and reused instead of billed again.
    """
    import pyarrow.compute as pc

    from dagster_together.client import InvalidRequestFileError
    from dagster_together.requests import (
        MAX_BATCH_BYTES,
        build_requests,
        input_columns_batches,
        write_request_chunks,
    )

    endpoint = endpoint_of(template, batching)
    # Before anything is paid for: a batch whose inputs cannot be stored cannot be joined.
    prove_writable(layout)
    estimate = CostEstimate()

    unique_ids: bool | None = None  # what a first pass found: the next need not sort the ids again

    def requests() -> Any:
        return build_requests(
            prompts,
            template=template,
            id_column=id_column,
            endpoint=endpoint,
            storage_options=layout.storage_options,
            unique_ids=unique_ids,
        )

    with tempfile.TemporaryDirectory(prefix="dagster-together-") as tmp:
        # 1. Build, validate, look up and estimate everything before the first byte goes out.
        try:
            keys = _Keys(endpoint, spill=os.path.join(tmp, "keys.arrows"))
            sent_rows = RequestRows(spill=os.path.join(tmp, "request-rows.arrows"))
            hits = None  # key and batch_id of the requests the answer store answers
            if resubmit.use_answer_cache:
                first = requests()
                keys.add_all(first)
                unique_ids = first.naming.unique_ids
                store = AnswerStore(layout)
                if store.has_answers():  # else there is nothing to hold every key in memory for
                    hits = store.lookup(keys.keys())
                give_back_memory()  # each pass over the prompts frees what it read
            cached_ids = keys.ids_of(hits["key"].combine_chunks()) if hits is not None else set()

            stream = requests()

            def observe(request: Any) -> None:
                estimate.add(request)
                sent_rows.add(request)
                if not resubmit.use_answer_cache:
                    keys.add(request, stream.content_key(endpoint))

            chunks = write_request_chunks(
                stream,
                tmp,
                max_requests=batching.max_requests_per_batch,
                max_bytes=batching.max_bytes_per_batch or MAX_BATCH_BYTES,
                prefix=_file_prefix(file_prefix),
                endpoint=endpoint,
                observe=observe,
                exclude=cached_ids,
            )
            give_back_memory()
            n_rows = keys.count

            # The user's columns, a slice at a time: a million rows are never held at once.
            def user_columns() -> tuple[list[str], Any]:
                return input_columns_batches(
                    prompts,
                    id_column=id_column if template else None,
                    storage_options=layout.storage_options,
                )

            column_names = user_columns()[0] if n_rows else None
            estimated_cost = estimate.check_budget(cost)
        except BudgetExceededError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        except (InvalidRequestFileError, TypeError) as exc:
            # A data problem: a clean message in the UI, and no retry would help.
            raise dg.Failure(
                description=f"The prompts cannot be submitted: {exc} Nothing was sent to Together.",
                allow_retries=False,
            ) from exc
        _, unpriced = estimate.cost(cost.prices)
        submission = Submission(
            [], estimate, estimated_cost, unpriced, submission_id, n_rows, len(cached_ids)
        )
        if column_names is None:
            return submission
        if cached_ids:
            context.log.info(
                f"{len(cached_ids):,} of {n_rows:,} requests are answered by the answer store "
                f"under {layout.answers_url}: only {n_rows - len(cached_ids):,} are sent."
            )
        # 2. The submission's rows, in input order, before anything is paid for.
        submissions = Submissions(layout)
        schema = getattr(template, "schema", None)
        if schema is not None:
            submissions.write_schema(submission_id, schema)
        submissions.write_inputs(
            submission_id, _with_keys(user_columns()[1], RowStream(keys.blocks()), hits)
        )
        give_back_memory()
        if not chunks:
            return submission
        _log_estimate(context, submission, cost)
        cached = strings(sorted(cached_ids))

        def sent(parts: Iterable[pa.Table]) -> Iterator[pa.Table]:
            """The rows of ``parts`` that are sent (the store answers the others)."""
            for part in parts:
                if len(cached):
                    part = part.filter(pc.invert(pc.is_in(part["custom_id"], value_set=cached)))
                yield part

        def sent_columns() -> Iterator[pa.Table]:
            return sent(user_columns()[1])

        _check_alignment(chunks, (part["custom_id"] for part in sent_columns()))
        submission.batches.extend(
            create_batches(
                context,
                client,
                chunks,
                RowStream(sent_columns()),
                RowStream(sent(keys.blocks())),
                layout=layout,
                endpoint=endpoint,
                completion_window=batching.completion_window,
                record=lambda batch_id, n: BatchRecord(submission_id, batch_id, 1, None, n),
                on_batch=on_batch,
                request_rows=RowStream(sent_rows.blocks()),
            )
        )
    return submission


def create_batches(
    context: dg.AssetExecutionContext,
    client: TogetherClient,
    chunks: Sequence[RequestChunk],
    columns: RowStream,
    keys: RowStream,
    *,
    layout: BatchStorageLayout,
    endpoint: str,
    completion_window: str,
    record: Callable[[str, int], BatchRecord],
    on_batch: Callable[[str], None] | None,
    request_rows: RowStream | None = None,
) -> list[SubmittedBatch]:
    """Upload each chunk, create its batch (or reuse the one an earlier attempt created for the
    same bytes), store its inputs (request file, the user's columns, content keys, and with
    ``request_rows`` the join's inputs table) and its record, then ``on_batch(batch_id)``.
    ``columns``, ``keys`` and ``request_rows`` (``custom_id``, ``request_model``, ``prompt``)
    are :class:`RowStream` s lined up with the chunks: each batch takes its rows from them."""

    from dagster_together.results.inputs import request_rows_table

    # Upload. A chunk uploaded before gets back the same file id (checksum match).
    uploaded = [
        # Validated and hashed by write_request_chunks with the same rules: no re-read.
        client.files.upload(chunk.path, check=False, checksum=chunk.sha256)
        for chunk in chunks
    ]
    # One list call finds batches an earlier attempt already created for these files.
    reusable = _reusable_batches(client.batches.list_batches())
    submissions = Submissions(layout)
    batches = []
    for chunk, file in zip(chunks, uploaded, strict=True):
        job = reusable.get(file.id)
        reused = job is not None
        if job is None:
            job = client.batches.create_batch(
                file.id, endpoint=endpoint, completion_window=completion_window
            )
            context.log.info(
                f"Created batch {job.id} for {chunk.n_requests:,} requests ({file.id})."
            )
        else:
            context.log.info(
                f"Reusing batch {job.id} ({job.status}) created earlier for the same input "
                f"file {file.id}; no new batch."
            )
        # Keep the inputs next to where the outputs will land: the join needs them. The
        # batch's rows are written a row group at a time, never held whole.
        input_copy = layout.input_jsonl(job.id)
        opts = layout.storage_options
        parts: list[ParquetParts] = []
        try:
            layout.put_file(chunk.path, input_copy)
            own_columns = ParquetParts(layout.inputs_parquet(job.id), opts)
            batch_keys = ParquetParts(layout.keys_parquet(job.id), opts)
            parts += [own_columns, batch_keys]
            batch_rows = None
            if request_rows is not None:  # the results join reads it instead of the JSONL
                batch_rows = ParquetParts(
                    layout.request_rows_parquet(job.id), opts, row_group_size=ROW_GROUP_ROWS
                )
                parts.append(batch_rows)
            for start in range(0, chunk.n_requests, ROW_GROUP_ROWS):
                n = min(ROW_GROUP_ROWS, chunk.n_requests - start)
                piece = columns.take(n)
                if piece.num_columns > 1:  # the user has columns of their own beside custom_id
                    own_columns.write(piece)
                batch_keys.write(keys.take(n))
                if batch_rows is not None:
                    assert request_rows is not None
                    batch_rows.write(request_rows_table(request_rows.take(n), piece))
            for part in parts:
                if part.written:
                    part.commit()
            submissions.record(record(job.id, chunk.n_requests))
        except Exception as exc:
            # The batch is paid for: record it anyway, so that nothing watches nothing.
            if on_batch is not None:
                on_batch(job.id)
            raise dg.Failure(
                description=(
                    f"Batch {job.id} was created, but its inputs could not be stored under "
                    f"storage_url={layout.storage_url!r} ({type(exc).__name__}: {exc}). The "
                    "batch is recorded and keeps running; once the storage works, run this "
                    "submit again: it reuses the batch and stores the inputs."
                ),
                metadata={"together/batch_id": job.id},
            ) from exc
        finally:
            for part in parts:
                part.abort()  # nothing after a commit
        # The batch is recorded once its inputs are stored.
        if on_batch is not None:
            on_batch(job.id)
        batches.append(
            SubmittedBatch(
                batch_id=job.id,
                input_file_id=file.id,
                n_requests=chunk.n_requests,
                status=str(job.status),
                reused=reused,
                input_copy=input_copy,
            )
        )
        give_back_memory()  # each batch's pieces are freed: the next one reuses the memory
    return batches


class _Keys:
    """The ``custom_id`` and content key of every request, in input order, as Arrow blocks
    written to a local ``spill`` file: held in memory they would be what grows with the prompts."""

    _BLOCK = 10_000

    def __init__(self, endpoint: str, spill: str) -> None:
        self.endpoint = endpoint
        self.count = 0
        self._ids: list[str] = []
        self._keys: list[str] = []
        self._blocks = TableSpill(spill)

    def add(self, request: Any, key: str | None = None) -> None:
        """One request, with its content key when known (else computed from its body)."""
        if key is None:
            try:
                key = request_key(self.endpoint, request["body"])
            except (TypeError, ValueError, KeyError):
                key = ""  # not JSON: write_request_chunks refuses it with the row named
        self._ids.append(str(request.get("custom_id")))
        self._keys.append(key)
        self.count += 1
        if len(self._keys) >= self._BLOCK:
            self._flush()

    def add_all(self, requests: Any) -> None:
        # Built from a template: the key comes from the template's text, not the request dict.
        built = requests if isinstance(requests, TableRequests) else None
        for request in requests:
            self.add(request, built.content_key(self.endpoint) if built is not None else None)

    def _flush(self) -> None:
        import pyarrow as pa

        if self._keys:
            ids, keys = strings(self._ids), strings(self._keys)
            self._blocks.append(pa.Table.from_arrays([ids, keys], schema=_keys_schema()))
            self._ids, self._keys = [], []

    def blocks(self) -> Iterator[pa.Table]:
        """``custom_id`` and ``key`` of every request added (none can be added after), a block
        at a time, read back from the spill file."""
        self._flush()
        return self._blocks.tables()

    def keys(self) -> pa.ChunkedArray:
        """Every content key, as a pyarrow chunked string array."""
        import pyarrow as pa

        return pa.chunked_array(
            [b.column("key").combine_chunks() for b in self.blocks()], pa.string()
        )

    def ids_of(self, keys: pa.Array) -> set[str]:
        """The ``custom_id`` of the requests with one of ``keys``."""
        import pyarrow.compute as pc

        if not len(keys):
            return set()
        found: set[str] = set()
        for block in self.blocks():
            wanted = pc.is_in(block["key"], value_set=keys)
            found.update(block["custom_id"].filter(wanted).to_pylist())
        return found


def _keys_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("custom_id", pa.string()), ("key", pa.string())])


def _with_keys(parts: Iterable[Any], keys: RowStream, hits: pa.Table | None) -> Iterator[Any]:
    """Each slice of the user's columns with its rows' ``key`` and ``cached_batch_id``, the
    batch that answered it before (``keys`` holds the rows' keys in the same order; ``hits``
    the store's ``key`` and ``batch_id`` of those it answers)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    hit_keys = hits["key"].combine_chunks() if hits is not None and hits.num_rows else None
    for part in parts:
        key = keys.take(part.num_rows)["key"]
        if hits is None or hit_keys is None:
            paid_by = pa.nulls(len(key), pa.string())
        else:
            index = pc.index_in(key, value_set=hit_keys)
            paid_by = pc.take(hits["batch_id"], index).cast(pa.string())
        yield part.append_column("key", key).append_column("cached_batch_id", paid_by)


def prove_writable(layout: BatchStorageLayout) -> None:
    """``layout.check_writable()``, failing with the setting to fix; nothing was sent.

    Raises:
        dg.Failure: naming ``storage_url`` and the storage's own error.
    """
    try:
        layout.check_writable()
    except Exception as exc:
        raise dg.Failure(
            description=(
                f"Cannot write to storage_url={layout.storage_url!r} ({type(exc).__name__}: "
                f"{exc}). Nothing was sent to Together. Fix storage_url, or its credentials in "
                "storage_options (for s3:// the usual AWS settings), and run again."
            ),
            allow_retries=False,
        ) from exc


def submission_metadata(submission: Submission, layout: BatchStorageLayout) -> dict[str, Any]:
    """The submit's metadata: each figure once, under ``together/``."""
    batches = submission.batches
    n_reused = sum(1 for b in batches if b.reused)
    estimate = submission.estimate
    return {
        "together/submission_id": submission.submission_id,
        "together/n_rows": submission.n_rows,
        "together/n_cached": submission.n_cached,
        "together/estimated_cost_usd": round(submission.estimated_cost, 6),
        "together/estimated_input_tokens": sum(estimate.input_tokens.values()),
        "together/max_output_tokens": sum(estimate.output_tokens.values()),
        "together/n_batches": len(batches),
        "together/n_requests": sum(b.n_requests for b in batches),
        "together/n_created": len(batches) - n_reused,
        "together/n_reused": n_reused,
        "together/batch_ids": dg.MetadataValue.json([b.batch_id for b in batches]),
        "together/batches": _batches_table(batches),
        "together/storage_url": dg.MetadataValue.path(layout.storage_url),
    }


def _log_estimate(
    context: dg.AssetExecutionContext, submission: Submission, cost: CostOptions
) -> None:
    estimate = submission.estimate
    n = sum(estimate.requests.values())
    line = (
        f"Estimated cost of {n:,} requests: ${submission.estimated_cost:,.4f} at the batch "
        f"discount (about {sum(estimate.input_tokens.values()):,} input tokens, at most "
        f"{sum(estimate.output_tokens.values()):,} output tokens; prices of "
        f"{cost.prices.taken_on or 'your price table'})"
    )
    if cost.max_estimated_cost is not None:
        line += f", within max_estimated_cost=${cost.max_estimated_cost:,.2f}"
    context.log.info(line + ".")
    if submission.unpriced_models:
        context.log.warning(
            f"No price for {', '.join(submission.unpriced_models)}: left out of the estimate. "
            "Add them with CostOptions(prices=DEFAULT_PRICES.with_prices({...}))."
        )


def _file_prefix(name: str) -> str:
    # Uploaded file names show up in Together's dashboard: keep them recognisable and legal.
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
    return cleaned or "requests"


def _check_alignment(chunks: Sequence[RequestChunk], id_parts: Iterable[Any]) -> None:
    """The user's columns (their ``custom_id`` given a slice at a time) must line up with the
    chunks row for row (same order, same ids)."""
    # The positions whose id a chunk names: its first and last rows.
    wanted: dict[int, str] = {}
    offset = 0
    for chunk in chunks:
        wanted[offset] = chunk.first_custom_id
        wanted[offset + chunk.n_requests - 1] = chunk.last_custom_id
        offset += chunk.n_requests
    position = 0
    for ids in id_parts:
        for at in [p for p in wanted if position <= p < position + len(ids)]:
            if ids[at - position].as_py() != wanted.pop(at):
                raise dg.Failure(
                    f"Internal mismatch between the request chunks and the prompts table around "
                    f"row {at + 1}; nothing was uploaded. Please report this."
                )
        position += len(ids)
    if position != offset or wanted:
        raise dg.Failure(
            f"The prompts table has {position} rows but {offset} requests were built; "
            "nothing was uploaded. Please report this."
        )


def _reusable_batches(jobs: Sequence[BatchJob]) -> dict[str, BatchJob]:
    """input_file_id -> the newest batch on it that can still produce results."""
    best: dict[str, BatchJob] = {}
    for job in jobs:
        if not job.input_file_id or job.status.value in _NOT_REUSABLE:
            continue
        current = best.get(job.input_file_id)
        if current is None or _created(job) > _created(current):
            best[job.input_file_id] = job
    return best


def _created(job: BatchJob) -> float:
    return job.created_at.timestamp() if job.created_at is not None else 0.0


def _batches_table(batches: Sequence[SubmittedBatch]) -> dg.TableMetadataValue:
    """One row per batch (the first 50): a table the UI lays out in columns."""
    names = ("batch_id", "n_requests", "input_file_id", "status", "reused", "input_copy")
    types = ("string", "int", "string", "string", "bool", "string")
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({name: getattr(b, name) for name in names})
            for b in batches[:_OVERVIEW_ROWS]
        ],
        schema=dg.TableSchema(
            columns=[dg.TableColumn(n, t) for n, t in zip(names, types, strict=True)]
        ),
    )


def follow_up(
    context: dg.AssetExecutionContext,
    client: TogetherClient,
    record: BatchRecord,
    results: Any,
    *,
    layout: BatchStorageLayout,
    endpoint: str,
    completion_window: str,
    resubmit: ResubmitOptions,
    on_batch: Callable[[str], None] | None,
) -> list[SubmittedBatch]:
    """A follow-up batch (attempt + 1) for the rows of ``results`` a new try may fix, when the
    attempts allow one; ``[]`` otherwise. Crash-safe like the submit: the same rows give the
    same bytes, hence the same file id, and the batch on it is reused."""
    import pyarrow.compute as pc

    from dagster_together.requests import write_request_chunks

    retry = set(retryable_rows(results, resubmit))
    if not retry:
        return []
    if record.attempt >= resubmit.max_attempts:
        context.log.warning(
            f"{len(retry):,} request(s) of batch {record.batch_id} could be retried, but they "
            f"had their {resubmit.max_attempts} attempt(s) (max_attempts)."
        )
        return []
    with tempfile.TemporaryDirectory(prefix="dagster-together-") as tmp:
        sent_rows = RequestRows()
        chunks = write_request_chunks(
            _request_lines(layout, record.batch_id, retry),
            tmp,
            prefix=f"retry-{record.attempt + 1}",
            endpoint=endpoint,
            observe=sent_rows.add,
        )
        wanted = strings(sorted(retry))

        def rows_of(location: str) -> Any:
            fs, path = layout.filesystem(location)
            table = read_parquet(fs, path)
            return table.filter(pc.is_in(table["custom_id"], value_set=wanted))

        keys = rows_of(layout.keys_parquet(record.batch_id))
        columns = (
            rows_of(layout.inputs_parquet(record.batch_id))
            if layout.exists(layout.inputs_parquet(record.batch_id))
            else keys.select(["custom_id"])
        )
        _check_alignment(chunks, [columns["custom_id"]])
        batches = create_batches(
            context,
            client,
            chunks,
            RowStream([columns]),
            RowStream([keys]),
            layout=layout,
            endpoint=endpoint,
            completion_window=completion_window,
            record=lambda batch_id, n: BatchRecord(
                record.submission_id, batch_id, record.attempt + 1, record.batch_id, n
            ),
            on_batch=on_batch,
            request_rows=RowStream([sent_rows.table()]),
        )
    for batch in batches:
        context.log.info(
            f"Follow-up batch {batch.batch_id} (attempt {record.attempt + 1}) retries "
            f"{batch.n_requests:,} request(s) of batch {record.batch_id}."
        )
    return batches


def _request_lines(layout: BatchStorageLayout, batch_id: str, wanted: set[str]) -> Any:
    """The request lines of ``batch_id`` whose ``custom_id`` is in ``wanted``, in file order."""
    import json

    fs, path = layout.filesystem(layout.input_jsonl(batch_id))
    with fs.open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                request = json.loads(line)
                if request.get("custom_id") in wanted:
                    yield request
