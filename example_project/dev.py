"""``make dev``: the Dagster UI (webserver + daemon) on the example project, emulator included.

Runs ``dagster dev`` in the repository root, which opens ``example_project.definitions``
(``[tool.dagster]`` in ``pyproject.toml``), with ``DAGSTER_HOME`` defaulting to
``.demo/dagster_home``: the instance ``make demo`` used, so its runs and materialisations show
up. Without ``TOGETHER_BASE_URL`` the local emulator is started first (or the running one
reused); Ctrl-C stops ``dagster dev`` and then the emulator, if this command started it.

Extra arguments go to ``dagster dev``, e.g. ``python -m example_project.dev -p 3001``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from example_project.demo import prepare_dagster_home
from example_project.local_emulator import DEMO_DIR, REPO_ROOT, ensure_emulator, stop_emulator

__all__ = ["main"]

# dagster dev shuts its webserver, daemon and code server down on SIGINT; give it this long.
_SHUTDOWN_SECONDS = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    """Start the emulator if needed, run ``dagster dev`` until it exits, clean up after it."""
    extra = list(sys.argv[1:] if argv is None else argv)
    # Started with SIGINT ignored (`make dev &` in a script, nohup), Python would ignore Ctrl-C
    # and so would dagster dev: an ignored signal stays ignored across exec, a handled one not.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    home = prepare_dagster_home(os.environ.get("DAGSTER_HOME") or DEMO_DIR / "dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    emulator = None
    if not os.environ.get("TOGETHER_BASE_URL"):
        emulator = ensure_emulator()
        state = "started" if emulator.started else "already running"
        print(f"Local Together emulator {state}: {emulator.base_url}", flush=True)
    print(f"DAGSTER_HOME={home}", flush=True)

    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", *extra], cwd=str(REPO_ROOT), env=env
    )

    def _forward(signum: int, frame: FrameType | None) -> None:
        # `kill <pid of make dev>`: shut dagster dev down the way Ctrl-C does.
        proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, _forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached dagster dev as well (same process group): wait for its shutdown.
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
