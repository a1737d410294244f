"""Measuring: tasks in fresh child processes, external commands, peak RSS, timing.

Peak RSS comes from Linux's per-process high-water mark (``VmHWM`` in ``/proc/<pid>/status``):
read by a task in its own process (which can reset it after its setup with
``/proc/self/clear_refs`` to measure growth), or polled for external commands (curl). Each
figure runs in its own child, so a figure's peak is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MB",
    "CommandResult",
    "cpu_seconds",
    "TaskError",
    "peak_rss",
    "reset_peak_rss",
    "rss",
    "run_command",
    "run_task",
    "timed",
]

MB = 1_000_000
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 900.0


class TaskError(RuntimeError):
    """A child task or command failed; the message holds the tail of its stderr."""


# -- inside a process ---------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss() -> int:
    """This process's resident set size now, in bytes."""
    return _status_kb("VmRSS") * 1024


def peak_rss() -> int:
    """This process's peak resident set size (since start or the last reset), in bytes."""
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> int:
    """Reset the peak RSS to the current RSS (Linux >= 4.0) and return it, in bytes."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return rss()


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of another running process, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """``with timed() as t: ...`` then ``t["seconds"]`` is the wall time of the block and
    ``t["cpu_seconds"]`` the CPU time spent in it (all threads, and children reaped in it)."""
    box: dict[str, float] = {}
    start, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - start
        box["cpu_seconds"] = cpu_seconds() - cpu


# -- child processes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandResult:
    """An external command's wall time, peak RSS (polled) and exit code."""

    seconds: float
    max_rss: int
    returncode: int
    stderr: str


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    env.update(extra or {})
    return env


def _watch_peak(pid: int, stop: threading.Event, box: list[int]) -> None:
    """Poll ``VmHWM`` of ``pid`` until it exits; ``box[0]`` ends as the last value seen.

    ``wait4``'s ``ru_maxrss`` cannot be used for a command started from Python: the child is
    vforked, and Linux carries the parent's high-water mark over the exec into ``ru_maxrss``.
    The high-water mark only grows, so the last value read before the exit is the peak within
    one polling interval of the end (a steady downloader's RSS is flat long before that).
    """
    path = f"/proc/{pid}/status"
    while not stop.is_set():
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        box[0] = max(box[0], int(line.split()[1]) * 1024)
                        break
        except OSError:
            return
        stop.wait(0.01)


def run_command(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> CommandResult:
    """Run ``argv``; return its wall time and peak RSS (polled, see :func:`_watch_peak`)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.DEVNULL, stderr=err, env=_env(env), cwd=cwd
        )
        peak = [0]
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_peak, args=(proc.pid, stop, peak), daemon=True)
        watcher.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            stop.set()
        seconds = time.perf_counter() - start
        watcher.join()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    result = CommandResult(seconds, peak[0], proc.returncode, stderr)
    if check and proc.returncode != 0:
        raise TaskError(f"{' '.join(argv)!r} exited with {proc.returncode}:\n{_tail(stderr)}")
    return result


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_task(
    task: Callable[..., dict[str, Any]],
    /,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run ``task(**kwargs)`` in a fresh ``python -m bench.child`` and return its dict.

    The task must be a module-level function of a ``bench`` module returning a JSON-able dict.
    The answer also holds ``peak_rss`` (the child's own high-water mark, read by the child at the
    end unless the task set it) and ``process_seconds`` (the child's whole life).
    """
    name = f"{task.__module__}:{task.__qualname__}"
    with tempfile.TemporaryDirectory(prefix="bench-task-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        args = json.dumps(kwargs, default=str)
        command = run_command(
            [sys.executable, "-m", "bench.child", name, args, result_path],
            env=env,
            timeout=timeout,
            check=False,
        )
        if command.returncode != 0 or not os.path.exists(result_path):
            raise TaskError(f"task {name} failed ({command.returncode}):\n{_tail(command.stderr)}")
        with open(result_path) as handle:
            result: dict[str, Any] = json.load(handle)
    result["process_seconds"] = command.seconds
    return result
