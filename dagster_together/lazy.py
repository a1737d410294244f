"""Names a package exports but loads on first use (a module ``__getattr__``, PEP 562), so that
importing the package does not import what only some callers need."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(
    package: str, modules: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``.

    ``modules`` maps each lazily exported name to the module that defines it (``".core"`` is
    relative to ``package``); the first access imports it and keeps the value in ``namespace``
    (the package's ``globals()``), so later accesses are plain lookups.
    """

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
