"""Batches: create (never blindly retried), get, list, cancel."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from dagster_together.client.errors import APIError, BatchNotCreatedError, BatchWaitTimeout
from dagster_together.client.progress import LogSink
from dagster_together.client.transport import AmbiguousRequestError, Transport, quote_id
from dagster_together.client.types import BatchJob, BatchStatus

_log = logging.getLogger("dagster_together.client")

#: How far the server's clock may lag ours when we look for a batch our lost request created.
#: Small on purpose: a batch on the same file created earlier than this is someone else's.
CLOCK_SKEW = timedelta(seconds=60)
#: :meth:`Batches.wait` without a poll interval: the first pause and the longest one (seconds).
_FIRST_POLL = 1.0
_MAX_POLL = 30.0


def _jobs(data: Any) -> list[dict[str, Any]]:
    """A bare array (the API), or ``{"data": [...]}`` / ``{"batches": [...]}`` (tolerated)."""
    if isinstance(data, dict):
        data = data.get("data", data.get("batches", []))
    return [item for item in data or [] if isinstance(item, dict)]


class Batches:
    """The ``/batches`` endpoints. Reached as ``TogetherClient(...).batches``."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"Batches({self._transport!r})"

    def create_batch(
        self,
        file_id: str,
        *,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        model_id: str | None = None,
    ) -> BatchJob:
        """Create a batch job over an uploaded input file (``POST /batches``).

        A create is billed, so it is never retried blindly. It is retried only when the request
        provably created nothing (429, connection refused). After an ambiguous failure (5xx,
        timeout, connection dropped after sending) the existing batches are listed first: a
        batch on the same input file and endpoint, created since this call began (less 60 s
        for clock skew) and not FAILED, is taken as ours and returned; only if there is none is the request sent again.

        Accepts the ``{"job": {...}, "warning": ...}`` answer (a warning is logged) and a bare job.

        Raises:
            BatchNotCreatedError: Together answered ``{"job": null, "warning": ...}``: it created
                nothing (e.g. batch does not serve the model); ``.warning`` says why. Never
                retried.
        """
        body: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if model_id is not None:
            body["model_id"] = model_id
        since = datetime.now(timezone.utc) - CLOCK_SKEW
        described = self._transport.describe("POST", "/batches")
        retries = 0
        while True:
            try:
                data = self._transport.json("POST", "/batches", json=body, retry="unsent_only")
                break
            except AmbiguousRequestError as doubt:
                found = self._find_created(file_id, endpoint, since)
                if found is not None:
                    _log.warning(
                        "Together %s failed ambiguously (%s) but batch %s on %s exists; "
                        "using it instead of creating another.",
                        described,
                        doubt.error,
                        found.id,
                        file_id,
                    )
                    return found
                if retries >= self._transport.max_retries:
                    raise doubt.error from doubt.__cause__
                retries += 1
                self._transport.wait_before_retry(
                    retries, described, f"{doubt.error}; no batch was created, sending again"
                )
        if not isinstance(data, dict):
            raise APIError(f"Together answered {described} with an unexpected body: {data!r}")
        if "job" in data and not isinstance(data["job"], dict):
            raise _not_created(data, described, file_id, self._transport.scrub)
        if data.get("warning"):
            _log.warning("Together warned about batch on %s: %s", file_id, data["warning"])
        job = BatchJob.from_api(data)
        _log.info("Created batch %s on %s (%s)", job.id, file_id, job.status)
        return job

    def _find_created(self, file_id: str, endpoint: str, since: datetime) -> BatchJob | None:
        """The newest non-FAILED batch on ``file_id``/``endpoint`` created after ``since``."""
        candidates = [
            job
            for job in self.list_batches()
            if job.input_file_id == file_id
            and (job.endpoint or endpoint) == endpoint
            and job.status is not BatchStatus.FAILED
            # No (parseable) creation time: count it as ours; a duplicate bill is the worse error.
            and (job.created_at is None or _aware(job.created_at) >= since)
        ]
        if not candidates:
            return None
        epoch = datetime.fromtimestamp(0, timezone.utc)
        return max(candidates, key=lambda job: _aware(job.created_at) if job.created_at else epoch)

    def get_batch(self, id: str) -> BatchJob:
        """One batch job (``GET /batches/{id}``)."""
        return BatchJob.from_api(self._transport.json("GET", f"/batches/{quote_id(id)}"))

    def list_batches(self) -> list[BatchJob]:
        """Every batch job of the account (``GET /batches``, not paginated)."""
        return [BatchJob.from_api(item) for item in _jobs(self._transport.json("GET", "/batches"))]

    def cancel_batch(self, id: str) -> BatchJob:
        """Ask Together to cancel a batch (``POST /batches/{id}/cancel``); returns the job.

        Together answers ``CANCELING`` first and ``CANCELLED`` later: :meth:`wait` for the end.
        """
        return BatchJob.from_api(self._transport.json("POST", f"/batches/{quote_id(id)}/cancel"))

    def wait(
        self,
        id: str,
        *,
        poll_interval: float | None = None,
        timeout: float | None = None,
        logger: LogSink | None = None,
        on_poll: Callable[[BatchJob], None] | None = None,
    ) -> BatchJob:
        """Poll :meth:`get_batch` until the batch ends and return its final state.

        The end is a terminal status (COMPLETED, FAILED, EXPIRED, CANCELLED); ``CANCELING`` and
        statuses this library does not know are still running. Each poll calls ``on_poll(job)``
        and logs one line when the status or progress changed (to ``logger``, anything with
        ``.info``, else the ``dagster_together.client`` logger). Transient API failures are
        retried by the transport as for any call.

        Args:
            id: the batch id.
            poll_interval: seconds between two polls. None: 1 s at first, then half as long
                again after each poll, up to 30 s (a quick batch ends quickly, a long one costs
                two requests a minute).
            timeout: give up after this many seconds (None: wait as long as it takes).
            logger: where progress lines go, e.g. Dagster's ``context.log``.
            on_poll: called with every job seen, the final one included.

        Raises:
            BatchWaitTimeout: ``timeout`` passed first; the batch was not cancelled.
        """
        if poll_interval is not None and poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}.")
        pause = poll_interval if poll_interval is not None else _FIRST_POLL
        deadline = None if timeout is None else time.monotonic() + timeout
        log: LogSink = logger if logger is not None else _log
        last: tuple[str, float | None] | None = None
        while True:
            job = self.get_batch(id)
            if on_poll is not None:
                on_poll(job)
            seen = (job.status.value, job.progress)
            if seen != last:
                known = "" if job.status.is_known else " (a status this library does not know)"
                progress = "" if job.progress is None else f", {job.progress:.0f}% done"
                log.info(f"Batch {job.id}: {job.status.value}{known}{progress}")
                last = seen
            if job.status.is_terminal:
                return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise BatchWaitTimeout(
                    f"Batch {id} is still {job.status.value} after waiting {timeout:g} s. It is "
                    "still running on Together's side and was not cancelled: wait again later, "
                    f"or cancel it with client.batches.cancel_batch({id!r}).",
                    batch_id=id,
                    status=job.status.value,
                    job=job,
                )
            time.sleep(pause if left is None else min(pause, left))
            if poll_interval is None:
                pause = min(_MAX_POLL, pause * 1.5)


def _not_created(
    data: dict[str, Any], described: str, file_id: str, scrub: Callable[[str], str]
) -> BatchNotCreatedError:
    warning = data.get("warning")
    said = scrub(str(warning)) if warning else "no warning given"
    return BatchNotCreatedError(
        f"Together created no batch for {file_id} ({described} answered without a job): "
        f"{said}. Nothing was created or billed, and sending the same request again will not "
        "help: check the model in the request bodies (batch serves only some models) and the "
        "endpoint, then create the batch again.",
        warning=str(warning) if warning else None,
        request=described,
        body=data,
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
