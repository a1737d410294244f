"""The rules every batch request follows, and the API's limits.

:class:`_Rules` checks one request and what needs the requests before it (unique ids, one model,
one endpoint). It is shared by the file check (lines of a file, :mod:`.check`) and the chunk
writer (request mappings, :mod:`.chunks`), so both refuse exactly the same things with the same
words. :func:`json_type` and :func:`is_utf8` are used by the results reader too.
"""

from __future__ import annotations

import array
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dagster_together.client.errors import InvalidRequestFileError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

MAX_REQUESTS_PER_BATCH = 50_000
"""The API's limit on lines in one batch input file."""
MAX_BATCH_BYTES = 100 * 1024 * 1024
"""The API's limit on the size of one batch input file (100 MB, counted as 100 MiB)."""
MAX_CUSTOM_ID_LENGTH = 64
"""The API's limit on the length of a ``custom_id``."""
SUPPORTED_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
)
"""Endpoints a batch may target."""

BATCH_PURPOSE = "batch-api"
_EXAMPLE_LINE = '{"custom_id": "row-1", "body": {"model": "...", "messages": [...]}}'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every line: ``json.loads(s, parse_constant=...)`` would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class RowNaming:
    """How messages name a request built from a row of the user's table: by the table, the row
    (1-based; the line, for a JSONL file) and the user's id column, which is what the user
    knows, rather than by request number and ``custom_id``. Filled in as the table is read.

    ``unique_ids`` is True once the whole id column was found free of duplicates (one Arrow
    pass): then the rules need not remember every id to find a repeat."""

    def __init__(self, source: str = "table", column: str = "custom_id", unit: str = "row") -> None:
        self.source = source
        self.column = column
        self.unit = unit
        self.unique_ids = False

    def where(self, pos: int) -> str:
        """The full position: ``reviews.parquet, row 7``."""
        return f"{self.source}, {self.unit} {pos}"

    def ref(self, pos: int) -> str:
        """A second position in the same message: ``row 7``."""
        return f"{self.unit} {pos}"


