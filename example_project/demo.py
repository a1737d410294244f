"""``make demo``: the example pipeline end to end, as a user would see it.

1. **Submit**: ``reviews_submit_job`` materialises ``reviews`` (300 product reviews) and
   ``reviews_batches`` (upload + one Together batch), on a persistent Dagster instance.
2. **Watch**: the example's real batch sensor is evaluated once a second, exactly as the daemon
   would (its cursor carried from tick to tick, its progress lines printed); every run request
   it makes is executed as a run of ``reviews_results_job`` for that batch's partition, with the
   request's tags.
3. **Results**: a few joined rows and the count per status, then, as the very last line,
   ``results: <path or URL of the batch's Parquet file>`` (the submit makes one batch for 300
   reviews; were there several, the line names the hive dataset directory ``.../results``).

Where things go: the Dagster instance in ``$DAGSTER_HOME`` (default ``.demo/dagster_home``, so
``make dev`` afterwards shows the same runs and materialisations), the files in
``$TOGETHER_OUTPUT_URL`` (default ``.demo/data``). With no ``TOGETHER_BASE_URL`` the local
emulator is used (started for the demo and stopped at the end, unless it was already running);
with ``TOGETHER_BASE_URL`` and ``TOGETHER_API_KEY`` set the same command runs against that API.

Running it again works: the submit is idempotent. If the emulator (or the real API) still knows
the identical batch, it is reused, and when its results partition is already materialised the
demo does not fetch it again: it says so and prints the rows of the existing Parquet file. When
the emulator was restarted in between (it keeps batches in memory) a new batch is made.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import dagster as dg

from dagster_together.resources import TogetherResource
from example_project.local_emulator import DEMO_DIR, ensure_emulator, stop_emulator
from example_project.pipeline import (
    EMULATOR_SENSOR_INTERVAL_SECONDS,
    LOCAL_EMULATOR_API_KEY,
    N_REVIEWS,
    SUBMIT_JOB_NAME,
    ReviewsPipeline,
    build_pipeline,
    output_url_from_env,
)

__all__ = ["DemoError", "DemoResult", "main", "run_demo"]

# The emulator finishes in seconds; a real batch in minutes to 24 h (its completion window).
EMULATOR_TIMEOUT_SECONDS = 120.0
REAL_API_TIMEOUT_SECONDS = 26 * 3600.0
# Between sensor ticks. Against the real API each tick is one GET /batches: every 30 s is ample.
EMULATOR_POLL_SECONDS = 1.0
REAL_API_POLL_SECONDS = 30.0

# Dagster's own event log of the demo's runs is stored in the instance (see it in `make dev`);
# on the console only warnings, so that the demo's story stays readable.
_QUIET_RUN_CONFIG: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

_DAGSTER_YAML = """\
# The Dagster instance of `make demo` and `make dev`: runs, materialisations, sensor ticks.
# Nothing configured: Dagster's defaults (SQLite storage in this folder, runs queued and
# launched by the daemon that `dg dev` starts). See
# https://docs.dagster.io/guides/deploy/dagster-yaml for what can go here.
"""

_SHOWN_ROWS = 5


class DemoError(RuntimeError):
    """The demo could not finish (a failed run, a timeout, missing configuration)."""


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced.

    Attributes:
        location: the submission's final table (one row per review).
        batch_ids: the batches the submit created or reused (none when all were cached).
        n_rows: rows in the final table.
        counts: rows per status.
        reused: batch ids the submit reused instead of creating.
        already_materialised: batch ids whose results existed before this demo run.
        submission_id: the submit run's id, naming its final table.
        n_sent: requests sent to Together by this run.
        n_cached: requests the answer store answered instead.
    """

    location: str
    batch_ids: list[str]
    n_rows: int
    counts: dict[str, int]
    reused: list[str] = field(default_factory=list)
    already_materialised: list[str] = field(default_factory=list)
    submission_id: str = ""
    n_sent: int = 0
    n_cached: int = 0


def prepare_dagster_home(path: str | os.PathLike[str]) -> Path:
    """Create the instance directory, with a commented ``dagster.yaml`` if there is none."""
    home = Path(path).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_DAGSTER_YAML)
    return home


class _Printer:
    """Prints the demo's story to ``out`` (flushed: the user watches it live)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)


class _SensorLogHandler(logging.Handler):
    """Shows the sensor's own log lines (progress, run requests) as part of the demo output."""

    def __init__(self, say: _Printer, tick: int) -> None:
        super().__init__(level=logging.INFO)
        self.say = say
        self.tick = tick
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1
        self.say(f"   tick {self.tick:>3}: {record.getMessage()}")


