"""Injected faults: what the next N matching requests get instead of a clean answer.

| kind                | params                                           | effect                                                   |
| ------------------- | ------------------------------------------------ | -------------------------------------------------------- |
| `status`            | `status` (500), `retry_after`, `retry_after_ms`, | that status with the object-form error body (or `body`)  |
|                     | `body`, `message`                                | and `Retry-After` / `retry-after-ms` headers when given;  |
|                     |                                                  | the request is not processed                             |
| `string_error`      | `status` (400), `message`                        | `{"error": "<message>"}`, the bare-string error form;    |
|                     |                                                  | the request is not processed                             |
| `drop`              | `after_bytes` (0)                                | processed; headers with the full Content-Length, then    |
|                     |                                                  | only `after_bytes` of the body, then the connection is   |
|                     |                                                  | closed (a truncated body)                                |
| `no_content_length` | -                                                | processed; body sent without Content-Length, ended by    |
|                     |                                                  | closing the connection                                   |
| `delay`             | `seconds` (1.0)                                  | processed, then the answer waits `seconds` (a slow       |
|                     |                                                  | server that outlasts a client timeout)                   |
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

KINDS: dict[str, dict[str, Any]] = {
    "status": {
        "status": 500,
        "retry_after": None,
        "retry_after_ms": None,
        "body": None,
        "message": None,
    },
    "string_error": {"status": 400, "message": "Emulated error"},
    "drop": {"after_bytes": 0},
    "no_content_length": {},
    "delay": {"seconds": 1.0},
}


@dataclass
class Fault:
    """One armed fault. ``times=None`` means every matching request, forever."""

    kind: str
    method: str | None
    path: str
    times: int | None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._regex = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        """Whether a request with this method and path (no query string) is hit."""
        if self.method not in (None, "*") and self.method.upper() != method.upper():
            return False
        return self._regex.search(path) is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON view for the admin API."""
        return {
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "times": self.times,
            **self.params,
        }


def make_fault(
    *,
    method: str | None = "GET",
    path: str = ".*",
    kind: str = "status",
    times: int | None = 1,
    **params: Any,
) -> Fault:
    """Validate ``add_fault`` arguments and build the fault (``ValueError`` on bad input)."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(KINDS)}")
    unknown = set(params) - set(KINDS[kind])
    if unknown:
        raise ValueError(f"fault kind {kind!r} takes no parameter(s) {sorted(unknown)}")
    if times is not None and times < 1:
        raise ValueError("times must be >= 1 (or None for every request)")
    try:
        re.compile(path)
    except re.error as exc:
        raise ValueError(f"bad path regex {path!r}: {exc}") from exc
    return Fault(kind=kind, method=method, path=path, times=times, params={**KINDS[kind], **params})


class FaultSet:
    """Thread-safe list of armed faults; the first match wins and is used up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Arm a fault."""
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._faults.clear()

    def list(self) -> list[Fault]:
        """A copy of the armed faults."""
        with self._lock:
            return list(self._faults)

    def take(self, method: str, path: str) -> Fault | None:
        """The fault for this request, if any, counting one use of it."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None
