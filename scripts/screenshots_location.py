"""The example project's code location as the UI walk through loads it (``scripts.screenshots``).

The same pipeline as :mod:`example_project.definitions`, built from the same environment
variables, with two differences that only make the walk through quicker: the sensor ticks every
second (the daemon still checks sensors only every few seconds), and each run executes its steps
in the run's own process rather than one new process per step. What the UI shows is the same.
"""

from __future__ import annotations

import dagster as dg

from example_project.pipeline import build_pipeline, output_url_from_env, together_from_env

SENSOR_INTERVAL_SECONDS = 1

defs: dg.Definitions = dg.Definitions.merge(
    build_pipeline(
        together=together_from_env(),
        output_url=output_url_from_env(),
        sensor_interval_seconds=SENSOR_INTERVAL_SECONDS,
    ).defs,
    dg.Definitions(executor=dg.in_process_executor),
)
