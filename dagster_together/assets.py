"""``build_together_batch_defs``: the assets, checks, job and sensor that run a prompts table
through Together's Batch API, built on the resource's execution methods.

With the default :class:`~dagster_together.SensorOptions`:

* ``{name}_batches`` (submit): builds and validates request JSONL from the prompts asset, uploads
  each chunk, creates (or reuses) one batch per chunk and registers every batch id as a dynamic
  partition of the results. No run waits for the batches.
* the sensor (:func:`~dagster_together.sensors.together_batch_sensor`): one ``GET /batches`` per
  tick, one results run per batch that reached a final status.
* ``{name}_results`` (one partition per batch id): the answers joined to the inputs into
  Parquet, with the ``completeness`` and ``error_rate`` checks. Downstream assets receive the
  table through the pipeline's IO manager.

With :class:`~dagster_together.WaitOptions` one asset, ``{name}_results``, submits and waits
inside its run instead (no sensor, no daemon needed).
"""

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import dagster as dg

from dagster_together.collect import FinalTable, results_check_specs
from dagster_together.cost import CostOptions
from dagster_together.loader import results_io_manager
from dagster_together.options import (
    BatchingOptions,
    ResubmitOptions,
    ResultsOptions,
    SensorOptions,
    WaitOptions,
)
from dagster_together.sensors import together_batch_sensor
from dagster_together.storage import BatchStorageLayout
from dagster_together.translator import DagsterTogetherTranslator, TogetherBatchProps

if TYPE_CHECKING:
    from dagster_together.requests import AudioTemplate, RequestTemplate
    from dagster_together.resources import TogetherResource

__all__ = [
    "BatchSteps",
    "BatchTargets",
    "TogetherBatchDefs",
    "TogetherBatchSteps",
    "build_together_batch_defs",
]


@dataclass(frozen=True)
class BatchTargets:
    """Where a pipeline's steps record what they make.

    Attributes:
        batches: the results asset's partitions, one per batch id (follow-ups included).
        final: the final table's asset and its partitions, one per submission.
    """

    batches: dg.DynamicPartitionsDefinition
    final: FinalTable


class BatchSteps(Protocol):
    """What the assets of a pipeline run, one method per asset body: a
    :class:`TogetherBatchSteps`, a subclass of it, or a :class:`TogetherBatchComponent`."""

    def execute_submit(
        self,
        context: dg.AssetExecutionContext,
        together: "TogetherResource",
        prompts: Any,
        targets: BatchTargets,
    ) -> dg.MaterializeResult: ...

    def execute_results(
        self, context: dg.AssetExecutionContext, together: "TogetherResource", targets: BatchTargets
    ) -> dg.MaterializeResult: ...

    def execute_submit_and_wait(
        self,
        context: dg.AssetExecutionContext,
        together: "TogetherResource",
        prompts: Any,
        wait: WaitOptions,
    ) -> dg.MaterializeResult: ...


@dataclass(frozen=True)
class TogetherBatchSteps:
    """What the assets of a pipeline run: each method is one asset's body.

    The factory builds one from its arguments; subclass it (or the Component, which has the
    same methods) to wrap a step, e.g. to add metadata or notify someone.
    """

    layout: BatchStorageLayout
    template: "RequestTemplate | AudioTemplate | None" = None
    id_column: str | None = None
    batching: BatchingOptions = BatchingOptions()
    results: ResultsOptions = ResultsOptions()
    cost: CostOptions = CostOptions()
    resubmit: ResubmitOptions = ResubmitOptions()

    def execute_submit(
        self,
        context: dg.AssetExecutionContext,
        together: "TogetherResource",
        prompts: Any,
        targets: BatchTargets,
    ) -> dg.MaterializeResult:
        """``{name}_batches``: submit and register one results partition per batch."""
        return together.submit_batches(
            context,
            prompts,
            storage=self.layout,
            partitions_def=targets.batches,
            template=self.template,
            id_column=self.id_column,
            batching=self.batching,
            cost=self.cost,
            resubmit=self.resubmit,
            final=targets.final,
        )

    def execute_results(
        self, context: dg.AssetExecutionContext, together: "TogetherResource", targets: BatchTargets
    ) -> dg.MaterializeResult:
        """``{name}_results``, one partition: join one ended batch, keep its answers, retry
        what a new try may fix, and report the final table when the submission is complete."""
        return together.collect_results(
            context,
            storage=self.layout,
            results=self.results,
            cost=self.cost,
            resubmit=self.resubmit,
            partitions_def=targets.batches,
            final=targets.final,
        )

    def execute_submit_and_wait(
        self,
        context: dg.AssetExecutionContext,
        together: "TogetherResource",
        prompts: Any,
        wait: WaitOptions,
    ) -> dg.MaterializeResult:
        """``{name}_results`` waiting in its run: submit, wait, join."""
        return together.submit_and_wait(
            context,
            prompts,
            storage=self.layout,
            template=self.template,
            id_column=self.id_column,
            batching=self.batching,
            results=self.results,
            wait=wait,
            cost=self.cost,
            resubmit=self.resubmit,
        )


