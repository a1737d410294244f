"""Typed views of the API's answers.

They are built with ``from_api`` from the JSON the server sends: unknown fields are kept in
``raw`` and never rejected, so a new field on Together's side breaks nothing here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


class BatchStatus(str, enum.Enum):
    """A batch job's status. ``BatchStatus("SOMETHING_NEW")`` gives an unknown, non-terminal status
    instead of raising, because Together may add statuses at any time."""

    VALIDATING = "VALIDATING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    CANCELING = "CANCELING"

    @classmethod
    def _missing_(cls, value: object) -> BatchStatus | None:
        if not isinstance(value, str):
            return None
        upper = value.strip().upper()
        if upper in cls.__members__:
            return cls[upper]
        # A pseudo-member: not iterated, not terminal, but carries the server's string.
        unknown = str.__new__(cls, value)
        unknown._name_ = "UNKNOWN"
        unknown._value_ = value
        return unknown

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change any more (its files can be fetched)."""
        return self.value in _TERMINAL

    @property
    def is_known(self) -> bool:
        """False for a status string this version of the library has never heard of."""
        return self._name_ != "UNKNOWN"

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset({"COMPLETED", "FAILED", "EXPIRED", "CANCELLED"})


def _parse_time(value: Any) -> datetime | None:
    """RFC 3339 strings or Unix seconds; anything else becomes None (the raw value stays in raw)."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, tz=timezone.utc)
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class BatchJob:
    """A batch job as ``GET /batches/{id}`` describes it."""

    id: str
    status: BatchStatus
    input_file_id: str | None = None
    endpoint: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None
    progress: float | None = None
    model_id: str | None = None
    user_id: str | None = None
    file_size_bytes: int | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    job_deadline: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> BatchJob:
        """Build from the API's JSON; accepts the ``{"job": {...}}`` envelope of a create answer."""
        if "job" in data and isinstance(data["job"], dict):
            data = data["job"]
        error = data.get("error")
        if isinstance(error, dict):
            error = error.get("message") or str(error)
        return cls(
            id=str(data["id"]),
            status=BatchStatus(str(data.get("status") or "UNKNOWN")),
            input_file_id=data.get("input_file_id"),
            endpoint=data.get("endpoint"),
            output_file_id=data.get("output_file_id") or None,
            error_file_id=data.get("error_file_id") or None,
            error=error or None,
            progress=_float_or_none(data.get("progress")),
            model_id=data.get("model_id"),
            user_id=data.get("user_id"),
            file_size_bytes=data.get("file_size_bytes"),
            created_at=_parse_time(data.get("created_at")),
            completed_at=_parse_time(data.get("completed_at")),
            job_deadline=_parse_time(data.get("job_deadline")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class FileResponse:
    """A file as ``GET /files/{id}`` describes it.

    ``purpose`` is kept as the server's string, whatever it is (``batch-api`` for inputs,
    ``batch-generated`` for outputs, or a purpose this library has never heard of).
    ``processing_status`` (``PENDING|QUEUED|RUNNING|COMPLETED|FAILED|INVALID_FORMAT``) and
    ``validation_report`` (``valid``, ``error``, ``error_type``, ``nlines``, ...) are None when
    the server did not send them.
    """

    id: str
    filename: str | None = None
    bytes: int | None = None
    purpose: str | None = None
    file_type: str | None = None
    processed: bool | None = None
    created_at: datetime | None = None
    object: str = "file"
    processing_status: str | None = None
    validation_report: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_invalid(self) -> bool:
        """True when Together's validation rejected the file."""
        report = self.validation_report
        return (report is not None and report.get("valid") is False) or (
            self.processing_status == "INVALID_FORMAT"
        )

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> FileResponse:
        """Build from the API's JSON (``FileType``/``Processed`` or snake-case spellings)."""
        report = data.get("validation_report")
        status = data.get("processing_status")
        return cls(
            id=str(data["id"]),
            filename=data.get("filename"),
            bytes=data.get("bytes"),
            purpose=data.get("purpose"),
            file_type=data.get("FileType", data.get("file_type")),
            processed=data.get("Processed", data.get("processed")),
            created_at=_parse_time(data.get("created_at")),
            object=str(data.get("object") or "file"),
            processing_status=str(status).upper() if status else None,
            validation_report=dict(report) if isinstance(report, dict) else None,
            raw=dict(data),
        )


@dataclass(frozen=True)
class FileObject:
    """What ``retrieve_content`` wrote: the same shape together-python returns.

    ``filename`` is the written location (a path or an fsspec URL), ``size`` the bytes written.
    """

    id: str
    filename: str
    size: int
    object: str = "local"