def run_demo(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    output_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dagster_home: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    poll_seconds: float | None = None,
    out: TextIO | None = None,
    verbose: bool = False,
) -> DemoResult:
    """Run the example end to end and print it; the last line printed is ``results: <location>``.

    Args:
        base_url: the Together API. None: ``TOGETHER_BASE_URL``, else the local emulator
            (started if needed, and stopped at the end if this call started it).
        api_key: the key for ``base_url``. None: ``TOGETHER_API_KEY`` (read through
            ``dg.EnvVar``); the local emulator gets a placeholder.
        output_url: where the files go. None: ``TOGETHER_OUTPUT_URL``, else ``.demo/data``.
        storage_options: fsspec options for ``output_url``.
        dagster_home: the instance directory. None: ``$DAGSTER_HOME``, else
            ``.demo/dagster_home``.
        timeout: seconds to wait for the batches (default 120 s on the emulator, 26 h on a real
            API: the completion window is 24 h).
        poll_seconds: seconds between sensor ticks (1 s on the emulator, 30 s on a real API).
        out: where to print (default stdout).
        verbose: also show Dagster's own console logs of the runs.

    Raises:
        DemoError: a run failed, the batches did not finish in time, or no API key.
    """
    say = _Printer(out or sys.stdout)
    started_emulator = None
    if base_url is None:
        base_url = os.environ.get("TOGETHER_BASE_URL") or None
    uses_emulator = base_url is None
    key: str | dg.EnvVar
    if base_url is None:
        started_emulator = ensure_emulator()
        base_url = started_emulator.base_url
        key = LOCAL_EMULATOR_API_KEY
        if not started_emulator.started:
            started_emulator = None  # someone else's emulator: leave it running
    elif api_key is not None:
        key = api_key
    elif os.environ.get("TOGETHER_API_KEY"):
        key = dg.EnvVar("TOGETHER_API_KEY")  # resolved when used, never printed or stored
    else:
        raise DemoError(f"TOGETHER_BASE_URL is {base_url}: set TOGETHER_API_KEY too.")
    if timeout is None:
        timeout = EMULATOR_TIMEOUT_SECONDS if uses_emulator else REAL_API_TIMEOUT_SECONDS
    if poll_seconds is None:
        poll_seconds = EMULATOR_POLL_SECONDS if uses_emulator else REAL_API_POLL_SECONDS

    try:
        home = prepare_dagster_home(
            dagster_home or os.environ.get("DAGSTER_HOME") or DEMO_DIR / "dagster_home"
        )
        pipeline = build_pipeline(
            together=TogetherResource(api_key=key, base_url=base_url),
            output_url=output_url or output_url_from_env(),
            storage_options=storage_options,
            sensor_interval_seconds=EMULATOR_SENSOR_INTERVAL_SECONDS if uses_emulator else 60,
        )
        say(
            f"Together Batch API: {base_url}"
            + (" (local emulator)" if uses_emulator else "")
            + f"\nDagster instance:   {home}"
            f"\nOutput storage:     {pipeline.batches.layout.storage_url}"
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            return _run(pipeline, instance, say, timeout, poll_seconds, verbose, uses_emulator)
    finally:
        if started_emulator is not None:
            stop_emulator(started_emulator)


def _run(
    pipeline: ReviewsPipeline,
    instance: dg.DagsterInstance,
    say: _Printer,
    timeout: float,
    poll_seconds: float,
    verbose: bool,
    uses_emulator: bool,
) -> DemoResult:
    run_config = {} if verbose else _QUIET_RUN_CONFIG
    batches = pipeline.batches
    defs = pipeline.defs
    layout = batches.layout

    # 1. Submit ----------------------------------------------------------------------------
    say(f"\n1/4 Submit: {SUBMIT_JOB_NAME} (reviews -> reviews_batches)")
    submit = defs.resolve_job_def(SUBMIT_JOB_NAME).execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=False
    )
    if not submit.success:
        raise DemoError(f"The submit run {submit.run_id} failed: {_failure(submit)}")
    assert batches.submit_asset is not None
    # (A submission the answer store answers whole also reports its final table here.)
    [mat] = [
        m
        for m in submit.asset_materializations_for_node(batches.submit_asset.node_def.name)
        if m.asset_key == batches.submit_asset.key
    ]
    meta = {key: value.value for key, value in mat.metadata.items()}
    submission_id = str(meta["together/submission_id"])
    table_value = mat.metadata["together/batches"]
    assert isinstance(table_value, dg.TableMetadataValue)
    rows: list[dict[str, Any]] = [record.data for record in table_value.records]
    batch_ids = [str(b) for b in meta["together/batch_ids"]]  # type: ignore[union-attr]
    reused = [str(row["batch_id"]) for row in rows if row["reused"]]
    n_cached = int(meta["together/n_cached"])  # type: ignore[arg-type]
    n_sent = int(meta["together/n_rows"]) - n_cached  # type: ignore[arg-type]
    say(
        f"   run {submit.run_id}: {n_sent} request(s) sent, {n_cached} answered from the "
        "answer store (not paid again)"
    )
    say(f"   estimated cost of what was sent: ${meta['together/estimated_cost_usd']:.4f}")
    for row in rows:
        how = "reused (identical input submitted before)" if row["reused"] else "created"
        say(f"   batch {row['batch_id']}: {row['n_requests']} requests, {how}, {row['status']}")

    # 2. Watch: the real sensor, tick by tick, until the submission's final table exists -----
    assert batches.sensor is not None and batches.final_asset is not None
    sensor = defs.resolve_sensor_def(batches.sensor.name)
    results_job = defs.resolve_job_def(batches.results_job.name)
    final_location = layout.final_parquet(submission_id)
    say(f"\n2/4 Watch: sensor {sensor.name} every {poll_seconds:g} s")
    done_before = sorted(
        set(batch_ids) & instance.get_materialized_partitions(batches.results_asset.key)
    )
    for batch_id in done_before:
        say(
            f"   batch {batch_id}: results already materialised by an earlier run; "
            "not fetched again"
        )
    if layout.exists(final_location):
        say("   nothing to wait for: every review was answered before")
    cursor: str | None = None
    deadline = time.monotonic() + timeout
    tick = 0
    while not layout.exists(final_location):
        if time.monotonic() > deadline:
            raise DemoError(
                f"Timed out after {timeout:g} s before submission {submission_id} was complete. "
                "Nothing is lost: the batches keep running at Together. Run the demo again (the "
                "submit reuses them) or `make dev` (the sensor is on there) to collect them."
            )
        tick += 1
        result = _tick(sensor, defs, instance, cursor, say, tick)
        if result is None:  # the tick failed (API down?): like the daemon, keep the cursor
            time.sleep(poll_seconds)
            continue
        requests: Sequence[dg.RunRequest] = []
        if isinstance(result, dg.SensorResult):
            cursor = result.cursor if result.cursor is not None else cursor
            requests = result.run_requests or []
        for request in requests:
            run = results_job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                # The request's tags, plus those the daemon adds: the UI shows the run as
                # requested by the sensor, with its run key.
                tags={
                    **request.tags,
                    "dagster/sensor_name": sensor.name,
                    **({"dagster/run_key": request.run_key} if request.run_key else {}),
                },
                run_config=run_config,
                raise_on_error=False,
            )
            if not run.success:
                raise DemoError(
                    f"The results run {run.run_id} for batch {request.partition_key} failed: "
                    f"{_failure(run)}"
                )
            say(f"   run {run.run_id}: {results_job.name} [{request.partition_key}] succeeded")
        if not layout.exists(final_location) and not requests:
            time.sleep(poll_seconds)

    # 3. Results: the submission's final table -------------------------------------------------
    say(
        "\n3/4 Results"
        + (" (the emulator answers with a keyword rule, not a model)" if uses_emulator else "")
    )
    table = _read_results(layout, [final_location])
    counts = dict(Counter(table.column("status").to_pylist()))
    _print_rows(say, table)
    say(
        f"   {table.num_rows} rows for {N_REVIEWS} reviews; status: "
        + ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
        + f"; {sum(table.column('cached').to_pylist())} from the answer store"
    )
    event = instance.get_latest_materialization_event(batches.final_asset.key)
    reported = event.asset_materialization if event is not None else None
    if reported is not None and "together/cost_usd" in reported.metadata:
        cost = reported.metadata["together/cost_usd"].value
        say(f"   real cost (from the usage Together reported): ${cost:.4f}")
    _counts_downstream(defs, instance, say, run_config)
    _typed_answers(pipeline, instance, say, run_config)
    say(f"results: {final_location}")
    return DemoResult(
        location=final_location,
        batch_ids=batch_ids,
        n_rows=table.num_rows,
        counts=counts,
        reused=reused,
        already_materialised=done_before,
        submission_id=submission_id,
        n_sent=n_sent,
        n_cached=n_cached,
    )