@dataclass(frozen=True)
class TogetherBatchDefs:
    """Everything :func:`build_together_batch_defs` built; ``.defs`` goes in your Definitions.

    Attributes:
        results_asset: ``{name}_results``: the joined Parquet (one partition per batch id, or
            one table when the pipeline waits in its run).
        layout: where the files live on the user's storage.
        submit_asset: ``{name}_batches`` (None when the pipeline waits in its run).
        partitions_def: one key per batch id (None when waiting in the run).
        results_job: materialises one results partition; what the sensor launches.
        sensor: watches the batches and launches ``results_job`` for every finished one.
        final_asset: ``{name}_final``: one partition per submission, one row per input row of
            it (follow-ups and cached answers included); reported by the results step that
            completes the submission (None when waiting in the run: the results asset is it).
        resources: the final table's loader (in ``.defs``).
    """

    results_asset: dg.AssetsDefinition
    layout: BatchStorageLayout
    submit_asset: dg.AssetsDefinition | None = None
    partitions_def: dg.DynamicPartitionsDefinition | None = None
    results_job: Any = None  # what dg.define_asset_job returns (not exported by Dagster)
    sensor: dg.SensorDefinition | None = None
    final_asset: dg.AssetSpec | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)

    @property
    def assets(self) -> list[dg.AssetsDefinition | dg.AssetSpec]:
        """The pipeline's assets."""
        return [
            a for a in (self.submit_asset, self.results_asset, self.final_asset) if a is not None
        ]

    @property
    def defs(self) -> dg.Definitions:
        """A ``dg.Definitions`` with the assets, job, sensor and the final table's loader. Merge
        it with one giving the ``together`` resource (unless the factory got one)."""
        return dg.Definitions(
            assets=self.assets,
            jobs=[self.results_job] if self.results_job is not None else [],
            sensors=[self.sensor] if self.sensor is not None else [],
            resources=dict(self.resources),
        )


