"""The sensor that watches submitted batches and launches one results run per finished batch.

A batch takes minutes to hours. No Dagster run waits for it: the submit asset registers each
batch id as a dynamic partition and this sensor, tick after tick, asks Together for the state of
*all* batches with one ``GET /batches`` and requests a run of the results job for every watched
batch that reached a terminal status.

State: the instance says which batches are submitted (the dynamic partition keys) and which are
already retrieved (materialised partitions) or being retrieved (in progress). The JSON cursor
holds only the batches this sensor requested a run for that are not materialised yet (queued,
running, or failed runs), the ticks each watched batch has been missing from Together's list,
and the batches reported gone; it stays small and is pruned every tick. Follow-up batches are
partitions like any other: the sensor watches them the same way.
"""

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from dagster_together.options import SensorOptions
from dagster_together.resources import TogetherResource

if TYPE_CHECKING:
    from dagster_together.client import BatchJob

__all__ = [
    "BATCH_ID_TAG",
    "BATCH_STATUS_TAG",
    "MISSING_TICKS_BEFORE_DROP",
    "tick_budget_seconds",
    "together_batch_sensor",
]

BATCH_ID_TAG = "dagster-together/batch_id"
"""Run tag holding the batch id of a run launched by the sensor."""
BATCH_STATUS_TAG = "dagster-together/batch_status"
"""Run tag holding the terminal batch status that triggered the run."""

MISSING_TICKS_BEFORE_DROP = 3
"""Ticks in a row a batch may be absent from ``GET /batches`` (a new batch can take a moment to
show up) before it is reported as gone (deleted, another account) and no longer watched."""

# Dagster ends a sensor evaluation after DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS (60 by default).
# The tick keeps a quarter of it in reserve; the one list call gets a third of the rest.
_SENSOR_TIMEOUT_ENV = "DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS"
_DEFAULT_SENSOR_TIMEOUT_SECONDS = 60.0
_LIST_MAX_RETRIES = 1
_PROGRESS_EXAMPLES = 5  # batches shown by name in the one progress line

_CURSOR_VERSION = 2


def tick_budget_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """Three quarters of the sensor timeout Dagster enforces in this deployment."""
    try:
        timeout = float(environ.get(_SENSOR_TIMEOUT_ENV, _DEFAULT_SENSOR_TIMEOUT_SECONDS))
    except ValueError:
        timeout = _DEFAULT_SENSOR_TIMEOUT_SECONDS
    return 0.75 * max(timeout, 4.0)


@dataclass
class _Cursor:
    """What a tick carries to the next: small, JSON, pruned every tick.

    launched: batches whose results run was requested, until the instance shows it materialised.
    missing: ticks in a row each watched batch was absent from Together's list.
    gone: batches reported as gone, no longer watched.
    """

    launched: dict[str, str] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, raw: str | None, log: Any) -> "_Cursor":
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            launched = data["launched"]
            if not isinstance(launched, dict):
                raise TypeError("launched is not an object")
            return cls(
                launched={str(k): str(v) for k, v in launched.items()},
                missing={str(k): int(v) for k, v in dict(data.get("missing", {})).items()},
                gone={str(k) for k in data.get("gone", [])},
            )
        except (ValueError, KeyError, TypeError) as exc:
            # Safe to restart empty: the instance still knows every materialised/launched
            # partition and the daemon de-duplicates run keys.
            log.warning(
                f"Ignoring an unreadable sensor cursor ({exc}); starting from the instance."
            )
            return cls()

    def dump(self) -> str:
        return json.dumps(
            {
                "v": _CURSOR_VERSION,
                "launched": dict(sorted(self.launched.items())),
                "missing": dict(sorted(self.missing.items())),
                "gone": sorted(self.gone),
            }
        )

    def prune(self, submitted: set[str], done: set[str]) -> None:
        """Forget batches that were deleted as partitions or are materialised."""
        self.launched = {b: s for b, s in self.launched.items() if b in submitted and b not in done}
        self.missing = {b: n for b, n in self.missing.items() if b in submitted and b not in done}
        self.gone = {b for b in self.gone if b in submitted and b not in done}


