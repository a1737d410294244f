"""Reliability: the process killed (SIGKILL, no cleanup runs) at the worst moments.

Promises proved here (see docs/reliability.md):

* killed in the middle of ``retrieve_content`` (local file or S3): nothing appears at the
  destination, the leftover is never taken for a result, and the next call writes a
  byte-identical file;
* killed in the middle of copying a batch's input to storage (``BatchStorageLayout.put_file``,
  local or S3): nothing appears where the input is expected, and the next copy writes it whole;
* killed between "batch created" and "batch recorded" in the submit asset: the next submit
  finds the batch and reuses it; Together holds exactly one batch.

Each test runs the victim in a child process against the emulator of the test process, waits
(bounded) for the exact moment, kills it with SIGKILL and always reaps it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import fsspec
import pyarrow as pa
import pytest

from dagster_together import TogetherResource, build_together_batch_defs
from dagster_together.client import TogetherClient
from dagster_together.requests import RequestTemplate
from dagster_together.storage import BatchStorageLayout
from tests.helpers import random_jsonl

# Each test starts a child Python that imports the package (dagster for the submit test) and
# SIGKILLs it at a chosen moment: real processes, seconds each. `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

MiB = 1024 * 1024
DEADLINE = 60.0  # seconds for a child to reach the kill point (imports included)


@contextmanager
def _child(code: str, *args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A Python child process that is always killed and reaped, whatever the test does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _wait_for(proc: subprocess.Popen[bytes], what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"child exited ({proc.returncode}) before {what}: {err[-2000:]!r}")
        time.sleep(0.02)
    raise AssertionError(f"child did not reach {what} within {DEADLINE} s")


def _sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


# ---------------------------------------------------------------------------------------------
# Killed in the middle of retrieve_content
# ---------------------------------------------------------------------------------------------
DOWNLOAD_CHILD = r"""
import json, os, sys
import dagster_together.client.download as download
from dagster_together.client import TogetherClient

args = json.loads(sys.argv[1])
for name, value in args.get("patch", {}).items():
    setattr(download, name, value)
# After the connection is cut the child sits in a long retry wait holding a partial download:
# that is where it gets killed.
with TogetherClient(
    os.environ["TOGETHER_API_KEY"], args["base_url"], max_retries=3, backoff_base=120,
    backoff_max=120,
) as client:
    client.files.retrieve_content(
        args["file_id"], output=args["output"], storage_options=args.get("storage_options"),
        progress=False,
    )
print("finished", flush=True)
"""


def _kill_mid_local_download(emulator: Any, api_key: str, out: Path, data: bytes) -> str:
    """Start a download of ``data`` to ``out`` in a child, SIGKILL it with 2 MB written."""
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="drop", after_bytes=2_000_000, times=1)
    args = {"base_url": emulator.base_url, "file_id": file_id, "output": str(out)}

    def partial_written() -> bool:
        if not out.parent.exists():
            return False
        return any(p.stat().st_size == 2_000_000 for p in out.parent.glob(f".{out.name}.*.part"))

    with _child(DOWNLOAD_CHILD, json.dumps(args), env={"TOGETHER_API_KEY": api_key}) as proc:
        _wait_for(proc, "a partial download on disk", partial_written)
        _sigkill(proc)
    return file_id


def test_killed_mid_download_local_next_run_starts_clean(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    """Promise: SIGKILL in the middle of a local download leaves nothing at the destination,
    the leftover temporary file is hidden and never read as a result, and the next
    retrieve_content writes a byte-identical file."""
    data = random_jsonl(6 * MiB)
    out = tmp_path / "store" / "batches" / "b1" / "output.jsonl"
    file_id = _kill_mid_local_download(emulator, api_key, out, data)

    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".output.jsonl.")
    assert leftovers[0].endswith(".part")
    # Globs and dataset readers that look for results do not see it (hidden, other suffix).
    assert fsspec.filesystem("file").glob(f"{tmp_path}/store/**/*.jsonl") == []

    with TogetherClient(api_key, emulator.base_url, backoff_base=0.01) as client:
        result = client.files.retrieve_content(file_id, output=out)
    assert result.size == len(data) and out.read_bytes() == data
    assert fsspec.filesystem("file").glob(f"{tmp_path}/store/**/*.jsonl") == [str(out)]


def test_killed_mid_download_local_leaves_no_litter_after_the_next_run(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    """Promise (not kept yet): after the next successful run, the directory holds only the
    result, not the partial file of the killed run."""
    data = random_jsonl(4 * MiB, seed=1)
    out = tmp_path / "output.jsonl"
    file_id = _kill_mid_local_download(emulator, api_key, out, data)
    with TogetherClient(api_key, emulator.base_url, backoff_base=0.01) as client:
        client.files.retrieve_content(file_id, output=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.jsonl"]


def _s3_client(s3_server: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def test_killed_mid_download_to_s3_next_run_starts_clean(
    emulator: Any, api_key: str, s3_server: Any, s3_bucket: str
) -> None:
    """Promise: SIGKILL in the middle of a multipart download to S3 leaves no object at the
    destination (only an invisible, incomplete multipart upload) and the next run writes a
    byte-identical object."""
    data = random_jsonl(12 * MiB + 3)
    file_id = emulator.add_file(data)
    emulator.add_fault(path=r"/content$", kind="drop", after_bytes=7_000_000, times=1)
    url = f"{s3_bucket}/batches/b1/output.jsonl"
    bucket = s3_bucket.removeprefix("s3://")
    s3 = _s3_client(s3_server)
    args = {
        "base_url": emulator.base_url,
        "file_id": file_id,
        "output": url,
        "storage_options": s3_server.storage_options,
        "patch": {"REMOTE_BLOCK_SIZE": 5 * MiB, "CHUNK_SIZE": 1 * MiB},
    }

    def part_uploaded() -> bool:
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return any(
            s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
            for u in uploads
        )

    with _child(DOWNLOAD_CHILD, json.dumps(args), env={"TOGETHER_API_KEY": api_key}) as proc:
        _wait_for(proc, "one part on S3", part_uploaded)
        _sigkill(proc)

    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    assert not fs.exists(url) and fs.find(s3_bucket) == []
    # Known limit: no code runs on SIGKILL, so the started multipart upload stays open (not an
    # object, not listed; a bucket lifecycle rule AbortIncompleteMultipartUpload reclaims it).
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1

    with TogetherClient(api_key, emulator.base_url, backoff_base=0.01) as client:
        result = client.files.retrieve_content(
            file_id, output=url, storage_options=s3_server.storage_options
        )
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    assert result.size == len(data) and fs.cat(url) == data


# ---------------------------------------------------------------------------------------------
# Killed in the middle of copying an input to storage (BatchStorageLayout.put_file)
# ---------------------------------------------------------------------------------------------
PUT_FILE_CHILD = r"""
import json, sys
from dagster_together.storage import BatchStorageLayout

