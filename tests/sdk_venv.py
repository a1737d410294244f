"""Cached virtual environments holding one version of the official ``together`` SDK each.

The SDK lines share one package name, so each needs its own environment. They are built once
(``python -m venv`` + pip from the configured index) under ``.sdk-venvs/together-<version>/`` at
the repository root (ignored by git) and reused by later runs. A test that cannot build one
because pip cannot reach the index is skipped with pip's reason.

Build them ahead of a test run with ``python -m tests.sdk_venv 1.5.35 2.42.0``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".sdk-venvs"

# pip's words for "the index could not be reached" (no network, DNS, proxy, TLS).
_UNREACHABLE = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "SSLError",
)


class SdkUnavailable(Exception):
    """The SDK environment could not be built because the package index is out of reach."""


def sdk_python(version: str) -> Path:
    """The interpreter of a venv with ``together==version`` installed (built on first use).

    Raises:
        SdkUnavailable: pip could not reach the index (the message is pip's own reason).
        RuntimeError: pip failed for another reason (a real failure, not a skip).
    """
    CACHE.mkdir(exist_ok=True)
    home = CACHE / f"together-{version}"
    python = home / "bin" / "python"
    ready = home / ".ready"
    with open(CACHE / f".together-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest processes never build the same venv
        if ready.exists() and python.exists():
            return python
        shutil.rmtree(home, ignore_errors=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"together=={version}"],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        if done.returncode != 0:
            shutil.rmtree(home, ignore_errors=True)
            reason = (done.stderr or done.stdout).strip()
            if any(word in reason for word in _UNREACHABLE):
                raise SdkUnavailable(
                    f"pip could not install together=={version} from the index: {reason[-500:]}"
                )
            raise RuntimeError(f"pip failed to install together=={version}: {reason[-2000:]}")
        ready.write_text(version)
        return python


def run_driver(python: Path, script: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``script`` with the SDK venv's ``python`` and return the JSON it prints last."""
    done = subprocess.run(
        [str(python), str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        # The driver must see only its venv's packages, never this repository's.
        env={
            **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TOGETHER_API_KEY")},
            "TOGETHER_NO_BANNER": "1",  # SDK 1.5.x prints an upgrade banner otherwise
        },
        cwd=script.parent,
    )
    if done.returncode != 0:
        raise AssertionError(f"driver failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return dict(json.loads(lines[-1]))


if __name__ == "__main__":  # pragma: no cover - a convenience for warming the cache
    for wanted in sys.argv[1:]:
        print(sdk_python(wanted))
