"""Dagster Components of dagster-together: the batch pipeline configured in ``defs.yaml``."""

from dagster_together.components.together_batch import (
    EnvVarRef,
    RequestTemplateModel,
    TogetherBatchComponent,
    TogetherResourceModel,
)

__all__ = [
    "EnvVarRef",
    "RequestTemplateModel",
    "TogetherBatchComponent",
    "TogetherResourceModel",
]
