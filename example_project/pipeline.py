"""The example pipeline, as functions: classify 300 product reviews with Together's Batch API.

Importing this module has no side effect (nothing is started, no environment read):
:mod:`example_project.definitions` builds the code location from the environment, the demo
(:mod:`example_project.demo`) and the tests build it from explicit arguments. What it holds::

    reviews                  300 product reviews made offline (a pyarrow Table)
      -> reviews_batches     the submit: one Together batch for the 300 requests
         ... reviews_batch_sensor watches the batch (RUNNING by default) ...
      -> reviews_results     one partition per batch id: the answers joined to the reviews

plus ``reviews_submit_job`` (reviews + submit) and its daily schedule (stopped by default:
switch it on in the UI).

Configuration, from the environment (:func:`together_from_env`, :func:`output_url_from_env`):

* ``TOGETHER_BASE_URL``: the API. Unset: the local emulator on ``127.0.0.1:8765``, started in
  the background if it is not running yet (:mod:`example_project.local_emulator`).
* ``TOGETHER_API_KEY``: the key, read with ``dg.EnvVar`` when ``TOGETHER_BASE_URL`` is set. The
  local emulator gets a placeholder: your real key is never sent to it.
* ``TOGETHER_OUTPUT_URL``: where inputs, raw outputs and the results Parquet go: a local
  directory or an fsspec URL such as ``s3://bucket/prefix`` (credentials from the usual
  environment). Unset: ``.demo/data`` in the repository.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from dagster_together import (
    BatchStorageLayout,
    DagsterTogetherTranslator,
    RequestTemplate,
    SensorOptions,
    TogetherBatchDefs,
    TogetherResource,
    WaitOptions,
    build_together_batch_defs,
)
from dagster_together.storage import join
from dagster_together.translator import TogetherBatchProps
from example_project.local_emulator import DEMO_DIR, ensure_emulator
from example_project.reviews import make_reviews

__all__ = [
    "EMULATOR_SENSOR_INTERVAL_SECONDS",
    "LOCAL_EMULATOR_API_KEY",
    "N_REVIEWS",
    "SUBMIT_JOB_NAME",
    "TEMPLATE",
    "ReviewsPipeline",
    "build_pipeline",
    "together_from_env",
    "output_url_from_env",
    "reviews",
    "sensor_interval_from_env",
]

N_REVIEWS = 300
LOCAL_EMULATOR_API_KEY = "local-emulator"
"""The key given to the local emulator, which accepts any key: a real one is never sent there."""

TEMPLATE = RequestTemplate(
    model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
    prompt_column="review",
    system_prompt=(
        "Classify the sentiment of this product review as positive, negative or neutral. "
        "Answer with one word."
    ),
    body={"max_tokens": 5, "temperature": 0},
)

FACTS_TEMPLATE = RequestTemplate(
    model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
    messages=[
        {
            "role": "system",
            "content": "You read reviews of a {product}. Extract the sentiment, the product "
            "issue (null if none) and its severity from 0 (none) to 5, as JSON.",
        },
        {"role": "user", "content": "{review}"},
    ],
    output_schema={
        "type": "object",
        "title": "review_facts",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "product_issue": {"type": ["string", "null"]},
            "severity": {"type": "integer", "minimum": 0, "maximum": 5},
        },
        "required": ["sentiment", "product_issue", "severity"],
    },
    body={"max_tokens": 60, "temperature": 0},
)
"""The second pipeline: typed fields extracted from each review (structured answers)."""

SUBMIT_JOB_NAME = "reviews_submit_job"

# The emulator finishes a batch in seconds: poll it often. A real batch takes minutes to hours,
# where the library's default of a minute between ticks is plenty.
EMULATOR_SENSOR_INTERVAL_SECONDS = 5


@dg.asset(
    group_name="reviews",
    kinds={"python"},
    description=f"{N_REVIEWS} product reviews to classify (made offline, deterministic).",
)
# Annotated Any, not pa.Table: Dagster evaluates the annotation when the module loads, and
# importing pyarrow then would slow down every process that loads the code location.
def reviews() -> Any:
    """The prompts table (a pyarrow Table): ``review_id``, ``product``, ``rating``, ``review``."""
    import pyarrow as pa

    return pa.Table.from_pylist(make_reviews(N_REVIEWS))


class ReviewsTranslator(DagsterTogetherTranslator):
    """The pipeline's assets in the ``reviews`` group, beside the reviews themselves."""

    def get_submit_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
        return super().get_submit_spec(props).replace_attributes(group_name="reviews")

    def get_results_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
        return super().get_results_spec(props).replace_attributes(group_name="reviews")

    def get_final_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
        return super().get_final_spec(props).replace_attributes(group_name="reviews")


