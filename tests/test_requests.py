"""Building, validating and chunking batch input JSONL (dagster_together.requests)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from dagster_together import requests as rq
from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.requests import check_request_file

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def line(custom_id: Any = "r1", model: Any = MODEL, **extra: Any) -> str:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    return json.dumps({"custom_id": custom_id, "body": body, **extra})


GOOD = [line(f"r{i}") for i in range(1, 4)]


def jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


# (case id, file bytes, check_request_file kwargs, fragments the one message must contain)
BAD_FILES: list[tuple[str, bytes, dict[str, Any], list[str]]] = [
    ("empty", b"", {}, ["is empty"]),
    ("blank lines only", b"\n  \n\r\n", {}, ["only blank lines"]),
    ("blank line between", jsonl(GOOD[0], "", GOOD[1]), {}, ["line 2", "blank", "delete"]),
    ("blank line at the start", jsonl("", GOOD[0]), {}, ["line 1", "blank"]),
    ("blank line at the end", jsonl(*GOOD) + b"\n", {}, ["line 4", "blank"]),
    ("whitespace-only line", jsonl(GOOD[0], "   ", GOOD[1]), {}, ["line 2", "blank"]),
    (
        "not UTF-8",
        jsonl(GOOD[0]) + b'{"custom_id": "r2", "body": {"model": "caf\xe9"}}\n',
        {},
        ["line 2", "UTF-8", "0xe9"],
    ),
    ("UTF-8 with BOM", b"\xef\xbb\xbf" + jsonl(*GOOD), {}, ["line 1", "byte order mark"]),
    (
        "not JSON",
        jsonl(GOOD[0], "custom_id=r2 body=...", GOOD[2]),
        {},
        ["line 2", "not valid JSON"],
    ),
    ("truncated line", jsonl(GOOD[0], GOOD[1][:-9]), {}, ["line 2", "not valid JSON"]),
    (
        "JSON array",
        json.dumps([json.loads(g) for g in GOOD]).encode(),
        {},
        ["line 1", "JSON array"],
    ),
    (
        "pretty-printed JSON",
        json.dumps(json.loads(GOOD[0]), indent=2).encode(),
        {},
        ["line 1", "pretty-printed"],
    ),
    ("two objects on a line", jsonl(GOOD[0] + " " + GOOD[1]), {}, ["line 1", "not valid JSON"]),
    ("NaN", jsonl(GOOD[0], line("r2", temperature=float("nan"))), {}, ["line 2", "NaN"]),
    ("array line", jsonl(GOOD[0], "[1, 2]"), {}, ["line 2", "JSON array, not an object"]),
    ("string line", jsonl(GOOD[0], '"r2"'), {}, ["line 2", "JSON string, not an object"]),
    ("null line", jsonl(GOOD[0], "null"), {}, ["line 2", "JSON null, not an object"]),
    ("null line alone", b"null\n", {}, ["line 1", "JSON null, not an object"]),
    ("number line", jsonl("3", GOOD[0]), {}, ["line 1", "JSON number, not an object"]),
    (
        "missing custom_id",
        jsonl(GOOD[0], json.dumps({"body": {"model": MODEL}})),
        {},
        ["line 2", "no custom_id"],
    ),
    ("null custom_id", jsonl(GOOD[0], line(None)), {}, ["line 2", "no custom_id"]),
    ("empty custom_id", jsonl(GOOD[0], line("")), {}, ["line 2", "custom_id is empty"]),
    ("numeric custom_id", jsonl(GOOD[0], line(17)), {}, ["line 2", "not a string", '"17"']),
    ("object custom_id", jsonl(line({"a": 1})), {}, ["line 1", "JSON object", "not a string"]),
    (
        "duplicate custom_id",
        jsonl(GOOD[0], GOOD[1], GOOD[2], line("r2")),
        {},
        ["line 4", "'r2'", "repeats", "line 2", "unique"],
    ),
    (
        "custom_id of 65 chars",
        jsonl(GOOD[0], line("x" * 65)),
        {},
        ["line 2", "65 characters", "64"],
    ),
    (
        "missing body",
        jsonl(GOOD[0], json.dumps({"custom_id": "r2"})),
        {},
        ["line 2", "'r2'", "no body"],
    ),
    (
        "body as a JSON string",
        jsonl(json.dumps({"custom_id": "r1", "body": json.dumps({"model": MODEL})})),
        {},
        ["line 1", "JSON string, not an object"],
    ),
    ("body without model", jsonl(GOOD[0], line("r2", model=None)), {}, ["line 2", "no model"]),
    ("empty model", jsonl(line("r1", model="")), {}, ["line 1", "model"]),
    ("numeric model", jsonl(line("r1", model=7)), {}, ["line 1", "model 7"]),
    (
        "mixed models",
        jsonl(GOOD[0], GOOD[1], line("r3", model="other/model")),
        {"require_single_model": True},
        ["line 3", "'other/model'", "line 1", "one model per batch"],
    ),
    ("unsupported endpoint", jsonl(*GOOD), {"endpoint": "/v1/embeddings"}, ["not supported"]),
    (
        "unsupported url on a line",
        jsonl(GOOD[0], line("r2", url="/v1/embeddings")),
        {},
        ["line 2", "'/v1/embeddings'"],
    ),
    (
        "mixed urls",
        jsonl(line("r1", url="/v1/chat/completions"), line("r2", url="/v1/completions")),
        {},
        ["line 2", "line 1", "one endpoint per batch"],
    ),
    (
        "url not the batch endpoint",
        jsonl(line("r1", url="/v1/completions")),
        {"endpoint": "/v1/chat/completions"},
        ["line 1", "one endpoint per batch"],
    ),
    ("over max_lines", jsonl(*GOOD), {"max_lines": 2}, ["line 3", "more than 2 lines"]),
    (
        "over max_bytes",
        jsonl(*GOOD),
        {"max_bytes": len(jsonl(*GOOD)) - 5},
        ["line 3", "larger than", "limit"],
    ),
    ("wrong purpose", jsonl(*GOOD), {"purpose": "fine-tune"}, ["purpose 'fine-tune'", "batch-api"]),
]


@pytest.fixture(params=["big-reads", "tiny-reads"])
def read_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each case with the normal read size and with reads of a few bytes (block edges)."""
    if request.param == "tiny-reads":
        monkeypatch.setattr(rq, "_READ_SIZE", 7)
    return str(request.param)


