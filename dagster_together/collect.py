"""Collecting one finished batch from inside a Dagster run: download its output and error files
to the user's storage, join them to the inputs into Parquet, and describe the table for the UI
(row count, schema with a description per column, location, statuses, tokens, a preview) with
the ``completeness`` and ``error_rate`` check results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import dagster as dg

from dagster_together.answers import ANSWER_COLUMNS, AnswerStore
from dagster_together.cost import PriceTable, cost_of_usage
from dagster_together.final_table import FinalSummary, assemble_final
from dagster_together.options import ResubmitOptions, ResultsOptions
from dagster_together.storage import BatchStorageLayout, read_parquet
from dagster_together.submissions import BatchRecord, Submissions

if TYPE_CHECKING:
    from dagster_together.client import BatchJob, TogetherClient
    from dagster_together.results import JoinSummary
    from dagster_together.submit import SubmittedBatch

__all__ = [
    "COMPLETENESS_CHECK",
    "ERROR_RATE_CHECK",
    "FinalTable",
    "RESULT_COLUMN_DESCRIPTIONS",
    "collect_batch",
    "report_final",
    "store_answers_and_follow_up",
    "results_check_specs",
    "results_metadata",
]

COMPLETENESS_CHECK = "completeness"
"""Asset check: every input appears exactly once; no unknown or duplicate output ids."""
INVALID_OUTPUT_CHECK = "invalid_output_rate"
"""Asset check (with an output schema): the share of answers that do not match it."""
ERROR_RATE_CHECK = "error_rate"
"""Asset check: the share of inputs without a successful answer is at most ``max_error_rate``."""

RESULT_COLUMN_DESCRIPTIONS: Mapping[str, str] = {
    "custom_id": "The request's id: your id column's value as text, unique in the batch.",
    "request_model": "The model named in the request.",
    "prompt": "The last user message (or prompt) of the request.",
    "status": "succeeded, failed, missing, expired, cancelled or invalid_output.",
    "content": "The answer's text (choices[0]); null without an answer.",
    "finish_reason": "Why the model stopped: stop, length, tool_calls, ...",
    "prompt_tokens": "Input tokens billed for this request.",
    "completion_tokens": "Output tokens billed for this request.",
    "total_tokens": "prompt_tokens + completion_tokens.",
    "model": "The model that answered, as Together reports it.",
    "error": "Together's error message for a failed request.",
    "error_code": "Together's error code for a failed request.",
    "response": "The raw output or error line as JSON text (by default only where the row did "
    "not succeed: results raw_responses).",
    "tool_calls": "The tool calls the model made, as JSON text.",
    "reasoning": "The model's reasoning text, when it returns one.",
    "language": "The language of the audio (transcriptions).",
    "duration": "The duration of the audio in seconds (transcriptions).",
    "attempts": "How many batches the row went to (0: answered from the answer store).",
    "batch_id": "The batch that answered the row (for a cached row: the one that paid).",
    "cached": "True when the answer store answered the row.",
}
"""What each column of a results table holds; the user's own columns come from the prompts."""

_PREVIEW_ROWS = 5


def results_check_specs(
    asset_key: dg.AssetKey, options: ResultsOptions, *, structured: bool = False
) -> list[dg.AssetCheckSpec]:
    """The ``completeness`` and ``error_rate`` checks of a results asset, and with an output
    schema (``structured``) ``invalid_output_rate``."""
    invalid = dg.AssetCheckSpec(
        INVALID_OUTPUT_CHECK,
        asset=asset_key,
        description=(
            f"At most {options.max_invalid_output_rate:.1%} of the answers not matching the "
            "output schema."
        ),
    )
    return ([invalid] if structured else []) + [
        dg.AssetCheckSpec(
            COMPLETENESS_CHECK,
            asset=asset_key,
            description="Every input custom_id exactly once; no unknown or duplicate outputs.",
        ),
        dg.AssetCheckSpec(
            ERROR_RATE_CHECK,
            asset=asset_key,
            description=(
                f"At most {options.max_error_rate:.1%} of the inputs without a successful answer."
            ),
        ),
    ]


