"""Arrow's allocator: jemalloc once the package is imported (Linux), unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import dagster_together, pyarrow as pa; print(pa.default_memory_pool().backend_name)"


def _backend(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Unsupported backend" not in done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="jemalloc is chosen on Linux")
def test_importing_the_package_makes_jemalloc_arrows_allocator() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _backend(env) == "jemalloc"


def test_a_pool_the_user_chose_is_kept() -> None:
    assert _backend({**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}) == "system"
