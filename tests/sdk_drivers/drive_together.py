"""Drive one official ``together`` SDK (1.5.x or 2.x) against a server, step by step.

Run by tests/test_emulator_sdk_lines.py with the interpreter of an SDK-only virtual environment
(this repository is not importable there): ``python drive_together.py BASE_URL KEY IN OUT_DIR``.
Prints one JSON object: for each step either its results or the exception it raised, so the
test can assert both what works and what fails.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from together import Together

TERMINAL = ("COMPLETED", "FAILED", "EXPIRED", "CANCELLED")
SDK = version("together")
MAJOR = int(SDK.split(".")[0])


def status_of(job: Any) -> str:
    status = job.status
    return str(getattr(status, "value", status))


def step(results: dict[str, Any], name: str, action: Callable[[], dict[str, Any]]) -> Any:
    try:
        results[name] = {"ok": True, **action()}
    except Exception as exc:  # the test asserts on the failure itself
        results[name] = {
            "ok": False,
            "error": type(exc).__name__,
            "message": str(exc)[:2000],
            "trace": traceback.format_exc()[-1500:],
        }
    return results[name]


def main(base_url: str, key: str, input_path: str, out_dir: str) -> dict[str, Any]:
    client = Together(api_key=key, base_url=base_url, max_retries=0)
    out = Path(out_dir)
    results: dict[str, Any] = {"sdk": SDK}
    ids: dict[str, Any] = {}

    def empty_list() -> dict[str, Any]:
        listed = client.batches.list_batches() if MAJOR == 1 else client.batches.list()
        return {"value": None if listed is None else [b.id for b in listed]}

    def upload() -> dict[str, Any]:
        f = client.files.upload(input_path, purpose="batch-api", check=False)  # same in both
        ids["file"] = f.id
        return {
            "id": f.id,
            "bytes": f.bytes,
            "purpose": str(getattr(f.purpose, "value", f.purpose)),
        }

    def create(key_name: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            if MAJOR == 1:
                job = client.batches.create_batch(ids["file"], "/v1/chat/completions")
            else:
                job = client.batches.create(
                    input_file_id=ids["file"], endpoint="/v1/chat/completions"
                ).job
            ids[key_name] = job.id
            return {"id": job.id, "status": status_of(job)}

        return run

    def get(batch_id: str) -> Any:
        return (
            client.batches.get_batch(batch_id) if MAJOR == 1 else client.batches.retrieve(batch_id)
        )

    def poll(key_name: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            seen: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                job = get(ids[key_name])
                seen.append(status_of(job))
                if seen[-1] in TERMINAL:
                    ids[f"{key_name}_output"] = job.output_file_id
                    return {
                        "statuses": sorted(set(seen), key=seen.index),
                        "status": seen[-1],
                        "output_file_id": job.output_file_id,
                        "error_file_id": job.error_file_id,
                        "progress": job.progress,
                    }
                time.sleep(0.05)
            raise TimeoutError(f"still {seen[-1]}")

        return run

    def content() -> dict[str, Any]:
        target = out / f"sdk-{SDK}.jsonl"
        file_id = ids["batch_output"]
        if MAJOR == 1:
            got = client.files.retrieve_content(file_id, output=str(target))
            return {"path": str(target), "size": got.size}
        target.write_bytes(client.files.content(file_id).read())
        return {"path": str(target), "size": target.stat().st_size}

    def list_batches() -> dict[str, Any]:
        listed = client.batches.list_batches() if MAJOR == 1 else client.batches.list()
        return {"ids": [b.id for b in listed or []]}

    def list_files() -> dict[str, Any]:
        listed = client.files.list()
        return {
            "purposes": {
                f.id: str(getattr(f.purpose, "value", f.purpose)) for f in listed.data or []
            }
        }

    def cancel() -> dict[str, Any]:
        if MAJOR == 1:
            job = client.batches.cancel_batch(ids["second"])
        else:
            job = client.batches.cancel(ids["second"])
        return {"status": status_of(job)}

    def missing_batch() -> dict[str, Any]:
        job = get("00000000-0000-0000-0000-000000000000")
        return {"unexpected": job.id}

    def delete() -> dict[str, Any]:
        gone = client.files.delete(ids["file"])
        return {"id": gone.id, "deleted": gone.deleted}

    step(results, "empty_list", empty_list)
    step(results, "upload", upload)
    step(results, "create", create("batch"))
    step(results, "poll", poll("batch"))
    step(results, "content", content)
    step(results, "list_batches", list_batches)
    step(results, "list_files", list_files)
    step(results, "create_second", create("second"))
    step(results, "cancel", cancel)
    step(results, "poll_cancelled", poll("second"))
    step(results, "missing_batch", missing_batch)
    step(results, "delete", delete)
    return results


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
