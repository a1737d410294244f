"""Waiting for batches inside a run: poll until every batch has ended, fail clearly after
``poll_timeout`` (the batches are left running and named), and cancel them when the run is
terminated, if asked to.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

from dagster_together.options import WaitOptions

if TYPE_CHECKING:
    from dagster_together.client import BatchJob, TogetherClient

__all__ = ["cancel_running", "wait_for_batches"]


def wait_for_batches(
    context: dg.AssetExecutionContext,
    client: TogetherClient,
    batch_ids: Sequence[str],
    options: WaitOptions,
) -> list[BatchJob]:
    """The ended jobs of ``batch_ids``, in order, once every one of them has ended.

    Raises:
        dg.Failure: ``poll_timeout`` passed; the message names the batches still running.
    """
    from dagster_together.client.errors import BatchWaitTimeout

    deadline = None if options.poll_timeout is None else time.monotonic() + options.poll_timeout
    ended: list[BatchJob] = []
    try:
        for batch_id in batch_ids:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ended.append(
                client.batches.wait(
                    batch_id,
                    poll_interval=options.poll_interval,
                    timeout=remaining,
                    logger=context.log,
                )
            )
    except BatchWaitTimeout as exc:
        still = [b for b in batch_ids if b not in {job.id for job in ended}]
        raise dg.Failure(
            description=(
                f"{len(still)} batch(es) still running after poll_timeout={options.poll_timeout:g} "
                f"s: {', '.join(still)} (the first is {exc.status}). They were left running, "
                "not cancelled: a re-run of this asset reuses them, or raise poll_timeout."
            ),
            metadata={"together/running_batch_ids": dg.MetadataValue.json(still)},
            allow_retries=False,
        ) from exc
    return ended


def cancel_running(
    context: dg.AssetExecutionContext, client: TogetherClient, batch_ids: Sequence[str]
) -> None:
    """Ask Together to cancel every batch of ``batch_ids`` that has not ended (best effort)."""
    for batch_id in batch_ids:
        try:
            job = client.batches.get_batch(batch_id)
            if job.status.is_terminal:
                continue
            client.batches.cancel_batch(batch_id)
            context.log.warning(f"Run terminated: cancelled Together batch {batch_id}.")
        except Exception as exc:  # keep cancelling the others; the run is ending anyway
            context.log.error(f"Could not cancel batch {batch_id} ({type(exc).__name__}: {exc}).")
