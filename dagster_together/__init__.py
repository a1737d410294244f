"""Dagster integration for Together AI's Batch inference API.

Submit a prompts table as batches, watch them with a sensor that holds no run slot (or wait
inside the run), and get the answers back as a Parquet table joined to the inputs::

    from dagster_together import RequestTemplate, TogetherResource, build_together_batch_defs

The plain-Python pieces (``TogetherClient``, ``join_results``) work without Dagster too; every
exception is importable from :mod:`dagster_together.errors`. Importing this package loads
Dagster but not httpx, pyarrow or s3fs: the names that need them load on first use, so a code
location loads as fast as ``import dagster``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import DagsterLibraryRegistry

from dagster_together.assets import TogetherBatchDefs, build_together_batch_defs
from dagster_together.client.types import BatchJob, BatchStatus, FileObject
from dagster_together.components import TogetherBatchComponent
from dagster_together.cost import CostOptions
from dagster_together.lazy import lazy_getattr
from dagster_together.options import (
    BatchingOptions,
    ResubmitOptions,
    ResultsOptions,
    SensorOptions,
    WaitOptions,
)
from dagster_together.resources import TogetherResource
from dagster_together.storage import BatchStorageLayout
from dagster_together.translator import DagsterTogetherTranslator
from dagster_together.version import __version__

if TYPE_CHECKING:
    from dagster_together.client import TogetherClient
    from dagster_together.requests import AudioTemplate, RequestTemplate
    from dagster_together.results import join_results

# Public names whose modules import httpx or pyarrow: loaded when first asked for.
_LAZY = {
    "AudioTemplate": "dagster_together.requests",
    "TogetherClient": "dagster_together.client",
    "RequestTemplate": "dagster_together.requests",
    "join_results": "dagster_together.results",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "AudioTemplate",
    "BatchJob",
    "BatchStatus",
    "BatchStorageLayout",
    "BatchingOptions",
    "CostOptions",
    "DagsterTogetherTranslator",
    "FileObject",
    "RequestTemplate",
    "ResubmitOptions",
    "ResultsOptions",
    "SensorOptions",
    "TogetherBatchComponent",
    "TogetherBatchDefs",
    "TogetherClient",
    "TogetherResource",
    "WaitOptions",
    "__version__",
    "build_together_batch_defs",
    "join_results",
]

DagsterLibraryRegistry.register("dagster-together", __version__, is_dagster_package=False)
