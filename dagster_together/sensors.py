"""The sensor that watches submitted batches and launches one results run per finished batch.

A batch takes minutes to hours. No Dagster run waits for it: the submit asset registers each
batch id as a dynamic partition and this sensor, tick after tick, asks Together for the state of
*all* batches with one ``GET /batches`` and requests a run of the results job for every watched
batch that reached a terminal status.

State: the instance says which batches are submitted (the dynamic partition keys) and which are
already retrieved (materialised partitions) or being retrieved (in progress). The JSON cursor
holds only the batches this sensor requested a run for that are not materialised yet (queued,
running, or failed runs), so it stays small and is pruned every tick.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from dagster_together.client import BatchJob
    from dagster_together.resources import TogetherResource

__all__ = [
    "BATCH_ID_TAG",
    "BATCH_STATUS_TAG",
    "DEFAULT_SENSOR_INTERVAL_SECONDS",
    "together_batch_sensor",
]

DEFAULT_SENSOR_INTERVAL_SECONDS = 60
"""Default ``minimum_interval_seconds``: batches take minutes to hours, a minute is plenty."""

BATCH_ID_TAG = "dagster-together/batch_id"
"""Run tag holding the batch id of a run launched by the sensor."""
BATCH_STATUS_TAG = "dagster-together/batch_status"
"""Run tag holding the terminal batch status that triggered the run."""

# The sensor timeout is 60 s by default. The one list call gets at most 2 attempts of 15 s and
# a Retry-After capped at 5 s (~35 s worst case); everything else is in-memory work, so the tick
# ends well inside the limit even with thousands of batches in flight.
_LIST_TIMEOUT_SECONDS = 15.0
_LIST_MAX_RETRIES = 1
_LIST_RETRY_AFTER_MAX_SECONDS = 5.0
_TICK_BUDGET_SECONDS = 45.0
_PROGRESS_EXAMPLES = 5  # batches shown by name in the one progress line

_CURSOR_VERSION = 1


def _load_cursor(raw: str | None, log: Any) -> dict[str, str]:
    """``{batch_id: status}`` of runs requested but not yet visible in the instance."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        launched = data["launched"]
        if not isinstance(launched, dict):
            raise TypeError("launched is not an object")
        return {str(k): str(v) for k, v in launched.items()}
    except (ValueError, KeyError, TypeError) as exc:
        # Safe to restart empty: the instance still knows every materialised/launched partition
        # and the daemon de-duplicates run keys.
        log.warning(f"Ignoring an unreadable sensor cursor ({exc}); starting from the instance.")
        return {}


def _dump_cursor(launched: Mapping[str, str]) -> str:
    return json.dumps({"v": _CURSOR_VERSION, "launched": dict(sorted(launched.items()))})


def _progress_line(running: Sequence[BatchJob], missing: Sequence[str]) -> str:
    """One compact line: counts per status, then a few batches with their progress."""
    counts = Counter(str(job.status) for job in running)
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    examples = []
    for job in running[:_PROGRESS_EXAMPLES]:
        pct = f" {job.progress:.0f}%" if job.progress is not None else ""
        examples.append(f"{job.id} {job.status}{pct}")
    more = (
        f", +{len(running) - _PROGRESS_EXAMPLES} more" if len(running) > _PROGRESS_EXAMPLES else ""
    )
    line = (
        f"{len(running)} batch(es) still running ({', '.join(parts)}): {'; '.join(examples)}{more}"
    )
    if missing:
        line += f". {len(missing)} not in Together's batch list yet: {', '.join(missing[:5])}"
    return line


def _partition_states(
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    partition_keys: Sequence[str],
    partitions_def: dg.DynamicPartitionsDefinition,
) -> tuple[set[str], set[str]]:
    """``(materialised, in_progress)`` partitions of the results asset, from the instance."""
    statuses = instance.get_status_by_partition(asset_key, partition_keys, partitions_def) or {}
    done = {
        key for key, status in statuses.items() if status == dg.AssetPartitionStatus.MATERIALIZED
    }
    running = {
        key for key, status in statuses.items() if status == dg.AssetPartitionStatus.IN_PROGRESS
    }
    return done, running


