"""Files: upload (POST /files -> PUT presigned URL -> preprocess), list, retrieve, delete, content."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from dagster_together.client.download import retrieve_content
from dagster_together.client.errors import (
    APIError,
    ConflictError,
    FileValidationError,
    InputFileNotFoundError,
)
from dagster_together.client.progress import LogSink
from dagster_together.client.transport import Transport, quote_id, redact_url
from dagster_together.client.types import FileObject, FileResponse

logger = logging.getLogger("dagster_together.client")

_UPLOAD_CHUNK = 1024 * 1024  # PUT body read size: memory stays flat whatever the file size
_FILE_TYPES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_UPLOAD_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _multipart_form(fields: dict[str, str]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of plain text fields (httpx only builds multipart when a
    file part is present, and this step carries no file bytes)."""
    boundary = uuid.uuid4().hex
    lines: list[bytes] = []
    for name, value in fields.items():
        lines.append(f"--{boundary}\r\n".encode())
        lines.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        lines.append(value.encode("utf-8") + b"\r\n")
    lines.append(f"--{boundary}--\r\n".encode())
    return b"".join(lines), f"multipart/form-data; boundary={boundary}"


def _read_chunks(path: Path, size: int) -> Iterator[bytes]:
    """The file's first ``size`` bytes in 1 MiB chunks (exactly what Content-Length announced)."""
    remaining = size
    with path.open("rb") as handle:
        while remaining > 0:
            block = handle.read(min(_UPLOAD_CHUNK, remaining))
            if not block:
                raise APIError(
                    f"{path} shrank while it was being uploaded; upload it again once it is stable."
                )
            remaining -= len(block)
            yield block