def _counts_downstream(
    defs: dg.Definitions, instance: dg.DagsterInstance, say: _Printer, run_config: Any
) -> None:
    """Materialise ``sentiment_counts``, downstream of the final table, as a user would."""
    run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("sentiment_counts")],
        run_config=run_config,
        raise_on_error=False,
    )
    if not run.success:
        raise DemoError(f"The sentiment_counts run {run.run_id} failed: {_failure(run)}")
    counts = run.output_for_node("sentiment_counts")
    say(
        "   downstream, sentiment_counts (the latest final table): "
        + ", ".join(f"{answer} {n}" for answer, n in sorted(counts.items()))
    )


def _typed_answers(
    pipeline: ReviewsPipeline, instance: dg.DagsterInstance, say: _Printer, run_config: Any
) -> None:
    """The second pipeline: typed fields from each review, submitted and waited for in one run;
    one row printed with the Python types of its fields."""
    facts = pipeline.facts
    if facts is None:
        return
    key = facts.results_asset.key
    say(
        f"\n4/4 Typed answers: {key.to_user_string()} (an output schema; one run submits and waits)"
    )
    run = dg.materialize(
        [pipeline.defs.resolve_assets_def("reviews"), pipeline.defs.resolve_assets_def(key)],
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )
    if not run.success:
        raise DemoError(f"The run {run.run_id} of {key.to_user_string()} failed: {_failure(run)}")
    [mat] = [m for m in run.asset_materializations_for_node(key.path[-1]) if m.asset_key == key]
    location = str(mat.metadata["dagster/uri"].value)
    table = _read_results(facts.layout, [location])
    row = next(r for r in table.to_pylist() if r["status"] == "succeeded")
    fields = ", ".join(
        f"{name}={row[name]!r} ({type(row[name]).__name__})"
        for name in ("sentiment", "product_issue", "severity")
    )
    say(f"   {row['custom_id']}: {fields}")
    say(f"   {table.num_rows} rows with typed columns in {location}")


