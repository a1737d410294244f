"""The :class:`Emulator`: a local Together-compatible server on loopback, driven from Python."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from dagster_together.emulator.batches import BatchStore
from dagster_together.emulator.errors import ApiError
from dagster_together.emulator.faults import Fault, FaultSet, make_fault
from dagster_together.emulator.files import FileStore
from dagster_together.emulator.handler import EmulatorHTTPServer, RequestRecord, Service
from dagster_together.emulator.quirks import Quirks
from dagster_together.emulator.responder import Responder


class Emulator:
    """A Together Files + Batch API on ``http://127.0.0.1:PORT/v1``, in memory and on disk.

    >>> with Emulator(api_key="k") as emu:                            # doctest: +SKIP
    ...     client = Together(api_key="k", base_url=emu.host_url)

    Jobs follow a clock from their creation: VALIDATING for ``validate_seconds``, IN_PROGRESS
    for ``run_seconds``, then COMPLETED. A request whose ``custom_id`` matches ``fail_pattern``
    (a regex) or whose last user message contains ``EMULATE_ERROR`` fails into the error file.
    Structured answers, tool calls, reasoning and audio: see
    :mod:`dagster_together.emulator.responder` (``EMULATE_INVALID_JSON``,
    ``EMULATE_SCHEMA_MISMATCH``, ``EMULATE_REASONING``).
    ``api_key=None`` accepts any key or none. Files live in ``data_dir`` (a temporary
    directory, removed on :meth:`close`, when not given). State survives :meth:`stop` /
    :meth:`start`, which reuse the same port.

    The live service's quirks are switches (see :class:`~dagster_together.emulator.quirks.Quirks`
    for each): ``cancel_seconds`` (CANCELING before CANCELLED), ``null_empty_list``,
    ``string_batch_errors``, ``honour_range``, ``unbatched_models``, ``validate_uploads``.
    """

    def __init__(
        self,
        api_key: str | None = None,
        port: int = 0,
        validate_seconds: float = 0.2,
        run_seconds: float = 1.0,
        fail_pattern: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        seed: int = 0,
        cancel_seconds: float = Quirks.cancel_seconds,
        null_empty_list: bool = Quirks.null_empty_list,
        string_batch_errors: bool = Quirks.string_batch_errors,
        honour_range: bool = Quirks.honour_range,
        unbatched_models: Iterable[str] = (),
        validate_uploads: bool = Quirks.validate_uploads,
    ) -> None:
        self.api_key = api_key
        self.quirks = Quirks(
            cancel_seconds=cancel_seconds,
            null_empty_list=null_empty_list,
            string_batch_errors=string_batch_errors,
            honour_range=honour_range,
            unbatched_models=frozenset(unbatched_models),
            validate_uploads=validate_uploads,
        )
        self.host = host
        self._port = port
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="together-emulator-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        # One lock for files and batches: their records refer to each other.
        lock = threading.RLock()
        self._files = FileStore(self.data_dir / "files", lock, self.quirks)
        self._batches = BatchStore(
            self._files,
            lock,
            Responder(fail_pattern),
            validate_seconds=validate_seconds,
            run_seconds=run_seconds,
            seed=seed,
            quirks=self.quirks,
        )
        self._faults = FaultSet()
        self._service = Service(
            files=self._files,
            batches=self._batches,
            faults=self._faults,
            api_key=api_key,
            add_file=self.add_file,
            quirks=self.quirks,
        )
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Emulator:
        """Listen (again) on the port; the first start with ``port=0`` picks a free one."""
        if self._server is not None:
            return self
        server = EmulatorHTTPServer((self.host, self._port), self._service)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"together-emulator-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections (clients see "connection refused").

        State is kept; :meth:`start` serves it again on the same port.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop and remove the temporary data directory (if the emulator made it)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- addresses -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port (known after the first :meth:`start`)."""
        return self._port

    @property
    def host_url(self) -> str:
        """``http://127.0.0.1:PORT``: the base URL for SDK 3.x, which adds ``/v1`` itself."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the base URL with the API version."""
        return f"{self.host_url}/v1"

    # -- observing and steering ------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the public API requests seen so far (admin calls excluded)."""
        return self._service.records()

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self._service.clear_records()

    def add_fault(
        self,
        method: str | None = "GET",
        path: str = ".*",
        kind: str = "status",
        times: int | None = 1,
        **params: Any,
    ) -> Fault:
        """Arm a fault for the next ``times`` requests matching ``method`` and the ``path`` regex.

        ``method=None`` matches any method, ``times=None`` every request. Kinds and their
        params: ``status`` (status, retry_after, retry_after_ms, body, message), ``string_error``
        (status, message), ``drop`` (after_bytes), ``no_content_length``, ``delay`` (seconds).
        See :mod:`dagster_together.emulator.faults`.
        """
        fault = make_fault(method=method, path=path, kind=kind, times=times, **params)
        self._faults.add(fault)
        return fault

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self._faults.clear()

    def add_file(
        self,
        source: bytes | str | os.PathLike[str],
        *,
        purpose: str = "batch-generated",
        filename: str | None = None,
        move: bool = False,
    ) -> str:
        """Add a ready file from bytes or a local path and return its id.

        A path is hardlinked (no copy: a 1 GB file is added instantly), or moved in with
        ``move=True``; it is copied only across filesystems.
        """
        return self._files.add(source, purpose=purpose, filename=filename, move=move)

    def file_content(self, file_id: str) -> bytes:
        """The bytes of a file (an uploaded request file, an output), for tests to inspect
        exactly what the service received or sent."""
        handle, _ = self._files.open_content(file_id)
        with handle:
            return handle.read()

    def batches(self) -> list[dict[str, Any]]:
        """Every batch job as the API would answer it (BatchJob dicts)."""
        return self._batches.list()

    def set_batch_status(
        self, batch_id: str, status: str, *, done_fraction: float | None = None
    ) -> dict[str, Any]:
        """Force a terminal status now: COMPLETED, FAILED, EXPIRED or CANCELLED.

        ``done_fraction`` in [0, 1] chooses how many requests (the first ones, in input order)
        reach the output; the others never come back. Without it COMPLETED keeps all, FAILED
        none, EXPIRED and CANCELLED what the clock says is done. Returns the BatchJob.
        """
        try:
            return self._batches.force(batch_id, status, done_fraction)
        except ApiError as err:
            raise ValueError(err.message) from None
