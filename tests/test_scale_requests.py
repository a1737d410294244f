"""Request files for many rows: the bytes are exactly one compact JSON document per line (the
writer encodes and writes in blocks), a table's distinct ids are checked in one Arrow pass (no
dict of every id) while a repeat is still named by both rows, and the user's id column becomes
``custom_id`` text without a Python object per row."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from dagster_together.client import InvalidRequestFileError
from dagster_together.requests import (
    RequestTemplate,
    build_requests,
    input_columns_table,
    write_request_chunks,
)

TEMPLATE = RequestTemplate(
    model="m", prompt_column="text", system_prompt="Be brief.", body={"max_tokens": 8}
)


def _table(n: int) -> pa.Table:
    texts = [f'row {i}: caf\u00e9 "quoted"\n\ttab \\ \u2014 {"x" * (i % 200)}' for i in range(n)]
    return pa.table({"id": [f"r{i}" for i in range(n)], "text": texts})


def test_files_hold_one_compact_json_line_per_request(tmp_path: Path) -> None:
    table = _table(20_000)
    requests = build_requests(table, template=TEMPLATE, id_column="id")
    chunks = write_request_chunks(requests, tmp_path, max_requests=7_000)
    assert requests.naming.unique_ids  # one Arrow pass over the id column said so
    assert [c.n_requests for c in chunks] == [7_000, 7_000, 6_000]
    expected = b"".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for r in build_requests(table, template=TEMPLATE, id_column="id")
    )
    written = b"".join(Path(c.path).read_bytes() for c in chunks)
    assert written == expected  # several 1 MB blocks per file, nothing lost or reordered
    for chunk in chunks:
        data = Path(chunk.path).read_bytes()
        assert chunk.sha256 == hashlib.sha256(data).hexdigest()
        assert chunk.n_bytes == len(data)


@pytest.mark.parametrize("ids", [["a", "b", "a"], [1, 2, 1]])
def test_a_repeated_id_is_still_named_by_both_rows(tmp_path: Path, ids: list[object]) -> None:
    table = pa.table({"id": ids, "text": ["x", "y", "z"]})
    requests = build_requests(table, template=TEMPLATE, id_column="id")
    with pytest.raises(InvalidRequestFileError, match=r"appears twice: rows 1 and 3"):
        write_request_chunks(requests, tmp_path)
    assert not requests.naming.unique_ids


def test_integer_and_string_ids_become_the_same_custom_id_text() -> None:
    ints = input_columns_table(pa.table({"id": [7, -3, 10**12]}), id_column="id")
    assert ints["custom_id"].to_pylist() == ["7", "-3", "1000000000000"]
    assert ints.schema.field("custom_id").type == pa.string()
    built = build_requests(
        pa.table({"id": [7, -3], "text": ["a", "b"]}), template=TEMPLATE, id_column="id"
    )
    assert [r["custom_id"] for r in built] == ["7", "-3"]
    strings = input_columns_table(
        pa.table({"id": pa.array(["x", "y"], pa.large_string())}), id_column="id"
    )
    assert strings["custom_id"].to_pylist() == ["x", "y"]
