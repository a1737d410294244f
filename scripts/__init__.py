"""Maintenance scripts of the repository (run as ``python -m scripts.NAME`` from its root)."""
