"""The client is plain Python: no Dagster, no pyarrow, and nothing heavy at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dagster_together.client
from tests.helpers import modules_added_by_import

CLIENT_DIR = Path(dagster_together.client.__file__).parent


def test_client_source_never_imports_dagster_or_pyarrow() -> None:
    offenders = []
    for path in sorted(CLIENT_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in ("dagster", "pyarrow") or name.startswith("dagster._"):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []


@pytest.mark.slow  # a fresh interpreter importing the package
def test_importing_the_client_loads_nothing_heavy() -> None:
    # Measured against `import dagster_together`, whatever the package itself imports.
    added = modules_added_by_import("dagster_together", "dagster_together.client")
    heavy = ("dagster.", "pyarrow", "fsspec", "s3fs", "botocore", "tqdm", "pandas")
    assert [m for m in added if m == "dagster" or m.startswith(heavy)] == []
