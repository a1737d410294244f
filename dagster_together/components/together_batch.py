"""``TogetherBatchComponent``: :func:`~dagster_together.build_together_batch_defs` from a
``defs.yaml``, with the same options, its own resource bound directly to its assets, and
overridable ``execute_*`` methods.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import dagster as dg
from pydantic import Field, model_validator

from dagster_together.assets import BatchTargets, TogetherBatchSteps, build_together_batch_defs
from dagster_together.cost import CostOptions
from dagster_together.options import (
    DEFAULT_SENSOR_INTERVAL_SECONDS,
    BatchingOptions,
    RawResponses,
    ResubmitOptions,
    ResultsOptions,
    SensorOptions,
    WaitOptions,
)
from dagster_together.requests import MAX_REQUESTS_PER_BATCH
from dagster_together.resources import TogetherResource
from dagster_together.storage import BatchStorageLayout
from dagster_together.translator import DagsterTogetherTranslator, TogetherBatchProps

if TYPE_CHECKING:
    from dagster_together.requests import AudioTemplate, RequestTemplate

__all__ = [
    "AudioModel",
    "BatchingModel",
    "CostModel",
    "PriceModel",
    "ResubmitModel",
    "EnvVarRef",
    "RequestTemplateModel",
    "ResultsModel",
    "SensorModel",
    "TogetherBatchComponent",
    "TogetherBatchScaffolder",
    "TogetherResourceModel",
    "WaitModel",
]

DEFAULT_API_KEY_ENV_VAR = "TOGETHER_API_KEY"
# The scaffold's placeholders look like <...>: a defs.yaml still holding one names it on load.
_PLACEHOLDER = re.compile(r"<[^<>]+>")


class EnvVarRef(dg.Resolvable, dg.Model):
    """``{env: NAME}``: the value of environment variable ``NAME``, read where the resource is
    used (run, sensor tick) and shown in the Dagster UI by its name only, like ``dg.EnvVar``."""

    env: str = Field(description="Name of the environment variable.")


class TogetherResourceModel(dg.Resolvable, dg.Model):
    """The Together API settings of this component (its resource is bound to its assets)."""

    api_key: str | EnvVarRef | None = Field(
        default=None,
        description=(
            "Unset: {env: TOGETHER_API_KEY}. Prefer {env: NAME} to a string: a string is "
            "rendered when the definitions load and then shows in the Dagster UI."
        ),
    )
    base_url: str | None = Field(
        default=None,
        description="API base URL. Unset: TOGETHER_BASE_URL, else Together's public API.",
    )


class RequestTemplateModel(dg.Model):
    """How a row of the prompts table becomes a request body."""

    model: str = Field(description="The model every request uses.")
    prompt_column: str | None = Field(
        default=None, description="The column holding the user message / prompt."
    )
    system_prompt: str | None = Field(
        default=None, description="A system message put before the user message (chat only)."
    )
    messages: list[dict[str, str]] | None = Field(
        default=None,
        description="Messages ({role, content}) whose text has {column} placeholders; instead "
        "of prompt_column.",
    )
    image_column: str | None = Field(
        default=None, description="A column of image URLs (or paths) sent with each request."
    )
    inline_images: bool = Field(
        default=False, description="Send local or s3:// images as data URLs."
    )
    output_schema: dict[str, Any] | None = Field(
        default=None,
        description="A JSON Schema of the answer: sent as response_format, its fields land as "
        "typed columns.",
    )
    body: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra body fields for every request, e.g. max_tokens, temperature.",
    )


class AudioModel(dg.Model):
    """An audio batch: one transcription (or translation) per row's audio URL."""

    model: str = Field(description="The speech model, e.g. openai/whisper-large-v3.")
    audio_column: str = Field(description="The column of audio URLs (public http(s)).")
    language: str | None = Field(default=None, description="ISO 639-1 code for every row.")
    language_column: str | None = Field(
        default=None, description="A column giving each row's language instead."
    )
    prompt: str | None = Field(default=None, description="Text to bias decoding.")
    response_format: str | None = Field(
        default=None, description="json, or verbose_json for language and duration."
    )
    body: dict[str, Any] = Field(default_factory=dict, description="Other body fields.")


