"""How the heavy steps (the submit, the results join, the final table) use memory.

:func:`prefer_jemalloc` (run when this module is imported, first thing the package does) makes jemalloc Arrow's allocator:
for this streaming work, which frees about as much as it allocates, it hands freed memory back
to the OS sooner than mimalloc, pyarrow's default (the join's peak at 1,000,000 requests:
``bench/``, docs/benchmarks.md). :func:`give_back_memory` returns what the allocators hold at
the points where a step has just let go of a large structure.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

__all__ = ["give_back_memory", "prefer_jemalloc"]


def prefer_jemalloc() -> None:
    """Set ``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` unless it is set already (your choice wins).

    Only on Linux, where pyarrow's wheels include jemalloc (elsewhere Arrow would warn about an
    unknown pool). Arrow reads the variable when it first allocates, so it takes effect when the
    package is imported before any Arrow data is made: as in a Dagster run, which imports the
    code location first.
    """
    if sys.platform.startswith("linux"):
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")


def give_back_memory() -> None:
    """Return freed memory to the OS, so that freed blocks do not pile up in the allocators.

    Arrow's pool is asked to release what it caches; glibc's ``malloc_trim`` does the same for
    the big Python buffers the reader used (where there is no glibc this does nothing).
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


prefer_jemalloc()