class _Rules:
    """Per-request checks plus the cross-request state (ids seen, models, endpoint)."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        require_single_model: bool,
        label: Callable[[int], str],
        ref: Callable[[int], str],
        rows: RowNaming | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.require_single_model = require_single_model
        # Positions (line numbers, request numbers) are kept as ints and only turned into text by
        # ``label`` for a message: 50,000 f-strings per file would cost more than the checks.
        self.label = label  # full position: "in.jsonl, line 7"
        self.ref = ref  # short position for a second line in one message: "line 7"
        self.rows = rows  # requests built from a table: positions are its rows
        if rows is not None:
            self.label, self.ref = rows.where, rows.ref
        self.seen: dict[str, int] = {}  # custom_id -> position of its first appearance
        self.models: dict[str, int] = {}  # model -> position of its first appearance (ordered)
        self.url: tuple[str, int] | None = None  # (url, position) of the first line with a url

    def subject(self, custom_id: str) -> str:
        """The request as messages name it: ``custom_id 'r7'``, or ``review_id 'r7'`` for a row."""
        column = self.rows.column if self.rows is not None else "custom_id"
        return f"{column} {custom_id!r}"

    def check_object(self, obj: Any, pos: int) -> tuple[str, str, str | None]:
        """Check one parsed request; return (custom_id, model, url). Raises on the first fault."""
        where = self.label(pos)
        if not isinstance(obj, dict):
            raise InvalidRequestFileError(
                f"{where}: is a JSON {json_type(obj)}, not an object; every line must be one "
                f"request object like {_EXAMPLE_LINE}."
            )
        custom_id = obj.get("custom_id")
        if "custom_id" not in obj or custom_id is None:
            raise InvalidRequestFileError(
                f'{where}: has no custom_id; add a unique string "custom_id" (at most '
                f"{MAX_CUSTOM_ID_LENGTH} characters) to every request: the results are joined on it."
            )
        if not isinstance(custom_id, str):
            example = (
                f', e.g. "custom_id": "{custom_id}"'
                if isinstance(custom_id, int) and not isinstance(custom_id, bool)
                else ""
            )
            raise InvalidRequestFileError(
                f"{where}: custom_id is a JSON {json_type(custom_id)} ({_short(custom_id)}), not a "
                f"string; write it as a JSON string{example}."
            )
        self.check_id_text(custom_id, where)
        body = obj.get("body")
        if body is None:
            raise InvalidRequestFileError(
                f'{where}: {self.subject(custom_id)} has no body; add a "body" object holding the '
                f'endpoint\'s request (with "model"), e.g. {_EXAMPLE_LINE}.'
            )
        if not isinstance(body, dict):
            raise InvalidRequestFileError(
                f"{where}: {self.subject(custom_id)} has a body that is a JSON {json_type(body)}, not "
                'an object; "body" must be the request object itself, not a string holding JSON.'
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            what = "no model" if model is None else f"model {model!r} (not a non-empty string)"
            raise InvalidRequestFileError(
                f'{where}: {self.subject(custom_id)} has a body with {what}; set "model" in every '
                "body (the batch takes its model from the bodies)."
            )
        url = obj.get("url")
        if url is not None and not isinstance(url, str):
            raise InvalidRequestFileError(
                f'{where}: {self.subject(custom_id)} has a url that is not a string; remove "url" '
                f"or set it to one of {', '.join(SUPPORTED_ENDPOINTS)}."
            )
        self.check_cross(custom_id, model, url, pos)
        return custom_id, model, url

    def check_built(self, request: Mapping[str, Any], pos: int) -> tuple[str, str]:
        """Check a request a template built (its shape is the template's, its id text): the
        id and the checks across requests; return (custom_id, model)."""
        custom_id = request["custom_id"]
        model = request["body"]["model"]
        self.check_id_text(custom_id, self.label(pos))
        self.check_cross(custom_id, model, None, pos)
        return custom_id, model

    def check_id_text(self, custom_id: str, where: str) -> None:
        """A custom_id string is not empty and within the API's length."""
        if not custom_id:
            if self.rows is not None:
                raise InvalidRequestFileError(
                    f"{where}: the id column {self.rows.column!r} is empty; every row needs a "
                    "unique, non-empty id (it becomes custom_id, on which the results are joined)."
                )
            raise InvalidRequestFileError(
                f"{where}: custom_id is empty; give every request a unique, non-empty custom_id."
            )
        if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
            raise InvalidRequestFileError(
                f"{where}: {self.subject(_short(custom_id))} is {len(custom_id)} characters long, "
                f"over the limit of {MAX_CUSTOM_ID_LENGTH}"
                f"{' for a custom_id' if self.rows is not None else ''}; use a shorter id (e.g. a "
                "row number or a hash)."
            )

    def check_cross(self, custom_id: str, model: str, url: str | None, pos: int) -> None:
        """The checks that need earlier requests: unique ids, one model, one endpoint."""
        seen = self.seen
        if self.rows is not None and self.rows.unique_ids:
            pass  # known unique: a dict of a million ids would outweigh the request files
        elif custom_id in seen:
            rows = self.rows
            if rows is not None:
                raise InvalidRequestFileError(
                    f"{rows.source}: {self.subject(custom_id)} appears twice: {rows.unit}s "
                    f"{seen[custom_id]} and {pos}; every row needs its own {rows.column} (the "
                    "results are matched to the rows by it)."
                )
            raise InvalidRequestFileError(
                f"{self.label(pos)}: {self.subject(custom_id)} repeats "
                f"{self.ref(seen[custom_id])}; every custom_id must be unique in the batch "
                "(results are matched to requests by it)."
            )
        else:
            seen[custom_id] = pos
        if model not in self.models:
            if self.require_single_model and self.models:
                where = self.label(pos)
                other, other_pos = next(iter(self.models.items()))
                other_where = self.ref(other_pos)
                raise InvalidRequestFileError(
                    f"{where}: {self.subject(custom_id)} uses model {model!r} but {other_where} uses "
                    f"{other!r}; one model per batch is required here, so split the requests "
                    "by model."
                )
            self.models[model] = pos
        if url is not None:
            where = self.label(pos)
            if url not in SUPPORTED_ENDPOINTS:
                raise InvalidRequestFileError(
                    f"{where}: {self.subject(custom_id)} targets url {url!r}, which batches do not "
                    f"support; use one of {', '.join(SUPPORTED_ENDPOINTS)}."
                )
            if self.endpoint is not None and url != self.endpoint:
                raise InvalidRequestFileError(
                    f"{where}: {self.subject(custom_id)} targets {url!r} but the batch endpoint is "
                    f"{self.endpoint!r}; one endpoint per batch: fix the url or split the requests."
                )
            if self.url is None:
                self.url = (url, pos)
            elif self.url[0] != url:
                raise InvalidRequestFileError(
                    f"{where}: {self.subject(custom_id)} targets {url!r} but {self.ref(self.url[1])} targets "
                    f"{self.url[0]!r}; one endpoint per batch: split the requests by endpoint."
                )


def check_endpoint(endpoint: str | None, where: str) -> None:
    if endpoint is not None and endpoint not in SUPPORTED_ENDPOINTS:
        raise InvalidRequestFileError(
            f"{where}: endpoint {endpoint!r} is not supported for batches; use one of "
            f"{', '.join(SUPPORTED_ENDPOINTS)}."
        )


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_utf8(data: pa.Buffer | bytes | bytearray) -> bool:
    """Whether ``data`` is valid UTF-8 (the same verdict as ``bytes(data).decode("utf-8")``),
    checked by Arrow without a copy: ~5x faster than decoding, and no str as large as the block.
    Used by the request validator and by the join's block reader."""
    import pyarrow as pa

    buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    whole = pa.Array.from_buffers(
        pa.large_string(),
        1,
        [None, pa.py_buffer(array.array("q", [0, buffer.size])), buffer],
    )
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True
