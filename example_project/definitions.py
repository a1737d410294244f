"""The example code location: ``dg dev`` (and ``dg check defs``, ``dg list defs``) in the
repository root opens it (``[tool.dg.project]`` in ``pyproject.toml``).

Built from the environment (``TOGETHER_BASE_URL``, ``TOGETHER_API_KEY``, ``TOGETHER_OUTPUT_URL``:
see :mod:`example_project.pipeline`). With no ``TOGETHER_BASE_URL`` loading it makes sure the
local emulator runs on ``127.0.0.1:8765``, so that every process loading the location (code
server, run workers, daemon) uses the same one (:mod:`example_project.local_emulator`).
"""

from __future__ import annotations

import dagster as dg

from example_project.pipeline import (
    build_pipeline,
    output_url_from_env,
    sensor_interval_from_env,
    together_from_env,
)

defs: dg.Definitions = build_pipeline(
    together=together_from_env(),
    output_url=output_url_from_env(),
    sensor_interval_seconds=sensor_interval_from_env(),
).defs
