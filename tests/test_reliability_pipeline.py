"""Reliability of the Dagster pipeline: outages across sensor ticks, every terminal shape of a
batch, and malformed answer files, over a real instance, real HTTP and the results asset.

Promises proved here (see docs/reliability.md):

* the API refusing connections for a moment inside a tick is absorbed by the tick's one retry;
* the API down for several ticks (503s, then connection refused) while batches finish: once it is
  back every finished batch gets exactly one results run and exactly one materialisation;
* whatever way a batch ends (COMPLETED with every request failed and no output file, FAILED in
  validation, COMPLETED with no file at all, EXPIRED or CANCELLED part-way with failures among
  the done requests), the results Parquet has every input exactly once with the right status;
* malformed lines in an output file (junk, a non-object, a truncated last line) are reported
  with their line numbers, in the event log and the Python log, and never silently dropped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_together import ResultsOptions
from dagster_together.emulator import Emulator
from dagster_together.sensors import BATCH_STATUS_TAG
from tests.helpers import SensorPipeline, wait_terminal


def prompts_table(n: int, error_rows: tuple[int, ...] = ()) -> pa.Table:
    return pa.table(
        {
            "id": list(range(100, 100 + n)),
            "text": [
                f"prompt {i}" + (" EMULATE_ERROR" if i in error_rows else "") for i in range(n)
            ],
        }
    )


class Pipeline(SensorPipeline):
    """Prompts + submit + results + sensor on one emulator and one instance."""

    def __init__(
        self,
        emu: Emulator,
        api_key: str,
        instance: dg.DagsterInstance,
        store: Path,
        table: pa.Table,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            emu,
            api_key,
            instance,
            store,
            table,
            results=ResultsOptions(retry_policy=None),
            **kwargs,
        )

    def tick(self) -> dict[str, dg.RunRequest]:
        """One evaluation: the run requests it made, by partition."""
        result = self.evaluate_sensor()
        if not isinstance(result, dg.SensorResult):
            return {}
        return {r.partition_key: r for r in result.run_requests or [] if r.partition_key}

    def launch(self, requests: dict[str, dg.RunRequest]) -> None:
        """Run what the sensor asked for, as the daemon would (its job, partition and tags)."""
        job = self.defs.resolve_job_def(self.bundle.results_job.name)
        for batch_id, request in requests.items():
            result = job.execute_in_process(
                instance=self.instance, partition_key=batch_id, tags=dict(request.tags)
            )
            assert result.success

    def materialise_results(self, batch_id: str) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [self.bundle.results_asset],
            partition_key=batch_id,
            instance=self.instance,
            resources=self.resources,
        )

    def materialisations(self) -> dict[str, int]:
        records = self.instance.fetch_materializations(self.bundle.results_asset.key, limit=1000)
        counts: dict[str, int] = {}
        for record in records.records:
            counts[str(record.partition_key)] = counts.get(str(record.partition_key), 0) + 1
        return counts


# ---------------------------------------------------------------------------------------------
# Sensor ticks against an API that goes away
# ---------------------------------------------------------------------------------------------
def test_connection_refused_for_a_moment_inside_a_tick_is_absorbed(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """Promise: the API refusing connections for a moment during a tick costs nothing: the
    tick's one retry (after ~0.4 s of backoff) reaches the API and the finished batch is
    requested in that same tick."""
    p = Pipeline(slow_emu, api_key, instance, tmp_path / "store", prompts_table(1))
    [batch_id] = p.submit()
    slow_emu.set_batch_status(batch_id, "COMPLETED")
    slow_emu.stop()
    back = threading.Timer(0.1, slow_emu.start)  # back well before the retry (>= 0.375 s)
    back.start()
    try:
        requested = p.tick()
    finally:
        back.join()
    assert {k: r.tags[BATCH_STATUS_TAG] for k, r in requested.items()} == {batch_id: "COMPLETED"}


# Four failing ticks, each spending the sensor's real retry backoff: seconds.
@pytest.mark.slow
def test_api_down_for_several_ticks_each_finished_batch_gets_exactly_one_run(
    slow_emu: Emulator, api_key: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """Promise: with the API down for several ticks (503s, then connection refused) while
    batches finish, nothing is lost and nothing doubles: once the API is back every finished
    batch is requested once, its run materialises it once, and later ticks request nothing."""
    p = Pipeline(
        slow_emu, api_key, instance, tmp_path / "store", prompts_table(4), max_requests_per_batch=1
    )
    b = p.submit()
    assert len(b) == 4
    requested: list[str] = []

    slow_emu.set_batch_status(b[0], "COMPLETED")
    first = p.tick()
    requested += first
    p.launch(first)

    # Down: two ticks of 503s, two of connection refused; batches finish meanwhile.
    slow_emu.add_fault(method="GET", path=r"^/v1/batches$", status=503, times=None)
    for _ in range(2):
        with pytest.raises(Exception, match="batches"):
            p.tick()
    slow_emu.set_batch_status(b[1], "FAILED")
    slow_emu.set_batch_status(b[2], "CANCELLED", done_fraction=0.5)
    slow_emu.clear_faults()
    slow_emu.stop()
    for _ in range(2):
        with pytest.raises(Exception, match="batches"):
            p.tick()
    slow_emu.start()

    back = p.tick()
    assert {k: r.tags[BATCH_STATUS_TAG] for k, r in back.items()} == {
        b[1]: "FAILED",
        b[2]: "CANCELLED",
    }
    requested += back
    p.launch(back)
    slow_emu.set_batch_status(b[3], "EXPIRED", done_fraction=0.25)
    last = p.tick()
    requested += last
    p.launch(last)
    for _ in range(2):
        assert p.tick() == {}

    assert sorted(requested) == sorted(b)  # each batch requested exactly once
    assert p.materialisations() == dict.fromkeys(b, 1)  # and materialised exactly once


# ---------------------------------------------------------------------------------------------
# Every way a batch can end -> every input, once, with the right status
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ending:
    id: str
    error_rows: tuple[int, ...]  # rows whose prompt asks the emulator to fail
    force: tuple[str, float]  # (status, done_fraction) the batch ends with
    statuses: tuple[str, ...]  # expected status of rows 0..5
    complete: bool = True  # the completeness check's verdict
    files: tuple[bool, bool] = (False, False)  # (output file, error file) the job has


# Batch k (1-based) holds custom_ids k00..k05. The emulator fails every request whose id matches
# FAIL_PATTERN (batch 2) and every prompt with EMULATE_ERROR; batches stay VALIDATING until
# forced, so FAILED really happens in validation.
FAIL_PATTERN = r"^2\d\d$"
ENDINGS = [
    Ending(
        "COMPLETED, every request failed (EMULATE_ERROR): no output file",
        error_rows=tuple(range(6)),
        force=("COMPLETED", 1.0),
        statuses=("failed",) * 6,
        files=(False, True),
    ),
    Ending(
        "COMPLETED, every request failed (fail_pattern): no output file",
        error_rows=(),
        force=("COMPLETED", 1.0),
        statuses=("failed",) * 6,
        files=(False, True),
    ),
    Ending(
        "FAILED in validation: no file at all",
        error_rows=(),
        force=("FAILED", 0.0),
        statuses=("missing",) * 6,
    ),
    Ending(
        "COMPLETED with no file at all",
        error_rows=(),
        force=("COMPLETED", 0.0),
        statuses=("missing",) * 6,
        complete=False,  # a COMPLETED batch owes an answer per request: flagged
    ),
    Ending(
        "EXPIRED half-way, with failures among the done",
        error_rows=(1, 4),
        force=("EXPIRED", 0.5),
        statuses=("succeeded", "failed", "succeeded", "expired", "expired", "expired"),
        files=(True, True),
    ),
    Ending(
        "CANCELLED half-way, with failures among the done",
        error_rows=(1, 4),
        force=("CANCELLED", 0.5),
        statuses=("succeeded", "failed", "succeeded", "cancelled", "cancelled", "cancelled"),
        files=(True, True),
    ),
    Ending(
        "CANCELLED before any request ran",
        error_rows=(),
        force=("CANCELLED", 0.0),
        statuses=("cancelled",) * 6,
    ),
]
ENDINGS_KEY = "tgp-reliability-endings-key"


@pytest.fixture(scope="module")
def ended(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pipeline, list[str]]]:
    """One submit of 7 batches of 6 requests, each then ended one way (one submit run instead
    of seven keeps this file fast)."""
    rows = [(k * 100 + i, i in e.error_rows) for k, e in enumerate(ENDINGS, 1) for i in range(6)]
    table = pa.table(
        {
            "id": [i for i, _ in rows],
            "text": [f"prompt {i}" + (" EMULATE_ERROR" if bad else "") for i, bad in rows],
        }
    )
    with (
        Emulator(
            api_key=ENDINGS_KEY, validate_seconds=3600, run_seconds=3600, fail_pattern=FAIL_PATTERN
        ) as emu,
        dg.instance_for_test() as instance,
    ):
        store = tmp_path_factory.mktemp("endings") / "store"
        p = Pipeline(emu, ENDINGS_KEY, instance, store, table, max_requests_per_batch=6)
        ids = p.submit()
        assert len(ids) == len(ENDINGS)
        assert {b["status"] for b in emu.batches()} == {"VALIDATING"}
        for batch_id, ending in zip(ids, ENDINGS, strict=True):
            emu.set_batch_status(batch_id, ending.force[0], done_fraction=ending.force[1])
        yield p, ids


@pytest.mark.parametrize("k", range(len(ENDINGS)), ids=[e.id for e in ENDINGS])
def test_every_way_a_batch_ends_gives_every_input_once_with_its_status(
    ended: tuple[Pipeline, list[str]], k: int
) -> None:
    """Promise: whatever way a batch ends, the results asset writes one row per input, in
    input order, with the right status, counts and error text; nothing crashes."""
    p, ids = ended
    ending, batch_id = ENDINGS[k], ids[k]
    [job] = [b for b in p.emu.batches() if b["id"] == batch_id]
    assert job["status"] == ending.force[0]
    assert (bool(job["output_file_id"]), bool(job["error_file_id"])) == ending.files

    result = p.materialise_results(batch_id)
    assert result.success
    [mat] = [
        m
        for m in result.asset_materializations_for_node(p.bundle.results_asset.node_def.name)
        if m.asset_key == p.bundle.results_asset.key
    ]
    meta = {key.removeprefix("together/"): value.value for key, value in mat.metadata.items()}
    table = pq.read_table(p.bundle.layout.results_parquet(batch_id))
    assert table["custom_id"].to_pylist() == [str((k + 1) * 100 + i) for i in range(6)]
    assert tuple(table["status"].to_pylist()) == ending.statuses
    assert meta["dagster/row_count"] == 6 and meta["batch_status"] == ending.force[0]
    for status in set(ending.statuses):
        assert meta[f"n_{status}"] == ending.statuses.count(status)
    for row in table.to_pylist():
        if row["status"] == "failed":
            assert row["error"]  # the API's message, not just a status
        if row["status"] == "succeeded":
            assert row["content"]
    if job["error"]:
        assert meta["batch_error"] == job["error"]
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["completeness"].passed is ending.complete


# ---------------------------------------------------------------------------------------------
# Malformed lines in an output file
# ---------------------------------------------------------------------------------------------
def test_malformed_output_lines_are_reported_with_their_line_numbers(
    emulator: Any,
    api_key: str,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Promise: junk, a non-object and a truncated last line in Together's output file are
    reported with their line numbers (completeness check metadata in the event log, and a
    warning per line in the Python log), the rows they would have answered are 'missing',
    the check fails, and every other line is joined."""
    p = Pipeline(emulator, api_key, instance, tmp_path / "store", prompts_table(5))
    [batch_id] = p.submit()
    wait_terminal(emulator, [batch_id])
    [job] = emulator.batches()
    stored = Path(emulator.data_dir) / "files" / job["output_file_id"]
    good = stored.read_bytes().splitlines(keepends=True)
    assert len(good) == 5
    truncated_id = json.loads(good[4])["custom_id"]
    # Together serving a damaged file: lines 2 and 5 are junk, line 7 is cut short.
    stored.write_bytes(
        good[0]
        + b"<html>502 Bad Gateway</html>\n"
        + good[1]
        + good[2]
        + b'["not", "a result"]\n'
        + good[3]
        + good[4][: len(good[4]) // 2]
    )

    caplog.set_level(logging.WARNING, logger="dagster_together")
    result = p.materialise_results(batch_id)
    assert result.success
    table = pq.read_table(p.bundle.layout.results_parquet(batch_id))
    statuses = dict(zip(table["custom_id"].to_pylist(), table["status"].to_pylist(), strict=True))
    assert len(statuses) == 5
    assert statuses.pop(truncated_id) == "missing"
    assert set(statuses.values()) == {"succeeded"}

    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "completeness"]
    assert not check.passed
    assert check.metadata["malformed_lines"].value == 3
    malformed = check.metadata["examples"].value["malformed"]
    assert [line_no for _, line_no, _ in malformed] == [2, 5, 7]
    assert all(location.endswith("output.jsonl") for location, _, _ in malformed)

    # In the run's event log (what the UI shows), not only in the returned result.
    logged = " ".join(dg.serialize_value(entry) for entry in instance.all_logs(result.run_id))
    assert '"malformed_lines"' in logged and "output.jsonl" in logged
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for line_no in (2, 5, 7):
        assert any(f"output.jsonl, line {line_no}:" in w for w in warnings), warnings
