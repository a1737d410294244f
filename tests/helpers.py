"""Plain helpers shared by several test modules (fixtures live in conftest.py).

Import as ``from tests.helpers import ...`` (pytest puts the repository root on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pyarrow as pa
import pytest

from dagster_together import (
    BatchingOptions,
    TogetherBatchDefs,
    TogetherResource,
    build_together_batch_defs,
)
from dagster_together.client import TogetherClient
from dagster_together.requests import RequestTemplate

TERMINAL = ("COMPLETED", "FAILED", "EXPIRED", "CANCELLED")
TEMPLATE = RequestTemplate(model="m", prompt_column="text")


# -- data -------------------------------------------------------------------------------------
def random_jsonl(size: int, seed: int = 0) -> bytes:
    """``size`` bytes of JSONL-looking text that does not compress to nothing."""
    rng = random.Random(seed)
    lines, total = [], 0
    while total < size:
        line = f'{{"custom_id": "r{len(lines)}", "x": "{rng.getrandbits(256):064x}"}}\n'.encode()
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


def request_line(custom_id: Any = "r1", model: Any = MODEL, **extra: Any) -> str:
    """One batch input line (no newline); ``model=None`` leaves the body without a model."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    return json.dumps({"custom_id": custom_id, "body": body, **extra})


def jsonl(*lines: str) -> bytes:
    """The bytes of a JSONL file holding ``lines``."""
    return ("\n".join(lines) + "\n").encode()


def write_requests(
    path: Path,
    n: int = 3,
    *,
    model: str = "m",
    prompt: str = "hello {i}",
    custom_id: str = "r{i}",
) -> Path:
    """A batch request file of ``n`` chat requests; ``{i}`` in ``prompt``/``custom_id`` is the
    line number."""
    with path.open("w") as handle:
        for i in range(n):
            body = {"model": model, "messages": [{"role": "user", "content": prompt.format(i=i)}]}
            handle.write(json.dumps({"custom_id": custom_id.format(i=i), "body": body}) + "\n")
    return path


# -- the client and the emulator ----------------------------------------------------------------
def fast_client(
    emulator: Any, api_key: str, *, timeout: float, max_retries: int, **kwargs: Any
) -> TogetherClient:
    """A client on the emulator with a fast backoff (retries cost milliseconds)."""
    return TogetherClient(
        api_key,
        emulator.base_url,
        timeout=timeout,
        max_retries=max_retries,
        backoff_base=0.01,
        backoff_max=0.05,
        **kwargs,
    )


def content_calls(emulator: Any) -> list[Any]:
    """The requests the emulator saw for a file's content."""
    return [r for r in emulator.requests if r.path.endswith("/content")]


def wait_terminal(emulator: Any, ids: list[str] | None = None, timeout: float = 10.0) -> None:
    """Until the batches ``ids`` are in a final status; ``None``: every batch (at least one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = {b["id"]: b["status"] for b in emulator.batches()}
        wanted = list(status) if ids is None else ids
        if (ids is not None or wanted) and all(status[i] in TERMINAL for i in wanted):
            return
        time.sleep(0.01)  # the emulator's own state, no HTTP: polling often is cheap
    raise AssertionError(f"batches not terminal in time: {status}")


# -- S3 (moto) --------------------------------------------------------------------------------
def open_multipart_uploads(s3_server: Any, bucket_url: str) -> list[Any]:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    return s3.list_multipart_uploads(Bucket=bucket_url.removeprefix("s3://")).get("Uploads", [])


# -- processes --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's process group, then SIGKILL to whatever is left of it (the code
    server or a run worker may outlive the parent by a moment)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def modules_added_by_import(baseline: str, module: str) -> list[str]:
    """The modules that ``import module`` loads on top of ``import baseline``, in a fresh
    interpreter."""
    code = (
        f"import sys, json; import {baseline}; before = set(sys.modules); "
        f"import {module}; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


# -- Dagster ----------------------------------------------------------------------------------
# The start of the defs.py of write_dagster_project: imports, CONFIG (formatted in), RESOURCES.
CODE_LOCATION_HEADER = '''
"""A tiny code location, written by a test (see write_dagster_project in tests/helpers.py)."""

import json

import dagster as dg
import pyarrow as pa

from dagster_together import (
    BatchingOptions,
    BatchStorageLayout,
    RequestTemplate,
    SensorOptions,
    TogetherResource,
    WaitOptions,
    build_together_batch_defs,
)

CONFIG = json.loads({config!r})
RESOURCES = {{
    "together": TogetherResource(api_key=dg.EnvVar("TOGETHER_API_KEY"), base_url=CONFIG["base_url"])
}}

'''


def write_dagster_project(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    api_key: str,
    *,
    dagster_yaml: str,
    code_location: str,
    config: dict[str, Any],
    location: str,
) -> dict[str, Any]:
    """The code location (``defs.py``, ``code_location`` formatted with ``config``), a workspace
    loading it as ``location`` and the instance directory, written into tmp_path;
    ``DAGSTER_HOME`` and ``TOGETHER_API_KEY`` set for the processes the test starts."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml)
    (tmp_path / "defs.py").write_text(code_location.format(config=json.dumps(config)))
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n"
        "  - python_file:\n"
        "      relative_path: defs.py\n"
        f"      location_name: {location}\n"
        "      working_directory: .\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("TOGETHER_API_KEY", api_key)
    return {"home": home, "config": config}


class SensorPipeline:
    """Prompts (``table``) + the batch assets on one emulator and one instance, and the sensor
    evaluated like the daemon does."""

    def __init__(
        self,
        emu: Any,
        api_key: str,
        instance: dg.DagsterInstance,
        store: Path,
        table: pa.Table,
        max_requests_per_batch: int = 50_000,
        **kwargs: Any,
    ) -> None:
        @dg.asset(name="prompts")
        def prompts() -> pa.Table:
            return table

        self.emu, self.instance, self.prompts = emu, instance, prompts
        self.bundle: TogetherBatchDefs = build_together_batch_defs(
            name="docs",
            prompts=prompts,
            storage=str(store),
            template=TEMPLATE,
            id_column="id",
            batching=BatchingOptions(max_requests_per_batch=max_requests_per_batch),
            **kwargs,
        )
        self.resources = {"together": TogetherResource(api_key=api_key, base_url=emu.base_url)}
        self.defs = dg.Definitions.merge(
            self.bundle.defs, dg.Definitions(assets=[prompts], resources=self.resources)
        )
        self.cursor: str | None = None

    def submit(self) -> list[str]:
        result = dg.materialize(
            [self.prompts, self.bundle.submit_asset],
            instance=self.instance,
            resources=self.resources,
        )
        [mat] = result.asset_materializations_for_node(self.bundle.submit_asset.node_def.name)
        return list(mat.metadata["together/batch_ids"].value)

    def evaluate_sensor(self) -> Any:
        """One evaluation; like the daemon, the cursor is kept only when the tick succeeds."""
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            definitions=self.defs,
            resources=self.resources,
        ) as context:
            result = self.bundle.sensor(context)
        if isinstance(result, dg.SensorResult) and result.cursor is not None:
            self.cursor = result.cursor
        return result
