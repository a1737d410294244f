"""ArrowMemoryWatch: Arrow's freed memory handed back when it has piled up, not every time."""

from __future__ import annotations

import pytest

from dagster_together import memory
from dagster_together.memory import ArrowMemoryWatch


def test_a_steady_loop_releases_nothing() -> None:
    watch = ArrowMemoryWatch(slack_bytes=64 * 1024 * 1024)
    for _ in range(50):
        watch.check()
    assert watch.releases == 0


def test_memory_held_beyond_the_slack_is_released_once() -> None:
    watch = ArrowMemoryWatch(slack_bytes=16 * 1024 * 1024)
    watch.check()  # the lowest point so far
    held = b"x" * (64 * 1024 * 1024)  # resident, and not Arrow's: like a pool's cached pages
    watch.check()
    assert watch.releases == 1
    # What the release could not give back is the new floor: no release on every call after.
    for _ in range(10):
        watch.check()
    assert watch.releases == 1
    del held


def test_without_proc_it_releases_every_few_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_resident_bytes", lambda: None)  # as on macOS: no /proc
    watch = ArrowMemoryWatch(fallback_every=4)
    for _ in range(12):
        watch.check()
    assert watch.releases == 3
