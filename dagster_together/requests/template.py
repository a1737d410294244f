"""``RequestTemplate``: how one row of a user's table becomes a request body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestTemplate:
    """How to turn one row of a user's table into a request body.

    Attributes:
        model: the model every request uses.
        prompt_column: the column holding the user message (chat) or prompt (completions).
        system_prompt: an optional system message put before the user message (chat only).
        endpoint: ``/v1/chat/completions`` (``messages``) or ``/v1/completions`` (``prompt``).
        body: extra body fields copied into every request, e.g. ``max_tokens``, ``temperature``,
            ``response_format``. They may not set ``model``, ``messages`` or ``prompt``.
    """

    model: str
    prompt_column: str
    system_prompt: str | None = None
    endpoint: str = "/v1/chat/completions"
    body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("RequestTemplate.model must be a non-empty model name.")
        if self.endpoint not in ("/v1/chat/completions", "/v1/completions"):
            raise ValueError(
                f"RequestTemplate.endpoint {self.endpoint!r} is not supported: templates build "
                "'/v1/chat/completions' or '/v1/completions' bodies. For other endpoints build "
                "a table with 'custom_id' and 'body' columns."
            )
        clash = {"model", "messages", "prompt"} & set(self.body)
        if clash:
            raise ValueError(
                f"RequestTemplate.body may not set {sorted(clash)}: the template builds them "
                "(use model=, system_prompt= and prompt_column=)."
            )
        if self.system_prompt is not None and self.endpoint == "/v1/completions":
            raise ValueError(
                "RequestTemplate.system_prompt only applies to /v1/chat/completions; put the "
                "instructions into the prompt column for /v1/completions."
            )

    def build_body(self, prompt: str) -> dict[str, Any]:
        """The request body for one prompt."""
        body: dict[str, Any] = {"model": self.model}
        if self.endpoint == "/v1/completions":
            body["prompt"] = prompt
        else:
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": prompt})
            body["messages"] = messages
        body.update(self.body)
        return body