class BatchingModel(dg.Resolvable, dg.Model):
    """Endpoint, completion window and batch size limits."""

    endpoint: str = Field(
        default="/v1/chat/completions",
        description="Endpoint of every request; with a template /v1/chat/completions or "
        "/v1/completions.",
    )
    completion_window: str = Field(default="24h", description="The batch completion window.")
    max_requests_per_batch: int = Field(
        default=MAX_REQUESTS_PER_BATCH, description="Requests per batch, at most 50,000."
    )
    max_bytes_per_batch: int | None = Field(
        default=None, description="Bytes per batch input file; unset for the API's 100 MB."
    )


class ResultsModel(dg.Resolvable, dg.Model):
    """The checks on every results table."""

    max_error_rate: float = Field(
        default=0.05, description="The error_rate check fails above this share without answer."
    )
    error_rate_severity: Literal["WARN", "ERROR"] = Field(
        default="WARN", description="Severity of a failed error_rate check."
    )
    pool: str | None = Field(
        default=None,
        description="Dagster concurrency pool of the results asset; unset: "
        "together_results_{name}. Give it a limit to cap concurrent results runs.",
    )
    raw_responses: RawResponses = Field(
        default="failed",
        description="Which rows keep their raw output or error line in the response column: "
        "those that did not succeed, all, or none.",
    )


class PriceModel(dg.Resolvable, dg.Model):
    """Dollars per million tokens of one model, before the batch discount."""

    input: float = Field(description="Per million input tokens.")
    output: float = Field(description="Per million output tokens.")
    batch_discount: float = Field(default=0.5, description="Share off for batch jobs.")


class CostModel(dg.Resolvable, dg.Model):
    """Prices and a spending limit."""

    max_estimated_cost: float | None = Field(
        default=None,
        description="Refuse a submission estimated above this many dollars, before any upload.",
    )
    prices: dict[str, PriceModel] = Field(
        default_factory=dict,
        description="Prices added to (or replacing) the defaults, by model name.",
    )


class ResubmitModel(dg.Resolvable, dg.Model):
    """Follow-up batches and the answer store."""

    max_attempts: int = Field(default=3, description="Tries per request (1: no follow-ups).")
    use_answer_cache: bool = Field(
        default=True, description="Send only the requests the answer store does not answer."
    )
    fatal_error_codes: list[str] | None = Field(
        default=None, description="Error codes never retried; unset: the library's list."
    )


class SensorModel(dg.Resolvable, dg.Model):
    """The batch sensor (used unless ``wait`` is set)."""

    minimum_interval_seconds: int = Field(
        default=DEFAULT_SENSOR_INTERVAL_SECONDS, description="Seconds between ticks."
    )
    default_status: Literal["RUNNING", "STOPPED"] = Field(
        default="RUNNING", description="Whether the sensor runs as soon as it is deployed."
    )


class WaitModel(dg.Resolvable, dg.Model):
    """Submit and wait inside one run instead of a sensor (no daemon needed)."""

    poll_interval: float | None = Field(
        default=None, description="Seconds between status checks; unset: 1 s growing to 30 s."
    )
    poll_timeout: float | None = Field(
        default=None, description="Fail after this many seconds (batches left running)."
    )
    cancel_on_termination: bool = Field(
        default=True, description="Cancel running batches when the run is terminated."
    )


def _resolve_template(
    context: dg.ResolutionContext, model: RequestTemplateModel | None
) -> RequestTemplateModel | None:
    """The template with its ``{{ ... }}`` values rendered (its ``model`` field keeps it from
    being a Resolvable itself)."""
    if model is None:
        return None
    return RequestTemplateModel.model_validate(context.resolve_value(model.model_dump()))