def together_batch_sensor(
    *,
    name: str,
    # Any: ``define_asset_job`` returns a class Dagster does not export publicly.
    job: Any,
    results_asset_key: dg.AssetKey | str | Sequence[str],
    partitions_def: dg.DynamicPartitionsDefinition,
    resource_key: str = "together",
    minimum_interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor that launches one run of ``job`` per Together batch that reached a final status.

    Watched batches are the keys of ``partitions_def`` (the submit asset adds one per batch)
    that have no results run yet. Each tick makes exactly one ``GET /batches`` call, and none
    at all when nothing is being watched. A batch whose status is terminal (COMPLETED, FAILED,
    EXPIRED or CANCELLED: partial output is still worth joining) gets exactly one
    ``RunRequest(partition_key=batch_id, run_key=f"{batch_id}:{status}")``. Running batches
    are logged in one progress line; an unknown status is treated as running and logged. When
    the API cannot be reached the tick fails, the cursor is not advanced, and the next tick
    picks everything up again: no batch is lost or launched twice.

    :func:`~dagster_together.together_batch_assets` builds this sensor for you (``.sensor``);
    call it directly only to wire it to your own results job.

    Args:
        name: the sensor's name.
        job: the job (``dg.define_asset_job(...)`` or a ``JobDefinition``) that materialises
            one partition of the results asset.
        results_asset_key: the results asset (its partitions' status tells which batches are done).
        partitions_def: the dynamic partitions holding one key per submitted batch id.
        resource_key: key of the :class:`~dagster_together.TogetherResource` in the Definitions.
        minimum_interval_seconds: seconds between ticks (default 60).
        default_status: RUNNING by default: an idle tick costs no API call, and batches that
            nobody collects expire and are billed for nothing. Pass
            ``dg.DefaultSensorStatus.STOPPED`` to switch it on by hand in the UI.
        description: shown in the UI.

    Example:
        .. code-block:: python

            sensor = together_batch_sensor(
                name="reviews_batch_sensor",
                job=my_results_job,
                results_asset_key="reviews_results",
                partitions_def=dg.DynamicPartitionsDefinition(name="reviews_batches"),
            )
    """
    asset_key = dg.AssetKey.from_coercible(results_asset_key)
    partitions_name = partitions_def.name
    if not partitions_name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition.")

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={resource_key},
        description=description
        or (
            f"Watches the Together batches of {partitions_name!r} with one GET /batches per tick "
            f"and launches one {asset_key.to_user_string()} run per finished batch."
        ),
    )
    # ``**_resources``: direct invocation (``sensor(build_sensor_context(...))``) passes the
    # required resources as keyword arguments; the daemon does not. Both read context.resources.
    def _sensor(
        context: dg.SensorEvaluationContext, **_resources: Any
    ) -> dg.SensorResult | dg.SkipReason:
        started = time.monotonic()
        instance = context.instance
        launched = _load_cursor(context.cursor, context.log)

        submitted = list(instance.get_dynamic_partitions(partitions_name))
        if not submitted:
            return dg.SkipReason(f"No batches submitted yet ({partitions_name!r} is empty).")
        done, running_now = _partition_states(instance, asset_key, submitted, partitions_def)
        submitted_set = set(submitted)
        # The cursor keeps what this sensor requested until it is materialised (a failed results
        # run stays there: it is not re-launched, re-materialise it from the UI once fixed).
        launched = {
            bid: status
            for bid, status in launched.items()
            if bid in submitted_set and bid not in done
        }
        # Not watched: materialised, being materialised (by us or by hand), or requested already.
        # A partition that failed without being requested here (e.g. materialised by hand before
        # its batch finished) is watched again and gets its run when the batch ends.
        watched = [
            bid
            for bid in submitted
            if bid not in done and bid not in running_now and bid not in launched
        ]
        if not watched:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(
                    f"All {len(submitted)} submitted batches are retrieved or being retrieved."
                ),
                cursor=_dump_cursor(launched),
            )

        jobs = _list_batches(context, resource_key)
        by_id = {job.id: job for job in jobs}

        run_requests: list[dg.RunRequest] = []
        running: list[BatchJob] = []
        missing: list[str] = []
        for batch_id in watched:
            if time.monotonic() - started > _TICK_BUDGET_SECONDS:
                # Unlaunched batches are not in the cursor: the next tick takes them.
                context.log.warning("Tick time budget used up; the rest waits for the next tick.")
                break
            batch = by_id.get(batch_id)
            if batch is None:
                missing.append(batch_id)
                continue
            status = batch.status
            if not status.is_terminal:
                if not status.is_known:
                    context.log.warning(
                        f"Batch {batch_id} has status {status.value!r}, unknown to this "
                        "version of dagster-together; treating it as still running."
                    )
                running.append(batch)
                continue
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{batch_id}:{status.value}",
                    partition_key=batch_id,
                    tags={BATCH_ID_TAG: batch_id, BATCH_STATUS_TAG: status.value},
                )
            )
            launched[batch_id] = status.value

        if running or missing:
            context.log.info(_progress_line(running, missing))
        for request in run_requests:
            context.log.info(
                f"Batch {request.partition_key} is {request.tags[BATCH_STATUS_TAG]}: "
                "requesting its results run."
            )
        return dg.SensorResult(
            run_requests=run_requests,
            cursor=_dump_cursor(launched),
            skip_reason=None
            if run_requests
            else dg.SkipReason(f"{len(running) + len(missing)} batch(es) still running."),
        )

    return _sensor


def _list_batches(context: dg.SensorEvaluationContext, resource_key: str) -> Iterable[BatchJob]:
    """All batches of the account in one call, within the tick's time budget.

    An error propagates: the tick fails visibly and its cursor is not stored, so the next tick
    sees exactly the same watched set.
    """
    resource: TogetherResource = getattr(context.resources, resource_key)
    timeout = min(resource.timeout, _LIST_TIMEOUT_SECONDS)
    retries = min(resource.max_retries, _LIST_MAX_RETRIES)
    # A server asking us to wait a minute must not push the tick past the sensor timeout.
    with resource.make_client(
        timeout=timeout, max_retries=retries, retry_after_max=_LIST_RETRY_AFTER_MAX_SECONDS
    ) as client:
        try:
            return client.batches.list_batches()
        except Exception as exc:
            context.log.error(
                f"Could not list Together batches ({type(exc).__name__}: {exc}). Nothing was "
                "launched and the cursor was kept; the next tick tries again."
            )
            raise
