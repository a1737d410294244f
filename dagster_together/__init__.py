"""Dagster integration for Together AI's Batch inference API."""
from dagster_together.version import __version__
