"""docs/scaling.md's ``dagster.yaml`` gives a Dagster instance whose run, event-log and schedule
storage are a real PostgreSQL server (tests/postgres.py), with the queued run coordinator and
run-granularity pools; and the results asset's concurrency pool, from the factory and from the
Component. tests/test_postgres_scale.py runs the daemon on that instance with 50 batches."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from dagster_together import ResultsOptions, build_together_batch_defs
from tests.helpers import TEMPLATE
from tests.postgres import PostgresServer

SCALING_DOC = Path(__file__).parent.parent / "docs" / "scaling.md"
_FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _doc_blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCED.findall(SCALING_DOC.read_text()) if lang == language]


def doc_dagster_yaml() -> str:
    """The doc's ``dagster.yaml``: its yaml block with the Postgres storage."""
    [block] = [b for b in _doc_blocks("yaml") if "storage:\n  postgres:" in b]
    return block


def doc_concurrency_command() -> list[str]:
    """The doc's ``dagster instance concurrency set POOL LIMIT`` command, as arguments."""
    lines = [
        line
        for block in _doc_blocks("bash")
        for line in block.splitlines()
        if line.startswith("dagster instance concurrency set ")
    ]
    [line] = lines
    return shlex.split(line)


def use_database(server: PostgresServer, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variables the doc's ``dagster.yaml`` reads, pointing at ``database``."""
    for name, value in {
        "DAGSTER_PG_HOST": server.host,
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_USERNAME": server.user,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": database,
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def pg_instance(
    tmp_path: Path, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """An instance from the doc's ``dagster.yaml`` on a fresh database of the test server."""
    use_database(postgres_server, postgres_server.create_database(), monkeypatch)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(doc_dagster_yaml())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance


@pytest.mark.slow  # a real PostgreSQL server
def test_the_docs_dagster_yaml_is_a_postgres_instance_with_a_run_queue(
    pg_instance: dg.DagsterInstance,
) -> None:
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(pg_instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(pg_instance.run_coordinator, dg.QueuedRunCoordinator)
    # Pools limit whole runs (a queued run waits, holding no process), as the doc says.
    concurrency = yaml.safe_load(doc_dagster_yaml())["concurrency"]
    assert concurrency["pools"]["granularity"] == "run"


@pytest.mark.slow  # a real PostgreSQL server and the dagster CLI
def test_the_docs_command_sets_the_results_pool_limit(pg_instance: dg.DagsterInstance) -> None:
    command = doc_concurrency_command()
    assert command[:4] == ["dagster", "instance", "concurrency", "set"]
    pool, limit = command[4], int(command[5])
    assert pool == "together_results_reviews"  # the doc's pipeline is called "reviews"
    subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), *command[1:]],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert pg_instance.event_log_storage.get_concurrency_info(pool).slot_count == limit


@dg.asset
def prompts() -> pa.Table:
    return pa.table({"id": ["a"], "text": ["hi"]})


def test_the_results_asset_is_in_a_pool_named_after_the_pipeline(tmp_path: Path) -> None:
    built = build_together_batch_defs(
        name="reviews", prompts=prompts, storage=str(tmp_path), template=TEMPLATE, id_column="id"
    )
    assert built.results_asset.op.pool == "together_results_reviews"
    shared = build_together_batch_defs(
        name="reviews",
        prompts=prompts,
        storage=str(tmp_path),
        template=TEMPLATE,
        id_column="id",
        results=ResultsOptions(pool="together_results"),
    )
    assert shared.results_asset.op.pool == "together_results"


def test_the_component_sets_the_results_pool() -> None:
    with create_defs_folder_sandbox() as sandbox:
        (sandbox.defs_folder_path / "prompts.py").write_text(
            "import dagster as dg\n\n@dg.asset\ndef reviews() -> None: ...\n"
        )
        for name, results in (("a", {}), ("b", {"pool": "together_results"})):
            path = sandbox.defs_folder_path / name
            path.mkdir()
            attributes = {
                "name": name,
                "prompts": "reviews",
                "storage_url": "/tmp/unused",
                "results": results,
            }
            (path / "defs.yaml").write_text(
                yaml.safe_dump(
                    {"type": "dagster_together.TogetherBatchComponent", "attributes": attributes}
                )
            )
        with sandbox.build_all_defs() as defs:
            pools = {
                name: defs.resolve_assets_def(f"{name}_results").op.pool for name in ("a", "b")
            }
    assert pools == {"a": "together_results_a", "b": "together_results"}
