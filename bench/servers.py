"""The servers the figures talk to, each in its own process so its CPU and memory are not ours.

* :class:`EmulatorProcess`: ``python -m dagster_together.emulator`` on a free loopback port,
  driven through its admin endpoints (add a file, create and finish batches, count requests).
* :class:`MotoProcess`: ``moto_server`` (the S3 protocol) on a free loopback port.

Only the standard library is used here (``urllib``), so the orchestrating process stays light.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["API_KEY", "EmulatorClient", "EmulatorProcess", "MotoProcess", "free_port"]

API_KEY = "bench-key"
_START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=120) as response:
        raw = response.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw  # S3 answers XML


class _Process:
    """A server child process, stopped (and its scratch directory removed) on exit."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-server-", dir=_scratch_root()))

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its scratch directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _wait_until_up(self, url: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self._log()}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer {url}: {self._log()}") from None
                time.sleep(0.05)

    def _log(self) -> str:
        path = self.scratch / "server.log"
        return path.read_text()[-2000:] if path.exists() else ""


def _scratch_root() -> Path:
    # Under bench/out: the same file system as the generated data, so the emulator hardlinks.
    root = Path(__file__).resolve().parent / "out" / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    return root


class EmulatorClient:
    """The emulator's public API (with the bench key) and admin endpoints, over HTTP."""

    def __init__(self, host_url: str) -> None:
        self.host_url = host_url.rstrip("/")
        self.base_url = f"{self.host_url}/v1"
        self.port = int(self.host_url.rsplit(":", 1)[1])

    def add_file(self, path: str | os.PathLike[str], purpose: str = "batch-generated") -> str:
        """Hardlink a local file into the emulator; returns its file id."""
        body = {"path": str(path), "purpose": purpose, "filename": Path(path).name}
        return str(_http("POST", f"{self.host_url}/_emulator/files", body)["id"])

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A public API call (``path`` after ``/v1``) with the bench key."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return _http(method, f"{self.base_url}{path}", body, headers)

    def presigned_upload(self, filename: str) -> tuple[str, str]:
        """Step 1 of an upload (``POST /files``, redirect not followed): ``(file_id, PUT URL)``."""
        boundary = uuid.uuid4().hex
        fields = {"purpose": "batch-api", "file_name": filename, "file_type": "jsonl"}
        body = (
            b"".join(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                for k, v in fields.items()
            )
            + f"--{boundary}--\r\n".encode()
        )
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(
                "POST",
                "/v1/files",
                body=body,
                headers={
                    "Authorization": f"Bearer {API_KEY}",
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            )
            response = conn.getresponse()
            response.read()
            location = response.getheader("Location")
            file_id = response.getheader("X-Together-File-Id")
        finally:
            conn.close()
        if response.status != 302 or not location or not file_id:
            raise RuntimeError(f"POST /files answered {response.status} without a redirect")
        return file_id, location

    def create_batch(self, input_file_id: str) -> str:
        """``POST /batches``; returns the batch id."""
        answer = self.api(
            "POST", "/batches", {"input_file_id": input_file_id, "endpoint": "/v1/chat/completions"}
        )
        return str((answer.get("job") or answer)["id"])

    def finish_batch(self, batch_id: str, status: str = "COMPLETED") -> dict[str, Any]:
        """Force a final status now; returns the BatchJob (with its output/error file ids)."""
        url = f"{self.host_url}/_emulator/batches/{batch_id}/status"
        job: dict[str, Any] = _http("POST", url, {"status": status})
        return job

    def requests(self) -> list[dict[str, Any]]:
        """The public API requests seen since the last :meth:`clear_requests`."""
        return list(_http("GET", f"{self.host_url}/_emulator/requests"))

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        _http("POST", f"{self.host_url}/_emulator/clear_requests", {})


class EmulatorProcess(EmulatorClient, _Process):
    """The Together emulator in a child process; ``base_url`` ends in ``/v1``."""

    def __init__(
        self,
        *,
        run_seconds: float = 0.0,
        validate_seconds: float = 0.0,
        fail_pattern: str | None = None,
    ) -> None:
        _Process.__init__(self)
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "dagster_together.emulator",
            "--port",
            str(port),
            "--api-key",
            API_KEY,
            "--run-seconds",
            str(run_seconds),
            "--validate-seconds",
            str(validate_seconds),
            "--data-dir",
            str(self.scratch / "data"),
        ]
        if fail_pattern:
            argv += ["--fail-pattern", fail_pattern]
        with open(self.scratch / "server.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        EmulatorClient.__init__(self, f"http://127.0.0.1:{port}")
        self._wait_until_up(f"{self.host_url}/_emulator/health")

    def __enter__(self) -> EmulatorProcess:
        return self


class MotoProcess(_Process):
    """``moto_server`` (S3 on loopback) in a child process."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        moto = Path(sys.executable).with_name("moto_server")
        argv = [str(moto), "-H", "127.0.0.1", "-p", str(self.port)]
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        with open(self.scratch / "server.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._wait_until_up(f"{self.endpoint_url}/moto-api/")
        _http("PUT", f"{self.endpoint_url}/bench")  # the bucket (S3 CreateBucket)

    def __enter__(self) -> MotoProcess:
        return self

    @property
    def bucket_url(self) -> str:
        """``s3://bench``."""
        return "s3://bench"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
            "skip_instance_cache": True,
        }

    def reset(self) -> None:
        """Forget every object (moto keeps them in memory): ``POST /moto-api/reset``."""
        _http("POST", f"{self.endpoint_url}/moto-api/reset", {})
        _http("PUT", f"{self.endpoint_url}/bench")
