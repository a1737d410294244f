"""``TogetherBatchComponent``: :func:`~dagster_together.together_batch_assets` from a ``defs.yaml``.

The component is thin on purpose: it maps YAML attributes onto the factory's arguments and, unless
told not to, adds a :class:`~dagster_together.TogetherResource` under ``resource_key``. Everything
the pipeline does (submit, sensor, results, checks) is the factory's; see its docstring.
"""

from typing import Annotated, Any

import dagster as dg
from pydantic import Field, model_validator

from dagster_together.assets import together_batch_assets
from dagster_together.resources import TogetherResource
from dagster_together.sensors import DEFAULT_SENSOR_INTERVAL_SECONDS

__all__ = [
    "EnvVarRef",
    "RequestTemplateModel",
    "TogetherBatchComponent",
    "TogetherBatchScaffolder",
    "TogetherResourceModel",
]

DEFAULT_API_KEY_ENV_VAR = "TOGETHER_API_KEY"


class EnvVarRef(dg.Model):
    """``{env: NAME}``: the value of environment variable ``NAME``, read where the resource is
    used (run, sensor tick) and shown in the Dagster UI by its name only, like ``dg.EnvVar``."""

    env: str = Field(description="Name of the environment variable.")


class TogetherResourceModel(dg.Model):
    """YAML settings of the :class:`~dagster_together.TogetherResource` the component adds."""

    api_key: str | EnvVarRef | None = Field(
        default=None,
        description=(
            "Unset: {env: TOGETHER_API_KEY}. Prefer {env: NAME} to a string: a string, "
            "'{{ env.NAME }}' included, is rendered when the definitions load and then shows "
            "in the Dagster UI's resource config."
        ),
    )
    base_url: str | None = Field(
        default=None,
        description="API base URL. Unset: TOGETHER_BASE_URL, else https://api.together.xyz/v1.",
    )


# One resource object per distinct settings: Dagster merges the definitions of sibling
# components only when a resource key maps to the *same* object, so two components with the same
# settings must share it.
_SHARED_RESOURCES: dict[tuple[Any, ...], TogetherResource] = {}


def _shared_resource(api_key: str | dg.EnvVar, base_url: str | None) -> TogetherResource:
    if isinstance(api_key, dg.EnvVar):
        key: tuple[Any, ...] = ("env", api_key.env_var_name, base_url)
    else:
        key = ("literal", api_key, base_url)
    resource = _SHARED_RESOURCES.get(key)
    if resource is None:
        resource = _SHARED_RESOURCES[key] = TogetherResource(api_key=api_key, base_url=base_url)
    return resource


def _default_resource() -> TogetherResource:
    return _shared_resource(dg.EnvVar(DEFAULT_API_KEY_ENV_VAR), None)


def _resolve_resource(
    context: dg.ResolutionContext, model: TogetherResourceModel | str
) -> TogetherResource:
    if isinstance(model, str):  # "{{ ... }}": a TogetherResource from the template scope
        value = context.resolve_value(model)
        if not isinstance(value, TogetherResource):
            raise ValueError(f"resource: expected a TogetherResource, got {type(value).__name__}.")
        return value
    api_key: str | dg.EnvVar | None
    if isinstance(model.api_key, EnvVarRef):
        api_key = dg.EnvVar(context.at_path("api_key").resolve_value(model.api_key.env))
    else:
        api_key = context.at_path("api_key").resolve_value(model.api_key)
    base_url = context.at_path("base_url").resolve_value(model.base_url)
    return _shared_resource(api_key or dg.EnvVar(DEFAULT_API_KEY_ENV_VAR), base_url or None)


class RequestTemplateModel(dg.Model):
    """How a row of the prompts table becomes a request body: the YAML form of
    :class:`~dagster_together.RequestTemplate` (whose ``endpoint`` is the component's)."""

    model: str = Field(description="The model every request uses.")
    prompt_column: str = Field(description="The column holding the user message / prompt.")
    system_prompt: str | None = Field(
        default=None, description="A system message put before the user message (chat only)."
    )
    body: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra body fields for every request, e.g. max_tokens, temperature.",
    )


def _resolve_template(
    context: dg.ResolutionContext, model: RequestTemplateModel | None
) -> RequestTemplateModel | None:
    """The template with its ``{{ ... }}`` values rendered."""
    if model is None:
        return None
    return RequestTemplateModel.model_validate(context.resolve_value(model.model_dump()))


def _resolve_asset_key(context: dg.ResolutionContext, value: str) -> dg.AssetKey:
    return dg.AssetKey.from_user_string(context.resolve_value(value, as_type=str))


