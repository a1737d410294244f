"""The example project in the Dagster UI, driven in a real browser (Debian's Chromium, through
Playwright) as a user would: the asset graph, Materialize on the submit asset and its input, the
submit run, the results run the daemon's sensor launches, the results partition with its metadata
and its checks, a screenshot at each step (``scripts.screenshots`` holds the walk through; ``make
screenshots`` retakes the pictures in docs/images with it).

What the browser showed is then checked against the Dagster instance and the files written.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from example_project.pipeline import N_REVIEWS
from scripts.screenshots import (
    CHECKS,
    RESULTS_ASSET,
    SENSOR,
    SHOTS,
    browser_unavailable,
    chromium_page,
    running_example_ui,
    walk_through,
)

# Real processes (emulator, webserver, daemon, runs, a browser): `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_a_user_materialises_the_submit_and_finds_checked_results_in_the_ui(
    tmp_path: Path,
) -> None:
    reason = browser_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs Chromium (make install), yet: {reason}")
        pytest.skip(reason)

    shots = tmp_path / "screenshots"
    with running_example_ui(tmp_path / "ui") as ui, chromium_page() as page:
        seen = walk_through(page, ui, shots)
    print(f"Screenshots: {shots}")

    # A screenshot for every step, each a real picture.
    assert [shot.name for shot in seen.shots] == [f"{name}.png" for name in SHOTS]
    for shot in seen.shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    with dg.DagsterInstance.from_config(str(ui.dagster_home)) as instance:
        # The one batch the Materialize click made is the partition the browser opened.
        assert instance.get_dynamic_partitions("reviews_batches") == [seen.batch_id]
        results_key = dg.AssetKey(RESULTS_ASSET)
        assert instance.get_materialized_partitions(results_key) == {seen.batch_id}

        runs = instance.get_runs()
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        # One run from the button, one from the sensor: nothing launched twice.
        [submit] = [run for run in runs if "dagster/sensor_name" not in run.tags]
        assert submit.asset_selection == {dg.AssetKey("reviews"), dg.AssetKey("reviews_batches")}
        [results] = [run for run in runs if run.tags.get("dagster/sensor_name") == SENSOR]
        assert results.run_id.startswith(seen.results_run)
        assert results.tags["dagster/partition"] == seen.batch_id

        logs = instance.all_logs(results.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        evaluations = [
            entry.dagster_event.event_specific_data for entry in logs if entry.dagster_event
        ]
        passed = {
            e.check_name: e.passed for e in evaluations if isinstance(e, dg.AssetCheckEvaluation)
        }
        assert passed == dict.fromkeys(CHECKS, True)

    # The partition's Parquet: one row per review, every one answered.
    parquet = ui.output_dir / "results" / f"batch_id={seen.batch_id}" / "part-0.parquet"
    table = pq.read_table(parquet)
    assert table.num_rows == N_REVIEWS
    assert set(table.column("status").to_pylist()) == {"succeeded"}
