"""The answer store's lookup and the final table's assembly as they run at scale: keys matched
by fingerprint (collisions told apart), and a final table put together a window of input rows at
a time from batches read a slice at a time. Small data, small windows: every path is taken."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dagster_together.final_table as final_table
import dagster_together.keyset as keyset
from dagster_together.answers import AnswerStore
from dagster_together.final_table import assemble_final
from dagster_together.keyset import KeySet
from dagster_together.storage import BatchStorageLayout
from dagster_together.submissions import BatchRecord, Submissions


def _key(i: int) -> str:
    return hashlib.md5(f"k{i}".encode()).hexdigest()


@pytest.fixture(params=["fingerprints", "colliding fingerprints"])
def fingerprints(request: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param != "fingerprints":  # 8 bits of fingerprint: most keys share one
        weak = keyset._fingerprints
        monkeypatch.setattr(
            keyset, "_fingerprints", lambda words: weak(words) & np.uint64(0xFF << 56)
        )


@pytest.mark.usefixtures("fingerprints")
def test_a_key_set_finds_exactly_its_keys() -> None:
    wanted = [_key(i) for i in range(3000)] + [_key(i) for i in range(500)] + [None, "short", ""]
    keys = KeySet(pa.array(wanted, pa.string()))
    assert len(keys) == 3000  # distinct keys only
    column = [_key(i) for i in range(2000, 6000)] + [None, "x" * 31, _key(10)]
    rows, groups = keys.match(pa.array(column, pa.string()))
    assert rows.tolist() == [i for i, k in enumerate(column) if k in set(wanted[:3000])]
    assert [wanted[i] for i in keys.first(groups)] == [column[r] for r in rows]
    members, which = keys.members(groups)
    for g, row in enumerate(rows):
        expected = [i for i, k in enumerate(wanted) if k == column[row]]
        assert sorted(members[which == g].tolist()) == expected
    sliced, _ = keys.match(pa.array(column, pa.string()).slice(7, 100))
    assert sliced.tolist() == [r - 7 for r in rows.tolist() if 7 <= r < 107]


def _results(rows: list[int], ids: list[str], attempt: int, fails: Any) -> pa.Table:
    failed = [fails(i) for i in rows]
    return pa.table(
        {
            "custom_id": [ids[i] for i in rows],
            "status": ["failed" if f else "succeeded" for f in failed],
            "content": [
                None if f else f"answer {i} try {attempt}"
                for i, f in zip(rows, failed, strict=True)
            ],
            "finish_reason": ["stop"] * len(rows),
            "prompt_tokens": [10] * len(rows),
            "completion_tokens": [attempt] * len(rows),
            "total_tokens": [10 + attempt] * len(rows),
            "model": ["m"] * len(rows),
            "error": ["boom" if f else None for f in failed],
            "error_code": ["server_error" if f else None for f in failed],
            "reasoning": pa.array([f"r{i}" for i in rows], pa.large_string()),
            "response": [f"raw {i}" for i in rows],
        }
    )


def _submission(root: Path, n: int = 2000) -> tuple[BatchStorageLayout, list[str]]:
    """A submission of ``n`` rows: every 7th answered by the store (two earlier batches), the
    rest sent in batches of 600; every 10th fails once and goes to a follow-up, where every
    20th fails again; rows 5 and 6 answered by no batch at all."""
    layout = BatchStorageLayout(str(root))
    submissions, store = Submissions(layout), AnswerStore(layout)
    ids = [f"id-{(i * 7919) % 100_003:06d}-{i}" for i in range(n)]  # not in sorted order
    keys = [_key(i % (n - 40)) for i in range(n)]  # rows 40 apart at the ends: one request
    cached = [i for i in range(n) if i % 7 == 0]
    paid_by: dict[int, str] = {}
    for b in (0, 1):
        rows = [i for i in cached if i % 2 == b]
        store.add(
            f"old-{b}",
            _results(rows, [f"x{i}" for i in range(n)], 1, lambda i: False),
            pa.table({"custom_id": [f"x{i}" for i in rows], "key": [keys[i] for i in rows]}),
        )
        paid_by.update(dict.fromkeys(rows, f"old-{b}"))
    paid_by[14] = "old-1"  # named wrongly: found in the other batch's answers
    submissions.write_inputs(
        "sub",
        pa.table(
            {
                "custom_id": ids,
                "text": [f"text {i}" for i in range(n)],
                "key": keys,
                "cached_batch_id": pa.array([paid_by.get(i) for i in range(n)], pa.string()),
            }
        ),
    )
    sent = [i for i in range(n) if i not in paid_by and i not in (5, 6)]
    for c in range(0, len(sent), 600):
        rows = sent[c : c + 600]
        for attempt, batch_rows, fails in (
            (1, rows, lambda i: i % 10 == 3),
            (2, [i for i in rows if i % 10 == 3], lambda i: i % 20 == 3),
        ):
            batch_id = f"{'ab'[attempt - 1]}-{c}"
            path = layout.results_parquet(batch_id)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(_results(batch_rows, ids, attempt, fails), path, row_group_size=97)
            submissions.record(BatchRecord("sub", batch_id, attempt, None, len(batch_rows)))
    return layout, ids


def test_the_final_table_is_the_same_in_small_windows_as_in_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout, ids = _submission(tmp_path / "store")
    whole = assemble_final(layout, "sub")
    one = pq.read_table(whole.destination)
    monkeypatch.setattr(final_table, "_WINDOW_ROWS", (128, 128))
    monkeypatch.setattr(final_table, "_SLICE_ROWS", 50)
    windowed = assemble_final(layout, "sub")
    table = pq.read_table(windowed.destination)
    assert table.equals(one) and windowed == whole
    assert pq.ParquetFile(windowed.destination).metadata.num_row_groups == -(-len(ids) // 128)

    assert table["custom_id"].to_pylist() == ids  # input order
    assert table.schema.field("reasoning").type == pa.string()
    assert "response" not in table.column_names
    for i, row in enumerate(table.to_pylist()):
        if i % 7 == 0:
            assert (row["status"], row["attempts"], row["cached"]) == ("succeeded", 0, True)
            assert row["batch_id"] == f"old-{i % 2}"
        elif i in (5, 6):
            assert (row["status"], row["attempts"], row["cached"]) == ("missing", None, None)
        elif i % 20 == 3:
            assert (row["status"], row["attempts"], row["error_code"]) == (
                "failed",
                2,
                "server_error",
            )
        elif i % 10 == 3:
            assert (row["status"], row["attempts"], row["content"]) == (
                "succeeded",
                2,
                f"answer {i} try 2",
            )
        else:
            assert (row["status"], row["attempts"], row["cached"]) == ("succeeded", 1, False)
    assert windowed.n_cached == len(range(0, len(ids), 7))
    assert windowed.counts == {
        s: table["status"].to_pylist().count(s) for s in set(table["status"].to_pylist())
    }
    assert windowed.tokens_by_model["m"]["completion_tokens"] == sum(
        r["attempts"] for r in table.to_pylist() if r["cached"] is False
    )


def test_lookup_names_the_batch_that_paid_once_per_key(tmp_path: Path) -> None:
    layout, _ = _submission(tmp_path / "store", n=300)
    store = AnswerStore(layout)
    wanted = pa.array([_key(0), _key(7), _key(7), _key(14), _key(1), None], pa.string())
    found = store.lookup(wanted)
    assert sorted(
        zip(found["key"].to_pylist(), found["batch_id"].to_pylist(), strict=True)
    ) == sorted([(_key(0), "old-0"), (_key(7), "old-1"), (_key(14), "old-0")])
    assert store.lookup(pa.array([], pa.string())).num_rows == 0
    empty = AnswerStore(BatchStorageLayout(str(tmp_path / "nothing-yet")))
    assert empty.lookup(wanted).num_rows == 0
