"""Submitting a prompts table from inside a Dagster run: build and validate every request file,
upload, create (or reuse) one batch per file, keep the inputs next to where the answers will land.

:meth:`TogetherResource.submit_batches <dagster_together.TogetherResource.submit_batches>` and
``submit_and_wait`` call :func:`submit_prompts`; it knows nothing of partitions or sensors: the
caller says what to do with each batch once it exists (``on_batch``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from dagster_together.cost import BudgetExceededError, CostEstimate, CostOptions
from dagster_together.options import BatchingOptions
from dagster_together.storage import BatchStorageLayout

if TYPE_CHECKING:
    from dagster_together.client import BatchJob, TogetherClient
    from dagster_together.requests import RequestChunk, RequestTemplate

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
    """

    batches: list[SubmittedBatch]
    estimate: CostEstimate
    estimated_cost: float
    unpriced_models: list[str]


def endpoint_of(template: RequestTemplate | None, batching: BatchingOptions) -> str:
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
    template: RequestTemplate | None,
    id_column: str | None,
    batching: BatchingOptions,
    cost: CostOptions,
    file_prefix: str,
    on_batch: Callable[[str], None] | None = None,
) -> Submission:
    """Validate, estimate, upload and create the batches of ``prompts`` (none for an empty
    table).

    Nothing reaches the API before every request is built and validated and the estimate is
    within ``cost.max_estimated_cost``. ``on_batch(batch_id)``
    runs once a batch exists and its inputs are stored: the submit asset registers the results
    partition there. A crash before that is healed by a re-run: the same request bytes get the
    same file id, and the batch on it is found and reused instead of billed again.
    """
    from dagster_together.client import InvalidRequestFileError
    from dagster_together.requests import (
        MAX_BATCH_BYTES,
        build_requests,
        input_columns_table,
        write_request_chunks,
    )

    endpoint = endpoint_of(template, batching)
    # Before anything is paid for: a batch whose inputs cannot be stored cannot be joined.
    prove_writable(layout)
    estimate = CostEstimate()
    with tempfile.TemporaryDirectory(prefix="dagster-together-") as tmp:
        # 1. Build, validate and estimate everything before the first byte goes out.
        try:
            chunks = write_request_chunks(
                build_requests(
                    prompts,
                    template=template,
                    id_column=id_column,
                    endpoint=endpoint if template is not None else None,
                ),
                tmp,
                max_requests=batching.max_requests_per_batch,
                max_bytes=batching.max_bytes_per_batch or MAX_BATCH_BYTES,
                prefix=_file_prefix(file_prefix),
                endpoint=endpoint,
                observe=estimate.add,
            )
            columns = (
                input_columns_table(prompts, id_column=id_column if template else None)
                if chunks
                else None
            )
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
        submission = Submission([], estimate, estimated_cost, unpriced)
        if not chunks or columns is None:
            return submission
        _log_estimate(context, submission, cost)
        _check_alignment(chunks, columns)

        # 2. Upload. A chunk uploaded before gets back the same file id (checksum match).
        uploaded = [
            # Validated and hashed by write_request_chunks with the same rules: no re-read.
            client.files.upload(chunk.path, check=False, checksum=chunk.sha256)
            for chunk in chunks
        ]

        # 3. One list call finds batches an earlier attempt already created for these files.
        reusable = _reusable_batches(client.batches.list_batches())

        offset = 0
        for chunk, file in zip(chunks, uploaded, strict=True):
            job = reusable.get(file.id)
            reused = job is not None
            if job is None:
                job = client.batches.create_batch(
                    file.id, endpoint=endpoint, completion_window=batching.completion_window
                )
                context.log.info(
                    f"Created batch {job.id} for {chunk.n_requests:,} requests ({file.id})."
                )
            else:
                context.log.info(
                    f"Reusing batch {job.id} ({job.status}) created earlier for the same input "
                    f"file {file.id}; no new batch."
                )
            # 4. Keep the inputs next to where the outputs will land: the join needs them.
            input_copy = layout.input_jsonl(job.id)
            try:
                layout.put_file(chunk.path, input_copy)
                if columns.num_columns > 1:  # the user has columns of their own beside custom_id
                    _write_parquet(
                        columns.slice(offset, chunk.n_requests),
                        layout.inputs_parquet(job.id),
                        layout,
                    )
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
            offset += chunk.n_requests
            # 5. The batch is recorded once its inputs are stored.
            if on_batch is not None:
                on_batch(job.id)
            submission.batches.append(
                SubmittedBatch(
                    batch_id=job.id,
                    input_file_id=file.id,
                    n_requests=chunk.n_requests,
                    status=str(job.status),
                    reused=reused,
                    input_copy=input_copy,
                )
            )
    return submission


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


def _check_alignment(chunks: Sequence[RequestChunk], columns: Any) -> None:
    """The user's columns must line up with the chunks row for row (same order, same ids)."""
    ids = columns.column("custom_id")
    offset = 0
    for chunk in chunks:
        first = ids[offset].as_py()
        last = ids[offset + chunk.n_requests - 1].as_py()
        if (first, last) != (chunk.first_custom_id, chunk.last_custom_id):
            raise dg.Failure(
                f"Internal mismatch between the request chunks and the prompts table around "
                f"custom_id {chunk.first_custom_id!r}; nothing was uploaded. Please report this."
            )
        offset += chunk.n_requests
    if offset != columns.num_rows:
        raise dg.Failure(
            f"The prompts table has {columns.num_rows} rows but {offset} requests were built; "
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


def _write_parquet(table: Any, location: str, layout: BatchStorageLayout) -> None:
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="dagster-together-") as tmp:
        local = os.path.join(tmp, "inputs.parquet")
        pq.write_table(table, local)
        layout.put_file(local, location)


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
