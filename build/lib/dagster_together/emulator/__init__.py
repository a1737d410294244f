"""A local Together-compatible Files + Batch API server, for the demo, the tests and the benchmarks.

Standard library only, so it imports fast and never needs Dagster::

    from dagster_together.emulator import Emulator

    with Emulator(api_key="k", run_seconds=1.0) as emu:
        ...  # point a client at emu.base_url (".../v1") or emu.host_url (SDK 3.x)

Or from a shell: ``python -m dagster_together.emulator --port 8765``.
"""

from dagster_together.emulator.faults import Fault
from dagster_together.emulator.handler import RequestRecord
from dagster_together.emulator.quirks import Quirks
from dagster_together.emulator.responder import ERROR_MARKER
from dagster_together.emulator.server import Emulator

__all__ = ["ERROR_MARKER", "Emulator", "Fault", "Quirks", "RequestRecord"]