args = json.loads(sys.argv[1])
layout = BatchStorageLayout(args["storage_url"], args.get("storage_options"))
layout.put_file(args["source"], layout.input_jsonl("b1"))
print("finished", flush=True)
"""


@contextmanager
def _stalled_source(tmp_path: Path, data: bytes) -> Iterator[Path]:
    """A named pipe that hands over ``data`` and then stalls without an end: a copy reading it
    is caught in the middle, with ``data`` read and the rest never coming."""
    fifo = tmp_path / "source.jsonl"
    os.mkfifo(fifo)
    # Read-write: opening never blocks, and the pipe stays open (no EOF) until the test ends.
    fd = os.open(fifo, os.O_RDWR)
    feeder = threading.Thread(target=os.write, args=(fd, data), daemon=True)
    feeder.start()  # blocks in the pipe until the child has read it all
    try:
        yield fifo
    finally:
        os.close(fd)
        feeder.join(10)


def _kill_mid_put_file(
    tmp_path: Path, storage_url: str, ready: Callable[[], bool], **extra: Any
) -> None:
    # 9 MiB: the copy reads and writes 8 MiB (one piece, one S3 part), then waits for more.
    with _stalled_source(tmp_path, random_jsonl(9 * MiB, seed=3)) as fifo:
        args = {"storage_url": storage_url, "source": str(fifo), **extra}
        with _child(PUT_FILE_CHILD, json.dumps(args), env={}) as proc:
            _wait_for(proc, "a partial copy", ready)
            _sigkill(proc)


def test_killed_mid_put_file_local_leaves_no_partial_input(tmp_path: Path) -> None:
    """Promise: SIGKILL in the middle of copying a batch's input to local storage leaves nothing
    at input.jsonl (only a hidden, unlocked part file that no reader takes for an input), and the
    next copy publishes the whole file and sweeps the leftover."""
    store = tmp_path / "store"
    out = store / "batches" / "b1" / "input.jsonl"

    def partial_written() -> bool:
        parts = out.parent.glob(".input.jsonl.*.part") if out.parent.exists() else []
        return any(p.stat().st_size == 8 * MiB for p in parts)

    _kill_mid_put_file(tmp_path, str(store), partial_written)
    assert not out.exists()
    [leftover] = [p.name for p in out.parent.iterdir()]
    assert leftover.startswith(".input.jsonl.") and leftover.endswith(".part")
    assert fsspec.filesystem("file").glob(f"{store}/**/*.jsonl") == []

    data = random_jsonl(3 * MiB, seed=4)
    source = tmp_path / "requests.jsonl"
    source.write_bytes(data)
    BatchStorageLayout(str(store)).put_file(str(source), str(out))
    assert out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["input.jsonl"]


def test_killed_mid_put_file_to_s3_leaves_no_object(
    tmp_path: Path, s3_server: Any, s3_bucket: str
) -> None:
    """Promise: SIGKILL in the middle of copying a batch's input to S3 leaves no object at
    input.jsonl (only an invisible, incomplete multipart upload), and the next copy writes it."""
    bucket = s3_bucket.removeprefix("s3://")
    s3 = _s3_client(s3_server)

    def part_uploaded() -> bool:
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return any(
            s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
            for u in uploads
        )

    store = f"{s3_bucket}/store"
    _kill_mid_put_file(tmp_path, store, part_uploaded, storage_options=s3_server.storage_options)
    layout = BatchStorageLayout(store, s3_server.storage_options)
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    assert not fs.exists(layout.input_jsonl("b1")) and fs.find(s3_bucket) == []
    # Known limit, as for a download: no code runs on SIGKILL, so the multipart upload stays
    # open (not an object; a bucket lifecycle rule AbortIncompleteMultipartUpload reclaims it).
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1

    data = random_jsonl(9 * MiB, seed=5)
    source = tmp_path / "requests.jsonl"
    source.write_bytes(data)
    layout.put_file(str(source), layout.input_jsonl("b1"))
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    assert fs.cat(layout.input_jsonl("b1")) == data


# ---------------------------------------------------------------------------------------------
# Killed between "batch created" and "batch recorded"
# ---------------------------------------------------------------------------------------------
SUBMIT_CHILD = r"""
import json, os, signal, sys
import dagster as dg
import pyarrow as pa
from dagster_together import TogetherResource, build_together_batch_defs
from dagster_together.client.batches import Batches
from dagster_together.requests import RequestTemplate