def collect_batch(
    context: dg.AssetExecutionContext,
    client: TogetherClient,
    batch_id: str,
    layout: BatchStorageLayout,
    record: BatchRecord | None = None,
    raw_responses: str = "failed",
) -> tuple[BatchJob, JoinSummary]:
    """Download and join one batch that has ended; fails clearly while it is still running.
    Answers are parsed with the output schema of ``record``'s submission, if it kept one;
    ``raw_responses`` is :func:`~dagster_together.results.join_results`'."""
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
    rows = layout.request_rows_parquet(batch_id)
    if layout.exists(rows):
        # The submit wrote the rows in request order with their model, prompt and the user's
        # columns: no request JSON to parse.
        inputs, columns = rows, None
    else:  # an older submission: the request file gives every row, the user's columns beside
        inputs = layout.input_jsonl(batch_id)
        if not layout.exists(inputs):
            # The submit could not store it (it says so, and records the batch anyway): the
            # request file is still on Together's side.
            context.log.warning(
                f"The request file of batch {batch_id} is not at {inputs}; downloading it from "
                f"Together ({job.input_file_id}). Your own columns are left out of this table."
            )
            client.files.retrieve_content(
                job.input_file_id, output=inputs, storage_options=options, logger=context.log
            )
        columns = layout.inputs_parquet(batch_id)
        columns = columns if layout.exists(columns) else None
    summary = join_results(
        inputs=inputs,
        input_columns=columns,
        outputs=outputs,
        errors=errors,
        destination=destination,
        storage_options=options,
        batch_status=str(job.status),
        raw_responses=raw_responses,
        output_schema=(
            Submissions(layout).schema(record.submission_id) if record is not None else None
        ),
    )
    context.log.info(
        f"Batch {batch_id} ({job.status}): "
        + ", ".join(f"{n:,} {status}" for status, n in summary.counts.items() if n)
        + f"; written to {destination}"
    )
    return job, summary


