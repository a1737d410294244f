"""Structured answers through the Dagster pipeline: a template with an output schema sends it as
``response_format``, every batch's results carry the schema's fields as typed columns, an answer
that does not match is ``invalid_output`` (the asset does not fail), and the
``invalid_output_rate`` check reports the share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from dagster_together import TogetherResource, WaitOptions, build_together_batch_defs
from dagster_together.requests import RequestTemplate

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "severity": {"type": "integer"},
        "product_issue": {"type": ["string", "null"]},
    },
    "required": ["sentiment", "severity", "product_issue"],
}


def test_typed_columns_and_the_invalid_output_check(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    @dg.asset(name="reviews")
    def reviews() -> pa.Table:
        texts = ["Great lamp.", "Broke on day two.", "EMULATE_INVALID_JSON please", "Fine."]
        return pa.table({"review_id": ["a", "b", "c", "d"], "text": texts})

    template = RequestTemplate(
        model="m",
        messages=[
            {"role": "system", "content": "Extract the fields as JSON."},
            {"role": "user", "content": "{text}"},
        ],
        output_schema=SCHEMA,
    )
    bundle = build_together_batch_defs(
        name="extract",
        prompts=reviews,
        storage=str(tmp_path / "store"),
        template=template,
        id_column="review_id",
        watch=WaitOptions(poll_interval=0.05),
    )
    assert {c.name for c in bundle.results_asset.check_specs} == {
        "completeness",
        "error_rate",
        "invalid_output_rate",
    }
    res = {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)}
    result = dg.materialize([reviews, bundle.results_asset], instance=instance, resources=res)
    assert result.success  # an invalid answer never fails the asset
    [mat] = result.asset_materializations_for_node("extract_results")
    table = pq.read_table(mat.metadata["dagster/uri"].value)
    assert table.schema.field("severity").type == pa.int64()
    assert table.schema.field("sentiment").type == pa.string()
    rows = {r["review_id"]: r for r in table.to_pylist()}
    assert rows["c"]["status"] == "invalid_output" and rows["c"]["content"]
    assert rows["a"]["status"] == "succeeded"
    assert rows["a"]["sentiment"] in ("positive", "negative", "neutral")
    assert isinstance(rows["a"]["severity"], int)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["invalid_output_rate"].passed  # 1 of 4 > 5%
    assert mat.metadata["together/invalid_output_rate"].value == 0.25
