"""Every exception dagster-together raises, importable from one place::

    from dagster_together.errors import AuthenticationError, InvalidRequestFileError

The plain-Python layer (client, request builder, join) raises these; inside a Dagster run they
reach the UI as one ``dg.Failure`` whose first line is the message, with the exception below.
"""

from dagster_together.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DownloadError,
    InputFileNotFoundError,
    InvalidRequestFileError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TogetherError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "DownloadError",
    "InputFileNotFoundError",
    "InvalidRequestFileError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "TogetherError",
]
