"""Building, validating and chunking batch input JSONL (dagster_together.requests)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from dagster_together import requests as rq
from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.requests import check as rq_check
from dagster_together.requests import check_request_file
from tests.helpers import MODEL, jsonl
from tests.helpers import request_line as line

GOOD = [line(f"r{i}") for i in range(1, 4)]


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
    (
        "-Infinity",
        jsonl(GOOD[0], line("r2", temperature=float("-inf"))),
        {},
        ["line 2", "-Infinity", "number or null"],
    ),
    (
        "Inf (read as a number by pyarrow)",
        jsonl(GOOD[0], GOOD[1].replace('"hi"}]', '"hi"}], "temperature": Inf')),
        {},
        ["line 2", "Inf is not valid JSON", "number or null"],
    ),
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
        monkeypatch.setattr(rq_check, "_READ_SIZE", 7)
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

    monkeypatch.setattr(rq_check._FileState, "_exact", exact)
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(*(line(f"r{i}", url="/v1/chat/completions") for i in range(1000))))
    assert check_request_file(path).n_lines == 1000
    # Words that hold a token pyarrow would read as a number, inside strings: still vectorised.
    prose = "Information about NaN and -Infinity in the café data"
    body = {"model": MODEL, "messages": [{"role": "user", "content": prose}]}
    path.write_bytes(jsonl(*(json.dumps({"custom_id": f"r{i}", "body": body}) for i in range(9))))
    assert check_request_file(path).n_lines == 9


def test_nonfinite_guard_finds_every_token_spelling() -> None:
    """pyarrow reads NaN, Inf, Infinity (and with "-") as numbers: the vectorised path must
    send any of them, after ":", "[" or ",", to the exact check."""
    for token in ("NaN", "-NaN", "Inf", "-Inf", "Infinity", "-Infinity"):
        for value in (f"{token}", f" {token}", f"[1,\t{token}]", f"[{token}]"):
            block = f'{{"custom_id": "a", "body": {{"model": "m", "t": {value}}}}}\n'.encode()
            assert rq_check._may_hold_nonfinite(block, len(block)), value
    block = b'{"custom_id": "Inf", "body": {"model": "NaN", "t": "x NaN"}}\n'
    assert not rq_check._may_hold_nonfinite(block, len(block))


# ------------------------------------------------------------------------------------------
# build_requests
# ------------------------------------------------------------------------------------------
def _reviews() -> Any:
    import pyarrow as pa

    return pa.table(
        {
            "review_id": [101, 102, 103],
            "text": ["Great kettle", "Broke in a week", "Fine, I guess"],
            "stars": [5, 1, 3],
        }
    )


TEMPLATE = rq.RequestTemplate(
    model=MODEL,
    prompt_column="text",
    system_prompt="Classify the sentiment.",
    body={"max_tokens": 20, "temperature": 0.0},
)
EXPECTED_CHAT = [
    {
        "custom_id": str(i),
        "body": {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Classify the sentiment."},
                {"role": "user", "content": text},
            ],
            "max_tokens": 20,
            "temperature": 0.0,
        },
    }
    for i, text in [(101, "Great kettle"), (102, "Broke in a week"), (103, "Fine, I guess")]
]


def _write_source(kind: str, table: Any, tmp_path: Path, rows: Any = None) -> Any:
    """The same table as each kind of source build_requests accepts."""
    import fsspec
    import pyarrow.parquet as pq

    if kind == "arrow":
        return table
    if kind == "pandas":
        return table.to_pandas()
    if kind == "parquet":
        pq.write_table(table, tmp_path / "reviews.parquet")
        return tmp_path / "reviews.parquet"
    lines = "".join(json.dumps(row) + "\n" for row in rows or table.to_pylist())
    if kind == "jsonl":
        (tmp_path / "reviews.jsonl").write_text(lines)
        return str(tmp_path / "reviews.jsonl")
    url = f"memory://build-{tmp_path.name}/reviews.jsonl"
    with fsspec.open(url, "w") as f:
        f.write(lines)
    return url


@pytest.mark.parametrize("kind", ["arrow", "pandas", "parquet", "jsonl", "memory-url"])
def test_build_from_template(tmp_path: Path, kind: str) -> None:
    source = _write_source(kind, _reviews(), tmp_path)
    built = list(rq.build_requests(source, template=TEMPLATE, id_column="review_id"))
    assert built == EXPECTED_CHAT


def test_build_completions_template() -> None:
    template = rq.RequestTemplate(
        model="m", prompt_column="text", endpoint="/v1/completions", body={"max_tokens": 5}
    )
    built = list(rq.build_requests(_reviews(), template=template, id_column="review_id"))
    assert built[1] == {
        "custom_id": "102",
        "body": {"model": "m", "prompt": "Broke in a week", "max_tokens": 5},
    }
    # endpoint= overrides the template's
    chat = list(
        rq.build_requests(
            _reviews(),
            template=rq.RequestTemplate(model="m", prompt_column="text"),
            id_column="review_id",
            endpoint="/v1/completions",
        )
    )
    assert chat[0]["body"] == {"model": "m", "prompt": "Great kettle"}


@pytest.mark.parametrize("kind", ["arrow", "pandas", "parquet", "jsonl", "memory-url"])
def test_build_from_prebuilt_columns(tmp_path: Path, kind: str) -> None:
    import pyarrow as pa

    bodies = [r["body"] for r in EXPECTED_CHAT]
    bodies[2] = dict(bodies[2], response_format={"type": "json_object"})  # only one row has it
    rows = [{"custom_id": c, "body": b, "extra": 1} for c, b in zip("abc", bodies, strict=True)]
    built = list(rq.build_requests(_write_source(kind, pa.Table.from_pylist(rows), tmp_path, rows)))
    # Struct bodies: the nulls Arrow adds for keys other rows have are dropped again.
    assert built == [{"custom_id": c, "body": b} for c, b in zip("abc", bodies, strict=True)]


def test_build_with_body_as_json_string_and_int_ids() -> None:
    import pyarrow as pa

    body = {"model": "m", "messages": [], "stop": None}
    table = pa.table({"custom_id": [1, 2], "body": [json.dumps(body), json.dumps(body)]})
    assert list(rq.build_requests(table)) == [
        {"custom_id": "1", "body": body},  # explicit null kept: the body was JSON text
        {"custom_id": "2", "body": body},
    ]


@pytest.mark.parametrize(
    ("table", "kwargs", "fragment"),
    [
        ({"x": [1]}, {}, "has no 'custom_id' and 'body' columns"),
        ({"id": [1], "text": ["t"]}, {"template": TEMPLATE}, "pass id_column="),
        ({"id": [1], "txt": ["t"]}, {"template": TEMPLATE, "id_column": "id"}, "no column 'text'"),
        (
            {"id": [1, None], "text": ["t", "u"]},
            {"template": TEMPLATE, "id_column": "id"},
            "row 2: the id column 'id' is null",
        ),
        (
            {"id": [1, 2], "text": ["t", None]},
            {"template": TEMPLATE, "id_column": "id"},
            r"row 2: the prompt column 'text' is null \(id '2'\)",
        ),
        ({"custom_id": ["a"], "body": ["{not json"]}, {}, "not valid JSON"),
    ],
)
def test_build_errors_name_the_row(table: dict[str, list[Any]], kwargs: Any, fragment: str) -> None:
    import pyarrow as pa

    with pytest.raises(InvalidRequestFileError, match=fragment):
        list(rq.build_requests(pa.table(table), **kwargs))


def test_template_rules() -> None:
    with pytest.raises(ValueError, match="may not set"):
        rq.RequestTemplate(model="m", prompt_column="p", body={"messages": []})
    with pytest.raises(ValueError, match="not supported"):
        rq.RequestTemplate(model="m", prompt_column="p", endpoint="/v1/audio/translations")
    with pytest.raises(TypeError, match="pyarrow Table"):
        list(rq.build_requests(object()))


# ------------------------------------------------------------------------------------------
# write_request_chunks
# ------------------------------------------------------------------------------------------
def _requests(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{i:05d}",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "é" * (i % 7)}]},
        }
        for i in range(start, start + n)
    ]


def _read_chunks(
    chunks: list[rq.RequestChunk], storage_options: Any = None
) -> list[dict[str, Any]]:
    import fsspec

    rows = []
    for chunk in chunks:
        with fsspec.open(chunk.path, "rb", **(storage_options or {})) as f:
            data = f.read()
        assert len(data) == chunk.n_bytes
        assert hashlib.sha256(data).hexdigest() == chunk.sha256
        lines = [json.loads(x) for x in data.decode().splitlines()]
        assert len(lines) == chunk.n_requests
        assert (lines[0]["custom_id"], lines[-1]["custom_id"]) == (
            chunk.first_custom_id,
            chunk.last_custom_id,
        )
        rows.extend(lines)
    return rows


def test_chunks_by_count(tmp_path: Path) -> None:
    reqs = _requests(25)
    chunks = rq.write_request_chunks(reqs, tmp_path / "out", max_requests=10)
    assert [c.n_requests for c in chunks] == [10, 10, 5]
    assert [Path(c.path).name for c in chunks] == [
        "requests-00000.jsonl",
        "requests-00001.jsonl",
        "requests-00002.jsonl",
    ]
    assert _read_chunks(chunks) == reqs
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        Path(c.path).name for c in chunks
    ]
    for chunk in chunks:  # every chunk is itself a valid batch input
        assert check_request_file(chunk.path).sha256 == chunk.sha256


def test_chunks_by_bytes(tmp_path: Path) -> None:
    reqs = _requests(40)
    sizes = [
        len((json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
        for r in reqs
    ]
    limit = max(sizes) * 3 + 1
    chunks = rq.write_request_chunks(reqs, tmp_path, max_bytes=limit, prefix="batch")
    assert all(c.n_bytes <= limit for c in chunks)
    assert len(chunks) > 40 // 4
    assert sum(c.n_bytes for c in chunks) == sum(sizes)
    # Greedy: each chunk is full, the next line would not have fitted.
    offsets = 0
    for chunk in chunks[:-1]:
        offsets += chunk.n_requests
        assert chunk.n_bytes + sizes[offsets] > limit
    assert _read_chunks(chunks) == reqs


def test_ids_unique_across_chunks_and_nothing_written_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    reqs = _requests(25) + [_requests(1, start=3)[0]]  # request #26 repeats req-00003 (chunk 0)
    with pytest.raises(
        InvalidRequestFileError, match=r"request #26: custom_id 'req-00003' repeats request #4"
    ):
        rq.write_request_chunks(reqs, dest, max_requests=10)
    assert list(dest.iterdir()) == []  # no chunk, no staging directory


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            {"review_id": ["r1", "r2", "r1"], "text": ["a", "b", "c"]},
            "table: review_id 'r1' appears twice: rows 1 and 3; every row needs its own review_id",
        ),
        (
            {"review_id": ["r1", "x" * 65], "text": ["a", "b"]},
            "table, row 2: review_id 'xxx",
        ),
        (
            {"review_id": ["r1", ""], "text": ["a", "b"]},
            "table, row 2: the id column 'review_id' is empty",
        ),
    ],
    ids=["duplicate", "too-long", "empty"],
)
def test_errors_about_ids_built_from_a_table_name_the_column_and_row(
    tmp_path: Path, rows: dict[str, list[Any]], message: str
) -> None:
    """The user thinks of their id column and their rows (1-based), not of custom_id and
    request numbers."""
    import pyarrow as pa

    built = rq.build_requests(pa.table(rows), template=TEMPLATE, id_column="review_id")
    with pytest.raises(InvalidRequestFileError) as caught:
        rq.write_request_chunks(built, tmp_path / "out", max_requests=2)
    assert str(caught.value).startswith(message)
    assert "custom_id 'r" not in str(caught.value) and "request #" not in str(caught.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_errors_built_from_a_jsonl_table_name_its_lines(tmp_path: Path) -> None:
    source = tmp_path / "reviews.jsonl"
    rows = [{"review_id": "r1", "text": "a"}, {"review_id": "r2", "text": "b"}]
    source.write_text("\n".join(json.dumps(r) for r in [*rows, {}, rows[0]]).replace("{}", ""))
    built = rq.build_requests(source, template=TEMPLATE, id_column="review_id")
    with pytest.raises(
        InvalidRequestFileError, match=r"review_id 'r1' appears twice: lines 1 and 4"
    ):
        rq.write_request_chunks(built, tmp_path / "out")


def test_prebuilt_table_rows_keep_the_custom_id_wording(tmp_path: Path) -> None:
    import pyarrow as pa

    body = json.dumps({"model": MODEL})
    table = pa.table({"custom_id": ["a", "b", "a"], "body": [body] * 3})
    with pytest.raises(InvalidRequestFileError, match=r"custom_id 'a' appears twice: rows 1 and 3"):
        rq.write_request_chunks(rq.build_requests(table), tmp_path)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"custom_id": "x" * 65, "body": {"model": "m"}}, "65 characters"),
        ({"custom_id": "ok", "body": {"messages": []}}, "no model"),
        ({"custom_id": "ok", "body": {"model": "m", "when": object()}}, "not JSON-serialisable"),
        ({"custom_id": "ok", "body": {"model": "m", "t": float("nan")}}, "not JSON-serialisable"),
        ({"custom_id": "ok", "body": {"model": "m"}, "url": "/v1/completions"}, "one endpoint"),
        ({"body": {"model": "m"}}, "no custom_id"),
        ("not a mapping", "not a mapping"),
    ],
)
def test_write_refuses_bad_request(tmp_path: Path, bad: Any, fragment: str) -> None:
    reqs = [*_requests(5), bad]
    with pytest.raises(InvalidRequestFileError, match=fragment) as caught:
        rq.write_request_chunks(reqs, tmp_path, max_requests=2, endpoint="/v1/chat/completions")
    assert "request #6" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_write_checks_limits_and_single_request_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="API's limit"):
        rq.write_request_chunks([], tmp_path, max_requests=50_001)
    with pytest.raises(InvalidRequestFileError, match="over max_bytes=50"):
        rq.write_request_chunks(_requests(1), tmp_path, max_bytes=50)
    assert rq.write_request_chunks([], tmp_path) == []


def test_rewrite_removes_stale_chunks(tmp_path: Path) -> None:
    rq.write_request_chunks(_requests(30), tmp_path, max_requests=10)
    (tmp_path / "notes.txt").write_text("keep me")
    chunks = rq.write_request_chunks(_requests(12), tmp_path, max_requests=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "requests-00000.jsonl",
        "requests-00001.jsonl",
    ]
    assert [c.n_requests for c in chunks] == [10, 2]


def test_write_to_object_stores(tmp_path: Path, s3_bucket: str, s3_server: Any) -> None:
    import fsspec

    reqs = _requests(15)
    mem = rq.write_request_chunks(reqs, "memory://chunks/run-1", max_requests=7)
    assert [c.path for c in mem] == [
        f"memory://chunks/run-1/requests-0000{i}.jsonl" for i in range(3)
    ]
    assert _read_chunks(mem) == reqs

    opts = s3_server.storage_options
    dest = f"{s3_bucket}/requests/run-1"
    with pytest.raises(InvalidRequestFileError):
        rq.write_request_chunks([*reqs, reqs[0]], dest, max_requests=7, storage_options=opts)
    assert fsspec.filesystem("s3", **opts).find(s3_bucket) == []  # nothing uploaded
    chunks = rq.write_request_chunks(reqs, dest, max_requests=7, storage_options=opts)
    assert _read_chunks(chunks, opts) == reqs
    assert check_request_file(chunks[0].path, storage_options=opts).n_lines == 7


def test_build_then_write_end_to_end(tmp_path: Path) -> None:
    reqs = rq.build_requests(_reviews().to_pandas(), template=TEMPLATE, id_column="review_id")
    chunks = rq.write_request_chunks(reqs, tmp_path, endpoint="/v1/chat/completions")
    assert len(chunks) == 1 and chunks[0].models == (MODEL,)
    assert _read_chunks(chunks) == EXPECTED_CHAT


def test_input_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table = rq.input_columns_table(_reviews().to_pandas(), id_column="review_id")
    assert table.column_names == ["custom_id", "review_id", "text", "stars"]
    assert table.column("custom_id").to_pylist() == ["101", "102", "103"]
    path = rq.write_input_columns(
        _write_source("jsonl", _reviews(), tmp_path),
        tmp_path / "cols" / "inputs.parquet",
        id_column="review_id",
        columns=["stars"],
    )
    assert pq.read_table(path).to_pylist()[0] == {"custom_id": "101", "stars": 5}
    assert sorted(p.name for p in (tmp_path / "cols").iterdir()) == ["inputs.parquet"]
