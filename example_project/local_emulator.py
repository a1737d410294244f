"""One local Together emulator for every process that loads the example project.

Dagster loads a code location in several processes: the code server behind ``dg dev``, each run
worker, the daemon. Each of them imports ``example_project.definitions``, and with no
``TOGETHER_BASE_URL`` set each of them calls :func:`ensure_emulator`. They must all talk to
the *same* emulator, because it keeps its files and batches in memory: a batch created by the
submit run has to be visible to the sensor in the daemon and to the results run.

So :func:`ensure_emulator`:

1. asks ``http://127.0.0.1:<port>/_emulator/health`` with a short timeout and returns at once
   when an emulator answers (the common case: loading stays fast);
2. otherwise takes an exclusive ``fcntl`` lock on ``<state_dir>/emulator.lock``, asks again (a
   process that held the lock before us may just have started one), and only then starts
   ``python -m dagster_together.emulator`` as a detached process (its own session, so Ctrl-C
   in a terminal or the end of the run worker that happened to start it does not kill it),
   output to ``<state_dir>/emulator.log``, pid in ``<state_dir>/emulator.pid``;
3. waits, still holding the lock, until the emulator answers its health check.

The emulator keeps running after the process that started it exits; :func:`stop_emulator`
stops it (``make demo`` and ``make dev`` do so for an emulator they started themselves), or
``kill $(cat .demo/emulator.pid)``. POSIX only (``fcntl``, sessions), like ``dg dev``'s own
process handling on Linux and macOS.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_PORT",
    "DEMO_DIR",
    "LocalEmulator",
    "emulator_is_up",
    "ensure_emulator",
    "stop_emulator",
]

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / ".demo"
"""Where the demo keeps its state (emulator files and log, Dagster home, output): git-ignored."""

# The emulator's clock: long enough to watch a batch go VALIDATING -> IN_PROGRESS -> COMPLETED
# over a few sensor ticks, short enough for a demo well under a minute.
DEFAULT_VALIDATE_SECONDS = 1.0
DEFAULT_RUN_SECONDS = 4.0

# No proxy for loopback: an http_proxy in the environment must not intercept the health check.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Popen objects of the emulators this process started: waiting on them reaps the child.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class LocalEmulator:
    """A running local emulator.

    Attributes:
        base_url: ``http://127.0.0.1:<port>/v1``, for ``TogetherResource(base_url=...)``.
        port: its TCP port.
        pid: its process id when known (started here, or read from the pid file).
        started: True when *this* call started it (so the caller may stop it).
        state_dir: the directory of its lock, pid and log files.
    """

    base_url: str
    port: int
    pid: int | None
    started: bool
    state_dir: Path


def _base_url(port: int) -> str:
    return f"http://{HOST}:{port}/v1"


def emulator_is_up(port: int = DEFAULT_PORT, timeout: float = 0.5) -> bool:
    """Whether an emulator answers its health check on ``127.0.0.1:<port>``."""
    url = f"http://{HOST}:{port}/_emulator/health"
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status == 200 and json.loads(resp.read()).get("ok") is True
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        # Refused, timed out, cut off mid-answer (it is stopping), or something that is not our
        # emulator (not JSON, not a dict).
        return False


def read_pid(pid_file: Path) -> int | None:
    """The pid written in ``pid_file``, or None when there is none (or it is not a number)."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(log_file: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_emulator(
    *,
    port: int = DEFAULT_PORT,
    state_dir: str | os.PathLike[str] = DEMO_DIR,
    validate_seconds: float = DEFAULT_VALIDATE_SECONDS,
    run_seconds: float = DEFAULT_RUN_SECONDS,
    start_timeout: float = 30.0,
) -> LocalEmulator:
    """Return the emulator on ``127.0.0.1:<port>``, starting it first if nothing answers.

    Safe to call from many processes at once: exactly one of them starts the emulator, the
    others wait for it and use it. ``validate_seconds``/``run_seconds`` apply only when this
    call starts it.

    Raises:
        RuntimeError: the emulator could not be started (e.g. the port is taken by another
            program); the message includes the end of its log.
    """
    state = Path(state_dir)
    pid_file = state / "emulator.pid"
    if emulator_is_up(port):
        return LocalEmulator(_base_url(port), port, read_pid(pid_file), False, state)

    state.mkdir(parents=True, exist_ok=True)
    log_file = state / "emulator.log"
    with open(state / "emulator.lock", "a+") as lock:
        # Blocks while another process is starting the emulator; released when the file closes.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if emulator_is_up(port):
            return LocalEmulator(_base_url(port), port, read_pid(pid_file), False, state)
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dagster_together.emulator",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--data-dir",
                    str(state / "emulator"),
                    "--validate-seconds",
                    str(validate_seconds),
                    "--run-seconds",
                    str(run_seconds),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: signals to our process group (Ctrl-C) do not reach it.
                start_new_session=True,
                # close_fds (the default) matters: an inherited lock descriptor would keep the
                # lock held for as long as the emulator lives.
                close_fds=True,
                cwd=str(REPO_ROOT),
            )
        _STARTED[proc.pid] = proc
        pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + start_timeout
        while not emulator_is_up(port, timeout=0.2):
            if proc.poll() is not None:
                _STARTED.pop(proc.pid, None)
                pid_file.unlink(missing_ok=True)
                raise RuntimeError(
                    f"The local Together emulator exited with code {proc.returncode} before it "
                    f"answered on port {port} (is the port taken?). Log {log_file}:\n"
                    + _log_tail(log_file)
                )
            if time.monotonic() > deadline:
                _terminate(proc.pid)
                raise RuntimeError(
                    f"The local Together emulator did not answer on port {port} within "
                    f"{start_timeout:.0f} s. Log {log_file}:\n" + _log_tail(log_file)
                )
            time.sleep(0.05)
        return LocalEmulator(_base_url(port), port, proc.pid, True, state)


def _terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM (the emulator closes cleanly), then SIGKILL if it does not exit in time."""
    proc = _STARTED.pop(pid, None)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_emulator(emulator: LocalEmulator) -> bool:
    """Stop ``emulator`` if this process started it; return whether it was stopped.

    An emulator someone else started (another ``make dev``, a test) is left alone.
    """
    if not emulator.started or emulator.pid is None:
        return False
    _terminate(emulator.pid)
    pid_file = emulator.state_dir / "emulator.pid"
    if read_pid(pid_file) == emulator.pid:
        pid_file.unlink(missing_ok=True)
    return True
