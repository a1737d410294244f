"""Runs launched and terminated through a running ``dagster-webserver``'s GraphQL API, with the
mutations and variables the UI's Materialize and Terminate buttons send: the webserver launches
the run, the run uploads the prompts to the emulator (in this process, over loopback) and creates
one batch; a run waiting for its batch and terminated cancels it, or leaves it, as configured."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from tests.helpers import (
    CODE_LOCATION_HEADER,
    TERMINAL,
    free_port,
    stop_process_group,
    write_dagster_project,
)

# Real processes (daemon, webserver, the demo, the benchmarks): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

LOCATION = "webserver_e2e"
N_PROMPTS = 4

CODE_LOCATION = (
    CODE_LOCATION_HEADER
    + """
@dg.asset
def prompts() -> pa.Table:
    n = CONFIG["n_prompts"]
    return pa.table({{"id": [f"p-{{i}}" for i in range(n)], "text": [f"Say {{i}}" for i in range(n)]}})


docs = build_together_batch_defs(
    name="docs",
    prompts=prompts,
    storage=CONFIG["storage_url"],
    template=RequestTemplate(model="test-model", prompt_column="text"),
    id_column="id",
)

def waiting(name, cancel):
    return build_together_batch_defs(
        name=name,
        prompts=prompts,
        storage=CONFIG["storage_url"] + "/" + name,
        template=RequestTemplate(model="test-model", prompt_column="text"),
        id_column="id",
        watch=WaitOptions(poll_interval=0.2, cancel_on_termination=cancel),
    )


cancelling = waiting("cancelling", True)
keeping = waiting("keeping", False)

defs = dg.Definitions.merge(
    docs.defs,
    cancelling.defs,
    keeping.defs,
    dg.Definitions(
        assets=[prompts],
        resources=RESOURCES,
    ),
)
"""
)

# Dagster 1.13 queues runs by default (QueuedRunCoordinator), which needs the daemon to launch
# them. The DefaultRunCoordinator launches a run from the webserver itself, right away: the
# webserver is all this test starts. (`dagster.core...` is the module path Dagster documents
# for dagster.yaml.)
DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
"""

# What the UI sends (ui-core's LAUNCH_PIPELINE_EXECUTION_MUTATION) when Materialize is clicked.
LAUNCH_MUTATION = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { id runId pipelineName } }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
  }
}
"""

# What the UI sends when Terminate is clicked on a run.
TERMINATE_MUTATION = """
mutation Terminate($runId: String!, $terminatePolicy: TerminateRunPolicy) {
  terminateRun(runId: $runId, terminatePolicy: $terminatePolicy) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""

RUN_STATUS_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status assetSelection { path } }
    ... on PythonError { message }
  }
}
"""

LOCATIONS_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus } }
  }
}
"""


@pytest.fixture
def project(
    request: pytest.FixtureRequest, tmp_path: Path, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    # The fast emulator by default; ``indirect`` parametrisation names another emulator fixture.
    emulator = request.getfixturevalue(getattr(request, "param", "emulator"))
    config = {
        "n_prompts": N_PROMPTS,
        "storage_url": str(tmp_path / "store"),
        "base_url": emulator.base_url,
    }
    written = write_dagster_project(
        tmp_path,
        monkeypatch,
        api_key,
        dagster_yaml=DAGSTER_YAML,
        code_location=CODE_LOCATION,
        config=config,
        location=LOCATION,
    )
    return {**written, "emulator": emulator}


class Webserver:
    """A ``dagster-webserver`` subprocess and a GraphQL client for it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        # trust_env=False: no proxy from the environment between us and 127.0.0.1.
        self.http = httpx.Client(base_url=url, timeout=30, trust_env=False)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post("/graphql", json={"query": query, "variables": variables or {}})
        response.raise_for_status()
        payload = response.json()
        assert "errors" not in payload, payload["errors"]
        return dict(payload["data"])

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture
def webserver(tmp_path: Path, project: dict[str, Any]) -> Iterator[Webserver]:
    port = free_port()
    log_path = tmp_path / "webserver.log"
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster-webserver"),
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=str(tmp_path),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: the code server and the run worker go down with it.
            start_new_session=True,
        )
    server = Webserver(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        server.http.close()
        stop_process_group(proc)


def _wait_until_ready(server: Webserver, timeout: float = 90.0) -> None:
    """Until ``/server_info`` answers and the code location is loaded."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.proc.poll() is None, f"the webserver exited:\n{server.log_tail()}"
        assert time.monotonic() < deadline, f"the webserver is not ready:\n{server.log_tail()}"
        try:
            if server.http.get("/server_info").status_code == 200:
                entries = server.graphql(LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
                if [e["loadStatus"] for e in entries if e["name"] == LOCATION] == ["LOADED"]:
                    return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.3)


@pytest.mark.timeout(180)
def test_materialize_button_through_graphql_submits_one_batch(
    webserver: Webserver, project: dict[str, Any], emulator: Any
) -> None:
    # The Materialize button on the prompts and the submit asset: the implicit asset job with
    # an asset selection, exactly the variables the UI builds.
    run_id = _launch(webserver, [["prompts"], ["docs_batches"]])

    run = _wait_for_run(webserver, run_id, until=("SUCCESS", "FAILURE", "CANCELED"))
    assert run["status"] == "SUCCESS", webserver.log_tail()
    assert sorted(a["path"] for a in run["assetSelection"]) == [["docs_batches"], ["prompts"]]

    # The emulator received exactly one batch, for every prompt.
    [batch] = emulator.batches()
    created = [r for r in emulator.requests if (r.method, r.path) == ("POST", "/v1/batches")]
    assert len(created) == 1

    with dg.DagsterInstance.from_config(str(project["home"])) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("docs_batches"))
        assert event is not None and event.run_id == run_id
        materialization = event.asset_materialization
        assert materialization is not None
        assert materialization.metadata["together/batch_ids"].value == [batch["id"]]
        assert materialization.metadata["together/n_requests"].value == N_PROMPTS
        # The batch is now a partition of the results asset, ready for the sensor.
        assert instance.get_dynamic_partitions("docs_batches") == [batch["id"]]