def _resolve_audio(context: dg.ResolutionContext, model: AudioModel | None) -> AudioModel | None:
    """The audio settings with their ``{{ ... }}`` values rendered (a ``model`` field, as in
    the template, keeps them from being a Resolvable)."""
    if model is None:
        return None
    return AudioModel.model_validate(context.resolve_value(model.model_dump()))


def _resolve_asset_key(context: dg.ResolutionContext, value: str) -> dg.AssetKey:
    return dg.AssetKey.from_user_string(context.resolve_value(value, as_type=str))


class TogetherBatchScaffolder(dg.Scaffolder):
    """``dg scaffold defs dagster_together.TogetherBatchComponent <name>``: a ``defs.yaml``
    whose every assumption is a commented line to edit."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = request.target_path.name
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(scaffold_yaml(name))


def scaffold_yaml(name: str) -> str:
    """The ``defs.yaml`` that ``dg scaffold defs`` writes for a component called ``name``."""
    return f"""\
type: dagster_together.TogetherBatchComponent

attributes:
  # Names the assets {name}_batches and {name}_results, the job and the sensor.
  name: {name}
  # EDIT: the asset key of your prompts table (a pyarrow Table, a pandas DataFrame, or the
  # location of a Parquet/JSONL file), e.g. reviews or raw/reviews.
  prompts: <your prompts asset>
  # Where request copies, Together's answers and the results Parquet go: a local directory
  # or an fsspec URL such as s3://bucket/prefix.
  storage_url: "{{{{ context.project_root }}}}/data/together/{name}"
  template:
    # EDIT: the model, and the column of your table holding each prompt.
    model: meta-llama/Llama-3.3-70B-Instruct-Turbo
    prompt_column: <your prompt column>
    # system_prompt: "Answer in one word."
    body: {{max_tokens: 256}}
  # EDIT: the column that identifies each row (it becomes custom_id).
  id_column: <your id column>
  # The API key, read from this environment variable where the pipeline runs.
  resource:
    api_key: {{env: {DEFAULT_API_KEY_ENV_VAR}}}
  # Optional: wait inside one run instead of a sensor (no daemon needed).
  # wait: {{poll_timeout: 3600, cancel_on_termination: true}}
