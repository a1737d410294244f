"""Memory the heavy steps (the submit, the results join, the final table) hand back.

:func:`give_back_memory` returns what the allocators hold at the points where a step has just
let go of a large structure, so that freed blocks do not pile up between its phases.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["give_back_arrow_memory", "give_back_memory"]


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


def give_back_arrow_memory() -> None:
    """Return what Arrow's pool holds freed (cheap: no ``malloc_trim``).

    With mimalloc, memory that another thread freed (a writer thread done with a row group)
    stays with the thread that allocated it until that thread collects; a loop that hands its
    tables to another thread calls this every few iterations, so its peak does not climb (each
    call is paid again in page faults, so not every one).
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
