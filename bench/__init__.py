"""Reproducible benchmarks for dagster-together: ``python -m bench`` (or ``make bench``).

Every figure is measured in fresh child processes beside a reference measured in the same run,
against servers (the emulator, moto) that run in their own processes on loopback. Generated data
is cached under ``bench/out/data``; the table is printed and written to ``bench/out/results.json``.

This package imports nothing heavy at import time: child processes start from a clean slate.
"""
