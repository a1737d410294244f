"""An example Dagster code location on dagster-together: product reviews classified in a batch.

``example_project.definitions`` is the code location (``dg dev`` opens it), ``make demo``
runs it end to end (:mod:`example_project.demo`) and ``make dev`` opens the UI on it
(:mod:`example_project.dev`). Nothing is imported here, so that importing a submodule such as
:mod:`example_project.local_emulator` does not load the code location.
"""
