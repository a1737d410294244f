"""``python -m dagster_together.emulator``: serve the emulator until killed."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from dagster_together.emulator.quirks import Quirks
from dagster_together.emulator.server import Emulator

DESCRIPTION = """\
A local Together AI Files and Batch API for demos, tests and benchmarks. It listens on
http://HOST:PORT/v1 until it receives SIGINT or SIGTERM. Point a client at that URL (with
or without /v1) and any API key (or the one given with --api-key).

Batch jobs follow a clock: VALIDATING for --validate-seconds, then IN_PROGRESS for
--run-seconds, then COMPLETED. A request whose last user message contains EMULATE_ERROR,
or whose custom_id matches --fail-pattern, fails into the batch's error file. A request with
a response_format schema gets schema-shaped JSON, or with EMULATE_INVALID_JSON or
EMULATE_SCHEMA_MISMATCH in its last user message an answer that is not JSON or does not
match; EMULATE_REASONING adds message.reasoning; tools get a tool call to the first one.
Audio requests get {"text"}, and with response_format verbose_json language and duration.
"""

EPILOG = """\
The live service's quirks are on by default where the public record shows them:
a cancel answers CANCELING before CANCELLED, an empty batch list is the JSON
literal null, and the batch endpoints send errors as {"error": "<message>"}.
The options above turn each one off, or turn on the others.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (its help is plain text: every option says what it does)."""
    parser = argparse.ArgumentParser(
        prog="python -m dagster_together.emulator",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="TCP port; 0 picks a free one (default: 8765)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="accept only this bearer token; without it any key, or none, is accepted",
    )
    parser.add_argument(
        "--validate-seconds",
        type=float,
        default=0.2,
        help="seconds a new batch stays VALIDATING (default: 0.2)",
    )
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=1.0,
        help="seconds a batch stays IN_PROGRESS before it is COMPLETED (default: 1.0)",
    )
    parser.add_argument(
        "--fail-pattern",
        default=None,
        help="regular expression searched in each custom_id; matching requests fail",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory for the files' bytes (default: a temporary directory, removed on exit)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the output line order and ids, so runs repeat exactly (default: 0)",
    )
    parser.add_argument(
        "--cancel-seconds",
        type=float,
        default=Quirks.cancel_seconds,
        help="seconds a cancelled batch answers CANCELING before it is CANCELLED; "
        f"0 cancels at once (default: {Quirks.cancel_seconds})",
    )
    parser.add_argument(
        "--empty-list-as-array",
        action="store_true",
        help="answer [] instead of null when there are no batches",
    )
    parser.add_argument(
        "--object-batch-errors",
        action="store_true",
        help='send batch errors as {"error": {"message": ..., "type": ...}} instead of '
        '{"error": "<message>"}',
    )
    parser.add_argument(
        "--ignore-range",
        action="store_true",
        help="answer every file download with the whole file (200) and ignore Range headers",
    )
    parser.add_argument(
        "--unbatched-model",
        action="append",
        default=[],
        metavar="MODEL",
        help="a model batch does not serve: creating a batch for it answers "
        '{"job": null, "warning": ...}; repeat for more models',
    )
    parser.add_argument(
        "--validate-uploads",
        action="store_true",
        help="check batch input files when they are uploaded and report a bad one as "
        "INVALID_FORMAT with a failing validation_report",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, start the emulator, print its URL, and wait for a signal."""
    args = build_parser().parse_args(argv)
    emu = Emulator(
        api_key=args.api_key,
        port=args.port,
        validate_seconds=args.validate_seconds,
        run_seconds=args.run_seconds,
        fail_pattern=args.fail_pattern,
        data_dir=args.data_dir,
        host=args.host,
        seed=args.seed,
        cancel_seconds=args.cancel_seconds,
        null_empty_list=not args.empty_list_as_array,
        string_batch_errors=not args.object_batch_errors,
        honour_range=not args.ignore_range,
        unbatched_models=args.unbatched_model,
        validate_uploads=args.validate_uploads,
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
