"""Every command in the docs is run by a test.

Each fenced ``bash``/``sh``/``console`` block of README.md and docs/*.md is either run here (the
blocks of one section in one shell, in order, in a fresh directory outside the repository, on
the emulator), or run step by step by the test its ``<!-- tested-by: ... -->`` line names, or
says why not in a ``<!-- not-tested: <reason> -->`` line (a real API key, a cluster; a test
named in the reason must exist).

Installing is run for real (a new virtual environment, ``pip install '.[ui]'``, a wheel) with
the test environment's packages standing in for the downloads (``PYTHONPATH``): pip finds
every dependency already there and installs only dagster-together.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.docs_blocks import (
    NOT_TESTED,
    README,
    REPO_ROOT,
    TESTED_BY,
    Block,
    command_blocks,
    section_blocks,
)
from tests.helpers import free_port, stop_process_group

TEST_BIN = Path(sys.executable).parent


def _untested_reason(block: Block) -> str | None:
    match = NOT_TESTED.match(block.marker or "")
    return match.group("reason") if match else None


def _tested_by(block: Block) -> tuple[str, str] | None:
    match = TESTED_BY.match(block.marker or "")
    return (match.group("file"), match.group("test")) if match else None


def _test_exists(file: str, test: str) -> bool:
    path = REPO_ROOT / file
    return path.exists() and re.search(rf"^def {test}\(", path.read_text(), re.M) is not None


def _run_here() -> list[Block]:
    return [b for b in command_blocks() if _untested_reason(b) is None and _tested_by(b) is None]


def _sections_run_here() -> list[tuple[Path, str]]:
    return sorted({(b.path, b.section) for b in _run_here()})


def shell_environment(emulator: Any, api_key: str, home: Path) -> dict[str, str]:
    """What a user's shell has after activating the test environment: its ``bin`` first on
    PATH, the API pointed at the emulator, a Dagster home of its own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOGETHER_")}
    env.update(
        PATH=f"{TEST_BIN}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=sys.prefix,
        TOGETHER_BASE_URL=emulator.base_url,
        TOGETHER_API_KEY=api_key,
        DAGSTER_HOME=str(home),
    )
    return env


def copy_checkout(destination: Path) -> Path:
    """The repository's tracked files (as they are in the working tree) under ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = REPO_ROOT / name, destination / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return destination


def run_shell(script: str, cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"exit {done.returncode}:\n{script}\n---\n{output[-6000:]}"
    return output


# -- every block is accounted for ------------------------------------------------------------
def test_every_command_block_is_run_or_says_why_not() -> None:
    blocks = command_blocks()
    assert blocks, "no command blocks found: the parser is broken"
    for block in blocks:
        reason, tested_by = _untested_reason(block), _tested_by(block)
        if block.marker and block.marker.startswith("<!-- not-tested") and reason is None:
            pytest.fail(f"{block.name}: malformed marker {block.marker!r}")
        if tested_by is not None:
            assert _test_exists(*tested_by), f"{block.name}: no test {'::'.join(tested_by)}"
        for file, test in re.findall(r"(tests/[\w/]+\.py)::(\w+)", reason or ""):
            assert _test_exists(file, test), f"{block.name}: its reason names a missing {test}"
    # The README's first screen and its code-location steps are accounted for as intended.
    by_section = {b.section: b for b in blocks if b.path == README}
    assert _tested_by(by_section["Your own code location"]) == (
        "tests/test_docs_commands.py",
        "test_your_own_code_location_step_by_step",
    )
    assert "make demo" in by_section["dagster-together"].text


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("path", "section"),
    _sections_run_here(),
    ids=[f"{p.relative_to(REPO_ROOT)}#{s}" for p, s in _sections_run_here()],
)
def test_command_blocks_run(
    path: Path, section: str, tmp_path: Path, emulator: Any, api_key: str
) -> None:
    """The blocks of one section, in one shell, in a fresh directory beside a copy of the
    checkout (``dagster-together/``)."""
    copy_checkout(tmp_path / "dagster-together")
    script = "".join(b.commands for b in section_blocks(path, section) if b in set(_run_here()))
    run_shell(script, tmp_path, shell_environment(emulator, api_key, tmp_path / "home"), 240)


# -- Installing --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_installing_from_a_checkout_and_from_a_wheel(
    tmp_path: Path, emulator: Any, api_key: str
) -> None:
    checkout = copy_checkout(tmp_path / "dagster-together")
    blocks = [b for b in section_blocks(README, "Installing") if b.language == "bash"]
    assert len(blocks) == 2 and all(_tested_by(b) for b in blocks)
    env = shell_environment(emulator, api_key, tmp_path / "home")
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]  # the downloads, already here
    output = run_shell("".join(b.commands for b in blocks), tmp_path, env, 280)
    assert "Successfully installed dagster-together-" in output

    [wheel] = (checkout / "dist").glob("dagster_together-*-py3-none-any.whl")
    venv_python = checkout / ".venv" / "bin" / "python"
    where = subprocess.run(
        [str(venv_python), "-c", "import dagster_together; print(dagster_together.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The wheel's copy in the new environment, not the checkout nor the test environment's.
    assert where.startswith(str(checkout / ".venv" / "lib")), where
    [metadata] = (checkout / ".venv" / "lib").glob(
        "python*/site-packages/dagster_together-*/METADATA"
    )
    ui = {
        re.split(r"[<>=;\s]", line.removeprefix("Requires-Dist: "))[0]
        for line in metadata.read_text().splitlines()
        if line.startswith("Requires-Dist: ") and re.search(r"extra == .ui.", line)
    }
    assert {"dagster-webserver", "dagster-dg-cli"} <= ui
    assert wheel.stat().st_size > 100_000


# -- Your own code location --------------------------------------------------------------------
@pytest.fixture
def own_location(tmp_path: Path) -> Iterator[Path]:
    """A new directory outside the repository holding the README's ``definitions.py``."""
    [snippet] = [
        b for b in section_blocks(README, "Your own code location") if b.language == "python"
    ]
    project = tmp_path / "my_location"
    project.mkdir()
    (project / "definitions.py").write_text(snippet.text)
    yield project


