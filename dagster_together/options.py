"""The typed option groups of a batch pipeline: how requests are batched, how results are checked,
and how the pipeline waits for Together (a sensor, or inside the run).

Each group is a small frozen dataclass with the defaults a new user wants, so that
:func:`~dagster_together.build_together_batch_defs`, the resource's execution methods and the
Component take the same few objects instead of a growing list of keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import dagster as dg

from dagster_together.requests import MAX_REQUESTS_PER_BATCH

__all__ = [
    "DEFAULT_FATAL_ERROR_CODES",
    "DEFAULT_RESULTS_RETRY_POLICY",
    "DEFAULT_SENSOR_INTERVAL_SECONDS",
    "BatchingOptions",
    "RawResponses",
    "ResubmitOptions",
    "ResultsOptions",
    "SensorOptions",
    "WaitOptions",
]

DEFAULT_SENSOR_INTERVAL_SECONDS = 60
"""Seconds between ticks of the batch sensor: batches take minutes to hours, a minute is plenty."""

DEFAULT_RESULTS_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL
)
"""Retries of the results step: it is idempotent (downloads and the join overwrite), and a
storage or network hiccup after the client's own HTTP retries should not need a human."""


@dataclass(frozen=True)
class BatchingOptions:
    """How the requests are cut into batches and which endpoint they target.

    Attributes:
        endpoint: the endpoint of every request. None: the template's endpoint, else
            ``/v1/chat/completions``.
        completion_window: the batch completion window (Together knows ``"24h"``).
        max_requests_per_batch: requests per batch, at most the API's 50,000.
        max_bytes_per_batch: bytes per batch input file; None for the API's 100 MB.
    """

    endpoint: str | None = None
    completion_window: str = "24h"
    max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH
    max_bytes_per_batch: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_requests_per_batch <= MAX_REQUESTS_PER_BATCH:
            raise ValueError(
                f"max_requests_per_batch must be between 1 and {MAX_REQUESTS_PER_BATCH:,}, "
                f"got {self.max_requests_per_batch}."
            )
        if self.max_bytes_per_batch is not None and self.max_bytes_per_batch < 1:
            raise ValueError(
                f"max_bytes_per_batch must be positive, got {self.max_bytes_per_batch}."
            )


RawResponses = Literal["failed", "all", "none"]
"""Which rows keep their raw line in ``response`` (``join_results``' ``RAW_RESPONSES``)."""


@dataclass(frozen=True)
class ResultsOptions:
    """How a batch's results are checked and retried.

    Attributes:
        max_error_rate: the ``error_rate`` check passes while at most this share of the inputs
            lacks a successful answer.
        error_rate_severity: severity of a failed ``error_rate`` check. WARN by default: some
            failed requests are normal and the table is still complete and usable.
        retry_policy: step retries of the results asset (2 retries, 15 s then 30 s); None to
            fail at once. A batch that has not ended yet is never retried.
        max_invalid_output_rate: with an output schema, the ``invalid_output_rate`` check (a
            warning) passes while at most this share of the answers do not match it.
        pool: the Dagster concurrency pool of the results asset. None:
            ``together_results_{name}``. A pool has no limit until the instance gives it one
            (``dagster instance concurrency set POOL 4``, or the UI); with
            ``concurrency: pools: granularity: run`` in ``dagster.yaml`` the run queue then keeps
            at most that many results runs in progress (see docs/scaling.md).
        raw_responses: which rows keep their raw output or error line in the ``response``
            column: ``"failed"`` (the rows that did not succeed), ``"all"`` (every answer's
            too, for fields without a column such as ``logprobs``) or ``"none"``.
    """

    max_error_rate: float = 0.05
    error_rate_severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.WARN
    retry_policy: dg.RetryPolicy | None = field(default=DEFAULT_RESULTS_RETRY_POLICY)
    max_invalid_output_rate: float = 0.05
    pool: str | None = None
    raw_responses: RawResponses = "failed"

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be between 0 and 1, got {self.max_error_rate}.")
        if self.raw_responses not in get_args(RawResponses):
            raise ValueError(
                f"raw_responses must be one of {', '.join(map(repr, get_args(RawResponses)))}, "
                f"got {self.raw_responses!r}."
            )


@dataclass(frozen=True)
class SensorOptions:
    """Watch the batches with a sensor (the default): no run slot is held while they run.

    Attributes:
        minimum_interval_seconds: seconds between ticks (one ``GET /batches`` each).
        default_status: RUNNING by default: an idle tick costs no API call, and batches nobody
            collects expire and are billed for nothing.
    """

    minimum_interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING


@dataclass(frozen=True)
class WaitOptions:
    """Submit and wait inside one run: for small jobs, or a deployment without the daemon.

    Attributes:
        poll_interval: seconds between status checks of a batch. None: 1 s at first, then half
            as long again after each check, up to 30 s (a quick batch is seen ending quickly,
            a long one costs two requests a minute).
        poll_timeout: seconds to wait at most; then the run fails, naming the batches, which
            are left running (the next run reuses them). None: wait as long as it takes.
        cancel_on_termination: cancel the batches still running when the run is terminated
            (from the UI or by the run monitor).
    """

    poll_interval: float | None = None
    poll_timeout: float | None = None
    cancel_on_termination: bool = True

    def __post_init__(self) -> None:
        if self.poll_interval is not None and self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {self.poll_interval}.")
        if self.poll_timeout is not None and self.poll_timeout <= 0:
            raise ValueError(f"poll_timeout must be positive or None, got {self.poll_timeout}.")


DEFAULT_FATAL_ERROR_CODES = frozenset(
    {
        "invalid_request_error",
        "invalid_request",
        "bad_request",
        "model_not_found",
        "model_not_available",
        "context_length_exceeded",
        "content_policy_violation",
        "content_filter",
        "invalid_api_key",
        "authentication_error",
        "permission_denied",
    }
)
"""Error codes a second try cannot fix. Every other failure (rate limits, timeouts, server
errors, overload, codes this library does not know), every request a batch never answered
(``missing``) and every request lost to an EXPIRED batch is retried."""


@dataclass(frozen=True)
class ResubmitOptions:
    """Follow-up batches for the requests that failed in a way a new try can fix.

    Attributes:
        max_attempts: tries per request, the first included (1: no follow-ups).
        fatal_error_codes: error codes never retried (:data:`DEFAULT_FATAL_ERROR_CODES`).
        use_answer_cache: look every request up in the answer store and send only the new ones.
    """

    max_attempts: int = 3
    fatal_error_codes: frozenset[str] = DEFAULT_FATAL_ERROR_CODES
    use_answer_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}.")
