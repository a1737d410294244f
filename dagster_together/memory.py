"""Memory the heavy steps (the submit, the results join, the final table) hand back.

:func:`give_back_memory` returns what the allocators hold at the points where a step has just
let go of a large structure, so that freed blocks do not pile up between its phases.
"""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["ArrowMemoryWatch", "give_back_arrow_memory", "give_back_memory"]


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
    stays with the thread that allocated it until that thread collects. Each call is paid again
    in page faults: a loop that hands its tables to other threads lets
    :class:`ArrowMemoryWatch` decide when to call it.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class ArrowMemoryWatch:
    """Hands Arrow's freed memory back when it has piled up, not on a fixed count.

    A loop that hands its tables to other threads calls :meth:`check` once per iteration. The
    memory the process holds beyond Arrow's live bytes (resident size minus
    ``bytes_allocated``) is compared with the lowest seen; when it has grown by ``slack_bytes``
    the pool releases what it caches (:func:`give_back_arrow_memory`). Each release is paid
    again in page faults, so a loop whose freed memory is reused in place pays nothing. Where
    the resident size cannot be read (no ``/proc``), it releases every ``fallback_every`` calls.
    """

    def __init__(self, slack_bytes: int = 32 * 1024 * 1024, fallback_every: int = 4) -> None:
        import pyarrow as pa

        self.slack_bytes = slack_bytes
        self.fallback_every = fallback_every
        self.releases = 0
        self._pool = pa.default_memory_pool()
        self._calls = 0
        self._floor: int | None = None

    def check(self) -> None:
        """Release Arrow's cached memory if it has grown by the slack since the lowest point."""
        self._calls += 1
        rss = _resident_bytes()
        if rss is None:
            if self._calls % self.fallback_every == 0:
                self._release()
            return
        held = rss - self._pool.bytes_allocated()
        if self._floor is None or held < self._floor:
            self._floor = held
        elif held - self._floor > self.slack_bytes:
            self._release()
            after = _resident_bytes()
            if after is not None:  # what could not be released (Python's heap) is the new floor
                self._floor = after - self._pool.bytes_allocated()

    def _release(self) -> None:
        self.releases += 1
        give_back_arrow_memory()


def _resident_bytes() -> int | None:
    """The process's resident size from ``/proc/self/statm``; None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _page_size()
    except (OSError, ValueError, IndexError):
        return None


@functools.lru_cache(maxsize=1)
def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
