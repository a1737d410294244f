"""join_results: every input exactly once, with the right status, whatever the output files hold."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_together import results as rs
from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.options import RawResponses
from dagster_together.results import (
    JoinSummary,
    MalformedResultError,
    assemble,
    blocks,
    buckets,
    join_results,
)
from dagster_together.results.outputs import _NO_RESPONSE, RAW_RESPONSES

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


# ------------------------------------------------------------------------------------------
# Line builders in the shapes of the API contract
# ------------------------------------------------------------------------------------------
def request(custom_id: str, prompt: str = "hi", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "body": {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": prompt},
            ],
            **body,
        },
    }


def output(
    custom_id: str,
    content: str | None = "ok",
    *,
    status_code: int = 200,
    tokens: tuple[int, int] = (10, 5),
    model: str = MODEL,
    message_extra: dict[str, Any] | None = None,
    body_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "id": f"cmpl-{custom_id}",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, **(message_extra or {})},
            }
        ],
        "usage": {
            "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1],
            "total_tokens": sum(tokens),
        },
        **(body_extra or {}),
    }
    return {
        "id": f"br_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": "req_1", "body": body},
        **extra,
    }


def error(custom_id: str, message: str = "boom", code: str = "server_error") -> dict[str, Any]:
    return {"custom_id": custom_id, "error": {"message": message, "code": code}}


def write_jsonl(path: Path, rows: list[Any], *, raw_lines: dict[int, str] | None = None) -> str:
    """Write rows as JSONL; ``raw_lines`` inserts literal lines at 0-based line positions."""
    lines = [json.dumps(r) for r in rows]
    for index, text in sorted((raw_lines or {}).items()):
        lines.insert(index, text)
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def read(summary: JoinSummary, **kwargs: Any) -> list[dict[str, Any]]:
    import fsspec

    with fsspec.open(summary.destination, "rb", **kwargs) as f:
        return pq.read_table(f).to_pylist()


@pytest.fixture
def inputs(tmp_path: Path) -> str:
    return write_jsonl(
        tmp_path / "input.jsonl", [request(f"r{i}", f"prompt {i}") for i in range(8)]
    )


# ------------------------------------------------------------------------------------------
# The core promise
# ------------------------------------------------------------------------------------------
def test_out_of_order_failures_and_gaps(tmp_path: Path, inputs: str) -> None:
    outputs = write_jsonl(
        tmp_path / "output.jsonl",
        [output("r5", "five"), output("r0", "zero"), output("r3", "three"), output("r1", "one")],
    )
    errors = write_jsonl(tmp_path / "errors.jsonl", [error("r6", "overloaded", "503")])
    summary = join_results(
        inputs=inputs,
        outputs=outputs,
        errors=errors,
        destination=tmp_path / "out.parquet",
        raw_responses="all",
    )
    rows = read(summary)
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(8)]  # input order
    assert [r["status"] for r in rows] == [
        "succeeded",
        "succeeded",
        "missing",
        "succeeded",
        "missing",
        "succeeded",
        "failed",
        "missing",
    ]
    assert rows[0]["content"] == "zero" and rows[5]["content"] == "five"
    assert rows[0]["prompt"] == "prompt 0" and rows[0]["request_model"] == MODEL
    assert "request" not in rows[0]  # the raw request line stays in the input file
    assert rows[0]["finish_reason"] == "stop" and rows[0]["model"] == MODEL
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"], rows[0]["total_tokens"]) == (
        10,
        5,
        15,
    )
    assert json.loads(rows[0]["response"]) == output("r0", "zero")  # the raw line, nothing lost
    assert (rows[6]["error"], rows[6]["error_code"]) == ("overloaded", "503")
    assert json.loads(rows[6]["response"]) == error("r6", "overloaded", "503")
    assert rows[2]["response"] is None and rows[2]["error"] is None

    assert summary.n_inputs == summary.n_rows == 8
    assert summary.counts == {
        "succeeded": 4,
        "failed": 1,
        "missing": 3,
        "expired": 0,
        "cancelled": 0,
    }
    assert summary.complete and summary.error_rate == pytest.approx(0.5)
    assert summary.tokens_by_model == {
        MODEL: {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}
    }
    assert [c for c, _ in summary.columns][:3] == [
        "custom_id",
        "request_model",
        "prompt",
    ]
    assert [c for c, _ in summary.columns][3:] == list(rs.RESULT_COLUMNS)


@pytest.mark.parametrize(
    ("batch_status", "expected"),
    [
        ("EXPIRED", "expired"),
        ("CANCELLED", "cancelled"),
        ("COMPLETED", "missing"),
        (None, "missing"),
        ("FAILED", "missing"),
        ("expired", "expired"),
    ],
)
def test_batch_status_decides_what_never_came_back(
    tmp_path: Path, inputs: str, batch_status: str | None, expected: str
) -> None:
    outputs = write_jsonl(tmp_path / "output.jsonl", [output("r2")])
    summary = join_results(
        inputs=inputs,
        outputs=outputs,
        destination=tmp_path / "out.parquet",
        batch_status=batch_status,
    )
    statuses = [r["status"] for r in read(summary)]
    assert statuses == [expected, expected, "succeeded", *[expected] * 5]
    assert summary.counts[expected] == 7 and summary.batch_status == batch_status


def test_raw_lines_are_kept_for_the_rows_that_did_not_succeed(tmp_path: Path, inputs: str) -> None:
    lines = [output("r0", "zero"), {"custom_id": "r1", "response": {"status_code": 429}}]
    outputs = write_jsonl(tmp_path / "output.jsonl", lines)
    errors = write_jsonl(tmp_path / "errors.jsonl", [error("r2", "overloaded", "503")])
    by_mode = {}
    for mode in ("failed", "all", "none"):
        summary = join_results(
            inputs=inputs,
            outputs=outputs,
            errors=errors,
            destination=tmp_path / f"{mode}.parquet",
            raw_responses=mode,
        )
        by_mode[mode] = [r["response"] for r in read(summary)][:3]
    raw = [json.dumps(line) for line in [*lines, error("r2", "overloaded", "503")]]
    assert [json.loads(r) if r else None for r in by_mode["failed"]] == [
        None,
        json.loads(raw[1]),
        json.loads(raw[2]),
    ]
    assert [json.loads(r) for r in by_mode["all"]] == [json.loads(r) for r in raw]
    assert by_mode["none"] == [None, None, None]
    # The Dagster layer's option names the same values as the join.
    assert get_args(RawResponses) == RAW_RESPONSES
    with pytest.raises(ValueError, match="raw_responses must be one of 'failed', 'all', 'none'"):
        join_results(
            inputs=inputs, outputs=outputs, destination=tmp_path / "x", raw_responses="some"
        )


def test_no_output_file_at_all(tmp_path: Path, inputs: str) -> None:
    errors = write_jsonl(tmp_path / "errors.jsonl", [error(f"r{i}") for i in range(8)])
    for outputs in (None, []):
        summary = join_results(
            inputs=inputs, outputs=outputs, errors=[errors], destination=tmp_path / "out.parquet"
        )
        assert summary.counts["failed"] == 8 and summary.n_rows == 8
    summary = join_results(inputs=inputs, outputs=None, destination=tmp_path / "none.parquet")
    assert [r["status"] for r in read(summary)] == ["missing"] * 8


def test_unknown_and_duplicate_ids_never_add_rows(tmp_path: Path, inputs: str) -> None:
    outputs = write_jsonl(
        tmp_path / "output.jsonl",
        [
            output("r1", "first"),
            output("stranger", "?"),
            output("r1", "second"),
            output("r2", "two"),
            output("ghost", "?"),
        ],
    )
    errors = write_jsonl(tmp_path / "errors.jsonl", [error("r2"), error("r3")])
    summary = join_results(
        inputs=inputs, outputs=outputs, errors=errors, destination=tmp_path / "out.parquet"
    )
    rows = read(summary)
    assert len(rows) == 8 and [r["custom_id"] for r in rows] == [f"r{i}" for i in range(8)]
    assert rows[1]["content"] == "first"  # first occurrence wins
    assert rows[2]["status"] == "succeeded"  # outputs are read before errors
    assert rows[3]["status"] == "failed"
    assert summary.unknown_ids == 2 and sorted(summary.unknown_id_examples) == ["ghost", "stranger"]
    assert summary.duplicate_ids == 2 and sorted(summary.duplicate_id_examples) == ["r1", "r2"]
    assert not summary.complete


@pytest.mark.parametrize("ascending", [True, False])
def test_ids_in_any_order_are_found(tmp_path: Path, ascending: bool) -> None:
    # Ascending ids are their own index; others are sorted beside a permutation.
    ids = [f"id-{i:03d}" for i in range(300)]
    if not ascending:
        random.Random(5).shuffle(ids)
    inputs = write_jsonl(tmp_path / "in.jsonl", [request(i) for i in ids])
    answered = ids[::3] + ["id-999", "zzz", "a"]
    outputs = write_jsonl(tmp_path / "out.jsonl", [output(i, f"answer {i}") for i in answered])
    summary = join_results(inputs=inputs, outputs=outputs, destination=tmp_path / "out.parquet")
    rows = read(summary)
    assert [r["custom_id"] for r in rows] == ids
    assert all(
        (r["content"] == f"answer {r['custom_id']}") == (r["custom_id"] in answered[:100])
        for r in rows
    )
    assert summary.unknown_ids == 3
    twice = write_jsonl(tmp_path / "twice.jsonl", [request(i) for i in [*ids, ids[7]]])
    with pytest.raises(InvalidRequestFileError, match="appears more than once"):
        join_results(inputs=twice, outputs=outputs, destination=tmp_path / "twice.parquet")


# ------------------------------------------------------------------------------------------
# Shapes the output lines take
# ------------------------------------------------------------------------------------------
def test_odd_but_valid_lines(tmp_path: Path) -> None:
    ids = ["tool", "extra", "late", "http", "bare", "text", "parts", "strcode", "nobody"]
    inputs = write_jsonl(tmp_path / "in.jsonl", [request(i) for i in ids])
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    lines = [
        # null content with tool calls
        output("tool", None, message_extra={"tool_calls": [tool_call]}, body_extra={"x": 1}),
        # unknown extra fields everywhere
        output(
            "extra", "e", surprise={"a": [1, {"b": None}]}, body_extra={"system_fingerprint": 3}
        ),
        # a field seen only in a later line, with a nested shape
        output("late", "l", body_extra={"usage_details": {"cached": [1, 2]}, "logprobs": {"x": 1}}),
        # a non-200 status_code inside an output line
        {
            "custom_id": "http",
            "response": {
                "status_code": 429,
                "body": {"error": {"message": "slow down", "type": "rate_limit"}},
            },
        },
        # no response and no error
        {"custom_id": "bare"},
        # completions shape
        {
            "custom_id": "text",
            "response": {
                "status_code": 200,
                "body": {
                    "model": "m2",
                    "choices": [{"text": "completed", "finish_reason": "length"}],
                },
            },
        },
        # content as a list of parts, and a string error code elsewhere: read line by line
        output("parts", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        {"custom_id": "strcode", "response": {"status_code": "500", "body": "upstream died"}},
        {"custom_id": "nobody", "response": {"status_code": 200, "body": None}},
    ]
    outputs = write_jsonl(tmp_path / "out.jsonl", lines)
    summary = join_results(
        inputs=inputs, outputs=outputs, destination=tmp_path / "r.parquet", raw_responses="all"
    )
    rows = {r["custom_id"]: r for r in read(summary)}
    assert (rows["tool"]["status"], rows["tool"]["content"]) == ("succeeded", None)
    assert json.loads(rows["tool"]["response"])["response"]["body"]["choices"][0]["message"][
        "tool_calls"
    ] == [tool_call]
    assert rows["extra"]["content"] == "e" and json.loads(rows["extra"]["response"])["surprise"]
    assert rows["late"]["content"] == "l"
    assert (rows["http"]["status"], rows["http"]["error"], rows["http"]["error_code"]) == (
        "failed",
        "slow down",
        "rate_limit",
    )
    assert (rows["bare"]["status"], rows["bare"]["error"]) == ("failed", _NO_RESPONSE)
    assert (rows["text"]["content"], rows["text"]["finish_reason"], rows["text"]["model"]) == (
        "completed",
        "length",
        "m2",
    )
    assert rows["parts"]["content"] == "a\nb" and rows["parts"]["status"] == "succeeded"
    assert (rows["strcode"]["status"], rows["strcode"]["error"], rows["strcode"]["error_code"]) == (
        "failed",
        "HTTP 500",
        "500",
    )
    assert rows["nobody"]["status"] == "succeeded" and rows["nobody"]["content"] is None
    assert summary.n_malformed_lines == 0 and summary.counts["succeeded"] == 6


def test_malformed_lines_are_reported_with_their_line_numbers(tmp_path: Path, inputs: str) -> None:
    good = [output(f"r{i}") for i in range(6)]
    outputs = tmp_path / "output.jsonl"
    write_jsonl(
        outputs,
        good,
        raw_lines={1: "this is not json", 3: "[1, 2]", 4: '{"no_id": true}', 6: "", 7: "null"},
    )
    # A truncated last line, without its newline.
    with outputs.open("a") as f:
        f.write(json.dumps(output("r7"))[:40])
    summary = join_results(inputs=inputs, outputs=str(outputs), destination=tmp_path / "o.parquet")
    where = [(line, reason.split(" (")[0]) for _, line, reason in summary.malformed_lines]
    assert where == [
        (2, "is not valid JSON"),
        (4, "is a JSON array, not an object"),
        (5, "has no custom_id"),
        (8, "is a JSON null, not an object"),
        (12, "is not valid JSON"),
    ]
    assert all(loc == str(outputs) for loc, _, _ in summary.malformed_lines)
    assert "the file looks truncated" in summary.malformed_lines[-1][2]
    assert summary.n_malformed_lines == 5 and not summary.complete
    assert [r["status"] for r in read(summary)] == ["succeeded"] * 6 + ["missing"] * 2

    with pytest.raises(MalformedResultError, match=r"output.jsonl, line 2: is not valid JSON"):
        join_results(
            inputs=inputs, outputs=str(outputs), destination=tmp_path / "s.parquet", strict=True
        )
    assert not (tmp_path / "s.parquet").exists()


def test_null_and_empty_objects_inside_a_large_block_are_worded_like_alone(
    tmp_path: Path,
) -> None:
    ids = [f"q{i}" for i in range(100)]
    inputs = write_jsonl(tmp_path / "in.jsonl", [request(i) for i in ids])
    lines = [json.dumps(output(i)) for i in ids]
    lines[40:40] = ["null", "{}", " " + json.dumps(output("q0", "again"))]
    (tmp_path / "out.jsonl").write_text("".join(line + "\n" for line in lines))
    summary = join_results(
        inputs=inputs, outputs=str(tmp_path / "out.jsonl"), destination=tmp_path / "o.parquet"
    )
    where = [(line, reason) for _, line, reason in summary.malformed_lines]
    assert where == [(41, "is a JSON null, not an object"), (42, "has no custom_id")]
    assert summary.duplicate_ids == 1  # the indented line is a result, read after the first
    assert summary.counts["succeeded"] == 100


def test_crlf_blank_lines_and_non_utf8(tmp_path: Path, inputs: str) -> None:
    body = "".join(json.dumps(output(f"r{i}")) + "\r\n" for i in range(3))
    data = body.encode() + b"\r\n" + b'{"custom_id": "r4", "x": "\xff"}\n'
    (tmp_path / "out.jsonl").write_bytes(data)
    summary = join_results(
        inputs=inputs,
        outputs=str(tmp_path / "out.jsonl"),
        destination=tmp_path / "o.parquet",
        raw_responses="all",
    )
    rows = read(summary)
    assert [r["status"] for r in rows[:3]] == ["succeeded"] * 3
    assert not rows[0]["response"].endswith(("\r", "\n"))
    assert summary.malformed_lines == ((str(tmp_path / "out.jsonl"), 5, "is not UTF-8 (byte 27)"),)


def test_multiple_output_files(tmp_path: Path, inputs: str) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [output("r0", "a0"), output("r1", "a1")])
    second = write_jsonl(tmp_path / "b.jsonl", [output("r1", "b1"), output("r7", "b7")])
    summary = join_results(
        inputs=inputs, outputs=[first, Path(second)], destination=tmp_path / "o.parquet"
    )
    rows = read(summary)
    assert [r["content"] for r in rows] == ["a0", "a1", None, None, None, None, None, "b7"]
    assert summary.duplicate_ids == 1


# ------------------------------------------------------------------------------------------
# Inputs in other shapes
# ------------------------------------------------------------------------------------------
def test_inputs_as_parquet_with_user_columns(tmp_path: Path) -> None:
    table = pa.table(
        {
            "custom_id": ["b", "a", "c"],
            "review": ["meh", "great", "awful"],
            "stars": [3, 5, 1],
            "status": ["new", "new", "old"],  # clashes with a result column
        }
    )
    pq.write_table(table, tmp_path / "inputs.parquet")
    outputs = write_jsonl(tmp_path / "o.jsonl", [output("a", "pos"), output("c", "neg")])
    for source in (tmp_path / "inputs.parquet", table, table.to_pandas()):
        summary = join_results(inputs=source, outputs=outputs, destination=tmp_path / "r.parquet")
        rows = read(summary)
        assert [(r["custom_id"], r["review"], r["stars"], r["input_status"]) for r in rows] == [
            ("b", "meh", 3, "new"),
            ("a", "great", 5, "new"),
            ("c", "awful", 1, "old"),
        ]
        assert [(r["status"], r["content"]) for r in rows] == [
            ("missing", None),
            ("succeeded", "pos"),
            ("succeeded", "neg"),
        ]


def test_input_columns_added_to_request_inputs(tmp_path: Path, inputs: str) -> None:
    from dagster_together.requests import write_input_columns

    users = pa.table({"row": list(range(20)), "label": [f"L{i}" for i in range(20)]})
    users = users.append_column("key", pa.array([f"r{i}" for i in range(20)]))
    cols = write_input_columns(users, tmp_path / "cols.parquet", id_column="key", columns=["label"])
    outputs = write_jsonl(tmp_path / "o.jsonl", [output("r4")])
    summary = join_results(
        inputs=inputs, outputs=outputs, input_columns=cols, destination=tmp_path / "r.parquet"
    )
    rows = read(summary)
    assert [r["label"] for r in rows] == [f"L{i}" for i in range(8)]  # only this batch's ids
    assert [c for c, _ in summary.columns][:4] == [
        "custom_id",
        "request_model",
        "prompt",
        "label",
    ]


def test_bad_inputs_raise_and_write_nothing(tmp_path: Path) -> None:
    dup = write_jsonl(tmp_path / "dup.jsonl", [request("a"), request("b"), request("a")])
    with pytest.raises(InvalidRequestFileError, match="'a' appears more than once"):
        join_results(inputs=dup, outputs=None, destination=tmp_path / "x.parquet")
    junk = tmp_path / "junk.jsonl"
    junk.write_text(json.dumps(request("a")) + "\nnot json\n")
    with pytest.raises(InvalidRequestFileError, match="junk.jsonl, line 2"):
        join_results(inputs=str(junk), outputs=None, destination=tmp_path / "x.parquet")
    with pytest.raises(InvalidRequestFileError, match="has no 'custom_id' column"):
        join_results(inputs=pa.table({"id": [1]}), outputs=None, destination=tmp_path / "x.parquet")
    with pytest.raises(InvalidRequestFileError, match="does not exist"):
        join_results(
            inputs=tmp_path / "nope.jsonl", outputs=None, destination=tmp_path / "x.parquet"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.jsonl", "junk.jsonl"]


# ------------------------------------------------------------------------------------------
# Destinations
# ------------------------------------------------------------------------------------------
def test_destinations_memory_and_s3(
    tmp_path: Path, inputs: str, s3_bucket: str, s3_server: Any
) -> None:
    import fsspec

    outputs = write_jsonl(tmp_path / "o.jsonl", [output("r3", "x")])
    mem = join_results(
        inputs=inputs, outputs=outputs, destination="memory://results/b1/out.parquet"
    )
    assert [r["status"] for r in read(mem)].count("succeeded") == 1

    opts = s3_server.storage_options
    fs = fsspec.filesystem("s3", **opts)
    fs.put(inputs, f"{s3_bucket}/in/input.jsonl")
    fs.put(outputs, f"{s3_bucket}/b1/output.jsonl")
    summary = join_results(
        inputs=f"{s3_bucket}/in/input.jsonl",
        outputs=f"{s3_bucket}/b1/output.jsonl",
        destination=f"{s3_bucket}/results/batch_id=b1/",
        storage_options=opts,
        batch_status="EXPIRED",
    )
    assert summary.destination == f"{s3_bucket}/results/batch_id=b1/results.parquet"
    rows = read(summary, **opts)
    assert [r["status"] for r in rows] == ["expired"] * 3 + ["succeeded"] + ["expired"] * 4
    assert fs.find(f"{s3_bucket}/results") == [
        f"{s3_bucket.removeprefix('s3://')}/results/batch_id=b1/results.parquet"
    ]

    # A failure leaves nothing at the destination.
    with pytest.raises(InvalidRequestFileError):
        join_results(
            inputs=f"{s3_bucket}/in/missing.jsonl",
            outputs=None,
            destination=f"{s3_bucket}/results/batch_id=b2/results.parquet",
            storage_options=opts,
        )
    assert not fs.exists(f"{s3_bucket}/results/batch_id=b2")


def test_local_publish_is_atomic(
    tmp_path: Path, inputs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "res" / "out.parquet"
    join_results(inputs=inputs, outputs=None, destination=dest)
    before = dest.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(assemble, "_add_tokens", broken)
    outputs = write_jsonl(tmp_path / "o.jsonl", [output("r1")])
    with pytest.raises(OSError, match="disk full"):
        join_results(inputs=inputs, outputs=outputs, destination=dest)
    assert dest.read_bytes() == before  # the old file is untouched, no temp file is left
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.parquet"]


# ------------------------------------------------------------------------------------------
# The summary
# ------------------------------------------------------------------------------------------
def test_summary_is_json_and_has_a_preview(tmp_path: Path, inputs: str) -> None:
    outputs = write_jsonl(
        tmp_path / "o.jsonl", [output("r0", "a | b\nc"), output("r1", tokens=(1, 2), model="m2")]
    )
    summary = join_results(inputs=inputs, outputs=outputs, destination=tmp_path / "o.parquet")
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["counts"]["missing"] == 6 and data["n_rows"] == 8
    assert data["tokens_by_model"]["m2"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }
    preview = summary.preview(3)
    assert preview.splitlines()[0] == "| custom_id | status | prompt | content | error |"
    assert "a \\| b c" in preview and len(preview.splitlines()) == 5


# ------------------------------------------------------------------------------------------
# Many blocks, many buckets, pyarrow and json paths mixed: compare with a plain Python join
# ------------------------------------------------------------------------------------------
def _oracle(
    inputs: list[dict[str, Any]], result_lines: list[str], default: str, raw: str
) -> list[tuple]:
    """What each input's row must say, computed the simplest way (``raw``: which rows keep
    their line)."""
    first: dict[str, tuple] = {}
    for text in result_lines:
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            continue
        if obj["custom_id"] in first:
            continue
        if "error" in obj:
            row = ("failed", None, obj["error"]["message"])
        else:
            choice = obj["response"]["body"]["choices"][0]
            row = ("succeeded", choice["message"]["content"], None)
        keep = raw == "all" or row[0] == "failed"
        first[obj["custom_id"]] = (*row, text if keep else None)
    return [
        (r["custom_id"], *first.get(r["custom_id"], (default, None, None, None))) for r in inputs
    ]


@pytest.mark.parametrize(("seed", "raw"), [(1, "failed"), (2, "all")])
def test_many_blocks_and_buckets_match_a_plain_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, raw: str
) -> None:
    monkeypatch.setattr(blocks, "_READ_SIZE", 4096)  # a few dozen lines per block
    monkeypatch.setattr(buckets, "_BUCKET_BYTES", 3000)  # many buckets
    monkeypatch.setattr(assemble, "_ROW_GROUP_BYTES", 20_000)
    rnd = random.Random(seed)
    inputs = [request(f"id-{i:04d}-{'x' * rnd.randint(0, 20)}", f"p{i}") for i in range(600)]
    ids = [r["custom_id"] for r in inputs]
    lines = []
    for cid in rnd.sample(ids, 450) + rnd.sample(ids, 40) + ["unknown-1", "unknown-2"]:
        if rnd.random() < 0.1:
            lines.append(json.dumps(error(cid, f"err {cid}")))
        else:
            lines.append(json.dumps(output(cid, f"answer {cid} " + "é" * rnd.randint(0, 30))))
    for _ in range(6):  # junk in random places: pyarrow refuses those blocks, json reads them
        lines.insert(rnd.randrange(len(lines)), rnd.choice(["junk", "{bad json", "[]", "{}"]))
    (tmp_path / "o.jsonl").write_text("".join(line + "\n" for line in lines))
    write_jsonl(tmp_path / "i.jsonl", inputs)
    summary = join_results(
        inputs=str(tmp_path / "i.jsonl"),
        outputs=str(tmp_path / "o.jsonl"),
        destination=tmp_path / "r.parquet",
        batch_status="CANCELLED",
        raw_responses=raw,
    )
    got = [
        (r["custom_id"], r["status"], r["content"], r["error"], r["response"])
        for r in read(summary)
    ]
    assert got == _oracle(inputs, lines, "cancelled", raw)
    assert summary.n_malformed_lines == 6 and summary.unknown_ids == 2
    assert summary.n_rows == 600 and pq.ParquetFile(summary.destination).metadata.num_row_groups > 1


def test_inputs_as_several_request_files(tmp_path: Path) -> None:
    first = write_jsonl(tmp_path / "requests-00000.jsonl", [request("a"), request("b")])
    second = write_jsonl(tmp_path / "requests-00001.jsonl", [request("c")])
    outputs = write_jsonl(tmp_path / "o.jsonl", [output("c", "C"), output("a", "A")])
    summary = join_results(
        inputs=[first, second], outputs=outputs, destination=tmp_path / "r.parquet"
    )
    assert [(r["custom_id"], r["content"]) for r in read(summary)] == [
        ("a", "A"),
        ("b", None),
        ("c", "C"),
    ]


def test_scatter_places_the_first_row_of_each_position() -> None:
    """The take-indices that put rows at their input positions (every bucket of the join):
    the first row of a repeated position, nothing for positions outside the range or null."""
    from dagster_together.results.arrow import _scatter

    rng = random.Random(7)
    for _ in range(200):
        values = sorted(rng.randint(0, 60) for _ in range(rng.randint(0, 40)))
        lo = rng.randint(0, 20)
        hi = lo + rng.randint(0, 40)
        column = pa.array(values + [None] * rng.randint(0, 2), pa.int64()).slice(rng.randint(0, 1))
        kept = column.to_pylist()
        expected = [kept.index(p) if p in kept else None for p in range(lo, hi)]
        assert _scatter(column, lo, hi).to_pylist() == expected
        assert _scatter(pa.chunked_array([column]), lo, hi).to_pylist() == expected
