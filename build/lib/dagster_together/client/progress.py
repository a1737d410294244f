"""Download progress: a tqdm bar on a terminal, and/or a log line every ~10 % for run logs
(at most one a second: a download that takes a moment gets only its final line)."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

_MB = 1_000_000
_UNKNOWN_TOTAL_LOG_EVERY = 100 * _MB  # without a Content-Length, log every 100 MB instead
# Seconds between two progress lines: each line is an event in a Dagster run's log (a few ms to
# store), and a 30 MB file downloads in a tenth of a second.
_MIN_LOG_INTERVAL = 1.0


class LogSink(Protocol):
    """Anything with ``.info(str)``: a ``logging.Logger``, Dagster's ``context.log``, ..."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Progress:
    """Reports bytes written for one download.

    ``bar``: None or True -> a tqdm bar only when stderr is a terminal; False -> never.
    ``log``: if given, gets one line each time another ~10 % is done (at most one a second),
    with the rate in MB/s, and a final line.
    """

    def __init__(self, label: str, *, bar: bool | None = None, log: LogSink | None = None) -> None:
        self._label = label
        self._want_bar = bar is not False and _stderr_is_terminal()
        self._log = log
        self._bar: Any = None
        self._total: int | None = None
        self._done = 0
        self._next_log = 0
        self._started = self._logged = time.monotonic()

    def start(self, total: int | None) -> None:
        """Called when the first answer arrives and the size (if any) is known."""
        self._total = total
        self._started = self._logged = time.monotonic()
        self._next_log = self._step()
        if self._want_bar and self._bar is None:
            from tqdm import tqdm  # installed with dagster; imported only for a terminal

            self._bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self._label,
                file=sys.stderr,
                leave=False,
            )

    def _step(self) -> int:
        if self._total:
            return max(1, self._total // 10)
        return _UNKNOWN_TOTAL_LOG_EVERY

    def update(self, n: int) -> None:
        """``n`` more bytes were written."""
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        if self._log is not None and self._done >= self._next_log:
            while self._next_log <= self._done:
                self._next_log += self._step()
            now = time.monotonic()
            if (not self._total or self._done < self._total) and (
                now - self._logged >= _MIN_LOG_INTERVAL
            ):
                self._logged = now
                self._log.info(self._line())

    def restart(self) -> None:
        """The server sent the whole file again: count from zero."""
        self._done = 0
        self._next_log = self._step()
        if self._bar is not None:
            self._bar.reset(total=self._total)

    def rate(self) -> float:
        """Bytes per second so far."""
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return self._done / elapsed

    def _line(self) -> str:
        done_mb = self._done / _MB
        if self._total:
            pct = 100.0 * self._done / self._total
            return (
                f"{self._label}: {pct:.0f}% ({done_mb:.1f} of {self._total / _MB:.1f} MB) "
                f"at {self.rate() / _MB:.1f} MB/s"
            )
        return f"{self._label}: {done_mb:.1f} MB at {self.rate() / _MB:.1f} MB/s"

    def finish(self, location: str) -> None:
        """Close the bar; log the final line."""
        self.close()
        if self._log is not None:
            elapsed = time.monotonic() - self._started
            self._log.info(
                f"{self._label}: done, {self._done / _MB:.1f} MB written to {location} "
                f"in {elapsed:.1f} s ({self.rate() / _MB:.1f} MB/s)"
            )

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