class Files:
    """The ``/files`` endpoints. Reached as ``TogetherClient(...).files``."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"Files({self._transport!r})"

    # -- upload -------------------------------------------------------------------------------
    def upload(
        self,
        file: str | os.PathLike[str],
        *,
        purpose: str = "batch-api",
        check: bool = True,
        checksum: str | None = None,
    ) -> FileResponse:
        """Upload a local file and return it once Together has accepted it.

        Flow: ``POST /files`` (form fields ``purpose``, ``file_name``, ``file_type``, ``checksum``)
        answers ``302`` with a presigned ``Location`` and ``X-Together-File-Id``; the bytes are
        streamed to that URL with ``PUT`` (no API key is sent there); ``POST
        /files/{id}/preprocess`` returns the FileResponse. If Together answers ``409`` because
        the same bytes were uploaded before, that existing file is returned instead.

        Args:
            file: path of the local file (``.jsonl`` for batch inputs).
            purpose: the API's file purpose; ``"batch-api"`` for batch inputs.
            check: validate the file first with
                :func:`dagster_together.requests.check_request_file` (nothing is sent if it is
                invalid). With ``check=False`` only the sha256 is computed.
            checksum: the file's sha256 (hex) when the caller already has it, e.g. computed
                while writing the file: with ``check=False`` the file is then read only once,
                by the upload itself.

        Raises:
            InputFileNotFoundError: ``file`` does not exist; nothing was sent.
            InvalidRequestFileError: ``check=True`` and the file breaks the API's rules.
            FileValidationError: Together's own validation (the ``validation_report`` of the
                preprocess answer) rejected the file; ``.report`` holds its words.
            APIError, APIConnectionError: the upload failed after the configured retries.
        """
        path = Path(os.fspath(file))
        if not path.is_file():
            raise InputFileNotFoundError(
                f"Cannot upload {str(path)!r}: no such file. Nothing was sent to Together; "
                "check the path."
            )
        if check:
            # Imported here: the request checks live with the request builders, outside client/.
            from dagster_together.requests import check_request_file

            stats = check_request_file(path, purpose=purpose)
            sha256 = stats.sha256
            logger.info(
                "Checked %s: %s lines, %s bytes, sha256 %s",
                path.name,
                stats.n_lines,
                stats.n_bytes,
                sha256,
            )
        else:
            sha256 = checksum or _sha256_of(path)

        form, content_type = _multipart_form(
            {
                "purpose": purpose,
                "file_name": path.name,
                "file_type": _FILE_TYPES.get(path.suffix.lower(), "jsonl"),
                "checksum": sha256,
            }
        )
        try:
            response = self._transport.request(
                "POST", "/files", content=form, headers={"Content-Type": content_type}
            )
        except ConflictError as exc:
            existing = self._existing_file_id(exc)
            if existing is None:
                raise
            logger.info(
                "Together already holds these bytes (sha256 %s) as %s; using it.", sha256, existing
            )
            return self.retrieve(existing)

        location = response.headers.get("location")
        file_id = response.headers.get("x-together-file-id")
        if response.status_code not in (301, 302, 303, 307, 308) or not location or not file_id:
            raise APIError(
                f"Together answered {self._transport.describe('POST', '/files')} with "
                f"{response.status_code} but without the expected redirect (Location and "
                "X-Together-File-Id headers). The upload protocol may have changed; "
                "please report this.",
                status_code=response.status_code,
                request=self._transport.describe("POST", "/files"),
            )
        # A relative Location is resolved against the API URL; only http(s) is followed.
        upload_url = urljoin(self._transport.url_for("/files"), location)
        if urlsplit(upload_url).scheme not in ("http", "https"):
            raise APIError(
                f"Together sent an upload URL with an unsupported scheme "
                f"({urlsplit(upload_url).scheme!r}); refusing to upload there."
            )
        logger.debug("Uploading %s as %s to %s", path.name, file_id, redact_url(upload_url))

        size = path.stat().st_size
        put = self._transport.request(
            "PUT",
            upload_url,
            # A fresh generator per attempt: the bytes are streamed from disk, never loaded.
            content=lambda: _read_chunks(path, size),
            headers={"Content-Length": str(size)},
            authenticate=False,
        )
        put.close()
        if put.status_code != 200:
            raise APIError(
                f"Uploading {path.name} to storage ({self._transport.describe('PUT', upload_url)}) "
                f"answered {put.status_code}, expected 200; the file was not stored. Try again.",
                status_code=put.status_code,
                request=self._transport.describe("PUT", upload_url),
            )
        data = self._transport.json("POST", f"/files/{quote_id(file_id)}/preprocess")
        uploaded = FileResponse.from_api(data)
        if uploaded.is_invalid:
            raise _invalid_upload(path, uploaded, self._transport.scrub)
        logger.info("Uploaded %s as %s (%s bytes)", path.name, uploaded.id, size)
        return uploaded

    @staticmethod
    def _existing_file_id(exc: ConflictError) -> str | None:
        """The ``file_id`` of a 409 answer (top level or inside ``error``)."""
        if isinstance(exc.body, dict):
            for holder in (exc.body, exc.body.get("error")):
                file_id = holder.get("file_id") if isinstance(holder, dict) else None
                if isinstance(file_id, str) and file_id:
                    return file_id
        return None

    # -- simple calls ---------------------------------------------------------------------------
    def list(self) -> list[FileResponse]:
        """Every file of the account (``GET /files``)."""
        data = self._transport.json("GET", "/files")
        items: Any = data.get("data", []) if isinstance(data, dict) else data
        return [FileResponse.from_api(item) for item in items or []]

    def retrieve(self, id: str) -> FileResponse:
        """One file's metadata (``GET /files/{id}``)."""
        return FileResponse.from_api(self._transport.json("GET", f"/files/{quote_id(id)}"))

    def delete(self, id: str) -> bool:
        """Delete a file (``DELETE /files/{id}``); returns the answer's ``deleted`` flag."""
        data = self._transport.json("DELETE", f"/files/{quote_id(id)}")
        return bool(data.get("deleted", True)) if isinstance(data, dict) else True

    def retrieve_content(
        self,
        id: str | None,
        *,
        output: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        progress: bool | None = None,
        logger: LogSink | None = None,
    ) -> FileObject:
        """Download a file's bytes to ``output``: streamed, resumed, verified, published
        atomically. See :func:`dagster_together.client.download.retrieve_content`.

        Raises:
            ValueError: ``id`` is None, e.g. the ``output_file_id`` of a batch that has not
                ended yet (or ended without output).
        """
        if id is None:
            raise ValueError(
                "No file id to download (None): the batch has no output file yet. Wait for it "
                "to end, e.g. job = client.batches.wait(job.id), then use job.output_file_id "
                "(None also when every request failed: see job.error_file_id)."
            )
        return retrieve_content(
            self._transport,
            id,
            output=output,
            storage_options=storage_options,
            progress=progress,
            logger=logger,
        )


def _invalid_upload(
    path: Path, uploaded: FileResponse, scrub: Callable[[str], str]
) -> FileValidationError:
    report = uploaded.validation_report
    error = scrub(str((report or {}).get("error") or "no details given"))
    kind = (report or {}).get("error_type") or uploaded.processing_status or "invalid"
    lines = (report or {}).get("nlines")
    counted = f" ({lines} lines read)" if lines is not None else ""
    return FileValidationError(
        f"Together rejected {path.name} (uploaded as {uploaded.id}) after checking it: "
        f"{kind}: {error}{counted}. No batch was created; fix the file and upload it again "
        "(check_request_file in dagster_together.requests finds most problems before sending).",
        file_id=uploaded.id,
        report=report,
        processing_status=uploaded.processing_status,
    )
