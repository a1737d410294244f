"""The asset factory: submit a prompts table as Together batches, join each batch's results.

``together_batch_assets(...)`` returns a :class:`TogetherBatchDefs` bundle:

* ``{name}_batches`` (submit): builds and validates request JSONL from the user's prompts asset,
  uploads each chunk, creates (or reuses) one batch per chunk and registers every batch id as a
  dynamic partition. No run waits for the batches.
* the sensor (:func:`~dagster_together.sensors.together_batch_sensor`): one ``GET /batches`` per
  tick, one results run per batch that reached a final status.
* ``{name}_results`` (one partition per batch id): downloads output and error files to the
  user's storage and joins them to the inputs into Parquet, one row per request, with the
  ``completeness`` and ``error_rate`` asset checks.

Heavy libraries (pyarrow, fsspec, httpx) are imported inside the asset bodies only.
"""

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from dagster_together.sensors import DEFAULT_SENSOR_INTERVAL_SECONDS, together_batch_sensor
from dagster_together.storage import BatchStorageLayout

if TYPE_CHECKING:
    from dagster_together.client import BatchJob, TogetherClient
    from dagster_together.requests import RequestChunk, RequestTemplate
    from dagster_together.resources import TogetherResource
    from dagster_together.results import JoinSummary

__all__ = [
    "COMPLETENESS_CHECK",
    "DEFAULT_RESULTS_RETRY_POLICY",
    "ERROR_RATE_CHECK",
    "TogetherBatchDefs",
    "together_batch_assets",
]

COMPLETENESS_CHECK = "completeness"
"""Asset check: every input appears exactly once; no unknown or duplicate output ids."""
ERROR_RATE_CHECK = "error_rate"
"""Asset check: the share of inputs without a successful answer is at most ``max_error_rate``."""

DEFAULT_RESULTS_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL
)
"""Retries of the results step: it is idempotent (downloads and the join overwrite), and a
storage or network hiccup after the client's own HTTP retries should not need a human."""

# A batch in one of these states will never produce results: a re-submit of the same input
# must create a new batch rather than reuse it.
_NOT_REUSABLE = frozenset({"FAILED", "EXPIRED", "CANCELLED", "CANCELING"})
_PREVIEW_ROWS = 5
_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(frozen=True)
class TogetherBatchDefs:
    """Everything :func:`together_batch_assets` built, ready to put in ``dg.Definitions``.

    Attributes:
        submit_asset: ``{name}_batches``: uploads the prompts and creates the batches.
        results_asset: ``{name}_results``: one partition per batch id, the joined Parquet.
        partitions_def: the dynamic partitions (one key per batch id) of the results asset.
        results_job: materialises one results partition; what the sensor launches.
        sensor: watches the batches and launches ``results_job`` for every finished one.
        layout: where the files live on the user's storage.
    """

    submit_asset: dg.AssetsDefinition
    results_asset: dg.AssetsDefinition
    partitions_def: dg.DynamicPartitionsDefinition
    results_job: Any  # what dg.define_asset_job returns (not exported by Dagster)
    sensor: dg.SensorDefinition
    layout: BatchStorageLayout

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        """The submit and results assets."""
        return [self.submit_asset, self.results_asset]

    @property
    def defs(self) -> dg.Definitions:
        """A ``dg.Definitions`` with the assets, the job and the sensor (no resources: merge
        with your own, e.g. ``dg.Definitions.merge(bundle.defs, dg.Definitions(resources=...))``).
        """
        return dg.Definitions(
            assets=self.assets,
            jobs=[self.results_job],
            sensors=[self.sensor],
        )


def _asset_key_of(value: Any) -> dg.AssetKey:
    """The key of an AssetKey, a string, a path, an AssetSpec or a single-asset definition."""
    key = getattr(value, "key", None)
    if isinstance(key, dg.AssetKey):
        return key
    return dg.AssetKey.from_coercible(value)


