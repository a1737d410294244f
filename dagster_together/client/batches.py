"""Batches: create (never blindly retried), get, list, cancel."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from dagster_together.client.errors import APIError
from dagster_together.client.transport import AmbiguousRequestError, Transport, quote_id
from dagster_together.client.types import BatchJob, BatchStatus

logger = logging.getLogger("dagster_together.client")

#: How far the server's clock may lag ours when we look for a batch our lost request created.
#: Small on purpose: a batch on the same file created earlier than this is someone else's.
CLOCK_SKEW = timedelta(seconds=60)


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
                    logger.warning(
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
        if isinstance(data, dict) and data.get("warning"):
            logger.warning("Together warned about batch on %s: %s", file_id, data["warning"])
        if not isinstance(data, dict):
            raise APIError(f"Together answered {described} with an unexpected body: {data!r}")
        job = BatchJob.from_api(data)
        logger.info("Created batch %s on %s (%s)", job.id, file_id, job.status)
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
        """Ask Together to cancel a batch (``POST /batches/{id}/cancel``); returns the job."""
        return BatchJob.from_api(self._transport.json("POST", f"/batches/{quote_id(id)}/cancel"))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