@pytest.mark.parametrize(
    ("content", "kwargs", "fragments"),
    [pytest.param(c, k, f, id=i) for i, c, k, f in BAD_FILES],
)
def test_bad_file_gets_one_clear_message(
    tmp_path: Path, read_size: str, content: bytes, kwargs: dict[str, Any], fragments: list[str]
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(content)
    with pytest.raises(InvalidRequestFileError) as caught:
        check_request_file(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestFileError, match="does not exist; check the path"):
        check_request_file(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidRequestFileError, match="is a directory"):
        check_request_file(tmp_path)
    with pytest.raises(InvalidRequestFileError, match="does not exist; check the path and storage"):
        check_request_file("memory://nowhere/nope.jsonl")


def test_error_far_into_a_big_file_names_its_line(tmp_path: Path) -> None:
    lines = [line(f"r{i}") for i in range(1, 60_001)]
    lines[45_000] = line("r7")  # line 45,001 repeats line 7
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InvalidRequestFileError, match=r"line 45001: custom_id 'r7' repeats .*line 7;"
    ):
        check_request_file(path, max_lines=100_000)
    lines[45_000] = line("r45001")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidRequestFileError, match="line 50001: the file has more than 50,000"):
        check_request_file(path)
    path.write_text("\n".join(lines[:50_000]) + "\n")
    assert check_request_file(path).n_lines == 50_000


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(jsonl(*GOOD), id="plain"),
        pytest.param(jsonl(*GOOD)[:-1], id="no final newline"),
        pytest.param(jsonl(*GOOD).replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(jsonl(line("r1"), line("é-ü-🙂", url="/v1/chat/completions")), id="unicode"),
        pytest.param(jsonl(line("x" * 64)), id="64-char id"),
    ],
)
def test_good_file(tmp_path: Path, read_size: str, content: bytes) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(content)
    stats = check_request_file(path, endpoint="/v1/chat/completions", require_single_model=True)
    assert stats.path == str(path)
    assert stats.n_lines == content.rstrip(b"\r\n").count(b"\n") + 1
    assert stats.n_bytes == len(content)
    assert stats.sha256 == hashlib.sha256(content).hexdigest()
    assert stats.models == (MODEL,)


def test_models_in_order_of_first_use(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(line("a", model="m2"), line("b", model="m1"), line("c", model="m2")))
    assert check_request_file(path).models == ("m2", "m1")


def test_remote_locations(s3_bucket: str, s3_server: Any) -> None:
    import fsspec

    content = jsonl(*GOOD)
    with fsspec.open("memory://reqs/in.jsonl", "wb") as f:
        f.write(content)
    assert check_request_file("memory://reqs/in.jsonl").n_lines == 3

    url = f"{s3_bucket}/in/requests.jsonl"
    with fsspec.open(url, "wb", **s3_server.storage_options) as f:
        f.write(content + b"\n")
    with pytest.raises(InvalidRequestFileError, match=r"requests.jsonl, line 4: is blank"):
        check_request_file(url, storage_options=s3_server.storage_options)


def test_valid_blocks_take_the_vectorised_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Speed guard: good lines are never checked one by one with json (about 3x slower)."""

    def exact(self: Any, block: bytes) -> None:
        raise AssertionError("line-by-line path used for a valid block")

    monkeypatch.setattr(rq._FileState, "_exact", exact)
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(*(line(f"r{i}", url="/v1/chat/completions") for i in range(1000))))
    assert check_request_file(path).n_lines == 1000