def _results_runs(home: Path) -> list[Any]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs(dg.RunsFilter(job_name="sentiment_results_job")))


SHUTDOWN_SECONDS = 150


@pytest.mark.slow
@pytest.mark.timeout(300 + SHUTDOWN_SECONDS + 60)
def test_your_own_code_location_step_by_step(own_location: Path) -> None:
    """The emulator started as the README says, ``dg launch`` submits, ``dg dev`` serves the UI
    and its daemon's sensor launches the results run; then Ctrl-C, as in a terminal."""
    [block] = [b for b in section_blocks(README, "Your own code location") if b.language == "bash"]
    # Free ports instead of 8765 and 3000: other checkouts and demos may hold those.
    emulator_port, web_port = free_port(), free_port()
    script = block.commands.replace("8765", str(emulator_port))
    script = script.replace("dg dev ", f"dg dev -p {web_port} ")
    assert f"--port {emulator_port} &" in script and f"dg dev -p {web_port} -f" in script

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOGETHER_", "DAGSTER_"))}
    env.update(PATH=f"{TEST_BIN}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=sys.prefix)
    log_path = own_location.parent / "shell.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", "-e", "-c", script],
            cwd=own_location,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    home = own_location / ".dagster_home"
    final = own_location / "data" / "together" / "sentiment" / "final"
    try:
        deadline = time.monotonic() + 300
        while not list(final.glob("submission=*/part-0.parquet")):
            assert proc.poll() is None, log_path.read_text()[-6000:]
            assert time.monotonic() < deadline, log_path.read_text()[-6000:]
            time.sleep(1)
        while not any(r.status == dg.DagsterRunStatus.SUCCESS for r in _results_runs(home)):
            assert time.monotonic() < deadline, log_path.read_text()[-6000:]
            time.sleep(1)
        [run] = _results_runs(home)
        # Launched by the daemon's sensor, for the batch the submit registered.
        assert run.tags["dagster/sensor_name"] == "sentiment_batch_sensor"
        assert run.tags["dagster-together/batch_status"] == "COMPLETED"

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: dg dev shuts its services down
        # dg dev gives the webserver and the daemon up to 60 s each to stop, then its code
        # servers; wait as long as that before calling it a hang.
        try:
            proc.wait(SHUTDOWN_SECONDS)
        except subprocess.TimeoutExpired:
            tree = subprocess.run(
                ["ps", "-o", "pid,stat,etime,args", "-g", str(proc.pid)],
                capture_output=True,
                text=True,
            ).stdout
            pytest.fail(
                f"dg dev still running {SHUTDOWN_SECONDS} s after Ctrl-C:\n{tree}\n"
                + log_path.read_text()[-6000:]
            )
        text = log_path.read_text()
        assert "Dagster services shut down" in text
        assert "Traceback" not in text and "Warning:" not in text
    finally:
        stop_process_group(proc)  # the emulator, started with `&`, ignores Ctrl-C like `kill %1`
