"""Security: no leaked key, no leaked presigned URL, ids are not paths, TLS verified by default.

Promises proved here (see docs/reliability.md):

* the API key appears nowhere (Python logs at DEBUG, stdout/stderr, every event-log record and
  run record, every materialisation's metadata, every file under the storage directory and
  DAGSTER_HOME, exception texts) after the whole pipeline ran through 429s, 5xx, a refused
  upload, a failed sensor tick, a cut download, a failed download, and a FAILED batch;
* a presigned upload URL is never logged or stored whole: its signature query appears nowhere;
* a file or batch id from the API never chooses where a file is written: ids with ``../``,
  ``/`` or ``\\`` are refused, and odd ones stay inside the chosen directory;
* TLS certificates are verified by default, by the client and by the resource, against a real
  TLS server; only ``verify_tls=False`` turns that off.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import ssl
import threading
import traceback
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
import pyarrow as pa
import pytest

from dagster_together import (
    BatchingOptions,
    ResultsOptions,
    TogetherResource,
    build_together_batch_defs,
)
from dagster_together.client import APIConnectionError, DownloadError, TogetherClient
from dagster_together.emulator import Emulator
from dagster_together.requests import RequestTemplate
from dagster_together.storage import BatchStorageLayout

TEMPLATE = RequestTemplate(model="m", prompt_column="text")
# A presigned upload URL with its query still on (the redacted form ends in "?<redacted>").
SIGNED_URL = re.compile(r"/_upload/[^\s'\"<>?]*\?(?!<redacted>)")


def _step_failure_text(result: dg.ExecuteInProcessResult) -> str:
    parts = []
    for failure in result.get_step_failure_events():
        error = failure.event_specific_data.error
        while error is not None:
            parts.append(error.to_string())
            error = error.cause
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The whole pipeline, with failures, then grep everything for the key and the signature
# ---------------------------------------------------------------------------------------------
# The whole pipeline through a dozen faults, each waited out for real (Retry-After, backoff): seconds.
@pytest.mark.slow
def test_no_key_and_no_presigned_url_anywhere_after_a_faulty_pipeline(
    api_key: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Promise: after submit, sensor and results ran through 429s, 5xx, a refused upload, a
    failed tick, a cut and a failed download and a FAILED batch, neither the API key nor a
    presigned URL's signature is in any log, event, run record, metadata value or file."""
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    home, store = tmp_path / "dagster_home", tmp_path / "store"
    home.mkdir()
    texts: list[tuple[str, str]] = []  # (where, text) to grep

    table = pa.table(
        {
            "id": list(range(5)),
            "text": [f"prompt {i}" + (" EMULATE_ERROR" if i == 3 else "") for i in range(5)],
        }
    )

    @dg.asset(name="prompts")
    def prompts() -> pa.Table:
        return table

    bundle = build_together_batch_defs(
        name="sec",
        prompts=prompts,
        storage=str(store),
        template=TEMPLATE,
        id_column="id",
        batching=BatchingOptions(max_requests_per_batch=2),  # 3 batches
        results=ResultsOptions(retry_policy=None),
    )
    with (
        Emulator(api_key=api_key, validate_seconds=0.0, run_seconds=3600) as emu,
        dg.instance_for_test(temp_dir=str(home)) as instance,
    ):
        # A literal key in the resource: the worst case (EnvVar keeps even the value out).
        together = TogetherResource(api_key=api_key, base_url=emu.base_url, max_retries=3)
        no_retries = TogetherResource(api_key=api_key, base_url=emu.base_url, max_retries=0)
        defs = dg.Definitions.merge(
            bundle.defs, dg.Definitions(assets=[prompts], resources={"together": together})
        )

        def materialize(assets: list[Any], resource: TogetherResource, **kw: Any) -> Any:
            result = dg.materialize(
                assets, instance=instance, resources={"together": resource}, **kw
            )
            texts.append(("step failures", _step_failure_text(result)))
            return result

        # 1. Submit: the presigned PUT is refused (no retries) -> the step fails.
        emu.add_fault(method="PUT", path=r"^/_upload/", status=503, times=1)
        failed = materialize([prompts, bundle.submit_asset], no_retries, raise_on_error=False)
        assert not failed.success
        assert "PUT http://127.0.0.1" in _step_failure_text(failed)

        # 2. Submit again through 429s, a 5xx on the PUT and an ambiguous 5xx on create.
        emu.add_fault(method="POST", path=r"^/v1/files$", status=429, retry_after=0.01, times=2)
        emu.add_fault(method="PUT", path=r"^/_upload/", status=503, times=1)
        emu.add_fault(method="GET", path=r"^/v1/batches$", status=429, retry_after=0.01, times=1)
        emu.add_fault(method="POST", path=r"^/v1/batches$", status=503, times=1)
        submitted = materialize([prompts, bundle.submit_asset], together)
        [mat] = submitted.asset_materializations_for_node(bundle.submit_asset.node_def.name)
        ids = list(mat.metadata["together/batch_ids"].value)
        assert len(ids) == 3 and len(emu.batches()) == 3

        # 3. The sensor during an outage: the tick fails.
        emu.add_fault(method="GET", path=r"^/v1/batches$", status=503, times=None)
        with dg.build_sensor_context(
            instance=instance, definitions=defs, resources={"together": together}
        ) as context:
            with pytest.raises(Exception, match="batches") as tick_error:
                bundle.sensor(context)
        texts.append(("tick exception", "".join(traceback.format_exception(tick_error.value))))
        emu.clear_faults()

        # 4. Batches end: COMPLETED, COMPLETED with a failed request, FAILED.
        emu.set_batch_status(ids[0], "COMPLETED")
        emu.set_batch_status(ids[1], "COMPLETED")
        emu.set_batch_status(ids[2], "FAILED", done_fraction=0.0)

        # 5. Results: a cut download (resumed), a failed download then its retry, a FAILED batch.
        emu.add_fault(method="GET", path=r"/content$", kind="drop", after_bytes=50, times=1)
        assert materialize([bundle.results_asset], together, partition_key=ids[0]).success
        emu.add_fault(method="GET", path=r"/content$", status=500, times=1)
        failed = materialize(
            [bundle.results_asset], no_retries, partition_key=ids[1], raise_on_error=False
        )
        assert not failed.success
        assert materialize([bundle.results_asset], together, partition_key=ids[1]).success
        assert materialize([bundle.results_asset], together, partition_key=ids[2]).success

        # Everything Dagster stored: runs (config, tags) and every event of every run.
        runs = instance.get_runs()
        assert len(runs) == 6
        for run in runs:
            texts.append((f"run {run.run_id}", dg.serialize_value(run)))
            for entry in instance.all_logs(run.run_id):
                texts.append((f"event of {run.run_id}", dg.serialize_value(entry)))
        materialisations = instance.fetch_materializations(bundle.results_asset.key, limit=100)
        assert len(materialisations.records) == 3
        for record in materialisations.records:
            metadata = record.asset_materialization.metadata if record.asset_materialization else {}
            texts.extend(("metadata", f"{k}={v!r}") for k, v in metadata.items())

        files = [p for root in (home, store) for p in root.rglob("*") if p.is_file()]
        assert any(p.parent.name == "compute_logs" for p in files)  # compute logs included
        for path in files:
            texts.append((str(path), path.read_bytes().decode("utf-8", errors="replace")))

    out, err = capfd.readouterr()
    texts += [("stdout", out), ("stderr", err)]
    for record in caplog.records:
        if record.name.startswith("dagster_together.emulator"):
            continue  # the fake Together's own access log: the server side, not ours
        texts.append((f"log {record.name}", f"{record.getMessage()} {record.args!r}"))
        if record.exc_info:
            texts.append(
                (f"log {record.name}", "".join(traceback.format_exception(*record.exc_info)))
            )

    # The captures are real: the key was used on every call, uploads were logged (redacted).
    assert len(caplog.records) > 100 and len(texts) > 200
    assert any("/_upload/file-" in text for _, text in texts)
    assert any("?<redacted>" in text for _, text in texts)  # httpx/httpcore logged it, redacted
    assert [where for where, text in texts if api_key in text] == []
    assert [where for where, text in texts if "X-Amz-Signature" in text] == []
    assert [where for where, text in texts if SIGNED_URL.search(text)] == []


