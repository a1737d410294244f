"""What a submission costs: a price table, an estimate before anything is uploaded (input tokens
from the text, output bounded by ``max_tokens``), the real cost from usage after, and a budget.

Plain Python, no Dagster: the submit estimates while it builds the request files (no extra
pass), refuses over ``max_estimated_cost`` before the first upload, and the results report the
cost of what Together billed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "DEFAULT_PRICES",
    "BudgetExceededError",
    "CostEstimate",
    "CostOptions",
    "ModelPrice",
    "PriceTable",
    "cost_of_usage",
]

DEFAULT_MAX_OUTPUT_TOKENS = 1024
"""The output assumed for a request without ``max_tokens`` (set it to bound the estimate)."""
_CHARS_PER_TOKEN = 4  # English text averages about four characters per token
_TOKENS_PER_MESSAGE = 4  # the chat template's role markers around each message


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens, before the batch discount.

    Attributes:
        input: per million input (prompt) tokens.
        output: per million output (completion) tokens.
        batch_discount: the share taken off for batch jobs (0.5: half price; 0 for a model
            Together does not discount).
    """

    input: float
    output: float
    batch_discount: float = 0.5

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a price >= 0 per million tokens, got {value!r}.")
        if not 0.0 <= self.batch_discount <= 1.0:
            raise ValueError(
                f"batch_discount must be between 0 and 1 (0.5 = half price), got "
                f"{self.batch_discount!r}."
            )

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """Dollars for these tokens in a batch."""
        full = (input_tokens * self.input + output_tokens * self.output) / 1_000_000
        return full * (1.0 - self.batch_discount)


@dataclass(frozen=True)
class PriceTable:
    """Prices per model; ``with_prices`` overrides or adds models.

    Attributes:
        prices: model name -> :class:`ModelPrice`.
        taken_on: the date the prices were read from Together's public pricing.
    """

    prices: Mapping[str, ModelPrice]
    taken_on: str = ""

    def __post_init__(self) -> None:
        for model, price in self.prices.items():
            if not isinstance(model, str) or not model:
                raise ValueError(f"Price table: model names must be non-empty strings: {model!r}.")
            if not isinstance(price, ModelPrice):
                raise TypeError(
                    f"Price table: the price of {model!r} must be a ModelPrice(input=..., "
                    f"output=..., batch_discount=...), got {type(price).__name__}."
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]], taken_on: str = "") -> PriceTable:
        """``{"model": {"input": 0.88, "output": 0.88, "batch_discount": 0.5}}`` (YAML, JSON)."""
        prices = {}
        for model, fields in data.items():
            unknown = set(fields) - {"input", "output", "batch_discount"}
            if unknown or not {"input", "output"} <= set(fields):
                raise ValueError(
                    f"Price table: {model!r} needs input and output (and may set "
                    f"batch_discount), got {sorted(fields)}."
                )
            try:
                prices[model] = ModelPrice(**fields)
            except ValueError as exc:
                raise ValueError(f"Price table: {model!r}: {exc}") from None
        return cls(prices, taken_on)

    def with_prices(self, prices: Mapping[str, ModelPrice]) -> PriceTable:
        """This table with ``prices`` added or replacing the same models."""
        return PriceTable({**self.prices, **prices}, self.taken_on)

    def get(self, model: str) -> ModelPrice | None:
        """The price of ``model``, or None when the table does not know it."""
        return self.prices.get(model)


# Read from together.ai/pricing and docs.together.ai/docs/serverless/models on 2026-12-06.
# Batch jobs of the models Together lists get up to 50% off; others bill at standard rates.
DEFAULT_PRICES = PriceTable(
    {
        "meta-llama/Llama-3.3-70B-Instruct-Turbo": ModelPrice(input=0.88, output=0.88),
        "openai/gpt-oss-120b": ModelPrice(input=0.15, output=0.60),
        "Qwen/Qwen3.5-9B": ModelPrice(input=0.17, output=0.25),
    },
    taken_on="2026-12-06",
)
"""Prices for the models in this project's examples; override with ``PriceTable.with_prices``."""


