"""The results table: rows, the machine they ran on, printing, and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "Row",
    "machine",
    "megabytes",
    "paired_ratios",
    "paired_text",
    "print_table",
    "rate",
    "seconds",
    "times",
    "write_json",
]


@dataclass
class Row:
    """One figure: our value beside the reference's, the ratio and whether it meets its target.

    ``passed`` is None when the figure could not be measured (``error`` says why).
    """

    name: str
    figure: str
    ours: str
    reference: str
    ratio: str
    target: str
    passed: bool | None
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def verdict(self) -> str:
        """``pass``, ``FAIL``, ``ERROR``, or ``info`` for a row without a target."""
        if self.passed is None:
            return "ERROR"
        if self.target.startswith("none"):
            return "info"
        return "pass" if self.passed else "FAIL"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _curl_version() -> str:
    try:
        out = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "not installed"
    return out.stdout.split()[1] if out.stdout else "unknown"


def machine() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python and the versions of the libraries measured."""
    packages = ("dagster-together", "dagster", "pyarrow", "pandas", "httpx", "s3fs", "moto")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(_ram_bytes() / 1e9, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "versions": {p: _version(p) for p in packages} | {"curl": _curl_version()},
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line: ``CPU, N cores, X GB RAM, OS, Python v; pkg v, ...``."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB RAM, {info['os']}, "
        f"Python {info['python']}; {versions}"
    )


def print_table(rows: list[Row], info: dict[str, Any], wall_seconds: float) -> None:
    """The table as Markdown (so it pastes into the README), then the machine and the FAILs."""
    headers = ("figure", "ours", "reference", "ratio", "target", "result")
    cells = [(r.figure, r.ours, r.reference, r.ratio, r.target, r.verdict) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    print()
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for values in cells:
        print(line(values))
    print()
    print(f"Machine: {machine_line(info)}")
    print(f"Suite wall time: {wall_seconds:.0f} s")
    load = info.get("loadavg_at_start"), info.get("loadavg_at_end")
    print(f"Load average (1, 5, 15 min) at start {load[0]}, at end {load[1]}")
    misses = [r for r in rows if r.passed is not True]
    if misses:
        print()
        for r in misses:
            detail = f": {r.error}" if r.error else ""
            print(f"** {r.verdict}: {r.figure} ({r.ours} vs target {r.target}){detail}")
    else:
        print("All targets met.")


def write_json(
    path: Path, rows: list[Row], info: dict[str, Any], wall_seconds: float, options: dict[str, Any]
) -> None:
    """``{"machine", "options", "wall_seconds", "rows": [...]}`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": info,
        "machine_line": machine_line(info),
        "options": options,
        "wall_seconds": round(wall_seconds, 1),
        "rows": [asdict(r) | {"result": r.verdict} for r in rows],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# -- formatting of cells ------------------------------------------------------------------------
def seconds(value: float) -> str:
    """``1.23 s`` (or ``45 ms`` below a tenth of a second)."""
    return f"{value * 1000:.0f} ms" if value < 0.1 else f"{value:.2f} s"


def megabytes(value: float) -> str:
    """Bytes as ``123 MB`` (10^6)."""
    return f"{value / 1e6:.0f} MB"


def rate(value: float) -> str:
    """Bytes per second as ``456 MB/s``."""
    return f"{value / 1e6:.0f} MB/s"


def times(value: float) -> str:
    """A ratio as ``1.23x``."""
    return f"{value:.2f}x"


# -- ratios of alternated runs ------------------------------------------------------------------
def paired_ratios(ours: list[float], reference: list[float]) -> dict[str, float]:
    """min / median / max of the ratios of the runs, paired in the order they ran (each of ours
    over the reference run beside it, which shares the machine's state); the median is the
    ratio a row's target applies to."""
    ratios = sorted(o / r for o, r in zip(ours, reference, strict=True))
    return {"min": ratios[0], "median": statistics.median(ratios), "max": ratios[-1]}


def paired_text(median: float, best: float, pairs: int) -> str:
    """``1.62x (median of 5 pairs; best/best 1.55x)``."""
    counted = f"{pairs} pair" if pairs == 1 else f"{pairs} pairs"
    return f"{times(median)} (median of {counted}; best/best {times(best)})"
