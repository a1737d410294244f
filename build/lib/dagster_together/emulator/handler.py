"""The HTTP side: routing, auth, request bodies, and answers with faults applied."""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import parse_qs, urlsplit

from dagster_together.emulator.batches import BatchStore
from dagster_together.emulator.errors import ApiError, bad_request, error_object
from dagster_together.emulator.faults import Fault, FaultSet, make_fault
from dagster_together.emulator.files import FileStore
from dagster_together.emulator.quirks import Quirks

log = logging.getLogger("dagster_together.emulator")

MAX_JSON_BODY = 64 * 1024 * 1024
# An unread request body up to this size is drained to keep the connection; larger ones close it.
DRAIN_LIMIT = 1024 * 1024


class RequestRecord(NamedTuple):
    """One request seen on the public API (``/v1/...`` and upload PUTs, not admin calls).

    ``headers`` has lowercase names and never the ``authorization`` header.
    """

    method: str
    path: str
    headers: dict[str, str]
    status: int


@dataclass
class Service:
    """Everything a request handler needs; shared by all server threads."""

    files: FileStore
    batches: BatchStore
    faults: FaultSet
    api_key: str | None
    add_file: Callable[..., str]
    quirks: Quirks = field(default_factory=Quirks)
    _records: list[RequestRecord] = field(default_factory=list)
    _records_lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, rec: RequestRecord) -> None:
        """Remember a public API request."""
        with self._records_lock:
            self._records.append(rec)

    def records(self) -> list[RequestRecord]:
        """A copy of the remembered requests."""
        with self._records_lock:
            return list(self._records)

    def clear_records(self) -> None:
        """Forget the remembered requests."""
        with self._records_lock:
            self._records.clear()


@dataclass
class Response:
    """An answer to send: a bytes body, or a slice of an open file sent with sendfile."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    file: BinaryIO | None = None
    offset: int = 0
    length: int = 0


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    return Response(status, json.dumps(payload).encode(), headers=dict(headers or {}))


def error_response(err: ApiError) -> Response:
    """The object-form error answer for ``err``."""
    return json_response(err.status, err.body(), err.headers)


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that can cut every open connection (to emulate an outage)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: Service) -> None:
        self.service = service
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track the connection, then serve it in its own thread."""
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget and close the connection."""
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that dies (a cut at stop(), a client gone) is routine: log, don't print."""
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        """Shut down every accepted connection, so pooled keep-alive sockets fail too."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Body:
    """The request body as a stream: Content-Length or chunked transfer encoding."""

    def __init__(self, rfile: Any, headers: Any) -> None:
        self._rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.length: int | None = None if self.chunked else int(headers.get("Content-Length") or 0)
        self._left = 0 if self.chunked else (self.length or 0)
        self.done = not self.chunked and self._left == 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end of the body."""
        if self.done:
            return b""
        if self.chunked and self._left == 0:
            size = int(self._rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self._rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = True
                return b""
            self._left = size
        data = self._rfile.read(min(n, self._left))
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        self._left -= len(data)
        if self._left == 0:
            if self.chunked:
                self._rfile.readline()  # CRLF after the chunk
            else:
                self.done = True
        return data

    def read_all(self, limit: int) -> bytes:
        """The whole body (400 over ``limit`` bytes)."""
        parts, size = [], 0
        while chunk := self.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"Request body over {limit} bytes", code="request_too_large")
            parts.append(chunk)
        return b"".join(parts)

    def drain(self, limit: int) -> bool:
        """Read and drop up to ``limit`` bytes; whether the body is now fully read."""
        if not self.chunked and self._left > limit:
            return False
        try:
            while not self.done and limit > 0:
                limit -= len(self.read(min(limit, 1 << 16)))
        except (OSError, ValueError):
            return False
        return self.done


