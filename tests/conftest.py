"""Shared fixtures: a real emulator on loopback and a real S3 protocol server (moto) on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# A real PostgreSQL server (session scope): tests/postgres.py.
from tests.postgres import postgres_server  # noqa: F401

# The longest test files (minutes each) go first: `make test` runs a file per worker at a time,
# and a long file started last would leave the other worker idle while it ends.
_LONGEST_FIRST = ("test_postgres_scale.py", "test_bench.py", "test_ui_browser.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its place


# A recognisable key: tests grep logs, events and files for it to prove it never leaks.
TEST_API_KEY = "tgp-test-5ecret-KEY-do-not-leak-7f3a9c"


@pytest.fixture
def api_key() -> str:
    return TEST_API_KEY


@pytest.fixture(scope="session", autouse=True)
def _emulator_stops_promptly() -> Iterator[None]:
    """The in-process emulator's serve loop polls every 5 ms instead of 50 ms.

    ``Emulator.stop()`` waits for the loop to see the shutdown request, i.e. up to one poll;
    a run creates a few hundred emulators (one per test, plus restarts in the outage tests), so
    50 ms each is seconds of waiting. Only the stop latency changes: requests are served the
    moment they arrive either way.
    """
    from socketserver import BaseServer

    from dagster_together.emulator.handler import EmulatorHTTPServer

    def serve_forever(self: EmulatorHTTPServer, poll_interval: float = 0.5) -> None:
        BaseServer.serve_forever(self, poll_interval=min(poll_interval, 0.005))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EmulatorHTTPServer, "serve_forever", serve_forever)
        yield


@pytest.fixture(scope="session", autouse=True)
def _alembic_scripts_parsed_once() -> Iterator[None]:
    """Alembic's parsed migration scripts, kept per script location for the session.

    Every Dagster SQL storage stamps its schema with alembic when it is created: each
    ``instance`` fixture and each ``dg.materialize`` without an instance (an ephemeral one).
    Alembic re-reads and compiles every migration script each time (~45 ms per instance); the
    scripts do not change during a run, so one parse per location serves them all.
    """
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    original = ScriptDirectory.from_config
    parsed: dict[str | None, ScriptDirectory] = {}

    def from_config(config: Config) -> ScriptDirectory:
        location = config.get_main_option("script_location")
        if location not in parsed:
            parsed[location] = original(config)
        return parsed[location]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ScriptDirectory, "from_config", from_config)
        yield


@pytest.fixture
def emulator() -> Iterator[Any]:
    """A fresh emulator with a fast clock: jobs finish in well under a second (a cancelled one
    answers CANCELING for 0.1 s, then CANCELLED)."""
    from dagster_together.emulator import Emulator

    with Emulator(
        api_key=TEST_API_KEY, validate_seconds=0.02, run_seconds=0.1, cancel_seconds=0.1
    ) as emu:
        yield emu


@pytest.fixture
def slow_emu(api_key: str) -> Iterator[Any]:
    """Batches stay IN_PROGRESS until a test forces a final status (or cancels them)."""
    from dagster_together.emulator import Emulator

    with Emulator(api_key=api_key, validate_seconds=0.0, run_seconds=3600) as emu:
        yield emu


@pytest.fixture
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A throwaway Dagster instance of its own: runs and events in memory, artifacts (the IO
    manager's outputs) in a fresh directory.

    The run and event storage are Dagster's SQL storage on an in-memory SQLite database: the
    queries the sensor and the assets make are the ones a persistent instance answers, minus
    the per-run database files that make ``dg.instance_for_test`` cost ~0.4 s per instance and
    ~0.1 s per run. A test that needs the instance's files on disk (the event log, run storage,
    compute logs) uses ``disk_instance``.
    """
    import dagster as dg

    with dg.DagsterInstance.ephemeral(tempdir=str(tmp_path_factory.mktemp("instance"))) as inst:
        yield inst


@pytest.fixture
def disk_instance() -> Iterator[Any]:
    """A throwaway persistent Dagster instance (``dg.instance_for_test``): SQLite files, compute
    logs and artifacts under ``instance.root_directory``, which is ``DAGSTER_HOME`` meanwhile."""
    import dagster as dg

    with dg.instance_for_test() as inst:
        yield inst


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    storage_options: dict[str, Any]

    def new_bucket(self) -> str:
        """Create an empty bucket and return its ``s3://`` URL."""
        import boto3

        name = f"test-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto server speaking the real S3 protocol on 127.0.0.1 (s3fs talks to it over HTTP)."""
    from moto.server import ThreadedMotoServer

    # Fake credentials so nothing ever looks for real ones.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield S3Server(
            endpoint_url=endpoint,
            storage_options={
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                # No listings cache: no test sees another's (or its own) stale listing. s3fs
                # instances are still shared between calls with these same options, as in a
                # user's process: a fresh one per call (skip_instance_cache) builds a new
                # botocore client each time, ~0.1 s per S3 operation.
                "use_listings_cache": False,
            },
        )
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """An empty bucket on the moto server, as an ``s3://`` URL."""
    return s3_server.new_bucket()
