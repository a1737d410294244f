"""Build and validate Together batch input JSONL, and cut it into files the API accepts.

A batch input line is ``{"custom_id": "<unique, <= 64 chars>", "body": {"model": ..., ...}}``;
one file holds at most 50,000 lines and 100 MB. Together checks the whole file while the job is
``VALIDATING`` and fails the job for one bad line, so everything here refuses bad input *before*
anything is uploaded, with one message that names the file (or request, or the user's row), the
line and the fix.

A module per step:

* :mod:`.template`: :class:`RequestTemplate` and :class:`AudioTemplate`, how a row becomes a
  request body (placeholders, images, an output schema; audio lines);
* :mod:`.images`: images sent inline as ``data:`` URLs;
* :mod:`.lines`: a template's request lines written without encoding each row's dict;
* :mod:`.rules`: the API's limits and the per-request rules every step applies;
* :mod:`.check`: :func:`check_request_file`, the streaming check of a finished file;
* :mod:`.table`: reading the user's table: :func:`build_requests`, :func:`input_columns_table`
  (:func:`input_columns_batches`), :func:`write_input_columns`;
* :mod:`.chunks`: :func:`write_request_chunks`, requests cut into files within the limits.

This package imports neither Dagster nor httpx; pyarrow is imported inside the functions that
need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster_together.lazy import lazy_getattr
from dagster_together.requests.rules import (
    BATCH_PURPOSE,
    MAX_BATCH_BYTES,
    MAX_CUSTOM_ID_LENGTH,
    MAX_REQUESTS_PER_BATCH,
    SUPPORTED_ENDPOINTS,
)

if TYPE_CHECKING:
    from dagster_together.requests.check import RequestFileStats, check_request_file
    from dagster_together.requests.chunks import RequestChunk, write_request_chunks
    from dagster_together.requests.table import (
        build_requests,
        input_columns_batches,
        input_columns_table,
        write_input_columns,
    )
    from dagster_together.requests.template import AudioTemplate, RequestTemplate

# Loaded when first asked for: the package root (and so ``import dagster_together``) needs only
# the limits, and a code location that never submits never builds a request.
_LAZY = {
    "AudioTemplate": ".template",
    "RequestChunk": ".chunks",
    "RequestFileStats": ".check",
    "RequestTemplate": ".template",
    "build_requests": ".table",
    "check_request_file": ".check",
    "input_columns_batches": ".table",
    "input_columns_table": ".table",
    "write_input_columns": ".table",
    "write_request_chunks": ".chunks",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "AudioTemplate",
    "BATCH_PURPOSE",
    "MAX_BATCH_BYTES",
    "MAX_CUSTOM_ID_LENGTH",
    "MAX_REQUESTS_PER_BATCH",
    "SUPPORTED_ENDPOINTS",
    "RequestChunk",
    "RequestFileStats",
    "RequestTemplate",
    "build_requests",
    "check_request_file",
    "input_columns_batches",
    "input_columns_table",
    "write_input_columns",
    "write_request_chunks",
]
