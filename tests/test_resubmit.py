"""Automatic resubmission over real HTTP, driven like the daemon drives it (sensor ticks, results
runs for what they request): retryable failures and the rows an EXPIRED batch lost go into
follow-up batches (each its own partition, parent in metadata), fatal ones do not, and once every
batch of the submission has ended the final table has one row per input with its final status
and attempts. The emulator's received request files prove what each follow-up contained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from dagster_together.emulator import Emulator
from dagster_together.submissions import Submissions
from tests.helpers import SensorPipeline

N = 1000
PER_BATCH = 250
RETRYABLE = "EMULATE_ERROR_ONCE:rate_limit_exceeded"  # fails once, then answers
FATAL = "EMULATE_ERROR:context_length_exceeded"  # fails every time; never retried


def _text(i: int) -> str:
    if i % 10 == 3:
        return f"question {i} {RETRYABLE}"
    if i % 50 == 7:
        return f"question {i} {FATAL}"
    return f"question {i}"


def _table() -> pa.Table:
    return pa.table({"id": [f"q{i:04d}" for i in range(N)], "text": [_text(i) for i in range(N)]})


class Driver(SensorPipeline):
    """The pipeline, its sensor ticked and its results runs executed as the daemon would."""

    def results_run(self, batch_id: str, **kwargs: Any) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def("docs_results_job")
        return job.execute_in_process(instance=self.instance, partition_key=batch_id, **kwargs)

    def ended(self) -> set[str]:
        return {b["id"] for b in self.emu.batches() if b["status"] != "IN_PROGRESS"}

    def run_until_final(self, submission_id: str, rounds: int = 10) -> dict[str, Any]:
        layout = self.bundle.layout
        for _ in range(rounds):
            # Follow-ups the results runs created: Together finishes them.
            for batch in self.emu.batches():
                if batch["status"] == "IN_PROGRESS":
                    self.emu.set_batch_status(batch["id"], "COMPLETED")
            tick = self.evaluate_sensor()
            for request in tick.run_requests or [] if isinstance(tick, dg.SensorResult) else []:
                assert self.results_run(request.partition_key, tags=request.tags).success
            if layout.exists(layout.final_parquet(submission_id)):
                return {"final": pq.read_table(layout.final_parquet(submission_id))}
        raise AssertionError("the submission never completed")


def _expected(i: int, expired: bool) -> tuple[str, int]:
    """(final status, attempts) of row ``i``; ``expired``: lost to the EXPIRED batch first.

    The emulator answers a whole batch when it starts and hands back a part when it expires,
    so a request lost to expiry has had its one failure already: its follow-up answers it.
    """
    if expired:
        return ("failed", 2) if i % 50 == 7 else ("succeeded", 2)
    if i % 10 == 3:
        return "succeeded", 2
    if i % 50 == 7:
        return "failed", 1
    return "succeeded", 1


def test_retryable_fatal_and_expired_rows_end_in_one_final_table(
    api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    with Emulator(api_key=api_key, validate_seconds=0.0, run_seconds=3600) as emu:
        p = Driver(emu, api_key, instance, tmp_path / "store", _table(), PER_BATCH)
        first = p.submit()
        assert len(first) == N // PER_BATCH
        submission_id = Submissions(p.bundle.layout).of_batch(first[0]).submission_id  # type: ignore[union-attr]
        for batch_id in first[:-1]:
            emu.set_batch_status(batch_id, "COMPLETED")
        # The last batch runs out of time with half of its requests done.
        emu.set_batch_status(first[-1], "EXPIRED", done_fraction=0.5)
        final = p.run_until_final(submission_id)["final"]
        # What Together received, batch by batch: the custom_ids of each request file.
        received = {
            b["id"]: {
                json.loads(line)["custom_id"]
                for line in emu.file_content(b["input_file_id"]).splitlines()
                if line.strip()
            }
            for b in emu.batches()
        }

    # One row per input row, in input order, each with its final status and attempts.
    assert final["id"].to_pylist() == [f"q{i:04d}" for i in range(N)]
    half = N - PER_BATCH // 2
    for i, row in enumerate(final.to_pylist()):
        status, attempts = _expected(i, expired=i >= half)
        assert (row["status"], row["attempts"]) == (status, attempts), (i, row)
        assert row["cached"] is False
        if status == "failed":
            assert row["error_code"] == "context_length_exceeded"
        else:
            assert row["content"]

    # Each follow-up contained exactly the rows it should (fatal ones never went again).
    records = Submissions(p.bundle.layout).batches(submission_id)
    by_parent = {r.parent_batch_id: r.batch_id for r in records if r.parent_batch_id}
    ids = [f"q{i:04d}" for i in range(N)]
    retryable = {ids[i] for i in range(N) if i % 10 == 3}
    for k, batch_id in enumerate(first):
        rows = set(ids[k * PER_BATCH : (k + 1) * PER_BATCH])
        lost = {ids[i] for i in range(half, N)} if batch_id == first[-1] else set()
        expected = (rows & retryable) | lost
        assert received[by_parent[batch_id]] == expected, batch_id
    assert len(records) == len(received) == 4 + 4  # every follow-up answered all it retried
    # Every follow-up is its own partition, its parent in metadata.
    assert set(instance.get_dynamic_partitions(p.bundle.partitions_def.name)) == set(received)


def test_a_request_that_keeps_failing_stops_at_max_attempts(
    api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    from dagster_together import ResubmitOptions

    table = pa.table(
        {"id": ["a", "b"], "text": ["fine", "always EMULATE_ERROR:rate_limit_exceeded"]}
    )
    with Emulator(api_key=api_key, validate_seconds=0.0, run_seconds=3600) as emu:
        p = Driver(
            emu,
            api_key,
            instance,
            tmp_path / "store",
            table,
            resubmit=ResubmitOptions(max_attempts=2),
        )
        [batch_id] = p.submit()
        submission_id = Submissions(p.bundle.layout).of_batch(batch_id).submission_id  # type: ignore[union-attr]
        final = p.run_until_final(submission_id)["final"]
        assert len(emu.batches()) == 2  # the batch and one follow-up, no third
    rows = {r["id"]: r for r in final.to_pylist()}
    assert (rows["a"]["status"], rows["a"]["attempts"]) == ("succeeded", 1)
    assert (rows["b"]["status"], rows["b"]["attempts"]) == ("failed", 2)
    assert rows["b"]["error_code"] == "rate_limit_exceeded"
