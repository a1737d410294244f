"""Reliability: bad input is refused before anything is sent (and before anything is billed).

Promise proved here (see docs/reliability.md): every bad batch input file given to
``TogetherClient.files.upload(path, check=True)`` is refused with ONE single-line message that
names the file, the line (when there is one) and the fix, and the API sees no request at all.

This is the end-to-end table, through ``upload`` against the emulator over real HTTP; the
validator's own, finer table (block edges, tiny reads) is tests/test_requests.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dagster_together.client import InputFileNotFoundError, InvalidRequestFileError, TogetherClient
from tests.helpers import MODEL, jsonl
from tests.helpers import request_line as line

G = [line(f"r{i}") for i in range(1, 4)]


def _many_lines(path: Path) -> None:
    """50,001 valid requests: one line over the API's limit."""
    path.write_text("".join(line(f"r{i}") + "\n" for i in range(50_001)))


def _over_100_mb(path: Path) -> None:
    """~108 MB of valid 2.7 kB requests (fewer than 50,000 lines: the size limit trips first)."""
    filler = "x" * 2600
    with path.open("w") as handle:
        for start in range(0, 40_000, 5_000):
            handle.write(
                "".join(
                    json.dumps(
                        {
                            "custom_id": f"r{i}",
                            "body": {
                                "model": MODEL,
                                "messages": [{"role": "user", "content": filler}],
                            },
                        }
                    )
                    + "\n"
                    for i in range(start, start + 5_000)
                )
            )


@dataclass(frozen=True)
class Bad:
    """One bad input: what the file holds, how upload is called, what the message must say."""

    id: str
    content: bytes | Callable[[Path], None] | None  # None: the path does not exist
    where: str  # the line (or the file-level fault) the message names
    fix: str  # the words that tell the user what to do
    kwargs: dict[str, Any] = field(default_factory=dict)
    error: type[Exception] = InvalidRequestFileError


BAD_INPUTS = [
    # -- not JSONL ------------------------------------------------------------------------
    Bad(
        "not JSONL: a line is not JSON",
        jsonl(G[0], "custom_id=r2 body=...", G[2]),
        "line 2: is not valid JSON",
        "each line must be one complete JSON object (JSONL)",
    ),
    Bad(
        "not JSONL: one JSON array",
        json.dumps([json.loads(g) for g in G]).encode(),
        "line 1: is a JSON array",
        "write one request object per line (JSONL)",
    ),
    Bad(
        "not JSONL: pretty-printed JSON",
        json.dumps(json.loads(G[0]), indent=2).encode(),
        "line 1: is not valid JSON",
        "write each request on a single line (JSONL)",
    ),
    Bad(
        "not JSON: Infinity as a number",
        jsonl(G[0], G[1].replace('"body": {', '"body": {"temperature": Inf, ', 1)),
        "line 2: is not valid JSON (Inf is not valid JSON",
        "use a number or null instead",
    ),
    Bad(
        "not JSONL: truncated last line",
        jsonl(G[0], G[1][:-9]),
        "line 2: is not valid JSON",
        "each line must be one complete JSON object",
    ),
    # -- encoding, emptiness ----------------------------------------------------------------
    Bad(
        "not UTF-8",
        jsonl(G[0]) + b'{"custom_id": "r2", "body": {"model": "caf\xe9"}}\n',
        "line 2: is not valid UTF-8 (byte 0xe9",
        "save the file as UTF-8",
    ),
    Bad(
        "UTF-8 with a byte order mark",
        b"\xef\xbb\xbf" + jsonl(*G),
        "line 1: starts with a UTF-8 byte order mark",
        "save the file as UTF-8 without BOM",
    ),
    Bad("empty file", b"", ": is empty", "a batch input needs at least one request line"),
    Bad(
        "blank lines only",
        b"\n  \n\r\n",
        ": contains only blank lines (from line 1)",
        "write one request per line",
    ),
    Bad(
        "a blank line between requests",
        jsonl(G[0], "", G[1]),
        "line 2: is blank",
        "delete the line",
    ),
    # -- a line that is not a request object -------------------------------------------------
    Bad(
        "a line that is an array",
        jsonl(G[0], "[1, 2]"),
        "line 2: is a JSON array, not an object",
        "every line must be one request object",
    ),
    Bad(
        "a line that is a string",
        jsonl(G[0], '"r2"'),
        "line 2: is a JSON string, not an object",
        "every line must be one request object",
    ),
    # -- custom_id --------------------------------------------------------------------------
    Bad(
        "missing custom_id",
        jsonl(G[0], json.dumps({"body": {"model": MODEL}})),
        "line 2: has no custom_id",
        'add a unique string "custom_id"',
    ),
    Bad(
        "empty custom_id",
        jsonl(G[0], line("")),
        "line 2: custom_id is empty",
        "give every request a unique, non-empty custom_id",
    ),
    Bad(
        "custom_id not a string",
        jsonl(G[0], line(17)),
        "line 2: custom_id is a JSON number",
        'write it as a JSON string, e.g. "custom_id": "17"',
    ),
    Bad(
        "duplicate custom_id",
        jsonl(*G, line("r2")),
        "line 4: custom_id 'r2' repeats line 2",
        "every custom_id must be unique in the batch",
    ),
    Bad(
        "custom_id over 64 characters",
        jsonl(G[0], line("x" * 65)),
        "line 2: custom_id",
        "is 65 characters long, over the limit of 64; use a shorter id",
    ),
    # -- body and model ---------------------------------------------------------------------
    Bad(
        "missing body",
        jsonl(G[0], json.dumps({"custom_id": "r2"})),
        "line 2: custom_id 'r2' has no body",
        'add a "body" object',
    ),
    Bad(
        "body that is a JSON string",
        jsonl(json.dumps({"custom_id": "r1", "body": json.dumps({"model": MODEL})})),
        "line 1: custom_id 'r1' has a body that is a JSON string",
        '"body" must be the request object itself',
    ),
    Bad(
        "body without model",
        jsonl(G[0], line("r2", model=None)),
        "line 2: custom_id 'r2' has a body with no model",
        'set "model" in every body',
    ),
    # -- endpoints --------------------------------------------------------------------------
    Bad(
        "mixed endpoints",
        jsonl(line("r1", url="/v1/chat/completions"), line("r2", url="/v1/completions")),
        "line 2: custom_id 'r2' targets '/v1/completions' but line 1 targets",
        "one endpoint per batch: split the requests by endpoint",
    ),
    Bad(
        "unsupported endpoint",
        jsonl(G[0], line("r2", url="/v1/embeddings")),
        "line 2: custom_id 'r2' targets url '/v1/embeddings', which batches do not support",
        "use one of /v1/chat/completions",
    ),
    # -- the API's limits -------------------------------------------------------------------
    Bad(
        "over 50,000 lines",
        _many_lines,
        "line 50001: the file has more than 50,000 lines",
        "split it, e.g. with write_request_chunks(max_requests=50000)",
    ),
    Bad(
        "over 100 MB",
        _over_100_mb,
        "the file is larger than 100 MB",
        "split it, e.g. with write_request_chunks(max_bytes=...)",
    ),
    # -- the call itself ---------------------------------------------------------------------
    Bad(
        "wrong purpose",
        jsonl(*G),
        ": purpose 'fine-tune' is not valid for a batch input file",
        "upload it with purpose='batch-api'",
        kwargs={"purpose": "fine-tune"},
    ),
    Bad(
        "path does not exist",
        None,
        ": no such file. Nothing was sent to Together",
        "check the path",
        error=InputFileNotFoundError,
    ),
    Bad(
        "path is a directory",
        lambda path: path.mkdir(),
        ": no such file. Nothing was sent to Together",
        "check the path",
        error=InputFileNotFoundError,
    ),
]