def _launch(
    webserver: Webserver, assets: list[list[str]], checks: list[tuple[list[str], str]] = ()
) -> str:
    """The Materialize button on ``assets`` (and their ``checks``, as the UI adds them)."""
    launched = webserver.graphql(
        LAUNCH_MUTATION,
        {
            "executionParams": {
                "mode": "default",
                "runConfigData": {},
                "executionMetadata": {"tags": []},
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": "__repository__",
                    "pipelineName": "__ASSET_JOB",
                    "assetSelection": [{"path": path} for path in assets],
                    "assetCheckSelection": [
                        {"assetKey": {"path": path}, "name": name} for path, name in checks
                    ],
                },
            }
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return str(launched["run"]["runId"])


def _wait_for_run(webserver: Webserver, run_id: str, until: tuple[str, ...]) -> dict[str, Any]:
    """The run (``status``, ``assetSelection``) once its status is one of ``until``."""
    deadline = time.monotonic() + 90
    while True:
        run = webserver.graphql(RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] in until:
            return dict(run)
        assert time.monotonic() < deadline, f"run still {run['status']}:\n{webserver.log_tail()}"
        time.sleep(0.3)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("project", ["slow_emu"], indirect=True)
@pytest.mark.parametrize("name, cancels", [("cancelling", True), ("keeping", False)])
def test_terminating_a_run_that_waits_cancels_its_batch_when_asked(
    webserver: Webserver, project: dict[str, Any], name: str, cancels: bool
) -> None:
    emu = project["emulator"]
    results = [f"{name}_results"]
    run_id = _launch(
        webserver,
        [["prompts"], results],
        checks=[(results, "completeness"), (results, "error_rate")],
    )
    # The run is polling a batch that stays IN_PROGRESS (the slow emulator never ends it).
    deadline = time.monotonic() + 90
    while not emu.batches():
        assert time.monotonic() < deadline, webserver.log_tail()
        time.sleep(0.2)
    [batch] = emu.batches()
    _wait_for_run(webserver, run_id, until=("STARTED",))
    time.sleep(1.0)  # a few polls

    terminated = webserver.graphql(
        TERMINATE_MUTATION, {"runId": run_id, "terminatePolicy": "SAFE_TERMINATE"}
    )["terminateRun"]
    assert terminated["__typename"] == "TerminateRunSuccess", terminated
    ended = _wait_for_run(webserver, run_id, until=("CANCELED", "FAILURE", "SUCCESS"))
    assert ended["status"] == "CANCELED"

    cancel_calls = [
        r
        for r in emu.requests
        if (r.method, r.path) == ("POST", f"/v1/batches/{batch['id']}/cancel")
    ]
    [after] = emu.batches()
    if cancels:
        assert len(cancel_calls) == 1, webserver.log_tail()
        assert after["status"] in ("CANCELING", "CANCELLED")
    else:
        assert cancel_calls == []
        assert after["status"] not in TERMINAL and after["status"] != "CANCELING"