def together_batch_assets(
    *,
    name: str,
    prompts: dg.AssetKey | str | Sequence[str] | dg.AssetsDefinition | dg.AssetSpec,
    storage_url: str,
    storage_options: Mapping[str, Any] | None = None,
    template: "RequestTemplate | None" = None,
    id_column: str | None = None,
    endpoint: str | None = None,
    completion_window: str = "24h",
    max_requests_per_batch: int = 50_000,
    max_bytes_per_batch: int | None = None,
    max_error_rate: float = 0.05,
    error_rate_severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.WARN,
    resource_key: str = "together",
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    submit_partitions_def: dg.PartitionsDefinition | None = None,
    results_retry_policy: dg.RetryPolicy | None = DEFAULT_RESULTS_RETRY_POLICY,
    minimum_interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS,
    sensor_default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> TogetherBatchDefs:
    """Build the assets, job and sensor that run a prompts table through Together's Batch API.

    Args:
        name: base name: assets ``{name}_batches`` and ``{name}_results``, job
            ``{name}_results_job``, sensor ``{name}_batch_sensor``.
        prompts: the upstream asset giving the prompts: a pyarrow Table, a pandas DataFrame, or
            the path/URL of a Parquet or JSONL file (loaded through its IO manager). Either it
            has ``custom_id`` and ``body`` columns, or ``template`` builds the bodies.
        storage_url: a local directory or fsspec URL (``s3://bucket/prefix``) for the input
            copies, the downloaded output/error files and the results dataset
            (:class:`~dagster_together.storage.BatchStorageLayout`).
        storage_options: fsspec options for ``storage_url`` (credentials, endpoint).
        template: builds bodies from a prompt column (model, system prompt, extra fields).
        id_column: the column whose values become ``custom_id`` (with ``template``).
        endpoint: the endpoint every request targets. None: the template's endpoint, else
            ``/v1/chat/completions``.
        completion_window: the batch completion window (the API knows ``"24h"``).
        max_requests_per_batch: requests per batch, at most the API's 50,000.
        max_bytes_per_batch: bytes per batch input file; None for the API's 100 MB.
        max_error_rate: the ``error_rate`` check passes while at most this share of the inputs
            lacks a successful answer.
        error_rate_severity: severity of a failed ``error_rate`` check. WARN by default: some
            failed requests are normal and the table is still complete and usable; use ERROR to
            make a high error rate stand out as a failure.
        resource_key: key of the :class:`~dagster_together.TogetherResource`.
        key_prefix: prefix for both asset keys.
        group_name: asset group of both assets.
        submit_partitions_def: partitions of the submit asset, to line it up with a partitioned
            prompts asset (e.g. daily: each day's prompts become that day's batches).
        results_retry_policy: step retries of the results asset (2 retries, 15 s then 30 s);
            None to fail at once. A batch that is not finished yet is never retried.
        minimum_interval_seconds: the sensor's interval (default 60).
        sensor_default_status: the sensor's default status (RUNNING: an idle tick costs no API
            call; batches nobody collects expire).

    Returns:
        TogetherBatchDefs: the assets, partitions, job and sensor; ``.defs`` is a
        ``dg.Definitions`` of all of them.

    Example:
        .. code-block:: python

            import dagster as dg
            import pyarrow as pa
            from dagster_together import RequestTemplate, TogetherResource, together_batch_assets

            @dg.asset
            def reviews() -> pa.Table:
                return pa.table({"review_id": [1, 2], "text": ["Great!", "Broke after a day."]})

            reviews_batch = together_batch_assets(
                name="reviews",
                prompts=reviews,
                storage_url="s3://my-bucket/together/reviews",
                template=RequestTemplate(
                    model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
                    prompt_column="text",
                    system_prompt="Classify the sentiment: positive, negative or neutral.",
                    body={"max_tokens": 5},
                ),
                id_column="review_id",
            )

            defs = dg.Definitions.merge(
                reviews_batch.defs,
                dg.Definitions(
                    assets=[reviews],
                    resources={"together": TogetherResource(api_key=dg.EnvVar("TOGETHER_API_KEY"))},
                ),
            )
    """
    if not 0.0 <= max_error_rate <= 1.0:
        raise ValueError(f"max_error_rate must be between 0 and 1, got {max_error_rate}.")
    prompts_key = _asset_key_of(prompts)
    if endpoint is None:
        endpoint = template.endpoint if template is not None else "/v1/chat/completions"
    elif template is not None and template.endpoint != endpoint:
        raise ValueError(
            f"endpoint={endpoint!r} contradicts the template's endpoint {template.endpoint!r}; "
            "set it in one place."
        )
    prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix or [])
    # Partition definitions are global to the instance: the key prefix keeps two pipelines with
    # the same name apart.
    partitions_name = "__".join([*prefix, f"{name}_batches"])
    partitions_def = dg.DynamicPartitionsDefinition(name=partitions_name)
    layout = BatchStorageLayout(storage_url, storage_options)
    submit_key = dg.AssetKey([*prefix, f"{name}_batches"])
    results_key = dg.AssetKey([*prefix, f"{name}_results"])

    @dg.asset(
        key=submit_key,
        ins={"prompts": dg.AssetIn(key=prompts_key)},
        partitions_def=submit_partitions_def,
        required_resource_keys={resource_key},
        kinds={"together"},
        group_name=group_name,
        # Give this pool a limit of 1 to serialise double clicks: the second run then reuses.
        pool=f"together_submit_{partitions_def.name}",
        description=(
            f"Submits the prompts of {prompts_key.to_user_string()} to Together's Batch API: "
            f"one batch per chunk of at most {max_requests_per_batch:,} requests, each batch id "
            f"registered as a partition of {results_key.to_user_string()}. Re-running reuses "
            "batches already created for the same input."
        ),
    )
    def _submit(context: dg.AssetExecutionContext, prompts: Any) -> dg.MaterializeResult:
        resource: TogetherResource = getattr(context.resources, resource_key)
        return _submit_batches(
            context,
            prompts,
            client=resource.get_client(),
            partitions_def_name=partitions_name,
            layout=layout,
            template=template,
            id_column=id_column,
            endpoint=endpoint,
            completion_window=completion_window,
            max_requests=max_requests_per_batch,
            max_bytes=max_bytes_per_batch,
            prefix=name,
        )

    @dg.asset(
        key=results_key,
        # A batch comes from one submit partition, which Dagster cannot know statically: with a
        # partitioned submit, each batch is shown as depending on all of them.
        deps=[
            dg.AssetDep(submit_key, partition_mapping=dg.AllPartitionMapping())
            if submit_partitions_def is not None
            else submit_key
        ],
        partitions_def=partitions_def,
        required_resource_keys={resource_key},
        retry_policy=results_retry_policy,
        kinds={"together", "parquet"},
        group_name=group_name,
        check_specs=[
            dg.AssetCheckSpec(
                COMPLETENESS_CHECK,
                asset=results_key,
                description="Every input custom_id exactly once; no unknown or duplicate outputs.",
            ),
            dg.AssetCheckSpec(
                ERROR_RATE_CHECK,
                asset=results_key,
                description=(
                    f"At most {max_error_rate:.1%} of the inputs without a successful answer."
                ),
            ),
        ],
        description=(
            "The results of one Together batch (partition = batch id): output and error files "
            "downloaded to storage and joined to the inputs into Parquet, one row per request "
            "with its status (succeeded, failed, missing, expired, cancelled)."
        ),
    )
    def _results(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        resource: TogetherResource = getattr(context.resources, resource_key)
        return _collect_results(
            context,
            client=resource.get_client(),
            batch_id=context.partition_key,
            layout=layout,
            max_error_rate=max_error_rate,
            error_rate_severity=error_rate_severity,
        )

    results_job = dg.define_asset_job(
        name=f"{'__'.join([*prefix, name])}_results_job",
        selection=dg.AssetSelection.assets(results_key),
        description=f"Joins the results of one batch into {results_key.to_user_string()}.",
    )
    sensor = together_batch_sensor(
        name=f"{'__'.join([*prefix, name])}_batch_sensor",
        job=results_job,
        results_asset_key=results_key,
        partitions_def=partitions_def,
        resource_key=resource_key,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=sensor_default_status,
    )
    return TogetherBatchDefs(
        submit_asset=_submit,
        results_asset=_results,
        partitions_def=partitions_def,
        results_job=results_job,
        sensor=sensor,
        layout=layout,
    )


# --------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------
def _submit_batches(
    context: dg.AssetExecutionContext,
    prompts: Any,
    *,
    client: "TogetherClient",
    partitions_def_name: str,
    layout: BatchStorageLayout,
    template: "RequestTemplate | None",
    id_column: str | None,
    endpoint: str,
    completion_window: str,
    max_requests: int,
    max_bytes: int | None,
    prefix: str,
) -> dg.MaterializeResult:
    from dagster_together.client import InvalidRequestFileError
    from dagster_together.requests import (
        MAX_BATCH_BYTES,
        build_requests,
        input_columns_table,
        write_request_chunks,
    )

    with tempfile.TemporaryDirectory(prefix="dagster-together-") as tmp:
        # 1. Build and validate everything before the first byte goes out.
        try:
            chunks = write_request_chunks(
                build_requests(
                    prompts,
                    template=template,
                    id_column=id_column,
                    endpoint=endpoint if template is not None else None,
                ),
                tmp,
                max_requests=max_requests,
                max_bytes=max_bytes or MAX_BATCH_BYTES,
                prefix=_file_prefix(prefix),
                endpoint=endpoint,
            )
            if chunks:
                columns = input_columns_table(prompts, id_column=id_column if template else None)
        except (InvalidRequestFileError, TypeError) as exc:
            # A data problem, not a crash: a clean message in the UI, and no retry would help.
            raise dg.Failure(
                description=f"The prompts cannot be submitted: {exc} Nothing was sent to Together.",
                allow_retries=False,
            ) from exc
        if not chunks:
            context.log.warning("The prompts table is empty: no batch was submitted.")
            return dg.MaterializeResult(metadata={"n_batches": 0, "n_requests": 0})
        _check_alignment(chunks, columns)

        # 2. Upload. A chunk uploaded before gets back the same file id (checksum match).
        uploaded = []
        for chunk in chunks:
            # Validated and hashed by write_request_chunks with the same rules: no re-read.
            uploaded.append(client.files.upload(chunk.path, check=False, checksum=chunk.sha256))

        # 3. One list call finds batches an earlier attempt already created for these files.
        reusable = _reusable_batches(client.batches.list_batches())

        rows: list[dict[str, Any]] = []
        offset = 0
        for chunk, file in zip(chunks, uploaded, strict=True):
            job = reusable.get(file.id)
            reused = job is not None
            if job is None:
                job = client.batches.create_batch(
                    file.id, endpoint=endpoint, completion_window=completion_window
                )
                context.log.info(
                    f"Created batch {job.id} for {chunk.n_requests} requests ({file.id})."
                )
            else:
                context.log.info(
                    f"Reusing batch {job.id} ({job.status}) created earlier for the same input "
                    f"file {file.id}; no new batch."
                )
            # 4. Keep the inputs next to where the outputs will land: the join needs them.
            input_copy = layout.input_jsonl(job.id)
            layout.put_file(chunk.path, input_copy)
            columns_copy = None
            if columns.num_columns > 1:  # the user has columns of their own beside custom_id
                columns_copy = layout.inputs_parquet(job.id)
                _write_parquet(columns.slice(offset, chunk.n_requests), columns_copy, layout)
            offset += chunk.n_requests
            # 5. Only now is the batch watched: a crash before this line is healed by a re-run
            # (same file id -> the batch above is found and reused).
            context.instance.add_dynamic_partitions(partitions_def_name, [job.id])
            rows.append(
                {
                    "batch_id": job.id,
                    "input_file_id": file.id,
                    "n_requests": chunk.n_requests,
                    "status": str(job.status),
                    "reused": reused,
                    "input_copy": input_copy,
                    "inputs_parquet": columns_copy,
                }
            )

    n_reused = sum(1 for row in rows if row["reused"])
    return dg.MaterializeResult(
        metadata={
            "n_batches": len(rows),
            "n_requests": sum(row["n_requests"] for row in rows),
            "n_created": len(rows) - n_reused,
            "n_reused": n_reused,
            "batch_ids": dg.MetadataValue.json([row["batch_id"] for row in rows]),
            "input_file_ids": dg.MetadataValue.json([row["input_file_id"] for row in rows]),
            "batches": dg.MetadataValue.json(rows),
            "overview": dg.MetadataValue.md(_batches_markdown(rows)),
            "storage_url": dg.MetadataValue.path(layout.storage_url),
        }
    )


def _file_prefix(name: str) -> str:
    # Uploaded file names show up in Together's dashboard: keep them recognisable and legal.
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
    return cleaned or "requests"


def _check_alignment(chunks: Sequence["RequestChunk"], columns: Any) -> None:
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


def _reusable_batches(jobs: Sequence["BatchJob"]) -> dict[str, "BatchJob"]:
    """input_file_id -> the newest batch on it that can still produce results."""
    best: dict[str, BatchJob] = {}
    for job in jobs:
        if not job.input_file_id or job.status.value in _NOT_REUSABLE:
            continue
        current = best.get(job.input_file_id)
        if current is None or _created(job) > _created(current):
            best[job.input_file_id] = job
    return best


def _created(job: "BatchJob") -> float:
    return job.created_at.timestamp() if job.created_at is not None else 0.0


def _write_parquet(table: Any, location: str, layout: BatchStorageLayout) -> None:
    import os

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="dagster-together-") as tmp:
        local = os.path.join(tmp, "inputs.parquet")
        pq.write_table(table, local)
        layout.put_file(local, location)