# ---------------------------------------------------------------------------------------------
# Ids from the API are data, never paths
# ---------------------------------------------------------------------------------------------
REFUSED_IDS = ["../escape", "..", ".", "a/b", "/etc/passwd", "a\\b", "..\\..\\x", ""]
ODD_IDS = ["*", "?", "[ab]", "~", "$HOME", "%2e%2e", "x y", "batch_id=x", "ü-ñ", "a:b", "-rf", ".x"]


@pytest.mark.parametrize("batch_id", REFUSED_IDS)
def test_ids_that_are_paths_are_refused_by_the_storage_layout(
    tmp_path: Path, batch_id: str
) -> None:
    """Promise: a batch id with a path separator or a dot-segment never becomes a location."""
    layout = BatchStorageLayout(str(tmp_path / "store"))
    for method in (
        layout.batch_dir,
        layout.input_jsonl,
        layout.inputs_parquet,
        layout.output_jsonl,
        layout.errors_jsonl,
        layout.results_parquet,
    ):
        with pytest.raises(ValueError, match="not a usable batch id"):
            method(batch_id)
    assert not (tmp_path / "store").exists()


def test_odd_ids_write_only_inside_the_chosen_directory(
    emulator: Any, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: an id with odd characters (globs, ~, $, %, spaces, '=', ':') is either refused
    by the layout or used as a plain name: its file lands exactly where the layout says, inside
    the storage directory, one directory per id."""
    store = tmp_path / "store"
    layout = BatchStorageLayout(str(store))
    file_id = emulator.add_file(b'{"ok": true}\n')
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here
    accepted = []
    with TogetherClient(api_key, emulator.base_url) as client:
        for batch_id in ODD_IDS:
            try:
                output = layout.output_jsonl(batch_id)
            except ValueError:
                continue  # refusing an odd id is as good as keeping it in its place
            real = os.path.realpath(layout.results_parquet(batch_id))
            assert os.path.commonpath([real, str(store)]) == str(store), real
            result = client.files.retrieve_content(file_id, output=output)
            assert result.filename == output
            accepted.append(batch_id)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(store / "batches" / b / "output.jsonl" for b in accepted)


def test_a_glob_like_id_cannot_delete_other_batches_files(emulator: Any, api_key: str) -> None:
    """Promise (not kept yet): a failed download whose output holds glob characters (a batch
    id like '*' in the path, or a user's own 'runs[1]/' folder) removes only its own partial
    file, never the other files the path would match as a glob."""
    base = f"memory://sec-{uuid.uuid4().hex}/batches"
    fs = fsspec.filesystem("memory")
    for other in ("b1", "b2"):
        fs.pipe(f"{base}/{other}/output.jsonl", b"precious results\n")
    file_id = emulator.add_file(b"x" * 100_000)
    emulator.add_fault(path=r"/content$", kind="drop", after_bytes=10, times=None)
    with TogetherClient(api_key, emulator.base_url, max_retries=1, backoff_base=0.01) as client:
        with pytest.raises(DownloadError):
            client.files.retrieve_content(file_id, output=f"{base}/*/output.jsonl")
    assert not fs.exists(f"{base}/*/output.jsonl")
    assert fs.cat(f"{base}/b1/output.jsonl") == b"precious results\n"
    assert fs.cat(f"{base}/b2/output.jsonl") == b"precious results\n"


def test_an_id_with_fsspec_chaining_syntax_is_refused_or_kept_in_its_place(
    emulator: Any, api_key: str, tmp_path: Path
) -> None:
    """Promise (not kept yet): an id holding fsspec's chaining syntax '::' is either refused
    by the layout or used as a plain name: each file lands exactly where the layout says."""
    layout = BatchStorageLayout(str(tmp_path / "store"))
    file_id = emulator.add_file(b'{"ok": true}\n')
    with TogetherClient(api_key, emulator.base_url) as client:
        for batch_id in ("x::y", "memory::z"):
            try:
                locations = [layout.output_jsonl(batch_id), layout.errors_jsonl(batch_id)]
            except ValueError:
                continue  # refused: fine
            for location in locations:
                result = client.files.retrieve_content(file_id, output=location)
                assert result.filename == location
                assert Path(location).is_file()


# ---------------------------------------------------------------------------------------------
# TLS verification, against a real TLS server with a self-signed certificate
# ---------------------------------------------------------------------------------------------
def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__(("127.0.0.1", 0), _TLSHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.seen: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes are the point of the test


class _TLSHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[tuple[str, _TLSServer]]:
    server = _TLSServer(*_self_signed(tmp_path))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/v1", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_tls_is_verified_by_default_and_off_only_when_asked(
    api_key: str, tls_url: tuple[str, _TLSServer]
) -> None:
    """Promise: against a server whose certificate is not trusted, the client and the resource
    refuse to talk by default (the key is never sent); verify_tls=False is the only way in."""
    url, server = tls_url
    with TogetherClient(api_key, url, max_retries=0) as client:
        with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            client.batches.list_batches()
    resource = TogetherResource(api_key=api_key, base_url=url, max_retries=0)
    assert resource.verify_tls is True
    with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        resource.batches.list_batches()
    with resource.make_client() as sensor_client:  # what the sensor uses
        with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            sensor_client.batches.list_batches()
    assert server.seen == []  # no HTTP request, so no Authorization header, ever went out

    with TogetherClient(api_key, url, max_retries=0, verify_tls=False) as client:
        assert client.batches.list_batches() == []
    off = TogetherResource(api_key=api_key, base_url=url, max_retries=0, verify_tls=False)
    assert off.batches.list_batches() == []
    assert server.seen == ["/v1/batches", "/v1/batches"]