"""


@dg.scaffold_with(TogetherBatchScaffolder)
class TogetherBatchComponent(dg.Component, dg.Model, dg.Resolvable):
    """Runs a prompts table through Together AI's Batch API.

    Builds a submit asset {name}_batches, a sensor that launches one results run per finished
    batch, and {name}_results (Parquet, one partition per batch, with completeness and
    error_rate checks). With wait set, one asset {name}_results submits and waits in its run.
    The same pipeline as build_together_batch_defs in Python; this component's Together
    settings (resource) are bound to its own assets, so components with different keys or
    URLs live side by side. Subclass it and override execute_submit, execute_results or
    execute_submit_and_wait to wrap a step.
    """

    name: Annotated[
        str,
        dg.Resolver.default(
            description="Names the assets {name}_batches and {name}_results, the job and sensor.",
            examples=["reviews"],
        ),
    ]
    prompts: Annotated[
        dg.AssetKey,
        dg.Resolver(
            _resolve_asset_key,
            model_field_type=str,
            description=(
                "Asset key of the prompts table ('a/b' for a multi-part key): custom_id and "
                "body columns, or any columns and a template."
            ),
            examples=["reviews", "raw/reviews"],
        ),
    ]
    storage_url: Annotated[
        str,
        dg.Resolver.default(
            description="Local directory or fsspec URL for request copies, answers and results.",
            examples=["s3://my-bucket/together/reviews", "{{ context.project_root }}/data"],
        ),
    ]
    storage_options: Annotated[
        dict[str, Any] | None,
        dg.Resolver.default(description="fsspec options for storage_url (credentials, endpoint)."),
    ] = None
    template: Annotated[
        RequestTemplateModel | None,
        dg.Resolver(
            _resolve_template,
            model_field_type=RequestTemplateModel | None,
            description="Builds each request body from a column of the table.",
        ),
    ] = None
    audio: Annotated[
        AudioModel | None,
        dg.Resolver(
            _resolve_audio,
            model_field_type=AudioModel | None,
            description="Instead of template: transcribe (or translate) a column of audio URLs; "
            "batching.endpoint is /v1/audio/transcriptions unless set to /translations.",
        ),
    ] = None
    id_column: Annotated[
        str | None,
        dg.Resolver.default(description="Column whose values become custom_id (with template)."),
    ] = None
    batching: Annotated[
        BatchingModel, dg.Resolver.default(description="Endpoint and batch size limits.")
    ] = Field(default_factory=BatchingModel)
    results: Annotated[
        ResultsModel, dg.Resolver.default(description="Checks on the results tables.")
    ] = Field(default_factory=ResultsModel)
    cost: Annotated[CostModel, dg.Resolver.default(description="Prices and a spending limit.")] = (
        Field(default_factory=CostModel)
    )
    resubmit: Annotated[
        ResubmitModel, dg.Resolver.default(description="Follow-up batches and the answer store.")
    ] = Field(default_factory=ResubmitModel)
    sensor: Annotated[
        SensorModel, dg.Resolver.default(description="The batch sensor (unless wait is set).")
    ] = Field(default_factory=SensorModel)
    wait: Annotated[
        WaitModel | None,
        dg.Resolver.default(description="Set to submit and wait inside one run (no sensor)."),
    ] = None
    group_name: Annotated[
        str | None, dg.Resolver.default(description="Asset group of the assets.")
    ] = None
    resource: Annotated[
        TogetherResourceModel,
        dg.Resolver.default(description="The Together API settings of this component."),
    ] = Field(default_factory=TogetherResourceModel)

    @model_validator(mode="after")
    def _no_placeholder_left(self) -> TogetherBatchComponent:
        for field_name, value in (
            ("prompts", self.prompts.to_user_string()),
            ("id_column", self.id_column),
            ("template.prompt_column", self.template.prompt_column if self.template else None),
            ("template.model", self.template.model if self.template else None),
        ):
            if value and _PLACEHOLDER.search(value):
                raise ValueError(
                    f"{field_name} is still the scaffold's placeholder {value!r}: set it in "
                    "defs.yaml (see the EDIT comments)."
                )
        return self

    # -- what the assets run: override to wrap a step ----------------------------------------
    def execute_submit(
        self,
        context: dg.AssetExecutionContext,
        together: TogetherResource,
        prompts: Any,
        targets: BatchTargets,
    ) -> dg.MaterializeResult:
        """The body of ``{name}_batches``."""
        return self._steps().execute_submit(context, together, prompts, targets)

    def execute_results(
        self, context: dg.AssetExecutionContext, together: TogetherResource, targets: BatchTargets
    ) -> dg.MaterializeResult:
        """The body of ``{name}_results`` (one partition)."""
        return self._steps().execute_results(context, together, targets)

    def execute_submit_and_wait(
        self,
        context: dg.AssetExecutionContext,
        together: TogetherResource,
        prompts: Any,
        wait: WaitOptions,
    ) -> dg.MaterializeResult:
        """The body of ``{name}_results`` when ``wait`` is set."""
        return self._steps().execute_submit_and_wait(context, together, prompts, wait)

    # -- building ------------------------------------------------------------------------------
    def get_resource(self) -> TogetherResource:
        """The resource bound to this component's assets and sensor."""
        model = self.resource
        api_key: str | dg.EnvVar
        if isinstance(model.api_key, EnvVarRef):
            api_key = dg.EnvVar(model.api_key.env)
        else:
            api_key = model.api_key or dg.EnvVar(DEFAULT_API_KEY_ENV_VAR)
        return TogetherResource(api_key=api_key, base_url=model.base_url)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        watch: SensorOptions | WaitOptions
        if self.wait is not None:
            watch = WaitOptions(**self.wait.model_dump())
        else:
            watch = SensorOptions(
                minimum_interval_seconds=self.sensor.minimum_interval_seconds,
                default_status=dg.DefaultSensorStatus(self.sensor.default_status),
            )
        return build_together_batch_defs(
            name=self.name,
            prompts=self.prompts,
            storage=self._layout(),
            template=self._template(),
            id_column=self.id_column,
            batching=self._batching(),
            results=self._results(),
            cost=self._cost(),
            resubmit=self._resubmit(),
            watch=watch,
            translator=_GroupTranslator(self.group_name),
            together=self.get_resource(),
            steps=self,
        ).defs

    def _steps(self) -> TogetherBatchSteps:
        return TogetherBatchSteps(
            layout=self._layout(),
            template=self._template(),
            id_column=self.id_column,
            batching=self._batching(),
            results=self._results(),
            cost=self._cost(),
            resubmit=self._resubmit(),
        )

    def _layout(self) -> BatchStorageLayout:
        return BatchStorageLayout(self.storage_url, self.storage_options)

    def _template(self) -> RequestTemplate | AudioTemplate | None:
        from dagster_together.requests import AudioTemplate, RequestTemplate

        if self.audio is not None:
            if self.template is not None:
                raise ValueError("Set template or audio, not both.")
            endpoint = self.batching.endpoint
            if not endpoint.startswith("/v1/audio/"):
                endpoint = "/v1/audio/transcriptions"
            return AudioTemplate(endpoint=endpoint, **self.audio.model_dump())
        if self.template is None:
            return None
        return RequestTemplate(
            model=self.template.model,
            prompt_column=self.template.prompt_column,
            system_prompt=self.template.system_prompt,
            messages=self.template.messages,
            image_column=self.template.image_column,
            inline_images=self.template.inline_images,
            output_schema=self.template.output_schema,
            endpoint=self.batching.endpoint,
            body=self.template.body,
        )

    def _batching(self) -> BatchingOptions:
        options = BatchingOptions(**self.batching.model_dump())
        if self.audio is not None and not (options.endpoint or "").startswith("/v1/audio/"):
            return replace(options, endpoint="/v1/audio/transcriptions")
        return options

    def _resubmit(self) -> ResubmitOptions:
        model = self.resubmit
        if model.fatal_error_codes is None:
            return ResubmitOptions(
                max_attempts=model.max_attempts, use_answer_cache=model.use_answer_cache
            )
        return ResubmitOptions(
            max_attempts=model.max_attempts,
            use_answer_cache=model.use_answer_cache,
            fatal_error_codes=frozenset(model.fatal_error_codes),
        )

    def _cost(self) -> CostOptions:
        from dagster_together.cost import DEFAULT_PRICES, PriceTable

        prices = PriceTable.from_dict({m: p.model_dump() for m, p in self.cost.prices.items()})
        return CostOptions(
            prices=DEFAULT_PRICES.with_prices(prices.prices),
            max_estimated_cost=self.cost.max_estimated_cost,
        )

    def _results(self) -> ResultsOptions:
        return ResultsOptions(
            max_error_rate=self.results.max_error_rate,
            error_rate_severity=dg.AssetCheckSeverity(self.results.error_rate_severity),
            pool=self.results.pool,
            raw_responses=self.results.raw_responses,
        )


class _GroupTranslator(DagsterTogetherTranslator):
    """The default specs, in the component's asset group."""

    def __init__(self, group_name: str | None) -> None:
        self._group_name = group_name

    def get_submit_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
        return super().get_submit_spec(props).replace_attributes(group_name=self._group_name)

    def get_results_spec(self, props: TogetherBatchProps) -> dg.AssetSpec:
        return super().get_results_spec(props).replace_attributes(group_name=self._group_name)
