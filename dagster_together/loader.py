"""Results that load downstream: an IO manager that hands a results asset's Parquet to the assets
that depend on it, from any fsspec storage, without them knowing where it lives::

    @dg.asset
    def summary(sentiment_results: pa.Table) -> None: ...

One partition, several, or all of them arrive as one table with a ``batch_id`` column. Annotate
the parameter ``pd.DataFrame`` or ``pl.DataFrame`` for pandas or polars (when installed).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from dagster_together.storage import BatchStorageLayout

__all__ = ["TogetherResultsLoader", "results_io_manager"]


class TogetherResultsLoader(dg.IOManager):
    """Loads the results tables of one pipeline (see :func:`results_io_manager`).

    Writing is the results asset's own job (it reports a ``MaterializeResult``): this IO manager
    only reads.
    """

    def __init__(self, layout: BatchStorageLayout) -> None:
        self._layout = layout

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is not None:
            raise TypeError(
                "The results asset writes its own Parquet and returns a MaterializeResult; "
                f"it cannot store a {type(obj).__name__}."
            )

    def load_input(self, context: dg.InputContext) -> Any:
        from dagster_together.failures import failures_for_humans

        batch_ids = self._batch_ids(context)
        what = f"Loading {context.asset_key.to_user_string()}"
        with failures_for_humans(what, storage_url=self._layout.storage_url):
            table, missing = self.read(batch_ids)
        if missing:
            context.log.warning(
                f"{len(missing)} batch(es) have no results yet (their partitions are not "
                f"materialized): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}."
            )
        context.log.info(
            f"Loaded {table.num_rows:,} result rows of {len(batch_ids)} batch(es) "
            f"from {self._layout.results_url}."
        )
        return _as_requested(table, context.dagster_type.typing_type)

    def read(self, batch_ids: list[str]) -> tuple[Any, list[str]]:
        """The results of ``batch_ids`` as one pyarrow Table with a ``batch_id`` column, and the
        batches that have no results file yet."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        fs, root = self._layout.filesystem(self._layout.results_url)
        paths, missing = [], []
        for batch_id in batch_ids:
            _, path = self._layout.filesystem(self._layout.results_parquet(batch_id))
            if fs.exists(path):
                paths.append(path)
            else:
                missing.append(batch_id)
        if not paths:
            return pa.table({"batch_id": pa.array([], pa.string())}), missing
        dataset = ds.dataset(
            paths,
            filesystem=fs,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("batch_id", pa.string())]), flavor="hive"),
            partition_base_dir=root,
        )
        return dataset.to_table(), missing

    def _batch_ids(self, context: dg.InputContext) -> list[str]:
        if context.has_asset_partitions:
            return list(context.asset_partition_keys)
        # Unpartitioned (the asset that waits in its run): the batches of its latest run.
        event = context.instance.get_latest_materialization_event(context.asset_key)
        materialization = event.asset_materialization if event is not None else None
        if materialization is None:
            raise dg.Failure(
                f"{context.asset_key.to_user_string()} has not been materialized yet: "
                "materialize it before the assets that read its results."
            )
        value = materialization.metadata.get("together/batch_ids")
        return list(value.value) if value is not None else []  # type: ignore[arg-type]


def results_io_manager(layout: BatchStorageLayout) -> dg.IOManagerDefinition:
    """An IO manager definition that loads the results under ``layout``."""
    return dg.IOManagerDefinition.hardcoded_io_manager(TogetherResultsLoader(layout))


def _as_requested(table: Any, wanted: Any) -> Any:
    """``table`` as the downstream parameter's annotation asks: pandas, polars or pyarrow."""
    module = getattr(wanted, "__module__", "") or ""
    if module.startswith("pandas"):
        return table.to_pandas()
    if module.startswith("polars"):
        import polars as pl

        return pl.from_arrow(table)
    return table
