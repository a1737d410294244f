"""``python -m bench [--quick] [--only NAME ...] [--out PATH]``: run the suite, print the table,
write the JSON. Exits 0 even when targets are missed (it is a report); FAIL rows are listed last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench import figures_cache, figures_dagster, figures_join, figures_scale, figures_transfer
from bench.context import FULL, QUICK, Context, Figure
from bench.data import OUT_DIR
from bench.report import Row, machine, print_table, write_json

# In the order they run: the Dagster layer figures last (they need the whole package).
FIGURES: dict[str, Figure] = {
    **figures_join.FIGURES,
    **figures_transfer.FIGURES,
    **figures_cache.FIGURES,
    **figures_scale.FIGURES,
    **figures_dagster.FIGURES,
}


def _failed(name: str, exc: BaseException) -> Row:
    """A row for a figure that could not be measured."""
    return Row(
        name=name,
        figure=name,
        ours="-",
        reference="-",
        ratio="-",
        target="-",
        passed=None,
        error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}",
        values={"traceback": traceback.format_exc()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the chosen figures in order, report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(FIGURES),
        metavar="NAME",
        help=f"run only this figure (repeatable): {', '.join(FIGURES)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results file (default: bench/out/results.json, results-quick.json with --quick)",
    )
    args = parser.parse_args(argv)
    out = args.out or OUT_DIR / ("results-quick.json" if args.quick else "results.json")
    names = [n for n in FIGURES if not args.only or n in args.only]
    ctx = Context(sizes=QUICK if args.quick else FULL, quick=args.quick)
    info = machine()
    started = time.perf_counter()
    rows: list[Row] = []
    try:
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                new = FIGURES[name](ctx)
            except Exception as exc:  # a figure that breaks is reported, the others still run
                new = [_failed(name, exc)]
            for row in new:
                print(f"[bench]   {row.verdict:5s} {row.figure}: {row.ours} ({row.ratio})")
            print(f"[bench]   {time.perf_counter() - t0:.0f} s", flush=True)
            rows.extend(new)
    finally:
        ctx.close()
    wall = time.perf_counter() - started
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(rows, info, wall)
    options = {"quick": args.quick, "only": args.only, "sizes": ctx.sizes.__dict__}
    write_json(out, rows, info, wall, options)
    print(f"\nWritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
