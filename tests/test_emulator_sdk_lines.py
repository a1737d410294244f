"""The other two lines of the official ``together`` SDK, unchanged, against the emulator.

``together`` 3.1.1 drives the emulator in tests/test_emulator_sdk.py. The two older lines share
its package name, so each runs in its own cached virtual environment (tests/sdk_venv.py) as a
subprocess (tests/sdk_drivers/drive_together.py) against an in-process emulator: upload, create,
poll to the end, download the output, list batches, list files, cancel (CANCELING, then
CANCELLED), an unknown batch, delete. Skipped with pip's reason when the index is out of reach.

* 1.5.35, the last 1.5.x (the hand-written SDK, ``/v1`` in the base URL): everything works
  except two calls, where 1.x and the live service disagree and the emulator follows the live
  service:

  - ``files.list()`` raises pydantic's ValidationError: output files come back with purpose
    ``batch-generated`` (TOGETHER_API.md; SDK 3.x reads it back too), and 1.x's ``FilePurpose``
    enum only knows ``fine-tune``, ``batch-api``, ``eval`` and ``eval-output``
    (together/types/files.py in the 1.5.35 wheel). So 1.x's ``files.list`` fails on the live
    service as soon as the account holds a batch output.
  - An error from a batch endpoint (404 for an unknown batch) raises a bare AssertionError
    ("Unexpected error response <message>") instead of NotFoundError: the batch endpoints send
    the string form ``{"error": "<message>"}`` and 1.x only parses the object form. The
    server's message still reaches the user.

  1.x handles the rest of the live service's quirks: it lists ``CANCELING``, and its
  ``list_batches`` turns ``null`` into ``[]``.
* 2.42.0, the last 2.x (generated, ``/v1`` in the base URL): everything works. Its ``list()``
  answers None for ``null`` (no batches), and it keeps ``CANCELING`` as a plain string although
  its status type lists only six statuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagster_together.client import TogetherClient
from dagster_together.emulator import Emulator
from tests.helpers import write_requests
from tests.sdk_venv import SdkUnavailable, run_driver, sdk_python

pytestmark = pytest.mark.slow

SDK_1 = "1.5.35"
SDK_2 = "2.42.0"
DRIVER = Path(__file__).parent / "sdk_drivers" / "drive_together.py"


@pytest.fixture(scope="module", params=[SDK_1, SDK_2], ids=["sdk-1.5", "sdk-2.x"])
def sdk_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Emulator, dict[str, Any], Path]]:
    """One driver run per SDK line: (version, the emulator still serving, results, work dir)."""
    version = request.param
    try:
        python = sdk_python(version)
    except SdkUnavailable as exc:
        pytest.skip(str(exc))
    work = tmp_path_factory.mktemp(f"sdk-{version}")
    requests = write_requests(work / "requests.jsonl", 6, prompt="Tell me about {i}")
    with Emulator(api_key="k", validate_seconds=0.05, run_seconds=1.0, cancel_seconds=0.3) as emu:
        # Both lines take the base URL with /v1 (3.x takes the host only).
        results = run_driver(python, DRIVER, emu.base_url, "k", str(requests), str(work))
        yield version, emu, results, work


def _ok(results: dict[str, Any], name: str) -> dict[str, Any]:
    step = results[name]
    assert step["ok"], (
        f"{name} failed: {step.get('error')}: {step.get('message')}\n{step.get('trace')}"
    )
    return step


def test_sdk_line_round_trip(sdk_run: tuple[str, Emulator, dict[str, Any], Path]) -> None:
    version, emu, results, _ = sdk_run
    assert results["sdk"] == version
    upload = _ok(results, "upload")
    assert upload["id"].startswith("file-") and upload["purpose"] == "batch-api"
    assert _ok(results, "create")["status"] == "VALIDATING"
    poll = _ok(results, "poll")
    assert poll["statuses"] == ["VALIDATING", "IN_PROGRESS", "COMPLETED"]
    assert poll["progress"] == 100.0 and poll["output_file_id"] and poll["error_file_id"] is None
    assert _ok(results, "list_batches")["ids"][0] == _ok(results, "create")["id"]
    assert _ok(results, "delete") == {"ok": True, "id": upload["id"], "deleted": True}


def test_sdk_line_download_matches_our_client(
    sdk_run: tuple[str, Emulator, dict[str, Any], Path],
) -> None:
    _, emu, results, work = sdk_run
    theirs = Path(_ok(results, "content")["path"]).read_bytes()
    with TogetherClient("k", emu.base_url) as client:
        ours = client.files.retrieve_content(
            results["poll"]["output_file_id"], output=work / "ours.jsonl"
        )
    assert Path(ours.filename).read_bytes() == theirs and ours.size == len(theirs) > 0
    assert results["content"]["size"] == len(theirs)


def test_sdk_line_cancel_is_canceling_then_cancelled(
    sdk_run: tuple[str, Emulator, dict[str, Any], Path],
) -> None:
    _, _, results, _ = sdk_run
    assert _ok(results, "cancel")["status"] == "CANCELING"
    ended = _ok(results, "poll_cancelled")
    assert ended["statuses"] == ["CANCELING", "CANCELLED"] and ended["status"] == "CANCELLED"


def test_sdk_line_empty_batch_list_is_null(
    sdk_run: tuple[str, Emulator, dict[str, Any], Path],
) -> None:
    version, _, results, _ = sdk_run
    # 1.x turns the live `null` into []; 2.x hands it back as None.
    assert _ok(results, "empty_list")["value"] == ([] if version == SDK_1 else None)


def test_sdk_line_files_list_and_string_errors(
    sdk_run: tuple[str, Emulator, dict[str, Any], Path],
) -> None:
    version, _, results, _ = sdk_run
    listed, missing = results["list_files"], results["missing_batch"]
    assert not missing["ok"]
    assert "00000000-0000-0000-0000-000000000000 not found" in missing["message"]
    if version == SDK_1:
        # 1.x's FilePurpose has no `batch-generated`: it cannot list an account with outputs,
        # on the live service as here.
        assert not listed["ok"] and listed["error"] == "ValidationError"
        assert "batch-generated" in listed["message"] and "data.1.purpose" in listed["message"]
        # 1.x parses only the object form of an error body; the batch endpoints send the string.
        assert missing["error"] == "AssertionError"
        assert missing["message"].startswith("Unexpected error response")
    else:
        assert _ok(results, "list_files")["purposes"] == {
            results["upload"]["id"]: "batch-api",
            results["poll"]["output_file_id"]: "batch-generated",
        }
        assert missing["error"] == "NotFoundError"
