"""The example project: its code location loads, the demo runs end to end through the real
sensor, and the local emulator is started exactly once however many processes ask for it."""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pyarrow.parquet as pq
import pytest

from dagster_together.results import STATUSES
from example_project import local_emulator, pipeline
from example_project.demo import run_demo
from example_project.dev import dg_command, dg_environment
from example_project.reviews import make_reviews
from tests.helpers import free_port

# Real processes (the demo, the dev server, the emulator in children): `pytest -m "not slow"`
# skips them.
pytestmark = pytest.mark.slow

# example_project is not installed: pytest's `pythonpath = ["."]` puts the repo on sys.path.
REPO_ROOT = Path(__file__).resolve().parents[1]

N_REVIEWS = 300


@pytest.fixture
def no_local_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to start (or look for) the local emulator."""

    def refuse(**_: Any) -> Any:
        raise AssertionError("the local emulator must not be used when TOGETHER_BASE_URL is set")

    monkeypatch.setattr(pipeline, "ensure_emulator", refuse)
    monkeypatch.setattr("example_project.demo.ensure_emulator", refuse)


def test_definitions_load_against_the_configured_api(
    emulator: Any,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_local_emulator: None,
) -> None:
    monkeypatch.setenv("TOGETHER_BASE_URL", emulator.base_url)
    monkeypatch.setenv("TOGETHER_API_KEY", api_key)
    monkeypatch.setenv("TOGETHER_OUTPUT_URL", str(tmp_path / "out"))
    monkeypatch.delitem(sys.modules, "example_project.definitions", raising=False)
    module = importlib.import_module("example_project.definitions")
    defs: dg.Definitions = module.defs

    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {
        "reviews",
        "reviews_batches",
        "reviews_results",
        "reviews_final",
        "sentiment_counts",
        "review_facts_results",
    }
    sensor = defs.resolve_sensor_def("reviews_batch_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 60  # a real API: the library's default
    schedule = defs.resolve_schedule_def("reviews_daily_submit")
    assert schedule.job_name == "reviews_submit_job"
    assert schedule.cron_schedule == "0 6 * * *"
    submit_job = defs.resolve_job_def("reviews_submit_job")
    assert {node.name for node in submit_job.graph.nodes} == {"reviews", "reviews_batches"}
    # The key comes from the environment in every process, never as a literal in the config.
    together = (defs.resources or {})["together"]
    assert isinstance(together.api_key, dg.EnvVar)
    assert together.get_client().batches.list_batches() == []  # reaches the configured API
    assert emulator.requests[-1].path == "/v1/batches"
    monkeypatch.delitem(sys.modules, "example_project.definitions")


def _last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def test_demo_end_to_end_through_the_sensor_and_again(
    emulator: Any, api_key: str, tmp_path: Path, no_local_emulator: None
) -> None:
    home = tmp_path / "dagster_home"
    kwargs: dict[str, Any] = {
        "base_url": emulator.base_url,
        "api_key": api_key,
        "output_url": str(tmp_path / "data"),
        "dagster_home": home,
        "poll_seconds": 0.2,
        "timeout": 60,
    }
    out = io.StringIO()
    result = run_demo(out=out, **kwargs)
    text = out.getvalue()

    [batch_id] = result.batch_ids
    parquet = tmp_path / "data" / "final" / f"submission={result.submission_id}" / "part-0.parquet"
    assert _last_line(text) == f"results: {parquet}"
    assert result.location == str(parquet)
    assert result.n_sent == N_REVIEWS and result.n_cached == 0
    assert "estimated cost of what was sent: $" in text and "real cost" in text
    # The real sensor decided: it asked for the run itself, once.
    assert f"Batch {batch_id} is COMPLETED: requesting its results run." in text
    assert text.count("reviews_results_job [") == 1

    table = pq.read_table(parquet)
    assert table.num_rows == N_REVIEWS
    ids = table.column("custom_id").to_pylist()
    assert ids == [str(row["review_id"]) for row in make_reviews(N_REVIEWS)]  # input order
    assert len(set(ids)) == N_REVIEWS
    assert set(table.column("status").to_pylist()) <= set(STATUSES)
    assert result.counts == {"succeeded": N_REVIEWS}
    assert {"product", "rating", "review", "content"} <= set(table.column_names)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="reviews_results_job"))
        assert [run.tags["dagster-together/batch_status"] for run in runs] == ["COMPLETED"]
        assert runs[0].tags["dagster/partition"] == batch_id

    # Again: every review is answered by the answer store, nothing is sent or paid again, and
    # the second submission's final table still has one row per review (not twice as many).
    out = io.StringIO()
    again = run_demo(out=out, **kwargs)
    assert again.batch_ids == [] and again.n_sent == 0 and again.n_cached == N_REVIEWS
    second = tmp_path / "data" / "final" / f"submission={again.submission_id}" / "part-0.parquet"
    assert _last_line(out.getvalue()) == f"results: {second}"
    assert again.n_rows == N_REVIEWS and again.counts == {"succeeded": N_REVIEWS}
    assert f"0 request(s) sent, {N_REVIEWS} answered from the answer store" in out.getvalue()
    created = [r for r in emulator.requests if (r.method, r.path) == ("POST", "/v1/batches")]
    assert len(created) == 2  # one per pipeline, on the first run only
    # The second pipeline's typed fields, printed with their Python types (cached this time).
    assert "severity=" in out.getvalue() and "(int)" in out.getvalue()
    # Downstream of the final table, the latest submission only: each review counted once.
    [counts] = [line for line in out.getvalue().splitlines() if "sentiment_counts" in line]
    assert sum(int(n) for n in re.findall(r" (\d+)", counts.split(":", 1)[1])) == N_REVIEWS


ENSURE_SCRIPT = """
import json, sys
from example_project.local_emulator import ensure_emulator

