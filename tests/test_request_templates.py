"""What goes in: templates over columns, images, audio lines and output schemas."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from dagster_together import requests as rq
from dagster_together.client.errors import InvalidRequestFileError
from dagster_together.output_schema import OutputSchemaError

REVIEWS = [
    {"role": "system", "content": "You rate {product} reviews."},
    {"role": "user", "content": "{review}"},
]


def _table(**columns: list[Any]) -> Any:
    import pyarrow as pa

    return pa.table(columns)


def _build(table: Any, template: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return list(rq.build_requests(table, template=template, id_column="id", **kwargs))


def test_placeholders_fill_several_turns_from_columns() -> None:
    template = rq.RequestTemplate(
        model="m",
        messages=[
            *REVIEWS,
            {"role": "assistant", "content": "Score for {product}?"},
            {"role": "user", "content": 'Answer with {{"score": n}} for {product}, {stars} stars.'},
        ],
    )
    table = _table(id=[7], product=["shoe"], review=["Great fit"], stars=[4])
    [request] = _build(table, template)
    assert request["custom_id"] == "7"
    assert request["body"]["messages"] == [
        {"role": "system", "content": "You rate shoe reviews."},
        {"role": "user", "content": "Great fit"},
        {"role": "assistant", "content": "Score for shoe?"},
        {"role": "user", "content": 'Answer with {"score": n} for shoe, 4 stars.'},
    ]


def test_prompt_column_form_is_literal_and_unchanged() -> None:
    template = rq.RequestTemplate(model="m", prompt_column="text", system_prompt="Say {json}")
    [request] = _build(_table(id=[1], text=["{not a placeholder}"]), template)
    assert request["body"] == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Say {json}"},
            {"role": "user", "content": "{not a placeholder}"},
        ],
    }


def test_unknown_placeholder_is_refused_before_any_request() -> None:
    template = rq.RequestTemplate(model="m", messages=REVIEWS)
    requests = rq.build_requests(_table(id=[1], review=["x"]), template=template, id_column="id")
    with pytest.raises(InvalidRequestFileError) as info:
        next(requests)
    message = str(info.value)
    assert "has no column 'product'" in message and "{product} in message 1, system" in message
    assert "columns: ['id', 'review']" in message


def test_null_value_names_the_column_and_the_row_in_id_terms() -> None:
    template = rq.RequestTemplate(model="m", messages=REVIEWS)
    table = _table(id=["a", "b"], product=["shoe", None], review=["x", "y"])
    with pytest.raises(
        InvalidRequestFileError, match=r"row 2: the column 'product' .* is null \(id 'b'\)"
    ):
        _build(table, template)


def test_null_in_a_jsonl_table_names_the_line(tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    source.write_text('{"id": 1, "product": "a", "review": "r"}\n{"id": 2, "review": "r"}\n')
    template = rq.RequestTemplate(model="m", messages=REVIEWS)
    with pytest.raises(InvalidRequestFileError, match=r"line 2: the column 'product' .* is absent"):
        _build(str(source), template)


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([{"role": "user", "content": "{a.b}"}], "placeholder '{a.b}'"),
        ([{"role": "user", "content": "{a!r}"}], "placeholder '{a!r}'"),
        ([{"role": "user", "content": "{}"}], "placeholder '{}'"),
        ([{"role": "user", "content": "unbalanced }"}], "literal braces"),
        ([{"role": "system", "content": "x"}], "at least one user message"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([], "non-empty list"),
    ],
)
def test_template_mistakes_fail_where_written(messages: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        rq.RequestTemplate(model="m", messages=messages)


def test_template_needs_one_form() -> None:
    with pytest.raises(ValueError, match="prompt_column= or messages="):
        rq.RequestTemplate(model="m")
    with pytest.raises(ValueError, match="not both"):
        rq.RequestTemplate(model="m", prompt_column="p", messages=REVIEWS)
    with pytest.raises(ValueError, match="AudioTemplate"):
        rq.RequestTemplate(model="m", prompt_column="p", endpoint="/v1/audio/transcriptions")


def test_image_urls_become_content_parts() -> None:
    template = rq.RequestTemplate(model="vlm", prompt_column="q", image_column="img")
    table = _table(id=[1, 2], q=["What is it?", "Compare"], img=["https://x/a.png", None])
    with pytest.raises(InvalidRequestFileError, match=r"row 2: the image column 'img' is null"):
        _build(table, template)
    [request] = _build(table.slice(0, 1), template)
    assert request["body"]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
            ],
        }
    ]


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 20


def test_local_and_s3_images_are_inlined_as_data_urls(
    tmp_path: Path, s3_server: Any, s3_bucket: str
) -> None:
    import fsspec

    local = tmp_path / "a.bin"
    local.write_bytes(PNG)
    remote = f"{s3_bucket}/imgs/b.jpg"
    with fsspec.open(remote, "wb", **s3_server.storage_options) as handle:
        handle.write(b"\xff\xd8\xff" + b"\1" * 10)
    template = rq.RequestTemplate(
        model="vlm",
        messages=[{"role": "user", "content": "{q}"}],
        image_column="img",
        inline_images=True,
    )
    table = _table(id=[1], q=["two"], img=[[str(local), remote, "https://keep/me.png"]])
    [request] = _build(table, template, storage_options=s3_server.storage_options)
    parts = request["body"]["messages"][0]["content"]
    urls = [p["image_url"]["url"] for p in parts[1:]]
    assert urls[0] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert urls[1].startswith("data:image/jpeg;base64,")
    assert urls[2] == "https://keep/me.png"


def test_an_image_too_big_for_a_request_is_refused_naming_the_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_together.requests import images

    small, big = tmp_path / "s.png", tmp_path / "b.png"
    small.write_bytes(PNG)
    big.write_bytes(PNG + b"\0" * 4000)
    monkeypatch.setattr(images, "MAX_BATCH_BYTES", 3000 + images._REQUEST_SLACK)
    template = rq.RequestTemplate(
        model="vlm", prompt_column="q", image_column="img", inline_images=True
    )
    table = _table(id=["a", "b"], q=["x", "y"], img=[str(small), str(big)])
    with pytest.raises(InvalidRequestFileError) as info:
        _build(table, template)
    assert "row 2 (id 'b')" in str(info.value) and "larger than a batch input" in str(info.value)
    capped = rq.RequestTemplate(
        model="vlm", prompt_column="q", image_column="img", inline_images=True, max_image_bytes=10
    )
    with pytest.raises(InvalidRequestFileError, match=r"row 1 \(id 'a'\).*max_image_bytes=10"):
        _build(table, capped)


def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    template = rq.RequestTemplate(
        model="vlm", prompt_column="q", image_column="img", inline_images=True
    )
    with pytest.raises(InvalidRequestFileError, match="is not an image"):
        _build(_table(id=[1], q=["x"], img=[str(tmp_path / "notes.txt")]), template)


def test_audio_lines_carry_the_url_and_method_file() -> None:
    template = rq.AudioTemplate(
        model="openai/whisper-large-v3",
        audio_column="url",
        language_column="lang",
        response_format="verbose_json",
        body={"temperature": 0.0},
    )
    table = _table(id=[1], url=["https://x/a.mp3"], lang=["fr"])
    [request] = _build(table, template)
    assert request == {
        "custom_id": "1",
        "method": "FILE",
        "body": {
            "model": "openai/whisper-large-v3",
            "file": "https://x/a.mp3",
            "language": "fr",
            "response_format": "verbose_json",
            "temperature": 0.0,
        },
    }
    [translated] = _build(table, template, endpoint="/v1/audio/translations")
    assert translated["body"]["file"] == "https://x/a.mp3"
    with pytest.raises(
        InvalidRequestFileError, match=r"row 1: the audio column 'url'.*http\(s\) URLs"
    ):
        _build(_table(id=[1], url=["/local/a.mp3"], lang=["en"]), template)
    with pytest.raises(ValueError, match="not supported"):
        rq.AudioTemplate(model="m", audio_column="u", endpoint="/v1/chat/completions")


def test_output_schema_is_sent_as_response_format() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Review(pydantic.BaseModel):
        label: str
        score: int | None = None

    template = rq.RequestTemplate(model="m", prompt_column="t", output_schema=Review)
    [request] = _build(_table(id=[1], t=["x"]), template)
    fmt = request["body"]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Review"
    assert fmt["json_schema"]["schema"]["required"] == ["label"]
    assert "strict" not in fmt["json_schema"]
    strict = rq.RequestTemplate(
        model="m",
        prompt_column="t",
        output_schema={"type": "object", "properties": {"a": {}}},
        schema_name="my schema!",
        strict_schema=True,
    )
    spec = strict.build_body("x")["response_format"]["json_schema"]
    assert spec["name"] == "my_schema_" and spec["strict"] is True
    with pytest.raises(OutputSchemaError, match="'not'"):
        rq.RequestTemplate(
            model="m",
            prompt_column="t",
            output_schema={"type": "object", "properties": {"a": {"not": {}}}},
        )
    with pytest.raises(ValueError, match="not both"):
        rq.RequestTemplate(
            model="m",
            prompt_column="t",
            output_schema=Review,
            body={"response_format": {"type": "json_object"}},
        )


def test_built_requests_pass_the_file_check(tmp_path: Path) -> None:
    template = rq.RequestTemplate(
        model="m",
        messages=REVIEWS,
        output_schema={"type": "object", "properties": {"label": {"type": "string"}}},
    )
    table = _table(id=list(range(5)), product=["p"] * 5, review=["r"] * 5)
    chunks = rq.write_request_chunks(
        rq.build_requests(table, template=template, id_column="id"), tmp_path
    )
    stats = rq.check_request_file(chunks[0].path)
    assert stats.n_lines == 5
    first = json.loads(Path(chunks[0].path).read_text().splitlines()[0])
    assert first["body"]["response_format"]["json_schema"]["schema"]["properties"]


def test_prebuilt_audio_rows_get_method_file_and_keep_their_own() -> None:
    body = {"model": "openai/whisper-large-v3", "file": "https://x/a.mp3"}
    table = _table(custom_id=["a"], body=[json.dumps(body)])
    [plain] = rq.build_requests(table)
    assert plain == {"custom_id": "a", "body": body}  # chat tables are unchanged
    [audio] = rq.build_requests(table, endpoint="/v1/audio/translations")
    assert audio == {"custom_id": "a", "method": "FILE", "body": body}
    own = _table(custom_id=["a"], body=[json.dumps(body)], method=["POST"])
    assert next(rq.build_requests(own))["method"] == "POST"


_AWKWARD = [
    "plain",
    'quote " and \\ backslash',
    "tab\tnew\nline\x01\x7f",
    "é 雨 🙂",
    "{x}",
    "\x000\x00",
]


# Every form a template writes its lines for (and one whose own text holds the internal mark).
_LINE_TEMPLATES = [
    rq.RequestTemplate(model="m", prompt_column="review", system_prompt="Be brief."),
    rq.RequestTemplate(model="m", prompt_column="review", endpoint="/v1/completions"),
    rq.RequestTemplate(
        model="m",
        messages=[
            *REVIEWS,
            {"role": "user", "content": 'Stars: {stars}, tags: {tags} {{"x"}} {review}'},
        ],
        body={"max_tokens": 9, "stop": ["\n", "é"], "temperature": 0.5},
    ),
    rq.RequestTemplate(
        model="m",
        prompt_column="review",
        output_schema={"type": "object", "properties": {"label": {"type": "string"}}},
    ),
    rq.RequestTemplate(model="m", messages=[{"role": "user", "content": "Say \x000\x00 {review}"}]),
]
_LINE_TEMPLATE_IDS = ["prompt", "completions", "placeholders", "schema", "mark-in-text"]


def _awkward_table() -> Any:
    """A row per awkward text, in every column a template above reads."""
    n = len(_AWKWARD)
    return _table(
        id=[f"r{i}" for i in range(n)],
        product=list(reversed(_AWKWARD)),
        review=_AWKWARD,
        stars=[1.5, 2, 3, 4, 5, 0],
        tags=[["a", "é"]] * n,
    )


@pytest.mark.parametrize("template", _LINE_TEMPLATES, ids=_LINE_TEMPLATE_IDS)
def test_written_lines_are_the_requests_json_exactly(template: Any, tmp_path: Path) -> None:
    """The writer encodes template lines without their dicts: the bytes must be the same."""
    table = _awkward_table()
    chunks = rq.write_request_chunks(
        rq.build_requests(table, template=template, id_column="id"), tmp_path
    )
    expected = "".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
        for r in rq.build_requests(table, template=template, id_column="id")
    )
    assert Path(chunks[0].path).read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("template", _LINE_TEMPLATES, ids=_LINE_TEMPLATE_IDS)
def test_content_keys_from_the_template_are_the_request_keys(template: Any) -> None:
    """The submit keys template requests from the template's text: the same keys as from the
    request dicts, for every endpoint (the key covers it)."""
    from dagster_together.answers import request_key

    table = _awkward_table()
    for endpoint in (template.endpoint, "/v1/other"):
        stream = rq.build_requests(table, template=template, id_column="id")
        for request in stream:
            key = stream.content_key(endpoint)
            if template is _LINE_TEMPLATES[-1]:  # its own text holds the mark: no shortcut
                assert key is None
            else:
                assert key == request_key(endpoint, request["body"])
