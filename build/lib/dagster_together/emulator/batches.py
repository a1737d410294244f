"""Batch jobs: the lifecycle clock, input validation, and output generation.

The status is computed when a job is read, from the time since creation:
VALIDATING for ``validate_seconds`` (and at least until the input has been read), then
IN_PROGRESS with progress rising linearly over ``run_seconds``, then COMPLETED.

Work happens in two steps so that reads stay fast:

1. At creation a daemon thread reads the input once, validates every line and writes the
   answer of every request, in input order, to a staging file (plus an offset per line).
   A malformed input makes the job FAILED once validation time is over.
2. When a job is first seen terminal, the output and error files are cut from the staging
   file: the first ``done_n`` requests in input order (all of them on COMPLETED, the done
   fraction on CANCELLED/EXPIRED), lines shuffled with a seeded RNG. That is byte copying
   only, a fraction of a second for 300,000 lines.

A cancel freezes the done fraction at once; the job answers CANCELING for
``Quirks.cancel_seconds``, then CANCELLED (the live service's two steps).
"""

from __future__ import annotations

import json
import mmap
import random
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from dagster_together.emulator.errors import ApiError, bad_request, not_found
from dagster_together.emulator.files import FileStore
from dagster_together.emulator.quirks import Quirks
from dagster_together.emulator.responder import SUPPORTED_ENDPOINTS, Responder

TERMINAL = ("COMPLETED", "FAILED", "EXPIRED", "CANCELLED")
MAX_CUSTOM_ID = 64
USER_ID = "emulator-user"
_DECODER = json.JSONDecoder()
_FORCED_ERRORS = {
    "FAILED": "Batch job failed (forced by the emulator)",
    "EXPIRED": "Batch job did not finish within its completion window",
}


