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
    """Loads the tables of one pipeline (see :func:`results_io_manager`): the results of its
    batches (partition key = batch id), or its final tables (partition key = submission id).

    Writing is the assets' own job (they report a ``MaterializeResult``): this IO manager only
    reads.
    """

    def __init__(self, layout: BatchStorageLayout, *, final: bool = False) -> None:
        self._layout = layout
        self._final = final
        self._column = "submission" if final else "batch_id"
        self._root = layout.final_url if final else layout.results_url
        self._location = layout.final_parquet if final else layout.results_parquet

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is not None:
            raise TypeError(
                "The results asset writes its own Parquet and returns a MaterializeResult; "
                f"it cannot store a {type(obj).__name__}."
            )

    def load_input(self, context: dg.InputContext) -> Any:
        from dagster_together.failures import failures_for_humans

        keys = self._partition_keys(context)
        what = f"Loading {context.asset_key.to_user_string()}"
        with failures_for_humans(what, storage_url=self._layout.storage_url):
            table, missing = self.read(keys)
        if missing:
            kind = (
                "submission(s) have no final table" if self._final else "batch(es) have no results"
            )
            context.log.warning(
                f"{len(missing)} {kind} yet (their partitions are not materialized): "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}."
            )
        context.log.info(
            f"Loaded {table.num_rows:,} rows of {len(keys)} partition(s) from {self._root}."
        )
        return _as_requested(table, context.dagster_type.typing_type)

    def read(self, keys: list[str]) -> tuple[Any, list[str]]:
        """The tables of ``keys`` (batch or submission ids) as one pyarrow Table with a
        ``batch_id`` (or ``submission``) column, and the keys that have no file yet."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        fs, root = self._layout.filesystem(self._root)
        paths, missing = [], []
        for key in keys:
            _, path = self._layout.filesystem(self._location(key))
            if fs.exists(path):
                paths.append(path)
            else:
                missing.append(key)
        if not paths:
            return pa.table({self._column: pa.array([], pa.string())}), missing
        dataset = ds.dataset(
            paths,
            filesystem=fs,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([(self._column, pa.string())]), flavor="hive"),
            partition_base_dir=root,
        )
        return dataset.to_table(), missing

    def _partition_keys(self, context: dg.InputContext) -> list[str]:
        if context.has_asset_partitions:
            return list(context.asset_partition_keys)
        # Unpartitioned (the asset that waits in its run): the submission of its latest run.
        event = context.instance.get_latest_materialization_event(context.asset_key)
        materialization = event.asset_materialization if event is not None else None
        if materialization is None:
            raise dg.Failure(
                f"{context.asset_key.to_user_string()} has not been materialized yet: "
                "materialize it before the assets that read its results."
            )
        value = materialization.metadata.get("together/submission_id")
        return [str(value.value)] if value is not None else []


def results_io_manager(
    layout: BatchStorageLayout, *, final: bool = False
) -> dg.IOManagerDefinition:
    """An IO manager definition that loads the results (or, with ``final``, the final tables)
    under ``layout``."""
    return dg.IOManagerDefinition.hardcoded_io_manager(TogetherResultsLoader(layout, final=final))


def _as_requested(table: Any, wanted: Any) -> Any:
    """``table`` as the downstream parameter's annotation asks: pandas, polars or pyarrow."""
    module = getattr(wanted, "__module__", "") or ""
    if module.startswith("pandas"):
        return table.to_pandas()
    if module.startswith("polars"):
        import polars as pl

        return pl.from_arrow(table)
    return table
