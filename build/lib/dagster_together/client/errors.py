"""The exceptions the client raises.

Every message says what happened and what to do. None of them ever holds the API key: the
transport builds messages from the status, the path and the server's error message only.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchNotCreatedError",
    "BatchWaitTimeout",
    "ConflictError",
    "DownloadError",
    "FileValidationError",
    "InputFileNotFoundError",
    "InvalidRequestFileError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "TogetherError",
]


class TogetherError(Exception):
    """Base class for every error raised by dagster-together."""


class InvalidRequestFileError(TogetherError, ValueError):
    """A batch input file (or request table) breaks the API's rules; nothing was sent."""


class APIError(TogetherError):
    """The API answered with an error status.

    Attributes:
        status_code: the HTTP status.
        message: the server's own message, if any.
        code: the server's error code or type, if any.
        request: ``"METHOD /path"`` of the call that failed.
        body: the decoded JSON error body, if there was one (kept out of the message).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request = request
        self.body = body


class BadRequestError(APIError):
    """400/422: the request is wrong; retrying it unchanged will not help."""


class AuthenticationError(APIError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(APIError):
    """403: the key is valid but may not do this."""


class NotFoundError(APIError):
    """404: the file or batch does not exist (or belongs to another account)."""


class ConflictError(APIError):
    """409: the request conflicts with the current state of the resource."""


class RateLimitError(APIError):
    """429: too many requests, still refused after the configured retries."""


class ServerError(APIError):
    """5xx: Together's side failed, still failing after the configured retries."""


class APIConnectionError(TogetherError):
    """The API could not be reached (refused, reset, timed out) after the configured retries."""


class APITimeoutError(APIConnectionError):
    """The API did not answer within the configured timeout."""


class DownloadError(TogetherError):
    """A file could not be downloaded completely; nothing was left at the destination."""


class InputFileNotFoundError(InvalidRequestFileError, FileNotFoundError):
    """The file given to upload does not exist (or is not a regular file); nothing was sent."""


class FileValidationError(InvalidRequestFileError):
    """Together checked an uploaded file and found it invalid (``validation_report.valid`` is
    false, or ``processing_status`` is ``INVALID_FORMAT``). The bytes were sent; no batch was
    created from them.

    Attributes:
        file_id: the id Together gave the file.
        report: the ``validation_report`` object as Together sent it (``valid``, ``error``,
            ``error_type``, ``nlines``, ...), or None if only the status said so.
        processing_status: the file's ``processing_status``.
    """

    def __init__(
        self,
        message: str,
        *,
        file_id: str,
        report: dict[str, Any] | None,
        processing_status: str | None,
    ) -> None:
        super().__init__(message)
        self.file_id = file_id
        self.report = report
        self.processing_status = processing_status


class BatchNotCreatedError(APIError):
    """Together answered a create with ``{"job": null, "warning": ...}``: no batch exists and
    nothing is billed (for example, batch does not serve the model). Retrying will not help.

    Attributes:
        warning: Together's own explanation, as sent.
    """

    def __init__(self, message: str, *, warning: str | None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.warning = warning


class BatchWaitTimeout(TogetherError):
    """:meth:`Batches.wait` gave up before the batch ended. The batch is still running on
    Together's side: it was not cancelled.

    Attributes:
        batch_id: the batch waited for.
        status: its last status seen.
        job: the last ``BatchJob`` seen.
    """

    def __init__(self, message: str, *, batch_id: str, status: str, job: Any = None) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.status = status
        self.job = job
