"""What comes out: structured answers as typed columns, invalid outputs, tool calls, reasoning and
audio transcripts, driven through the client against the emulator over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest

from dagster_together import requests as rq
from dagster_together.output_schema import AnswerError, OutputSchema, OutputSchemaError
from dagster_together.results import STATUSES, join_results
from tests.helpers import fast_client

pydantic = pytest.importorskip("pydantic")


class Aspect(pydantic.BaseModel):
    name: str
    score: float


class Review(pydantic.BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    stars: int = pydantic.Field(ge=1, le=5)
    spam: bool
    aspects: list[Aspect]
    summary: str | None = None


def _run_batch(
    emulator: Any,
    api_key: str,
    tmp_path: Path,
    table: Any,
    template: Any,
    endpoint: str | None = None,
) -> tuple[str, str | None, str | None]:
    """Build, upload, run and download one batch; (input file, output file, error file)."""
    requests = rq.build_requests(table, template=template, id_column="id")
    [chunk] = rq.write_request_chunks(requests, tmp_path / "in", endpoint=endpoint)
    with fast_client(emulator, api_key, timeout=10, max_retries=1) as client:
        uploaded = client.files.upload(chunk.path)
        job = client.batches.create_batch(uploaded.id, endpoint=endpoint or template.endpoint)
        job = client.batches.wait(job.id, poll_interval=0.05, timeout=30)
        out = err = None
        if job.output_file_id:
            out = client.files.retrieve_content(
                job.output_file_id, output=tmp_path / "out.jsonl"
            ).filename
        if job.error_file_id:
            err = client.files.retrieve_content(
                job.error_file_id, output=tmp_path / "err.jsonl"
            ).filename
    return chunk.path, out, err


def _read(path: str) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path)


def test_structured_answers_land_as_typed_columns_and_bad_ones_as_invalid_output(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    import pyarrow as pa

    template = rq.RequestTemplate(
        model="m",
        messages=[
            {"role": "system", "content": "Rate this {product} review as JSON."},
            {"role": "user", "content": "{review}"},
        ],
        output_schema=Review,
    )
    table = pa.table(
        {
            "id": ["a", "b", "c", "d", "e"],
            "product": ["shoe", "hat", "bag", "cup", "pen"],
            "review": [
                "I love it, great quality",
                "terrible, broken on arrival",
                "EMULATE_INVALID_JSON please",
                "EMULATE_SCHEMA_MISMATCH please",
                "EMULATE_ERROR please",
            ],
            # A user column named like a schema field: the field's column gets a prefix.
            "summary": ["s1", "s2", "s3", "s4", "s5"],
        }
    )
    inputs, out, err = _run_batch(emulator, api_key, tmp_path, table, template)
    summary = join_results(
        inputs=inputs,
        outputs=out,
        errors=err,
        destination=tmp_path / "r.parquet",
        input_columns=rq.input_columns_table(table, id_column="id"),
        output_schema=template.schema,
    )
    assert summary.counts == {
        "succeeded": 2,
        "invalid_output": 2,
        "failed": 1,
        "missing": 0,
        "expired": 0,
        "cancelled": 0,
    }
    assert summary.invalid_output_rate == pytest.approx(0.5)
    assert summary.output_columns == ("sentiment", "stars", "spam", "aspects", "output_summary")
    result = _read(summary.destination)
    schema = result.schema
    assert schema.field("sentiment").type == pa.string()
    assert schema.field("stars").type == pa.int64()
    assert schema.field("spam").type == pa.bool_()
    assert schema.field("aspects").type == pa.list_(
        pa.struct([("name", pa.string()), ("score", pa.float64())])
    )
    assert schema.field("output_summary").type == pa.string()
    assert schema.field("summary").type == pa.string()  # the user's own column, unchanged
    rows = {r["custom_id"]: r for r in result.to_pylist()}
    assert rows["a"]["status"] == "succeeded" and rows["a"]["sentiment"] == "positive"
    assert rows["b"]["sentiment"] == "negative" and 1 <= rows["b"]["stars"] <= 5
    assert isinstance(rows["a"]["aspects"][0]["score"], float)
    assert json.loads(rows["a"]["content"])["sentiment"] == "positive"  # raw text kept
    bad_json, mismatch = rows["c"], rows["d"]
    assert bad_json["status"] == "invalid_output" and bad_json["error_code"] == "invalid_json"
    assert "not valid JSON" in bad_json["error"] and bad_json["content"].startswith('{"label"')
    assert mismatch["status"] == "invalid_output" and mismatch["error_code"] == "schema_mismatch"
    assert mismatch["error"].startswith("$: expected an object, got array")
    assert bad_json["sentiment"] is None and mismatch["aspects"] is None
    assert rows["e"]["status"] == "failed" and rows["e"]["sentiment"] is None
    assert "invalid_output" in STATUSES


def test_without_a_schema_counts_and_columns_stay_as_before(tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"custom_id": "a", "body": {"model": "m", "prompt": "x"}}\n')
    summary = join_results(inputs=str(inputs), outputs=None, destination=tmp_path / "r.parquet")
    assert "invalid_output" not in summary.counts and summary.output_columns == ()


def test_typed_columns_survive_many_buckets_and_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_together.results import assemble, buckets

    monkeypatch.setattr(buckets, "_BUCKET_BYTES", 2048)
    monkeypatch.setattr(assemble, "_ROW_GROUP_BYTES", 4096)
    n = 3000
    inputs = tmp_path / "in.jsonl"
    outputs = tmp_path / "out.jsonl"
    with inputs.open("w") as i_file, outputs.open("w") as o_file:
        for k in range(n):
            i_file.write(
                json.dumps({"custom_id": f"r{k}", "body": {"model": "m", "prompt": "p"}}) + "\n"
            )
        for k in reversed(range(n)):
            answer = "oops" if k % 7 == 0 else json.dumps({"n": k, "tags": [str(k)]})
            body = {"choices": [{"message": {"content": answer}}]}
            o_file.write(
                json.dumps({"custom_id": f"r{k}", "response": {"status_code": 200, "body": body}})
                + "\n"
            )
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["n"],
    }
    summary = join_results(
        inputs=str(inputs),
        outputs=str(outputs),
        destination=tmp_path / "r.parquet",
        output_schema=schema,
    )
    table = _read(summary.destination)
    assert summary.counts["invalid_output"] == len(range(0, n, 7))
    assert table.column("n").to_pylist() == [None if k % 7 == 0 else k for k in range(n)]
    assert table.column("tags").to_pylist()[1] == ["1"]


def test_tool_calls_and_reasoning_get_their_own_columns(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    import pyarrow as pa

    tool = {
        "type": "function",
        "function": {
            "name": "set_rating",
            "parameters": {"type": "object", "properties": {"stars": {"type": "integer"}}},
        },
    }
    table = pa.table(
        {"id": [1, 2], "text": ["Rate: I love it", "EMULATE_REASONING why is the sky blue"]}
    )
    with_tools = rq.RequestTemplate(model="m", prompt_column="text", body={"tools": [tool]})
    inputs, out, err = _run_batch(emulator, api_key, tmp_path / "t", table.slice(0, 1), with_tools)
    rows = _read(
        join_results(
            inputs=inputs, outputs=out, errors=err, destination=tmp_path / "t.parquet"
        ).destination
    ).to_pylist()
    [call] = json.loads(rows[0]["tool_calls"])
    assert call["type"] == "function" and call["function"]["name"] == "set_rating"
    assert isinstance(json.loads(call["function"]["arguments"])["stars"], int)
    assert rows[0]["content"] is None and rows[0]["finish_reason"] == "tool_calls"
    plain = rq.RequestTemplate(model="m", prompt_column="text")
    inputs, out, err = _run_batch(emulator, api_key, tmp_path / "r", table.slice(1), plain)
    [row] = _read(
        join_results(
            inputs=inputs, outputs=out, errors=err, destination=tmp_path / "r.parquet"
        ).destination
    ).to_pylist()
    assert row["reasoning"].startswith("The user asks about") and row["content"]
    assert row["tool_calls"] is None


def test_reasoning_content_and_arguments_objects_are_read_too(tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"custom_id": "a", "body": {"model": "m", "prompt": "x"}}\n')
    message = {
        "content": "ok",
        "reasoning_content": "thinking",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
        ],
    }
    line = {
        "custom_id": "a",
        "response": {"status_code": 200, "body": {"choices": [{"message": message}]}},
    }
    (tmp_path / "out.jsonl").write_text(json.dumps(line) + "\n")
    [row] = _read(
        join_results(
            inputs=str(inputs),
            outputs=str(tmp_path / "out.jsonl"),
            destination=tmp_path / "r.parquet",
        ).destination
    ).to_pylist()
    assert row["reasoning"] == "thinking"
    assert json.loads(row["tool_calls"])[0]["function"]["arguments"] == {"x": 1}


@pytest.mark.parametrize("endpoint", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_audio_batches_give_text_language_and_duration(
    emulator: Any, api_key: str, tmp_path: Path, endpoint: str
) -> None:
    import pyarrow as pa

    table = pa.table(
        {
            "id": ["x", "y", "z"],
            "url": ["https://cdn/a.mp3", "https://cdn/b.wav", "https://cdn/EMULATE_ERROR.mp3"],
        }
    )
    template = rq.AudioTemplate(
        model="openai/whisper-large-v3",
        audio_column="url",
        endpoint=endpoint,
        language="fr",
        response_format="verbose_json",
    )
    inputs, out, err = _run_batch(emulator, api_key, tmp_path, table, template, endpoint=endpoint)
    line = json.loads(Path(inputs).read_text().splitlines()[0])
    assert line["method"] == "FILE" and line["body"]["file"] == "https://cdn/a.mp3"
    summary = join_results(
        inputs=inputs, outputs=out, errors=err, destination=tmp_path / "a.parquet"
    )
    rows = {r["custom_id"]: r for r in _read(summary.destination).to_pylist()}
    assert [rows[k]["status"] for k in "xyz"] == ["succeeded", "succeeded", "failed"]
    assert rows["x"]["content"] and rows["x"]["language"] == "fr"
    assert rows["x"]["prompt"] == "https://cdn/a.mp3"  # the audio's URL is the request's input
    assert isinstance(rows["x"]["duration"], float) and rows["x"]["duration"] > 0
    plain = rq.AudioTemplate(model="openai/whisper-large-v3", audio_column="url", endpoint=endpoint)
    inputs, out, err = _run_batch(
        emulator, api_key, tmp_path / "plain", table.slice(0, 1), plain, endpoint=endpoint
    )
    [row] = _read(
        join_results(inputs=inputs, outputs=out, destination=tmp_path / "p.parquet").destination
    ).to_pylist()
    assert row["content"] and row["language"] is None and row["duration"] is None


def test_vision_requests_round_trip_with_their_text_as_prompt(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    import pyarrow as pa

    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    table = pa.table(
        {
            "id": [1, 2],
            "question": ["What is shown?", "Is it sentiment positive? I love it"],
            "image": [str(png), "https://img/b.jpg"],
        }
    )
    template = rq.RequestTemplate(
        model="vlm",
        messages=[{"role": "user", "content": "{question}"}],
        image_column="image",
        inline_images=True,
    )
    inputs, out, err = _run_batch(emulator, api_key, tmp_path, table, template)
    summary = join_results(
        inputs=inputs, outputs=out, errors=err, destination=tmp_path / "v.parquet"
    )
    rows = _read(summary.destination).to_pylist()
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"]
    assert [r["prompt"] for r in rows] == ["What is shown?", "Is it sentiment positive? I love it"]
    assert rows[1]["content"] == "positive"


# ------------------------------------------------------------------------------------------
# The validator's subset
# ------------------------------------------------------------------------------------------
def _schema(properties: dict[str, Any], **more: Any) -> OutputSchema:
    return OutputSchema({"type": "object", "properties": properties, **more})


@pytest.mark.parametrize(
    ("properties", "extra", "answer", "fragment"),
    [
        ({"a": {"type": "integer"}}, {}, {"a": 1.5}, "$.a: expected an integer, got number 1.5"),
        ({"a": {"type": "integer"}}, {}, {"a": True}, "$.a: expected an integer"),
        ({"a": {"type": "string"}}, {"required": ["a"]}, {}, "misses the required field 'a'"),
        (
            {"a": {"type": "string"}},
            {"additionalProperties": False},
            {"b": 1},
            "unexpected field 'b'",
        ),
        ({"a": {"enum": ["x", "y"]}}, {}, {"a": "z"}, "is not one of ['x', 'y']"),
        ({"a": {"type": "number", "maximum": 1}}, {}, {"a": 2}, "above the maximum"),
        ({"a": {"type": "string", "pattern": "^[0-9]+$"}}, {}, {"a": "x1"}, "does not match"),
        (
            {"a": {"type": "array", "items": {"type": "string"}, "maxItems": 1}},
            {},
            {"a": ["x", "y"]},
            "more than 1 items",
        ),
        (
            {"a": {"type": "array", "items": {"type": "string"}}},
            {},
            {"a": ["x", 2]},
            "$.a[1]: expected a string",
        ),
        ({"a": {"type": "string"}}, {}, {"a": None}, "$.a: is null"),
        ({"a": {"type": "integer"}}, {}, {"a": 2**70}, "64-bit"),
    ],
)
def test_mismatches_name_the_path(
    properties: dict[str, Any], extra: dict[str, Any], answer: Any, fragment: str
) -> None:
    with pytest.raises(AnswerError) as info:
        _schema(properties, **extra).parse(json.dumps(answer))
    assert fragment in str(info.value) and info.value.code == "schema_mismatch"


def test_accepted_shapes_are_normalised() -> None:
    schema = _schema(
        {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "maybe": {"type": ["string", "null"]},
            "free": {"type": "object"},
            "anything": {},
            "nested": {"type": "object", "properties": {"k": {"type": "boolean"}}},
        }
    )
    parsed = schema.parse(
        '```json\n{"n": 2.0, "x": 3, "maybe": null, "free": {"a": [1]}, "anything": [1, "a"], "extra": 1}\n```'
    )
    assert parsed == {
        "n": 2,
        "x": 3.0,
        "maybe": None,
        "free": '{"a": [1]}',
        "anything": '[1, "a"]',
        "nested": None,
    }
    with pytest.raises(AnswerError) as info:
        schema.parse("NaN")
    assert info.value.code == "invalid_json"


def test_pydantic_refs_and_optionals_compile() -> None:
    import pyarrow as pa

    fields = {f.name: f.type for f in OutputSchema(Review).arrow_fields()}
    assert fields == {
        "sentiment": pa.string(),
        "stars": pa.int64(),
        "spam": pa.bool_(),
        "aspects": pa.list_(pa.struct([("name", pa.string()), ("score", pa.float64())])),
        "summary": pa.string(),
    }


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "string"}, "must describe a JSON object"),
        (
            {
                "type": "object",
                "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
            },
            "one type",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"$ref": "#/$defs/A"}},
                "$defs": {"A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/A"}}}},
            },
            "recursive",
        ),
        ({"type": "object", "properties": {"a": {"type": "string", "if": {}}}}, "'if'"),
        ("not a schema", "JSON Schema dict or a Pydantic model"),
    ],
)
def test_unsupported_schemas_are_refused_with_the_keyword(schema: Any, fragment: str) -> None:
    with pytest.raises(OutputSchemaError, match=fragment.replace("(", r"\(")):
        OutputSchema(schema)


# ------------------------------------------------------------------------------------------
# The emulator's structured answers, line by line
# ------------------------------------------------------------------------------------------
def _answer(body: dict[str, Any]) -> dict[str, Any]:
    from dagster_together.emulator.responder import Responder

    ok, line = Responder().line(
        endpoint="/v1/chat/completions",
        custom_id="c",
        body={"model": "m", **body},
        default_model=None,
        created=0,
        line_id="l",
        request_id="q",
    )
    assert ok
    return json.loads(line)["response"]["body"]["choices"][0]["message"]


def test_emulator_answers_json_mode_and_the_legacy_schema_form() -> None:
    user = [{"role": "user", "content": "I love it"}]
    plain = _answer({"messages": user, "response_format": {"type": "json_object"}})
    assert isinstance(json.loads(plain["content"]), dict)
    legacy = _answer(
        {
            "messages": user,
            "response_format": {"type": "json_object", "schema": Review.model_json_schema()},
        }
    )
    OutputSchema(Review).parse(legacy["content"])  # matches
    assert json.loads(legacy["content"])["sentiment"] == "positive"


def test_emulator_numbers_respect_exclusive_bounds_and_reasoning_is_asked_for() -> None:
    schema = {
        "type": "object",
        "properties": {
            "i": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 2},
            "x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "s": {"type": "string", "minLength": 40, "maxLength": 41},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        },
        "required": ["i", "x", "s", "tags"],
        "additionalProperties": False,
    }
    for prompt in ("a", "b", "c", "d"):
        message = _answer(
            {
                "messages": [{"role": "user", "content": prompt}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": schema},
                },
                "reasoning_effort": "low",
            }
        )
        values = OutputSchema(schema).parse(message["content"])
        assert values["i"] == 1 and 0 < values["x"] < 1 and len(values["tags"]) == 3
        assert message["reasoning"]