def build_together_batch_defs(
    *,
    name: str,
    prompts: dg.AssetKey | str | Sequence[str] | dg.AssetsDefinition | dg.AssetSpec,
    storage: str | BatchStorageLayout,
    template: "RequestTemplate | AudioTemplate | None" = None,
    id_column: str | None = None,
    batching: BatchingOptions = BatchingOptions(),
    results: ResultsOptions = ResultsOptions(),
    cost: CostOptions = CostOptions(),
    resubmit: ResubmitOptions = ResubmitOptions(),
    watch: SensorOptions | WaitOptions = SensorOptions(),
    translator: DagsterTogetherTranslator | None = None,
    together: "TogetherResource | None" = None,
    submit_partitions_def: dg.PartitionsDefinition | None = None,
    steps: BatchSteps | None = None,
) -> TogetherBatchDefs:
    """Build the assets, checks, job and sensor that run a prompts table through Together's
    Batch API.

    Args:
        name: the pipeline's name, unique in the code location: assets ``{name}_batches`` and
            ``{name}_results``, job ``{name}_results_job``, sensor ``{name}_batch_sensor``,
            partitions ``{name}_batches``.
        prompts: the upstream asset giving the prompts: a pyarrow Table, a pandas DataFrame, or
            the path/URL of a Parquet or JSONL file. Either it has ``custom_id`` and ``body``
            columns, or ``template`` builds the bodies from its columns.
        storage: a local directory or fsspec URL (``s3://bucket/prefix``), or a
            :class:`~dagster_together.BatchStorageLayout` with ``storage_options``: the request
            copies, the downloaded answers and the results dataset go there.
        template: builds each request body from a row (model, system prompt, prompt column).
        id_column: the column whose values become ``custom_id`` (with ``template``).
        batching: endpoint, completion window and batch size limits.
        results: the checks' thresholds, the results step's retry policy and its concurrency
            pool (``together_results_{name}`` by default; see docs/scaling.md).
        cost: the price table and ``max_estimated_cost``, the spending limit checked before
            anything is uploaded.
        resubmit: follow-up batches (``max_attempts``, the error codes never retried) and the
            answer store (``use_answer_cache``).
        watch: :class:`~dagster_together.SensorOptions` (a sensor watches, no run waits; the
            default) or :class:`~dagster_together.WaitOptions` (one asset submits and waits in
            its run).
        translator: asset specs (keys, groups, owners, tags, kinds, descriptions).
        together: a resource bound to these assets; None: the ``together`` resource of the
            Definitions.
        submit_partitions_def: partitions of the submit asset, to line it up with a
            partitioned prompts asset (e.g. daily: each day's prompts become that day's batches).
        steps: what the asset bodies run (see :class:`BatchSteps`); None: a
            :class:`TogetherBatchSteps` of the arguments above (``storage``, ``template``, ``id_column``, ``batching``, ``results``).

    Example:
        .. code-block:: python

            sentiment = build_together_batch_defs(
                name="sentiment",
                prompts=reviews,
                storage="s3://my-bucket/together/sentiment",
                template=RequestTemplate(model=MODEL, prompt_column="text"),
                id_column="review_id",
            )
            defs = dg.Definitions.merge(
                sentiment.defs,
                dg.Definitions(assets=[reviews], resources={"together": TogetherResource()}),
            )
    """
    from dagster_together.submit import endpoint_of

    endpoint_of(template, batching)  # contradictions fail when the definitions load
    layout = storage if isinstance(storage, BatchStorageLayout) else BatchStorageLayout(storage)
    translator = translator or DagsterTogetherTranslator()
    run: BatchSteps = steps or TogetherBatchSteps(
        layout=layout,
        template=template,
        id_column=id_column,
        batching=batching,
        results=results,
        cost=cost,
        resubmit=resubmit,
    )
    waits = isinstance(watch, WaitOptions)
    props = TogetherBatchProps(
        name=name,
        prompts_key=_asset_key_of(prompts),
        layout=layout,
        max_requests_per_batch=batching.max_requests_per_batch,
        waits_in_run=waits,
    )
    # The loader travels with the results asset: downstream assets get the table wherever
    # the asset is used (Definitions, dg.materialize, another code location's merge).
    io_manager_key = f"{name}_results_io_manager"
    # Bound, the assets use that object and need no resource of the Definitions.
    resource_keys = {"together"} if together is None else set()

    def resource_of(context: dg.AssetExecutionContext) -> "TogetherResource":
        return together if together is not None else context.resources.together

    results_spec = translator.get_results_spec(props)
    results_arguments = {
        **_spec_arguments(results_spec),
        "required_resource_keys": resource_keys,
        "retry_policy": results.retry_policy,
        # No limit until the instance gives the pool one: then it caps concurrent results runs.
        "pool": results.pool or f"together_results_{name}",
        "check_specs": results_check_specs(
            results_spec.key, results, structured=getattr(template, "schema", None) is not None
        ),
        "io_manager_key": io_manager_key,
        "resource_defs": {io_manager_key: results_io_manager(layout, final=waits)},
    }

    if isinstance(watch, WaitOptions):

        @_quiet_asset(
            **results_arguments,
            ins={"prompts": dg.AssetIn(key=props.prompts_key)},
            partitions_def=submit_partitions_def,
        )
        def _submit_and_wait(
            context: dg.AssetExecutionContext, prompts: Any
        ) -> dg.MaterializeResult:
            return run.execute_submit_and_wait(context, resource_of(context), prompts, watch)

        return TogetherBatchDefs(results_asset=_submit_and_wait, layout=layout)

    partitions_def = dg.DynamicPartitionsDefinition(name=f"{name}_batches")
    submit_spec = translator.get_submit_spec(props)
    final_io_manager_key = f"{name}_final_io_manager"
    final_spec = (
        translator.get_final_spec(props)
        .replace_attributes(
            deps=[results_spec.key],
            partitions_def=dg.DynamicPartitionsDefinition(name=f"{name}_submissions"),
        )
        .with_io_manager_key(final_io_manager_key)
    )
    assert isinstance(final_spec.partitions_def, dg.DynamicPartitionsDefinition)
    targets = BatchTargets(partitions_def, FinalTable(final_spec.key, final_spec.partitions_def))

    @dg.asset(
        **_spec_arguments(submit_spec),
        ins={"prompts": dg.AssetIn(key=props.prompts_key)},
        partitions_def=submit_partitions_def,
        required_resource_keys=resource_keys,
        # Give this pool a limit of 1 to serialise double clicks: the second run then reuses.
        pool=f"together_submit_{name}",
    )
    def _submit(context: dg.AssetExecutionContext, prompts: Any) -> dg.MaterializeResult:
        return run.execute_submit(context, resource_of(context), prompts, targets)

    @_quiet_asset(
        **results_arguments,
        # A batch comes from one submit partition, which Dagster cannot know statically: with a
        # partitioned submit, each batch is shown as depending on all of them.
        deps=[
            dg.AssetDep(submit_spec.key, partition_mapping=dg.AllPartitionMapping())
            if submit_partitions_def is not None
            else submit_spec.key
        ],
        partitions_def=partitions_def,
    )
    def _results(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return run.execute_results(context, resource_of(context), targets)

    results_job = dg.define_asset_job(
        name=f"{name}_results_job",
        selection=dg.AssetSelection.assets(results_spec.key),
        description=f"Joins the results of one batch into {results_spec.key.to_user_string()}.",
    )
    sensor = together_batch_sensor(
        name=f"{name}_batch_sensor",
        job=results_job,
        results_asset_key=results_spec.key,
        partitions_def=partitions_def,
        options=watch,
        together=together,
    )
    return TogetherBatchDefs(
        results_asset=_results,
        layout=layout,
        submit_asset=_submit,
        partitions_def=partitions_def,
        results_job=results_job,
        sensor=sensor,
        final_asset=final_spec,
        resources={final_io_manager_key: results_io_manager(layout, final=True)},
    )


def _quiet_asset(**kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``dg.asset(**kwargs)`` without the BetaWarning Dagster raises for ``resource_defs``: the
    results loader travels with the asset by design, and a user should not see that choice of
    ours as a warning every time the code location loads."""

    def decorate(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=dg.BetaWarning)
            return dg.asset(**kwargs)(fn)

    return decorate


def _asset_key_of(value: Any) -> dg.AssetKey:
    """The key of an AssetKey, a string, a path, an AssetSpec or a single-asset definition."""
    key = getattr(value, "key", None)
    if isinstance(key, dg.AssetKey):
        return key
    return dg.AssetKey.from_coercible(value)


def _spec_arguments(spec: dg.AssetSpec) -> dict[str, Any]:
    """What of a translator's spec ``@dg.asset`` takes (wiring stays the factory's)."""
    return {
        "key": spec.key,
        "group_name": spec.group_name,
        "kinds": spec.kinds,
        "tags": spec.tags,
        "owners": spec.owners,
        "description": spec.description,
        "metadata": spec.metadata,
        "code_version": spec.code_version,
        "automation_condition": spec.automation_condition,
    }