store = sys.argv[1]
real_create = Batches.create_batch

def create_then_die(self, *args, **kwargs):
    job = real_create(self, *args, **kwargs)  # Together has the batch now...
    print(f"created {job.id}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # ...and Dagster never hears of it

Batches.create_batch = create_then_die

@dg.asset(name="reviews")
def reviews() -> pa.Table:
    return pa.table({"review_id": [1, 2, 3], "text": ["good", "bad", "fine"]})

bundle = build_together_batch_defs(
    name="reviews", prompts=reviews, storage=store, id_column="review_id",
    template=RequestTemplate(model="m", prompt_column="text"),
)
instance = dg.DagsterInstance.get()  # DAGSTER_HOME, shared with the test process
dg.materialize([reviews, bundle.submit_asset], instance=instance,
               resources={"together": TogetherResource()})
print("not killed", flush=True)
"""


def test_killed_between_batch_created_and_recorded_next_submit_reuses_it(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    """Promise: SIGKILL right after Together created a batch, before Dagster recorded it, is
    healed by the next submit: it finds and reuses that batch, and Together holds one batch."""
    home, store = tmp_path / "dagster_home", tmp_path / "store"
    home.mkdir()
    env = {
        "DAGSTER_HOME": str(home),
        "TOGETHER_API_KEY": api_key,
        "TOGETHER_BASE_URL": emulator.base_url,
        # The killed submit cannot clean its temp dir: keep it inside tmp_path, not /tmp.
        "TMPDIR": str(tmp_path),
    }
    with _child(SUBMIT_CHILD, str(store), env=env) as proc:
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    created = out.decode().split()
    assert created[0] == "created", out
    batch_id = created[1]
    assert [b["id"] for b in emulator.batches()] == [batch_id]

    @dg.asset(name="reviews")
    def reviews() -> pa.Table:  # the same prompts as the killed run
        return pa.table({"review_id": [1, 2, 3], "text": ["good", "bad", "fine"]})

    bundle = build_together_batch_defs(
        name="reviews",
        prompts=reviews,
        storage=str(store),
        id_column="review_id",
        template=RequestTemplate(model="m", prompt_column="text"),
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_dynamic_partitions(bundle.partitions_def.name) == []  # not recorded
        result = dg.materialize(
            [reviews, bundle.submit_asset],
            instance=instance,
            resources={"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)},
        )
        [mat] = result.asset_materializations_for_node(bundle.submit_asset.node_def.name)
        meta = {k.removeprefix("together/"): v.value for k, v in mat.metadata.items()}
        assert meta["batch_ids"] == [batch_id]
        assert meta["n_reused"] == 1 and meta["n_created"] == 0
        assert instance.get_dynamic_partitions(bundle.partitions_def.name) == [batch_id]
    assert [b["id"] for b in emulator.batches()] == [batch_id]  # one batch, one bill
    posts = [r for r in emulator.requests if r.method == "POST" and r.path == "/v1/batches"]
    assert len(posts) == 1