def rfc3339(ts: float) -> str:
    """``2025-01-02T03:04:05.678901Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class BatchRecord:
    """One batch job and everything the emulator knows about it."""

    id: str
    input_file_id: str
    file_size_bytes: int
    endpoint: str
    model_id: str | None
    created_wall: float
    created_mono: float
    staging: Path
    # filled by the preparing thread
    prepared: threading.Event = field(default_factory=threading.Event)
    prepared_mono: float | None = None
    n: int = 0
    offsets: array = field(default_factory=lambda: array("Q", [0]))  # staging byte offset per line
    ok: bytearray = field(default_factory=bytearray)  # 1 = output line, 0 = error line
    validation_error: str | None = None
    # set by a cancel: when it was asked and how much was done by then
    canceling_mono: float | None = None
    cancel_fraction: float = 0.0
    # set once the job is known to be terminal
    status: str | None = None
    completed_wall: float | None = None
    done_fraction: float = 0.0
    error: str | None = None
    pending_outputs: bool = False
    output_file_id: str | None = None
    error_file_id: str | None = None
    gen_lock: threading.Lock = field(default_factory=threading.Lock)


class BatchStore:
    """Thread-safe batch jobs over a :class:`FileStore` (same lock)."""

    def __init__(
        self,
        files: FileStore,
        lock: threading.RLock,
        responder: Responder,
        *,
        validate_seconds: float,
        run_seconds: float,
        seed: int = 0,
        quirks: Quirks | None = None,
    ) -> None:
        self._files = files
        self._quirks = quirks or Quirks()
        self._lock = lock
        self._responder = responder
        self.validate_seconds = validate_seconds
        self.run_seconds = run_seconds
        self._seed = seed
        self._batches: dict[str, BatchRecord] = {}
        self._staging_dir = files.root / ".staging"
        self._staging_dir.mkdir(exist_ok=True)

    # -- API calls -------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """``POST /batches``: register the job and start reading its input.

        Returns ``(job, warning)``; ``(None, warning)`` when nothing was created because batch
        does not serve the model (``Quirks.unbatched_models``).
        """
        input_file_id = body.get("input_file_id")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise bad_request("'input_file_id' is required", param="input_file_id")
        endpoint = body.get("endpoint")
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise bad_request(
                f"'endpoint' must be one of {list(SUPPORTED_ENDPOINTS)}, got {endpoint!r}",
                param="endpoint",
            )
        model_id = body.get("model_id")
        if model_id is not None and not isinstance(model_id, str):
            raise bad_request("'model_id' must be a string", param="model_id")
        window = body.get("completion_window")
        if window is not None and not isinstance(window, str):
            raise bad_request(
                "'completion_window' must be a string such as '24h'", param="completion_window"
            )
        # 404 for an unknown file, 400 for one whose bytes never arrived.
        handle, size = self._files.open_content(input_file_id)
        if self._quirks.unbatched_models:
            model = model_id or _first_model(handle)
            if model in self._quirks.unbatched_models:
                handle.close()
                return None, (
                    f"Model {model} is not available for batch inference; no batch job was "
                    "created. Use a model listed for the Batch API."
                )
        batch_id = str(uuid.uuid4())
        rec = BatchRecord(
            id=batch_id,
            input_file_id=input_file_id,
            file_size_bytes=size,
            endpoint=endpoint,
            model_id=model_id,
            created_wall=time.time(),
            created_mono=time.monotonic(),
            staging=self._staging_dir / f"{batch_id}.jsonl",
        )
        with self._lock:
            self._batches[batch_id] = rec
            job = self._to_json(rec, rec.created_mono)
        threading.Thread(
            target=self._prepare, args=(rec, handle), name=f"batch-{batch_id[:8]}", daemon=True
        ).start()
        return job, None

    def get(self, batch_id: str) -> dict[str, Any]:
        """``GET /batches/{id}``."""
        rec = self._record(batch_id)
        return self._read(rec)

    def list(self) -> list[dict[str, Any]]:
        """``GET /batches``: every job, oldest first."""
        with self._lock:
            records = list(self._batches.values())
        return [self._read(rec) for rec in records]

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """``POST /batches/{id}/cancel``: requests already done stay in the output.

        The job answers CANCELING for ``cancel_seconds``, then CANCELLED. Cancelling a
        CANCELING or CANCELLED job answers the job again; any other terminal job is a 400.
        """
        rec = self._record(batch_id)
        now = time.monotonic()
        with self._lock:
            self._advance(rec, now)
            if rec.status is None and rec.canceling_mono is None:
                rec.canceling_mono, rec.cancel_fraction = now, self._live_fraction(rec, now)
                self._advance(rec, now)  # cancel_seconds=0: CANCELLED at once
            elif rec.status not in (None, "CANCELLED"):
                raise bad_request(f"Batch job {batch_id} is {rec.status} and cannot be cancelled")
        return self._read(rec)

    def force(
        self, batch_id: str, status: str, done_fraction: float | None = None
    ) -> dict[str, Any]:
        """Test hook: make a job terminal now, optionally with a chosen done fraction.

        Without ``done_fraction``: COMPLETED keeps every request, FAILED none, EXPIRED and
        CANCELLED the fraction done so far by the clock.
        """
        status = status.upper()
        if status not in TERMINAL:
            raise bad_request(
                f"status must be one of {list(TERMINAL)}, got {status!r}", param="status"
            )
        if done_fraction is not None and not 0.0 <= float(done_fraction) <= 1.0:
            raise bad_request("done_fraction must be within [0, 1]", param="done_fraction")
        rec = self._record(batch_id)
        with rec.gen_lock:  # never re-cut outputs while another thread is writing them
            now = time.monotonic()
            with self._lock:
                self._advance(rec, now)
                if done_fraction is not None:
                    fraction = float(done_fraction)
                elif status == "COMPLETED":
                    fraction = 1.0
                elif status == "FAILED":
                    fraction = 0.0
                else:
                    fraction = self._live_fraction(rec, now)
                stale = [fid for fid in (rec.output_file_id, rec.error_file_id) if fid]
                rec.output_file_id = rec.error_file_id = None
                rec.status, rec.canceling_mono = None, None
                self._finish(rec, status, now, fraction, _FORCED_ERRORS.get(status))
        for fid in stale:
            try:
                self._files.delete(fid)
            except ApiError:
                pass  # already deleted by the client
        return self._read(rec)

    # -- lifecycle -------------------------------------------------------------------------
    def _record(self, batch_id: str) -> BatchRecord:
        with self._lock:
            rec = self._batches.get(batch_id)
        if rec is None:
            raise not_found("Batch job", batch_id)
        return rec

    def _run_start(self, rec: BatchRecord) -> float:
        assert rec.prepared_mono is not None
        return max(rec.created_mono + self.validate_seconds, rec.prepared_mono)

    def _validating(self, rec: BatchRecord, now: float) -> bool:
        return not rec.prepared.is_set() or now - rec.created_mono < self.validate_seconds

    def _live_fraction(self, rec: BatchRecord, now: float) -> float:
        """The share of requests done by the clock at ``now`` (0 while validating)."""
        if self._validating(rec, now) or rec.validation_error:
            return 0.0
        if self.run_seconds <= 0:
            return 1.0
        return min(1.0, max(0.0, (now - self._run_start(rec)) / self.run_seconds))

    def _advance(self, rec: BatchRecord, now: float) -> None:
        """Under the lock: turn the job terminal if its clock says so."""
        if rec.status is not None:
            return
        if rec.canceling_mono is not None:
            ends = rec.canceling_mono + self._quirks.cancel_seconds
            if now >= ends:
                self._finish(rec, "CANCELLED", ends, rec.cancel_fraction, None)
            return
        if self._validating(rec, now):
            return
        if rec.validation_error:
            self._finish(rec, "FAILED", self._run_start(rec), 0.0, rec.validation_error)
        elif self._live_fraction(rec, now) >= 1.0:
            self._finish(rec, "COMPLETED", self._run_start(rec) + self.run_seconds, 1.0, None)

    def _finish(
        self, rec: BatchRecord, status: str, at_mono: float, fraction: float, error: str | None
    ) -> None:
        rec.status = status
        rec.completed_wall = rec.created_wall + (at_mono - rec.created_mono)
        rec.done_fraction = fraction
        rec.error = error
        rec.pending_outputs = True

    def _read(self, rec: BatchRecord) -> dict[str, Any]:
        """Advance the clock, cut outputs if the job just ended, answer the BatchJob."""
        now = time.monotonic()
        with self._lock:
            self._advance(rec, now)
            pending = rec.pending_outputs
        if pending:
            self._write_outputs(rec)
        with self._lock:
            return self._to_json(rec, now)

    def _to_json(self, rec: BatchRecord, now: float) -> dict[str, Any]:
        if rec.status is not None:
            status = rec.status
            progress = 100.0 if status == "COMPLETED" else rec.done_fraction * 100.0
        elif rec.canceling_mono is not None:
            status, progress = "CANCELING", rec.cancel_fraction * 100.0
        elif self._validating(rec, now):
            status, progress = "VALIDATING", 0.0
        else:
            status, progress = "IN_PROGRESS", self._live_fraction(rec, now) * 100.0
        return {
            "id": rec.id,
            "user_id": USER_ID,
            "input_file_id": rec.input_file_id,
            "file_size_bytes": rec.file_size_bytes,
            "status": status,
            "job_deadline": rfc3339(rec.created_wall + 24 * 3600),
            "created_at": rfc3339(rec.created_wall),
            "endpoint": rec.endpoint,
            "progress": round(progress, 2),
            "model_id": rec.model_id,
            "output_file_id": rec.output_file_id,
            "error_file_id": rec.error_file_id,
            "error": rec.error,
            "completed_at": rfc3339(rec.completed_wall) if rec.completed_wall is not None else None,
        }

    # -- step 1: read and validate the input, answer every request in input order ---------
    def _prepare(self, rec: BatchRecord, handle: BinaryIO) -> None:
        rng = random.Random(f"{self._seed}:{rec.id}:ids")
        line = self._responder.line
        decode = _DECODER.decode  # skips json.loads' per-call encoding sniffing
        offsets = array("Q", [0])
        ok = bytearray()
        seen: set[str] = set()
        pos = 0
        error: str | None = None
        model: str | None = rec.model_id
        created = int(time.time())
        try:
            with handle, open(rec.staging, "wb", buffering=1 << 20) as out:
                for lineno, raw in enumerate(handle, 1):
                    if not raw.strip():
                        continue
                    try:
                        obj = decode(raw.decode())
                    except ValueError:  # bad JSON or bad UTF-8
                        error = f"Invalid input file: line {lineno} is not valid JSON"
                        break
                    if not isinstance(obj, dict):
                        error = f"Invalid input file: line {lineno} is not a JSON object"
                        break
                    custom_id = obj.get("custom_id")
                    if not isinstance(custom_id, str) or not custom_id:
                        error = f"Invalid input file: line {lineno} has no 'custom_id'"
                        break
                    if len(custom_id) > MAX_CUSTOM_ID:
                        error = f"Invalid input file: line {lineno}: 'custom_id' is longer than {MAX_CUSTOM_ID} characters"
                        break
                    if custom_id in seen:
                        error = (
                            f"Invalid input file: line {lineno}: duplicate custom_id {custom_id!r}"
                        )
                        break
                    seen.add(custom_id)
                    body = obj.get("body")
                    if not isinstance(body, dict):
                        error = f"Invalid input file: line {lineno} has no 'body' object"
                        break
                    if model is None and isinstance(body.get("model"), str):
                        model = body["model"]  # the job reports the model its requests use
                    succeeded, text = line(
                        endpoint=rec.endpoint,
                        custom_id=custom_id,
                        body=body,
                        default_model=rec.model_id,
                        created=created,
                        line_id=f"br_{rng.getrandbits(96):024x}",
                        request_id=f"{rng.getrandbits(64):016x}",
                    )
                    data = text.encode()
                    out.write(data)
                    pos += len(data)
                    offsets.append(pos)
                    ok.append(succeeded)
            if error is None and not ok:
                error = "Invalid input file: it holds no requests"
        except Exception as exc:  # an unreadable file fails the job, it must not kill the server
            error = f"Invalid input file: {exc}"
        if error is not None:
            rec.staging.unlink(missing_ok=True)
            offsets, ok = array("Q", [0]), bytearray()
        with self._lock:
            rec.offsets, rec.ok, rec.n = offsets, ok, len(ok)
            rec.validation_error = error
            rec.model_id = model
            rec.prepared_mono = time.monotonic()
        rec.prepared.set()

    # -- step 2: cut the output and error files ------------------------------------------
    def _write_outputs(self, rec: BatchRecord) -> None:
        with rec.gen_lock:
            with self._lock:
                if not rec.pending_outputs:
                    return  # another reader did it while we waited for the lock
                fraction = rec.done_fraction
            if fraction > 0:
                rec.prepared.wait()  # forced early: the answers must exist before we cut them
            done_n = 0 if rec.validation_error else int(fraction * rec.n + 1e-9)
            out_id = err_id = None
            if done_n:
                out_id, err_id = self._cut(rec, done_n)
            with self._lock:
                rec.output_file_id, rec.error_file_id = out_id, err_id
                rec.pending_outputs = False

    def _cut(self, rec: BatchRecord, done_n: int) -> tuple[str | None, str | None]:
        order = list(range(done_n))
        random.Random(f"{self._seed}:{rec.id}:order").shuffle(order)
        root = self._files.root
        out_tmp = root / f".{rec.id}.output.tmp"
        err_tmp = root / f".{rec.id}.error.tmp"
        n_out = n_err = 0
        offsets, ok = rec.offsets, rec.ok
        with (
            open(rec.staging, "rb") as staging,
            mmap.mmap(staging.fileno(), 0, access=mmap.ACCESS_READ) as mm,
            open(out_tmp, "wb", buffering=1 << 20) as out,
            open(err_tmp, "wb", buffering=1 << 20) as err,
        ):
            for i in order:
                if ok[i]:
                    out.write(mm[offsets[i] : offsets[i + 1]])
                    n_out += 1
                else:
                    err.write(mm[offsets[i] : offsets[i + 1]])
                    n_err += 1
        ids: list[str | None] = []
        for tmp, count, kind in ((out_tmp, n_out, "output"), (err_tmp, n_err, "error")):
            if count:
                ids.append(
                    self._files.add(
                        tmp,
                        purpose="batch-generated",
                        filename=f"batch_{rec.id}_{kind}.jsonl",
                        move=True,
                    )
                )
            else:
                tmp.unlink(missing_ok=True)
                ids.append(None)
        return ids[0], ids[1]


def _first_model(handle: BinaryIO) -> str | None:
    """``body.model`` of the input's first request (the handle is rewound afterwards)."""
    try:
        for raw in handle:
            if raw.strip():
                body = json.loads(raw).get("body")
                model = body.get("model") if isinstance(body, dict) else None
                return model if isinstance(model, str) else None
        return None
    except (ValueError, AttributeError):
        return None  # a malformed input fails later, in validation
    finally:
        handle.seek(0)
