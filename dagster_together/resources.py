"""``TogetherResource``: the Dagster resource for Together's Batch API.

It hands out a plain :class:`TogetherClient` (for sensors, scripts and notebooks) and carries
the execution methods assets call, as ``FivetranWorkspace.sync_and_poll`` does:
:meth:`~TogetherResource.submit_batches`, :meth:`~TogetherResource.collect_results` and
:meth:`~TogetherResource.submit_and_wait`. The client (and with it httpx) is imported only when
first asked for, so that loading a code location stays as fast as ``import dagster``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from dagster_together.cost import CostOptions
from dagster_together.options import (
    BatchingOptions,
    ResubmitOptions,
    ResultsOptions,
    WaitOptions,
)
from dagster_together.storage import BatchStorageLayout
from dagster_together.submissions import Submissions

if TYPE_CHECKING:
    from dagster_together.client import Batches, Files, TogetherClient
    from dagster_together.collect import FinalTable
    from dagster_together.requests import AudioTemplate, RequestTemplate

__all__ = ["TogetherResource"]


def _resolve(value: str | None) -> str | None:
    """The string behind a field that may still hold an unresolved ``dg.EnvVar``.

    Inside a run Dagster resolves ``EnvVar`` fields; a resource built in a script or a notebook
    keeps the ``EnvVar`` object, whose ``str()`` raises and which as a plain ``str`` would be the
    variable's *name*. Sending the name as the key would fail with a confusing 401.
    """
    if isinstance(value, dg.EnvVar):
        return value.get_value()
    return value


class TogetherResource(dg.ConfigurableResource):
    """Access to Together AI's Files and Batch API, in and outside Dagster runs.

    ``get_client()`` returns a cached :class:`~dagster_together.client.TogetherClient`;
    ``files`` and ``batches`` are shortcuts to its two halves, so the same object works in an
    asset, a sensor, a script or a notebook.

    The API key is never shown by ``repr``/``str`` of the resource or the client, never logged
    and never written to metadata. Prefer ``dg.EnvVar("TOGETHER_API_KEY")`` (or leave it unset):
    a literal string would be visible in the Dagster UI's resource config.

    Example:
        .. code-block:: python

            import dagster as dg
            from dagster_together import TogetherResource

            together = TogetherResource(api_key=dg.EnvVar("TOGETHER_API_KEY"))

            @dg.asset
            def batch_overview(together: TogetherResource) -> dict:
                jobs = together.batches.list_batches()
                return {str(job.status): job.id for job in jobs}

            # outside Dagster: the same resource, directly
            together.files.upload("requests.jsonl")
    """

    api_key: str | None = Field(
        default=None,
        repr=False,
        description=(
            "Together API key. Unset: the TOGETHER_API_KEY environment variable. "
            'Use dg.EnvVar("TOGETHER_API_KEY") rather than a literal.'
        ),
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "API base URL, with or without the /v1 path. Unset: the TOGETHER_BASE_URL "
            "environment variable, else https://api.together.ai/v1."
        ),
    )
    timeout: float = Field(
        default=60.0,
        description="Seconds for connecting and for each read or write of a request.",
    )
    max_retries: int = Field(
        default=5,
        description=(
            "Retries of transient failures (429, 408, 5xx, connection errors) with capped "
            "exponential backoff. Creating a batch is never blindly retried."
        ),
    )
    verify_tls: bool = Field(
        default=True,
        description=(
            "Verify the server's TLS certificate. Switch off only for a local proxy or test "
            "server you trust: without verification anyone on the path can read the API key."
        ),
    )

    _client: Any = PrivateAttr(default=None)

    def make_client(
        self,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_after_max: float = 60.0,
    ) -> TogetherClient:
        """A new, uncached client; ``timeout``/``max_retries`` override the resource's values,
        ``retry_after_max`` caps how long a server's ``Retry-After`` is honoured.

        For callers with their own time budget (the batch sensor must finish well inside the
        sensor timeout). Close it when done (it is a context manager).
        """
        from dagster_together.client import TogetherClient

        return TogetherClient(
            api_key=_resolve(self.api_key),
            base_url=_resolve(self.base_url),
            timeout=self.timeout if timeout is None else timeout,
            max_retries=self.max_retries if max_retries is None else max_retries,
            verify_tls=self.verify_tls,
            retry_after_max=retry_after_max,
        )

    def get_client(self) -> TogetherClient:
        """The resource's client, created on first use and reused (one connection pool)."""
        if self._client is None:
            self._client = self.make_client()
        return self._client

    @property
    def files(self) -> Files:
        """``/files``: upload, list, retrieve, delete, retrieve_content."""
        return self.get_client().files

    @property
    def batches(self) -> Batches:
        """``/batches``: create_batch, get_batch, list_batches, cancel_batch."""
        return self.get_client().batches

    # -- execution: what assets call ---------------------------------------------------------
    def submit_batches(
        self,
        context: dg.AssetExecutionContext,
        prompts: Any,
        *,
        storage: str | BatchStorageLayout,
        partitions_def: dg.DynamicPartitionsDefinition,
        template: RequestTemplate | AudioTemplate | None = None,
        id_column: str | None = None,
        batching: BatchingOptions = BatchingOptions(),
        cost: CostOptions = CostOptions(),
        resubmit: ResubmitOptions = ResubmitOptions(),
        final: FinalTable | None = None,
    ) -> dg.MaterializeResult:
        """Submit ``prompts`` as batches; register each batch id as a partition of
        ``partitions_def`` (the results asset's), where the batch sensor finds it.

        Every request is built and validated, looked up in the answer store (only the ones it
        does not answer are sent) and its cost estimated before the first upload (over
        ``cost.max_estimated_cost`` nothing is sent); a batch created earlier for identical
        input is reused, never billed twice. The run's id names the submission; its final
        table is reported as a partition of ``final`` once every batch has its results.
        ``prompts`` is a pyarrow Table, a pandas DataFrame, or the location of a Parquet or
        JSONL file; with ``template`` any columns (``id_column`` gives ``custom_id``), without
        it ``custom_id`` and ``body``.

        Example:
            .. code-block:: python

                @dg.asset(deps=[reviews])
                def sentiment_batches(context, reviews, together: TogetherResource):
                    return together.submit_batches(
                        context, reviews, storage="s3://bucket/sentiment",
                        partitions_def=batches_partitions, template=TEMPLATE, id_column="id",
                    )
        """
        from dagster_together.collect import report_final
        from dagster_together.failures import failures_for_humans
        from dagster_together.submit import submission_metadata, submit_prompts

        layout = _layout(storage)
        name = partitions_def.name
        if not name:
            raise ValueError("partitions_def must be a named DynamicPartitionsDefinition.")
        with failures_for_humans(
            f"Submitting {_asset_name(context)}", storage_url=layout.storage_url
        ):
            submission = submit_prompts(
                context,
                self.get_client(),
                prompts,
                layout=layout,
                template=template,
                id_column=id_column,
                batching=batching,
                cost=cost,
                resubmit=resubmit,
                submission_id=context.run_id,
                file_prefix=_asset_name(context),
                on_batch=_partition_adder(context, partitions_def),
            )
            if submission.n_rows and not submission.batches:
                # Answered whole by the answer store: the final table is ready now.
                report_final(
                    context, layout, submission.submission_id, prices=cost.prices, target=final
                )
        if not submission.n_rows:
            context.log.warning("The prompts table is empty: no batch was submitted.")
        return dg.MaterializeResult(metadata=submission_metadata(submission, layout))

    def collect_results(
        self,
        context: dg.AssetExecutionContext,
        *,
        storage: str | BatchStorageLayout,
        batch_id: str | None = None,
        results: ResultsOptions = ResultsOptions(),
        cost: CostOptions = CostOptions(),
        resubmit: ResubmitOptions = ResubmitOptions(),
        partitions_def: dg.DynamicPartitionsDefinition | None = None,
        final: FinalTable | None = None,
    ) -> dg.MaterializeResult:
        """Download one ended batch's output and error files and join them to its inputs into
        ``{storage}/results/batch_id=<id>/part-0.parquet``; ``batch_id`` defaults to the run's
        partition key. Reports the table (rows, schema, location, statuses, tokens, cost, a
        preview) and the ``completeness``/``error_rate`` checks the asset declares.

        Then the answers go to the answer store; the rows a new try may fix go to a follow-up
        batch (registered in ``partitions_def``, up to ``resubmit.max_attempts``); and when
        this was the submission's last batch, its final table is assembled and reported as a
        partition of ``final``.
        """
        from dagster_together.collect import (
            check_results,
            collect_batch,
            report_final,
            results_metadata,
            store_answers_and_follow_up,
        )
        from dagster_together.failures import failures_for_humans

        layout = _layout(storage)
        client = self.get_client()
        batch_id = batch_id or context.partition_key
        register = _partition_adder(context, partitions_def)
        with failures_for_humans(f"Collecting batch {batch_id}", storage_url=layout.storage_url):
            record = Submissions(layout).of_batch(batch_id)
            job, summary = collect_batch(
                context, client, batch_id, layout, record, results.raw_responses
            )
            follow_ups = store_answers_and_follow_up(
                context, client, job, record, layout, resubmit, register
            )
            if record is not None and not follow_ups:
                report_final(
                    context, layout, record.submission_id, prices=cost.prices, target=final
                )
        metadata = results_metadata([summary], uri=summary.destination, prices=cost.prices)
        metadata["together/batch_id"] = job.id
        metadata["together/batch_status"] = str(job.status)
        if job.error:
            metadata["together/batch_error"] = job.error
        if record is not None:
            metadata["together/submission_id"] = record.submission_id
            metadata["together/attempt"] = record.attempt
            if record.parent_batch_id:
                metadata["together/parent_batch_id"] = record.parent_batch_id
        if follow_ups:
            metadata["together/follow_up_batch_ids"] = dg.MetadataValue.json(
                [b.batch_id for b in follow_ups]
            )
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=_declared(context, check_results([(job, summary)], results)),
        )

    def submit_and_wait(
        self,
        context: dg.AssetExecutionContext,
        prompts: Any,
        *,
        storage: str | BatchStorageLayout,
        template: RequestTemplate | AudioTemplate | None = None,
        id_column: str | None = None,
        batching: BatchingOptions = BatchingOptions(),
        results: ResultsOptions = ResultsOptions(),
        wait: WaitOptions = WaitOptions(),
        cost: CostOptions = CostOptions(),
        resubmit: ResubmitOptions = ResubmitOptions(),
    ) -> dg.MaterializeResult:
        """Submit ``prompts``, wait inside this run until every batch (follow-ups included)
        has ended, and return the submission's final table: for small jobs, or a deployment
        without the daemon.

        After ``wait.poll_timeout`` the run fails, naming the batches (left running: a re-run
        reuses them). When the run is terminated, the batches still running are cancelled if
        ``wait.cancel_on_termination``.

        Example:
            .. code-block:: python

                @dg.asset
                def sentiment(context, reviews, together: TogetherResource):
                    return together.submit_and_wait(
                        context, reviews, storage="/data/sentiment", template=TEMPLATE,
                        id_column="review_id", wait=WaitOptions(poll_interval=10),
                    )
        """
        from dagster_together.collect import (
            collect_batch,
            final_check_results,
            report_final,
            results_metadata,
            store_answers_and_follow_up,
        )
        from dagster_together.failures import failures_for_humans
        from dagster_together.submit import submission_metadata, submit_prompts
        from dagster_together.wait import cancel_running, wait_for_batches

        layout = _layout(storage)
        client = self.get_client()
        what = f"Submitting {_asset_name(context)}"
        with failures_for_humans(what, storage_url=layout.storage_url):
            submission = submit_prompts(
                context,
                client,
                prompts,
                layout=layout,
                template=template,
                id_column=id_column,
                batching=batching,
                cost=cost,
                resubmit=resubmit,
                submission_id=context.run_id,
                file_prefix=_asset_name(context),
            )
        metadata = submission_metadata(submission, layout)
        if not submission.n_rows:
            context.log.warning("The prompts table is empty: no batch was submitted.")
            return dg.MaterializeResult(metadata=metadata)
        pending = [b.batch_id for b in submission.batches]
        submissions = Submissions(layout)
        while pending:
            try:
                with failures_for_humans(f"Waiting for {len(pending)} batch(es)"):
                    jobs = wait_for_batches(context, client, pending, wait)
            except Exception:
                raise
            except BaseException:  # the run is being terminated
                if wait.cancel_on_termination:
                    cancel_running(context, client, pending)
                else:
                    context.log.warning(
                        f"Run terminated; batches {', '.join(pending)} keep running "
                        "(cancel_on_termination is off)."
                    )
                raise
            pending = []
            for job in jobs:
                with failures_for_humans(
                    f"Collecting batch {job.id}", storage_url=layout.storage_url
                ):
                    record = submissions.of_batch(job.id)
                    collect_batch(context, client, job.id, layout, record, results.raw_responses)
                    follow_ups = store_answers_and_follow_up(
                        context, client, job, record, layout, resubmit, None
                    )
                pending += [b.batch_id for b in follow_ups]
        with failures_for_humans("Assembling the final table", storage_url=layout.storage_url):
            final = report_final(
                context, layout, submission.submission_id, prices=cost.prices, target=None
            )
        assert final is not None  # every batch has its results
        metadata.update(results_metadata([final], uri=final.destination, prices=cost.prices))
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=_declared(
                context, final_check_results(final, submission.n_rows, results)
            ),
        )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Release the connection pool at the end of a run / sensor tick.
        if self._client is not None:
            self._client.close()
            self._client = None


def _layout(storage: str | BatchStorageLayout) -> BatchStorageLayout:
    return storage if isinstance(storage, BatchStorageLayout) else BatchStorageLayout(storage)


def _asset_name(context: dg.AssetExecutionContext) -> str:
    return context.asset_key.path[-1]


def _partition_adder(
    context: dg.AssetExecutionContext, partitions_def: dg.DynamicPartitionsDefinition | None
) -> Callable[[str], None] | None:
    """What registers a new batch id as a partition of ``partitions_def`` (None without one)."""
    name = partitions_def.name if partitions_def is not None else None
    if not name:
        return None

    def add(batch_id: str) -> None:
        context.instance.add_dynamic_partitions(name, [batch_id])

    return add


def _declared(
    context: dg.AssetExecutionContext, results: list[dg.AssetCheckResult]
) -> list[dg.AssetCheckResult]:
    """The check results the asset declares (a hand-written asset may declare none)."""
    selected = {key.name for key in context.selected_asset_check_keys}
    return [r for r in results if r.check_name in selected]
