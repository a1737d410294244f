"""``python -m dagster_together.emulator``: serve the emulator until killed."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from dagster_together.emulator.server import Emulator


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, start the emulator, print its URL, and wait for a signal."""
    parser = argparse.ArgumentParser(
        prog="python -m dagster_together.emulator", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--api-key", default=None, help="require this bearer token (default: accept any)"
    )
    parser.add_argument("--validate-seconds", type=float, default=0.2)
    parser.add_argument("--run-seconds", type=float, default=1.0)
    parser.add_argument("--fail-pattern", default=None, help="regex on custom_id: matches fail")
    parser.add_argument(
        "--data-dir", default=None, help="where file bytes go (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    emu = Emulator(
        api_key=args.api_key,
        port=args.port,
        validate_seconds=args.validate_seconds,
        run_seconds=args.run_seconds,
        fail_pattern=args.fail_pattern,
        data_dir=args.data_dir,
        host=args.host,
        seed=args.seed,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    emu.start()
    print(f"emulator listening on http://{args.host}:{emu.port}/v1", flush=True)
    try:
        while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
            pass
    finally:
        emu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
