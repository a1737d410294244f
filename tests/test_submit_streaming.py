"""The submit's streaming pieces: the user's columns a slice at a time, rows taken per chunk,
the request rows spilled, and ids not remembered when the table proved them unique."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_together.requests import (
    RequestTemplate,
    build_requests,
    input_columns_batches,
    input_columns_table,
    write_request_chunks,
)
from dagster_together.requests.rows import RequestRows, RowStream

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def _prompts(n: int) -> pa.Table:
    return pa.table({"id": list(range(n)), "text": [f"t{i}" for i in range(n)], "body": ["x"] * n})


def test_input_columns_batches_make_the_table(tmp_path: Path) -> None:
    table = _prompts(70_000)
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=30_000)
    for source in (table, str(tmp_path / "p.parquet")):
        names, parts = input_columns_batches(source, id_column="id")
        parts = list(parts)
        assert names == ["custom_id", "id", "text"]
        assert len(parts) > 1
        whole = input_columns_table(source, id_column="id")
        assert pa.concat_tables(parts).equals(whole)
        assert whole["custom_id"].to_pylist()[:2] == ["0", "1"]


def test_row_stream_takes_across_parts() -> None:
    parts = [pa.table({"a": list(range(k, k + 3))}) for k in (0, 3, 6)]
    stream = RowStream(parts)
    assert stream.take(2)["a"].to_pylist() == [0, 1]
    assert stream.take(5)["a"].to_pylist() == [2, 3, 4, 5, 6]
    assert stream.take(5)["a"].to_pylist() == [7, 8]  # the stream ends
    with pytest.raises(ValueError, match="no rows left"):
        RowStream([]).take(1)


def test_request_rows_spill_keeps_every_row(tmp_path: Path) -> None:
    rows = RequestRows(spill=str(tmp_path / "rows.arrows"))
    in_memory = RequestRows()
    for k in range(25_000):
        request = {"custom_id": f"c{k}", "body": {"model": MODEL, "prompt": f"p{k}"}}
        rows.add(request)
        in_memory.add(request)
    assert (tmp_path / "rows.arrows").exists()
    assert rows.table().equals(in_memory.table())
    assert rows.table()["prompt"][24_999].as_py() == "p24999"


def test_unique_ids_are_not_remembered_but_repeats_are_refused(tmp_path: Path) -> None:
    template = RequestTemplate(model=MODEL, prompt_column="text")
    from dagster_together.requests import rules

    seen_sizes = []
    original = rules._Rules.check_cross

    def check_cross(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        seen_sizes.append(len(self.seen))

    rules._Rules.check_cross = check_cross  # type: ignore[method-assign]
    try:
        write_request_chunks(
            build_requests(_prompts(100), template=template, id_column="id"), tmp_path / "a"
        )
        assert seen_sizes and max(seen_sizes) == 0  # the table proved its ids unique
        repeated = pa.table({"id": [1, 2, 1], "text": ["a", "b", "c"]})
        with pytest.raises(Exception, match="appears twice"):
            write_request_chunks(
                build_requests(repeated, template=template, id_column="id"), tmp_path / "b"
            )
    finally:
        rules._Rules.check_cross = original  # type: ignore[method-assign]


def test_the_submit_path_does_not_import_pandas(tmp_path: Path) -> None:
    """pyarrow's conversion of Python lists imports pandas (tens of MB in the run): the submit's
    blocks of ids, keys and request rows are built from buffers instead."""
    import subprocess
    import sys
    import textwrap

    pq.write_table(_prompts(25_000), tmp_path / "p.parquet")
    script = textwrap.dedent(
        f"""
        import os, sys
        from dagster_together.requests import RequestTemplate, build_requests, write_request_chunks
        from dagster_together.requests.rows import RequestRows
        from dagster_together.submit import _Keys

        rows = RequestRows(spill={str(tmp_path / "rows.arrows")!r})
        keys = _Keys("/v1/chat/completions", spill={str(tmp_path / "keys.arrows")!r})

        def observe(request):
            rows.add(request)
            keys.add(request)

        template = RequestTemplate(model={MODEL!r}, prompt_column="text")
        requests = build_requests({str(tmp_path / "p.parquet")!r}, template=template, id_column="id")
        write_request_chunks(requests, {str(tmp_path / "out")!r}, observe=observe)
        assert sum(b.num_rows for b in rows.blocks()) == 25_000
        assert sum(b.num_rows for b in keys.blocks()) == 25_000
        print("pandas" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "False", done.stderr
