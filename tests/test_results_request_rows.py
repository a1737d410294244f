"""The submit's request rows as the join's inputs: the same results table as the request JSONL
plus the user's columns, without parsing any request JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_together.requests.rows import RequestRows
from dagster_together.results import join_results
from dagster_together.results.inputs import request_rows_table

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def _requests() -> list[dict[str, Any]]:
    """Every shape of request the submit writes: chat (the user's message last or not, with
    image parts), completions, audio, and one whose body has no model."""
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]
    not_last = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "prefill"},
    ]
    bodies = [
        {"model": MODEL, "messages": chat},
        {"model": MODEL, "messages": image},
        {"model": MODEL, "messages": not_last},
        {"model": MODEL, "prompt": "Once upon a time"},
        {"model": "openai/whisper-large-v3", "file": "https://example.com/a.mp3"},
        {"model": MODEL, "messages": [{"role": "system", "content": "no user"}]},
        {"messages": chat},
    ]
    return [{"custom_id": f"r{k}", "body": body} for k, body in enumerate(bodies)]


def _output(custom_id: str) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "ok"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}}


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("vectorised", [False, True])
def test_request_rows_give_the_same_table_as_the_request_file(
    tmp_path: Path, vectorised: bool
) -> None:
    requests = _requests()
    if vectorised:  # only lines pyarrow's request schema holds: its vectorised path
        requests = [r for r in requests if not isinstance(r["body"].get("messages"), list)]
        requests += [
            {"custom_id": f"t{k}", "body": {"model": MODEL, "messages": [m]}}
            for k, m in enumerate([{"role": "user", "content": "x"}, {"role": "system"}])
        ]
    ids = [r["custom_id"] for r in requests]
    # The user's columns, with names the join must rename (prompt, status).
    columns = pa.table(
        {
            "custom_id": ids,
            "prompt": [f"p{k}" for k in range(len(ids))],
            "status": ["new"] * len(ids),
            "stars": list(range(len(ids))),
        }
    )
    pq.write_table(columns, tmp_path / "inputs.parquet")
    outputs = _jsonl(tmp_path / "output.jsonl", [_output(i) for i in reversed(ids[1:])])
    from_jsonl = join_results(
        inputs=_jsonl(tmp_path / "input.jsonl", requests),
        input_columns=str(tmp_path / "inputs.parquet"),
        outputs=outputs,
        destination=tmp_path / "a.parquet",
    )

    built = RequestRows()  # as the submit collects them
    for r in requests:
        built.add(r)
    rows = built.table()
    pq.write_table(request_rows_table(rows, columns), tmp_path / "request_rows.parquet")
    from_rows = join_results(
        inputs=str(tmp_path / "request_rows.parquet"),
        outputs=outputs,
        destination=tmp_path / "b.parquet",
    )
    a, b = pq.read_table(from_jsonl.destination), pq.read_table(from_rows.destination)
    assert a.column_names[:6] == [
        "custom_id",
        "request_model",
        "prompt",
        "input_prompt",
        "input_status",
        "stars",
    ]
    assert a.schema == b.schema
    assert a.equals(b)
    assert from_jsonl.to_dict() | {"destination": ""} == from_rows.to_dict() | {"destination": ""}


def test_request_rows_refuse_columns_that_do_not_line_up() -> None:
    rows = pa.table({"custom_id": ["a", "b"], "request_model": ["m", "m"], "prompt": ["x", "y"]})
    with pytest.raises(ValueError, match="line up"):
        request_rows_table(rows, pa.table({"custom_id": ["b", "a"], "stars": [1, 2]}))
