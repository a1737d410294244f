"""The answers pyarrow reads in bulk (``results.structured``) get exactly the verdict, values and
error that ``OutputSchema.parse`` gives row by row, whatever path each answer takes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from dagster_together.output_schema import AnswerError, OutputSchema
from dagster_together.results.assemble import _structured
from dagster_together.results.outputs import _row_schema


def _schema(closed: bool) -> dict[str, Any]:
    part = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "score": {"type": "number"}},
        "required": ["name"],
    }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
            "issue": {"type": ["string", "null"]},
            "severity": {"type": "integer", "minimum": 1, "maximum": 5},
            "confidence": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "spam": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "part": part,
            "note": {"type": "string", "minLength": 2},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
        "required": ["sentiment", "issue", "severity", "confidence", "spam", "tags"],
    }
    if closed:
        schema["additionalProperties"] = False
        part["additionalProperties"] = False
    return schema


_EDGES = [
    '{"sentiment": "positive", "issue": null, "severity": 4.0, "confidence": 0.5, "spam": false, "tags": []}',
    '{"sentiment": "positive", "severity": 4, "confidence": 0.5, "spam": false, "tags": []}',
    '{"sentiment": "positive", "issue": null, "severity": 4, "confidence": NaN, "spam": false, "tags": []}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 1e400, "spam": false, "tags": []}',
    '{"sentiment": "positive", "issue": "x", "issue": "y", "severity": 4, "confidence": 0.5, "spam": false, "tags": []}',
    '{"sentiment": "positive", "issue": "a\tb", "severity": 4, "confidence": 0.5, "spam": false, "tags": []}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 0.5, "spam": false, "tags": []} junk',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 0.5, "spam": false, "tags": []}{"a": 1}',
    '```json\n{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 0.5, "spam": false, "tags": []}\n```',
    ' {"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 0.5, "spam": false, "tags": []}',
    '{"sentiment": "positive", "issue": "x", "severity": 99999999999999999999, "confidence": 0.5, "spam": false, "tags": []}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 1, "spam": 0, "tags": []}',
    '{"sentiment": "positive", "issue": "x", "severity": true, "confidence": 1, "spam": false, "tags": []}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 1, "spam": false, "tags": [null]}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 1, "spam": false, "tags": ["a"], "extra": 1}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 1, "spam": false, "tags": [], "part": {"score": 1}}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 1, "spam": false, "tags": [], "part": {"name": "ok", "z": 1}}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 1, "spam": false, "tags": [], "note": null}',
    '{"sentiment": "positive", "issue": "x", "severity": 4, "confidence": 1, "spam": false, "tags": [], "maybe": null}',
    '{"sentiment": "positive", "issue": "x\\"issue\\": ", "severity": 4, "confidence": 1, "spam": false, "tags": []}',
    '{"sentiment": "positive", "severity": 4, "confidence": 1, "spam": false, "tags": [], "note": "\\"issue\\": 1"}',
    '{"sentiment": "positive", "\\u0069ssue": null, "severity": 4, "confidence": 1, "spam": false, "tags": []}',
    '["not", "an", "object"]',
    "{}",
    "",
    "I'm sorry",
    '{"sentiment": "positive", "issue": "é\\ud83d\\ude00", "severity": 5, "confidence": 0.1, "spam": true, "tags": ["ü"]}',
]


def _random_answer(rng: random.Random) -> str:
    answer: dict[str, Any] = {
        "sentiment": rng.choice(["positive", "neutral", "negative", "angry"]),
        "issue": rng.choice([None, "late", "broken"]),
        "severity": rng.choice([1, 3, 5, 0, 6]),
        "confidence": rng.choice([0.5, 1, 0, 1.5, 0.001]),
        "spam": rng.choice([True, False]),
        "tags": rng.sample(["a", "b", "c", "d"], rng.randint(0, 4)),
    }
    if rng.random() < 0.3:
        answer["part"] = rng.choice([{"name": "short"}, {"name": "much too long"}, {"score": 2}])
    if rng.random() < 0.2:
        answer["note"] = rng.choice(["ok", "x", None])
    if rng.random() < 0.2:
        answer["maybe"] = rng.choice([1, None, "one"])
    if rng.random() < 0.2:
        del answer[rng.choice(list(answer))]
    return json.dumps(answer, ensure_ascii=rng.random() < 0.5)


def _results(contents: list[str | None]) -> pa.Table:
    schema = pa.schema(list(_row_schema())[1:])
    n = len(contents)
    columns = [pa.nulls(n, t) for t in schema.types]
    columns[schema.get_field_index("status")] = pa.array(["succeeded"] * n, pa.string())
    columns[schema.get_field_index("content")] = pa.array(contents, pa.string())
    return pa.Table.from_arrays(columns, schema=schema)


@pytest.mark.parametrize("closed", [True, False])
def test_bulk_answers_match_row_by_row_parsing(closed: bool) -> None:
    schema = OutputSchema(_schema(closed))
    rng = random.Random(3)
    contents: list[str | None] = [_random_answer(rng) for _ in range(3000)]
    contents += _EDGES + [None]
    rng.shuffle(contents)
    results, fields = _structured(_results(contents), schema)
    got = list(
        zip(
            results.column("status").to_pylist(),
            results.column("error").to_pylist(),
            results.column("error_code").to_pylist(),
            *(f.to_pylist() for f in fields),
            strict=True,
        )
    )
    names = schema.field_names
    for text, row in zip(contents, got, strict=True):
        try:
            answer = schema.parse(text)
        except AnswerError as exc:
            expected = ("invalid_output", str(exc), exc.code, *([None] * len(names)))
        else:
            expected = ("succeeded", None, None, *(answer[k] for k in names))
        assert row == expected, text


@pytest.mark.parametrize("every_answer_good", [True, False])
def test_rows_that_did_not_succeed_get_no_values(every_answer_good: bool) -> None:
    schema = OutputSchema(_schema(closed=True))
    good = json.dumps(
        {"sentiment": "neutral", "issue": None, "severity": 2}
        | {"confidence": 0.5, "spam": False, "tags": ["a"]}
    )
    contents: list[str | None] = [good if every_answer_good or k % 5 else "no" for k in range(40)]
    results = _results(contents)
    failed = [k % 3 == 0 for k in range(40)]
    status = pa.array(["failed" if f else "succeeded" for f in failed], pa.string())
    results = results.set_column(results.schema.get_field_index("status"), "status", status)
    results, fields = _structured(results, schema)
    for k, (row_status, severity) in enumerate(
        zip(results.column("status").to_pylist(), fields[2].to_pylist(), strict=True)
    ):
        if failed[k]:
            assert (row_status, severity) == ("failed", None)
        elif contents[k] == "no":
            assert (row_status, severity) == ("invalid_output", None)
        else:
            assert (row_status, severity) == ("succeeded", 2)


def test_most_well_formed_answers_take_the_bulk_path() -> None:
    from dagster_together.results.structured import _typed_answers

    schema = OutputSchema(_schema(closed=True))
    good = [
        json.dumps(
            {"sentiment": "neutral", "issue": None if k % 3 else "late", "severity": 2}
            | {"confidence": 0.5, "spam": False, "tags": ["a"]}
        )
        for k in range(100)
    ]
    accepted, _ = _typed_answers(pa.array(good, pa.string()), schema)
    assert accepted.to_pylist() == [True] * 100


def test_tool_calls_text_keeps_nulls_empty_lists_and_calls_apart() -> None:
    from dagster_together.results.outputs import _tool_calls_text

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    rows: list[Any] = [None, [], [call], [], None, [call, call]]
    typ = pa.list_(
        pa.struct(
            [
                ("id", pa.string()),
                ("type", pa.string()),
                ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
            ]
        )
    )
    got = _tool_calls_text(pa.array(rows, typ)).to_pylist()
    assert got == [None if r is None else json.dumps(r, ensure_ascii=False) for r in rows]
    assert _tool_calls_text(pa.array([[], None], typ)).to_pylist() == ["[]", None]


@pytest.mark.slow
def test_the_schema_join_does_not_import_pandas(tmp_path: Path) -> None:
    # pyarrow's conversion of Python lists imports pandas when it is installed (~50 MB of
    # memory); the join builds its arrays without it, with a schema too.
    inputs, outputs = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    answers = ['{"name": "ab", "n": 3}', '{"name": "a", "n": 3}', "not json", '{"n": 1.5}']
    with inputs.open("w") as i_file, outputs.open("w") as o_file:
        for k, answer in enumerate(answers):
            i_file.write(json.dumps({"custom_id": f"r{k}", "body": {"prompt": "p"}}) + "\n")
            body = {"choices": [{"message": {"content": answer}}]}
            o_file.write(json.dumps({"custom_id": f"r{k}", "response": {"body": body}}) + "\n")
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2, "enum": ["ab", "a"]},
            "n": {"type": "integer", "maximum": 5},
        },
        "required": ["n"],
    }
    code = (
        "import json, sys\n"
        "from dagster_together.results import join_results\n"
        f"s = join_results(inputs={str(inputs)!r}, outputs={str(outputs)!r}, "
        f"destination={str(tmp_path / 'r.parquet')!r}, output_schema={schema!r})\n"
        "print(json.dumps([s.counts, 'pandas' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    counts, pandas_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["succeeded"] == 1 and counts["invalid_output"] == 3
    assert not pandas_loaded