def _tick(
    sensor: dg.SensorDefinition,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor: str | None,
    say: _Printer,
    tick: int,
) -> dg.SensorResult | dg.SkipReason | None:
    """One sensor evaluation; None when it raised (reported, like a failed daemon tick)."""
    lines = _SensorLogHandler(say, tick)
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        # Direct invocation does not take resources from `definitions`: pass them as well.
        resources=defs.resources,
    ) as context:
        # The sensor's log lines in the demo's format instead of Dagster's console one.
        for handler in list(context.log.handlers):
            context.log.removeHandler(handler)
        context.log.addHandler(lines)
        try:
            result = sensor(context)
        except Exception as exc:  # the daemon would record a failed tick and try again
            why = "" if lines.lines else f" ({type(exc).__name__}: {exc})"  # unless it said
            say(f"   tick {tick:>3}: failed{why}; the next tick tries again")
            return None
    if isinstance(result, dg.SensorResult) and result.skip_reason is None:
        return result
    skip = result if isinstance(result, dg.SkipReason) else getattr(result, "skip_reason", None)
    if lines.lines == 0 and isinstance(skip, dg.SkipReason):
        # Nothing logged (e.g. the results run is in progress elsewhere): say why it waits.
        say(f"   tick {tick:>3}: skipped: {skip.skip_message}")
    if isinstance(result, dg.SensorResult | dg.SkipReason):
        return result
    raise DemoError(f"The sensor returned {type(result).__name__}; expected a SensorResult.")


def _failure(result: Any) -> str:
    """The first step failure's message of an in-process run."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            return event.step_failure_data.error.message.strip()
    return "see its logs in the Dagster UI (make dev)"


def _read_results(layout: Any, files: Sequence[str]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for location in files:
        fs, path = layout.filesystem(location)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables)


def _clip(value: Any, width: int) -> str:
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_rows(say: _Printer, table: Any) -> None:
    """A few rows as an aligned text table: id, product, rating, review, status, answer."""
    columns = [
        ("custom_id", 9),
        ("product", 16),
        ("rating", 6),
        ("review", 44),
        ("status", 9),
        ("content", 10),
    ]
    header = "  ".join(name.ljust(width) for name, width in columns)
    say("   " + header.rstrip())
    for row in table.slice(0, _SHOWN_ROWS).to_pylist():
        cells = [_clip(row.get(name), width).ljust(width) for name, width in columns]
        say("   " + "  ".join(cells).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m example_project.demo``: run the demo; exit 1 if it could not finish."""
    parser = argparse.ArgumentParser(prog="python -m example_project.demo", description=__doc__)
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ["DEMO_TIMEOUT_SECONDS"])
        if os.environ.get("DEMO_TIMEOUT_SECONDS")
        else None,
        help="seconds to wait for the batches (env DEMO_TIMEOUT_SECONDS; default 120 on the "
        "emulator, 26 h on a real API)",
    )
    parser.add_argument("--poll-seconds", type=float, default=None, help="between sensor ticks")
    parser.add_argument("--verbose", action="store_true", help="show the runs' Dagster logs too")
    args = parser.parse_args(argv)
    # The demo's instance is the one `make dev` opens afterwards.
    os.environ.setdefault("DAGSTER_HOME", str(DEMO_DIR / "dagster_home"))
    try:
        run_demo(timeout=args.timeout, poll_seconds=args.poll_seconds, verbose=args.verbose)
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    return 0  # nothing printed after the `results:` line: it stays the very last one


if __name__ == "__main__":
    sys.exit(main())
