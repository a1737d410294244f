"""``DagsterTogetherTranslator``: the asset specs of a batch pipeline, one method per asset.

Like ``DagsterFivetranTranslator`` and ``DagsterSlingTranslator``: subclass it and override a
method to change keys, groups, owners, tags, kinds or descriptions, instead of passing more
keyword arguments to the factory::

    class MyTranslator(DagsterTogetherTranslator):
        def get_results_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
            return super().get_results_spec(props).replace_attributes(owners=["team:ml"])
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from dagster_together.storage import BatchStorageLayout

__all__ = ["DagsterTogetherTranslator", "TogetherBatchProps"]


@dataclass(frozen=True)
class TogetherBatchProps:
    """What the translator knows about one batch pipeline.

    Attributes:
        name: the pipeline's base name (``sentiment``).
        prompts_key: the asset whose table is submitted.
        layout: where the pipeline's files live.
        max_requests_per_batch: requests per batch.
        waits_in_run: True when one asset submits and waits inside its run (no sensor).
    """

    name: str
    prompts_key: dg.AssetKey
    layout: BatchStorageLayout
    max_requests_per_batch: int
    waits_in_run: bool = False


class DagsterTogetherTranslator:
    """Asset specs for the assets :func:`~dagster_together.build_together_batch_defs` builds.

    The factory keeps what wiring needs (dependencies, partitions, checks): a spec returned here
    may change the key, group, owners, tags, kinds, description and metadata.
    """

    def get_submit_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
        """``{name}_batches``: uploads the prompts and creates one batch per chunk."""
        return dg.AssetSpec(
            key=dg.AssetKey(f"{props.name}_batches"),
            kinds={"together"},
            description=(
                f"Submits the prompts of {props.prompts_key.to_user_string()} to Together's "
                f"Batch API: one batch per chunk of at most {props.max_requests_per_batch:,} "
                "requests, each batch id registered as a partition of the results. Re-running "
                "reuses the batches already created for the same input."
            ),
        )

    def get_results_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
        """``{name}_results``: the answers joined to the inputs, as Parquet."""
        if props.waits_in_run:
            description = (
                f"Submits the prompts of {props.prompts_key.to_user_string()} to Together's "
                "Batch API, waits inside the run until every batch (follow-ups included) has "
                "ended, and writes the final table: one row per input row with its answer, "
                "status, attempts and whether it came from the answer store."
            )
        else:
            description = (
                "The results of one Together batch (partition = batch id): the output and error "
                "files downloaded to storage and joined to the inputs into Parquet, one row per "
                "request with its status (succeeded, failed, missing, expired, cancelled)."
            )
        return dg.AssetSpec(
            key=dg.AssetKey(f"{props.name}_results"),
            kinds={"together", "parquet"},
            description=description,
            metadata={
                "dagster/uri": dg.MetadataValue.path(
                    props.layout.final_url if props.waits_in_run else props.layout.results_url
                )
            },
        )

    def get_final_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
        """``{name}_final``: one partition per submission, one row per input row of it."""
        return dg.AssetSpec(
            key=dg.AssetKey(f"{props.name}_final"),
            kinds={"together", "parquet"},
            description=(
                f"One table per submission of {props.prompts_key.to_user_string()} "
                "(partition = the submit run's id): one row per input row, in input order, "
                "with the final answer and status after every follow-up batch, the number of "
                "attempts, the batch that answered, and whether it came from the answer store. "
                "Reported by the results run that completes the submission."
            ),
            metadata={"dagster/uri": dg.MetadataValue.path(props.layout.final_url)},
        )
