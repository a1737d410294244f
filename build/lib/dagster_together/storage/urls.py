"""Locations: a local path or an fsspec URL, turned into a filesystem and composed.

A location keeps the form the user gave it: a URL stays a URL (``s3://bucket/a/b``), a local path
stays a path (joined with :func:`os.path.join`). fsspec is imported when a filesystem is asked
for, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["filesystem", "is_local", "join", "parent"]


def filesystem(location: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """``(fs, path)`` for a local path or an fsspec URL (``storage_options`` go to fsspec)."""
    import fsspec.core

    return fsspec.core.url_to_fs(location, **dict(storage_options or {}))


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is fsspec's local filesystem (where a rename is atomic)."""
    # Older fsspec versions give the protocol as a list, newer ones as a tuple or a str.
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def join(location: str, *parts: str) -> str:
    """``location/part/...`` for a local directory or a URL prefix, keeping the form given."""
    if "://" in location:
        return "/".join([location.rstrip("/"), *parts])
    return os.path.join(location, *parts)


def parent(location: str) -> str:
    """The directory (or URL prefix) holding ``location``; absolute for a local path."""
    if "://" in location:
        return location.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(location))
