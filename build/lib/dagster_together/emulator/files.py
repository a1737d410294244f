"""Files: records in memory, bytes on disk, one file per id under the data directory."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dagster_together.emulator.errors import ApiError, bad_request, not_found
from dagster_together.emulator.quirks import Quirks

CHUNK = 1024 * 1024


@dataclass
class FileRecord:
    """One file as the API knows it."""

    id: str
    filename: str
    purpose: str
    file_type: str
    created_at: int
    path: Path
    bytes: int = 0
    sha256: str | None = None
    uploaded: bool = False  # bytes are on disk (PUT done or added directly)
    processed: bool = False  # preprocess called (or added directly)
    upload_token: str | None = None
    validation_report: dict[str, Any] | None = None  # set by preprocess with validate_uploads

    def to_json(self) -> dict[str, Any]:
        """The FileResponse shape (Together spells ``FileType`` and ``Processed`` this way)."""
        report = self.validation_report
        if report is not None and not report["valid"]:
            status = "INVALID_FORMAT"
        else:
            status = "COMPLETED" if self.processed else "PENDING"
        extra = {} if report is None else {"validation_report": report}
        return {
            "id": self.id,
            "object": "file",
            "created_at": self.created_at,
            "filename": self.filename,
            "bytes": self.bytes,
            "purpose": self.purpose,
            "FileType": self.file_type,
            "Processed": self.processed,
            "processing_status": status,
            **extra,
        }


def _file_type(filename: str) -> str:
    suffix = Path(filename).suffix.lower().lstrip(".")
    return suffix if suffix in ("jsonl", "csv", "parquet") else "jsonl"


def new_file_id() -> str:
    """A file id in the ``file-<uuid>`` form the API uses."""
    return f"file-{uuid.uuid4()}"


class FileStore:
    """Thread-safe store of file records; the bytes live in ``root``."""

    def __init__(self, root: Path, lock: threading.RLock, quirks: Quirks | None = None) -> None:
        self.root = root
        self._quirks = quirks or Quirks()
        self._lock = lock
        self._files: dict[str, FileRecord] = {}
        root.mkdir(parents=True, exist_ok=True)

    # -- queries ---------------------------------------------------------------------------
    def get(self, file_id: str) -> FileRecord:
        """The record of ``file_id``, or 404."""
        with self._lock:
            rec = self._files.get(file_id)
        if rec is None:
            raise not_found("File", file_id)
        return rec

    def list(self) -> list[dict[str, Any]]:
        """All files as FileResponse dicts, oldest first."""
        with self._lock:
            return [rec.to_json() for rec in self._files.values()]

    def open_content(self, file_id: str) -> tuple[BinaryIO, int]:
        """An open handle on the file's bytes and their size (open under the lock, so a
        concurrent delete cannot pull the file from under a download)."""
        with self._lock:
            rec = self.get(file_id)
            if not rec.uploaded:
                raise bad_request(f"File {file_id} has no content yet: upload it first")
            handle = open(rec.path, "rb")  # the caller closes it once sent
        return handle, os.fstat(handle.fileno()).st_size

    # -- upload flow: POST /files -> PUT presigned URL -> POST /files/{id}/preprocess ------
    def create_upload(
        self, *, purpose: str, filename: str, file_type: str | None, checksum: str | None
    ) -> FileRecord:
        """Register a file waiting for its bytes; 409 ``{"file_id"}`` if the checksum is known."""
        with self._lock:
            if checksum:
                for rec in self._files.values():
                    if rec.processed and rec.sha256 == checksum.lower() and rec.purpose == purpose:
                        # SDK 3.x reads `file_id` from a 409 and returns the existing file. It would
                        # retry a 409 twice first (its "lock timeout" rule); x-should-retry stops that.
                        raise ApiError(
                            409,
                            f"A file with the same checksum already exists: {rec.id}",
                            code="file_already_exists",
                            extra={"file_id": rec.id},
                            headers={"x-should-retry": "false"},
                        )
            file_id = new_file_id()
            rec = FileRecord(
                id=file_id,
                filename=filename,
                purpose=purpose,
                file_type=file_type or _file_type(filename),
                created_at=int(time.time()),
                path=self.root / file_id,
                upload_token=secrets.token_urlsafe(24),
            )
            self._files[file_id] = rec
            return rec

    def receive_upload(
        self, file_id: str, token: str | None, read: Callable[[int], bytes], length: int | None
    ) -> None:
        """Stream a PUT body to disk in 1 MiB chunks (memory stays flat for any size).

        ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end; ``length`` is the Content-Length
        when known, ``None`` for a body that ends at EOF (chunked).
        """
        rec = self.get(file_id)
        if not token or not secrets.compare_digest(token, rec.upload_token or ""):
            raise ApiError(
                403,
                "The request signature we calculated does not match the signature you provided.",
                code="SignatureDoesNotMatch",
            )
        tmp = self.root / f".{file_id}.{secrets.token_hex(4)}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                while length is None or size < length:
                    want = CHUNK if length is None else min(CHUNK, length - size)
                    chunk = read(want)
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if length is not None and size != length:
                raise bad_request(f"Incomplete body: got {size} of {length} bytes")
            with self._lock:
                if file_id not in self._files:
                    raise not_found("File", file_id)
                os.replace(tmp, rec.path)
                rec.bytes, rec.sha256, rec.uploaded = size, digest.hexdigest(), True
        finally:
            tmp.unlink(missing_ok=True)

    def preprocess(self, file_id: str) -> dict[str, Any]:
        """Mark an uploaded file processed and return its FileResponse.

        With ``Quirks.validate_uploads`` a ``batch-api`` file is checked first and the answer
        carries its ``validation_report`` (``processing_status: "INVALID_FORMAT"`` when bad).
        """
        with self._lock:
            rec = self.get(file_id)
            if not rec.uploaded:
                raise bad_request(
                    f"File {file_id} has no content yet: PUT it to the upload URL first"
                )
        report = None
        if self._quirks.validate_uploads and rec.purpose == "batch-api":
            report = {"file_id": file_id, **_validate_batch_input(rec.path)}
        with self._lock:
            rec.validation_report = report
            rec.processed = report is None or bool(report["valid"])
            return rec.to_json()

    def store_bytes(self, *, purpose: str, filename: str, data: bytes) -> dict[str, Any]:
        """A one-shot upload (multipart form with the file inline, no redirect)."""
        rec = self.create_upload(purpose=purpose, filename=filename, file_type=None, checksum=None)
        rec.path.write_bytes(data)
        with self._lock:
            rec.bytes, rec.sha256 = len(data), hashlib.sha256(data).hexdigest()
            rec.uploaded = rec.processed = True
            return rec.to_json()

    # -- direct additions (test and benchmark hooks, batch outputs) -------------------------
    def add(
        self,
        source: bytes | str | os.PathLike[str],
        *,
        purpose: str,
        filename: str | None = None,
        move: bool = False,
    ) -> str:
        """Add a processed file from bytes or a local path; return its id.

        A path is hardlinked in (no copy, so a 1 GB file is instant), moved in with
        ``move=True``, and copied only when neither works (another filesystem).
        """
        file_id = new_file_id()
        dest = self.root / file_id
        if isinstance(source, bytes | bytearray | memoryview):
            dest.write_bytes(bytes(source))
            name = filename or f"{file_id}.jsonl"
        else:
            src = Path(source)
            name = filename or src.name
            if move:
                shutil.move(os.fspath(src), dest)
            else:
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copyfile(src, dest)
        rec = FileRecord(
            id=file_id,
            filename=name,
            purpose=purpose,
            file_type=_file_type(name),
            created_at=int(time.time()),
            path=dest,
            bytes=dest.stat().st_size,
            uploaded=True,
            processed=True,
        )
        with self._lock:
            self._files[file_id] = rec
        return file_id

    def delete(self, file_id: str) -> dict[str, Any]:
        """Forget the file and remove its bytes (open downloads keep their handle)."""
        with self._lock:
            rec = self._files.pop(file_id, None)
            if rec is None:
                raise not_found("File", file_id)
            rec.path.unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}


def _validate_batch_input(path: Path) -> dict[str, Any]:
    """The ``validation_report`` fields of a batch input: each line a JSON object with a
    ``custom_id`` and a ``body``."""
    nlines = 0
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            nlines += 1
            try:
                obj = json.loads(raw)
            except ValueError:
                return _invalid(f"Line {lineno} is not valid JSON", nlines)
            if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
                return _invalid(f"Line {lineno} has no 'custom_id' string", nlines)
            if not isinstance(obj.get("body"), dict):
                return _invalid(f"Line {lineno} has no 'body' object", nlines)
    if not nlines:
        return _invalid("The file holds no requests", 0)
    return {"valid": True, "nlines": nlines}


def _invalid(error: str, nlines: int) -> dict[str, Any]:
    return {"valid": False, "error": error, "error_type": "INVALID_FORMAT", "nlines": nlines}
