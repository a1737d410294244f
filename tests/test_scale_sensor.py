"""200 batches in flight (10,000,000 requests at 50,000 a batch): a sensor tick is still one
``GET /batches`` over real HTTP, and once every batch ended at once its cursor (every batch
launched, none materialised yet: the most it ever holds) stays far below 64 KB."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pyarrow as pa

from dagster_together.client import TogetherClient
from dagster_together.emulator import Emulator
from tests.helpers import SensorPipeline, request_line

N_BATCHES = 200
CURSOR_LIMIT = 64 * 1024


def test_two_hundred_batches_one_call_per_tick_and_a_small_cursor(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    # The list call carries no per-request data: the batches share one small request file.
    file_id = slow_emu.add_file(request_line().encode() + b"\n", purpose="batch-api")
    with TogetherClient(api_key, slow_emu.base_url) as client:
        ids = [
            client.batches.create_batch(file_id, endpoint="/v1/chat/completions").id
            for _ in range(N_BATCHES)
        ]
    p = SensorPipeline(
        slow_emu, api_key, instance, tmp_path / "store", pa.table({"id": [], "text": []})
    )
    instance.add_dynamic_partitions(p.bundle.partitions_def.name, ids)

    slow_emu.clear_requests()
    started = time.monotonic()
    result = p.evaluate_sensor()
    assert time.monotonic() - started < 10  # about 0.1 s on a quiet machine; the bench row says
    assert [(r.method, r.path) for r in slow_emu.requests] == [("GET", "/v1/batches")]
    assert isinstance(result, dg.SensorResult) and not result.run_requests

    for batch_id in ids:
        slow_emu.set_batch_status(batch_id, "COMPLETED")
    slow_emu.clear_requests()
    result = p.evaluate_sensor()
    assert [(r.method, r.path) for r in slow_emu.requests] == [("GET", "/v1/batches")]
    assert isinstance(result, dg.SensorResult)
    assert sorted(r.partition_key for r in result.run_requests or []) == sorted(ids)
    assert p.cursor is not None
    assert len(p.cursor.encode()) < CURSOR_LIMIT / 4, len(p.cursor)  # about 60 bytes a batch