@dataclass(frozen=True)
class CostOptions:
    """Prices and a spending limit.

    Attributes:
        prices: the price table (:data:`DEFAULT_PRICES` by default).
        max_estimated_cost: refuse a submission whose estimate is above this many dollars,
            before anything is uploaded. None: no limit.
    """

    prices: PriceTable = DEFAULT_PRICES
    max_estimated_cost: float | None = None

    def __post_init__(self) -> None:
        if self.max_estimated_cost is not None and self.max_estimated_cost < 0:
            raise ValueError(
                f"max_estimated_cost must be >= 0 dollars, got {self.max_estimated_cost!r}."
            )


class BudgetExceededError(ValueError):
    """The estimate of a submission is over ``max_estimated_cost``; nothing was sent."""


@dataclass
class CostEstimate:
    """Tokens counted per model as requests go by (:meth:`add`, or :meth:`count` over an
    iterable), priced by :meth:`cost`.

    Input tokens are estimated from the text (about four characters per token, plus a few per
    message); output tokens are bounded by each request's ``max_tokens`` (else
    :data:`DEFAULT_MAX_OUTPUT_TOKENS`).
    """

    input_tokens: dict[str, int] = field(default_factory=dict)
    output_tokens: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)

    def add(self, request: Mapping[str, Any]) -> None:
        """Count one request (``{"custom_id", "body"}``)."""
        body = request.get("body")
        if isinstance(body, Mapping):
            model = str(body.get("model", ""))
            self.requests[model] = self.requests.get(model, 0) + 1
            self.input_tokens[model] = self.input_tokens.get(model, 0) + _input_tokens(body)
            self.output_tokens[model] = self.output_tokens.get(model, 0) + _output_bound(body)

    def count(self, requests: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """Pass ``requests`` through, counting each one."""
        for request in requests:
            self.add(request)
            yield request

    def cost(self, prices: PriceTable) -> tuple[float, list[str]]:
        """Dollars for the models the table prices, and the models it does not know."""
        total, unknown = 0.0, []
        for model, n_in in sorted(self.input_tokens.items()):
            price = prices.get(model)
            if price is None:
                unknown.append(model)
                continue
            total += price.cost(n_in, self.output_tokens.get(model, 0))
        return total, unknown

    def check_budget(self, options: CostOptions) -> float:
        """The estimated cost; raises :class:`BudgetExceededError` over the limit."""
        cost, unknown = self.cost(options.prices)
        limit = options.max_estimated_cost
        if limit is not None and unknown:
            raise BudgetExceededError(
                f"A spending limit of ${limit:,.2f} is set, but the price table has no price for "
                f"{', '.join(unknown)}: nothing was sent to Together. Add them with "
                "CostOptions(prices=DEFAULT_PRICES.with_prices({...}))."
            )
        if limit is not None and cost > limit:
            n = sum(self.requests.values())
            raise BudgetExceededError(
                f"The estimated cost of these {n:,} requests is ${cost:,.2f}, over "
                f"max_estimated_cost=${limit:,.2f}: nothing was sent to Together. Raise "
                "max_estimated_cost, lower max_tokens, or submit fewer prompts."
            )
        return cost


def cost_of_usage(
    tokens_by_model: Mapping[str, Mapping[str, int]], prices: PriceTable
) -> tuple[dict[str, float], list[str]]:
    """Dollars per model for the usage Together reported, and the models without a price."""
    costs, unknown = {}, []
    for model, usage in sorted(tokens_by_model.items()):
        price = prices.get(model)
        if price is None:
            unknown.append(model)
            continue
        costs[model] = price.cost(
            int(usage.get("prompt_tokens", 0) or 0), int(usage.get("completion_tokens", 0) or 0)
        )
    return costs, unknown


def _input_tokens(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_text_length(m.get("content")) for m in messages if isinstance(m, Mapping))
        return math.ceil(chars / _CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(messages)
    return math.ceil(_text_length(body.get("prompt")) / _CHARS_PER_TOKEN)


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: count the text ones
        return sum(len(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return 0


def _output_bound(body: Mapping[str, Any]) -> int:
    value = body.get("max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return DEFAULT_MAX_OUTPUT_TOKENS