def _batches_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| batch id | requests | input file | status | |", "|---|---:|---|---|---|"]
    for row in rows[:50]:
        lines.append(
            f"| `{row['batch_id']}` | {row['n_requests']:,} | `{row['input_file_id']}` | "
            f"{row['status']} | {'reused' if row['reused'] else 'created'} |"
        )
    if len(rows) > 50:
        lines.append(f"| ... {len(rows) - 50} more | | | | |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
def _collect_results(
    context: dg.AssetExecutionContext,
    *,
    client: "TogetherClient",
    batch_id: str,
    layout: BatchStorageLayout,
    max_error_rate: float,
    error_rate_severity: dg.AssetCheckSeverity,
) -> dg.MaterializeResult:
    from dagster_together.results import join_results

    job = client.batches.get_batch(batch_id)
    if not job.status.is_terminal:
        progress = f", {job.progress:.0f}% done" if job.progress is not None else ""
        raise dg.Failure(
            f"Batch {batch_id} is {job.status}{progress}: its results can be joined once it is "
            "COMPLETED, FAILED, EXPIRED or CANCELLED. The batch sensor launches this run by "
            "itself when that happens.",
            allow_retries=False,
        )
    options = dict(layout.storage_options or {})

    def download(file_id: str | None, location: str) -> list[str]:
        if not file_id:
            return []
        return [
            client.files.retrieve_content(
                file_id, output=location, storage_options=options, logger=context.log
            ).filename
        ]

    outputs = download(job.output_file_id, layout.output_jsonl(batch_id))
    errors = download(job.error_file_id, layout.errors_jsonl(batch_id))
    if not outputs and not errors:
        context.log.warning(
            f"Batch {batch_id} ended {job.status} without output or error file"
            + (f" ({job.error})" if job.error else "")
            + "; every input is reported without an answer."
        )

    destination = layout.results_parquet(batch_id)
    columns = layout.inputs_parquet(batch_id)
    summary = join_results(
        # The request file gives every row (and the prompt); the user's own columns, when the
        # submit kept them, are added beside.
        inputs=layout.input_jsonl(batch_id),
        input_columns=columns if layout.exists(columns) else None,
        outputs=outputs,
        errors=errors,
        destination=destination,
        storage_options=options,
        batch_status=str(job.status),
    )
    context.log.info(
        f"Batch {batch_id} ({job.status}): "
        + ", ".join(f"{n} {status}" for status, n in summary.counts.items() if n)
        + f"; written to {destination}"
    )
    return _results_materialization(
        summary,
        job=job,
        max_error_rate=max_error_rate,
        error_rate_severity=error_rate_severity,
    )


def _results_materialization(
    summary: "JoinSummary",
    *,
    job: "BatchJob",
    max_error_rate: float,
    error_rate_severity: dg.AssetCheckSeverity,
) -> dg.MaterializeResult:
    """Metadata (table, statuses, token usage by model, preview) and the two check results."""
    metadata: dict[str, Any] = {
        "dagster/row_count": summary.n_rows,
        "dagster/uri": dg.MetadataValue.path(summary.destination),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name, type) for name, type in summary.columns]
        ),
        "batch_id": job.id,
        "batch_status": str(job.status),
        "error_rate": summary.error_rate,
        "preview": dg.MetadataValue.md(summary.preview(_PREVIEW_ROWS)),
    }
    metadata.update({f"n_{status}": n for status, n in summary.counts.items()})
    if job.error:
        metadata["batch_error"] = job.error
    # Token usage, totals and per model, as dagster-openai reports it ("openai.total_tokens"):
    # plain numbers that Dagster Insights can chart.
    totals = dict.fromkeys(_TOKEN_FIELDS, 0)
    for model, usage in sorted(summary.tokens_by_model.items()):
        for field_name in _TOKEN_FIELDS:
            count = int(usage.get(field_name, 0) or 0)
            totals[field_name] += count
            metadata[f"together.{model}.{field_name}"] = count
    metadata.update({f"together.{k}": v for k, v in totals.items()})
    metadata["together.calls"] = summary.counts.get("succeeded", 0)
    metadata["together/usage_by_model"] = dg.MetadataValue.json(summary.tokens_by_model)

    # A COMPLETED batch must answer every request (output or error line); after FAILED, EXPIRED
    # or CANCELLED unanswered requests are expected and show up in the error rate instead.
    unanswered = summary.counts.get("missing", 0) if str(job.status) == "COMPLETED" else 0
    complete = summary.complete and unanswered == 0
    completeness = dg.AssetCheckResult(
        check_name=COMPLETENESS_CHECK,
        passed=complete,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "n_inputs": summary.n_inputs,
            "n_rows": summary.n_rows,
            "unknown_output_ids": summary.unknown_ids,
            "duplicate_output_ids": summary.duplicate_ids,
            "malformed_lines": summary.n_malformed_lines,
            "unanswered_in_completed_batch": unanswered,
            "examples": dg.MetadataValue.json(
                {
                    "unknown": list(summary.unknown_id_examples[:10]),
                    "duplicate": list(summary.duplicate_id_examples[:10]),
                    "malformed": [list(m) for m in summary.malformed_lines[:10]],
                }
            ),
        },
        description=None
        if complete
        else "Together's answer files do not match the inputs one to one; see the metadata.",
    )
    error_rate = dg.AssetCheckResult(
        check_name=ERROR_RATE_CHECK,
        passed=summary.error_rate <= max_error_rate,
        severity=error_rate_severity,
        metadata={
            "error_rate": summary.error_rate,
            "max_error_rate": max_error_rate,
            "n_inputs": summary.n_inputs,
            **{f"n_{status}": n for status, n in summary.counts.items()},
        },
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[completeness, error_rate])
