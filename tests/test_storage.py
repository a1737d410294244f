"""The storage layer (dagster_together.storage): locations and the one atomic-publish mechanism.

The failure cases over real S3 (moto), a real full disk and a real SIGKILL are in
test_reliability_storage.py and test_reliability_crash.py; these are the mechanism's own rules.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from dagster_together.storage import (
    ParquetParts,
    commit_all,
    filesystem,
    is_local,
    join,
    open_pending,
    parent,
    publish_file,
)


def test_locations_keep_the_form_given(tmp_path: Path) -> None:
    assert join("s3://bucket/a/", "b", "c.jsonl") == "s3://bucket/a/b/c.jsonl"
    assert join(str(tmp_path), "b", "c.jsonl") == os.path.join(str(tmp_path), "b", "c.jsonl")
    assert parent("s3://bucket/a/b.parquet") == "s3://bucket/a"
    assert parent("rel/b.parquet") == os.path.abspath("rel")
    assert is_local(filesystem(str(tmp_path))[0])
    assert is_local(filesystem(f"file://{tmp_path}")[0])
    assert not is_local(filesystem("memory://x/y")[0])


def test_nothing_appears_before_the_commit(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "out.jsonl"
    with open_pending(str(dest)) as out:
        out.write(b"hello ")
        out.write(b"world")
        assert not dest.exists()
        [part] = list(dest.parent.iterdir())
        assert part.name.startswith(".out.jsonl.") and part.name.endswith(".part")
    assert dest.read_bytes() == b"hello world"
    assert [p.name for p in dest.parent.iterdir()] == ["out.jsonl"]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_an_exception_leaves_the_old_file(tmp_path: Path, where: str) -> None:
    dest = str(tmp_path / "out.jsonl") if where == "local" else f"memory://{tmp_path.name}/o.jsonl"
    publish_file(_file(tmp_path / "old", b"old"), dest)
    with pytest.raises(RuntimeError), open_pending(dest) as out:
        out.write(b"new, but never finished")
        raise RuntimeError("boom")
    fs, path = filesystem(dest)
    if where == "local":
        assert fs.cat(path) == b"old" and sorted(os.listdir(tmp_path)) == ["old", "out.jsonl"]
    else:
        # memory:// files are visible as soon as they are opened: the partial one is removed.
        assert not fs.exists(path)


def test_restart_and_abort_after_commit(tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"
    out = open_pending(str(dest), buffering=0)
    out.write(b"first try")
    out.restart()
    out.write(b"second")
    out.commit()
    out.abort()  # safe in a finally: nothing after a commit
    assert dest.read_bytes() == b"second"


@pytest.mark.parametrize("where", ["local", "memory"])
def test_parquet_parts_appear_whole_at_the_commit(tmp_path: Path, where: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = (
        str(tmp_path / "t.parquet") if where == "local" else f"memory://{tmp_path.name}/t.parquet"
    )
    fs, path = filesystem(dest)
    parts = ParquetParts(dest, row_group_size=2)
    assert not parts.written
    for start in range(0, 5, 2):
        parts.write(pa.table({"n": list(range(start, min(start + 2, 5)))}))
        assert not fs.exists(path)
    parts.commit()
    parts.abort()  # safe in a finally: nothing after a commit
    with fs.open(path, "rb") as f:
        file = pq.ParquetFile(f)
        assert file.read().column("n").to_pylist() == [0, 1, 2, 3, 4]
        assert file.metadata.num_row_groups == 3
    dropped = ParquetParts(str(tmp_path / "dropped.parquet"))
    dropped.write(pa.table({"n": [1]}))
    dropped.abort()
    empty = ParquetParts(str(tmp_path / "empty.parquet"))
    with pytest.raises(ValueError, match="nothing was written"):
        empty.commit()
    empty.abort()
    assert not (tmp_path / "dropped.parquet").exists() and not (tmp_path / "empty.parquet").exists()


def test_staged_upload_sends_nothing_before_the_commit(tmp_path: Path) -> None:
    dest = f"memory://staged-{tmp_path.name}/out.parquet"
    fs = fsspec.filesystem("memory")
    out = open_pending(dest, stage_locally=True)
    assert out.local_path is not None
    Path(out.local_path).write_bytes(b"written by path")  # as pyarrow does
    assert not fs.exists(dest)
    out.commit()
    assert fs.cat(dest) == b"written by path"
    assert not os.path.exists(out.local_path)  # the local copy is gone


def test_commit_all_leaves_no_half_set(tmp_path: Path) -> None:
    names = ["a.jsonl", "b.jsonl", "c.jsonl"]
    files = [open_pending(str(tmp_path / n)) for n in names]
    for f in files:
        f.write(b"x")
    (tmp_path / "b.jsonl").mkdir()  # the second commit fails: a directory is in the way
    (tmp_path / "b.jsonl" / "keep").write_text("")
    with pytest.raises(OSError):
        commit_all(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl"]  # a removed, c aborted


def test_a_killed_writers_part_file_is_swept_a_live_one_is_not(tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"
    dead = tmp_path / ".out.jsonl.0123456789abcdef.part"
    dead.write_bytes(b"left by a killed process")  # nobody holds its lock
    live = open_pending(str(dest))  # sweeps the dead one, holds its own lock
    assert not dead.exists()
    second = open_pending(str(dest))  # must not sweep the live one
    assert live.local_path is not None and os.path.exists(live.local_path)
    second.abort()
    live.write(b"live")
    live.commit()
    assert dest.read_bytes() == b"live"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def _file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)
