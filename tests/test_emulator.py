"""The emulator's own behaviour, over real HTTP with the standard library only.

Lifecycle and partial outputs, failure routing, validation, Range, every fault kind,
stop/start on the same port, the admin API, and the ``python -m`` entry point.
"""

from __future__ import annotations

import ast
import hashlib
import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagster_together.emulator import Emulator
from tests.helpers import free_port

KEY = "k"
REPO = Path(__file__).resolve().parents[1]
EMULATOR_DIR = REPO / "dagster_together" / "emulator"
JOB_FIELDS = {
    "id",
    "user_id",
    "input_file_id",
    "file_size_bytes",
    "status",
    "job_deadline",
    "created_at",
    "endpoint",
    "progress",
    "model_id",
    "output_file_id",
    "error_file_id",
    "error",
    "completed_at",
}


# -- helpers -----------------------------------------------------------------------------------
class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """One keep-alive connection: a wrong Content-Length anywhere breaks the next call."""

    def __init__(self, port: int, key: str | None = KEY, timeout: float = 10) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.key = key

    def __call__(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Reply:
        hdrs = dict(headers or {})
        if self.key is not None:
            hdrs.setdefault("Authorization", f"Bearer {self.key}")
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        self.conn.request(method, path, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())

    def close(self) -> None:
        self.conn.close()


def fresh_http(emu: Emulator, **kw: Any) -> Http:
    return Http(emu.port, **kw)


def multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    return (
        "".join(parts) + f"--{boundary}--\r\n"
    ).encode(), f"multipart/form-data; boundary={boundary}"


def chat(cid: str, text: str, model: str = "m") -> dict[str, Any]:
    return {
        "custom_id": cid,
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def ids(n: int) -> list[str]:
    """``r000``...; every tenth id ending in 7 carries ``-fail`` (the fixture's fail_pattern)."""
    return [f"r{i:03d}" + ("-fail" if i % 10 == 7 else "") for i in range(n)]


def create_batch(
    api: Http, emu: Emulator, rows: list[Any], endpoint: str = "/v1/chat/completions"
) -> dict[str, Any]:
    file_id = emu.add_file(jsonl(rows), purpose="batch-api", filename="in.jsonl")
    reply = api("POST", "/v1/batches", {"input_file_id": file_id, "endpoint": endpoint})
    assert reply.status == 201, reply.body
    return reply.json()["job"]


def wait_terminal(
    api: Http, batch_id: str, timeout: float = 10
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api("GET", f"/v1/batches/{batch_id}").json()
        seen.append(job)
        if job["status"] in ("COMPLETED", "FAILED", "EXPIRED", "CANCELLED"):
            return job, seen
        time.sleep(0.02)
    raise AssertionError(f"still {seen[-1]['status']}")


def lines(api: Http, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    reply = api("GET", f"/v1/files/{file_id}/content")
    assert reply.status == 200
    return [json.loads(line) for line in reply.body.splitlines()]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, validate_seconds=0.02, run_seconds=0.1, fail_pattern=r"-fail$") as e:
        yield e


@pytest.fixture
def api(emu: Emulator) -> Iterator[Http]:
    h = Http(emu.port)
    yield h
    h.close()


# -- files ---------------------------------------------------------------------------------------
def test_upload_redirect_put_preprocess_and_checksum_conflict(emu: Emulator, api: Http) -> None:
    data = jsonl([chat("a", "hello")])
    checksum = hashlib.sha256(data).hexdigest()
    form, ctype = multipart(
        {
            "purpose": "batch-api",
            "file_name": "in.jsonl",
            "file_type": "jsonl",
            "checksum": checksum,
        }
    )
    reply = api("POST", "/v1/files", form, {"Content-Type": ctype})
    assert reply.status == 302
    file_id = reply.headers["X-Together-File-Id"]
    location = reply.headers["Location"]
    assert file_id.startswith("file-")
    assert re.fullmatch(
        rf"http://127\.0\.0\.1:{emu.port}/_upload/{file_id}\?X-Amz-Signature=\S+", location
    )
    put_path = location.split(str(emu.port), 1)[1]

    anon = Http(emu.port, key=None)  # the presigned PUT carries no Authorization header
    assert anon("PUT", put_path.replace("Signature=", "Signature=x"), data).status == 403
    put = anon("PUT", put_path, data)
    assert (put.status, put.body) == (200, b"")
    assert api("GET", f"/v1/files/{file_id}").json()["Processed"] is False

    processed = api("POST", f"/v1/files/{file_id}/preprocess")
    assert processed.status == 200
    meta = processed.json()
    assert meta["id"] == file_id and meta["object"] == "file" and meta["bytes"] == len(data)
    assert (
        meta["FileType"] == "jsonl" and meta["Processed"] is True and meta["purpose"] == "batch-api"
    )
    assert isinstance(meta["created_at"], int) and meta["filename"] == "in.jsonl"
    assert api("GET", f"/v1/files/{file_id}/content").body == data

    again = api("POST", "/v1/files", form, {"Content-Type": ctype})
    assert again.status == 409 and again.json()["file_id"] == file_id
    assert again.headers["x-should-retry"] == "false"

    listing = api("GET", "/v1/files").json()
    assert listing["object"] == "list" and [f["id"] for f in listing["data"]] == [file_id]
    assert api("DELETE", f"/v1/files/{file_id}").json() == {
        "id": file_id,
        "object": "file",
        "deleted": True,
    }
    assert api("GET", f"/v1/files/{file_id}").status == 404


def test_chunked_put_and_inline_multipart_upload(emu: Emulator, api: Http) -> None:
    form, ctype = multipart({"purpose": "batch-api", "file_name": "c.jsonl"})
    reply = api("POST", "/v1/files", form, {"Content-Type": ctype})
    path = reply.headers["Location"].split(str(emu.port), 1)[1]
    conn = api.conn  # the same keep-alive connection, now with a chunked body
    conn.putrequest("PUT", path)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    pieces = (b'{"custom_id": "x", ', b'"body": {}}\n')
    for piece in pieces:
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"")
    file_id = reply.headers["X-Together-File-Id"]
    assert api("POST", f"/v1/files/{file_id}/preprocess").json()["bytes"] == len(b"".join(pieces))

    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch-api\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\nraw-bytes\r\n--{boundary}--\r\n"
    ).encode()
    inline = api(
        "POST", "/v1/files", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert inline.status == 200 and inline.json()["bytes"] == 9 and inline.json()["Processed"]


def test_add_file_hardlinks_a_path(emu: Emulator, api: Http, tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl"
    src.write_bytes(b"x" * 1000)
    file_id = emu.add_file(src)
    assert src.stat().st_nlink == 2  # no copy
    meta = api("GET", f"/v1/files/{file_id}").json()
    assert (
        meta["purpose"] == "batch-generated"
        and meta["filename"] == "big.jsonl"
        and meta["bytes"] == 1000
    )


def test_content_range_and_head(emu: Emulator, api: Http) -> None:
    data = bytes(range(256)) * 40
    file_id = emu.add_file(data)
    url = f"/v1/files/{file_id}/content"
    full = api("GET", url)
    assert full.status == 200 and full.body == data
    assert (
        full.headers["Content-Length"] == str(len(data))
        and full.headers["Accept-Ranges"] == "bytes"
    )

    tail = api("GET", url, headers={"Range": "bytes=1000-"})
    assert tail.status == 206 and tail.body == data[1000:]
    assert tail.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert api("GET", url, headers={"Range": "bytes=0-1"}).body == data[:2]
    assert api("GET", url, headers={"Range": "bytes=-10"}).body == data[-10:]
    bad = api("GET", url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status == 416 and bad.headers["Content-Range"] == f"bytes */{len(data)}"
    assert (
        api("GET", url, headers={"Range": "bytes=0-1,5-6"}).status == 200
    )  # multi-range: whole file

    head = api("HEAD", url)
    assert (
        head.status == 200 and head.body == b"" and head.headers["Content-Length"] == str(len(data))
    )
    assert api("GET", url).body == data  # the connection is still in step after all that


# -- auth and routing ----------------------------------------------------------------------------
def test_auth_and_unknown_paths(emu: Emulator) -> None:
    for key in (None, "wrong"):
        reply = fresh_http(emu, key=key)("GET", "/v1/batches")
        assert reply.status == 401
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert fresh_http(emu)("GET", "/v1/nothing").status == 404
    missing = fresh_http(emu)("GET", "/batches")  # the /v1 prefix is required
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"
    with Emulator(api_key=None) as open_emu:
        assert fresh_http(open_emu, key=None)("GET", "/v1/batches").json() is None  # no batch
        assert fresh_http(open_emu, key="anything")("GET", "/v1/files").status == 200


def test_create_errors(api: Http) -> None:
    missing = api(
        "POST", "/v1/batches", {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions"}
    )
    # The batch endpoints answer their own errors in the string form, like the live service.
    assert missing.status == 404 and "file-nope" in missing.json()["error"]
    assert api("POST", "/v1/batches", {"endpoint": "/v1/chat/completions"}).status == 400
    assert (
        api("POST", "/v1/batches", {"input_file_id": "x", "endpoint": "/v1/embeddings"}).status
        == 400
    )
    assert (
        api("POST", "/v1/batches", b"{not json", {"Content-Type": "application/json"}).status == 400
    )
    assert api("GET", "/v1/batches/nope").status == 404
    assert api("POST", "/v1/batches/nope/cancel").status == 404


# -- lifecycle -----------------------------------------------------------------------------------
def test_lifecycle_outputs_and_error_routing(emu: Emulator, api: Http) -> None:
    n = 60
    rows = [chat(cid, f"Tell me about topic {i}") for i, cid in enumerate(ids(n))]
    rows[3] = chat(rows[3]["custom_id"], "please EMULATE_ERROR now")
    rows[4] = {"custom_id": "no-model", "body": {"messages": [{"role": "user", "content": "hi"}]}}
    job = create_batch(api, emu, rows)
    assert set(job) == JOB_FIELDS and job["status"] == "VALIDATING" and job["progress"] == 0
    assert job["job_deadline"].endswith("Z") and job["created_at"].endswith("Z")
    done, seen = wait_terminal(api, job["id"])
    progress = [j["progress"] for j in seen if j["status"] == "IN_PROGRESS"]
    assert progress and progress == sorted(progress) and 0 <= progress[0] < 100
    assert done["status"] == "COMPLETED" and done["progress"] == 100 and done["completed_at"]
    assert done["model_id"] == "m" and done["error"] is None

    out, err = lines(api, done["output_file_id"]), lines(api, done["error_file_id"])
    failed = {c for c in ids(n) if c.endswith("-fail")} | {rows[3]["custom_id"], "no-model"}
    assert len(out) + len(err) == n
    assert {o["custom_id"] for o in out} == {r["custom_id"] for r in rows} - failed
    assert {e["custom_id"] for e in err} == failed
    assert [o["custom_id"] for o in out] != [
        r["custom_id"] for r in rows if r["custom_id"] not in failed
    ]
    codes = {e["custom_id"]: e["error"]["code"] for e in err}
    assert codes["no-model"] == "invalid_request_error" and codes["r003"] == "emulated_error"
    for o in out:
        assert (
            o["id"].startswith("br_")
            and o["response"]["status_code"] == 200
            and o["response"]["request_id"]
        )
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and isinstance(body["created"], int)
        assert (
            body["choices"][0]["finish_reason"] == "stop"
            and body["choices"][0]["message"]["content"]
        )
    meta = api("GET", f"/v1/files/{done['output_file_id']}").json()
    assert meta["purpose"] == "batch-generated"
    assert [b["id"] for b in api("GET", "/v1/batches").json()] == [job["id"]]
    assert emu.batches()[0]["status"] == "COMPLETED"


def test_answers_are_deterministic_and_completions_endpoint(emu: Emulator, api: Http) -> None:
    rows = [
        chat(
            "pos", "Classify the sentiment (positive, negative or neutral): I love it, great value"
        ),
        chat(
            "neg",
            "Classify the sentiment (positive, negative or neutral): terrible, it broke, awful",
        ),
        chat("neu", "What is the sentiment here? The box is blue."),
        chat("q", "What is the capital of France?"),
    ]
    first = lines(api, wait_terminal(api, create_batch(api, emu, rows)["id"])[0]["output_file_id"])
    second = lines(api, wait_terminal(api, create_batch(api, emu, rows)["id"])[0]["output_file_id"])
    content = {
        o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in first
    }
    assert (content["pos"], content["neg"], content["neu"]) == ("positive", "negative", "neutral")
    assert "capital of France" in content["q"]
    assert content == {
        o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in second
    }

    prompts = [
        {"custom_id": f"c{i}", "body": {"model": "m", "prompt": f"Once upon a time {i}"}}
        for i in range(3)
    ]
    done, _ = wait_terminal(api, create_batch(api, emu, prompts, endpoint="/v1/completions")["id"])
    body = lines(api, done["output_file_id"])[0]["response"]["body"]
    assert body["object"] == "text_completion" and body["choices"][0]["text"].strip()


def test_max_tokens_cuts_the_answer_with_finish_reason_length(emu: Emulator, api: Http) -> None:
    text = "Explain in detail why the sky looks blue on a clear summer afternoon"
    rows = []
    for cid, limit in (("free", None), ("cut", 3), ("zero", 0), ("roomy", 500)):
        row = chat(cid, text)
        if limit is not None:
            row["body"]["max_tokens"] = limit
        rows.append(row)
    prompts = [{"custom_id": "p", "body": {"model": "m", "prompt": text, "max_tokens": 2}}]
    chats = lines(api, wait_terminal(api, create_batch(api, emu, rows)["id"])[0]["output_file_id"])
    done, _ = wait_terminal(api, create_batch(api, emu, prompts, endpoint="/v1/completions")["id"])
    [completion] = lines(api, done["output_file_id"])
    by_id = {o["custom_id"]: o["response"]["body"] for o in chats + [completion]}
    free = by_id["free"]["choices"][0]
    assert free["finish_reason"] == "stop" and len(free["message"]["content"].split()) > 3
    for cid, limit in (("cut", 3), ("zero", 0), ("p", 2)):
        body = by_id[cid]
        choice = body["choices"][0]
        said = choice["message"]["content"] if "message" in choice else choice["text"]
        assert choice["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == len(said.split()) == limit
        assert free["message"]["content"].startswith(said.strip()) or cid == "p"
    assert by_id["roomy"]["choices"][0] == free  # a limit it stays under changes nothing


@pytest.mark.slow  # a `python -m` child
def test_command_line_help_is_plain_text_and_explains_every_option() -> None:
    from dagster_together.emulator.__main__ import build_parser

    done = subprocess.run(
        [sys.executable, "-m", "dagster_together.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    text = done.stdout
    for markup in ("``", ":class:", ":meth:", ":func:", ".. ", "**", "`"):
        assert markup not in text, f"markup {markup!r} leaks into --help"
    options = [a for a in build_parser()._actions if a.option_strings]  # noqa: SLF001
    assert len(options) == 15
    for action in options:
        assert action.help and len(action.help) > 15, action.option_strings
        assert action.option_strings[-1] in text
    assert "CANCELING" in text and "EMULATE_ERROR" in text


def test_all_requests_failed_means_no_output_file(emu: Emulator, api: Http) -> None:
    done, _ = wait_terminal(
        api, create_batch(api, emu, [chat(f"{i}-fail", "x") for i in range(5)])["id"]
    )
    assert done["status"] == "COMPLETED" and done["output_file_id"] is None
    assert len(lines(api, done["error_file_id"])) == 5


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not json\n", "not valid JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"body": {}}\n', "custom_id"),
        (b'{"custom_id": "a"}\n', "body"),
        (b'{"custom_id": "a", "body": {}}\n{"custom_id": "a", "body": {}}\n', "duplicate"),
        (b'{"custom_id": "' + b"x" * 65 + b'", "body": {}}\n', "longer than 64"),
        (b"\n", "no requests"),
    ],
)
def test_malformed_input_fails_in_validation(
    emu: Emulator, api: Http, content: bytes, reason: str
) -> None:
    file_id = emu.add_file(content, purpose="batch-api", filename="bad.jsonl")
    job = api(
        "POST", "/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    ).json()["job"]
    done, seen = wait_terminal(api, job["id"])
    assert done["status"] == "FAILED" and reason in done["error"]
    assert done["output_file_id"] is None and done["error_file_id"] is None
    assert "IN_PROGRESS" not in [j["status"] for j in seen]


def test_cancel_keeps_the_done_fraction() -> None:
    with Emulator(api_key=KEY, validate_seconds=0.0, run_seconds=0.5, cancel_seconds=0) as slow:
        h = Http(slow.port)
        n = 200
        job = create_batch(h, slow, [chat(c, "hi") for c in ids(n)])
        time.sleep(0.2)
        cancelled = h("POST", f"/v1/batches/{job['id']}/cancel")
        assert cancelled.status == 200
        body = cancelled.json()
        assert body["status"] == "CANCELLED" and body["completed_at"]  # cancel_seconds=0
        out = lines(h, body["output_file_id"])
        done_n = len(out)
        assert 0 < done_n < n
        assert {o["custom_id"] for o in out} == set(
            ids(n)[:done_n]
        )  # the first ones, in input order
        assert abs(body["progress"] / 100 * n - done_n) <= 1.01
        assert body["error_file_id"] is None  # the rest never come back, not even as errors
        assert (
            h("POST", f"/v1/batches/{job['id']}/cancel").json()["status"] == "CANCELLED"
        )  # idempotent
        assert h("GET", f"/v1/batches/{job['id']}").json() == body


def test_cancel_of_completed_job_is_rejected(emu: Emulator, api: Http) -> None:
    done, _ = wait_terminal(api, create_batch(api, emu, [chat("a", "x")])["id"])
    reply = api("POST", f"/v1/batches/{done['id']}/cancel")
    assert reply.status == 400 and "COMPLETED" in reply.json()["error"]


def test_set_batch_status_expired_with_done_fraction(emu: Emulator, api: Http) -> None:
    n = 100
    job = create_batch(api, emu, [chat(c, "x") for c in ids(n)])
    forced = emu.set_batch_status(job["id"], "EXPIRED", done_fraction=0.3)
    assert forced["status"] == "EXPIRED" and forced["progress"] == 30.0 and forced["error"]
    out, err = lines(api, forced["output_file_id"]), lines(api, forced["error_file_id"])
    first = ids(n)[:30]
    assert {o["custom_id"] for o in out} == {c for c in first if not c.endswith("-fail")}
    assert {e["custom_id"] for e in err} == {"r007-fail", "r017-fail", "r027-fail"}
    time.sleep(0.2)  # the clock no longer moves a terminal job (its whole run: 0.12 s)
    assert api("GET", f"/v1/batches/{job['id']}").json()["status"] == "EXPIRED"

    failed = emu.set_batch_status(job["id"], "FAILED")
    assert failed["output_file_id"] is None and failed["error_file_id"] is None
    assert (
        api("GET", f"/v1/files/{forced['output_file_id']}").status == 404
    )  # replaced outputs are gone
    completed = emu.set_batch_status(job["id"], "COMPLETED")
    assert len(lines(api, completed["output_file_id"])) == 90
    with pytest.raises(ValueError):
        emu.set_batch_status(job["id"], "IN_PROGRESS")


# -- faults --------------------------------------------------------------------------------------
def test_status_fault_with_retry_after_then_clean(emu: Emulator, api: Http) -> None:
    emu.add_fault(
        method="GET",
        path=r"^/v1/batches$",
        kind="status",
        status=429,
        retry_after=2,
        retry_after_ms=1500,
        times=2,
    )
    for _ in range(2):
        reply = api("GET", "/v1/batches")
        assert reply.status == 429 and reply.headers["Retry-After"] == "2"
        assert reply.headers["retry-after-ms"] == "1500"
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert api("GET", "/v1/batches").status == 200
    assert [r.status for r in emu.requests] == [429, 429, 200]

    emu.add_fault(method="GET", path=r"^/v1/files$", status=503, body="upstream down")
    assert api("GET", "/v1/files").body == b"upstream down"
    emu.add_fault(method=None, path=r"/v1/files", status=500, times=None)
    assert api("DELETE", "/v1/files/x").status == 500
    assert api("GET", "/v1/files").status == 500
    emu.clear_faults()
    assert api("GET", "/v1/files").status == 200


def test_status_fault_skips_the_work_drop_fault_does_it(emu: Emulator, api: Http) -> None:
    file_id = emu.add_file(jsonl([chat("a", "x")]), purpose="batch-api")
    create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    emu.add_fault(method="POST", path=r"^/v1/batches$", status=500)
    assert api("POST", "/v1/batches", create).status == 500
    assert emu.batches() == []
    # A lost answer: the batch exists although the client never saw the reply.
    emu.add_fault(method="POST", path=r"^/v1/batches$", kind="drop", after_bytes=0)
    with pytest.raises((http.client.HTTPException, OSError)):
        fresh_http(emu)("POST", "/v1/batches", create)
    assert len(emu.batches()) == 1


def test_drop_fault_truncates_the_body_and_range_resumes(emu: Emulator) -> None:
    data = os.urandom(300_000)
    file_id = emu.add_file(data)
    emu.add_fault(method="GET", path=rf"/files/{file_id}/content", kind="drop", after_bytes=1000)
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    conn.request("GET", f"/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    got = info.value.partial
    assert got == data[:1000]
    resumed = fresh_http(emu)(
        "GET", f"/v1/files/{file_id}/content", headers={"Range": f"bytes={len(got)}-"}
    )
    assert resumed.status == 206 and got + resumed.body == data


def test_no_content_length_fault(emu: Emulator) -> None:
    data = b"line\n" * 1000
    file_id = emu.add_file(data)
    emu.add_fault(method="GET", path=r"/content$", kind="no_content_length")
    reply = fresh_http(emu)("GET", f"/v1/files/{file_id}/content")
    assert reply.status == 200 and reply.body == data
    assert "Content-Length" not in reply.headers and reply.headers["Connection"] == "close"


def test_delay_fault_outlasts_a_client_timeout(emu: Emulator) -> None:
    emu.add_fault(method="GET", path=r"^/v1/batches$", kind="delay", seconds=0.6)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        Http(emu.port, timeout=0.2)("GET", "/v1/batches")
    assert time.monotonic() - started < 0.5
    assert fresh_http(emu)("GET", "/v1/batches").status == 200  # one use only


def test_string_error_fault(emu: Emulator, api: Http) -> None:
    emu.add_fault(
        method="POST", path=r"^/v1/batches$", kind="string_error", status=422, message="bad window"
    )
    reply = api("POST", "/v1/batches", {"input_file_id": "x", "endpoint": "/v1/chat/completions"})
    assert reply.status == 422 and reply.json() == {"error": "bad window"}
    assert (
        api("GET", "/v1/batches").status == 200
    )  # the unread request body did not desync the connection


def test_bad_fault_arguments(emu: Emulator) -> None:
    with pytest.raises(ValueError):
        emu.add_fault(kind="explode")
    with pytest.raises(ValueError):
        emu.add_fault(kind="drop", status=500)
    with pytest.raises(ValueError):
        emu.add_fault(path="(")


# -- outages -------------------------------------------------------------------------------------
def test_stop_and_start_on_the_same_port_keeps_state(emu: Emulator, api: Http) -> None:
    file_id = emu.add_file(b"kept")
    port = emu.port
    assert api("GET", f"/v1/files/{file_id}").status == 200  # a pooled keep-alive connection
    emu.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises((http.client.HTTPException, OSError)):
        api("GET", f"/v1/files/{file_id}")  # the old connection was cut too
    emu.start()
    assert emu.port == port
    assert fresh_http(emu)("GET", f"/v1/files/{file_id}/content").body == b"kept"


# -- admin API -----------------------------------------------------------------------------------
def test_admin_endpoints(emu: Emulator, tmp_path: Path) -> None:
    admin = Http(emu.port, key=None)
    assert admin("GET", "/_emulator/health").json()["ok"] is True
    api = fresh_http(emu)
    api("GET", "/v1/batches")
    recorded = admin("GET", "/_emulator/requests").json()
    assert [(r["method"], r["path"], r["status"]) for r in recorded] == [
        ("GET", "/v1/batches", 200)
    ]
    assert "authorization" not in recorded[0]["headers"]
    assert admin("POST", "/_emulator/clear_requests").status == 200
    assert admin("GET", "/_emulator/requests").json() == []

    assert (
        admin(
            "POST", "/_emulator/faults", {"method": "GET", "path": "^/v1/files$", "status": 503}
        ).status
        == 200
    )
    assert admin("POST", "/_emulator/faults", {"kind": "nope"}).status == 400
    assert len(admin("GET", "/_emulator/faults").json()) == 1
    assert api("GET", "/v1/files").status == 503
    admin("POST", "/_emulator/faults", {"method": "GET", "path": "^/v1/files$", "status": 503})
    assert admin("POST", "/_emulator/clear_faults").status == 200
    assert api("GET", "/v1/files").status == 200

    src = tmp_path / "out.jsonl"
    src.write_bytes(b"{}\n")
    added = admin("POST", "/_emulator/files", {"path": str(src), "purpose": "batch-api"}).json()
    assert added["bytes"] == 3 and added["purpose"] == "batch-api"
    job = create_batch(api, emu, [chat(c, "x") for c in ids(10)])
    forced = admin(
        "POST",
        f"/_emulator/batches/{job['id']}/status",
        {"status": "CANCELLED", "done_fraction": 0.5},
    )
    assert forced.status == 200 and forced.json()["status"] == "CANCELLED"
    assert len(lines(api, forced.json()["output_file_id"])) == 5
    assert (
        admin("POST", f"/_emulator/batches/{job['id']}/status", {"status": "RUNNING"}).status == 400
    )
    assert [b["id"] for b in admin("GET", "/_emulator/batches").json()] == [job["id"]]
    assert all(not r.path.startswith("/_emulator") for r in emu.requests)


# -- the command line and import hygiene ---------------------------------------------------------
def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the emulator printed nothing"
    return proc.stdout.readline()


@pytest.mark.slow  # a `python -m` child serving for real
def test_python_m_emulator_serves_and_streams_uploads_with_flat_memory(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_together.emulator",
            "--port",
            str(port),
            "--api-key",
            "K",
            "--run-seconds",
            "0.1",
            "--validate-seconds",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert _read_line(proc, 20).strip() == f"emulator listening on http://127.0.0.1:{port}/v1"
        assert Http(port, key=None)("GET", "/_emulator/health").status == 200
        assert Http(port, key="bad")("GET", "/v1/files").status == 401
        api = Http(port, key="K")

        # A 100 MB PUT streams to disk: the server's peak memory barely moves.
        def peak_kb() -> int:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))

        before = peak_kb()
        form, ctype = multipart({"purpose": "batch-api", "file_name": "big.jsonl"})
        location = api("POST", "/v1/files", form, {"Content-Type": ctype}).headers["Location"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        size, block = 100 * 1024 * 1024, b"x" * (1024 * 1024)
        conn.putrequest("PUT", location.split(str(port), 1)[1])
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        for _ in range(size // len(block)):
            conn.send(block)
        assert conn.getresponse().status == 200
        assert peak_kb() - before < 40_000
        assert (tmp_path / "files").is_dir()

        # The admin API drives a job from this (other) process.
        file_id = Http(port, key=None)(
            "POST", "/_emulator/files", {"path": str(_input(tmp_path)), "purpose": "batch-api"}
        ).json()["id"]
        job = api(
            "POST", "/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
        ).json()["job"]
        done, _ = wait_terminal(api, job["id"])
        assert done["status"] == "COMPLETED" and len(lines(api, done["output_file_id"])) == 3
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "three.jsonl"
    path.write_bytes(jsonl([chat(f"c{i}", "hello") for i in range(3)]))
    return path


def test_emulator_imports_only_the_standard_library() -> None:
    for module in EMULATOR_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or name.startswith(
                    "dagster_together.emulator"
                ), f"{module.name} imports {name}"
    # Load the emulator without running dagster_together/__init__.py (which may import Dagster).
    code = (
        "import sys, types, time; t = time.perf_counter()\n"
        "pkg = types.ModuleType('dagster_together'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['dagster_together'] = pkg\n"
        "import dagster_together.emulator\n"
        "heavy = [m for m in ('dagster', 'httpx', 'pyarrow') if m in sys.modules]\n"
        "print(heavy, time.perf_counter() - t)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(EMULATOR_DIR.parent)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    heavy, seconds = out.rsplit(" ", 1)
    assert heavy == "[]" and float(seconds) < 1.0
