"""Cost known before and after: an estimate while the requests are built, a spending limit that
refuses before anything is sent, the real cost from usage on the results, and price tables that
say clearly what is wrong with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from dagster_together import CostOptions, TogetherResource, build_together_batch_defs
from dagster_together.cost import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    DEFAULT_PRICES,
    BudgetExceededError,
    CostEstimate,
    ModelPrice,
    PriceTable,
)
from dagster_together.requests import RequestTemplate
from tests.helpers import wait_terminal

MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
TEMPLATE = RequestTemplate(model=MODEL, prompt_column="text", body={"max_tokens": 100})


@dg.asset(name="prompts")
def prompts() -> pa.Table:
    return pa.table({"id": [f"p{i}" for i in range(10)], "text": ["x" * 400] * 10})


def _bundle(tmp_path: Path, cost: CostOptions) -> Any:
    return build_together_batch_defs(
        name="docs",
        prompts=prompts,
        storage=str(tmp_path / "store"),
        template=TEMPLATE,
        id_column="id",
        cost=cost,
    )


def test_estimate_counts_text_and_bounds_output_by_max_tokens() -> None:
    estimate = CostEstimate()
    requests = [
        {
            "custom_id": "a",
            "body": {
                "model": "m",
                "messages": [{"role": "user", "content": "x" * 40}],
                "max_tokens": 7,
            },
        },
        {"custom_id": "b", "body": {"model": "m", "prompt": "y" * 8}},
    ]
    assert list(estimate.count(requests)) == requests  # passed through unchanged
    assert estimate.input_tokens == {"m": (10 + 4) + 2}
    assert estimate.output_tokens == {"m": 7 + DEFAULT_MAX_OUTPUT_TOKENS}
    cost, unknown = estimate.cost(PriceTable({"m": ModelPrice(input=1.0, output=2.0)}))
    assert cost == pytest.approx((16 * 1.0 + 1031 * 2.0) / 1e6 * 0.5)
    assert unknown == []
    assert estimate.cost(PriceTable({})) == (0.0, ["m"])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"m": {"input": -1, "output": 1}}, "input must be a price >= 0"),
        ({"m": {"input": 1, "output": 1, "batch_discount": 2}}, "batch_discount must be between"),
        ({"m": {"input": 1}}, "needs input and output"),
        ({"m": {"input": 1, "output": 1, "currency": "EUR"}}, "needs input and output"),
        ({"m": {"input": "cheap", "output": 1}}, "input must be a price"),
    ],
)
def test_a_bad_price_table_says_what_is_wrong(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        PriceTable.from_dict(table)
    assert "'m'" in str(raised.value)  # names the model


def test_defaults_have_a_date_and_can_be_overridden() -> None:
    assert DEFAULT_PRICES.taken_on and DEFAULT_PRICES.get(MODEL) is not None
    cheaper = DEFAULT_PRICES.with_prices({MODEL: ModelPrice(input=0.1, output=0.1)})
    assert cheaper.get(MODEL) == ModelPrice(input=0.1, output=0.1)
    assert DEFAULT_PRICES.get(MODEL) != cheaper.get(MODEL)


def test_over_budget_is_refused_before_any_request(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    bundle = _bundle(tmp_path, CostOptions(max_estimated_cost=0.0001))
    result = dg.materialize(
        [prompts, bundle.submit_asset],
        instance=instance,
        resources={"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = result.get_step_failure_events()
    message = failure.event_specific_data.error.message
    assert "The estimated cost of these 10 requests is $0.00" in message
    assert "over max_estimated_cost=$0.00" in message and "Raise max_estimated_cost" in message
    assert emulator.requests == []  # zero requests: not even the upload


def test_an_unpriced_model_under_a_limit_is_refused(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    bundle = _bundle(tmp_path, CostOptions(prices=PriceTable({}), max_estimated_cost=100.0))
    result = dg.materialize(
        [prompts, bundle.submit_asset],
        instance=instance,
        resources={"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)},
        raise_on_error=False,
    )
    assert not result.success and emulator.requests == []
    with pytest.raises(BudgetExceededError, match="no price for"):
        CostEstimate(input_tokens={MODEL: 1}).check_budget(
            CostOptions(prices=PriceTable({}), max_estimated_cost=1.0)
        )


def test_estimate_before_and_cost_after(
    emulator: Any, api_key: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    bundle = _bundle(tmp_path, CostOptions(max_estimated_cost=1.0))
    res = {"together": TogetherResource(api_key=api_key, base_url=emulator.base_url)}
    submitted = dg.materialize([prompts, bundle.submit_asset], instance=instance, resources=res)
    [mat] = submitted.asset_materializations_for_node("docs_batches")
    price = DEFAULT_PRICES.get(MODEL)
    assert price is not None
    # 10 prompts of 400 characters: 100 tokens + 4 for the message each; output <= 100 each.
    assert mat.metadata["together/estimated_input_tokens"].value == 1040
    assert mat.metadata["together/max_output_tokens"].value == 1000
    expected = price.cost(1040, 1000)
    assert mat.metadata["together/estimated_cost_usd"].value == pytest.approx(expected, abs=1e-6)

    [batch_id] = mat.metadata["together/batch_ids"].value
    wait_terminal(emulator, [batch_id])
    collected = dg.materialize(
        [bundle.results_asset], partition_key=batch_id, instance=instance, resources=res
    )
    by_key = {
        m.asset_key.to_user_string(): m
        for m in collected.asset_materializations_for_node("docs_results")
    }
    result, final = by_key["docs_results"], by_key["docs_final"]
    assert final.metadata["together/cost_usd"].value == result.metadata["together/cost_usd"].value
    md = result.metadata
    real = price.cost(md["together/prompt_tokens"].value, md["together/completion_tokens"].value)
    assert md["together/cost_usd"].value == pytest.approx(real, abs=1e-6)
    assert md[f"together/{MODEL}/cost_usd"].value == md["together/cost_usd"].value