def parse_form(content_type: str, body: bytes) -> dict[str, Any]:
    """Form fields of a multipart or urlencoded body; a file part maps to ``(filename, bytes)``."""
    if content_type.startswith("multipart/form-data"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        fields: dict[str, Any] = {}
        if not msg.is_multipart():
            raise bad_request("Malformed multipart body")
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                payload = b""
            filename = part.get_filename()
            fields[name] = (filename, payload) if filename else payload.decode("utf-8", "replace")
        return fields
    if content_type.startswith("application/json"):
        data = json.loads(body or b"{}")
        return data if isinstance(data, dict) else {}
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` for a single ``bytes=`` range; ``None`` to send it all.

    Raises a 416 ApiError for a range that starts past the end.
    """
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # unparsable or multi-range: RFC 9110 lets us ignore it and send 200
    if not m.group(1):  # suffix range: the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        416,
        "Requested range not satisfiable",
        code="range_not_satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("POST", r"/v1/files", "files_create"),
        ("GET", r"/v1/files", "files_list"),
        ("GET", r"/v1/files/(?P<file_id>[^/]+)", "files_get"),
        ("DELETE", r"/v1/files/(?P<file_id>[^/]+)", "files_delete"),
        ("GET", r"/v1/files/(?P<file_id>[^/]+)/content", "files_content"),
        ("HEAD", r"/v1/files/(?P<file_id>[^/]+)/content", "files_content"),
        ("POST", r"/v1/files/(?P<file_id>[^/]+)/preprocess", "files_preprocess"),
        ("POST", r"/v1/batches", "batches_create"),
        ("GET", r"/v1/batches", "batches_list"),
        ("GET", r"/v1/batches/(?P<batch_id>[^/]+)", "batches_get"),
        ("POST", r"/v1/batches/(?P<batch_id>[^/]+)/cancel", "batches_cancel"),
        ("PUT", r"/_upload/(?P<file_id>[^/]+)", "upload_put"),
        ("GET", r"/_emulator/health", "admin_health"),
        ("GET", r"/_emulator/requests", "admin_requests"),
        ("POST", r"/_emulator/clear_requests", "admin_clear_requests"),
        ("GET", r"/_emulator/faults", "admin_faults_list"),
        ("POST", r"/_emulator/faults", "admin_faults_add"),
        ("POST", r"/_emulator/clear_faults", "admin_clear_faults"),
        ("GET", r"/_emulator/batches", "admin_batches"),
        ("POST", r"/_emulator/batches/(?P<batch_id>[^/]+)/status", "admin_batch_status"),
        ("POST", r"/_emulator/files", "admin_add_file"),
    ]
]


class Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, every answer with a Content-Length (unless faulted)."""

    protocol_version = "HTTP/1.1"
    server_version = "together-emulator"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are closed after this
    server: EmulatorHTTPServer

    def do_GET(self) -> None:  # http.server finds handlers by this naming
        """Dispatch a GET."""
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def setup(self) -> None:
        """Disable Nagle: headers and a small body go out as separate writes, and Nagle plus the
        client's delayed ACK would add 40 ms to every answer."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        """The ``Server`` header."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Access log to ``logging`` at debug level, not to stderr."""
        log.debug("%s - " + format, self.address_string(), *args)

    # -- the request cycle -------------------------------------------------------------------
    def _dispatch(self) -> None:
        svc = self.server.service
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        self._query = parse_qs(url.query)
        try:
            self._req_body = _Body(self.rfile, self.headers)
        except ValueError:
            self.close_connection = True  # we cannot tell where this request ends
            self.send_error(400, "Bad Content-Length")
            return
        admin = path.startswith("/_emulator/")
        fault = None if admin else svc.faults.take(self.command, path)
        try:
            if fault is not None and fault.kind in ("status", "string_error"):
                resp = self._fault_response(fault)
            else:
                resp = self._route(svc, path)
        except ApiError as err:
            resp = error_response(err)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        except Exception as exc:  # a bug in the emulator must answer 500, not hang the client
            log.exception("emulator error on %s %s", self.command, self.path)
            resp = json_response(
                500,
                {
                    "error": error_object(
                        500, f"Emulator internal error: {exc}", code="internal_error"
                    )
                },
            )
        if not admin:
            headers = {
                k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"
            }
            svc.record(RequestRecord(self.command, path, headers, resp.status))
        self._send(resp, fault)

    def _route(self, svc: Service, path: str) -> Response:
        if path.startswith("/v1/") and svc.api_key is not None:
            auth = self.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or token.strip() != svc.api_key:
                raise ApiError(
                    401,
                    "Invalid API key provided. You can find your API key at https://api.together.xyz/settings/api-keys.",
                    code="invalid_api_key",
                )
        for method, pattern, name in _ROUTES:
            if method == self.command and (m := pattern.fullmatch(path)):
                try:
                    return getattr(self, f"_{name}")(svc, **m.groupdict())
                except ApiError as err:
                    # The live batch endpoints answer their own errors in the string form.
                    err.string_form = name.startswith("batches_") and svc.quirks.string_batch_errors
                    raise
        raise ApiError(404, f"Unknown request URL: {self.command} {path}", code="not_found")

    def _send(self, resp: Response, fault: Fault | None) -> None:
        try:
            if fault is not None and fault.kind == "delay":
                time.sleep(float(fault.params["seconds"]))
            size = resp.length if resp.file is not None else len(resp.body)
            no_length = fault is not None and fault.kind == "no_content_length"
            drop_after = (
                int(fault.params["after_bytes"])
                if fault is not None and fault.kind == "drop"
                else None
            )
            if not self._req_body.done and not self._req_body.drain(DRAIN_LIMIT):
                self.close_connection = True  # an unread body would be parsed as the next request
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            for name, value in resp.headers.items():
                self.send_header(name, value)
            if no_length:
                self.close_connection = True  # the end of the body is the end of the connection
            else:
                self.send_header("Content-Length", str(size))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            count = size if drop_after is None else min(drop_after, size)
            if resp.file is not None:
                if count:
                    self.connection.sendfile(resp.file, resp.offset, count)  # zero-copy
            else:
                self.wfile.write(resp.body[:count])
            if drop_after is not None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            self.close_connection = True  # the client went away; nothing more to say
        finally:
            if resp.file is not None:
                resp.file.close()

    def _fault_response(self, fault: Fault) -> Response:
        p = fault.params
        status = int(p["status"])
        if fault.kind == "string_error":
            return json_response(status, {"error": str(p["message"])})
        headers: dict[str, str] = {}
        if p.get("retry_after") is not None:
            ra = float(p["retry_after"])
            headers["Retry-After"] = str(int(ra)) if ra == int(ra) else str(ra)
        if p.get("retry_after_ms") is not None:
            headers["retry-after-ms"] = str(p["retry_after_ms"])
        body = p.get("body")
        if body is None:
            message = p.get("message") or f"Emulated error {status}"
            code = "rate_limit_exceeded" if status == 429 else "emulated_error"
            return json_response(
                status, {"error": error_object(status, message, code=code)}, headers
            )
        if isinstance(body, str | bytes):
            return Response(
                status,
                body if isinstance(body, bytes) else body.encode(),
                headers=headers,
                content_type="text/plain",
            )
        return json_response(status, body, headers)

    def _json(self) -> dict[str, Any]:
        raw = self._req_body.read_all(MAX_JSON_BODY)
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise bad_request("Request body must be a JSON object")
        return data

    # -- files -------------------------------------------------------------------------------
    def _files_create(self, svc: Service) -> Response:
        try:
            form = parse_form(
                self.headers.get("Content-Type", ""), self._req_body.read_all(MAX_JSON_BODY)
            )
        except ValueError as exc:
            raise bad_request(f"Malformed form body: {exc}") from exc
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise bad_request("'purpose' is required", param="purpose")
        inline = form.get("file")
        if isinstance(inline, tuple):  # the file itself in the form: store it in one step
            given = form.get("file_name")
            name = given if isinstance(given, str) and given else (inline[0] or "upload.jsonl")
            return json_response(
                200, svc.files.store_bytes(purpose=purpose, filename=name, data=inline[1])
            )
        file_name = form.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise bad_request("'file_name' is required", param="file_name")
        file_type = form.get("file_type") if isinstance(form.get("file_type"), str) else None
        checksum = form.get("checksum") if isinstance(form.get("checksum"), str) else None
        rec = svc.files.create_upload(
            purpose=purpose, filename=file_name, file_type=file_type, checksum=checksum
        )
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        location = f"http://{host}/_upload/{rec.id}?X-Amz-Signature={rec.upload_token}"
        return Response(302, headers={"Location": location, "X-Together-File-Id": rec.id})

    def _upload_put(self, svc: Service, file_id: str) -> Response:
        tokens = self._query.get("X-Amz-Signature")
        token = tokens[-1] if tokens else None
        svc.files.receive_upload(file_id, token, self._req_body.read, self._req_body.length)
        rec = svc.files.get(file_id)
        return Response(
            200, headers={"ETag": f'"{(rec.sha256 or "")[:32]}"'}, content_type="text/plain"
        )

    def _files_preprocess(self, svc: Service, file_id: str) -> Response:
        return json_response(200, svc.files.preprocess(file_id))

    def _files_list(self, svc: Service) -> Response:
        return json_response(200, {"object": "list", "data": svc.files.list()})

    def _files_get(self, svc: Service, file_id: str) -> Response:
        return json_response(200, svc.files.get(file_id).to_json())

    def _files_delete(self, svc: Service, file_id: str) -> Response:
        return json_response(200, svc.files.delete(file_id))

    def _files_content(self, svc: Service, file_id: str) -> Response:
        filename = svc.files.get(file_id).filename
        handle, size = svc.files.open_content(file_id)
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        if svc.quirks.honour_range:
            headers["Accept-Ranges"] = "bytes"
        try:
            # A server that ignores Range answers the whole file with 200 (RFC 9110 allows it).
            rng = parse_range(self.headers.get("Range"), size) if svc.quirks.honour_range else None
        except ApiError:
            handle.close()
            raise
        if rng is None:
            return Response(
                200,
                headers=headers,
                content_type="application/octet-stream",
                file=handle,
                length=size,
            )
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return Response(
            206,
            headers=headers,
            content_type="application/octet-stream",
            file=handle,
            offset=start,
            length=end - start + 1,
        )

    # -- batches -----------------------------------------------------------------------------
    def _batches_create(self, svc: Service) -> Response:
        job, warning = svc.batches.create(self._json())
        # Nothing created (a model batch does not serve): no job, only the warning.
        return json_response(201 if job is not None else 200, {"job": job, "warning": warning})

    def _batches_list(self, svc: Service) -> Response:
        jobs = svc.batches.list()
        # The live service answers `null`, not `[]`, for an account without batches.
        return json_response(200, None if not jobs and svc.quirks.null_empty_list else jobs)

    def _batches_get(self, svc: Service, batch_id: str) -> Response:
        return json_response(200, svc.batches.get(batch_id))

    def _batches_cancel(self, svc: Service, batch_id: str) -> Response:
        return json_response(200, svc.batches.cancel(batch_id))

    # -- admin (no auth, never recorded) --------------------------------------------------------
    def _admin_health(self, svc: Service) -> Response:
        return json_response(200, {"ok": True})

    def _admin_requests(self, svc: Service) -> Response:
        return json_response(200, [r._asdict() for r in svc.records()])

    def _admin_clear_requests(self, svc: Service) -> Response:
        svc.clear_records()
        return json_response(200, {"ok": True})

    def _admin_faults_list(self, svc: Service) -> Response:
        return json_response(200, [f.to_json() for f in svc.faults.list()])

    def _admin_faults_add(self, svc: Service) -> Response:
        try:
            fault = make_fault(**self._json())
        except (TypeError, ValueError) as exc:
            raise bad_request(str(exc)) from exc
        svc.faults.add(fault)
        return json_response(200, {"ok": True, "fault": fault.to_json()})

    def _admin_clear_faults(self, svc: Service) -> Response:
        svc.faults.clear()
        return json_response(200, {"ok": True})

    def _admin_batches(self, svc: Service) -> Response:
        return json_response(200, svc.batches.list())

    def _admin_batch_status(self, svc: Service, batch_id: str) -> Response:
        body = self._json()
        status = body.get("status")
        if not isinstance(status, str):
            raise bad_request("'status' is required", param="status")
        return json_response(200, svc.batches.force(batch_id, status, body.get("done_fraction")))

    def _admin_add_file(self, svc: Service) -> Response:
        body = self._json()
        source = body.get("path")
        if not isinstance(source, str):
            raise bad_request("'path' (a file on this machine) is required", param="path")
        try:
            file_id = svc.add_file(
                source,
                purpose=body.get("purpose", "batch-generated"),
                filename=body.get("filename"),
            )
        except OSError as exc:
            raise bad_request(f"Cannot add {source}: {exc}") from exc
        return json_response(200, svc.files.get(file_id).to_json())
