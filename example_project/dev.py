"""``make dev``: the Dagster UI (webserver + daemon) on the example project, emulator included.

Runs ``dg dev`` (Dagster's CLI, from ``dagster-dg-cli``) in the repository root, which opens
``example_project.definitions`` (``[tool.dg.project]`` in ``pyproject.toml``), with
``DAGSTER_HOME`` defaulting to ``.demo/dagster_home``: the instance ``make demo`` used, so its
runs and materialisations show up. Without ``TOGETHER_BASE_URL`` the local emulator is started
first (or the running one reused); Ctrl-C stops ``dg dev`` and then the emulator, if this
command started it.

Extra arguments go to ``dg dev``, e.g. ``python -m example_project.dev -p 3001``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from example_project.demo import prepare_dagster_home
from example_project.local_emulator import DEMO_DIR, REPO_ROOT, ensure_emulator, stop_emulator

__all__ = ["dg_command", "dg_environment", "main"]

# dg dev shuts its webserver, daemon and code server down on SIGINT; give it this long.
_SHUTDOWN_SECONDS = 30.0


def dg_command() -> list[str]:
    """``dg`` from this interpreter's environment (``make install`` puts it in ``.venv/bin``)."""
    dg = Path(sys.executable).parent / "dg"
    if not dg.exists():
        raise SystemExit(
            f"{dg} not found: install Dagster's CLI with `pip install -e '.[ui]'` "
            "(or `make install`, which includes it)."
        )
    return [str(dg)]


def dg_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``environ`` for ``dg``, with ``VIRTUAL_ENV`` naming the environment it runs from.

    ``dg`` warns when the active virtual environment is not the project's ``.venv``; run as
    ``.venv/bin/python -m example_project.dev`` (``make dev``) it is, even when not activated.
    """
    env = dict(environ)
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Start the emulator if needed, run ``dg dev`` until it exits, clean up after it."""
    extra = list(sys.argv[1:] if argv is None else argv)
    # Started with SIGINT ignored (`make dev &` in a script, nohup), Python would ignore Ctrl-C
    # and so would dg dev: an ignored signal stays ignored across exec, a handled one not.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    home = prepare_dagster_home(os.environ.get("DAGSTER_HOME") or DEMO_DIR / "dagster_home")
    env = {**dg_environment(), "DAGSTER_HOME": str(home)}
    emulator = None
    if not os.environ.get("TOGETHER_BASE_URL"):
        emulator = ensure_emulator()
        state = "started" if emulator.started else "already running"
        print(f"Local Together emulator {state}: {emulator.base_url}", flush=True)
    print(f"DAGSTER_HOME={home}", flush=True)

    proc = subprocess.Popen([*dg_command(), "dev", *extra], cwd=str(REPO_ROOT), env=env)

    def _forward(signum: int, frame: FrameType | None) -> None:
        # `kill <pid of make dev>`: shut dg dev down the way Ctrl-C does.
        proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, _forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached dg dev as well (same process group): wait for its shutdown.
                try:
                    return proc.wait(_SHUTDOWN_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                except KeyboardInterrupt:  # a second Ctrl-C: stop waiting politely
                    proc.terminate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if emulator is not None and stop_emulator(emulator):
            print("Local Together emulator stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