@dg.asset(
    group_name="reviews",
    kinds={"python"},
    description="Reviews per sentiment, in the latest submission's final table.",
    # The final table has one partition per submission (every follow-up and cached answer
    # folded in); counting the latest one counts each review once.
    ins={"reviews_final": dg.AssetIn(partition_mapping=dg.LastPartitionMapping())},
)
def sentiment_counts(reviews_final: Any) -> dict[str, int]:
    """Downstream of the final table: it arrives through the pipeline's loader (pyarrow)."""
    from collections import Counter

    answers = (str(a or "").strip().lower() for a in reviews_final.column("content").to_pylist())
    return dict(Counter(answers))


@dataclass(frozen=True)
class ReviewsPipeline:
    """The example's Dagster objects, for the code location and for the demo script.

    Attributes:
        defs: the code location's ``dg.Definitions`` (with the ``together`` resource).
        batches: what :func:`build_together_batch_defs` built (submit, results, sensor, layout).
        submit_job: ``reviews_submit_job``: materialises ``reviews`` and ``reviews_batches``.
        facts: ``review_facts_results``: sentiment, product issue and severity as typed
            columns, submitted and waited for in one run.
    """

    defs: dg.Definitions
    batches: TogetherBatchDefs
    submit_job: Any  # dg.define_asset_job's return type is not exported by Dagster
    facts: TogetherBatchDefs | None = None


def build_pipeline(
    *,
    together: TogetherResource,
    output_url: str,
    storage_options: Mapping[str, Any] | None = None,
    sensor_interval_seconds: int = 60,
) -> ReviewsPipeline:
    """Assemble the example around a resource and an output location (no environment read)."""
    batches = build_together_batch_defs(
        name="reviews",
        prompts=reviews,
        storage=BatchStorageLayout(output_url, storage_options),
        template=TEMPLATE,
        id_column="review_id",
        translator=ReviewsTranslator(),
        # RUNNING is the library's default too; spelled out because `dg dev` should just work.
        watch=SensorOptions(
            minimum_interval_seconds=sensor_interval_seconds,
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
    )
    facts = build_together_batch_defs(
        name="review_facts",
        prompts=reviews,
        storage=BatchStorageLayout(join(output_url, "facts"), storage_options),
        template=FACTS_TEMPLATE,
        id_column="review_id",
        translator=ReviewsTranslator(),
        watch=WaitOptions(),  # one run submits, waits and joins: no sensor needed
    )
    submit_job = dg.define_asset_job(
        SUBMIT_JOB_NAME,
        selection=dg.AssetSelection.assets(reviews, batches.submit_asset),
        description="Builds the reviews and submits them to Together as batches.",
    )
    daily_submit = dg.ScheduleDefinition(
        name="reviews_daily_submit",
        job=submit_job,
        cron_schedule="0 6 * * *",
        # Stopped until switched on in the UI: against the real API every run is billed. (The
        # same reviews every day are not re-billed: the submit reuses the identical batch.)
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Submits the day's reviews every morning at 06:00.",
    )
    defs = dg.Definitions.merge(
        batches.defs,
        facts.defs,
        dg.Definitions(
            assets=[reviews, sentiment_counts],
            jobs=[submit_job],
            schedules=[daily_submit],
            resources={"together": together},
        ),
    )
    return ReviewsPipeline(defs=defs, batches=batches, submit_job=submit_job, facts=facts)


def together_from_env(environ: Mapping[str, str] = os.environ) -> TogetherResource:
    """The resource for ``TOGETHER_BASE_URL``, or for the local emulator (started if needed)."""
    if environ.get("TOGETHER_BASE_URL"):
        # EnvVar: resolved in each process, never shown in the UI.
        return TogetherResource(
            api_key=dg.EnvVar("TOGETHER_API_KEY"), base_url=dg.EnvVar("TOGETHER_BASE_URL")
        )
    emulator = ensure_emulator()
    return TogetherResource(api_key=LOCAL_EMULATOR_API_KEY, base_url=emulator.base_url)


def output_url_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """``TOGETHER_OUTPUT_URL``, or ``.demo/data`` in the repository."""
    return environ.get("TOGETHER_OUTPUT_URL") or str(DEMO_DIR / "data")


def sensor_interval_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """Seconds between sensor ticks: 5 on the emulator (done in seconds), else 60."""
    return 60 if environ.get("TOGETHER_BASE_URL") else EMULATOR_SENSOR_INTERVAL_SECONDS