class TogetherBatchScaffolder(dg.Scaffolder):
    """``dg scaffold defs dagster_together.TogetherBatchComponent <name>``: a starter defs.yaml
    that loads once ``prompts`` names a table asset of the project."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = request.target_path.name
        dg.scaffold_component(
            request,
            {
                "name": name,
                "prompts": "prompts",
                "storage_url": f"{{{{ context.project_root }}}}/data/together/{name}",
                "template": {
                    "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
                    "prompt_column": "text",
                    "body": {"max_tokens": 256},
                },
                "id_column": "id",
                "resource": {"api_key": {"env": DEFAULT_API_KEY_ENV_VAR}},
            },
        )


@dg.scaffold_with(TogetherBatchScaffolder)
class TogetherBatchComponent(dg.Component, dg.Model, dg.Resolvable):
    """Runs a prompts table through Together AI's Batch API: a submit asset ``{name}_batches``,
    a sensor that launches one results run per finished batch, and ``{name}_results`` (Parquet,
    one partition per batch, with ``completeness`` and ``error_rate`` checks).

    The same pipeline as :func:`~dagster_together.together_batch_assets`, configured in YAML. A
    :class:`~dagster_together.TogetherResource` is added under ``resource_key`` (the key from
    ``TOGETHER_API_KEY`` by default); set ``provide_resource: false`` when your project already
    defines that resource. Components with the same ``resource`` settings share one resource;
    give components with different settings different ``resource_key`` values.

    Example ``defs.yaml``:

    .. code-block:: yaml

        type: dagster_together.TogetherBatchComponent
        attributes:
          name: reviews
          prompts: reviews                  # asset key of the prompts table ("a/b" for [a, b])
          storage_url: s3://my-bucket/together/reviews   # or "{{ context.project_root }}/data"
          template:
            model: meta-llama/Llama-3.3-70B-Instruct-Turbo
            prompt_column: text
            system_prompt: "Classify the sentiment: positive, negative or neutral."
            body: {max_tokens: 5}
          id_column: review_id
          group_name: together
          resource:                         # optional: these are the defaults
            api_key: {env: TOGETHER_API_KEY}

    Loading it gives the assets ``reviews_batches`` and ``reviews_results``, the job
    ``reviews_results_job`` and the sensor ``reviews_batch_sensor``.
    """

    name: Annotated[
        str,
        dg.Resolver.default(
            description=(
                "Base name: assets {name}_batches and {name}_results, job {name}_results_job, "
                "sensor {name}_batch_sensor."
            ),
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
            description="Builds each request body from a prompt column of the table.",
        ),
    ] = None
    id_column: Annotated[
        str | None,
        dg.Resolver.default(description="Column whose values become custom_id (with template)."),
    ] = None
    endpoint: Annotated[
        str,
        dg.Resolver.default(
            description=(
                "Endpoint of every request; with a template /v1/chat/completions or "
                "/v1/completions."
            ),
        ),
    ] = "/v1/chat/completions"
    max_requests_per_batch: Annotated[
        int, dg.Resolver.default(description="Requests per batch, at most the API's 50,000.")
    ] = 50_000
    max_error_rate: Annotated[
        float,
        dg.Resolver.default(
            description="The error_rate check fails above this share of unanswered requests."
        ),
    ] = 0.05
    minimum_interval_seconds: Annotated[
        int, dg.Resolver.default(description="Seconds between ticks of the batch sensor.")
    ] = DEFAULT_SENSOR_INTERVAL_SECONDS
    group_name: Annotated[
        str | None, dg.Resolver.default(description="Asset group of both assets.")
    ] = None
    key_prefix: Annotated[
        str | list[str] | None,
        dg.Resolver.default(description="Prefix of both asset keys, the job and the sensor."),
    ] = None
    resource_key: Annotated[
        str, dg.Resolver.default(description="Key of the TogetherResource the pipeline uses.")
    ] = "together"
    provide_resource: Annotated[
        bool,
        dg.Resolver.default(
            description="Add the TogetherResource under resource_key; false if you define it."
        ),
    ] = True
    resource: Annotated[
        TogetherResource,
        dg.Resolver(
            _resolve_resource,
            model_field_type=TogetherResourceModel,
            description="Settings of the TogetherResource added with provide_resource.",
        ),
    ] = Field(default_factory=_default_resource)

    @model_validator(mode="after")
    def _resource_settings_need_the_resource(self) -> "TogetherBatchComponent":
        if not self.provide_resource and "resource" in self.model_fields_set:
            raise ValueError(
                "resource settings are ignored with provide_resource: false; remove one of them."
            )
        return self

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from dagster_together.requests import RequestTemplate

        template = None
        if self.template is not None:
            template = RequestTemplate(
                model=self.template.model,
                prompt_column=self.template.prompt_column,
                system_prompt=self.template.system_prompt,
                endpoint=self.endpoint,
                body=self.template.body,
            )
        bundle = together_batch_assets(
            name=self.name,
            prompts=self.prompts,
            storage_url=self.storage_url,
            storage_options=self.storage_options,
            template=template,
            id_column=self.id_column,
            endpoint=self.endpoint,
            max_requests_per_batch=self.max_requests_per_batch,
            max_error_rate=self.max_error_rate,
            resource_key=self.resource_key,
            key_prefix=self.key_prefix,
            group_name=self.group_name,
            minimum_interval_seconds=self.minimum_interval_seconds,
        )
        if not self.provide_resource:
            return bundle.defs
        return dg.Definitions.merge(
            bundle.defs, dg.Definitions(resources={self.resource_key: self.resource})
        )
