"""What every figure gets: the sizes for this run, a scratch directory, and shared measurements."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import OUT_DIR
from bench.report import Row

__all__ = ["FULL", "QUICK", "Context", "Figure", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """The sizes of one run (full: as the targets say; quick: a smoke run of every figure, at sizes
    that keep ``make test`` short)."""

    join_n: int  # requests in the join figures
    flat_ns: tuple[int, ...]  # requests at which the join's peak RSS must stay flat
    pandas_n: int  # requests for the hand-written pandas way
    big_bytes: int  # the file downloaded by retrieve_content
    upload_bytes: int  # the input file uploaded
    upload_lines: int
    sensor_batches: int  # batches in flight during one sensor tick
    asset_n: int  # requests in the batch of the results-asset figure
    backfill_partitions: int
    backfill_n: int  # requests per backfilled batch
    backfill_repeats: int
    repeats: int  # best of N for measurements of a few seconds
    repeats_long: int  # best of N for the slow ones (1 GB transfers)
    cache_store_n: int  # answers in the answer store
    cache_lookup_n: int  # requests looked up in it (half of them answered there)
    final_n: int  # rows of the final table assembled from its batches
    final_flat_n: int  # the smaller size its peak RSS must stay flat from
    submit_n: int  # prompts whose request files are built (the submit row)
    scale_prompts: tuple[int, int]  # prompts submitted at once, small then full (memory flat)
    scale_per_batch: int  # requests per batch of that submit


FULL = Sizes(
    join_n=300_000,
    flat_ns=(50_000, 300_000, 1_000_000),
    pandas_n=300_000,
    big_bytes=1_000_000_000,
    upload_bytes=100_000_000,
    upload_lines=50_000,
    sensor_batches=200,
    asset_n=50_000,
    backfill_partitions=20,
    backfill_n=50_000,
    backfill_repeats=2,
    repeats=5,
    repeats_long=3,
    cache_store_n=10_000_000,
    cache_lookup_n=1_000_000,
    final_n=1_000_000,
    final_flat_n=100_000,
    submit_n=1_000_000,
    scale_prompts=(200_000, 1_000_000),
    scale_per_batch=50_000,
)

QUICK = Sizes(
    join_n=30_000,
    flat_ns=(10_000, 30_000, 100_000),
    pandas_n=30_000,
    big_bytes=100_000_000,
    upload_bytes=20_000_000,
    upload_lines=10_000,
    sensor_batches=50,
    asset_n=5_000,
    backfill_partitions=6,
    backfill_n=1_000,
    backfill_repeats=1,
    repeats=1,
    repeats_long=1,
    cache_store_n=200_000,
    cache_lookup_n=50_000,
    final_n=50_000,
    final_flat_n=10_000,
    submit_n=100_000,
    scale_prompts=(2_000, 10_000),
    scale_per_batch=2_000,
)


@dataclass
class Context:
    """Per-run state handed to every figure."""

    sizes: Sizes
    quick: bool
    scratch: Path = field(default_factory=lambda: _scratch())
    _memo: dict[str, Any] = field(default_factory=dict)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run: figures share measurements (e.g. the 300k join runs)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def path(self, name: str) -> Path:
        """A fresh path in the scratch directory (nothing there yet)."""
        target = self.scratch / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        return target

    def close(self) -> None:
        """Remove the scratch directory."""
        shutil.rmtree(self.scratch, ignore_errors=True)


def _scratch() -> Path:
    root = OUT_DIR / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=root))


Figure = Callable[[Context], list[Row]]