class _Table(Protocol):
    """What a results or a final table reports (``JoinSummary``, ``FinalSummary``)."""

    @property
    def n_rows(self) -> int: ...
    @property
    def counts(self) -> dict[str, int]: ...
    @property
    def tokens_by_model(self) -> dict[str, dict[str, int]]: ...
    @property
    def columns(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def preview_rows(self) -> tuple[dict[str, Any], ...]: ...


@dataclass(frozen=True)
class FinalTable:
    """Where a submission's final table is reported: the asset, and its partitions (one per
    submission)."""

    asset_key: dg.AssetKey
    partitions_def: dg.DynamicPartitionsDefinition


def store_answers_and_follow_up(
    context: dg.AssetExecutionContext,
    client: TogetherClient,
    job: BatchJob,
    record: BatchRecord | None,
    layout: BatchStorageLayout,
    resubmit: ResubmitOptions,
    on_batch: Callable[[str], None] | None,
) -> list[SubmittedBatch]:
    """After a batch is joined: its answers go to the answer store, and the rows a new try may
    fix to a follow-up batch (returned). Nothing for a batch submitted without a ``record``."""
    from dagster_together.submit import follow_up

    if record is None:
        return []
    fs, path = layout.filesystem(layout.results_parquet(job.id))
    results = read_parquet(fs, path, ["custom_id", "status", "error_code", *ANSWER_COLUMNS])
    kfs, kpath = layout.filesystem(layout.keys_parquet(job.id))
    stored = AnswerStore(layout).add(job.id, results, read_parquet(kfs, kpath))
    context.log.info(f"{stored:,} answer(s) of batch {job.id} kept in {layout.answers_url}.")
    follow_ups = follow_up(
        context,
        client,
        record,
        results,
        layout=layout,
        endpoint=job.endpoint or "/v1/chat/completions",
        completion_window="24h",
        resubmit=resubmit,
        on_batch=on_batch,
    )
    return follow_ups


def report_final(
    context: dg.AssetExecutionContext,
    layout: BatchStorageLayout,
    submission_id: str,
    *,
    prices: PriceTable,
    target: FinalTable | None,
) -> FinalSummary | None:
    """Assemble the submission's final table once every batch of it has its results, and
    report it as a materialization of ``target`` (its partition ``submission_id``)."""
    if not Submissions(layout).complete(submission_id):
        return None
    final = assemble_final(layout, submission_id)
    context.log.info(
        f"Submission {submission_id} is complete: {final.n_rows:,} rows ("
        + ", ".join(f"{n:,} {status}" for status, n in sorted(final.counts.items()))
        + f", {final.n_cached:,} from the answer store) in {final.destination}"
    )
    if target is not None:
        name = target.partitions_def.name
        assert name is not None
        context.instance.add_dynamic_partitions(name, [submission_id])
        metadata = results_metadata([final], uri=final.destination, prices=prices)
        metadata["together/submission_id"] = submission_id
        metadata["together/n_cached"] = final.n_cached
        context.log_event(
            dg.AssetMaterialization(
                asset_key=target.asset_key, partition=submission_id, metadata=metadata
            )
        )
    return final


def results_metadata(
    summaries: Iterable[_Table], *, uri: str, prices: PriceTable
) -> dict[str, Any]:
    """Table metadata (``dagster/``) and ours (``together/``), each figure once: statuses,
    tokens and dollars per model and in total."""
    summaries = list(summaries)
    n_rows = sum(s.n_rows for s in summaries)
    counts = _status_counts(summaries)
    tokens: dict[str, dict[str, int]] = {}
    for s in summaries:
        for model, usage in s.tokens_by_model.items():
            per_model = tokens.setdefault(model, {})
            for name, n in usage.items():
                per_model[name] = per_model.get(name, 0) + int(n or 0)
    answered = counts.get("succeeded", 0)
    metadata: dict[str, Any] = {
        "dagster/row_count": n_rows,
        "dagster/uri": dg.MetadataValue.path(uri),
        "dagster/column_schema": _schema(summaries[0].columns if summaries else ()),
        "together/error_rate": (1.0 - answered / n_rows) if n_rows else 0.0,
        "together/invalid_output_rate": (counts.get("invalid_output", 0) / n_rows)
        if n_rows
        else 0.0,
        "together/preview": _preview(summaries),
    }
    metadata.update({f"together/n_{status}": n for status, n in sorted(counts.items())})
    # Numbers Dagster Insights can chart, per model then in total, like dagster-openai's usage.
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for model, usage in sorted(tokens.items()):
        for name in totals:
            n = usage.get(name, 0)
            totals[name] += n
            metadata[f"together/{model}/{name}"] = n
    metadata.update({f"together/{name}": n for name, n in totals.items()})
    costs, _ = cost_of_usage(tokens, prices)
    for model, dollars in costs.items():
        metadata[f"together/{model}/cost_usd"] = round(dollars, 6)
    metadata["together/cost_usd"] = round(sum(costs.values()), 6)
    return metadata


def check_results(
    ended: Iterable[tuple[BatchJob, JoinSummary]], options: ResultsOptions
) -> list[dg.AssetCheckResult]:
    """The ``completeness`` and ``error_rate`` results over the tables of one or more batches."""
    ended = list(ended)
    n_inputs = sum(s.n_inputs for _, s in ended)
    n_rows = sum(s.n_rows for _, s in ended)
    # A COMPLETED batch must answer every request (output or error line); after FAILED, EXPIRED
    # or CANCELLED unanswered requests are expected and show up in the error rate instead.
    unanswered = sum(
        s.counts.get("missing", 0) for job, s in ended if str(job.status) == "COMPLETED"
    )
    complete = all(s.complete for _, s in ended) and unanswered == 0
    completeness = dg.AssetCheckResult(
        check_name=COMPLETENESS_CHECK,
        passed=complete,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "n_inputs": n_inputs,
            "n_rows": n_rows,
            "unknown_output_ids": sum(s.unknown_ids for _, s in ended),
            "duplicate_output_ids": sum(s.duplicate_ids for _, s in ended),
            "malformed_lines": sum(s.n_malformed_lines for _, s in ended),
            "unanswered_in_completed_batch": unanswered,
            "examples": dg.MetadataValue.json(
                {
                    "unknown": [i for _, s in ended for i in s.unknown_id_examples][:10],
                    "duplicate": [i for _, s in ended for i in s.duplicate_id_examples][:10],
                    "malformed": [list(m) for _, s in ended for m in s.malformed_lines][:10],
                }
            ),
        },
        description=None
        if complete
        else "Together's answer files do not match the inputs one to one; see the metadata.",
    )
    counts = _status_counts(s for _, s in ended)
    return [completeness, *_rate_checks(counts, n_rows, n_inputs, options)]