def _progress_line(running: Sequence["BatchJob"], missing: Sequence[str]) -> str:
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
    options: SensorOptions = SensorOptions(),
    together: TogetherResource | None = None,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor that launches one run of ``job`` per Together batch that reached a final status.

    Watched batches are the keys of ``partitions_def`` (the submit asset adds one per batch)
    that have no results run yet. Each tick makes exactly one ``GET /batches`` call, and none
    at all when nothing is being watched. A batch whose status is terminal (COMPLETED, FAILED,
    EXPIRED or CANCELLED: partial output is still worth joining) gets exactly one
    ``RunRequest(partition_key=batch_id, run_key=f"{batch_id}:{status}")``. Running batches
    (CANCELING included) are logged in one progress line; an unknown status is treated as
    running and logged. A batch absent from Together's list for
    :data:`MISSING_TICKS_BEFORE_DROP` ticks in a row is reported once (a warning, and an
    observation on its partition) and no longer watched. When the API cannot be reached the
    tick fails, the cursor is not advanced, and the next tick picks everything up again: no
    batch is lost or launched twice. The tick's time budget follows Dagster's sensor timeout
    (``DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS``).

    :func:`~dagster_together.build_together_batch_defs` builds this sensor for you; call it
    directly only to wire it to your own results job.

    Args:
        name: the sensor's name.
        job: the job that materialises one partition of the results asset.
        results_asset_key: the results asset (its partitions' status tells which batches are done).
        partitions_def: the dynamic partitions holding one key per submitted batch id.
        options: interval and default status.
        together: the resource to use; None: the ``together`` resource of the Definitions.
        description: shown in the UI.
    """
    asset_key = dg.AssetKey.from_coercible(results_asset_key)
    partitions_name = partitions_def.name
    if not partitions_name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition.")

    decorate = dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=options.minimum_interval_seconds,
        default_status=options.default_status,
        description=description
        or (
            f"Watches the Together batches of {partitions_name!r} with one GET /batches per tick "
            f"and launches one {asset_key.to_user_string()} run per finished batch."
        ),
    )

    # Unbound, the resource is a parameter: Dagster passes the Definitions' ``together``
    # resource, in the daemon and in a direct call alike.
    def _bound(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        assert together is not None
        return _tick(context, together, asset_key, partitions_def)

    def _from_definitions(
        context: dg.SensorEvaluationContext, together: TogetherResource
    ) -> dg.SensorResult | dg.SkipReason:
        return _tick(context, together, asset_key, partitions_def)

    return decorate(_bound if together is not None else _from_definitions)


def _tick(
    context: dg.SensorEvaluationContext,
    resource: TogetherResource,
    asset_key: dg.AssetKey,
    partitions_def: dg.DynamicPartitionsDefinition,
) -> dg.SensorResult | dg.SkipReason:
    started = time.monotonic()
    budget = tick_budget_seconds()
    instance = context.instance
    cursor = _Cursor.load(context.cursor, context.log)
    name = partitions_def.name
    assert name is not None

    submitted = list(instance.get_dynamic_partitions(name))
    if not submitted:
        return dg.SkipReason(f"No batches submitted yet ({name!r} is empty).")
    done, running_now = _partition_states(instance, asset_key, submitted, partitions_def)
    # The cursor keeps what this sensor requested until it is materialised (a failed results
    # run stays there: it is not re-launched, re-materialise it from the UI once fixed).
    cursor.prune(set(submitted), done)
    # Not watched: materialised, being materialised (by us or by hand), requested already, or
    # gone. A partition that failed without being requested here (e.g. materialised by hand
    # before its batch finished) is watched again and gets its run when the batch ends.
    watched = [
        bid
        for bid in submitted
        if bid not in done
        and bid not in running_now
        and bid not in cursor.launched
        and bid not in cursor.gone
    ]
    if not watched:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"All {len(submitted)} submitted batches are retrieved or being retrieved."
            ),
            cursor=cursor.dump(),
        )

    by_id = {job.id: job for job in _list_batches(context, resource, budget)}

    run_requests: list[dg.RunRequest] = []
    observations: list[dg.AssetObservation] = []
    running: list[BatchJob] = []
    missing: list[str] = []
    for batch_id in watched:
        if time.monotonic() - started > budget:
            # Unlaunched batches are not in the cursor: the next tick takes them.
            context.log.warning("Tick time budget used up; the rest waits for the next tick.")
            break
        batch = by_id.get(batch_id)
        if batch is None:
            ticks = cursor.missing.get(batch_id, 0) + 1
            if ticks < MISSING_TICKS_BEFORE_DROP:
                cursor.missing[batch_id] = ticks
                missing.append(batch_id)
                continue
            cursor.missing.pop(batch_id, None)
            cursor.gone.add(batch_id)
            message = (
                f"Batch {batch_id} has not been in Together's batch list for {ticks} ticks "
                "(deleted, or created with another API key): no longer watched. Materialize "
                "its partition by hand if it comes back."
            )
            context.log.warning(message)
            observations.append(
                dg.AssetObservation(
                    asset_key=asset_key,
                    partition=batch_id,
                    metadata={"together/batch_gone": message},
                )
            )
            continue
        cursor.missing.pop(batch_id, None)
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
        cursor.launched[batch_id] = status.value

    if running or missing:
        context.log.info(_progress_line(running, missing))
    for request in run_requests:
        context.log.info(
            f"Batch {request.partition_key} is {request.tags[BATCH_STATUS_TAG]}: "
            "requesting its results run."
        )
    return dg.SensorResult(
        run_requests=run_requests,
        asset_events=observations,
        cursor=cursor.dump(),
        skip_reason=None
        if run_requests
        else dg.SkipReason(f"{len(running) + len(missing)} batch(es) still running."),
    )


def _list_batches(
    context: dg.SensorEvaluationContext, resource: TogetherResource, budget: float
) -> Iterable["BatchJob"]:
    """All batches of the account in one call, within the tick's time budget.

    An error propagates: the tick fails visibly and its cursor is not stored, so the next tick
    sees exactly the same watched set.
    """
    # Two attempts and one Retry-After wait must fit in the budget with room to spare.
    timeout = min(resource.timeout, budget / 3)
    retries = min(resource.max_retries, _LIST_MAX_RETRIES)
    with resource.make_client(
        timeout=timeout, max_retries=retries, retry_after_max=budget / 9
    ) as client:
        try:
            return client.batches.list_batches()
        except Exception as exc:
            context.log.error(
                f"Could not list Together batches ({type(exc).__name__}: {exc}). Nothing was "
                "launched and the cursor was kept; the next tick tries again."
            )
            raise