#: Quoted in docs/reliability.md.
N_BAD_INPUTS = len(BAD_INPUTS)


@pytest.fixture
def client(emulator: Any, api_key: str) -> Iterator[TogetherClient]:
    with TogetherClient(api_key, emulator.base_url, max_retries=0) as c:
        yield c


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.id for b in BAD_INPUTS])
def test_bad_input_is_refused_by_upload_before_any_request(
    client: TogetherClient, emulator: Any, tmp_path: Path, bad: Bad
) -> None:
    """Promise: a bad batch input is refused by upload(check=True) with one clear message that
    names the file, the line and the fix, and the API sees no request at all."""
    path = tmp_path / "requests.jsonl"
    if isinstance(bad.content, bytes):
        path.write_bytes(bad.content)
    elif bad.content is not None:
        bad.content(path)
    with pytest.raises(bad.error) as caught:
        client.files.upload(path, check=True, **bad.kwargs)
    message = str(caught.value)
    assert "\n" not in message, message  # one message, one line
    assert str(path) in message, message  # names the file
    assert bad.where in message, f"{bad.where!r} not in {message!r}"
    assert bad.fix in message, f"{bad.fix!r} not in {message!r}"
    assert emulator.requests == []  # nothing reached the API: nothing to pay for
    if path.is_file():
        path.unlink()  # up to 108 MB: do not keep it in pytest's retained tmp dirs


def test_the_table_covers_every_case_of_issue_5() -> None:
    """The count quoted in docs/reliability.md, and the issue's list, case by case."""
    ids = {b.id for b in BAD_INPUTS}
    issue_5 = {
        "not JSONL: a line is not JSON",
        "not UTF-8",
        "empty file",
        "blank lines only",
        "a line that is an array",
        "missing custom_id",
        "empty custom_id",
        "duplicate custom_id",
        "custom_id over 64 characters",
        "missing body",
        "body without model",
        "mixed endpoints",
        "over 50,000 lines",
        "over 100 MB",
        "unsupported endpoint",
        "wrong purpose",
        "path does not exist",
    }
    assert issue_5 <= ids
    assert N_BAD_INPUTS == 27