emu = ensure_emulator(port=int(sys.argv[1]), state_dir=sys.argv[2], run_seconds=1.0)
print(json.dumps({"pid": emu.pid, "started": emu.started, "base_url": emu.base_url}))
"""


@pytest.fixture
def emulator_port(tmp_path: Path) -> Iterator[int]:
    """A free port; whatever emulator ends up on it is stopped afterwards (pid file)."""
    port = free_port()
    try:
        yield port
    finally:
        pid_file = tmp_path / "state" / "emulator.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_local_emulator_is_started_once_for_many_processes(
    tmp_path: Path, emulator_port: int
) -> None:
    state = tmp_path / "state"
    # Code server, run workers and daemon all load the location at about the same time.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ENSURE_SCRIPT, str(emulator_port), str(state)],
            cwd=str(REPO_ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    answers = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        answers.append(json.loads(stdout))

    assert sum(a["started"] for a in answers) == 1
    assert {a["pid"] for a in answers} == {int((state / "emulator.pid").read_text())}
    assert {a["base_url"] for a in answers} == {f"http://127.0.0.1:{emulator_port}/v1"}
    assert local_emulator.emulator_is_up(emulator_port)
    assert "emulator listening on" in (state / "emulator.log").read_text()

    # The starter has exited; the emulator outlives it (detached) until it is stopped.
    os.kill(answers[0]["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while local_emulator.emulator_is_up(emulator_port, timeout=0.2):
        assert time.monotonic() < deadline, "the emulator did not stop on SIGTERM"
        time.sleep(0.05)


def test_local_emulator_explains_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # something else, not an emulator, owns the port
        port = int(sock.getsockname()[1])
        with pytest.raises(RuntimeError, match=f"exited with code .* port {port}"):
            local_emulator.ensure_emulator(port=port, state_dir=tmp_path, start_timeout=20)
        assert not (tmp_path / "emulator.pid").exists()


def test_local_emulator_start_and_stop_in_process(tmp_path: Path, emulator_port: int) -> None:
    emu = local_emulator.ensure_emulator(port=emulator_port, state_dir=tmp_path / "state")
    try:
        assert emu.started and local_emulator.emulator_is_up(emulator_port)
        again = local_emulator.ensure_emulator(port=emulator_port, state_dir=tmp_path / "state")
        assert not again.started and again.pid == emu.pid
        assert not local_emulator.stop_emulator(again)  # not ours to stop
    finally:
        assert local_emulator.stop_emulator(emu)
    assert not local_emulator.emulator_is_up(emulator_port)
    assert not (tmp_path / "state" / "emulator.pid").exists()


@pytest.mark.timeout(120)
def test_make_dev_serves_the_example_and_shuts_down(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    """``python -m example_project.dev``: ``dg dev`` on the example, stopped like ``kill``."""
    port = free_port()
    env = {
        **os.environ,
        "TOGETHER_BASE_URL": emulator.base_url,  # no local emulator: nothing on port 8765
        "TOGETHER_API_KEY": api_key,
        "TOGETHER_OUTPUT_URL": str(tmp_path / "out"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    env.pop("VIRTUAL_ENV", None)  # `make dev` from a shell where .venv is not activated
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "example_project.dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        query = {
            "query": "{ repositoriesOrError { ... on RepositoryConnection { nodes { "
            "location { name } sensors { name sensorState { status } } } } } }"
        }
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                try:
                    nodes = http.post("/graphql", json=query).json()["data"]
                    nodes = nodes["repositoriesOrError"]["nodes"]
                    if nodes:
                        break
                except (httpx.TransportError, KeyError, TypeError, ValueError):
                    pass
                time.sleep(0.5)
        [repo] = nodes
        # From pyproject's [tool.dg.project] (else dg names it after the repository's folder).
        assert repo["location"]["name"] == "example_project"
        assert repo["sensors"] == [
            {"name": "reviews_batch_sensor", "sensorState": {"status": "RUNNING"}}
        ]
        assert (tmp_path / "dagster_home" / "dagster.yaml").exists()

        proc.send_signal(signal.SIGTERM)  # `kill <pid>`: shut down the way Ctrl-C does
        proc.wait(60)
        text = log_path.read_text()
        assert "Dagster services shut down" in text
        # dg dev (it checks the project's component YAML first), not the superseded
        # `dagster dev`, and dg is content with the environment it runs in.
        assert "All component YAML validated successfully." in text
        assert "SupersessionWarning" not in text and "DeprecationWarning" not in text
        assert "does not match the virtual environment" not in text
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture
def local_emulator_stopped_after() -> Iterator[None]:
    """Stop the local emulator (port 8765, ``.demo``) afterwards if the test started it.

    With no ``TOGETHER_BASE_URL``, loading the example starts it in the background and leaves it
    running; one that was already up (``make dev``, another checkout) is left alone.
    """
    pid_file = local_emulator.DEMO_DIR / "emulator.pid"
    was_up = local_emulator.emulator_is_up(local_emulator.DEFAULT_PORT)
    pid_before = local_emulator.read_pid(pid_file)
    try:
        yield
    finally:
        pid = local_emulator.read_pid(pid_file)
        if not was_up and pid is not None and pid != pid_before:
            port = local_emulator.DEFAULT_PORT
            started = local_emulator.LocalEmulator(
                f"http://127.0.0.1:{port}/v1", port, pid, True, local_emulator.DEMO_DIR
            )
            assert local_emulator.stop_emulator(started)
            deadline = time.monotonic() + 10
            while local_emulator.emulator_is_up(port, timeout=0.2):
                assert time.monotonic() < deadline, "the local emulator did not stop"
                time.sleep(0.05)


def _dg(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*dg_command(), *args],
        cwd=str(REPO_ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"dg {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    assert "SupersessionWarning" not in done.stderr and "DeprecationWarning" not in done.stderr
    return done


@pytest.mark.timeout(180)
def test_dg_checks_and_lists_the_example_on_the_local_emulator(
    tmp_path: Path, local_emulator_stopped_after: None
) -> None:
    """``dg check defs`` and ``dg list defs`` in the repository root, no TOGETHER_BASE_URL."""
    env = {
        **dg_environment(),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "TOGETHER_OUTPUT_URL": str(tmp_path / "out"),
    }
    for name in ("TOGETHER_BASE_URL", "TOGETHER_API_KEY"):
        env.pop(name, None)
    (tmp_path / "dagster_home").mkdir()

    checked = _dg("check", "defs", env=env)
    assert "All definitions loaded successfully." in checked.stdout

    listed = json.loads(_dg("list", "defs", "--json", env=env).stdout)
    assets = {asset["asset_key"] for asset in listed["assets"]}
    assert {"reviews", "reviews_batches", "reviews_results"} <= assets
    assert [sensor["name"] for sensor in listed["sensors"]] == ["reviews_batch_sensor"]

    # The library's component type, found through its `dagster_dg_cli.registry_modules` entry
    # point, next to the project's [tool.dg] configuration.
    components = json.loads(_dg("list", "components", "--json", env=env).stdout)
    assert "dagster_together.TogetherBatchComponent" in {c["key"] for c in components["items"]}