def final_check_results(
    final: FinalSummary, n_inputs: int, options: ResultsOptions
) -> list[dg.AssetCheckResult]:
    """The ``completeness`` and ``error_rate`` results over a submission's final table (after
    every follow-up, cached rows included)."""
    completeness = dg.AssetCheckResult(
        check_name=COMPLETENESS_CHECK,
        passed=final.n_rows == n_inputs,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"n_inputs": n_inputs, "n_rows": final.n_rows},
    )
    return [completeness, *_rate_checks(final.counts, final.n_rows, n_inputs, options)]


def _status_counts(tables: Iterable[_Table]) -> dict[str, int]:
    """Rows per status over several tables."""
    total: Counter[str] = Counter()
    for table in tables:
        total.update(table.counts)
    return dict(total)


def _rate_checks(
    counts: Mapping[str, int], n_rows: int, n_inputs: int, options: ResultsOptions
) -> list[dg.AssetCheckResult]:
    """``error_rate`` (rows without a successful answer) and ``invalid_output_rate``."""
    rate = (1.0 - counts.get("succeeded", 0) / n_rows) if n_rows else 0.0
    invalid = counts.get("invalid_output", 0)
    invalid_rate = invalid / n_rows if n_rows else 0.0
    return [
        dg.AssetCheckResult(
            check_name=ERROR_RATE_CHECK,
            passed=rate <= options.max_error_rate,
            severity=options.error_rate_severity,
            metadata={
                "error_rate": rate,
                "max_error_rate": options.max_error_rate,
                "n_inputs": n_inputs,
                **{f"n_{status}": n for status, n in sorted(counts.items())},
            },
        ),
        dg.AssetCheckResult(
            check_name=INVALID_OUTPUT_CHECK,
            passed=invalid_rate <= options.max_invalid_output_rate,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "invalid_output_rate": invalid_rate,
                "max_invalid_output_rate": options.max_invalid_output_rate,
                "n_invalid_output": invalid,
            },
        ),
    ]


def _schema(columns: Iterable[tuple[str, str]]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                type,
                description=RESULT_COLUMN_DESCRIPTIONS.get(
                    name, "From the prompts table, or a field of the output schema."
                ),
            )
            for name, type in columns
        ]
    )


def _preview(summaries: list[_Table]) -> dg.TableMetadataValue:
    """A few rows as a real table (the UI lays it out in columns, unlike Markdown)."""
    rows = [row for s in summaries for row in s.preview_rows][:_PREVIEW_ROWS]
    names = list(rows[0]) if rows else ["custom_id", "status"]
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({k: "" if row[k] is None else str(row[k]) for k in names})
            for row in rows
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn(k, "string") for k in names]),
    )
