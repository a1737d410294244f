"""Dagster integration for Together AI's Batch inference API.

Submit a prompts table as batches, watch them with a sensor that holds no run slot, and get the
answers back as a Parquet table joined to the inputs on ``custom_id``::

    from dagster_together import RequestTemplate, TogetherResource, together_batch_assets

The plain-Python pieces (``TogetherClient``, ``join_results``, ``build_requests``) work without
Dagster too. Importing this package loads Dagster but not httpx, pyarrow or s3fs: the names that
need them are loaded on first use, so a code location loads as fast as ``import dagster``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dagster import DagsterLibraryRegistry

from dagster_together.assets import (
    COMPLETENESS_CHECK,
    ERROR_RATE_CHECK,
    TogetherBatchDefs,
    together_batch_assets,
)
from dagster_together.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DownloadError,
    InvalidRequestFileError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TogetherError,
)
from dagster_together.client.types import BatchJob, BatchStatus, FileObject, FileResponse
from dagster_together.components import TogetherBatchComponent
from dagster_together.resources import TogetherResource
from dagster_together.sensors import together_batch_sensor
from dagster_together.storage import BatchStorageLayout
from dagster_together.version import __version__

if TYPE_CHECKING:
    from dagster_together.client import TogetherClient
    from dagster_together.requests import (
        RequestChunk,
        RequestFileStats,
        RequestTemplate,
        build_requests,
        check_request_file,
        write_request_chunks,
    )
    from dagster_together.results import JoinSummary, join_results

# Public names whose modules import httpx or pyarrow: loaded when first asked for.
_LAZY = {
    "TogetherClient": "dagster_together.client",
    "RequestChunk": "dagster_together.requests",
    "RequestFileStats": "dagster_together.requests",
    "RequestTemplate": "dagster_together.requests",
    "build_requests": "dagster_together.requests",
    "check_request_file": "dagster_together.requests",
    "write_request_chunks": "dagster_together.requests",
    "JoinSummary": "dagster_together.results",
    "join_results": "dagster_together.results",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "COMPLETENESS_CHECK",
    "ERROR_RATE_CHECK",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchJob",
    "BatchStatus",
    "BatchStorageLayout",
    "ConflictError",
    "DownloadError",
    "FileObject",
    "FileResponse",
    "InvalidRequestFileError",
    "JoinSummary",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestChunk",
    "RequestFileStats",
    "RequestTemplate",
    "ServerError",
    "TogetherBatchComponent",
    "TogetherBatchDefs",
    "TogetherClient",
    "TogetherError",
    "TogetherResource",
    "__version__",
    "build_requests",
    "check_request_file",
    "join_results",
    "together_batch_assets",
    "together_batch_sensor",
    "write_request_chunks",
]

DagsterLibraryRegistry.register("dagster-together", __version__, is_dagster_package=False)
